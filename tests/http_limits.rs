//! Limits on the web side: unfinished HTTP requests are closed after the header-read timeout,
//! connections beyond the cap are closed at once, and failed logins are rate-limited per
//! case-folded name and per address with a 429 that gives the seconds to wait. A
//! request body that stops arriving gets 408, and one declared above the cap gets 413 at once.

mod common;

use std::time::{Duration, Instant};

use forum_dataserver::{Config, DataServer};
use forum_webserver::{Config as WebConfig, HttpLimits, Options, WebServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &std::path::Path, http: HttpLimits) -> (DataServer, WebServer) {
    common::init_logging();
    let data = DataServer::start(Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        peers: Vec::new(),
    })
    .await
    .expect("starting a data server");
    let config = WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: data.request_endpoint().to_owned(),
        data_pub_endpoint: data.pub_endpoint().to_owned(),
        name: "web".into(),
        request_timeout: Duration::from_secs(5),
    };
    let web = WebServer::start_with(config, Options { http, ..Options::default() }).await.expect("starting a web server");
    (data, web)
}

/// Reads until the server closes `stream`, and returns whether it did within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_headers_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let header_read_timeout = Duration::from_secs(2);
    let (data, web) = start(dir.path(), HttpLimits { header_read_timeout, ..HttpLimits::default() }).await;
    let address = web.local_addr();

    // 5,000 clients each send a request line and one header, but never the blank line.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..5000 {
        let mut stream = TcpStream::connect(address).await.expect("connecting");
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("writing a partial request");
        held.push(stream);
    }
    eprintln!("opened 5,000 unfinished requests in {:?}", started.elapsed());
    let web_client = common::WebClient::new(address);
    assert_eq!(web_client.get("/api/users").await.status, 200, "a normal request while 5,000 are held");

    for (index, stream) in held.iter_mut().enumerate() {
        let remaining = (started + header_read_timeout + Duration::from_secs(3)).saturating_duration_since(Instant::now());
        assert!(closed_within(stream, remaining).await, "unfinished request {index} is still open");
    }
    eprintln!("all 5,000 closed {:?} after the first was opened", started.elapsed());

    // A silent connection is closed too.
    let mut silent = TcpStream::connect(address).await.unwrap();
    assert!(closed_within(&mut silent, header_read_timeout + Duration::from_secs(3)).await, "a silent connection stayed open");
    assert_eq!(web_client.get("/api/users").await.status, 200, "a normal request afterwards");
    web.shutdown().await;
    data.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_cap_closed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = HttpLimits { max_connections: 50, header_read_timeout: Duration::from_secs(30), ..HttpLimits::default() };
    let (data, web) = start(dir.path(), limits).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(web.local_addr()).await.unwrap());
    }
    // The accept loop takes the 50 permits in order, so the next connection is over the cap.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(web.local_addr()).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(1)).await, "the 51st connection stayed open");

    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = common::WebClient::new(web.local_addr()).get("/api/users").await;
    assert_eq!(response.status, 200, "a request once the held connections closed");
    web.shutdown().await;
    data.shutdown().await;
}

/// Sends a login and returns the status, the Retry-After header and the JSON body.
async fn login(base: &str, name: &str, password: &str, language: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/login"))
        .header("accept-language", language)
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .expect("sending a login");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let (data, web) = start(dir.path(), HttpLimits::default()).await;
    let base = format!("http://{}", web.local_addr());
    common::WebClient::new(web.local_addr()).register("ana", "password-of-ana").await;

    for attempt in 1..=5 {
        let (status, _, body) = login(&base, "ana", "wrong-password", "en").await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    let (status, retry_after, body) = login(&base, "ana", "password-of-ana", "en").await;
    assert_eq!(status, 429, "the right password after 5 failures: {body}");
    assert_eq!(body["code"], "too_many_attempts", "{body}");
    let seconds: u64 = retry_after.expect("a Retry-After header").parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&seconds), "Retry-After: {seconds}");
    assert!(body["error"].as_str().unwrap().contains(&seconds.to_string()), "{body}");
    let (_, _, spanish) = login(&base, "ana", "wrong-password", "es").await;
    assert!(spanish["error"].as_str().unwrap().starts_with("Demasiados"), "{spanish}");

    // The address limit: 20 failures over other names block every name from this address.
    for attempt in 0..15 {
        let (status, _, body) = login(&base, &format!("nobody{attempt}"), "wrong-password", "en").await;
        assert_eq!(status, 401, "failure {attempt} for another name: {body}");
    }
    common::WebClient::new(web.local_addr()).register("bea", "password-of-bea").await;
    let (status, _, body) = login(&base, "bea", "password-of-bea", "en").await;
    assert_eq!(status, 429, "a fresh name after 20 failures from this address: {body}");
    web.shutdown().await;
    data.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_limit_ignores_name_case() {
    let dir = tempfile::tempdir().unwrap();
    let (data, web) = start(dir.path(), HttpLimits::default()).await;
    let base = format!("http://{}", web.local_addr());
    common::WebClient::new(web.local_addr()).register("luis", "password-of-luis").await;

    for attempt in 1..=5 {
        let (status, _, body) = login(&base, "luis", "wrong-password", "en").await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
    for name in ["LUIS", "Luis", " luis ", "lUiS"] {
        let (status, _, body) = login(&base, name, "password-of-luis", "en").await;
        assert_eq!(status, 429, "{name:?} after 5 failures for luis: {body}");
    }
    web.shutdown().await;
    data.shutdown().await;
}

/// Starts a `webserver` process in front of `data`, with a body-read timeout of
/// `body_read_timeout`, and returns it with its HTTP address.
fn start_web_process(data: &DataServer, body_read_timeout: Duration) -> (common::ServerProcess, std::net::SocketAddr) {
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let listen = address.to_string();
    let timeout_ms = body_read_timeout.as_millis().to_string();
    let process = common::ServerProcess::spawn(
        "webserver",
        &[
            "--listen",
            &listen,
            "--data-request",
            data.request_endpoint(),
            "--data-pub",
            data.pub_endpoint(),
            "--body-read-timeout-ms",
            &timeout_ms,
        ],
    );
    (process, address)
}

/// Connects to `address`, retrying while the web server process starts.
async fn connect(address: std::net::SocketAddr) -> TcpStream {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        match TcpStream::connect(address).await {
            Ok(stream) => return stream,
            Err(error) => assert!(Instant::now() < deadline, "the web server at {address} did not accept connections: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads everything the server sends until it closes `stream`, for at most `within`. Returns
/// the bytes as text and whether the server closed the connection.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(length) => received.extend_from_slice(&buffer[..length]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = start(dir.path(), HttpLimits::default()).await;
    let body_read_timeout = Duration::from_secs(1);
    let (_web, address) = start_web_process(&data, body_read_timeout);

    // The headers promise 100 bytes, and only 7 of them ever arrive.
    let mut stream = connect(address).await;
    let started = Instant::now();
    let request = "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\"";
    stream.write_all(request.as_bytes()).await.expect("writing the headers and part of the body");
    let (response, closed) = read_until_closed(&mut stream, body_read_timeout + Duration::from_secs(3)).await;
    let elapsed = started.elapsed();

    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    assert!(closed, "the connection stayed open after the 408");
    assert!(elapsed >= body_read_timeout, "answered after {elapsed:?}, before the timeout");
    eprintln!("stalled body answered with 408 and closed after {elapsed:?}");

    // A whole request on a new connection is still served.
    let client = common::WebClient::new(address);
    assert_eq!(client.get("/api/users").await.status, 200, "a normal request afterwards");
    data.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = start(dir.path(), HttpLimits::default()).await;
    let (_web, address) = start_web_process(&data, Duration::from_secs(30));

    for expect in ["", "Expect: 100-continue\r\n"] {
        // The body is never sent, so the response must not wait for it.
        let mut stream = connect(address).await;
        let started = Instant::now();
        let request = format!(
            "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n{expect}\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("writing the headers");
        let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        let elapsed = started.elapsed();

        assert!(response.starts_with("HTTP/1.1 413"), "with {expect:?}: {response}");
        assert!(!response.contains("100 Continue"), "with {expect:?}: {response}");
        assert!(response.contains("body_too_large"), "with {expect:?}: {response}");
        assert!(closed, "with {expect:?}: the connection stayed open after the 413");
        eprintln!("Content-Length above the cap, {expect:?}: 413 and closed after {elapsed:?}");
    }
    data.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_like_get_without_body() {
    let dir = tempfile::tempdir().unwrap();
    let (data, web) = start(dir.path(), HttpLimits::default()).await;

    for path in ["/", "/api/subjects", "/assets/app.js"] {
        let mut stream = connect(web.local_addr()).await;
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("writing a HEAD request");
        let (response, closed) = read_until_closed(&mut stream, common::PATIENCE).await;
        assert!(closed, "the server kept the connection of HEAD {path}");
        assert!(response.starts_with("HTTP/1.1 200"), "HEAD {path}:\n{response}");
        assert!(response.to_ascii_lowercase().contains("\ncontent-type:"), "HEAD {path}:\n{response}");
        let (_, body) = response.split_once("\r\n\r\n").expect("the end of the headers");
        assert_eq!(body, "", "HEAD {path} sent a body");
    }

    web.shutdown().await;
    data.shutdown().await;
}
