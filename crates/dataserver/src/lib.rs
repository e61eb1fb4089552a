//! The forum's data server: it owns the forum state, serves the web servers' requests on a
//! ROUTER socket and replicates changes to and from the other data servers of its group over
//! PUB/SUB.
//!
//! Inside, one actor task owns the state and the redb store. The request socket loop, the
//! peer subscribers and the publisher talk to it through bounded channels. Start a server
//! with [`DataServer::start`] and stop it with [`DataServer::shutdown`].

mod actor;
mod command;
mod handler;
mod password;
mod peers;
mod publisher;
mod rate_limit;
mod request_socket;
mod server;
mod state;
mod store;

pub use handler::MAX_REQUEST_BYTES;
pub use request_socket::MAX_IN_FLIGHT;
pub use server::{Config, DataServer};
pub use store::STORE_FILE;
