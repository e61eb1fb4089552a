//! Starting, wiring and stopping the tasks of one data server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use forum_protocol::{ClusterKey, parse_endpoint, PeerStatus, ServerId, VersionVector};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use zmtp_guard::Publisher;

use crate::actor::{Actor, MAX_BATCH};
use crate::command::Command;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::password::Passwords;
use crate::peers::{PeerOutputs, ReceivedHeartbeat};
use crate::publisher::HeartbeatSource;
use crate::replicator::Replicator;
use crate::state::ForumState;
use crate::status::StatusSource;
use crate::store::{Store, RECOVERY, STORE_FILE};
use crate::{admin, guarded, peers, publisher, request_socket};

/// The settings of one data server.
#[derive(Clone, Debug)]
pub struct Config {
    /// This server's id, unique within its group. It is the origin of every change made here.
    pub id: ServerId,
    /// The endpoint that the ROUTER socket for web servers binds, such as
    /// `tcp://127.0.0.1:21000`. Port 0 binds an ephemeral port, and
    /// [`DataServer::request_endpoint`] returns the real one.
    pub request_endpoint: String,
    /// The endpoint that the PUB socket for changes binds, such as `tcp://127.0.0.1:20000`.
    /// Port 0 works as for `request_endpoint`.
    pub pub_endpoint: String,
    /// The directory holding the change store `forum.redb`; created when missing.
    pub data_dir: PathBuf,
    /// The PUB endpoints of the other data servers of the group.
    pub peers: Vec<String>,
}

/// Settings that have a sensible default, kept apart from [`Config`] so that a `Config`
/// literal need not name them.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The request endpoint that peers should use to fetch changes from this server, sent in
    /// every heartbeat. Default: the request endpoint as bound, which is unusable for peers
    /// when it binds 0.0.0.0 or `*`.
    pub advertise: Option<String>,
    /// The address of the HTTP admin endpoint (`/healthz`, `/metrics`); none by default.
    pub admin: Option<SocketAddr>,
    /// The key that encrypts and authenticates every ZeroMQ message to and from the group's
    /// servers (see docs/replication.md). Without one, messages are sent in clear and not
    /// authenticated, so the request and pub endpoints must be loopback addresses.
    pub cluster_key: Option<ClusterKey>,
}

/// A running data server. Call [`DataServer::shutdown`] to stop it cleanly: dropping it
/// instead leaves its tasks running until the tokio runtime stops.
pub struct DataServer {
    id: ServerId,
    request_endpoint: String,
    pub_endpoint: String,
    fetch_endpoint: String,
    admin_address: Option<SocketAddr>,
    /// Turns true once to tell the request loop, the peer subscribers, the replicator and the
    /// admin endpoint to stop.
    shutdown: watch::Sender<bool>,
    /// A command sender for new peer subscribers, dropped at shutdown so the actor's channel closes.
    actor_commands: mpsc::Sender<Command>,
    heartbeats: mpsc::Sender<ReceivedHeartbeat>,
    /// The configured peers' PUB endpoints, read by the replicator.
    configured_peers: watch::Sender<Vec<String>>,
    peers: Mutex<Vec<(String, JoinHandle<()>)>>,
    request_task: JoinHandle<()>,
    replicator_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    actor_task: JoinHandle<Arc<Store>>,
    /// The publisher task, which returns the PUB port when it ends.
    publisher_task: JoinHandle<Publisher>,
    /// The key for the peer subscribers started later by [`DataServer::add_peer`].
    cluster_key: Option<ClusterKey>,
}

/// How many received heartbeats may wait for the replicator; see [`PeerOutputs::heartbeats`]
/// for what happens beyond.
const HEARTBEAT_QUEUE: usize = 64;

impl DataServer {
    /// Starts a data server with default [`Options`].
    pub async fn start(config: Config) -> anyhow::Result<DataServer> {
        DataServer::start_with(config, Options::default()).await
    }

    /// Opens the store, replays it into memory, binds the sockets and starts every task.
    pub async fn start_with(config: Config, options: Options) -> anyhow::Result<DataServer> {
        let id = config.id;
        let data_dir = config.data_dir.clone();
        let (store, state) = tokio::task::spawn_blocking(move || {
            // redb stops with a panic on some kinds of damage, such as a truncated file. Caught
            // here, it becomes an error that names the file.
            let store_path = data_dir.join(STORE_FILE);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let store = Store::open(&data_dir, id)?;
                let state = ForumState::replayed(&store)?;
                anyhow::Ok((store, state))
            }))
            .unwrap_or_else(|panic| {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                Err(anyhow::anyhow!(
                    "the change store {} is damaged: reading it failed with \"{reason}\"; {RECOVERY}",
                    store_path.display()
                ))
            })
        })
        .await
        .context("the task opening the store failed")??;
        let store_path = store.path().to_owned();
        let store = Arc::new(store);
        let replayed = state.change_count();

        // Both ports serve clients on the configured endpoints themselves.
        let public_pub = guarded::public_address(&config.pub_endpoint).await?;
        let public_request = guarded::public_address(&config.request_endpoint).await?;
        if options.cluster_key.is_none() {
            for (endpoint, address) in [(&config.request_endpoint, public_request), (&config.pub_endpoint, public_pub)] {
                if !address.ip().is_loopback() {
                    anyhow::bail!(
                        "the endpoint {endpoint} is not a loopback address, and no cluster key is set, so anyone who reaches it could join the group; set --cluster-key-file or FORUM_CLUSTER_KEY on every server of the group, or bind 127.0.0.1"
                    );
                }
            }
            warn!(server = id, "no cluster key is set: ZeroMQ messages are not authenticated, so this data server binds loopback addresses only");
        }
        let pub_port = guarded::start_publisher(public_pub, options.cluster_key.as_ref()).await?;
        let request_listener = request_socket::bind(public_request).await?;
        let pub_endpoint = guarded::endpoint_of(pub_port.local_addr());
        let request_endpoint = guarded::endpoint_of(request_listener.local_addr());
        let port_stats = vec![("request", request_listener.stats()), ("pub", pub_port.stats())];
        let fetch_endpoint = match options.advertise {
            Some(advertise) => parse_endpoint(&advertise).context("invalid advertised endpoint")?,
            None => request_endpoint.clone(),
        };
        if fetch_endpoint.contains("://0.0.0.0:") || fetch_endpoint.contains("://*:") {
            warn!(server = id, fetch_endpoint, "peers cannot fetch changes from a wildcard address; set --advertise to an address they can reach");
        }

        // Changes waiting to be published. When it is full the actor waits, which slows down
        // writes, so no stored change is skipped.
        let (publications, publication_queue) = mpsc::channel(4 * MAX_BATCH);
        // Commands waiting for the actor. When it is full, request tasks, peer subscribers and
        // the catch-up wait. The request port bounds the requests in flight, so the wait is
        // bounded.
        let (actor_commands, command_queue) = mpsc::channel(4 * MAX_BATCH);
        let (heartbeats, heartbeat_queue) = mpsc::channel(HEARTBEAT_QUEUE);
        let (shutdown, shutdown_signal) = watch::channel(false);
        let (vector_sender, vector) = watch::channel(VersionVector::new());
        let (peer_status_sender, peer_status) = watch::channel(Vec::<PeerStatus>::new());
        let (configured_peers, configured) = watch::channel(Vec::new());
        let metrics = Arc::new(Metrics::default());
        let status = StatusSource {
            server: id,
            fetch_endpoint: fetch_endpoint.clone(),
            vector: vector.clone(),
            peers: peer_status,
            metrics: Arc::clone(&metrics),
            actor: actor_commands.downgrade(),
            publisher: publications.downgrade(),
            guards: port_stats,
        };

        let heartbeat_source = HeartbeatSource { fetch_endpoint: fetch_endpoint.clone(), vector: vector.clone() };
        let publisher_task = tokio::spawn(publisher::run(id, pub_port, publication_queue, heartbeat_source, options.cluster_key.clone()));
        let actor = Actor::new(id, state, Arc::clone(&store), command_queue, publications, vector_sender, Arc::clone(&metrics))?;
        let actor_task = tokio::spawn(actor.run());
        let handler = Handler::new(id, actor_commands.clone(), Passwords::new(), store, status.clone());
        let request_task = request_socket::serve(id, request_listener, handler, options.cluster_key.clone(), shutdown_signal.clone());
        let replicator = Replicator {
            server: id,
            configured,
            vector,
            actor: actor_commands.clone(),
            status: peer_status_sender,
            metrics,
            cluster_key: options.cluster_key.clone(),
        };
        let replicator_task = tokio::spawn(replicator.run(heartbeat_queue, shutdown_signal.clone()));
        let (admin_address, admin_task) = match options.admin {
            Some(address) => {
                let (bound, task) = admin::start(address, status, shutdown_signal).await?;
                (Some(bound), Some(task))
            }
            None => (None, None),
        };

        info!(
            server = id,
            request = request_endpoint,
            publish = pub_endpoint,
            advertise = fetch_endpoint,
            admin = ?admin_address,
            peers = ?config.peers,
            store = %store_path.display(),
            replayed,
            "data server started"
        );
        let server = DataServer {
            id,
            request_endpoint,
            pub_endpoint,
            fetch_endpoint,
            admin_address,
            shutdown,
            actor_commands,
            heartbeats,
            configured_peers,
            peers: Mutex::new(Vec::new()),
            request_task,
            replicator_task,
            admin_task,
            actor_task,
            publisher_task,

            cluster_key: options.cluster_key,
        };
        for peer in config.peers {
            server.add_peer(peer).await?;
        }
        Ok(server)
    }

    /// This server's id.
    pub fn id(&self) -> ServerId {
        self.id
    }

    /// Returns the request endpoint as bound, with the real port.
    pub fn request_endpoint(&self) -> &str {
        &self.request_endpoint
    }

    /// Returns the pub endpoint as bound by its guard, with the real port.
    pub fn pub_endpoint(&self) -> &str {
        &self.pub_endpoint
    }

    /// Returns the request endpoint that heartbeats advertise to peers.
    pub fn fetch_endpoint(&self) -> &str {
        &self.fetch_endpoint
    }

    /// Returns the admin endpoint's address as bound, when one was asked for.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin_address
    }

    /// Starts subscribing to one more peer's PUB endpoint. It returns before the connection is
    /// made: the subscriber retries until the peer is up.
    pub async fn add_peer(&self, pub_endpoint: String) -> anyhow::Result<()> {
        let peer = parse_endpoint(&pub_endpoint)?;
        let mut peers = self.peers.lock().expect("the peer list lock is never poisoned");
        if peers.iter().any(|(existing, _)| *existing == peer) {
            anyhow::bail!("{peer} is already a peer of data server {}", self.id);
        }
        let outputs = PeerOutputs { actor: self.actor_commands.clone(), heartbeats: self.heartbeats.clone() };
        let task = tokio::spawn(peers::run(self.id, peer.clone(), outputs, self.cluster_key.clone(), self.shutdown.subscribe()));
        self.configured_peers.send_modify(|configured| configured.push(peer.clone()));
        peers.push((peer, task));
        Ok(())
    }

    /// Stops every task, waits for the requests in flight and closes the store.
    pub async fn shutdown(self) {
        let id = self.id;
        info!(server = id, "data server stopping");
        let _ = self.shutdown.send(true);
        if let Err(error) = self.request_task.await {
            warn!(server = id, %error, "the request task failed");
        }
        let peers = std::mem::take(&mut *self.peers.lock().expect("the peer list lock is never poisoned"));
        for (peer, task) in peers {
            if let Err(error) = task.await {
                warn!(server = id, peer, %error, "a peer subscriber task failed");
            }
        }
        if let Err(error) = self.replicator_task.await {
            warn!(server = id, %error, "the replicator task failed");
        }
        if let Some(task) = self.admin_task {
            if let Err(error) = task.await {
                warn!(server = id, %error, "the admin task failed");
            }
        }

        // Every other command sender is gone now, so the actor finishes the queued commands
        // and returns. Then the publisher's channel closes too.
        drop(self.actor_commands);
        drop(self.heartbeats);
        match self.actor_task.await {
            Ok(store) => drop(store),
            Err(error) => warn!(server = id, %error, "the actor task failed"),
        }
        let pub_port = match self.publisher_task.await {
            Ok(pub_port) => Some(pub_port),
            Err(error) => {
                warn!(server = id, %error, "the publisher task failed");
                None
            }
        };
        // The PUB port goes last, so that publications sent while draining still reach their
        // subscribers. The request port closed each connection once its replies were written.
        if let Some(pub_port) = pub_port {
            pub_port.shutdown().await;
        }
        info!(server = id, "data server stopped");
    }
}
