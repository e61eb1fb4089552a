//! A harness for the web server's tests: a real data server in a temporary directory, a web
//! server on an ephemeral port, and a small HTTP client that keeps one session cookie and
//! reads event streams.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use forum_dataserver::DataServer;
use forum_webserver::{Config, WebServer};
use reqwest::StatusCode;
use serde_json::Value;

/// How long a test waits for something that should happen quickly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Starts a data server with id 1 in `dir`, on the given endpoints (port 0 for any).
pub async fn start_data_server(dir: &std::path::Path, request_endpoint: &str, pub_endpoint: &str) -> DataServer {
    DataServer::start(forum_dataserver::Config {
        id: 1,
        request_endpoint: request_endpoint.to_owned(),
        pub_endpoint: pub_endpoint.to_owned(),
        data_dir: dir.to_owned(),
        peers: Vec::new(),
    })
    .await
    .expect("data server starts")
}

/// Starts a web server named `web1` on an ephemeral port.
pub async fn start_web_server(request_endpoint: &str, pub_endpoint: &str, request_timeout: Duration) -> WebServer {
    WebServer::start(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: request_endpoint.to_owned(),
        data_pub_endpoint: pub_endpoint.to_owned(),
        name: "web1".to_owned(),
        request_timeout,
    })
    .await
    .expect("web server starts")
}

/// One data server and one web server in front of it.
pub struct Forum {
    pub data: Option<DataServer>,
    pub web: WebServer,
    pub dir: tempfile::TempDir,
}

impl Forum {
    pub async fn start() -> Forum {
        let dir = tempfile::tempdir().unwrap();
        let data = start_data_server(dir.path(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0").await;
        let web = start_web_server(data.request_endpoint(), data.pub_endpoint(), Duration::from_secs(5)).await;
        Forum { data: Some(data), web, dir }
    }

    pub fn browser(&self) -> Browser {
        Browser::new(self.web.local_addr())
    }

    pub async fn stop(mut self) {
        self.web.shutdown().await;
        if let Some(data) = self.data.take() {
            data.shutdown().await;
        }
    }
}

/// An HTTP client with at most one session cookie, like one browser tab.
pub struct Browser {
    client: reqwest::Client,
    base: String,
    pub cookie: Option<String>,
    pub language: Option<&'static str>,
}

/// A response's status and JSON body (`Value::Null` when the body is empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl Browser {
    pub fn new(address: SocketAddr) -> Browser {
        Browser { client: reqwest::Client::new(), base: format!("http://{address}"), cookie: None, language: None }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(language) = self.language {
            request = request.header("accept-language", language);
        }
        request
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers }
    }

    pub async fn get(&self, path: &str) -> Answer {
        Self::answer(self.request(reqwest::Method::GET, path).send().await.expect("GET is sent")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        let response = self.request(reqwest::Method::POST, path).json(&body).send().await.expect("POST is sent");
        Self::answer(response).await
    }

    /// Registers and logs in `name`, keeping the session cookie.
    pub async fn sign_up(&mut self, name: &str) {
        let answer = self.post("/api/users", serde_json::json!({ "name": name, "password": "password1" })).await;
        assert_eq!(answer.status, StatusCode::CREATED, "register {name}: {:?}", answer.body);
        self.log_in(name, "password1").await;
    }

    pub async fn log_in(&mut self, name: &str, password: &str) -> Answer {
        let answer = self.post("/api/login", serde_json::json!({ "name": name, "password": password })).await;
        if answer.status == StatusCode::OK {
            let set_cookie = answer.headers["set-cookie"].to_str().unwrap();
            self.cookie = Some(set_cookie.split(';').next().unwrap().to_owned());
        }
        answer
    }

    /// Opens `GET /api/events`.
    pub async fn events(&self) -> EventReader {
        let response = self.request(reqwest::Method::GET, "/api/events").send().await.expect("event stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        EventReader { response, buffer: String::new() }
    }
}

/// One server-sent event: its name, its data parsed as JSON and its id.
#[derive(Debug, Clone)]
pub struct ServerEvent {
    pub name: String,
    pub data: Value,
    pub id: String,
}

/// Reads events from an open event stream.
pub struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

impl EventReader {
    /// Returns the next event (skipping comments), `None` when the stream ended, and panics
    /// after [`PATIENCE`].
    pub async fn next(&mut self) -> Option<ServerEvent> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = ServerEvent { name: String::new(), data: Value::Null, id: String::new() };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.name = name.to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(data).expect("event data is JSON");
                    } else if let Some(id) = line.strip_prefix("id:") {
                        event.id = id.to_owned();
                    }
                }
                if !event.name.is_empty() {
                    return Some(event);
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(remaining, self.response.chunk())
                .await
                .expect("no event arrived in time")
                .expect("event stream read");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// Returns the next event named `name`, skipping others.
    pub async fn next_named(&mut self, name: &str) -> ServerEvent {
        loop {
            let event = self.next().await.expect("stream is open");
            if event.name == name {
                return event;
            }
        }
    }
}

/// Polls `check` every 100 ms until it returns true, panicking with `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
