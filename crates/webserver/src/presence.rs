//! Presence: which users have an open event stream on this web server.
//!
//! Each open stream of a logged-in user owns a [`PresenceGuard`], which counts the user's
//! streams. A reporter task compares the set of users with at least one stream to the set it
//! last reported to the data server and sends `SetPresence` for each difference: online on
//! 0→1, offline on 1→0. Comparing sets instead of queueing events means no queue can grow,
//! a quick close-and-reopen sends nothing, and a report that failed is retried.
//!
//! Those reports drive the `presence` events. The online list itself comes from a lease: every
//! [`LEASE_RENEWAL_INTERVAL`] the reporter sends the full set of users online here, valid for
//! [`LEASE_DURATION`]. When this web server dies, its users drop off the online list of every
//! data server once the lease lapses, at most [`LEASE_DURATION`] after the death (plus the
//! difference between the data servers' clocks).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forum_protocol::{ErrorCode, Reply, Request};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::data_client::DataClient;

/// Pause before retrying reports that failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often the presence lease is renewed.
pub const LEASE_RENEWAL_INTERVAL: Duration = Duration::from_secs(3);
/// How long a presence lease lasts: the bound on how long the users of a dead web server stay
/// online.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);

/// Counts of open event streams per user name.
#[derive(Default)]
pub struct Presence {
    streams: Mutex<HashMap<String, usize>>,
    changed: Notify,
}

/// Counts one open stream of a user until dropped.
pub struct PresenceGuard {
    presence: Arc<Presence>,
    user: String,
}

impl Presence {
    /// Counts a new stream of `user`.
    pub fn open(self: &Arc<Self>, user: &str) -> PresenceGuard {
        *self.streams.lock().expect("presence lock").entry(user.to_owned()).or_default() += 1;
        self.changed.notify_one();
        PresenceGuard { presence: Arc::clone(self), user: user.to_owned() }
    }

    /// Returns the users with at least one open stream.
    pub fn online_users(&self) -> HashSet<String> {
        self.streams.lock().expect("presence lock").keys().cloned().collect()
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let mut streams = self.presence.streams.lock().expect("presence lock");
        if let Some(count) = streams.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                streams.remove(&self.user);
            }
        }
        drop(streams);
        self.presence.changed.notify_one();
    }
}

/// Reports presence changes and renews the presence lease until `stop`, then reports every
/// user it had reported online as offline and ends the lease, each report bounded by the
/// request timeout.
pub async fn report(presence: Arc<Presence>, data: DataClient, webserver: String, stop: CancellationToken) {
    let instance: u64 = rand::random();
    let mut reported: HashSet<String> = HashSet::new();
    let mut active_servers = data.active();
    let mut last_connection = active_servers.borrow_and_update().map(|active| active.connection);
    let mut renewal = tokio::time::interval(LEASE_RENEWAL_INTERVAL);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The users of the last lease accepted, and when; a lease is sent again when the users
    // change or the renewal interval has passed.
    let mut leased: Option<(HashSet<String>, tokio::time::Instant)> = None;
    loop {
        let connection = active_servers.borrow_and_update().map(|active| active.connection);
        if connection.is_some() && connection != last_connection {
            last_connection = connection;
            // A new connection may lead to a restarted data server or another one that lacks
            // what was reported, so the users still online are reported again. Offline
            // reports that failed are still pending in `reported`.
            let online = presence.online_users();
            reported.retain(|user| !online.contains(user));
        }
        let online = presence.online_users();
        let mut all_sent = reconcile(&online, &mut reported, &data, &webserver).await;
        let lease_due = leased.as_ref().is_none_or(|(users, renewed_at)| {
            *users != online || renewed_at.elapsed() + Duration::from_millis(100) >= LEASE_RENEWAL_INTERVAL
        });
        if lease_due {
            let renewed_at = tokio::time::Instant::now();
            if renew_lease(&online, &data, &webserver, instance, LEASE_DURATION).await {
                leased = Some((online, renewed_at));
            } else {
                all_sent = false;
            }
        }
        let retry = async {
            if all_sent {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(RETRY_DELAY).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = presence.changed.notified() => {}
            _ = active_servers.changed() => {}
            _ = renewal.tick() => {}
            _ = retry => {}
        }
    }
    reconcile(&HashSet::new(), &mut reported, &data, &webserver).await;
    renew_lease(&HashSet::new(), &data, &webserver, instance, Duration::ZERO).await;
}

/// Sends this web server's presence lease. Returns whether the data server accepted it.
async fn renew_lease(online: &HashSet<String>, data: &DataClient, webserver: &str, instance: u64, duration: Duration) -> bool {
    let mut users: Vec<String> = online.iter().cloned().collect();
    users.sort_unstable();
    let request =
        Request::RenewPresence { webserver: webserver.to_owned(), instance, users, lease_ms: duration.as_millis() as u64 };
    match data.request(request).await {
        Ok(Reply::Done) => true,
        Ok(other) => {
            tracing::warn!(reply = ?other, "data server rejected a presence lease");
            false
        }
        Err(error) => {
            tracing::debug!(%error, "failed to renew the presence lease; retrying");
            false
        }
    }
}

/// Sends the differences between `wanted` and `reported`, updating `reported` for each one
/// the data server accepted. Returns whether all were accepted.
async fn reconcile(wanted: &HashSet<String>, reported: &mut HashSet<String>, data: &DataClient, webserver: &str) -> bool {
    let going_online: Vec<String> = wanted.difference(reported).cloned().collect();
    let going_offline: Vec<String> = reported.difference(wanted).cloned().collect();
    let mut all_sent = true;
    for (user, online) in going_online.into_iter().map(|user| (user, true)).chain(going_offline.into_iter().map(|user| (user, false))) {
        let request = Request::SetPresence { user: user.clone(), webserver: webserver.to_owned(), online };
        let accepted = match data.request(request).await {
            Ok(Reply::Done) => true,
            Ok(Reply::Error(error)) if error.code == ErrorCode::UnknownUser => {
                tracing::warn!(%user, "data server does not know a user with an open event stream");
                true
            }
            Ok(other) => {
                tracing::warn!(%user, online, reply = ?other, "data server rejected a presence report");
                false
            }
            Err(error) => {
                // Debug level, because this repeats every second while the data server is
                // down, and the data client already logs the lost connection once.
                tracing::debug!(%user, online, %error, "failed to report presence; retrying");
                false
            }
        };
        if accepted {
            if online {
                reported.insert(user);
            } else {
                reported.remove(&user);
            }
        } else {
            all_sent = false;
        }
    }
    all_sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_streams_per_user() {
        let presence = Arc::new(Presence::default());
        let first = presence.open("ana");
        let second = presence.open("ana");
        let other = presence.open("luis");
        assert_eq!(presence.online_users(), HashSet::from(["ana".to_owned(), "luis".to_owned()]));
        drop(first);
        assert!(presence.online_users().contains("ana"));
        drop(second);
        assert_eq!(presence.online_users(), HashSet::from(["luis".to_owned()]));
        drop(other);
        assert!(presence.online_users().is_empty());
    }
}
