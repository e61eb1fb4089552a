//! Reading JSON request bodies: content type, size limit and parsing, each with its own error.

use bytes::Buf;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::header::{HeaderMap, CONTENT_TYPE};
use warp::{Filter, Rejection};

use crate::error::{ApiError, ErrorKind};

/// The largest request body accepted, in bytes. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Extracts the request body parsed as JSON into `T`, or the error that explains why it
/// could not be. Rejects only if another filter already took the body.
pub fn json_body<T: DeserializeOwned + Send + 'static>(
) -> impl Filter<Extract = (Result<T, ApiError>,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .map(|headers: HeaderMap| headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_owned))
        .and(warp::body::stream())
        .then(|content_type: Option<String>, body| async move {
            if !is_json_content_type(content_type.as_deref()) {
                return Err(ApiError::new(ErrorKind::UnsupportedMediaType));
            }
            let bytes = read_limited(body, MAX_BODY_BYTES).await?;
            parse_json(&bytes)
        })
}

/// Returns whether a `Content-Type` value is `application/json`, with or without parameters.
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// Collects a body, failing with 413 as soon as it exceeds `limit` bytes, so an oversized
/// body is never held in memory whole.
async fn read_limited<S, B>(body: S, limit: usize) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|error| ApiError::with_detail(ErrorKind::InvalidBody, error.to_string()))?;
        if bytes.len() + chunk.remaining() > limit {
            return Err(ApiError::new(ErrorKind::BodyTooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let length = part.len();
            chunk.advance(length);
        }
    }
    Ok(bytes)
}

/// Parses a JSON body: a syntax error is `invalid_json`, a well-formed body of the wrong
/// shape (missing, unknown or mistyped fields) is `invalid_body`. Both carry serde's message.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let kind = match error.classify() {
            serde_json::error::Category::Data => ErrorKind::InvalidBody,
            _ => ErrorKind::InvalidJson,
        };
        ApiError::with_detail(kind, error.to_string())
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Text {
        text: String,
    }

    #[test]
    fn content_types() {
        assert!(is_json_content_type(Some("application/json")));
        assert!(is_json_content_type(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json_content_type(None));
        assert!(!is_json_content_type(Some("text/plain")));
        assert!(!is_json_content_type(Some("application/jsonx")));
    }

    #[test]
    fn parse_errors_are_classified() {
        assert_eq!(parse_json::<Text>(br#"{"text":"hola"}"#), Ok(Text { text: "hola".into() }));
        let cases: [(&[u8], &str); 5] = [
            (b"{", "invalid_json"),
            (b"", "invalid_json"),
            (b"not json", "invalid_json"),
            (br#"{"text":"hola","author":"eva"}"#, "invalid_body"),
            (br#"{"text":5}"#, "invalid_body"),
        ];
        for (body, code) in cases {
            let error = parse_json::<Text>(body).unwrap_err();
            assert_eq!(error.kind.code(), code, "body {:?}", String::from_utf8_lossy(body));
            assert!(error.detail.is_some());
        }
    }

    #[tokio::test]
    async fn body_limit() {
        let chunks = |sizes: Vec<usize>| futures::stream::iter(sizes.into_iter().map(|size| Ok::<_, warp::Error>(bytes::Bytes::from(vec![b' '; size]))));
        assert_eq!(read_limited(chunks(vec![MAX_BODY_BYTES / 2, MAX_BODY_BYTES / 2]), MAX_BODY_BYTES).await.unwrap().len(), MAX_BODY_BYTES);
        let error = read_limited(chunks(vec![MAX_BODY_BYTES, 1]), MAX_BODY_BYTES).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::BodyTooLarge);
    }
}
