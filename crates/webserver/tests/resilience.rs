//! How the web server behaves when its data server is silent, down or restarted.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::{eventually, start_data_server, start_web_server, Browser};
use zeromq::{PubSocket, RouterSocket, Socket};

#[tokio::test]
async fn silent_data_server_gives_503() {
    let mut router = RouterSocket::new();
    let request_endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let mut publisher = PubSocket::new();
    let pub_endpoint = publisher.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let web = start_web_server(&request_endpoint, &pub_endpoint, Duration::from_millis(300)).await;
    let browser = Browser::new(web.local_addr());

    let started = Instant::now();
    let answer = browser.get("/api/subjects").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.code(), "data_server_timeout");
    assert!(answer.body["error"].as_str().unwrap().contains("data server"));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    // After three missed heartbeats the link counts as lost and requests fail at once.
    eventually("requests fail fast", || async {
        let started = Instant::now();
        let answer = browser.get("/api/users").await;
        answer.status == StatusCode::SERVICE_UNAVAILABLE
            && answer.code() == "data_server_unavailable"
            && started.elapsed() < Duration::from_millis(250)
    })
    .await;
    web.shutdown().await;
    drop(router);
    drop(publisher);
}

async fn is_online(browser: &Browser, name: &str) -> bool {
    let users = browser.get("/api/users").await.body;
    users.as_array().is_some_and(|users| users.iter().any(|user| user["name"] == name && user["online"] == true))
}

#[tokio::test]
async fn data_server_restart_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let data = start_data_server(dir.path(), "tcp://127.0.0.1:0", "tcp://127.0.0.1:0").await;
    let request_endpoint = data.request_endpoint().to_owned();
    let pub_endpoint = data.pub_endpoint().to_owned();
    let web = start_web_server(&request_endpoint, &pub_endpoint, Duration::from_secs(1)).await;
    let mut ana = Browser::new(web.local_addr());
    ana.sign_up("ana").await;
    let presence_stream = ana.events().await;
    eventually("ana is online", || async { is_online(&ana, "ana").await }).await;

    data.shutdown().await;
    let answer = ana.get("/api/subjects").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", answer.body);

    let data = start_data_server(dir.path(), &request_endpoint, &pub_endpoint).await;
    eventually("the web server reconnects", || async { ana.get("/api/subjects").await.status == StatusCode::OK }).await;
    eventually("ana is reported online again", || async { is_online(&ana, "ana").await }).await;

    // The change feed reconnects too: a new subject reaches an event stream.
    let mut events = ana.events().await;
    let mut seen = false;
    for attempt in 0..20 {
        let created = ana.post("/api/subjects", json!({ "title": format!("after restart {attempt}") })).await;
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        if tokio::time::timeout(Duration::from_millis(500), events.next_named("subject")).await.is_ok() {
            seen = true;
            break;
        }
    }
    assert!(seen, "no change arrived after the data server restarted");
    drop(events);
    drop(presence_stream);
    web.shutdown().await;
    data.shutdown().await;
}
