//! The forum's web server: it serves the browser page and a JSON HTTP API, forwards every
//! API request to one data server over ZeroMQ, and pushes the data server's changes to
//! browsers as server-sent events. `docs/http-api.md` describes the API.
//!
//! Layout: `server.rs` starts and stops everything, and `routes.rs` maps paths to
//! `handlers.rs`. `listener.rs` accepts connections and `request_body.rs` reads request bodies
//! before routing. `body.rs`, `http_headers.rs`, `paging.rs`, `error.rs` and `i18n.rs` check
//! requests and render errors. `data_client.rs` is the request socket, `changes.rs` the change feed,
//! `events.rs` the event streams, `presence.rs` the online reports and `sessions.rs` the
//! logins.

mod assets;
mod body;
mod changes;
mod config;
mod data_client;
mod duplicates;
mod error;
mod events;
mod handlers;
mod http_headers;
mod i18n;
mod listener;
mod login_limit;
mod paging;
mod presence;
mod request_body;
mod routes;
mod server;
mod sessions;
mod state;

pub use config::{Config, Options, DEFAULT_REQUEST_TIMEOUT};
pub use listener::{ClientAddr, HttpLimits};
pub use server::WebServer;
pub use sessions::token_hash;
