//! Login sessions as replicated records, so that a session works on every web server of the
//! group and survives a web server restart.
//!
//! A session is known only by the hash of its token: web servers send the BLAKE2b-256 hash,
//! never the token. A revocation wins over the creation in any order of arrival, so logging
//! out on one web server ends the session everywhere.

use std::collections::{HashMap, HashSet};

use forum_protocol::{Change, ChangeKind};

/// A stored session.
struct SessionEntry {
    user: String,
    expires_at: u64,
}

/// Every session created and every session revoked.
///
/// NOTE: expired and revoked sessions stay in memory and in the store; nothing purges them yet.
#[derive(Default)]
pub(crate) struct SessionTable {
    sessions: HashMap<String, SessionEntry>,
    revoked: HashSet<String>,
}

impl SessionTable {
    /// Applies a `SessionCreated` or `SessionRevoked` change; other changes are ignored.
    pub fn apply(&mut self, change: &Change) {
        match &change.kind {
            ChangeKind::SessionCreated { token_hash, user, expires_at } => {
                // Two creations of one hash are the same login retried on two servers.
                self.sessions
                    .entry(token_hash.clone())
                    .or_insert_with(|| SessionEntry { user: user.clone(), expires_at: *expires_at });
            }
            ChangeKind::SessionRevoked { token_hash } => {
                self.revoked.insert(token_hash.clone());
            }
            _ => {}
        }
    }

    /// Returns whether a session with this hash was ever created.
    pub fn exists(&self, token_hash: &str) -> bool {
        self.sessions.contains_key(token_hash)
    }

    /// Returns whether a session with this hash was revoked.
    pub fn is_revoked(&self, token_hash: &str) -> bool {
        self.revoked.contains(token_hash)
    }

    /// Returns the user and expiry of a session that exists, is not revoked and has not
    /// expired at `now` (milliseconds since the Unix epoch).
    pub fn valid(&self, token_hash: &str, now: u64) -> Option<(&str, u64)> {
        if self.revoked.contains(token_hash) {
            return None;
        }
        let entry = self.sessions.get(token_hash)?;
        (entry.expires_at > now).then_some((entry.user.as_str(), entry.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use forum_protocol::ChangeId;

    use super::*;

    fn change(seq: u64, kind: ChangeKind) -> Change {
        Change { id: ChangeId::new(1, seq), lamport: seq, time: 0, kind, key: None }
    }

    #[test]
    fn revocation_wins_in_any_order() {
        let created = change(1, ChangeKind::SessionCreated { token_hash: "h".into(), user: "ana".into(), expires_at: 100 });
        let revoked = change(2, ChangeKind::SessionRevoked { token_hash: "h".into() });
        for order in [[&created, &revoked], [&revoked, &created]] {
            let mut table = SessionTable::default();
            for change in order {
                table.apply(change);
            }
            assert!(table.valid("h", 0).is_none());
        }
    }

    #[test]
    fn session_expires() {
        let mut table = SessionTable::default();
        table.apply(&change(1, ChangeKind::SessionCreated { token_hash: "h".into(), user: "ana".into(), expires_at: 100 }));
        assert_eq!(table.valid("h", 99), Some(("ana", 100)));
        assert!(table.valid("h", 100).is_none());
        assert!(table.valid("other", 0).is_none());
    }
}
