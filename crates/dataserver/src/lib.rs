//! The forum's data server: it owns the forum state, serves the web servers' requests on a
//! ROUTER socket and replicates changes to and from the other data servers of its group over
//! PUB/SUB.
//!
//! Inside, one actor task owns the state, and its committer thread writes the redb store. The
//! request socket loop, the peer subscribers and the publisher talk to them through bounded
//! channels. The replicator
//! owns what is known about the peers, detects failures from their heartbeats and fetches
//! missing changes (see docs/replication.md). Start a server with [`DataServer::start`] and
//! stop it with [`DataServer::shutdown`].

mod actor;
mod admin;
mod catch_up;
mod command;
mod feed;
mod guarded;
mod handler;
mod heartbeat;
mod idempotency;
mod leases;
mod legacy;
mod liveness;
mod memory;
mod metrics;
mod paging;
mod password;
mod peers;
mod publisher;
mod rate_limit;
mod replicator;
mod request_socket;
mod server;
mod segment;
mod sessions;
mod state;
mod status;
mod store;
mod version_vector;

pub use feed::MAX_FEED_BATCH;
pub use handler::{MAX_LEASE_MS, MAX_REQUEST_BYTES};
pub use request_socket::MAX_IN_FLIGHT;
pub use server::{Config, DataServer, Options};
pub use store::{store_owner, STORE_FILE};
