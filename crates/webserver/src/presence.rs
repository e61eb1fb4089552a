//! Presence: which users have an open event stream on this web server.
//!
//! Each open stream of a logged-in user owns a [`PresenceGuard`], which counts the user's
//! streams. A reporter task compares the set of users with at least one stream to the set it
//! last reported to the data server and sends `SetPresence` for each difference: online on
//! 0→1, offline on 1→0. Comparing sets instead of queueing events means no queue can grow,
//! a quick close-and-reopen sends nothing, and a report that failed is retried.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forum_protocol::{ErrorCode, Reply, Request};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::data_client::DataClient;

/// Pause before retrying reports that failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

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

/// Reports presence changes to the data server until `stop`, then reports every user it
/// had reported online as offline, each report bounded by the request timeout.
pub async fn report(presence: Arc<Presence>, data: DataClient, webserver: String, stop: CancellationToken) {
    let mut reported: HashSet<String> = HashSet::new();
    let mut connections = data.connections();
    let mut last_connection = *connections.borrow_and_update();
    loop {
        let connection = *connections.borrow_and_update();
        if connection != last_connection {
            last_connection = connection;
            // A new connection may lead to a restarted data server that lost what was
            // reported, so the users still online are reported again. Offline reports that
            // failed are still pending in `reported`.
            let online = presence.online_users();
            reported.retain(|user| !online.contains(user));
        }
        let all_sent = reconcile(&presence.online_users(), &mut reported, &data, &webserver).await;
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
            _ = connections.changed() => {}
            _ = retry => {}
        }
    }
    reconcile(&HashSet::new(), &mut reported, &data, &webserver).await;
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
