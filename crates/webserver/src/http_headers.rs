//! The request headers the API reads and the security headers every response carries.

use warp::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use warp::Filter;

use crate::i18n::Language;
use crate::sessions::token_from_cookie_header;

/// The request headers that handlers need, read once per request.
#[derive(Clone)]
pub struct RequestHeaders {
    pub language: Language,
    /// The session token from the `forum_session` cookie, not yet checked against the
    /// session store.
    pub session_token: Option<String>,
    /// The `Last-Event-ID` header that a reconnecting event stream sends.
    pub last_event_id: Option<String>,
}

impl RequestHeaders {
    /// Reads the headers; a value that is not visible ASCII counts as missing.
    pub fn from_map(headers: &HeaderMap) -> RequestHeaders {
        let text = |name: HeaderName| headers.get(name).and_then(|value| value.to_str().ok());
        RequestHeaders {
            language: Language::from_accept_language(text(header::ACCEPT_LANGUAGE)),
            session_token: token_from_cookie_header(text(header::COOKIE)),
            last_event_id: text(HeaderName::from_static("last-event-id")).map(str::to_owned),
        }
    }
}

/// Extracts the [`RequestHeaders`] of a request; never rejects.
pub fn request_headers() -> impl Filter<Extract = (RequestHeaders,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| RequestHeaders::from_map(&headers))
}

/// The Content-Security-Policy of every response: only this origin's scripts, styles and
/// connections, images also from `data:` URLs, and no framing by other sites.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// Returns the headers added to every response.
pub fn security_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers
}
