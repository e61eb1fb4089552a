// The forum page: talks to the web server's JSON API under /api/ and follows its
// server-sent event stream at /api/events.
//
// Safety rule for this file: text that comes from users or from the server is only ever
// put into the page with textContent, createTextNode or attribute setters, never as HTML.
// The server sends a CSP without 'unsafe-inline', so no inline styles or handlers either.
"use strict";

/** Maximum size of a message text in bytes of UTF-8, as enforced by the servers. */
const MAX_TEXT_BYTES = 4096;
/** localStorage key under which the chosen language code is stored. */
const LANGUAGE_STORAGE_KEY = "forum.language";
/** Distance in pixels from the bottom of the message list that still counts as "at the bottom". */
const BOTTOM_TOLERANCE_PX = 48;
/** Number of avatar-color-N classes defined in style.css. */
const AVATAR_COLORS = 8;
/** Messages per history page. The web server accepts 1 to 1000 and defaults to 200. */
const HISTORY_PAGE_SIZE = 200;
/** Delays in milliseconds before re-opening an event stream that the browser gave up on. */
const RECONNECT_DELAYS_MS = [1000, 2000, 5000, 10000, 30000];

// Every visible string of the page, in each supported language. index.html names its keys in
// data-i18n (text), data-i18n-placeholder and data-i18n-aria-label attributes. "{name}" marks
// a parameter that t() fills in.
const MESSAGES = {
  en: {
    forumName: "Forum",
    menu: "Menu",
    skipToPost: "Skip to the post box",
    language: "Language",
    statusLive: "Live",
    statusConnecting: "Connecting…",
    statusOffline: "Offline, retrying…",
    loggedInAs: "Logged in as",
    logout: "Log out",
    authHeading: "Log in or register",
    userName: "User name",
    password: "Password",
    passwordHint: "At least 8 characters.",
    login: "Log in",
    register: "Register",
    subjects: "Subjects",
    noSubjects: "No subjects yet.",
    newSubjectLabel: "New subject title",
    newSubjectPlaceholder: "New subject…",
    create: "Create",
    users: "Users",
    noUsers: "No users yet.",
    you: "(you)",
    online: "online",
    offline: "offline",
    unreadCount: "{count} unread",
    privateBadge: "Private",
    chooseSubject: "Choose a subject",
    chooseSubjectHint: "Pick a subject on the left, or create one after logging in.",
    startedBy: "Started by {name} on {time}",
    privateWith: "Conversation with {name}",
    privateSubtitle: "Only you and {name} can read these messages.",
    messages: "Messages",
    loading: "Loading…",
    noMessages: "No messages yet. Be the first to write.",
    noPrivateMessages: "No messages with {name} yet.",
    loginToPrivate: "Log in to read and send private messages.",
    newBelow: "New messages below",
    loadOlder: "Load older messages",
    loginToPost: "Log in to post.",
    messageLabel: "Message",
    messagePlaceholder: "Write a message…",
    privatePlaceholder: "Write to {name}…",
    postHelp: "Enter sends, Shift+Enter adds a line.",
    byteCounter: "{used} / {max} bytes",
    send: "Send",
    credentialsMissing: "Enter a user name and a password.",
    titleMissing: "Enter a title for the subject.",
    textTooLong: "The message is larger than {max} bytes. Shorten it to send it.",
    sessionEnded: "Your session has ended. Log in again.",
    networkError: "Could not reach the server. Check the connection and try again.",
    requestFailed: "The request failed with HTTP status {status}.",
  },
  es: {
    forumName: "Foro",
    menu: "Menú",
    skipToPost: "Ir al cuadro de mensaje",
    language: "Idioma",
    statusLive: "En directo",
    statusConnecting: "Conectando…",
    statusOffline: "Sin conexión, reintentando…",
    loggedInAs: "Sesión de",
    logout: "Cerrar sesión",
    authHeading: "Inicia sesión o regístrate",
    userName: "Nombre de usuario",
    password: "Contraseña",
    passwordHint: "Al menos 8 caracteres.",
    login: "Iniciar sesión",
    register: "Registrarse",
    subjects: "Temas",
    noSubjects: "Todavía no hay temas.",
    newSubjectLabel: "Título del nuevo tema",
    newSubjectPlaceholder: "Nuevo tema…",
    create: "Crear",
    users: "Usuarios",
    noUsers: "Todavía no hay usuarios.",
    you: "(tú)",
    online: "conectado",
    offline: "desconectado",
    unreadCount: "{count} sin leer",
    privateBadge: "Privado",
    chooseSubject: "Elige un tema",
    chooseSubjectHint: "Elige un tema a la izquierda, o crea uno después de iniciar sesión.",
    startedBy: "Creado por {name} el {time}",
    privateWith: "Conversación con {name}",
    privateSubtitle: "Solo tú y {name} pueden leer estos mensajes.",
    messages: "Mensajes",
    loading: "Cargando…",
    noMessages: "Todavía no hay mensajes. Sé el primero en escribir.",
    noPrivateMessages: "Todavía no hay mensajes con {name}.",
    loginToPrivate: "Inicia sesión para leer y enviar mensajes privados.",
    newBelow: "Mensajes nuevos abajo",
    loadOlder: "Cargar mensajes anteriores",
    loginToPost: "Inicia sesión para publicar.",
    messageLabel: "Mensaje",
    messagePlaceholder: "Escribe un mensaje…",
    privatePlaceholder: "Escribe a {name}…",
    postHelp: "Intro envía, Mayús+Intro añade una línea.",
    byteCounter: "{used} / {max} bytes",
    send: "Enviar",
    credentialsMissing: "Escribe un nombre de usuario y una contraseña.",
    titleMissing: "Escribe un título para el tema.",
    textTooLong: "El mensaje ocupa más de {max} bytes. Acórtalo para enviarlo.",
    sessionEnded: "Tu sesión ha terminado. Vuelve a iniciar sesión.",
    networkError: "No se pudo contactar con el servidor. Comprueba la conexión e inténtalo de nuevo.",
    requestFailed: "La petición falló con el código HTTP {status}.",
  },
};

const SUPPORTED_LANGUAGES = Object.keys(MESSAGES);

// The page's whole state. Views are { kind: "subject", id } or { kind: "private", user }.
const state = {
  language: "en",
  me: null,
  subjects: [],
  users: [],
  view: null,
  // Incremented on every view switch, so that a late response for an old view is dropped.
  viewGeneration: 0,
  viewLoading: false,
  // Live messages for the current view that arrived while its history was loading.
  pendingMessages: [],
  // The current view's messages, sorted as the servers sort histories.
  messages: [],
  messageIds: new Set(),
  // The id of the first message of the oldest page loaded, which the next older page ends
  // before, or null when no older messages remain. Live messages never change it, because
  // one may sort before messages of the pages loaded so far.
  olderCursor: null,
  olderLoading: false,
  // Unread counts by key: "subject:<id>" or "user:<name>".
  unread: new Map(),
  events: null,
  reconnectAttempt: 0,
  reconnectTimer: null,
  presenceTimer: null,
};

const elements = {};

// ---------------------------------------------------------------------------------------------
// Translation and formatting

function t(key, params = {}) {
  const table = MESSAGES[state.language] || MESSAGES.en;
  const template = table[key] ?? MESSAGES.en[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (match, name) => (name in params ? String(params[name]) : match));
}

/** Returns the stored language choice, else the first supported one in the browser's preferences, else English. */
function detectLanguage() {
  let stored = null;
  try {
    stored = localStorage.getItem(LANGUAGE_STORAGE_KEY);
  } catch {
    // Storage can be disabled, and then the browser preference applies.
  }
  if (SUPPORTED_LANGUAGES.includes(stored)) {
    return stored;
  }
  const preferred = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  for (const tag of preferred) {
    const primary = String(tag).toLowerCase().split("-")[0];
    if (SUPPORTED_LANGUAGES.includes(primary)) {
      return primary;
    }
  }
  return "en";
}

const dateFormatters = new Map();

function formatterFor(language, kind) {
  const key = `${language}:${kind}`;
  if (!dateFormatters.has(key)) {
    const options = {
      time: { timeStyle: "short" },
      dateTime: { dateStyle: "medium", timeStyle: "short" },
      full: { dateStyle: "full", timeStyle: "medium" },
    }[kind];
    dateFormatters.set(key, new Intl.DateTimeFormat(language, options));
  }
  return dateFormatters.get(key);
}

/** Formats a time in ms since the epoch, as the clock time alone when it is today. */
function formatTime(milliseconds) {
  const date = new Date(milliseconds);
  const isToday = date.toDateString() === new Date().toDateString();
  return formatterFor(state.language, isToday ? "time" : "dateTime").format(date);
}

function formatFullTime(milliseconds) {
  return formatterFor(state.language, "full").format(new Date(milliseconds));
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

// ---------------------------------------------------------------------------------------------
// HTTP API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Sends one request to the JSON API and returns the parsed body (null for 204), or
 * { data, headers } with `withHeaders`.
 * Throws ApiError carrying the server's localized sentence, or a local one when the server
 * could not be reached or sent no error body. A 401 on a request made with
 * `sessionRequired` also ends the session on the page.
 */
async function api(method, path, body, { sessionRequired = false, withHeaders = false } = {}) {
  const headers = { Accept: "application/json", "Accept-Language": state.language };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }

  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network_error", t("networkError"));
  }
  if (response.status === 204) {
    return null;
  }

  let data = null;
  try {
    data = await response.json();
  } catch {
    // A proxy error page or an empty body: the status code below still explains the failure.
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : t("requestFailed", { status: response.status });
    const code = data && typeof data.code === "string" ? data.code : `http_${response.status}`;
    if (response.status === 401 && sessionRequired) {
      endSession();
    }
    throw new ApiError(response.status, code, message);
  }
  return withHeaders ? { data, headers: response.headers } : data;
}

function subjectMessagesPath(id) {
  return `/api/subjects/${encodeURIComponent(id)}/messages`;
}

function privatePath(user) {
  return `/api/private/${encodeURIComponent(user)}`;
}

// ---------------------------------------------------------------------------------------------
// Static text and language switch

function applyStaticTranslations() {
  document.documentElement.lang = state.language;
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of document.querySelectorAll("[data-i18n-placeholder]")) {
    element.placeholder = t(element.dataset.i18nPlaceholder);
  }
  for (const element of document.querySelectorAll("[data-i18n-aria-label]")) {
    element.setAttribute("aria-label", t(element.dataset.i18nAriaLabel));
  }
  elements.languageSelect.value = state.language;
}

function setLanguage(language) {
  if (!SUPPORTED_LANGUAGES.includes(language)) {
    return;
  }
  state.language = language;
  try {
    localStorage.setItem(LANGUAGE_STORAGE_KEY, language);
  } catch {
    // Without storage the choice lasts until the page is reloaded.
  }
  // Errors already shown came from the server in the previous language.
  for (const output of [elements.authError, elements.newSubjectError, elements.postError, elements.loadOlderError]) {
    output.textContent = "";
  }
  renderAll();
}

function renderAll() {
  applyStaticTranslations();
  renderConnectionStatus();
  renderAuth();
  renderSubjects();
  renderUsers();
  renderPaneHeader();
  renderComposer();
  renderMessages();
  renderDocumentTitle();
}

// ---------------------------------------------------------------------------------------------
// Session

function renderAuth() {
  const loggedIn = state.me !== null;
  elements.userBox.hidden = !loggedIn;
  elements.currentUser.textContent = loggedIn ? state.me : "";
  elements.authPanel.hidden = loggedIn;
  elements.newSubjectForm.hidden = !loggedIn;
}

function readCredentials() {
  const name = elements.loginName.value.trim();
  const password = elements.loginPassword.value;
  if (!name || !password) {
    elements.authError.textContent = t("credentialsMissing");
    (name ? elements.loginPassword : elements.loginName).focus();
    return null;
  }
  return { name, password };
}

function setAuthBusy(busy) {
  elements.loginButton.disabled = busy;
  elements.registerButton.disabled = busy;
  elements.loginForm.setAttribute("aria-busy", String(busy));
}

async function logIn(credentials) {
  const user = await api("POST", "/api/login", credentials);
  startSession(user.name);
}

async function handleLogin(event) {
  event.preventDefault();
  const credentials = readCredentials();
  if (!credentials) {
    return;
  }
  elements.authError.textContent = "";
  setAuthBusy(true);
  try {
    await logIn(credentials);
  } catch (error) {
    elements.authError.textContent = error.message;
  } finally {
    setAuthBusy(false);
  }
}

async function handleRegister() {
  const credentials = readCredentials();
  if (!credentials) {
    return;
  }
  elements.authError.textContent = "";
  setAuthBusy(true);
  try {
    await api("POST", "/api/users", credentials);
    await logIn(credentials);
  } catch (error) {
    elements.authError.textContent = error.message;
  } finally {
    setAuthBusy(false);
  }
}

/** Switches the page to the logged-in state after a successful login. */
function startSession(name) {
  state.me = name;
  elements.loginPassword.value = "";
  elements.authError.textContent = "";
  renderAuth();
  renderUsers();
  setSidebarOpen(false);
  // The event stream must be re-opened so that its request carries the new session cookie.
  openEvents({ refreshOnOpen: true });
  if (state.view) {
    showView(state.view);
  }
  if (!elements.postForm.hidden) {
    elements.postText.focus();
  }
}

/** Switches the page to the logged-out state, after logging out or when the session expired. */
function endSession({ expired = true } = {}) {
  if (state.me === null) {
    return;
  }
  state.me = null;
  for (const key of [...state.unread.keys()]) {
    if (key.startsWith("user:")) {
      state.unread.delete(key);
    }
  }
  renderAuth();
  if (expired) {
    elements.authError.textContent = t("sessionEnded");
  }
  openEvents({ refreshOnOpen: true });
  if (state.view && state.view.kind === "private") {
    showView(state.view);
  } else {
    renderUsers();
    renderComposer();
    renderDocumentTitle();
  }
}

async function handleLogout() {
  elements.logoutButton.disabled = true;
  try {
    await api("POST", "/api/logout");
  } catch (error) {
    // NOTE: when the request fails the server may still hold the session. The page logs out
    // locally anyway, so the user is never stuck in a state they cannot leave.
    console.warn("logout request failed:", error.message);
  } finally {
    elements.logoutButton.disabled = false;
  }
  endSession({ expired: false });
  elements.loginName.focus();
}

async function loadMe() {
  try {
    const user = await api("GET", "/api/me");
    state.me = user.name;
  } catch (error) {
    if (error.status !== 401) {
      console.warn("failed to load the current user:", error.message);
    }
    if (error.status === 401 && state.me !== null) {
      endSession();
    }
  }
  renderAuth();
}

// ---------------------------------------------------------------------------------------------
// Subjects

function findSubject(id) {
  return state.subjects.find((subject) => subject.id === id);
}

function addSubject(subject) {
  if (!findSubject(subject.id)) {
    state.subjects.push(subject);
  }
}

async function loadSubjects() {
  try {
    const subjects = await api("GET", "/api/subjects");
    state.subjects = [];
    subjects.forEach(addSubject);
  } catch (error) {
    console.warn("failed to load the subjects:", error.message);
  }
  renderSubjects();
  renderPaneHeader();
}

/** Builds the small unread-count badge, with a full sentence for screen readers. */
function makeUnreadBadge(count) {
  const badge = document.createElement("span");
  badge.className = "unread-count";
  badge.dataset.testid = "unread-count";
  const number = document.createElement("span");
  number.setAttribute("aria-hidden", "true");
  number.textContent = String(count);
  const sentence = document.createElement("span");
  sentence.className = "visually-hidden";
  sentence.textContent = t("unreadCount", { count });
  badge.append(number, sentence);
  return badge;
}

function makeSubjectItem(subject) {
  const selected = state.view && state.view.kind === "subject" && state.view.id === subject.id;
  const unread = state.unread.get(`subject:${subject.id}`) || 0;

  const item = document.createElement("li");
  item.dataset.testid = "subject-item";
  item.dataset.subjectId = subject.id;
  item.classList.toggle("selected", Boolean(selected));
  item.classList.toggle("unread", unread > 0);

  const link = document.createElement("a");
  link.className = "nav-link";
  link.href = `#/subject/${encodeURIComponent(subject.id)}`;
  if (selected) {
    link.setAttribute("aria-current", "page");
  }
  const hash = document.createElement("span");
  hash.className = "subject-hash";
  hash.setAttribute("aria-hidden", "true");
  hash.textContent = "#";
  const label = document.createElement("span");
  label.className = "nav-label";
  label.textContent = subject.title;
  link.append(hash, label);
  if (unread > 0) {
    link.append(makeUnreadBadge(unread));
  }
  item.append(link);
  return item;
}

/** Replaces a list's items, keeping keyboard focus on the item with the same key. */
function replaceListItems(list, items, keyAttribute) {
  const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.closest("li") : null;
  const focusedKey = focused ? focused.getAttribute(keyAttribute) : null;
  list.replaceChildren(...items);
  if (focusedKey !== null) {
    const again = items.find((item) => item.getAttribute(keyAttribute) === focusedKey);
    const target = again && again.querySelector("a, button");
    if (target) {
      target.focus();
    }
  }
}

function renderSubjects() {
  replaceListItems(elements.subjectList, state.subjects.map(makeSubjectItem), "data-subject-id");
  elements.subjectEmpty.hidden = state.subjects.length > 0;
}

async function handleNewSubject(event) {
  event.preventDefault();
  const title = elements.newSubjectTitle.value.trim();
  elements.newSubjectError.textContent = "";
  if (!title) {
    elements.newSubjectError.textContent = t("titleMissing");
    elements.newSubjectTitle.focus();
    return;
  }
  elements.newSubjectButton.disabled = true;
  try {
    const subject = await api("POST", "/api/subjects", { title }, { sessionRequired: true });
    addSubject(subject);
    elements.newSubjectTitle.value = "";
    navigateTo({ kind: "subject", id: subject.id });
    elements.postText.focus();
  } catch (error) {
    elements.newSubjectError.textContent = error.message;
  } finally {
    elements.newSubjectButton.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Users

function compareUsers(a, b) {
  if (a.online !== b.online) {
    return a.online ? -1 : 1;
  }
  return a.name.localeCompare(b.name, state.language, { sensitivity: "base" });
}

async function loadUsers() {
  try {
    state.users = await api("GET", "/api/users");
  } catch (error) {
    console.warn("failed to load the users:", error.message);
  }
  renderUsers();
  renderPaneHeader();
}

/** Reloads the user list soon, once for a burst of presence events. */
function scheduleUsersReload() {
  clearTimeout(state.presenceTimer);
  state.presenceTimer = setTimeout(loadUsers, 150);
}

function findUser(name) {
  return state.users.find((user) => user.name === name);
}

function makeUserItem(user) {
  const isMe = user.name === state.me;
  const selected = state.view && state.view.kind === "private" && state.view.user === user.name;
  const unread = state.unread.get(`user:${user.name}`) || 0;

  const item = document.createElement("li");
  item.dataset.testid = "user-item";
  item.dataset.user = user.name;
  item.dataset.online = String(Boolean(user.online));
  item.classList.toggle("selected", Boolean(selected));
  item.classList.toggle("unread", unread > 0);

  // Your own entry is not a link, because a conversation needs two people.
  const entry = document.createElement(isMe ? "span" : "a");
  entry.className = "nav-link";
  if (!isMe) {
    entry.href = `#/private/${encodeURIComponent(user.name)}`;
    if (selected) {
      entry.setAttribute("aria-current", "page");
    }
  }

  const dot = document.createElement("span");
  dot.className = user.online ? "presence-dot online" : "presence-dot";
  dot.setAttribute("aria-hidden", "true");
  const label = document.createElement("span");
  label.className = "nav-label";
  label.textContent = user.name;
  const presence = document.createElement("span");
  presence.className = "visually-hidden";
  presence.textContent = `, ${t(user.online ? "online" : "offline")}`;
  entry.append(dot, label, presence);
  if (isMe) {
    const you = document.createElement("span");
    you.className = "you-marker";
    you.textContent = ` ${t("you")}`;
    entry.append(you);
  }
  if (unread > 0) {
    entry.append(makeUnreadBadge(unread));
  }
  item.append(entry);
  return item;
}

function renderUsers() {
  const users = [...state.users].sort(compareUsers);
  replaceListItems(elements.userList, users.map(makeUserItem), "data-user");
  elements.userEmpty.hidden = users.length > 0;
}

// ---------------------------------------------------------------------------------------------
// Sidebar in narrow windows, where it replaces the message pane while open

function isSidebarOpen() {
  return elements.sidebarToggle.getAttribute("aria-expanded") === "true";
}

function setSidebarOpen(open) {
  elements.sidebarToggle.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("sidebar-open", open);
}

// ---------------------------------------------------------------------------------------------
// Views and routing

function viewFromHash() {
  const match = /^#\/(subject|private)\/(.+)$/.exec(location.hash);
  if (!match) {
    return null;
  }
  let value;
  try {
    value = decodeURIComponent(match[2]);
  } catch {
    return null;
  }
  return match[1] === "subject" ? { kind: "subject", id: value } : { kind: "private", user: value };
}

function hashForView(view) {
  return view.kind === "subject" ? `#/subject/${encodeURIComponent(view.id)}` : `#/private/${encodeURIComponent(view.user)}`;
}

function sameView(a, b) {
  if (!a || !b || a.kind !== b.kind) {
    return false;
  }
  return a.kind === "subject" ? a.id === b.id : a.user === b.user;
}

function unreadKey(view) {
  return view.kind === "subject" ? `subject:${view.id}` : `user:${view.user}`;
}

function navigateTo(view) {
  const hash = hashForView(view);
  if (location.hash === hash) {
    showView(view);
  } else {
    // The hashchange listener calls showView.
    location.hash = hash;
  }
}

function handleHashChange() {
  setSidebarOpen(false);
  const view = viewFromHash();
  if (view) {
    showView(view);
  } else {
    showDefaultView();
  }
}

/** Opens the first subject when the address names no view, or an empty pane without subjects. */
function showDefaultView() {
  if (state.subjects.length > 0) {
    const view = { kind: "subject", id: state.subjects[0].id };
    history.replaceState(null, "", hashForView(view));
    showView(view);
  } else {
    state.view = null;
    state.viewGeneration += 1;
    clearMessages();
    renderSubjects();
    renderUsers();
    renderPaneHeader();
    renderComposer();
    renderMessages();
  }
}

/** Switches the pane to `view` and loads its history. */
async function showView(view) {
  state.view = view;
  state.viewGeneration += 1;
  const generation = state.viewGeneration;
  state.unread.delete(unreadKey(view));
  clearMessages();
  elements.postError.textContent = "";
  elements.jumpToLatest.hidden = true;

  renderSubjects();
  renderUsers();
  renderPaneHeader();
  renderComposer();
  renderDocumentTitle();

  if (view.kind === "private" && state.me === null) {
    showPaneNote(t("loginToPrivate"));
    return;
  }
  state.viewLoading = true;
  state.pendingMessages = [];
  showPaneNote(t("loading"));
  elements.messageList.setAttribute("aria-busy", "true");
  try {
    const page = await fetchHistoryPage(view, null);
    if (generation !== state.viewGeneration) {
      return;
    }
    addMessages(page.messages.concat(state.pendingMessages), { announce: false });
    setOlderCursor(page);
    scrollToBottom();
    renderMessagesEmptyNote();
  } catch (error) {
    if (generation === state.viewGeneration) {
      showPaneNote(error.message);
    }
  } finally {
    if (generation === state.viewGeneration) {
      state.viewLoading = false;
      state.pendingMessages = [];
      elements.messageList.setAttribute("aria-busy", "false");
    }
  }
}

/**
 * Loads the page of `view`'s history that ends before the message `before`, or the newest
 * page when it is null. Returns { messages, more }, where `more` is true when the server sent
 * a `Link` header with rel="next", so older messages remain.
 */
async function fetchHistoryPage(view, before) {
  const base = view.kind === "subject" ? subjectMessagesPath(view.id) : privatePath(view.user);
  const query = new URLSearchParams({ limit: String(HISTORY_PAGE_SIZE) });
  if (before !== null) {
    query.set("before", before);
  }
  const options = { sessionRequired: view.kind === "private", withHeaders: true };
  const { data, headers } = await api("GET", `${base}?${query}`, undefined, options);
  const link = headers.get("Link") || "";
  return { messages: Array.isArray(data) ? data : [], more: /;\s*rel="?next"?/.test(link) };
}

/** Stores the cursor of the next older page, from the oldest page loaded so far. */
function setOlderCursor(page) {
  state.olderCursor = page.more && page.messages.length > 0 ? page.messages[0].id : null;
  renderLoadOlder();
}

function renderLoadOlder() {
  elements.loadOlder.hidden = state.olderCursor === null;
  elements.loadOlder.disabled = state.olderLoading;
  elements.loadOlder.setAttribute("aria-busy", String(state.olderLoading));
}

/**
 * Loads the page before the oldest one shown and puts it above the messages, keeping the
 * messages on screen where they were. Live messages keep arriving meanwhile.
 */
async function loadOlderMessages() {
  const view = state.view;
  const cursor = state.olderCursor;
  if (!view || cursor === null || state.olderLoading) {
    return;
  }
  const generation = state.viewGeneration;
  state.olderLoading = true;
  elements.loadOlderError.textContent = "";
  renderLoadOlder();
  try {
    const page = await fetchHistoryPage(view, cursor);
    if (generation !== state.viewGeneration) {
      return;
    }
    const list = elements.messageList;
    const distanceFromBottom = list.scrollHeight - list.scrollTop;
    addMessages(page.messages, { announce: false });
    list.scrollTop = list.scrollHeight - distanceFromBottom;
    setOlderCursor(page);
  } catch (error) {
    if (generation === state.viewGeneration) {
      elements.loadOlderError.textContent = error.message;
    }
  } finally {
    if (generation === state.viewGeneration) {
      state.olderLoading = false;
      renderLoadOlder();
    }
  }
}

/**
 * Loads the current view's newest page again and adds whatever the page has missed. When
 * none of that page's messages is shown yet and older ones remain, more were missed than
 * one page holds, so the view is loaded again from its newest page.
 */
async function refreshCurrentView() {
  const view = state.view;
  if (!view || state.viewLoading || (view.kind === "private" && state.me === null)) {
    return;
  }
  const generation = state.viewGeneration;
  try {
    const page = await fetchHistoryPage(view, null);
    if (generation !== state.viewGeneration) {
      return;
    }
    const wasEmpty = state.messages.length === 0;
    const overlaps = page.messages.some((message) => state.messageIds.has(message.id));
    if (page.more && !wasEmpty && !overlaps) {
      showView(view);
      return;
    }
    addMessages(page.messages, { announce: true });
    if (wasEmpty) {
      setOlderCursor(page);
    }
    renderMessagesEmptyNote();
  } catch (error) {
    console.warn("failed to reload the current view:", error.message);
  }
}

async function refreshAll() {
  await loadMe();
  await Promise.all([loadSubjects(), loadUsers(), refreshCurrentView()]);
}

function renderPaneHeader() {
  const view = state.view;
  elements.messagePane.dataset.view = view ? view.kind : "none";
  elements.privateView.hidden = !view || view.kind !== "private";

  if (!view) {
    elements.paneTitle.textContent = t("chooseSubject");
    elements.paneSubtitle.textContent = t("chooseSubjectHint");
    delete elements.privateView.dataset.user;
    return;
  }
  if (view.kind === "subject") {
    const subject = findSubject(view.id);
    elements.paneTitle.textContent = subject ? subject.title : "…";
    const started = subject ? formatterFor(state.language, "dateTime").format(new Date(subject.time)) : "";
    elements.paneSubtitle.textContent = subject ? t("startedBy", { name: subject.created_by, time: started }) : "";
    delete elements.privateView.dataset.user;
    return;
  }
  const user = findUser(view.user);
  elements.privateView.dataset.user = view.user;
  const online = Boolean(user && user.online);
  elements.privateStatus.textContent = user ? t(online ? "online" : "offline") : "";
  elements.privateStatus.classList.toggle("online", online);
  elements.paneTitle.textContent = t("privateWith", { name: view.user });
  elements.paneSubtitle.textContent = t("privateSubtitle", { name: view.user });
}

// ---------------------------------------------------------------------------------------------
// Messages

/** Compares two messages the way the servers order histories: (lamport, origin, seq). */
function compareMessages(a, b) {
  if (a.lamport !== b.lamport) {
    return a.lamport - b.lamport;
  }
  const [originA, seqA] = String(a.id).split("-").map(Number);
  const [originB, seqB] = String(b.id).split("-").map(Number);
  return originA - originB || seqA - seqB;
}

function messageAuthor(message) {
  return message.author ?? message.from;
}

function clearMessages() {
  state.messages = [];
  state.messageIds = new Set();
  state.olderCursor = null;
  state.olderLoading = false;
  elements.messageList.replaceChildren();
  elements.loadOlderError.textContent = "";
  renderLoadOlder();
}

function avatarColor(name) {
  let hash = 0;
  for (const character of name) {
    hash = (hash * 31 + character.codePointAt(0)) >>> 0;
  }
  return hash % AVATAR_COLORS;
}

function makeMessageItem(message) {
  const author = messageAuthor(message);
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.testid = "message-item";
  item.dataset.messageId = message.id;
  item.classList.toggle("own", author === state.me);

  const avatar = document.createElement("span");
  avatar.className = `avatar avatar-color-${avatarColor(author)}`;
  avatar.setAttribute("aria-hidden", "true");
  avatar.textContent = (Array.from(author)[0] || "?").toUpperCase();

  const body = document.createElement("div");
  body.className = "message-body";
  const meta = document.createElement("div");
  meta.className = "message-meta";
  const authorName = document.createElement("span");
  authorName.className = "message-author";
  authorName.textContent = author;
  const time = document.createElement("time");
  time.className = "message-time";
  time.dateTime = new Date(message.time).toISOString();
  time.title = formatFullTime(message.time);
  time.textContent = formatTime(message.time);
  meta.append(authorName, document.createTextNode(" "), time);

  const text = document.createElement("p");
  text.className = "message-text";
  text.textContent = message.text;

  body.append(meta, text);
  item.append(avatar, body);
  return item;
}

function isNearBottom() {
  const list = elements.messageList;
  return list.scrollHeight - list.scrollTop - list.clientHeight <= BOTTOM_TOLERANCE_PX;
}

function scrollToBottom() {
  elements.messageList.scrollTop = elements.messageList.scrollHeight;
  elements.jumpToLatest.hidden = true;
}

/**
 * Inserts messages of the current view that the page does not show yet, in history order.
 * Follows them down when the list was at the bottom or one of them is the user's own.
 * Otherwise it shows the "new messages below" button.
 */
function addMessages(messages, { announce }) {
  const fresh = messages.filter((message) => !state.messageIds.has(message.id));
  if (fresh.length === 0) {
    return;
  }
  const wasAtBottom = isNearBottom();
  fresh.sort(compareMessages);
  for (const message of fresh) {
    state.messageIds.add(message.id);
    let index = state.messages.length;
    while (index > 0 && compareMessages(state.messages[index - 1], message) > 0) {
      index -= 1;
    }
    state.messages.splice(index, 0, message);
    const item = makeMessageItem(message);
    elements.messageList.insertBefore(item, elements.messageList.children[index] || null);
  }
  renderMessagesEmptyNote();
  if (!announce) {
    return;
  }
  const ownMessage = fresh.some((message) => messageAuthor(message) === state.me);
  if (wasAtBottom || ownMessage) {
    scrollToBottom();
  } else {
    elements.jumpToLatest.hidden = false;
  }
}

/** Adds one live message to the current view, or counts it as unread for another view. */
function receiveMessage(message, view) {
  if (sameView(view, state.view)) {
    if (state.viewLoading) {
      state.pendingMessages.push(message);
    } else {
      addMessages([message], { announce: true });
    }
    return;
  }
  if (messageAuthor(message) === state.me) {
    return;
  }
  const key = unreadKey(view);
  state.unread.set(key, (state.unread.get(key) || 0) + 1);
  if (view.kind === "subject") {
    renderSubjects();
  } else {
    renderUsers();
  }
  renderDocumentTitle();
}

function showPaneNote(text) {
  elements.messageEmpty.textContent = text;
  elements.messageEmpty.hidden = false;
}

function renderMessagesEmptyNote() {
  if (state.messages.length > 0 || !state.view) {
    elements.messageEmpty.hidden = true;
    return;
  }
  const note = state.view.kind === "subject" ? t("noMessages") : t("noPrivateMessages", { name: state.view.user });
  showPaneNote(note);
}

/** Re-renders the current messages, which re-formats their times in the current language. */
function renderMessages() {
  const wasAtBottom = isNearBottom();
  elements.messageList.replaceChildren(...state.messages.map(makeMessageItem));
  if (wasAtBottom) {
    scrollToBottom();
  }
  if (!state.viewLoading) {
    if (state.view && state.view.kind === "private" && state.me === null) {
      showPaneNote(t("loginToPrivate"));
    } else {
      renderMessagesEmptyNote();
    }
  }
}

function renderDocumentTitle() {
  let total = 0;
  for (const count of state.unread.values()) {
    total += count;
  }
  document.title = total > 0 ? `(${total}) ${t("forumName")}` : t("forumName");
}

// ---------------------------------------------------------------------------------------------
// Post box

function renderComposer() {
  const hasView = state.view !== null;
  const canPost = hasView && state.me !== null;
  elements.postForm.hidden = !canPost;
  elements.postLoginHint.hidden = !hasView || state.me !== null;
  elements.postText.placeholder =
    state.view && state.view.kind === "private" ? t("privatePlaceholder", { name: state.view.user }) : t("messagePlaceholder");
  renderCounter();
}

function renderCounter() {
  const text = elements.postText.value;
  const used = utf8Length(text);
  const tooLong = used > MAX_TEXT_BYTES;
  elements.postCounter.textContent = t("byteCounter", { used, max: MAX_TEXT_BYTES });
  elements.postCounter.classList.toggle("over", tooLong);
  elements.postButton.disabled = tooLong || text.trim() === "" || elements.postForm.getAttribute("aria-busy") === "true";

  // The size warning replaces any other error, and goes away once the text fits again.
  const sizeWarning = t("textTooLong", { max: MAX_TEXT_BYTES });
  if (tooLong) {
    elements.postError.textContent = sizeWarning;
  } else if (elements.postError.textContent === sizeWarning) {
    elements.postError.textContent = "";
  }
}

function handlePostKeydown(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    elements.postForm.requestSubmit();
  }
}

async function handlePost(event) {
  event.preventDefault();
  const view = state.view;
  const text = elements.postText.value;
  if (!view || text.trim() === "" || utf8Length(text) > MAX_TEXT_BYTES) {
    return;
  }
  const path = view.kind === "subject" ? subjectMessagesPath(view.id) : privatePath(view.user);

  elements.postError.textContent = "";
  elements.postForm.setAttribute("aria-busy", "true");
  renderCounter();
  try {
    const message = await api("POST", path, { text }, { sessionRequired: true });
    elements.postText.value = "";
    if (sameView(view, state.view)) {
      receiveMessage(message, view);
      scrollToBottom();
    }
  } catch (error) {
    elements.postError.textContent = error.message;
  } finally {
    elements.postForm.setAttribute("aria-busy", "false");
    renderCounter();
    if (!elements.postForm.hidden) {
      elements.postText.focus();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Event stream

function renderConnectionStatus() {
  const status = elements.connectionStatus.dataset.state;
  const key = { live: "statusLive", connecting: "statusConnecting", offline: "statusOffline" }[status];
  elements.connectionStatusText.textContent = t(key);
}

function setConnectionStatus(status) {
  elements.connectionStatus.dataset.state = status;
  renderConnectionStatus();
}

function parseEventData(event) {
  try {
    return JSON.parse(event.data);
  } catch (error) {
    console.warn(`ignored a "${event.type}" event with invalid JSON:`, error.message);
    return null;
  }
}

const EVENT_HANDLERS = {
  post(message) {
    receiveMessage(message, { kind: "subject", id: message.subject });
  },
  subject(subject) {
    addSubject(subject);
    renderSubjects();
    if (!state.view) {
      showDefaultView();
    }
  },
  user(user) {
    if (!findUser(user.name)) {
      state.users.push({ name: user.name, online: false });
      renderUsers();
    }
  },
  presence() {
    scheduleUsersReload();
  },
  private(message) {
    const other = message.from === state.me ? message.to : message.from;
    receiveMessage(message, { kind: "private", user: other });
  },
  resync() {
    refreshAll();
  },
  withdraw(withdrawn) {
    withdrawMessage(withdrawn.id);
  },
};

/**
 * Removes a message that the group stored twice (a write sent again after a failover) and
 * whose other copy won. The event stream sends `withdraw` with the losing copy's id.
 */
function withdrawMessage(id) {
  state.pendingMessages = state.pendingMessages.filter((message) => message.id !== id);
  const kept = state.messages.filter((message) => message.id !== id);
  if (kept.length !== state.messages.length) {
    state.messages = kept;
    renderMessages();
    renderMessagesEmptyNote();
  }
}

/**
 * Opens the event stream, replacing any open one. With `refreshOnOpen`, the views are reloaded
 * once the stream is open, so that nothing posted between the last load and now is missed.
 * The browser reconnects by itself after most errors, and the views are reloaded after each
 * such reconnection; when it gives up (readyState CLOSED), the page opens a new stream later.
 */
function openEvents({ refreshOnOpen = false } = {}) {
  if (state.events) {
    state.events.close();
  }
  clearTimeout(state.reconnectTimer);
  setConnectionStatus("connecting");

  const source = new EventSource("/api/events");
  state.events = source;
  let reloadOnOpen = refreshOnOpen;

  source.addEventListener("open", () => {
    if (source !== state.events) {
      return;
    }
    state.reconnectAttempt = 0;
    setConnectionStatus("live");
    if (reloadOnOpen) {
      reloadOnOpen = false;
      refreshAll();
    }
  });

  source.addEventListener("error", () => {
    if (source !== state.events) {
      return;
    }
    reloadOnOpen = true;
    if (source.readyState === EventSource.CLOSED) {
      setConnectionStatus("offline");
      const delays = RECONNECT_DELAYS_MS;
      const delay = delays[Math.min(state.reconnectAttempt, delays.length - 1)];
      state.reconnectAttempt += 1;
      state.reconnectTimer = setTimeout(() => openEvents({ refreshOnOpen: true }), delay);
    } else {
      setConnectionStatus("connecting");
    }
  });

  for (const [type, handler] of Object.entries(EVENT_HANDLERS)) {
    source.addEventListener(type, (event) => {
      if (source !== state.events) {
        return;
      }
      const data = parseEventData(event);
      if (data !== null) {
        handler(data);
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up

function findElements() {
  const ids = {
    languageSelect: "language-select",
    connectionStatus: "connection-status",
    connectionStatusText: "connection-status-text",
    userBox: "user-box",
    currentUser: "current-user",
    logoutButton: "logout-button",
    authPanel: "auth-panel",
    loginForm: "login-form",
    loginName: "login-name",
    loginPassword: "login-password",
    loginButton: "login-button",
    registerButton: "register-button",
    authError: "auth-error",
    subjectList: "subject-list",
    subjectEmpty: "subject-empty",
    newSubjectForm: "new-subject-form",
    newSubjectTitle: "new-subject-title",
    newSubjectButton: "new-subject-button",
    newSubjectError: "new-subject-error",
    userList: "user-list",
    userEmpty: "user-empty",
    messagePane: "message-pane",
    privateView: "private-view",
    privateStatus: "private-status",
    paneTitle: "pane-title",
    paneSubtitle: "pane-subtitle",
    messageList: "message-list",
    messageEmpty: "message-empty",
    jumpToLatest: "jump-to-latest",
    loadOlder: "load-older",
    loadOlderError: "load-older-error",
    postLoginHint: "post-login-hint",
    postLoginButton: "post-login-button",
    sidebarToggle: "sidebar-toggle",
    postForm: "post-form",
    postText: "post-text",
    postCounter: "post-counter",
    postButton: "post-button",
    postError: "post-error",
  };
  for (const [name, id] of Object.entries(ids)) {
    elements[name] = document.getElementById(id);
    if (!elements[name]) {
      throw new Error(`index.html has no element with id "${id}"`);
    }
  }
}

function bindEvents() {
  elements.languageSelect.addEventListener("change", () => setLanguage(elements.languageSelect.value));
  elements.loginForm.addEventListener("submit", handleLogin);
  elements.registerButton.addEventListener("click", handleRegister);
  elements.logoutButton.addEventListener("click", handleLogout);
  elements.newSubjectForm.addEventListener("submit", handleNewSubject);
  elements.postForm.addEventListener("submit", handlePost);
  elements.postText.addEventListener("keydown", handlePostKeydown);
  elements.postText.addEventListener("input", renderCounter);
  elements.messageList.addEventListener("scroll", () => {
    if (isNearBottom()) {
      elements.jumpToLatest.hidden = true;
    }
  });
  elements.jumpToLatest.addEventListener("click", scrollToBottom);
  elements.loadOlder.addEventListener("click", loadOlderMessages);
  elements.newSubjectTitle.addEventListener("input", () => {
    elements.newSubjectError.textContent = "";
  });
  elements.sidebarToggle.addEventListener("click", () => setSidebarOpen(!isSidebarOpen()));
  // A link to the view already shown changes no hash, so the sidebar is closed here too.
  for (const list of [elements.subjectList, elements.userList]) {
    list.addEventListener("click", (event) => {
      if (event.target.closest("a")) {
        setSidebarOpen(false);
      }
    });
  }
  elements.postLoginButton.addEventListener("click", () => {
    setSidebarOpen(true);
    elements.loginName.focus();
  });
  window.addEventListener("hashchange", handleHashChange);
}

/**
 * How often the page reloads the user list. A web server that dies sends no event when its
 * users go offline: the data servers drop them once its presence lease lapses (10 s), and the
 * page learns it at its next reload, so within about 15 s.
 */
const USERS_REFRESH_MS = 5000;

async function start() {
  findElements();
  state.language = detectLanguage();
  bindEvents();
  renderAll();
  openEvents();
  setInterval(loadUsers, USERS_REFRESH_MS);
  await Promise.all([loadMe(), loadSubjects(), loadUsers()]);
  renderAll();
  handleHashChange();
}

start();
