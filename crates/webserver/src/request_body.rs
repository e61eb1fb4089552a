//! Reading each request's body before routing, with a size cap and a time limit.
//!
//! hyper's header-read timeout ends when the headers are complete, so without this a client
//! that declares a body and never sends it keeps its connection open forever. The accept loop reads
//! the whole body first, and responds at once with `Connection: close`:
//!
//! - 413 when the declared `Content-Length` is above [`MAX_BODY_BYTES`], without reading the
//!   body, and so without sending `100 Continue` to a client that sent `Expect: 100-continue`
//!   (hyper sends it only when the body is first read);
//! - 413 when a chunked body grows above the cap;
//! - 408 when the body is not complete within the body-read timeout, counted from the end of
//!   the headers.
//!
//! Bodies within the cap reach the routes in memory, so a route never waits on the client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use warp::http::{header, HeaderValue, Request};
use warp::reply::Response;

use crate::body::MAX_BODY_BYTES;
use crate::error::{ApiError, ErrorKind};
use crate::i18n::Language;

/// The reason a body was not read.
enum Failure {
    TooLarge,
    TimedOut,
    Read(hyper::Error),
}

/// Returns the request with its body read into memory, or the error response to send instead.
pub(crate) async fn read(request: Request<Incoming>, timeout: Duration, client: SocketAddr) -> Result<Request<Full<Bytes>>, Response> {
    let (parts, body) = request.into_parts();
    let result = if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        // hyper sets the lower size hint to the Content-Length of a fixed-length body.
        Err(Failure::TooLarge)
    } else {
        match tokio::time::timeout(timeout, collect(body)).await {
            Ok(collected) => collected,
            Err(_) => Err(Failure::TimedOut),
        }
    };
    let error = match result {
        Ok(bytes) => return Ok(Request::from_parts(parts, Full::new(bytes))),
        Err(Failure::TooLarge) => ApiError::new(ErrorKind::BodyTooLarge),
        Err(Failure::TimedOut) => {
            tracing::debug!(%client, ?timeout, "closed a connection whose request body did not arrive in time");
            ApiError::new(ErrorKind::BodyTimeout)
        }
        Err(Failure::Read(error)) => {
            tracing::debug!(%client, %error, "failed to read a request body");
            ApiError::with_detail(ErrorKind::InvalidBody, error.to_string())
        }
    };
    let accept_language = parts.headers.get(header::ACCEPT_LANGUAGE).and_then(|value| value.to_str().ok());
    let mut response = error.into_response(Language::from_accept_language(accept_language));
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    Err(response)
}

/// Reads a body, failing as soon as it exceeds [`MAX_BODY_BYTES`].
async fn collect(mut body: Incoming) -> Result<Bytes, Failure> {
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Failure::Read)?;
        // Trailers carry no body bytes and are dropped.
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY_BYTES {
                return Err(Failure::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}
