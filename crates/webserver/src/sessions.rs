//! Login sessions: random tokens in the `forum_session` cookie, stored by the data servers.
//!
//! The data servers keep each session as a replicated record under the BLAKE2b-256 hash of
//! its token, with its user and its expiry, so a session works on every web server of the
//! group and survives a web server restart. The token itself never leaves the browser and this
//! web server. Logging out revokes the record, which ends the session on every web server: a
//! web server learns of the revocation from its change feed (`SessionRevoked`) and drops the
//! session from its cache and ends the event streams opened with it.
//!
//! A cache keeps the sessions checked recently, so most requests need no round trip to the
//! data server. An entry lives at most [`CACHE_TTL`], and the whole cache is emptied when the
//! change feed resyncs, because a revocation may have been missed then.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blake2::{Blake2b, Digest};
use forum_protocol::{now_millis, ErrorCode, Reply, Request};
use rand::RngCore;

use crate::data_client::{DataClient, DataError};
use crate::error::ApiError;

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "forum_session";
/// Random bytes in a token; the token is their lowercase hex, 64 characters.
const TOKEN_BYTES: usize = 32;
/// How long a session lasts after logging in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long a checked session is trusted without asking the data server again. A revocation
/// that the change feed lost takes effect on this web server at most this long after it.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// The maximum number of sessions in the cache. Beyond it, the cache is emptied.
const CACHE_CAPACITY: usize = 100_000;

/// One logged-in browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// The hash under which the data servers store the session, in lowercase hex.
    pub token_hash: String,
    /// When the session ends, in milliseconds since the Unix epoch.
    pub expires_at: u64,
}

struct CachedSession {
    session: Session,
    checked_at: Instant,
}

/// The client of the session records, with a cache of recently checked sessions.
pub struct Sessions {
    data: DataClient,
    cache: Mutex<HashMap<String, CachedSession>>,
}

/// Returns the hash of a token under which its session is stored: BLAKE2b-256, lowercase hex.
pub fn token_hash(token: &str) -> String {
    let digest = Blake2b::<blake2::digest::consts::U32>::digest(token.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl Sessions {
    pub fn new(data: DataClient) -> Sessions {
        Sessions { data, cache: Mutex::new(HashMap::new()) }
    }

    /// Creates a session for `user` on the data servers and returns its token.
    pub async fn create(&self, user: &str) -> Result<String, ApiError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let session = Session {
            user: user.to_owned(),
            token_hash: token_hash(&token),
            expires_at: now_millis() + SESSION_LIFETIME.as_millis() as u64,
        };
        let request = Request::CreateSession {
            token_hash: session.token_hash.clone(),
            user: session.user.clone(),
            expires_at: session.expires_at,
        };
        match self.data.request(request).await? {
            Reply::Done => {
                self.remember(session);
                Ok(token)
            }
            other => Err(ApiError::unexpected_reply(other)),
        }
    }

    /// Returns the session of a token, or `None` when it does not exist, was revoked or has
    /// expired.
    pub async fn get(&self, token: &str) -> Result<Option<Session>, DataError> {
        let hash = token_hash(token);
        if let Some(session) = self.cached(&hash) {
            return Ok(Some(session));
        }
        match self.data.request(Request::CheckSession { token_hash: hash.clone() }).await? {
            Reply::Session { user, expires_at } => {
                let session = Session { user, token_hash: hash, expires_at };
                self.remember(session.clone());
                Ok(Some(session))
            }
            Reply::Error(error) if error.code == ErrorCode::UnknownSession => Ok(None),
            other => {
                tracing::warn!(reply = ?other, "the data server replied to a session check with an unexpected reply");
                Ok(None)
            }
        }
    }

    /// Revokes the session of a token on the data servers, and so on every web server.
    pub async fn revoke(&self, token: &str) -> Result<(), ApiError> {
        let hash = token_hash(token);
        self.forget(&hash);
        match self.data.request(Request::RevokeSession { token_hash: hash }).await? {
            Reply::Done => Ok(()),
            other => Err(ApiError::unexpected_reply(other)),
        }
    }

    /// Drops a session from the cache, after its revocation arrived in the change feed.
    pub fn forget(&self, token_hash: &str) {
        self.cache.lock().expect("session cache lock").remove(token_hash);
    }

    /// Empties the cache, after the change feed resynced and may have lost revocations.
    pub fn forget_all(&self) {
        self.cache.lock().expect("session cache lock").clear();
    }

    fn cached(&self, token_hash: &str) -> Option<Session> {
        let cache = self.cache.lock().expect("session cache lock");
        let entry = cache.get(token_hash)?;
        let fresh = entry.checked_at.elapsed() < CACHE_TTL && entry.session.expires_at > now_millis();
        fresh.then(|| entry.session.clone())
    }

    fn remember(&self, session: Session) {
        let mut cache = self.cache.lock().expect("session cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(session.token_hash.clone(), CachedSession { session, checked_at: Instant::now() });
    }

    /// Puts a session in the cache without a data server, for tests of the routes.
    #[cfg(test)]
    pub fn cache_for_test(&self, user: &str) -> String {
        let token = "ab".repeat(TOKEN_BYTES);
        let expires_at = now_millis() + SESSION_LIFETIME.as_millis() as u64;
        self.remember(Session { user: user.to_owned(), token_hash: token_hash(&token), expires_at });
        token
    }
}

/// Returns the session token from a `Cookie` header value, if it has a `forum_session`
/// cookie whose value looks like one of our tokens.
pub fn token_from_cookie_header(header: Option<&str>) -> Option<String> {
    header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| value.len() == TOKEN_BYTES * 2 && value.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// Returns the `Set-Cookie` value that stores `token` in the browser until the session expires.
pub fn session_cookie(token: &str) -> String {
    let max_age = SESSION_LIFETIME.as_secs();
    format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}")
}

/// Returns the `Set-Cookie` value that deletes the session cookie.
pub fn cleared_cookie() -> String {
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn cookie_header_yields_token() {
        assert_eq!(token_from_cookie_header(Some(&format!("forum_session={TOKEN}"))), Some(TOKEN.to_owned()));
        let header = format!("theme=dark; forum_session={TOKEN}; lang=es");
        assert_eq!(token_from_cookie_header(Some(&header)), Some(TOKEN.to_owned()));
    }

    #[test]
    fn cookie_header_without_valid_token() {
        let headers = [
            None,
            Some(String::new()),
            Some("theme=dark".to_owned()),
            Some("forum_session=".to_owned()),
            Some("forum_session=abc".to_owned()),
            Some(format!("forum_session={}", TOKEN.replace('a', "z"))),
            Some(format!("xforum_session={TOKEN}")),
        ];
        for header in headers {
            assert_eq!(token_from_cookie_header(header.as_deref()), None, "{header:?}");
        }
    }

    #[test]
    fn token_hash_is_blake2b_256_hex() {
        let hash = token_hash(TOKEN);
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_eq!(hash, token_hash(TOKEN), "the hash is deterministic");
        assert_ne!(hash, token_hash(&TOKEN.replace('0', "1")));
        assert!(!hash.contains(TOKEN));
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(session_cookie("ab"), "forum_session=ab; HttpOnly; SameSite=Strict; Path=/; Max-Age=2592000");
        assert!(cleared_cookie().contains("Max-Age=0"));
    }
}
