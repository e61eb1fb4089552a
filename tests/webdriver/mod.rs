//! A harness for real-browser tests: a chromedriver started per test on a free loopback port,
//! headless Chromium sessions with fresh profiles driven over the W3C WebDriver protocol
//! (fantoccini), waits on page conditions, and screenshots under `target/browser-screenshots/`.
//!
//! Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`).
//! `FORUM_CHROMIUM` and `FORUM_CHROMEDRIVER` name other binaries. When one is missing the tests
//! skip with a message, unless `CI` is set: then they fail.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a browser test waits for a condition on a page. It is generous because a page on a
/// busy two-core CI machine can take seconds to load and connect. A passing wait usually ends in
/// well under a second.
pub const BROWSER_PATIENCE: Duration = Duration::from_secs(30);

/// How long chromedriver may take to accept connections after it starts.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// How often a wait checks its condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The shell command that installs both binaries, for the messages about missing ones.
const INSTALL_COMMAND: &str = "apt-get update && apt-get install -y chromium chromium-driver";

/// Lets one browser test run at a time. Each test opens up to three Chromium instances, and
/// more at once would starve the servers under test on a two-core machine.
static ONE_TEST_AT_A_TIME: Semaphore = Semaphore::const_new(1);

/// The browser's language preference, sent as `Accept-Language` and seen in `navigator.languages`.
#[derive(Clone, Copy, Debug)]
pub enum Language {
    English,
    Spanish,
}

impl Language {
    /// Returns the value of Chromium's `--lang` flag.
    fn locale(self) -> &'static str {
        match self {
            Language::English => "en-US",
            Language::Spanish => "es-ES",
        }
    }

    /// Returns the value of Chromium's `intl.accept_languages` preference.
    fn accept_languages(self) -> &'static str {
        match self {
            Language::English => "en-US,en",
            Language::Spanish => "es-ES,es",
        }
    }
}

/// A running chromedriver on 127.0.0.1, killed when this value is dropped.
pub struct Chromedriver {
    process: Child,
    url: String,
    chromium: PathBuf,
    _turn: SemaphorePermit<'static>,
}

impl Chromedriver {
    /// Waits for this test's turn and starts chromedriver, logging to
    /// `target/browser-logs/chromedriver-<test>.log`.
    /// Returns `None` after printing why when Chromium or chromedriver is missing and `CI` is
    /// not set, and panics when it is set.
    pub async fn start(test: &str) -> Option<Chromedriver> {
        let (chromium, chromedriver) = match find_binaries() {
            Ok(binaries) => binaries,
            Err(missing) => {
                let message = format!("not found: {missing}; install Chromium and chromedriver with `{INSTALL_COMMAND}`");
                assert!(std::env::var_os("CI").is_none(), "{message}");
                eprintln!("skipped {test}: {message}");
                return None;
            }
        };
        let turn = ONE_TEST_AT_A_TIME.acquire().await.expect("the browser test semaphore is never closed");

        let port = free_loopback_port();
        let log_dir = target_dir().join("browser-logs");
        std::fs::create_dir_all(&log_dir).expect("creating target/browser-logs");
        let log_path = log_dir.join(format!("chromedriver-{test}.log"));
        let process = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {} failed: {error}", chromedriver.display()));
        let mut driver = Chromedriver {
            process,
            url: format!("http://127.0.0.1:{port}"),
            chromium,
            _turn: turn,
        };
        driver.wait_until_ready(&log_path).await;
        Some(driver)
    }

    /// Polls chromedriver's `/status` endpoint until it reports ready.
    async fn wait_until_ready(&mut self, log_path: &Path) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + DRIVER_START_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait().expect("checking the chromedriver process") {
                panic!("chromedriver exited with {status} before it was ready; see {}", log_path.display());
            }
            let response = http.get(format!("{}/status", self.url)).send().await;
            if let Ok(response) = response {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if body["value"]["ready"] == true {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver at {} was not ready within {DRIVER_START_TIMEOUT:?}; see {}",
                self.url,
                log_path.display()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts a headless Chromium with a new profile and the given language. `name` labels the
    /// browser in failure messages.
    pub async fn browser(&self, name: &str, language: Language) -> Browser {
        let profile = tempfile::tempdir().expect("creating a Chromium profile folder");
        let arguments = vec![
            // Chromium exits when chromedriver does, because this pipe is its only control
            // channel. With the default debugging port it would outlive a killed chromedriver.
            "--remote-debugging-pipe".to_owned(),
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-breakpad".to_owned(),
            // Every address but loopback goes to a proxy on a closed loopback port, so the
            // browser cannot reach any other host. Chromium never proxies loopback addresses.
            "--proxy-server=http://127.0.0.1:9".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--lang={}", language.locale()),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        // An alert stays open instead of being dismissed, so a test can detect it.
        capabilities.insert("unhandledPromptBehavior".into(), json!("ignore"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": arguments,
                "prefs": { "intl": { "accept_languages": language.accept_languages() } },
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("starting Chromium for {name} through chromedriver failed: {error}"));
        Browser { client, name: name.to_owned(), _profile: profile }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // Chromium instances still open exit too, because their control pipe closes.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One headless Chromium session.
pub struct Browser {
    client: Client,
    name: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Opens the forum page at `base` (such as `http://127.0.0.1:34567`) and waits until its
    /// event stream is live.
    pub async fn open(&self, base: &str) {
        self.client.goto(&format!("{base}/")).await.unwrap_or_else(|error| panic!("{}: opening {base} failed: {error}", self.name));
        self.wait_for_connection("live").await;
    }

    /// Waits until `#connection-status` has `data-state` equal to `state`.
    pub async fn wait_for_connection(&self, state: &str) {
        let script = "return document.getElementById('connection-status')?.dataset.state ?? null;";
        self.wait_for_script_value(&format!("the connection status is {state:?}"), script, &json!(state)).await;
    }

    /// Registers `name` through the page's form, which also logs in, and waits until the page
    /// shows the user as logged in.
    pub async fn register(&self, name: &str, password: &str) {
        self.fill("#login-name", name).await;
        self.fill("#login-password", password).await;
        self.click("#register-button").await;
        self.wait_for_logged_in(name).await;
    }

    /// Logs in through the page's form and waits until the page shows the user as logged in.
    pub async fn log_in(&self, name: &str, password: &str) {
        self.fill("#login-name", name).await;
        self.fill("#login-password", password).await;
        self.click("#login-button").await;
        self.wait_for_logged_in(name).await;
    }

    async fn wait_for_logged_in(&self, name: &str) {
        let script = "const box = document.getElementById('user-box');
            return box.hidden ? null : document.getElementById('current-user').textContent;";
        self.wait_for_script_value(&format!("the page shows {name} as logged in"), script, &json!(name)).await;
        // Logging in reopens the event stream with the session cookie.
        self.wait_for_connection("live").await;
    }

    /// Creates a subject through the sidebar form, waits until the page shows it, and returns
    /// its id.
    pub async fn create_subject(&self, title: &str) -> String {
        self.fill("#new-subject-title", title).await;
        self.click("#new-subject-button").await;
        let script = "return document.getElementById('message-pane').dataset.view === 'subject'
            ? document.getElementById('pane-title').textContent : null;";
        self.wait_for_script_value(&format!("the page shows the new subject {title:?}"), script, &json!(title)).await;
        let id = self.script("return document.querySelector('#subject-list li.selected')?.dataset.subjectId ?? null;").await;
        id.as_str().unwrap_or_else(|| panic!("{}: no selected subject after creating {title:?}", self.name)).to_owned()
    }

    /// Waits until the subject `id` is listed in the sidebar, then opens it by clicking it.
    pub async fn open_subject(&self, id: &str) {
        let link = format!("#subject-list li[data-subject-id=\"{id}\"] a");
        self.wait_for_element(&link, &format!("subject {id} is listed")).await;
        self.click(&link).await;
        let script = format!(
            "const pane = document.getElementById('message-pane');
             return pane.dataset.view === 'subject' && location.hash === '#/subject/' + encodeURIComponent({id:?});"
        );
        self.wait_for_script_value(&format!("subject {id} is open"), &script, &json!(true)).await;
    }

    /// Waits until `user` is listed in the sidebar, then opens the private conversation with
    /// them by clicking their entry.
    pub async fn open_private(&self, user: &str) {
        let link = format!("#user-list li[data-user=\"{user}\"] a");
        self.wait_for_element(&link, &format!("{user} is listed")).await;
        self.click(&link).await;
        let script = "const banner = document.getElementById('private-view');
            return document.getElementById('message-pane').dataset.view === 'private' && !banner.hidden
                ? banner.dataset.user : null;";
        self.wait_for_script_value(&format!("the private conversation with {user} is open"), script, &json!(user)).await;
    }

    /// Types `text` into the post box and sends it with the Send button, then waits until the
    /// box is empty again, which the page does once the server stored the message.
    pub async fn post(&self, text: &str) {
        self.fill("#post-text", text).await;
        self.click("#post-button").await;
        let script = "return document.getElementById('post-text').value === ''
            ? '' : (document.getElementById('post-error').textContent || 'pending');";
        self.wait_for_script_value(&format!("the page sent {text:?}"), script, &json!("")).await;
    }

    /// Returns the texts of the messages in `#message-list`, in page order.
    pub async fn message_texts(&self) -> Vec<String> {
        let script = "return Array.from(
            document.querySelectorAll('#message-list [data-testid=\"message-item\"] .message-text'),
            (element) => element.textContent);";
        let value = self.script(script).await;
        serde_json::from_value(value).expect("message texts are strings")
    }

    /// Waits until the message list contains a message whose text is exactly `text`.
    pub async fn wait_for_message(&self, text: &str) {
        self.wait_for_message_or_explain(text, "").await;
    }

    /// Like [`Browser::wait_for_message`], adding `explanation` to the failure message.
    pub async fn wait_for_message_or_explain(&self, text: &str, explanation: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
        loop {
            let texts = self.message_texts().await;
            if texts.iter().any(|shown| shown == text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: the message {text:?} did not appear within {BROWSER_PATIENCE:?}; the list shows {texts:?}. {explanation}",
                self.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the text of the element that `css` selects.
    pub async fn text(&self, css: &str) -> String {
        let value = self.script(&format!("return document.querySelector({css:?})?.textContent ?? null;")).await;
        value.as_str().unwrap_or_else(|| panic!("{}: no element matches {css}", self.name)).to_owned()
    }

    /// Returns the text of the open alert, or `None` when no alert is open.
    pub async fn open_alert(&self) -> Option<String> {
        match self.client.get_alert_text().await {
            Ok(text) => Some(text),
            Err(error) if error.is_no_such_alert() => None,
            Err(error) => panic!("{}: reading the alert state failed: {error}", self.name),
        }
    }

    /// Sets a marker on the current document. A reload or a navigation to another document
    /// removes it, so [`Browser::has_marker`] shows that the page was not reloaded.
    pub async fn set_marker(&self) {
        self.script("window.forumTestMarker = true; return null;").await;
    }

    pub async fn has_marker(&self) -> bool {
        self.script("return window.forumTestMarker === true;").await == json!(true)
    }

    /// Reloads the page and waits until its event stream is live again.
    pub async fn reload(&self) {
        self.client.refresh().await.unwrap_or_else(|error| panic!("{}: reloading failed: {error}", self.name));
        self.wait_for_connection("live").await;
    }

    /// Saves a PNG screenshot of the window as `target/browser-screenshots/<view>.png`.
    pub async fn screenshot(&self, view: &str) {
        let png = self.client.screenshot().await.unwrap_or_else(|error| panic!("{}: taking a screenshot failed: {error}", self.name));
        let folder = target_dir().join("browser-screenshots");
        std::fs::create_dir_all(&folder).expect("creating target/browser-screenshots");
        let path = folder.join(format!("{view}.png"));
        std::fs::write(&path, png).unwrap_or_else(|error| panic!("writing {} failed: {error}", path.display()));
    }

    /// Runs `script` as the body of a function in the page and returns its result.
    pub async fn script(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|error| panic!("{}: running a script failed: {error}\nscript: {script}", self.name))
    }

    /// Polls `script` until it returns `expected`, panicking with `what` and the last value
    /// after [`BROWSER_PATIENCE`].
    pub async fn wait_for_script_value(&self, what: &str, script: &str, expected: &Value) {
        let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
        loop {
            let value = self.script(script).await;
            if value == *expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: timed out after {BROWSER_PATIENCE:?} waiting until {what}; last value {value}",
                self.name
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until an element matches `css`, using WebDriver's element search.
    pub async fn wait_for_element(&self, css: &str, what: &str) {
        self.client
            .wait()
            .at_most(BROWSER_PATIENCE)
            .every(POLL_INTERVAL)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{}: timed out waiting until {what} ({css}): {error}", self.name));
    }

    /// Clears the field that `css` selects and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|error| panic!("{}: finding {css} failed: {error}", self.name));
        field.clear().await.unwrap_or_else(|error| panic!("{}: clearing {css} failed: {error}", self.name));
        field.send_keys(text).await.unwrap_or_else(|error| panic!("{}: typing into {css} failed: {error}", self.name));
    }

    /// Clicks the element that `css` selects. The page rebuilds its sidebar lists when users or
    /// presence change, so a click that finds a replaced element finds it again.
    pub async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
        loop {
            let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|error| panic!("{}: finding {css} failed: {error}", self.name));
            match element.click().await {
                Ok(()) => return,
                Err(error) if error.is_stale_element_reference() && tokio::time::Instant::now() < deadline => continue,
                Err(error) => panic!("{}: clicking {css} failed: {error}", self.name),
            }
        }
    }

    /// Ends the WebDriver session, which closes Chromium.
    pub async fn close(self) {
        let name = self.name;
        self.client.close().await.unwrap_or_else(|error| panic!("{name}: closing the browser failed: {error}"));
    }
}

/// Finds Chromium and chromedriver, from `FORUM_CHROMIUM` and `FORUM_CHROMEDRIVER` or else on
/// `PATH`. The error names the binary that is missing.
fn find_binaries() -> Result<(PathBuf, PathBuf), String> {
    let chromium = find_binary("FORUM_CHROMIUM", "chromium");
    let chromedriver = find_binary("FORUM_CHROMEDRIVER", "chromedriver");
    match (chromium, chromedriver) {
        (Ok(chromium), Ok(chromedriver)) => Ok((chromium, chromedriver)),
        (Err(missing), Ok(_)) | (Ok(_), Err(missing)) => Err(missing),
        (Err(chromium), Err(chromedriver)) => Err(format!("{chromium} and {chromedriver}")),
    }
}

/// Returns the file that `variable` names, or else `name` on `PATH`. The error names the
/// missing binary and where it was looked for.
fn find_binary(variable: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(format!("{name} ({variable}={})", path.display())) };
    }
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search_path)
        .map(|folder| folder.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| format!("{name} (not on PATH)"))
}

/// Returns a port that was free on 127.0.0.1 a moment ago.
// NOTE: another process could take the port before chromedriver binds it; chromedriver then
// exits and the test fails with a message pointing to its log.
fn free_loopback_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("reading the bound address").port()
}

/// Returns the cargo target folder, the parent of the `tmp` folder cargo gives integration tests.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("CARGO_TARGET_TMPDIR has a parent").to_owned()
}
