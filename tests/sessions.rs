//! Sessions and presence are group-wide: a session works on every web server and after a web
//! server restart, logging out ends it everywhere, and the users of a web server that dies
//! drop off the online list once its presence lease lapses.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, free_port, start_web_server, Group, ServerProcess, WebClient};
use serde_json::json;

/// The presence lease of a web server, `LEASE_DURATION` in `crates/webserver/src/presence.rs`:
/// the documented bound on how long the users of a dead web server stay online.
const LEASE_DURATION: Duration = Duration::from_secs(10);

async fn is_online(client: &WebClient, name: &str) -> bool {
    client.users().await.iter().any(|user| user["name"] == name && user["online"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_is_group_wide_and_revocable() {
    let mut group = Group::start(2).await;
    let ana = group.web(0).user("ana").await;
    let cookie = ana.session_cookie().expect("logging in sets the session cookie");

    // The same browser, sent to the web server of the other data server.
    let elsewhere = WebClient::with_cookie(group.nodes[1].web.local_addr(), &cookie);
    eventually("the session works on web server 2", || async { elsewhere.get("/api/me").await.status == 200 }).await;
    assert_eq!(elsewhere.get("/api/me").await.body["name"], "ana");

    // Web server 1 restarts; the session is still valid there.
    let restarted = start_web_server(&group.nodes[0].data, "web-1-again").await;
    let old = std::mem::replace(&mut group.nodes[0].web, restarted);
    old.shutdown().await;
    let after_restart = WebClient::with_cookie(group.nodes[0].web.local_addr(), &cookie);
    let me = after_restart.get("/api/me").await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["name"], "ana");
    after_restart.create_subject("Still logged in").await;

    // Logging out on web server 1 revokes the session on web server 2 too, and ends the
    // event stream opened there with it.
    let mut stream = elsewhere.events().await;
    let logout = after_restart.post("/api/logout", json!({})).await;
    assert_eq!(logout.status, 204, "{logout:?}");
    let same_cookie = WebClient::with_cookie(group.nodes[0].web.local_addr(), &cookie);
    assert_eq!(same_cookie.get("/api/me").await.status, 401, "revoked on the web server that logged out");
    eventually("web server 2 rejects the revoked session", || async { elsewhere.get("/api/me").await.status == 401 }).await;
    let rejected = elsewhere.post("/api/subjects", json!({"title": "After logout"})).await;
    assert_eq!(rejected.status, 401, "{rejected:?}");
    while let Some(event) = stream.next().await {
        assert_ne!(event.kind, "private", "a revoked stream got a private message");
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lapses_after_web_server_killed() {
    let group = Group::start(1).await;
    let data = group.data(0);
    let address = format!("127.0.0.1:{}", free_port());
    let mut doomed_process = ServerProcess::spawn(
        "webserver",
        &[
            "--listen",
            &address,
            "--data-request",
            data.request_endpoint(),
            "--data-pub",
            data.pub_endpoint(),
            "--name",
            "web-doomed",
        ],
    );
    let doomed = WebClient::new(address.parse().expect("a socket address"));
    eventually("the web server process listens", || async { tokio::net::TcpStream::connect(&address).await.is_ok() }).await;
    eventually("the web server process reaches its data server", || async {
        matches!(doomed.post("/api/users", json!({"name": "ana", "password": "password-of-test"})).await.status, 201 | 409)
    })
    .await;
    doomed.login("ana", "password-of-test").await;
    let _stream = doomed.events().await;
    let observer = group.web(0);
    eventually("ana is online", || async { is_online(&observer, "ana").await }).await;

    doomed_process.child.kill().expect("killing the web server");
    let killed = Instant::now();
    while is_online(&observer, "ana").await {
        assert!(killed.elapsed() < LEASE_DURATION + Duration::from_secs(2), "ana is still online {:?} after the kill", killed.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    println!("ana dropped off the online list {took:?} after her web server was killed");
    assert!(took <= LEASE_DURATION + Duration::from_millis(500), "took {took:?}, more than the lease of {LEASE_DURATION:?}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_refused() {
    let group = Group::start(1).await;
    group.web(0).register("ana", "password-of-ana").await;

    // A session that expires in 2 s, recorded as a web server records one at login.
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let expires_at = forum_protocol::now_millis() + 2000;
    let mut data = common::data_client::DataClient::new(group.data(0).request_endpoint());
    let request = forum_protocol::Request::CreateSession {
        token_hash: forum_webserver::token_hash(token),
        user: "ana".into(),
        expires_at,
    };
    data.expect("recording the session", request).await;

    let browser = WebClient::with_cookie(group.nodes[0].web.local_addr(), &format!("forum_session={token}"));
    let me = browser.get("/api/me").await;
    assert_eq!(me.status, 200, "the session works before it expires");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let me = browser.get("/api/me").await;
    assert_eq!(me.status, 401, "the session still works after it expired");
    let post = browser.post("/api/subjects", json!({ "title": "Too late" })).await;
    assert_eq!(post.status, 401, "a write with the expired session was accepted");
    group.shutdown().await;
}
