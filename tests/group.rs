//! End-to-end scenarios: real data servers and web servers over TCP on loopback, driven through
//! the HTTP API and the event streams as browsers use them.

mod common;

use std::time::Duration;

use common::{eventually, Group, PubCounter};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_registered_on_one_logs_in_on_another() {
    let group = Group::start(3).await;

    group.web(0).register("ana", "secret-password").await;

    let elsewhere = group.web(2);
    eventually("web server 3 knows ana", || async {
        elsewhere.post("/api/login", json!({"name": "ana", "password": "secret-password"})).await.status == 200
    })
    .await;
    let me = elsewhere.get("/api/me").await;
    assert_eq!(me.body["name"], "ana");

    let wrong = group.web(1).post("/api/login", json!({"name": "ana", "password": "wrong-password"})).await;
    assert_eq!(wrong.status, 401);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reaches_every_web_server_live() {
    let group = Group::start(3).await;
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject("Distributed systems").await;
    let mut second = group.web(1).events().await;
    let mut third = group.web(2).events().await;

    let posted = ana.post_message(&subject, "hello from web server 1").await;

    for stream in [&mut second, &mut third] {
        let event = stream.expect("post", |data| data["text"] == "hello from web server 1").await;
        assert_eq!(event.data["id"], posted["id"]);
        assert_eq!(event.data["author"], "ana");
        assert!(event.id.is_some(), "every event has an id: line");
    }
    for index in 0..3 {
        let client = group.web(index);
        let subject = subject.clone();
        eventually(&format!("web server {} shows the post", index + 1), || {
            let client = client.clone();
            let subject = subject.clone();
            async move { client.history_texts(&subject).await == ["hello from web server 1"] }
        })
        .await;
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_created_anywhere_appears_everywhere() {
    let group = Group::start(3).await;
    let ana = group.web(1).user("ana").await;
    let mut first = group.web(0).events().await;

    let id = ana.create_subject("Exams").await;

    let event = first.expect("subject", |data| data["title"] == "Exams").await;
    assert_eq!(event.data["id"], id.as_str());
    let duplicate = group.web(1).user("bob").await.post("/api/subjects", json!({"title": "EXAMS"})).await;
    assert_eq!(duplicate.status, 409, "titles are unique ignoring case: {duplicate:?}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_gets_each_change_once_on_checkpoint() {
    let group = Group::start(3).await;
    let mut counters = Vec::new();
    for node in &group.nodes {
        counters.push(PubCounter::connect(node.data.pub_endpoint()).await);
    }
    // A SUB receives nothing until its subscription reaches the PUB, so write until every
    // counter has seen a change on its own server.
    let writer = group.web(0).user("writer").await;
    let warmup = writer.create_subject("Warm-up").await;
    eventually("every counting SUB receives changes", || {
        let writer = writer.clone();
        let warmup = warmup.clone();
        let ready = counters.iter().all(|counter| counter.total("webserver") > 0);
        async move {
            if !ready {
                writer.post_message(&warmup, "warm-up").await;
            }
            ready
        }
    })
    .await;

    let mut posted = Vec::new();
    for index in 0..3 {
        let client = group.web(index).user(&format!("poster{index}")).await;
        let subject = client.create_subject(&format!("Subject {index}")).await;
        for round in 0..5 {
            let message = client.post_message(&subject, &format!("post {round} via {index}")).await;
            posted.push((index, message["id"].as_str().unwrap().to_owned()));
        }
    }

    for (origin_index, id) in &posted {
        eventually(&format!("change {id} is published on webserver by every server"), || async {
            counters.iter().all(|counter| counter.count("webserver", id) >= 1)
        })
        .await;
        for (index, counter) in counters.iter().enumerate() {
            let expected_checkpoints = usize::from(index == *origin_index);
            assert_eq!(counter.count("checkpoint", id), expected_checkpoints, "checkpoint copies of {id} from server {}", index + 1);
        }
    }
    // Late duplicates would show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, id) in &posted {
        let checkpoints: usize = counters.iter().map(|counter| counter.count("checkpoint", id)).sum();
        assert_eq!(checkpoints, 1, "change {id} was published on checkpoint {checkpoints} times in the group");
        for (index, counter) in counters.iter().enumerate() {
            assert_eq!(counter.count("webserver", id), 1, "webserver copies of {id} on server {}", index + 1);
        }
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_peers_works_alone() {
    let group = Group::start_alone().await;
    let ana = group.web(0).user("ana").await;
    let mut events = group.web(0).events().await;

    let subject = ana.create_subject("Alone").await;
    ana.post_message(&subject, "first").await;
    ana.post_message(&subject, "second").await;

    events.expect("post", |data| data["text"] == "second").await;
    assert_eq!(ana.history_texts(&subject).await, ["first", "second"]);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_message_reaches_only_recipient() {
    let group = Group::start(3).await;
    let ana = group.web(0).user("ana").await;
    let bob = group.web(1).user("bob").await;
    let carol = group.web(2).user("carol").await;
    eventually("every user is known on web server 1", || async { ana.users().await.len() >= 6 }).await;
    let mut bob_events = bob.events().await;
    let mut carol_events = carol.events().await;
    let mut anonymous_events = group.web(1).events().await;

    let sent = ana.post("/api/private/bob", json!({"text": "just for you"})).await;
    assert_eq!(sent.status, 201, "{sent:?}");

    let event = bob_events.expect("private", |data| data["text"] == "just for you").await;
    assert_eq!(event.data["from"], "ana");
    assert_eq!(event.data["to"], "bob");
    for stream in [&mut carol_events, &mut anonymous_events] {
        let leaked = stream.collect_for(Duration::from_secs(1)).await;
        assert!(leaked.iter().all(|event| event.kind != "private"), "a private message leaked: {leaked:?}");
    }
    let bob_view = bob.get("/api/private/ana").await;
    assert_eq!(common::texts(&bob_view.body), ["just for you"]);
    let carol_view = carol.get("/api/private/ana").await;
    assert_eq!(carol_view.status, 200);
    assert!(common::texts(&carol_view.body).is_empty(), "carol sees {carol_view:?}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_bodies_get_clear_errors() {
    let group = Group::start_alone().await;
    let anonymous = group.web(0);
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject("Rules").await;
    let messages = format!("/api/subjects/{subject}/messages");

    let cases = [
        ("invalid JSON", ana.post_raw(&messages, "application/json", b"{\"text\":".to_vec()).await, 400),
        ("wrong content type", ana.post_raw(&messages, "text/plain", b"{\"text\":\"hi\"}".to_vec()).await, 415),
        ("empty text", ana.post(&messages, json!({"text": "   "})).await, 400),
        ("oversized text", ana.post(&messages, json!({"text": "x".repeat(4097)})).await, 400),
        ("unknown subject", ana.post("/api/subjects/999-999/messages", json!({"text": "hi"})).await, 404),
        ("malformed subject id", ana.get("/api/subjects/not-an-id/messages").await, 400),
        ("unknown user", ana.post("/api/private/nobody", json!({"text": "hi"})).await, 404),
        ("no session", anonymous.post(&messages, json!({"text": "hi"})).await, 401),
        ("taken name", anonymous.post("/api/users", json!({"name": "ana", "password": "another-password"})).await, 409),
        ("short password", anonymous.post("/api/users", json!({"name": "zoe", "password": "short"})).await, 400),
        ("unknown field", ana.post(&messages, json!({"text": "hi", "author": "bob"})).await, 400),
    ];
    for (case, response, status) in cases {
        assert_eq!(response.status, status, "{case}: {response:?}");
        let error = response.body["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{case}: no error message in {:?}", response.body);
    }
    assert_eq!(ana.history_texts(&subject).await, Vec::<String>::new(), "a rejected post was stored");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_follow_the_browser_language() {
    let group = Group::start_alone().await;
    let address = group.nodes[0].web.local_addr();
    let client = reqwest::Client::new();
    for (language, expected) in [("es-ES,es;q=0.9", "es"), ("en-US", "en")] {
        let response = client
            .post(format!("http://{address}/api/login"))
            .header("accept-language", language)
            .json(&json!({"name": "nobody", "password": "whatever-pass"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error"].as_str().unwrap().to_lowercase();
        match expected {
            "es" => assert!(message.contains("contraseña") || message.contains("usuario"), "not Spanish: {message}"),
            _ => assert!(message.contains("password") || message.contains("name"), "not English: {message}"),
        }
    }
    group.shutdown().await;
}
