//! Presence leases: which users have an open event stream on which web server, for how long.
//!
//! A web server renews its lease every few seconds with the full list of its users online.
//! When it dies, its lease lapses at `expires_at` and its users drop off the online list on
//! every replica, with no message from anyone. Each run of a web server (its `instance`) has
//! its own lease, and the newest lease of a run, by order key, replaces its older ones. So two
//! web servers that share a name do not hide each other's users, and the users of a previous
//! run drop off when that run's lease lapses.

use std::collections::{HashMap, HashSet};

use forum_protocol::{Change, ChangeKind};

/// A web server's newest lease.
struct Lease {
    key: (u64, u32, u64),
    /// Folded user names.
    users: Vec<String>,
    expires_at: u64,
}

/// The newest lease of every web server run.
///
/// NOTE: every renewal is a stored change, so each web server adds one small change to the
/// log per renewal interval, and every run keeps an entry here; nothing compacts them yet.
#[derive(Default)]
pub(crate) struct Leases {
    /// Leases by web server name and run.
    by_run: HashMap<(String, u64), Lease>,
    /// The names of the web servers that ever sent a lease.
    webservers: HashSet<String>,
}

impl Leases {
    /// Applies a `PresenceLease` change; other changes are ignored.
    pub fn apply(&mut self, change: &Change, fold: impl Fn(&str) -> String) {
        let ChangeKind::PresenceLease { webserver, instance, users, expires_at } = &change.kind else { return };
        self.webservers.insert(webserver.clone());
        let key = (change.lamport, change.id.origin, change.id.seq);
        let run = (webserver.clone(), *instance);
        let newer = self.by_run.get(&run).is_none_or(|lease| key > lease.key);
        // A newer lease replaces the run's lease even when it has already lapsed, as the one
        // a web server sends at shutdown, so the result does not depend on arrival order.
        if newer {
            let users = users.iter().map(|user| fold(user)).collect();
            self.by_run.insert(run, Lease { key, users, expires_at: *expires_at });
        }
    }

    /// Returns whether this web server reports its presence with leases.
    pub fn has_lease(&self, webserver: &str) -> bool {
        self.webservers.contains(webserver)
    }

    /// Returns the folded names of the users online on a web server whose lease is still
    /// running at `now` (milliseconds since the Unix epoch).
    pub fn online_users(&self, now: u64) -> HashSet<&str> {
        self.by_run
            .values()
            .filter(|lease| lease.expires_at > now)
            .flat_map(|lease| lease.users.iter().map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use forum_protocol::{now_millis, ChangeId};

    use super::*;

    fn lease(seq: u64, instance: u64, users: &[&str], expires_at: u64) -> Change {
        let users = users.iter().map(|user| user.to_string()).collect();
        let kind = ChangeKind::PresenceLease { webserver: "web1".into(), instance, users, expires_at };
        Change { id: ChangeId::new(1, seq), lamport: seq, time: 0, kind, key: None }
    }

    #[test]
    fn runs_sharing_a_name_keep_their_users() {
        let later = now_millis() + 60_000;
        let mut leases = Leases::default();
        leases.apply(&lease(1, 7, &["Ana"], later), str::to_lowercase);
        leases.apply(&lease(2, 8, &["luis"], later), str::to_lowercase);
        assert_eq!(leases.online_users(now_millis()), HashSet::from(["ana", "luis"]));
        assert!(leases.online_users(later).is_empty(), "leases lapse at their expiry");
    }

    #[test]
    fn lapsed_newer_lease_ends_the_run() {
        let later = now_millis() + 60_000;
        for order in [[1, 2], [2, 1]] {
            let mut leases = Leases::default();
            for seq in order {
                let change = if seq == 1 { lease(1, 7, &["ana"], later) } else { lease(2, 7, &[], 0) };
                leases.apply(&change, str::to_lowercase);
            }
            assert!(leases.online_users(now_millis()).is_empty(), "order {order:?}");
            assert!(leases.has_lease("web1"));
        }
    }
}
