//! The page: `GET /` and `GET /assets/{file}`, served from the `forum-browser-assets` crate.

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply as _, Response};

use crate::error::{ApiError, ErrorKind};

/// Returns the asset named `file` (a bare file name such as `app.js`), or a 404 error.
pub fn serve(file: &str) -> Result<Response, ApiError> {
    let (content_type, bytes) = forum_browser_assets::asset(file).ok_or(ApiError::new(ErrorKind::NotFound))?;
    let mut response = warp::reply::with_status(bytes, StatusCode::OK).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with each build of the binary and carry no validator, so browsers
    // fetch them again instead of keeping a stale copy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
