//! A small harness for end-to-end scenarios: a group of data servers, each with its own web
//! server, all on ephemeral loopback ports; HTTP clients with their own cookie jars; and
//! event-stream readers. Tests read as the sentence they check:
//! `let group = Group::start(3).await; let ana = group.web(0).user("ana").await; ...`

#![allow(dead_code)]

pub mod cluster;
pub mod data_client;
pub mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use forum_dataserver::{Config as DataConfig, DataServer};
use forum_webserver::{Config as WebConfig, WebServer};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// How long a scenario waits for something that should happen at once (a change crossing the
/// group, an event reaching a stream). Generous, because CI machines are busy; a passing run
/// takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One data server and the web server attached to it.
pub struct Node {
    pub data: DataServer,
    pub web: WebServer,
}

/// A running group of data servers, each with its own web server, all grouped together.
pub struct Group {
    pub nodes: Vec<Node>,
    _dirs: tempfile::TempDir,
}

impl Group {
    /// Starts `size` data servers with ids 1..=size, tells each about every other, starts one
    /// web server per data server, and waits until a write on each node is visible on every
    /// node, so PUB/SUB subscriptions are in place before the scenario begins.
    pub async fn start(size: usize) -> Group {
        init_logging();
        let dirs = tempfile::tempdir().expect("creating a temporary folder");
        let mut data_servers = Vec::new();
        for index in 0..size {
            let config = DataConfig {
                id: index as u32 + 1,
                request_endpoint: "tcp://127.0.0.1:0".into(),
                pub_endpoint: "tcp://127.0.0.1:0".into(),
                data_dir: dirs.path().join(format!("data-{}", index + 1)),
                peers: Vec::new(),
            };
            data_servers.push(DataServer::start(config).await.expect("starting a data server"));
        }
        for server in &data_servers {
            for other in &data_servers {
                if other.id() != server.id() {
                    server.add_peer(other.pub_endpoint().to_owned()).await.expect("adding a peer");
                }
            }
        }
        let mut nodes = Vec::new();
        for data in data_servers {
            let web = start_web_server(&data, &format!("web-{}", data.id())).await;
            nodes.push(Node { data, web });
        }
        let group = Group { nodes, _dirs: dirs };
        group.wait_until_connected().await;
        group
    }

    /// Starts one data server that has no peers, with its web server.
    pub async fn start_alone() -> Group {
        Group::start(1).await
    }

    /// Returns an HTTP client for the web server of node `index`, with its own cookie jar.
    pub fn web(&self, index: usize) -> WebClient {
        WebClient::new(self.nodes[index].web.local_addr())
    }

    pub fn data(&self, index: usize) -> &DataServer {
        &self.nodes[index].data
    }

    /// Registers a probe user through each node and waits until every node lists all of them.
    async fn wait_until_connected(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for index in 0..self.nodes.len() {
            let name = format!("probe{}", index + 1);
            self.web(index).register(&name, "probe-password").await;
        }
        for index in 0..self.nodes.len() {
            loop {
                let users = self.web(index).users().await;
                let probes = users
                    .iter()
                    .filter(|user| user["name"].as_str().is_some_and(|name| name.starts_with("probe")))
                    .count();
                if probes == self.nodes.len() {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "the group did not connect within {PATIENCE:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn shutdown(self) {
        for node in self.nodes {
            node.web.shutdown().await;
            node.data.shutdown().await;
        }
    }
}

/// Starts a web server on an ephemeral port attached to `data`.
pub async fn start_web_server(data: &DataServer, name: &str) -> WebServer {
    let config = WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: data.request_endpoint().to_owned(),
        data_pub_endpoint: data.pub_endpoint().to_owned(),
        name: name.to_owned(),
        request_timeout: Duration::from_secs(5),
    };
    WebServer::start(config).await.expect("starting a web server")
}

/// Sends the servers' logs to the test output when RUST_LOG is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

/// An HTTP response: its status, its JSON body (Null when the body is empty or not JSON) and
/// its `Link` header, which history pages carry when older messages remain.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub link: Option<String>,
}

/// A browser-like HTTP client of one web server: it keeps the session cookie.
#[derive(Clone)]
pub struct WebClient {
    pub base: String,
    http: reqwest::Client,
    cookies: std::sync::Arc<reqwest::cookie::Jar>,
}

impl WebClient {
    pub fn new(address: SocketAddr) -> WebClient {
        let cookies = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(cookies.clone())
            .timeout(PATIENCE)
            .build()
            .expect("building an HTTP client");
        WebClient { base: format!("http://{address}"), http, cookies }
    }

    /// Builds a client whose cookie jar starts with `cookie` (a `name=value` pair), as if it had
    /// copied or forged another browser's cookie.
    pub fn with_cookie(address: SocketAddr, cookie: &str) -> WebClient {
        let client = WebClient::new(address);
        client.cookies.add_cookie_str(cookie, &client.base.parse().expect("a valid base URL"));
        client
    }

    /// Returns the `name=value` pairs of the cookies this client would send, if any.
    pub fn session_cookie(&self) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let header = self.cookies.cookies(&self.base.parse().expect("a valid base URL"))?;
        Some(header.to_str().ok()?.to_owned())
    }

    pub async fn get(&self, path: &str) -> Response {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.expect("sending a GET");
        into_response(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        let response =
            self.http.post(format!("{}{path}", self.base)).json(&body).send().await.expect("sending a POST");
        into_response(response).await
    }

    /// Sends a POST with a raw body and content type, for malformed-input tests.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Response {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("sending a POST");
        into_response(response).await
    }

    /// Registers a user and asserts it worked.
    pub async fn register(&self, name: &str, password: &str) {
        let response = self.post("/api/users", json!({"name": name, "password": password})).await;
        assert_eq!(response.status, 201, "registering {name}: {response:?}");
    }

    /// Logs in and asserts it worked; the client keeps the session cookie.
    pub async fn login(&self, name: &str, password: &str) {
        let response = self.post("/api/login", json!({"name": name, "password": password})).await;
        assert_eq!(response.status, 200, "logging in as {name}: {response:?}");
    }

    /// Registers `name` with a fixed test password and logs in.
    pub async fn user(self, name: &str) -> WebClient {
        self.register(name, "password-of-test").await;
        self.login(name, "password-of-test").await;
        self
    }

    pub async fn users(&self) -> Vec<Value> {
        let response = self.get("/api/users").await;
        assert_eq!(response.status, 200, "listing users: {response:?}");
        response.body.as_array().cloned().unwrap_or_default()
    }

    /// Creates a subject and returns its id.
    pub async fn create_subject(&self, title: &str) -> String {
        let response = self.post("/api/subjects", json!({"title": title})).await;
        assert_eq!(response.status, 201, "creating subject {title:?}: {response:?}");
        response.body["id"].as_str().expect("subject id").to_owned()
    }

    /// Posts in a subject and returns the stored message.
    pub async fn post_message(&self, subject: &str, text: &str) -> Value {
        let response = self.post(&format!("/api/subjects/{subject}/messages"), json!({"text": text})).await;
        assert_eq!(response.status, 201, "posting {text:?}: {response:?}");
        response.body
    }

    /// The texts of a subject's history, oldest first.
    pub async fn history_texts(&self, subject: &str) -> Vec<String> {
        let response = self.get(&format!("/api/subjects/{subject}/messages")).await;
        assert_eq!(response.status, 200, "reading history: {response:?}");
        texts(&response.body)
    }

    /// Opens the event stream with this client's session.
    pub async fn events(&self) -> EventStream {
        self.events_after(None).await
    }

    /// Opens the event stream as a reconnecting browser does: with `Last-Event-ID` when given.
    pub async fn events_after(&self, last_event_id: Option<&str>) -> EventStream {
        let mut request = self.http.get(format!("{}/api/events", self.base));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("opening events");
        assert_eq!(response.status().as_u16(), 200, "opening the event stream");
        EventStream::spawn(response)
    }

    /// Returns a client of another web server that sends this client's cookies, as a browser
    /// does when a load balancer sends it elsewhere on the same host.
    pub fn same_browser_at(&self, address: SocketAddr) -> WebClient {
        WebClient { base: format!("http://{address}"), http: self.http.clone(), cookies: self.cookies.clone() }
    }
}

async fn into_response(response: reqwest::Response) -> Response {
    let status = response.status().as_u16();
    let link = response.headers().get("link").map(|value| value.to_str().expect("a Link header in ASCII").to_owned());
    let bytes = response.bytes().await.expect("reading a response body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Response { status, body, link }
}

/// The `text` fields of a JSON array of messages.
pub fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .map(|items| items.iter().filter_map(|item| item["text"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub kind: String,
    pub data: Value,
}

/// The events of one open `/api/events` stream, parsed by a background task.
pub struct EventStream {
    events: mpsc::UnboundedReceiver<Event>,
    reader: tokio::task::JoinHandle<()>,
}

impl EventStream {
    fn spawn(response: reqwest::Response) -> EventStream {
        let (sender, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if let Some(event) = parse_event(&block) {
                        if sender.send(event).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        EventStream { events, reader }
    }

    /// Waits for the next event of `kind` for which `matches` holds, skipping others.
    /// Panics after [`PATIENCE`].
    pub async fn expect(&mut self, kind: &str, matches: impl Fn(&Value) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match next {
                Ok(Some(event)) if event.kind == kind && matches(&event.data) => return event,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the event stream closed while waiting for a {kind:?} event"),
                Err(_) => panic!("no matching {kind:?} event within {PATIENCE:?}"),
            }
        }
    }

    /// Returns the next event of any kind, or `None` when the stream closed. Panics after
    /// [`PATIENCE`].
    pub async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(PATIENCE, self.events.recv()).await {
            Ok(event) => event,
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// Collects every event that arrives within `window`.
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + window;
        let mut events = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            events.push(event);
        }
        events
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn parse_event(block: &str) -> Option<Event> {
    let mut id = None;
    let mut kind = "message".to_owned();
    let mut data = String::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(Event { id, kind, data: serde_json::from_str(&data).unwrap_or(Value::String(data)) })
}

/// Counts, per topic and per change id, the messages published on one PUB endpoint, using a
/// plain SUB socket as any outside observer would.
pub struct PubCounter {
    counts: std::sync::Arc<std::sync::Mutex<HashMap<(String, String), usize>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl PubCounter {
    pub async fn connect(endpoint: &str) -> PubCounter {
        use zeromq::{Socket, SocketRecv};
        let mut socket = zeromq::SubSocket::new();
        socket.connect(endpoint).await.expect("connecting a counting SUB socket");
        socket.subscribe("").await.expect("subscribing to every topic");
        let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let shared = counts.clone();
        let reader = tokio::spawn(async move {
            while let Ok(message) = socket.recv().await {
                // A change is the last frame: `[checkpoint, change]` or `[webserver, header,
                // change]`. Heartbeats do not decode as changes and are skipped.
                let frames = message.into_vec();
                let (Some(topic), Some(change)) = (frames.first(), frames.last()) else { continue };
                if frames.len() < 2 {
                    continue;
                }
                let topic = String::from_utf8_lossy(topic).into_owned();
                let Ok(wire) = forum_protocol::decode::<forum_protocol::WireChange>(change) else {
                    continue;
                };
                *shared.lock().unwrap().entry((topic, wire.change.id.to_string())).or_insert(0) += 1;
            }
        });
        PubCounter { counts, reader }
    }

    /// How many times the change `id` was published on `topic`.
    pub fn count(&self, topic: &str, id: &str) -> usize {
        self.counts.lock().unwrap().get(&(topic.to_owned(), id.to_owned())).copied().unwrap_or(0)
    }

    /// How many messages of any change were seen on `topic`.
    pub fn total(&self, topic: &str) -> usize {
        self.counts.lock().unwrap().iter().filter(|((t, _), _)| t == topic).map(|(_, n)| n).sum()
    }
}

impl Drop for PubCounter {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Polls `check` until it returns true, panicking with `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {PATIENCE:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The path of a workspace binary built by `cargo test --workspace`, next to the test
/// executable's `deps` folder.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().expect("locating the test executable");
    let profile_dir = test_executable.parent().and_then(|deps| deps.parent()).expect("target profile folder");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; run the tests with `cargo test --workspace` so cargo builds the {name} binary",
        path.display()
    );
    path
}

/// Returns a loopback port that was free a moment ago, for a server to bind later.
///
/// The ports come from 20000 to 32767, below Linux's default ephemeral range (32768 to
/// 60999), so that no socket bound to port 0 and no outgoing connection, in this test or
/// another, takes the port before the server binds it. Each test process starts at a random
/// point and moves on, so parallel tests do not pick the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20000;
    const COUNT: u16 = 12768;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, rand::random::<u16>() % COUNT + 1, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A server binary running as a child process; it is killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
}

impl ServerProcess {
    /// Starts a workspace binary with `args`, its logs going to this test's output.
    pub fn spawn(binary: &str, args: &[&str]) -> ServerProcess {
        let child = std::process::Command::new(workspace_binary(binary))
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .spawn()
            .unwrap_or_else(|error| panic!("starting {binary}: {error}"));
        ServerProcess { child }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGCONT first, so a stopped process can die; both fail harmlessly if it is gone.
        let _ = std::process::Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a ZMTP 3.0 greeting for the NULL mechanism with as-server false (64 bytes), as a
/// client or one of our fake servers sends it.
pub fn zmtp_greeting() -> Vec<u8> {
    let mut bytes = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    bytes.extend_from_slice(b"NULL");
    bytes.resize(32, 0);
    bytes.push(0); // as-server: false
    bytes.resize(64, 0);
    bytes
}

/// Returns the READY command of a socket of type `socket_type`, with no other property.
pub fn zmtp_ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut bytes = vec![0x04, body.len() as u8];
    bytes.extend_from_slice(&body);
    bytes
}
