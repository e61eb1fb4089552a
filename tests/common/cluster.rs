//! A scenario harness for replication. It runs data servers as real `dataserver` processes on
//! loopback ports that it picks, with a [`Proxy`] on every link between two servers so a test
//! can cut and heal it. Helpers post, kill -9, restart and compare the servers' states.
//!
//! Server `i` (ids start at 1 for index 0) subscribes to server `j` through the link proxy
//! `(i, j)`, and advertises a fetch proxy in front of its own request socket. Cutting a server
//! off cuts every link it is on and its fetch proxy. Tests talk to each server's request
//! socket directly, never through a proxy.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use forum_protocol::{ChangeId, Liveness, Reply, Request, ServerStatus, VersionVector};
use tokio::time::Instant;

use super::data_client::DataClient;
use super::proxy::Proxy;
use super::{free_port, workspace_binary};

/// How long a server process may take to answer its first request.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// Returns the `dataserver` binary to run: the one in `FORUM_DATASERVER_BINARY` when set, such
/// as a release build for measurements, or else the one built beside the tests.
fn dataserver_binary() -> PathBuf {
    match std::env::var_os("FORUM_DATASERVER_BINARY") {
        Some(path) => PathBuf::from(path),
        None => workspace_binary("dataserver"),
    }
}

/// One data server process and how to start it again.
struct Server {
    id: u32,
    request_port: u16,
    pub_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    peers: Vec<String>,
    advertise: String,
    child: Option<Child>,
}

impl Server {
    fn request_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.request_port)
    }

    fn spawn(&mut self, binary: &PathBuf) {
        let log = File::options().create(true).append(true).open(&self.log_path).expect("opening a server log");
        let child = Command::new(binary)
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--request")
            .arg(self.request_endpoint())
            .arg("--pub")
            .arg(format!("tcp://127.0.0.1:{}", self.pub_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--advertise")
            .arg(&self.advertise)
            .arg(self.peers.join(","))
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("sharing the log file"))
            .stderr(log)
            .spawn()
            .expect("starting a dataserver process");
        self.child = Some(child);
    }
}

/// What a server holds, as far as users of the forum can tell, plus its version vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub users: Vec<String>,
    /// Listed subjects as (id, title), oldest first.
    pub subjects: Vec<(ChangeId, String)>,
    /// Each listed subject's history as message ids, in history order.
    pub histories: BTreeMap<ChangeId, Vec<ChangeId>>,
    pub vector: VersionVector,
}

impl Snapshot {
    /// Returns every message id in every history.
    pub fn message_ids(&self) -> Vec<ChangeId> {
        self.histories.values().flatten().copied().collect()
    }
}

/// A group of data server processes with a cuttable proxy on every link.
pub struct Cluster {
    binary: PathBuf,
    directory: tempfile::TempDir,
    servers: Vec<Server>,
    /// Link proxies by (subscriber index, publisher index).
    links: HashMap<(usize, usize), Proxy>,
    /// The proxy in front of each server's request socket, which the server advertises.
    fetch_proxies: Vec<Proxy>,
}

impl Cluster {
    /// Starts `size` servers, each a peer of every other, and waits until each sees every
    /// other as up.
    pub async fn start(size: usize) -> Cluster {
        super::init_logging();
        let mut cluster = Cluster {
            binary: dataserver_binary(),
            directory: tempfile::tempdir().expect("creating a temporary folder"),
            servers: Vec::new(),
            links: HashMap::new(),
            fetch_proxies: Vec::new(),
        };
        for _ in 0..size {
            cluster.prepare_server().await;
        }
        for index in 0..size {
            cluster.link_to_all_others(index).await;
        }
        for index in 0..size {
            cluster.servers[index].spawn(&cluster.binary);
        }
        for index in 0..size {
            cluster.wait_until_answering(index).await;
        }
        if size > 1 {
            cluster.wait_until_peers_are(Liveness::Up, &(0..size).collect::<Vec<_>>()).await;
        }
        cluster
    }

    /// Picks ports and a data folder for one more server and puts a fetch proxy before it.
    async fn prepare_server(&mut self) -> usize {
        let index = self.servers.len();
        let request_port = free_port();
        let fetch_proxy = Proxy::start(([127, 0, 0, 1], request_port).into()).await;
        self.servers.push(Server {
            id: index as u32 + 1,
            request_port,
            pub_port: free_port(),
            data_dir: self.directory.path().join(format!("data-{}", index + 1)),
            log_path: self.directory.path().join(format!("server-{}.log", index + 1)),
            peers: Vec::new(),
            advertise: fetch_proxy.endpoint(),
            child: None,
        });
        self.fetch_proxies.push(fetch_proxy);
        index
    }

    /// Makes server `index` subscribe to every other server prepared so far.
    async fn link_to_all_others(&mut self, index: usize) {
        for other in 0..self.servers.len() {
            if other == index {
                continue;
            }
            let proxy = Proxy::start(([127, 0, 0, 1], self.servers[other].pub_port).into()).await;
            self.servers[index].peers.push(proxy.endpoint());
            self.links.insert((index, other), proxy);
        }
    }

    /// Starts one more server that subscribes to every existing one (they do not subscribe
    /// to it), and returns its index once it answers requests.
    pub async fn add_server(&mut self) -> usize {
        let index = self.prepare_server().await;
        self.link_to_all_others(index).await;
        self.servers[index].spawn(&self.binary);
        self.wait_until_answering(index).await;
        index
    }

    pub fn size(&self) -> usize {
        self.servers.len()
    }

    pub fn indices(&self) -> Vec<usize> {
        (0..self.servers.len()).collect()
    }

    /// Returns a new client of server `index`'s request socket.
    pub fn client(&self, index: usize) -> DataClient {
        DataClient::new(&self.servers[index].request_endpoint())
    }

    /// Returns the request endpoint of server `index`, for clients in other tasks.
    pub fn request_endpoint(&self, index: usize) -> String {
        self.servers[index].request_endpoint()
    }

    /// Returns the endpoint through which server `subscriber` subscribes to server `publisher`,
    /// as the subscriber's logs name that peer.
    pub fn link_endpoint(&self, subscriber: usize, publisher: usize) -> String {
        self.links[&(subscriber, publisher)].endpoint()
    }

    /// Kills server `index` with SIGKILL, as a crash would, and waits for the process to end.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.servers[index].child.take() {
            child.kill().expect("killing a dataserver");
            child.wait().expect("waiting for a killed dataserver");
        }
    }

    /// Sends SIGTERM to server `index`, as a service manager stopping it would, and returns
    /// its exit status once the process ends.
    pub fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let mut child = self.servers[index].child.take().expect("the server is running");
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("running kill");
        assert!(sent.success(), "kill -TERM failed for server {}", index + 1);
        child.wait().expect("waiting for a terminated dataserver")
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.servers[index].child.is_some()
    }

    /// Starts server `index` again on the same ports and data folder, and waits until it answers.
    pub async fn restart(&mut self, index: usize) {
        assert!(self.servers[index].child.is_none(), "server {} is still running", index + 1);
        self.servers[index].spawn(&self.binary);
        self.wait_until_answering(index).await;
    }

    /// Cuts every link of server `index`, both ways, and its fetch proxy.
    pub fn cut_off(&self, index: usize) {
        for ((subscriber, publisher), proxy) in &self.links {
            if *subscriber == index || *publisher == index {
                proxy.cut();
            }
        }
        self.fetch_proxies[index].cut();
    }

    /// Heals every link and every fetch proxy.
    pub fn heal_all(&self) {
        for proxy in self.links.values().chain(&self.fetch_proxies) {
            proxy.heal();
        }
    }

    async fn wait_until_answering(&self, index: usize) {
        let deadline = Instant::now() + START_PATIENCE;
        let mut client = self.client(index);
        loop {
            if let Some(Reply::Pong { .. }) = client.request(Request::Ping).await {
                return;
            }
            if Instant::now() > deadline {
                panic!("server {} did not answer within {START_PATIENCE:?}\n{}", index + 1, self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the status report of server `index`.
    pub async fn status(&self, index: usize) -> ServerStatus {
        match self.client(index).expect("reading the status", Request::Status).await {
            Reply::Status(status) => *status,
            other => panic!("expected a status from server {}, got {other:?}", index + 1),
        }
    }

    /// Waits until every server in `observers` sees every peer it has in the `liveness` state.
    pub async fn wait_until_peers_are(&self, liveness: Liveness, observers: &[usize]) {
        let deadline = Instant::now() + super::PATIENCE;
        for &index in observers {
            loop {
                let status = self.status(index).await;
                if status.peers.iter().all(|peer| peer.liveness == liveness) && !status.peers.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!("server {} does not see its peers {liveness:?}: {:?}\n{}", index + 1, status.peers, self.logs());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits until server `observer` sees the server at `index` in the `liveness` state.
    pub async fn wait_until_peer_is(&self, observer: usize, index: usize, liveness: Liveness) {
        let deadline = Instant::now() + super::PATIENCE;
        let id = self.servers[index].id;
        loop {
            let status = self.status(observer).await;
            if status.peers.iter().any(|peer| peer.server == Some(id) && peer.liveness == liveness) {
                return;
            }
            if Instant::now() > deadline {
                panic!("server {} does not see server {id} {liveness:?}: {:?}", observer + 1, status.peers);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads everything server `index` shows: users, listed subjects, their histories, and
    /// the version vector.
    pub async fn snapshot(&self, index: usize) -> Option<Snapshot> {
        let mut client = self.client(index);
        let Some(Reply::Users(users)) = client.request(Request::ListUsers).await else { return None };
        let Some(Reply::Subjects(subjects)) = client.request(Request::ListSubjects).await else { return None };
        let mut histories = BTreeMap::new();
        for subject in &subjects {
            let Some(Reply::Messages(messages)) = client.request(Request::History { subject: subject.id, before: None, limit: None }).await else {
                return None;
            };
            histories.insert(subject.id, messages.iter().map(|message| message.id).collect());
        }
        let Some(Reply::Status(status)) = client.request(Request::Status).await else { return None };
        Some(Snapshot {
            users: users.into_iter().map(|user| user.name).collect(),
            subjects: subjects.into_iter().map(|subject| (subject.id, subject.title)).collect(),
            histories,
            vector: status.vector,
        })
    }

    /// Waits until the servers `indices` hold the same snapshot, and returns it. Panics after
    /// `patience` with a summary of the differences and the servers' logs.
    pub async fn wait_until_equal(&self, indices: &[usize], patience: Duration) -> Snapshot {
        let deadline = Instant::now() + patience;
        loop {
            let mut snapshots = Vec::new();
            for &index in indices {
                snapshots.push(self.snapshot(index).await);
            }
            if let Some(Some(first)) = snapshots.first() {
                if snapshots.iter().all(|snapshot| snapshot.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = snapshots
                    .iter()
                    .zip(indices)
                    .map(|(snapshot, index)| match snapshot {
                        Some(snapshot) => format!(
                            "server {}: {} users, {} subjects, {} messages, vector {:?}",
                            index + 1,
                            snapshot.users.len(),
                            snapshot.subjects.len(),
                            snapshot.message_ids().len(),
                            snapshot.vector
                        ),
                        None => format!("server {}: no answer", index + 1),
                    })
                    .collect();
                panic!("the servers did not converge within {patience:?}:\n{}\n{}", summary.join("\n"), self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Returns the whole log of server `index`, over all its runs.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.servers[index].log_path).unwrap_or_default()
    }

    /// Returns the last lines of every server's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for server in &self.servers {
            let log = std::fs::read_to_string(&server.log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            text.push_str(&format!("--- server {} log (last 25 lines) ---\n{tail}\n", server.id));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
