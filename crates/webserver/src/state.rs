//! The state shared by every request handler.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::changes::NumberedChange;
use crate::data_client::DataClient;
use crate::presence::Presence;
use crate::sessions::Sessions;

/// The state behind the HTTP routes.
pub struct AppState {
    pub data: DataClient,
    pub sessions: Sessions,
    pub presence: Arc<Presence>,
    /// The change broadcast that the subscriber feeds; each event stream subscribes to it.
    pub changes: broadcast::Sender<Arc<NumberedChange>>,
    /// Cancelled at shutdown to end every event stream.
    pub shutdown: CancellationToken,
    /// The forwarder tasks of the event streams, joined at shutdown.
    pub streams: TaskTracker,
}
