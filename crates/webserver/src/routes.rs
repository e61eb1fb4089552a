//! The route table: which handler answers which method and path.
//!
//! Every path of the API lists its methods and ends with a fallback that answers 405 with an
//! `Allow` header; any other path gets a JSON 404. Errors are rendered in the language of the
//! request's `Accept-Language`, and every response gets the security headers.

use std::convert::Infallible;
use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::assets;
use crate::body::json_body;
use crate::error::{ApiError, ErrorKind};
use crate::handlers::{self, ApiResult};
use crate::http_headers::{request_headers, security_headers, RequestHeaders};
use crate::i18n::Language;
use crate::state::AppState;

/// Builds the filter that serves the page and the API.
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let with_state = warp::any().map(move || Arc::clone(&state));
    let headers = request_headers;

    let users = warp::path!("api" / "users")
        .and(
            warp::post()
                .and(with_state.clone())
                .and(json_body())
                .then(handlers::register)
                .or(warp::get().and(with_state.clone()).then(handlers::list_users))
                .unify()
                .or(method_not_allowed("GET, POST"))
                .unify(),
        )
        .boxed();
    let login = warp::path!("api" / "login")
        .and(
            warp::post()
                .and(with_state.clone())
                .and(json_body())
                .then(handlers::login)
                .or(method_not_allowed("POST"))
                .unify(),
        )
        .boxed();
    let logout = warp::path!("api" / "logout")
        .and(
            warp::post()
                .and(with_state.clone())
                .and(headers())
                .then(handlers::logout)
                .or(method_not_allowed("POST"))
                .unify(),
        )
        .boxed();
    let me = warp::path!("api" / "me")
        .and(
            warp::get()
                .and(with_state.clone())
                .and(headers())
                .then(handlers::me)
                .or(method_not_allowed("GET"))
                .unify(),
        )
        .boxed();
    let subjects = warp::path!("api" / "subjects")
        .and(
            warp::get()
                .and(with_state.clone())
                .then(handlers::list_subjects)
                .or(warp::post()
                    .and(with_state.clone())
                    .and(headers())
                    .and(json_body())
                    .then(handlers::create_subject))
                .unify()
                .or(method_not_allowed("GET, POST"))
                .unify(),
        )
        .boxed();
    let messages_path = || warp::path!("api" / "subjects" / String / "messages");
    let messages = messages_path()
        .and(warp::get())
        .and(with_state.clone())
        .then(handlers::history)
        .or(messages_path()
            .and(warp::post())
            .and(with_state.clone())
            .and(headers())
            .and(json_body())
            .then(handlers::post_message))
        .unify()
        .or(messages_path().and(method_not_allowed("GET, POST")).map(|_id: String, result| result))
        .unify()
        .boxed();
    let private_path = || warp::path!("api" / "private" / String);
    let private = private_path()
        .and(warp::get())
        .and(with_state.clone())
        .and(headers())
        .then(handlers::private_history)
        .or(private_path()
            .and(warp::post())
            .and(with_state.clone())
            .and(headers())
            .and(json_body())
            .then(handlers::send_private))
        .unify()
        .or(private_path().and(method_not_allowed("GET, POST")).map(|_user: String, result| result))
        .unify()
        .boxed();
    let events = warp::path!("api" / "events")
        .and(
            warp::get()
                .and(with_state.clone())
                .and(headers())
                .then(handlers::events)
                .or(method_not_allowed("GET"))
                .unify(),
        )
        .boxed();

    let index = warp::path::end()
        .and(warp::get().map(|| assets::serve("index.html")).or(method_not_allowed("GET")).unify())
        .boxed();
    let asset_path = || warp::path!("assets" / String);
    let asset = asset_path()
        .and(warp::get())
        .map(|file: String| assets::serve(&file))
        .or(asset_path().and(method_not_allowed("GET")).map(|_file: String, result| result))
        .unify()
        .boxed();
    let unknown = warp::any().then(handlers::not_found).boxed();

    let api = users
        .or(login)
        .unify()
        .or(logout)
        .unify()
        .or(me)
        .unify()
        .or(subjects)
        .unify()
        .or(messages)
        .unify()
        .or(private)
        .unify()
        .or(events)
        .unify()
        .boxed();
    let everything = api.or(index).unify().or(asset).unify().or(unknown).unify();

    headers()
        .and(everything)
        .map(|headers: RequestHeaders, result: ApiResult| render(headers.language, result))
        .recover(render_rejection)
        .unify()
        .map(|mut response: Response| {
            response.headers_mut().extend(security_headers());
            response
        })
        .boxed()
}

/// Turns a handler's outcome into the response, rendering an error in `language`.
fn render(language: Language, result: ApiResult) -> Response {
    match result {
        Ok(response) => response,
        Err(error) => {
            if error.kind.status().is_server_error() {
                tracing::warn!(code = error.kind.code(), "answering with a server error");
            }
            error.into_response(language)
        }
    }
}

/// The fallback for a path that exists but not with the request's method.
fn method_not_allowed(allow: &'static str) -> impl Filter<Extract = (ApiResult,), Error = Infallible> + Clone {
    warp::any().map(move || Err(ApiError::method_not_allowed(allow)))
}

/// Answers a rejection that no route turned into a response. The routes above end in
/// catch-all fallbacks, so this runs only for warp's own failures, such as a body that was
/// already taken; it answers in English because a rejection carries no request headers.
async fn render_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let kind = if rejection.is_not_found() {
        ErrorKind::NotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ErrorKind::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ErrorKind::BodyTooLarge
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ErrorKind::Internal
    };
    let mut response = ApiError::new(kind).into_response(Language::English);
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().remove(warp::http::header::ALLOW);
    }
    Ok(response)
}
