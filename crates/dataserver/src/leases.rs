//! Presence leases: which users have an open event stream on which web server, for how long.
//!
//! A web server renews its lease every few seconds with the full list of its users online.
//! When it dies, its lease lapses at `expires_at` and its users drop off the online list on
//! every replica, with no message from anyone. The newest lease of a web server, by order key,
//! replaces the older ones, so a restarted web server's first lease forgets the users of its
//! previous run.

use std::collections::{HashMap, HashSet};

use forum_protocol::{Change, ChangeKind};

/// A web server's newest lease.
struct Lease {
    key: (u64, u32, u64),
    /// Folded user names.
    users: Vec<String>,
    expires_at: u64,
}

/// The newest lease of every web server that ever sent one.
///
/// NOTE: every renewal is a stored change, so each web server adds one small change to the
/// log per renewal interval; nothing compacts the old leases yet.
#[derive(Default)]
pub(crate) struct Leases {
    by_webserver: HashMap<String, Lease>,
}

impl Leases {
    /// Applies a `PresenceLease` change; other changes are ignored.
    pub fn apply(&mut self, change: &Change, fold: impl Fn(&str) -> String) {
        let ChangeKind::PresenceLease { webserver, users, expires_at, .. } = &change.kind else { return };
        let key = (change.lamport, change.id.origin, change.id.seq);
        let newer = self.by_webserver.get(webserver).is_none_or(|lease| key > lease.key);
        if newer {
            let users = users.iter().map(|user| fold(user)).collect();
            self.by_webserver.insert(webserver.clone(), Lease { key, users, expires_at: *expires_at });
        }
    }

    /// Returns whether this web server reports its presence with leases.
    pub fn has_lease(&self, webserver: &str) -> bool {
        self.by_webserver.contains_key(webserver)
    }

    /// Returns the folded names of the users online on a web server whose lease is still
    /// running at `now` (milliseconds since the Unix epoch).
    pub fn online_users(&self, now: u64) -> HashSet<&str> {
        self.by_webserver
            .values()
            .filter(|lease| lease.expires_at > now)
            .flat_map(|lease| lease.users.iter().map(String::as_str))
            .collect()
    }
}
