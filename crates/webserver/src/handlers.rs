//! The handlers of the JSON API, one per route and method.
//!
//! Each handler turns a checked HTTP request into one data-server request and its reply into
//! a response. The acting user is always the session's user, never a body field.

use std::sync::Arc;

use forum_protocol::{validate_name, validate_password, validate_text, validate_title, ChangeId, ErrorCode, Reply, Request};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply as _, Response};

use crate::listener::ClientAddr;
use crate::error::{ApiError, ErrorKind};
use crate::events;
use crate::http_headers::RequestHeaders;
use crate::paging::{add_next_link, page_of_whole, PageQuery};
use crate::sessions::{cleared_cookie, session_cookie, Session};
use crate::state::AppState;

/// The outcome of a handler; the route adds the language to an error.
pub type ApiResult = Result<Response, ApiError>;

/// The body of `POST /api/users` and `POST /api/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    name: String,
    password: String,
}

/// The body of `POST /api/subjects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubject {
    title: String,
}

/// The body of `POST /api/subjects/{id}/messages` and `POST /api/private/{user}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewText {
    text: String,
}

#[derive(Serialize)]
struct UserName {
    name: String,
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// Returns the session of the request's cookie, or `None` without a valid one.
async fn session(state: &AppState, headers: &RequestHeaders) -> Result<Option<Session>, ApiError> {
    match headers.session_token.as_deref() {
        Some(token) => Ok(state.sessions.get(token).await?),
        None => Ok(None),
    }
}

async fn require_session(state: &AppState, headers: &RequestHeaders) -> Result<Session, ApiError> {
    session(state, headers).await?.ok_or(ApiError::new(ErrorKind::LoginRequired))
}

/// Parses the `{id}` segment of a subject URL, percent-encoded or not (`1-4` or `1%2D4`), as
/// the `before` parameter of a history page is.
fn subject_id(segment: &str) -> Result<ChangeId, ApiError> {
    let decoded = percent_decode_str(segment).decode_utf8().map_err(|_| ApiError::new(ErrorKind::InvalidId))?;
    decoded.parse().map_err(|_| ApiError::new(ErrorKind::InvalidId))
}

/// Decodes the `{user}` segment of a private-conversation URL. A segment that cannot be a
/// user name names no user, so it is a 404 like any other unknown user.
fn user_name(segment: &str) -> Result<String, ApiError> {
    let name = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::new(ErrorKind::UnknownUser))?
        .into_owned();
    validate_name(&name).map_err(|_| ApiError::new(ErrorKind::UnknownUser))?;
    Ok(name)
}

/// `POST /api/users`: registers a user.
pub async fn register(state: Arc<AppState>, body: Result<Credentials, ApiError>) -> ApiResult {
    let Credentials { name, password } = body?;
    validate_name(&name)?;
    validate_password(&password)?;
    match state.data.request(Request::Register { name, password }).await? {
        Reply::User(user) => Ok(json_response(StatusCode::CREATED, &UserName { name: user.name })),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `POST /api/login`: checks the password and starts a session.
pub async fn login(state: Arc<AppState>, client: Option<ClientAddr>, body: Result<Credentials, ApiError>) -> ApiResult {
    let Credentials { name, password } = body?;
    let address = client.map(|ClientAddr(address)| address.ip());
    if let Some(wait) = state.login_limiter.check(&name, address) {
        tracing::warn!(user = %name, ?address, retry_after = ?wait, "rejected a login because of too many failures");
        return Err(ApiError::new(ErrorKind::TooManyAttempts { retry_after_secs: wait.as_secs() }));
    }
    let reply = state.data.request(Request::Login { name: name.clone(), password }).await?;
    if matches!(&reply, Reply::Error(error) if error.code == ErrorCode::BadCredentials) {
        state.login_limiter.record_failure(&name, address);
    }
    match reply {
        Reply::User(user) => {
            state.login_limiter.record_success(&user.name);
            let token = state.sessions.create(&user.name).await?;
            tracing::info!(user = %user.name, "user logged in");
            let mut response = json_response(StatusCode::OK, &UserName { name: user.name });
            let cookie = HeaderValue::from_str(&session_cookie(&token)).expect("hex token is a valid header value");
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(response)
        }
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `POST /api/logout`: revokes the session, if any, and clears the cookie.
pub async fn logout(state: Arc<AppState>, headers: RequestHeaders) -> ApiResult {
    if let Some(token) = &headers.session_token {
        state.sessions.revoke(token).await?;
    }
    let mut response = warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response();
    let cookie = HeaderValue::from_str(&cleared_cookie()).expect("static cookie is a valid header value");
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /api/me`: the session's user.
pub async fn me(state: Arc<AppState>, headers: RequestHeaders) -> ApiResult {
    let session = require_session(&state, &headers).await?;
    Ok(json_response(StatusCode::OK, &UserName { name: session.user }))
}

/// `GET /api/users`: every user and whether they are online.
pub async fn list_users(state: Arc<AppState>) -> ApiResult {
    match state.data.request(Request::ListUsers).await? {
        Reply::Users(users) => Ok(json_response(StatusCode::OK, &users)),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `GET /api/subjects`: every subject, oldest first.
pub async fn list_subjects(state: Arc<AppState>) -> ApiResult {
    match state.data.request(Request::ListSubjects).await? {
        Reply::Subjects(subjects) => Ok(json_response(StatusCode::OK, &subjects)),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `POST /api/subjects`: creates a subject with the trimmed title.
pub async fn create_subject(state: Arc<AppState>, headers: RequestHeaders, body: Result<NewSubject, ApiError>) -> ApiResult {
    let session = require_session(&state, &headers).await?;
    let NewSubject { title } = body?;
    validate_title(&title)?;
    let request = Request::CreateSubject { title: title.trim().to_owned(), created_by: session.user };
    match state.data.request(request).await? {
        Reply::Subject(subject) => Ok(json_response(StatusCode::CREATED, &subject)),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `GET /api/subjects/{id}/messages`: one page of a subject's history, oldest first, with a
/// `Link` header to the older page when there is one.
pub async fn history(segment: String, query: Option<String>, state: Arc<AppState>) -> ApiResult {
    let subject = subject_id(&segment)?;
    let page = PageQuery::parse(query.as_deref())?;
    let request = Request::History { subject, before: page.before, limit: Some(page.limit) };
    let messages = match state.data.request(request).await? {
        Reply::MessagePage(messages) => messages,
        Reply::Messages(whole) => page_of_whole(whole, |message| message.id, page)?,
        other => return Err(ApiError::unexpected_reply(other)),
    };
    let mut response = json_response(StatusCode::OK, &messages.messages);
    let path = format!("/api/subjects/{subject}/messages");
    add_next_link(&mut response, &path, messages.messages.first().map(|message| message.id), messages.more, page.limit);
    Ok(response)
}

/// `POST /api/subjects/{id}/messages`: posts a message as the session's user.
pub async fn post_message(
    segment: String,
    state: Arc<AppState>,
    headers: RequestHeaders,
    body: Result<NewText, ApiError>,
) -> ApiResult {
    let session = require_session(&state, &headers).await?;
    let subject = subject_id(&segment)?;
    let NewText { text } = body?;
    validate_text(&text)?;
    // The reply is `Stored`, or the whole message from an older data server or for a retry.
    // The message is rebuilt from `Stored` and these copies.
    let request = Request::PostMessage { subject, author: session.user.clone(), text: text.clone() };
    match state.data.request(request).await? {
        Reply::Stored(stored) => Ok(json_response(StatusCode::CREATED, &stored.message(subject, session.user, text))),
        Reply::Message(message) => Ok(json_response(StatusCode::CREATED, &message)),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `GET /api/private/{user}`: one page of the conversation between the session's user and
/// `{user}`, oldest first, with a `Link` header to the older page when there is one.
pub async fn private_history(segment: String, query: Option<String>, state: Arc<AppState>, headers: RequestHeaders) -> ApiResult {
    let session = require_session(&state, &headers).await?;
    let other = user_name(&segment)?;
    let page = PageQuery::parse(query.as_deref())?;
    let path = format!("/api/private/{}", utf8_percent_encode(&other, NAME_ESCAPES));
    let request = Request::PrivateHistory { user: session.user, other, before: page.before, limit: Some(page.limit) };
    let messages = match state.data.request(request).await? {
        Reply::PrivatePage(messages) => messages,
        Reply::PrivateMessages(whole) => page_of_whole(whole, |message| message.id, page)?,
        other => return Err(ApiError::unexpected_reply(other)),
    };
    let mut response = json_response(StatusCode::OK, &messages.messages);
    add_next_link(&mut response, &path, messages.messages.first().map(|message| message.id), messages.more, page.limit);
    Ok(response)
}

/// The bytes that a user name is percent-encoded with in a URL path: all but ASCII letters,
/// digits and the other characters that names may contain ('.', '_' and '-').
const NAME_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// `POST /api/private/{user}`: sends a private message from the session's user.
pub async fn send_private(
    segment: String,
    state: Arc<AppState>,
    headers: RequestHeaders,
    body: Result<NewText, ApiError>,
) -> ApiResult {
    let session = require_session(&state, &headers).await?;
    let to = user_name(&segment)?;
    let NewText { text } = body?;
    validate_text(&text)?;
    let request = Request::SendPrivate { from: session.user.clone(), to: to.clone(), text: text.clone() };
    match state.data.request(request).await? {
        Reply::Stored(stored) => Ok(json_response(StatusCode::CREATED, &stored.private_message(session.user, to, text))),
        Reply::PrivateMessage(message) => Ok(json_response(StatusCode::CREATED, &message)),
        other => Err(ApiError::unexpected_reply(other)),
    }
}

/// `GET /api/events`: the event stream, with private messages only when logged in. It
/// resumes after the request's `Last-Event-ID`.
pub async fn events(state: Arc<AppState>, headers: RequestHeaders) -> ApiResult {
    let session = session(&state, &headers).await?;
    Ok(events::open(&state, session, headers.last_event_id.clone()))
}

/// Returns the 404 error for any unknown address.
pub async fn not_found() -> ApiResult {
    Err(ApiError::new(ErrorKind::NotFound))
}

