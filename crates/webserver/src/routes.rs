//! The route table, which maps each method and path to its handler.
//!
//! Every path of the API lists its methods and ends with a fallback that returns 405 with an
//! `Allow` header. Any other path gets a JSON 404. Errors are rendered in the language of the
//! request's `Accept-Language`, and every response gets the security headers.

use std::convert::Infallible;
use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::listener::ClientAddr;
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
                .and(warp::ext::optional::<ClientAddr>())
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
        .and(raw_query())
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
        .and(raw_query())
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
                tracing::warn!(code = error.kind.code(), "request failed with a server error");
            }
            error.into_response(language)
        }
    }
}

/// Extracts the raw query string, or `None` when the URL has none. `warp::query::raw` alone
/// rejects a request without one.
fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::query::raw().map(Some).or(warp::any().map(|| None)).unify()
}

/// The fallback for a path that exists but not with the request's method.
fn method_not_allowed(allow: &'static str) -> impl Filter<Extract = (ApiResult,), Error = Infallible> + Clone {
    warp::any().map(move || Err(ApiError::method_not_allowed(allow)))
}

/// Renders a rejection that no route turned into a response. The routes above end in
/// catch-all fallbacks, so this runs only for warp's own failures, such as a body that was
/// already taken. It renders English because a rejection carries no request headers.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use warp::http::header;

    use super::*;
    use crate::changes::Feed;
    use crate::data_client::DataClient;
    use crate::presence::Presence;
    use crate::sessions::{session_cookie, Sessions};

    /// Returns state whose data server never replies: the endpoint's port was free a moment
    /// ago, so the client keeps connecting and requests time out after 200 ms.
    fn offline_state() -> Arc<AppState> {
        let free_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let endpoint = format!("tcp://127.0.0.1:{free_port}");
        let data = DataClient::start(vec![endpoint], Duration::from_millis(200), None, stop, &TaskTracker::new());
        Arc::new(AppState {
            login_limiter: Default::default(),
            sessions: Sessions::new(data.clone()),
            data,
            presence: Arc::new(Presence::default()),
            feed: Arc::new(Feed::new()),
            request_timeout: Duration::from_millis(200),
            shutdown: CancellationToken::new(),
            streams: TaskTracker::new(),
        })
    }

    fn json(response: &warp::http::Response<bytes::Bytes>) -> serde_json::Value {
        serde_json::from_slice(response.body()).expect("JSON body")
    }

    fn logged_in(state: &AppState) -> String {
        session_cookie(&state.sessions.cache_for_test("ana"))
    }

    #[tokio::test]
    async fn writes_require_session() {
        let state = offline_state();
        let routes = routes(Arc::clone(&state));
        for path in ["/api/subjects", "/api/subjects/1-1/messages", "/api/private/luis"] {
            let response = warp::test::request()
                .method("POST")
                .path(path)
                .header("content-type", "application/json")
                .body(r#"{"text":"hola"}"#)
                .reply(&routes)
                .await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(json(&response)["code"], "login_required", "{path}");
        }
    }

    #[tokio::test]
    async fn body_checks() {
        let state = offline_state();
        let cookie = logged_in(&state);
        let routes = routes(Arc::clone(&state));
        let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(17 * 1024));
        let long_text = format!(r#"{{"text":"{}"}}"#, "x".repeat(4097));
        let cases: Vec<(Option<&str>, &str, StatusCode, &str)> = vec![
            (None, r#"{"text":"hola"}"#, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            (Some("text/plain"), r#"{"text":"hola"}"#, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            (Some("application/json"), "{", StatusCode::BAD_REQUEST, "invalid_json"),
            (Some("application/json"), r#"{"text":"hola","author":"eva"}"#, StatusCode::BAD_REQUEST, "invalid_body"),
            (Some("application/json"), r#"{}"#, StatusCode::BAD_REQUEST, "invalid_body"),
            (Some("application/json"), r#"{"text":"  "}"#, StatusCode::BAD_REQUEST, "text_empty"),
            (Some("application/json"), &long_text, StatusCode::BAD_REQUEST, "text_too_long"),
            (Some("application/json"), &big, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        ];
        for (content_type, body, status, code) in cases {
            let mut request = warp::test::request()
                .method("POST")
                .path("/api/subjects/1-1/messages")
                .header("cookie", &cookie)
                .body(body);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.reply(&routes).await;
            assert_eq!(response.status(), status, "{content_type:?} {}", &body[..body.len().min(40)]);
            assert_eq!(json(&response)["code"], code, "{content_type:?} {}", &body[..body.len().min(40)]);
        }
    }

    #[tokio::test]
    async fn register_validates_fields() {
        let routes = routes(offline_state());
        let cases = [
            (r#"{"name":"","password":"12345678"}"#, "name_empty"),
            (r#"{"name":"a b","password":"12345678"}"#, "name_characters"),
            (r#"{"name":"ana","password":"short"}"#, "password_too_short"),
            (r#"{"name":"ana"}"#, "invalid_body"),
        ];
        for (body, code) in cases {
            let response = warp::test::request()
                .method("POST")
                .path("/api/users")
                .header("content-type", "application/json")
                .body(body)
                .reply(&routes)
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(json(&response)["code"], code, "{body}");
        }
    }

    #[tokio::test]
    async fn malformed_subject_id() {
        let routes = routes(offline_state());
        let response = warp::test::request().path("/api/subjects/abc/messages").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(&response)["code"], "invalid_id");
    }

    #[tokio::test]
    async fn unknown_route_and_method() {
        let routes = routes(offline_state());
        let response = warp::test::request().path("/api/nothing").header("accept-language", "es").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(json(&response)["code"], "not_found");
        assert_eq!(json(&response)["error"], "No hay nada en esta dirección.");

        let response = warp::test::request().method("DELETE").path("/api/subjects").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
        assert_eq!(json(&response)["code"], "method_not_allowed");

        let response = warp::test::request().method("PUT").path("/api/subjects/1-1/messages").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

        let response = warp::test::request().path("/nowhere").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn me_and_logout() {
        let state = offline_state();
        let cookie = logged_in(&state);
        let routes = routes(Arc::clone(&state));
        let response = warp::test::request().path("/api/me").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        let response = warp::test::request().path("/api/me").header("cookie", &cookie).reply(&routes).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json(&response)["name"], "ana");

        // Logging out revokes the session on the data servers; without one it cannot, so the
        // browser keeps its cookie and may retry.
        let response = warp::test::request().method("POST").path("/api/logout").header("cookie", &cookie).reply(&routes).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(&response)["code"], "data_server_timeout");

        let response = warp::test::request().method("POST").path("/api/logout").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "logging out without a session succeeds");
        assert!(response.headers()[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    }

    #[tokio::test]
    async fn data_server_silence_is_503() {
        let routes = routes(offline_state());
        let response = warp::test::request().path("/api/subjects").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(&response)["code"], "data_server_timeout");
    }

    #[tokio::test]
    async fn private_path_with_impossible_name() {
        let state = offline_state();
        let cookie = logged_in(&state);
        let routes = routes(Arc::clone(&state));
        let response = warp::test::request().path("/api/private/a%20b").header("cookie", &cookie).reply(&routes).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(json(&response)["code"], "unknown_user");
    }

    #[tokio::test]
    async fn static_assets_and_security_headers() {
        let routes = routes(offline_state());
        let response = warp::test::request().path("/").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert_eq!(response.headers()[header::CONTENT_SECURITY_POLICY], crate::http_headers::CONTENT_SECURITY_POLICY);
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(response.headers()[header::REFERRER_POLICY], "no-referrer");

        let response = warp::test::request().path("/assets/app.js").reply(&routes).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/javascript"));

        for path in ["/assets/missing.js", "/assets/..%2FCargo.toml"] {
            let response = warp::test::request().path(path).reply(&routes).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        }
    }
}
