//! The paging parameters of the history routes, and the `Link` header that points at the
//! next (older) page.

use forum_protocol::{ChangeId, Page, MAX_PAGE_LIMIT};
use percent_encoding::percent_decode_str;
use warp::http::{header, HeaderValue};
use warp::reply::Response;

use crate::error::{ApiError, ErrorKind};

/// The number of messages in a page when the request has no `limit` parameter.
pub const DEFAULT_PAGE_LIMIT: u32 = 200;

/// The paging parameters of `GET /api/subjects/{id}/messages` and `GET /api/private/{user}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// The `before` parameter: the page ends just before this message.
    pub before: Option<ChangeId>,
    /// The `limit` parameter, from 1 to [`MAX_PAGE_LIMIT`].
    pub limit: u32,
}

impl PageQuery {
    /// Parses the raw query string of a history request. Parameters other than `before` and
    /// `limit` are ignored, so a cache-busting parameter does no harm. A limit above
    /// [`MAX_PAGE_LIMIT`] is rejected rather than lowered, so a client never gets fewer
    /// messages than it asked for without knowing why.
    pub fn parse(query: Option<&str>) -> Result<PageQuery, ApiError> {
        let mut before = None;
        let mut limit = None;
        for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Names may be percent-encoded as values may, as HTML forms encode both.
            let name = percent_decode_str(name).decode_utf8().ok();
            let value = percent_decode_str(value).decode_utf8().ok();
            match name.as_deref().unwrap_or("") {
                "before" => {
                    let id = value.and_then(|value| value.parse::<ChangeId>().ok());
                    let id = id.ok_or_else(|| ApiError::new(ErrorKind::InvalidCursor))?;
                    if before.replace(id).is_some() {
                        return Err(ApiError::with_detail(ErrorKind::InvalidCursor, "the parameter appears twice in the URL"));
                    }
                }
                "limit" => {
                    let number = value.and_then(|value| parse_limit(&value));
                    let number = number.ok_or_else(|| ApiError::new(ErrorKind::InvalidLimit))?;
                    if limit.replace(number).is_some() {
                        return Err(ApiError::with_detail(ErrorKind::InvalidLimit, "the parameter appears twice in the URL"));
                    }
                }
                _ => {}
            }
        }
        Ok(PageQuery { before, limit: limit.unwrap_or(DEFAULT_PAGE_LIMIT) })
    }
}

/// Parses a limit: decimal digits only (no sign), from 1 to [`MAX_PAGE_LIMIT`].
fn parse_limit(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let limit: u32 = text.parse().ok()?;
    (1..=MAX_PAGE_LIMIT).contains(&limit).then_some(limit)
}

/// Cuts a page out of a whole history, for a data server older than paging, which replies
/// to a paged request with every message. It returns the same page that a current data
/// server would.
pub fn page_of_whole<T>(mut messages: Vec<T>, id: impl Fn(&T) -> ChangeId, query: PageQuery) -> Result<Page<T>, ApiError> {
    if let Some(before) = query.before {
        let Some(position) = messages.iter().position(|message| id(message) == before) else {
            return Err(ApiError::new(ErrorKind::UnknownMessage));
        };
        messages.truncate(position);
    }
    let start = messages.len().saturating_sub(query.limit as usize);
    let more = start > 0;
    let messages = messages.split_off(start);
    Ok(Page { messages, more })
}

/// Adds `Link: <{path}?before={first}&limit={limit}>; rel="next"` to a page's response when
/// older messages remain. `path` must already be percent-encoded.
pub fn add_next_link(response: &mut Response, path: &str, first: Option<ChangeId>, more: bool, limit: u32) {
    let Some(first) = first.filter(|_| more) else {
        return;
    };
    let link = format!("<{path}?before={first}&limit={limit}>; rel=\"next\"");
    let value = HeaderValue::from_str(&link).expect("a percent-encoded path, an id and a number make a valid header value");
    response.headers_mut().insert(header::LINK, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_without_parameters() {
        for query in [None, Some(""), Some("&"), Some("x=1"), Some("before_=2")] {
            assert_eq!(PageQuery::parse(query), Ok(PageQuery { before: None, limit: DEFAULT_PAGE_LIMIT }), "{query:?}");
        }
    }

    #[test]
    fn query_reads_before_and_limit() {
        let parsed = PageQuery::parse(Some("before=2-17&limit=50&_=123")).unwrap();
        assert_eq!(parsed, PageQuery { before: Some(ChangeId::new(2, 17)), limit: 50 });
        let encoded = PageQuery::parse(Some("limit=1000&before=2%2D17")).unwrap();
        assert_eq!(encoded, PageQuery { before: Some(ChangeId::new(2, 17)), limit: MAX_PAGE_LIMIT });
        let encoded_names = PageQuery::parse(Some("%6cimit=5&b%65fore=2-17")).unwrap();
        assert_eq!(encoded_names, PageQuery { before: Some(ChangeId::new(2, 17)), limit: 5 });
    }

    #[test]
    fn query_rejects_bad_limits() {
        for limit in ["0", "-1", "+5", "1001", "abc", "", "1.5", "99999999999999999999", " 5", "%ff"] {
            let error = PageQuery::parse(Some(&format!("limit={limit}"))).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidLimit, "limit {limit:?}");
        }
        let twice = PageQuery::parse(Some("limit=5&limit=6")).unwrap_err();
        assert_eq!(twice.kind, ErrorKind::InvalidLimit);
    }

    #[test]
    fn query_rejects_bad_cursors() {
        for before in ["", "2", "2-", "x-1", "02-1", "1-2-3", "%ff", "before"] {
            let error = PageQuery::parse(Some(&format!("before={before}"))).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidCursor, "before {before:?}");
        }
        let twice = PageQuery::parse(Some("before=1-2&before=1-3")).unwrap_err();
        assert_eq!(twice.kind, ErrorKind::InvalidCursor);
    }

    #[test]
    fn whole_history_pages_like_a_data_server() {
        let ids: Vec<ChangeId> = (1..=5).map(|seq| ChangeId::new(1, seq)).collect();
        let page = |before, limit| page_of_whole(ids.clone(), |id| *id, PageQuery { before, limit });

        assert_eq!(page(None, 2), Ok(Page { messages: ids[3..].to_vec(), more: true }));
        assert_eq!(page(Some(ids[3]), 2), Ok(Page { messages: ids[1..3].to_vec(), more: true }));
        assert_eq!(page(Some(ids[1]), 2), Ok(Page { messages: ids[..1].to_vec(), more: false }));
        assert_eq!(page(None, 5), Ok(Page { messages: ids.clone(), more: false }));
        assert_eq!(page(Some(ChangeId::new(9, 9)), 2).unwrap_err().kind, ErrorKind::UnknownMessage);
    }

    #[test]
    fn next_link_only_when_more() {
        let mut response = Response::new(Default::default());
        add_next_link(&mut response, "/api/private/ana", Some(ChangeId::new(1, 4)), false, 10);
        assert!(response.headers().get(header::LINK).is_none());

        add_next_link(&mut response, "/api/private/ana", Some(ChangeId::new(1, 4)), true, 10);
        assert_eq!(response.headers()[header::LINK], "</api/private/ana?before=1-4&limit=10>; rel=\"next\"");
    }
}
