//! API errors: their HTTP status, their stable code and their JSON body.
//!
//! Every 4xx and 5xx response of the API is `{"error": "<sentence>", "code": "<snake_case>"}`,
//! where the sentence is in the language that `i18n.rs` picks from `Accept-Language`.

use forum_protocol::{ErrorCode, ErrorReply, Invalid, Reply};
use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply as _, Response};

use crate::data_client::DataError;
use crate::i18n::{error_sentence, Language};

/// The kind of an API error, independent of the language it is reported in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A field failed one of the shared checks in `forum_protocol::validate_*`.
    Invalid(Invalid),
    InvalidJson,
    /// Valid JSON, but a field is missing, unknown or of the wrong type.
    InvalidBody,
    UnsupportedMediaType,
    BodyTooLarge,
    /// The request body did not arrive in full within the body-read timeout.
    BodyTimeout,
    InvalidId,
    /// The `before` parameter of a history request is not a message id.
    InvalidCursor,
    /// The `limit` parameter of a history request is not a number from 1 to the maximum page size.
    InvalidLimit,
    /// The `before` parameter names no message of the subject or conversation.
    UnknownMessage,
    LoginRequired,
    BadCredentials,
    NameTaken,
    TitleTaken,
    UnknownSubject,
    UnknownUser,
    NotFound,
    MethodNotAllowed,
    /// The data server replied `InvalidInput` to input that passed our own checks.
    InputRejected,
    DataServerTimeout,
    DataServerUnavailable,
    Overloaded,
    /// Too many failed logins for the name or from the address; retry after this many seconds.
    TooManyAttempts { retry_after_secs: u64 },
    Internal,
}

impl ErrorKind {
    /// Every kind that is not an [`Invalid`] wrapper, for tests that walk all of them.
    #[cfg(test)]
    pub const ALL_OWN: &'static [ErrorKind] = &[
        ErrorKind::InvalidJson,
        ErrorKind::InvalidBody,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::BodyTooLarge,
        ErrorKind::BodyTimeout,
        ErrorKind::InvalidId,
        ErrorKind::InvalidCursor,
        ErrorKind::InvalidLimit,
        ErrorKind::UnknownMessage,
        ErrorKind::LoginRequired,
        ErrorKind::BadCredentials,
        ErrorKind::NameTaken,
        ErrorKind::TitleTaken,
        ErrorKind::UnknownSubject,
        ErrorKind::UnknownUser,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::InputRejected,
        ErrorKind::DataServerTimeout,
        ErrorKind::DataServerUnavailable,
        ErrorKind::Overloaded,
        ErrorKind::TooManyAttempts { retry_after_secs: 42 },
        ErrorKind::Internal,
    ];

    /// Returns the HTTP status of responses with this kind of error.
    pub fn status(&self) -> StatusCode {
        match self {
            ErrorKind::Invalid(_)
            | ErrorKind::InvalidJson
            | ErrorKind::InvalidBody
            | ErrorKind::InvalidId
            | ErrorKind::InvalidCursor
            | ErrorKind::InvalidLimit
            | ErrorKind::UnknownMessage
            | ErrorKind::InputRejected => StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::LoginRequired | ErrorKind::BadCredentials => StatusCode::UNAUTHORIZED,
            ErrorKind::NameTaken | ErrorKind::TitleTaken => StatusCode::CONFLICT,
            ErrorKind::UnknownSubject | ErrorKind::UnknownUser | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::DataServerTimeout | ErrorKind::DataServerUnavailable | ErrorKind::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the stable snake_case name that programs match on, the `code` field of the body.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::Invalid(invalid) => invalid.code(),
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidBody => "invalid_body",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::InvalidId => "invalid_id",
            ErrorKind::InvalidCursor => "invalid_cursor",
            ErrorKind::InvalidLimit => "invalid_limit",
            ErrorKind::UnknownMessage => "unknown_message",
            ErrorKind::LoginRequired => "login_required",
            ErrorKind::BadCredentials => "bad_credentials",
            ErrorKind::NameTaken => "name_taken",
            ErrorKind::TitleTaken => "title_taken",
            ErrorKind::UnknownSubject => "unknown_subject",
            ErrorKind::UnknownUser => "unknown_user",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::InputRejected => "invalid_input",
            ErrorKind::DataServerTimeout => "data_server_timeout",
            ErrorKind::DataServerUnavailable => "data_server_unavailable",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::TooManyAttempts { .. } => "too_many_attempts",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error that a handler returns instead of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// Extra English detail appended to the sentence, such as the JSON parser's message.
    pub detail: Option<String>,
    /// The value of the `Allow` header, for [`ErrorKind::MethodNotAllowed`].
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(kind: ErrorKind) -> ApiError {
        ApiError { kind, detail: None, allow: None }
    }

    pub fn with_detail(kind: ErrorKind, detail: impl Into<String>) -> ApiError {
        ApiError { kind, detail: Some(detail.into()), allow: None }
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError { kind: ErrorKind::MethodNotAllowed, detail: None, allow: Some(allow) }
    }

    /// Maps a data server's error reply to the API error returned to the browser, and logs
    /// the kinds that mean a fault rather than bad input.
    pub fn from_data_server(error: ErrorReply) -> ApiError {
        let kind = match error.code {
            ErrorCode::InvalidInput => return ApiError::with_detail(ErrorKind::InputRejected, error.message),
            ErrorCode::NameTaken => ErrorKind::NameTaken,
            ErrorCode::NameConflict => return ApiError::with_detail(ErrorKind::NameTaken, error.message),
            ErrorCode::TitleTaken => ErrorKind::TitleTaken,
            ErrorCode::BadCredentials => ErrorKind::BadCredentials,
            ErrorCode::UnknownSubject => ErrorKind::UnknownSubject,
            ErrorCode::UnknownUser => ErrorKind::UnknownUser,
            ErrorCode::Overloaded => ErrorKind::Overloaded,
            ErrorCode::UnknownSession => ErrorKind::LoginRequired,
            ErrorCode::UnknownMessage => ErrorKind::UnknownMessage,
            ErrorCode::Malformed | ErrorCode::UnsupportedVersion | ErrorCode::Internal => {
                tracing::error!(code = ?error.code, message = %error.message, "data server failed a request");
                ErrorKind::Internal
            }
        };
        ApiError::new(kind)
    }

    /// Maps a reply of the wrong variant: an error reply as above, anything else as a fault.
    pub fn unexpected_reply(reply: Reply) -> ApiError {
        match reply {
            Reply::Error(error) => ApiError::from_data_server(error),
            other => {
                tracing::error!(reply = ?other, "data server sent a reply of the wrong kind");
                ApiError::new(ErrorKind::Internal)
            }
        }
    }

    /// Builds the JSON response in the given language.
    pub fn into_response(self, language: Language) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
            code: &'static str,
        }
        let mut sentence = error_sentence(&self.kind, language);
        if let Some(detail) = &self.detail {
            sentence = format!("{} ({detail}).", sentence.trim_end_matches('.'));
        }
        let body = Body { error: sentence, code: self.kind.code() };
        let mut response = warp::reply::with_status(warp::reply::json(&body), self.kind.status()).into_response();
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let ErrorKind::TooManyAttempts { retry_after_secs } = self.kind {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> ApiError {
        ApiError::new(ErrorKind::Invalid(invalid))
    }
}

impl From<DataError> for ApiError {
    fn from(error: DataError) -> ApiError {
        match error {
            DataError::Timeout => ApiError::new(ErrorKind::DataServerTimeout),
            DataError::Unavailable => ApiError::new(ErrorKind::DataServerUnavailable),
            DataError::QueueFull => ApiError::new(ErrorKind::Overloaded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn data_server_codes_map_to_statuses() {
        let cases = [
            (ErrorCode::InvalidInput, StatusCode::BAD_REQUEST, "invalid_input"),
            (ErrorCode::NameTaken, StatusCode::CONFLICT, "name_taken"),
            (ErrorCode::TitleTaken, StatusCode::CONFLICT, "title_taken"),
            (ErrorCode::BadCredentials, StatusCode::UNAUTHORIZED, "bad_credentials"),
            (ErrorCode::UnknownSubject, StatusCode::NOT_FOUND, "unknown_subject"),
            (ErrorCode::UnknownUser, StatusCode::NOT_FOUND, "unknown_user"),
            (ErrorCode::Overloaded, StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            (ErrorCode::UnknownMessage, StatusCode::BAD_REQUEST, "unknown_message"),
            (ErrorCode::Malformed, StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            (ErrorCode::UnsupportedVersion, StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ];
        for (code, status, name) in cases {
            let error = ApiError::from_data_server(ErrorReply { code, message: "m".into() });
            assert_eq!(error.kind.status(), status, "{code:?}");
            assert_eq!(error.kind.code(), name, "{code:?}");
        }
    }

    #[test]
    fn data_errors_map_to_503() {
        for error in [DataError::Timeout, DataError::Unavailable, DataError::QueueFull] {
            assert_eq!(ApiError::from(error).kind.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn wrong_reply_kind_is_internal() {
        let error = ApiError::unexpected_reply(Reply::Done);
        assert_eq!(error.kind, ErrorKind::Internal);
    }

    #[tokio::test]
    async fn error_body_is_translated() {
        let error = ApiError::new(ErrorKind::UnknownSubject);
        let response = error.clone().into_response(Language::Spanish);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_json(response).await;
        assert_eq!(body["code"], "unknown_subject");
        assert_eq!(body["error"], "Ese tema no existe.");

        let body = body_json(error.into_response(Language::English)).await;
        assert_eq!(body["error"], "That subject does not exist.");
    }

    #[tokio::test]
    async fn error_body_carries_detail_and_allow() {
        let body = body_json(ApiError::with_detail(ErrorKind::InvalidJson, "EOF at line 1").into_response(Language::English)).await;
        assert_eq!(body["error"], "The request body is not valid JSON (EOF at line 1).");

        let response = ApiError::method_not_allowed("GET, POST").into_response(Language::English);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }
}
