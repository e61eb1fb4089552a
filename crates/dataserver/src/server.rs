//! Starting, wiring and stopping the tasks of one data server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use forum_protocol::{parse_endpoint, ServerId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actor::{Actor, MAX_BATCH};
use crate::command::Command;
use crate::handler::Handler;
use crate::password::Passwords;
use crate::state::ForumState;
use crate::store::Store;
use crate::{peers, publisher, request_socket};

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

/// A running data server. Call [`DataServer::shutdown`] to stop it cleanly: dropping it
/// instead leaves its tasks running until the tokio runtime stops.
pub struct DataServer {
    id: ServerId,
    request_endpoint: String,
    pub_endpoint: String,
    /// Turns true once to tell the request loop and the peer subscribers to stop.
    shutdown: watch::Sender<bool>,
    /// A command sender for new peer subscribers, dropped at shutdown so the actor's channel closes.
    actor_commands: mpsc::Sender<Command>,
    peers: Mutex<Vec<(String, JoinHandle<()>)>>,
    request_task: JoinHandle<()>,
    actor_task: JoinHandle<Arc<Store>>,
    publisher_task: JoinHandle<()>,
}

impl DataServer {
    /// Opens the store, replays it into memory, binds both sockets and starts every task.
    pub async fn start(config: Config) -> anyhow::Result<DataServer> {
        let id = config.id;
        let data_dir = config.data_dir.clone();
        let (store, changes) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&data_dir)?;
            let changes = store.load()?;
            anyhow::Ok((store, changes))
        })
        .await
        .context("the task opening the store failed")??;
        let store_path = store.path().to_owned();
        let state = ForumState::from_changes(changes);
        let replayed = state.change_count();

        let (pub_socket, pub_endpoint) = publisher::bind(&config.pub_endpoint).await?;
        let (router_socket, request_endpoint) = request_socket::bind(&config.request_endpoint).await?;

        // Changes waiting to be published. When it is full the actor waits, which slows down
        // writes, so no stored change is skipped.
        let (publications, publication_queue) = mpsc::channel(4 * MAX_BATCH);
        // Commands waiting for the actor. When it is full, request tasks and peer subscribers
        // wait; requests in flight are bounded by the request socket, so the wait is bounded.
        let (actor_commands, command_queue) = mpsc::channel(4 * MAX_BATCH);
        let (shutdown, shutdown_signal) = watch::channel(false);

        let publisher_task = tokio::spawn(publisher::run(id, pub_socket, publication_queue));
        let actor = Actor::new(id, state, Arc::new(store), command_queue, publications);
        let actor_task = tokio::spawn(actor.run());
        let handler = Handler::new(id, actor_commands.clone(), Passwords::new());
        let request_task = tokio::spawn(request_socket::run(id, router_socket, handler, shutdown_signal));

        info!(
            server = id,
            request = request_endpoint,
            publish = pub_endpoint,
            peers = ?config.peers,
            store = %store_path.display(),
            replayed,
            "data server started"
        );
        let server = DataServer {
            id,
            request_endpoint,
            pub_endpoint,
            shutdown,
            actor_commands,
            peers: Mutex::new(Vec::new()),
            request_task,
            actor_task,
            publisher_task,
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

    /// Returns the pub endpoint as bound, with the real port.
    pub fn pub_endpoint(&self) -> &str {
        &self.pub_endpoint
    }

    /// Starts subscribing to one more peer's PUB endpoint. It returns before the connection is
    /// made: the subscriber retries until the peer is up.
    pub async fn add_peer(&self, pub_endpoint: String) -> anyhow::Result<()> {
        let peer = parse_endpoint(&pub_endpoint)?;
        let mut peers = self.peers.lock().expect("the peer list lock is never poisoned");
        if peers.iter().any(|(existing, _)| *existing == peer) {
            anyhow::bail!("{peer} is already a peer of data server {}", self.id);
        }
        let task = tokio::spawn(peers::run(self.id, peer.clone(), self.actor_commands.clone(), self.shutdown.subscribe()));
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

        // Every other command sender is gone now, so the actor finishes the queued commands
        // and returns. Then the publisher's channel closes too.
        drop(self.actor_commands);
        match self.actor_task.await {
            Ok(store) => drop(store),
            Err(error) => warn!(server = id, %error, "the actor task failed"),
        }
        if let Err(error) = self.publisher_task.await {
            warn!(server = id, %error, "the publisher task failed");
        }
        info!(server = id, "data server stopped");
    }
}
