//! Who may do what: every API route tried as a third user and as no user. Ana and Bob have a
//! private conversation; Carol (logged in) and an anonymous client try to read it, to write into
//! it, and to act as Ana.

mod common;

use std::time::Duration;

use common::{Group, WebClient};
use serde_json::json;

/// A group of two nodes where ana (on web server 1) and bob (on web server 2) have exchanged a
/// private message, and carol (on web server 2) is a third user.
struct Scene {
    group: Group,
    ana: WebClient,
    bob: WebClient,
    carol: WebClient,
    subject: String,
}

impl Scene {
    async fn start() -> Scene {
        let group = Group::start(2).await;
        let ana = group.web(0).user("ana").await;
        let bob = group.web(1).user("bob").await;
        let carol = group.web(1).user("carol").await;
        let subject = ana.create_subject("Public").await;
        common::eventually("bob's web server knows ana", || async {
            bob.users().await.iter().any(|user| user["name"] == "ana")
        })
        .await;
        let sent = ana.post("/api/private/bob", json!({"text": "secret for bob"})).await;
        assert_eq!(sent.status, 201, "{sent:?}");
        common::eventually("bob sees ana's private message", || async {
            common::texts(&bob.get("/api/private/ana").await.body) == ["secret for bob"]
        })
        .await;
        Scene { group, ana, bob, carol, subject }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_user_cannot_read_others_conversation() {
    let scene = Scene::start().await;

    for other in ["ana", "bob"] {
        let view = scene.carol.get(&format!("/api/private/{other}")).await;
        assert_eq!(view.status, 200, "{view:?}");
        assert!(common::texts(&view.body).is_empty(), "carol reads {other}'s conversation: {view:?}");
    }
    // Path tricks that might select another pair or another user.
    for path in [
        "/api/private/ana%2Fbob",
        "/api/private/ana/bob",
        "/api/private/ana,bob",
        "/api/private/ANA",
        "/api/private/ana%00",
        "/api/private/..%2Fprivate%2Fbob",
    ] {
        let view = scene.carol.get(path).await;
        assert!(
            !common::texts(&view.body).iter().any(|text| text == "secret for bob"),
            "{path} leaks the conversation: {view:?}"
        );
    }
    scene.group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_reads_or_writes_without_session() {
    let scene = Scene::start().await;
    let anonymous = scene.group.web(1);
    let forged = WebClient::with_cookie(scene.group.nodes[1].web.local_addr(), &format!("forum_session={}", "ab".repeat(32)));

    for client in [&anonymous, &forged] {
        let reads = [client.get("/api/private/ana").await, client.get("/api/private/bob").await, client.get("/api/me").await];
        for response in reads {
            assert_eq!(response.status, 401, "{response:?}");
        }
        let writes = [
            client.post("/api/private/bob", json!({"text": "hi"})).await,
            client.post("/api/subjects", json!({"title": "Anonymous"})).await,
            client.post(&format!("/api/subjects/{}/messages", scene.subject), json!({"text": "hi"})).await,
        ];
        for response in writes {
            assert_eq!(response.status, 401, "{response:?}");
        }
    }
    assert!(scene.ana.history_texts(&scene.subject).await.is_empty(), "an anonymous post was stored");
    scene.group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_cannot_choose_the_author() {
    let scene = Scene::start().await;
    let messages = format!("/api/subjects/{}/messages", scene.subject);

    let attempts = [
        scene.carol.post(&messages, json!({"text": "as ana", "author": "ana"})).await,
        scene.carol.post("/api/private/bob", json!({"text": "as ana", "from": "ana"})).await,
        scene.carol.post("/api/subjects", json!({"title": "As ana", "created_by": "ana"})).await,
    ];
    for response in attempts {
        assert_eq!(response.status, 400, "a body field chose the author: {response:?}");
    }

    let posted = scene.carol.post_message(&scene.subject, "from carol").await;
    assert_eq!(posted["author"], "carol");
    let sent = scene.carol.post("/api/private/bob", json!({"text": "carol to bob"})).await;
    assert_eq!(sent.body["from"], "carol", "{sent:?}");
    let ana_view = scene.ana.get("/api/private/bob").await;
    assert_eq!(common::texts(&ana_view.body), ["secret for bob"], "carol's message joined ana's conversation");
    scene.group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_out_session_is_revoked() {
    let scene = Scene::start().await;
    let cookie = scene.carol.session_cookie().expect("carol has a session cookie");
    let stolen = WebClient::with_cookie(scene.group.nodes[1].web.local_addr(), &cookie);
    assert_eq!(stolen.get("/api/me").await.status, 200, "the copied cookie works before logout");

    let logout = scene.carol.post("/api/logout", json!({})).await;
    assert_eq!(logout.status, 204, "{logout:?}");

    assert_eq!(stolen.get("/api/me").await.status, 401, "the session still works after logout");
    let write = stolen.post("/api/private/bob", json!({"text": "after logout"})).await;
    assert_eq!(write.status, 401, "{write:?}");
    scene.group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_carry_only_own_private_messages() {
    let scene = Scene::start().await;
    let mut carol_events = scene.carol.events().await;
    let mut anonymous_events = scene.group.web(0).events().await;
    let mut bob_events = scene.bob.events().await;

    let sent = scene.ana.post("/api/private/bob", json!({"text": "second secret"})).await;
    assert_eq!(sent.status, 201, "{sent:?}");

    bob_events.expect("private", |data| data["text"] == "second secret").await;
    for stream in [&mut carol_events, &mut anonymous_events] {
        let events = stream.collect_for(Duration::from_secs(1)).await;
        let leaked: Vec<_> = events.iter().filter(|event| event.data.to_string().contains("secret")).collect();
        assert!(leaked.is_empty(), "a private message leaked to another stream: {leaked:?}");
    }
    scene.group.shutdown().await;
}
