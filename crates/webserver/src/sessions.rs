//! Login sessions: random tokens in the `forum_session` cookie, mapped to user names.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;
use tokio_util::sync::CancellationToken;

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "forum_session";
/// Random bytes in a token; the token is their lowercase hex, 64 characters.
const TOKEN_BYTES: usize = 32;

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    /// Cancelled when the session is revoked, so the event streams opened with it end.
    pub revoked: CancellationToken,
}

/// The sessions of this web server, in memory only.
///
/// NOTE: sessions never expire and are lost on restart; a browser logs in again then.
#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Creates a session for `user` and returns its token.
    pub fn create(&self, user: &str) -> String {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let session = Session { user: user.to_owned(), revoked: CancellationToken::new() };
        self.by_token.lock().expect("sessions lock").insert(token.clone(), session);
        token
    }

    /// Returns the session with this token, if it exists and was not revoked.
    pub fn get(&self, token: &str) -> Option<Session> {
        self.by_token.lock().expect("sessions lock").get(token).cloned()
    }

    /// Revokes a session; returns whether it existed.
    pub fn revoke(&self, token: &str) -> bool {
        let removed = self.by_token.lock().expect("sessions lock").remove(token);
        match removed {
            Some(session) => {
                session.revoked.cancel();
                true
            }
            None => false,
        }
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

/// Returns the `Set-Cookie` value that stores `token` in the browser.
pub fn session_cookie(token: &str) -> String {
    format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/")
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
    fn tokens_are_random_hex() {
        let sessions = Sessions::default();
        let first = sessions.create("ana");
        let second = sessions.create("ana");
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
        assert_eq!(token_from_cookie_header(Some(&session_cookie(&first))), Some(first));
    }

    #[test]
    fn revoke_ends_session() {
        let sessions = Sessions::default();
        let token = sessions.create("ana");
        let session = sessions.get(&token).expect("session exists");
        assert_eq!(session.user, "ana");
        assert!(sessions.revoke(&token));
        assert!(session.revoked.is_cancelled());
        assert!(sessions.get(&token).is_none());
        assert!(!sessions.revoke(&token));
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(session_cookie("ab"), "forum_session=ab; HttpOnly; SameSite=Strict; Path=/");
        assert!(cleared_cookie().contains("Max-Age=0"));
    }
}
