//! The event stream and presence, against a real data server.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

use support::{eventually, start_web_server, Browser, EventReader, Forum};

/// Creates subjects until `reader` receives one, which shows that the web server's
/// subscription to the change feed is live. A SUB socket misses what is published before it
/// connects.
async fn wait_until_live(author: &Browser, reader: &mut EventReader) {
    for attempt in 0.. {
        let title = format!("warm-up {attempt}");
        assert_eq!(author.post("/api/subjects", json!({ "title": title })).await.status, StatusCode::CREATED);
        let arrived = tokio::time::timeout(Duration::from_millis(500), reader.next_named("subject")).await;
        if arrived.is_ok() {
            return;
        }
        assert!(attempt < 20, "the change feed never became live");
    }
}

#[tokio::test]
async fn private_events_reach_only_their_users() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();
    ana.sign_up("ana").await;
    let mut luis = forum.browser();
    luis.sign_up("luis").await;
    let mut eva = forum.browser();
    eva.sign_up("eva").await;
    let anonymous = forum.browser();

    let mut luis_events = luis.events().await;
    let mut eva_events = eva.events().await;
    let mut anonymous_events = anonymous.events().await;
    wait_until_live(&ana, &mut luis_events).await;

    assert_eq!(ana.post("/api/private/luis", json!({ "text": "secret" })).await.status, StatusCode::CREATED);
    let subject = ana.post("/api/subjects", json!({ "title": "After the secret" })).await;
    let path = format!("/api/subjects/{}/messages", subject.body["id"].as_str().unwrap());
    assert_eq!(ana.post(&path, json!({ "text": "public" })).await.status, StatusCode::CREATED);

    let private = luis_events.next_named("private").await;
    assert_eq!(private.data["text"], "secret");
    assert_eq!(private.data["from"], "ana");
    let post = luis_events.next_named("post").await;
    assert_eq!(post.data["text"], "public");
    // Event ids are "{data server id}:{feed position}".
    let position = |id: &str| id.split_once(':').expect("id has a colon").1.parse::<u64>().expect("position is a number");
    assert!(position(&post.id) > position(&private.id), "ids increase");

    for reader in [&mut eva_events, &mut anonymous_events] {
        loop {
            let event = reader.next().await.expect("stream is open");
            assert_ne!(event.name, "private", "a private message leaked: {event:?}");
            if event.name == "post" {
                assert_eq!(event.data["text"], "public");
                break;
            }
        }
    }
    forum.stop().await;
}

async fn is_online(browser: &Browser, name: &str) -> bool {
    let users = browser.get("/api/users").await.body;
    users.as_array().unwrap().iter().any(|user| user["name"] == name && user["online"] == true)
}

#[tokio::test]
async fn presence_follows_open_streams() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();
    ana.sign_up("ana").await;
    let mut luis = forum.browser();
    luis.sign_up("luis").await;
    let mut ana_events = ana.events().await;
    wait_until_live(&ana, &mut ana_events).await;

    let first = luis.events().await;
    let second = luis.events().await;
    let online = ana_events.next_named("presence").await;
    assert_eq!(online.data, json!({ "name": "luis", "online": true, "webserver": "web1" }));
    assert!(is_online(&ana, "luis").await);

    drop(first);
    drop(second);
    loop {
        let event = ana_events.next_named("presence").await;
        if event.data["name"] == "luis" {
            assert_eq!(event.data["online"], false, "{event:?}");
            break;
        }
    }
    eventually("luis is offline", || async { !is_online(&ana, "luis").await }).await;
    forum.stop().await;
}

#[tokio::test]
async fn logout_ends_event_stream() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();
    ana.sign_up("ana").await;
    let mut events = ana.events().await;
    assert_eq!(ana.post("/api/logout", json!({})).await.status, StatusCode::NO_CONTENT);
    while let Some(event) = events.next().await {
        assert_ne!(event.name, "private");
    }
    forum.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let forum = Forum::start().await;
    let mut ana = forum.browser();
    ana.sign_up("ana").await;
    let mut events = ana.events().await;
    let anonymous = forum.browser();
    let mut anonymous_events = anonymous.events().await;

    let Forum { data, web, dir: _dir } = forum;
    let data = data.unwrap();
    let other_web = start_web_server(data.request_endpoint(), data.pub_endpoint(), Duration::from_secs(5)).await;
    let observer = Browser::new(other_web.local_addr());
    eventually("ana is online", || async { is_online(&observer, "ana").await }).await;

    let started = Instant::now();
    web.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    while events.next().await.is_some() {}
    while anonymous_events.next().await.is_some() {}
    assert!(!is_online(&observer, "ana").await, "shutdown did not report ana offline");

    other_web.shutdown().await;
    data.shutdown().await;
}
