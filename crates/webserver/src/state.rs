//! The state shared by every request handler.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::login_limit::LoginLimiter;
use crate::changes::Feed;
use crate::data_client::DataClient;
use crate::presence::Presence;
use crate::sessions::Sessions;

/// The state behind the HTTP routes.
pub struct AppState {
    pub data: DataClient,
    pub sessions: Sessions,
    /// Failed-login counts per name and per client address.
    pub login_limiter: LoginLimiter,
    pub presence: Arc<Presence>,
    /// The change feed; each event stream subscribes to its broadcast.
    pub feed: Arc<Feed>,
    /// How long a request to the data server may take.
    pub request_timeout: Duration,
    /// Cancelled at shutdown to end every event stream.
    pub shutdown: CancellationToken,
    /// The forwarder tasks of the event streams, joined at shutdown.
    pub streams: TaskTracker,
}
