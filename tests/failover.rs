//! A web server given two data servers moves to the second when the first stops answering,
//! and a write in flight during the move is stored exactly once. The data servers run as
//! separate processes, so the first one can be frozen with SIGSTOP mid-request and resumed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually, free_port, init_logging, texts, ServerProcess, WebClient};
use forum_webserver::{Config as WebConfig, WebServer};
use serde_json::json;

/// The most time the move to the other data server may take.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);

/// A data server process and its endpoints.
struct DataProcess {
    process: ServerProcess,
    request: String,
    publish: String,
}

/// Starts two data server processes, ids 1 and 2, each the peer of the other.
fn start_pair(dir: &Path) -> (DataProcess, DataProcess) {
    let endpoint = || format!("tcp://127.0.0.1:{}", free_port());
    let (request1, publish1, request2, publish2) = (endpoint(), endpoint(), endpoint(), endpoint());
    let spawn = |id: &str, request: &str, publish: &str, peer: &str| {
        let data_dir = dir.join(format!("data-{id}"));
        let data_dir = data_dir.to_str().expect("UTF-8 path");
        ServerProcess::spawn("dataserver", &["--id", id, "--request", request, "--pub", publish, "--data-dir", data_dir, peer])
    };
    let first = spawn("1", &request1, &publish1, &publish2);
    let second = spawn("2", &request2, &publish2, &publish1);
    (
        DataProcess { process: first, request: request1, publish: publish1 },
        DataProcess { process: second, request: request2, publish: publish2 },
    )
}

async fn start_web(name: &str, requests: &[&str], publishes: &[&str]) -> WebServer {
    let config = WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: requests.join(","),
        data_pub_endpoint: publishes.join(","),
        name: name.to_owned(),
        request_timeout: Duration::from_secs(5),
    };
    WebServer::start(config).await.expect("starting a web server")
}

/// Waits until a data server process accepts connections on its request endpoint. A process
/// starting on a machine busy with parallel builds may take longer than [`common::PATIENCE`].
async fn wait_until_listening(endpoint: &str) {
    let address = endpoint.trim_start_matches("tcp://").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&address).await.is_err() {
        assert!(Instant::now() < deadline, "{endpoint} accepts no connections 30 s after its process started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers and logs in once the data servers are up, which takes a moment for processes.
async fn sign_up_when_up(client: &WebClient, name: &str) {
    let body = json!({"name": name, "password": "password-of-test"});
    eventually("the data servers accept a registration", || async {
        matches!(client.post("/api/users", body.clone()).await.status, 201 | 409)
    })
    .await;
    client.login(name, "password-of-test").await;
}

/// Registers probe users through `from` until one shows up at `to`, which shows that `to`'s
/// data server receives `from`'s changes. A SUB socket misses what was published before it
/// connected, and the data servers do not catch up on such losses yet.
async fn wait_until_linked(from: &WebClient, to: &WebClient) {
    for attempt in 0..40 {
        let name = format!("probe{}", rand::random::<u32>());
        let registered = from.post("/api/users", json!({"name": name, "password": "probe-password"})).await;
        if registered.status != 201 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if to.users().await.iter().any(|user| user["name"] == name.as_str()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(attempt < 39, "the data servers never linked up");
    }
}

async fn count_of(client: &WebClient, subject: &str, text: &str) -> usize {
    let response = client.get(&format!("/api/subjects/{subject}/messages")).await;
    texts(&response.body).iter().filter(|stored| *stored == text).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_stores_in_flight_write_once() {
    init_logging();
    let dir = tempfile::tempdir().expect("creating a temporary folder");
    let (first, second) = start_pair(dir.path());
    wait_until_listening(&first.request).await;
    wait_until_listening(&second.request).await;
    let web = start_web("web-both", &[&first.request, &second.request], &[&first.publish, &second.publish]).await;
    // Two witnesses, each bound to one data server, show what that server stores.
    let witness1 = start_web("web-first", &[&first.request], &[&first.publish]).await;
    let witness2 = start_web("web-second", &[&second.request], &[&second.publish]).await;
    let (witness1_client, witness2_client) = (WebClient::new(witness1.local_addr()), WebClient::new(witness2.local_addr()));

    let ana = WebClient::new(web.local_addr());
    sign_up_when_up(&ana, "ana").await;
    wait_until_linked(&witness1_client, &witness2_client).await;
    wait_until_linked(&witness2_client, &witness1_client).await;
    let subject = ana.create_subject("Failover").await;
    let path = format!("/api/subjects/{subject}/messages");
    eventually("data server 2 has the subject", || async {
        witness2_client.get(&path).await.status == 200
    })
    .await;
    // ana registered before the servers were linked; the post after the move needs her on data
    // server 2, which gets her registration through catch-up.
    eventually("data server 2 knows ana", || async {
        witness2_client.users().await.iter().any(|user| user["name"] == "ana")
    })
    .await;
    let mut events = ana.events().await;
    assert_eq!(web.data_server(), Some(1), "the web server starts with the first data server of its list");

    first.process.signal("STOP");
    let started = Instant::now();
    let posted = ana.post(&path, json!({"text": "in flight"})).await;
    let failover_time = started.elapsed();
    assert_eq!(posted.status, 201, "the write in flight succeeds after the move: {posted:?}");
    println!("failover took {failover_time:?} from SIGSTOP of data server 1 to the stored write");
    assert!(failover_time < FAILOVER_BOUND, "the move took {failover_time:?}, more than {FAILOVER_BOUND:?}");
    events.expect("resync", |_| true).await;
    assert_eq!(web.data_server(), Some(2), "the web server moved to data server 2");

    first.process.signal("CONT");
    eventually("data server 1 has the message again after it resumed", || async {
        count_of(&witness1_client, &subject, "in flight").await >= 1
    })
    .await;
    // Data server 1 may now store its own copy of the frozen request; the group keeps one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, witness) in [("data server 1", &witness1_client), ("data server 2", &witness2_client)] {
        let copies = count_of(witness, &subject, "in flight").await;
        assert_eq!(copies, 1, "{name} stores the write once");
    }

    let after = ana.post(&path, json!({"text": "after the return"})).await;
    assert_eq!(after.status, 201, "the web server keeps working after data server 1 is back: {after:?}");
    eventually("data server 1 gets writes again", || async {
        count_of(&witness1_client, &subject, "after the return").await == 1
    })
    .await;

    web.shutdown().await;
    witness1.shutdown().await;
    witness2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_kill_within_bound() {
    init_logging();
    let dir = tempfile::tempdir().expect("creating a temporary folder");
    let (first, second) = start_pair(dir.path());
    wait_until_listening(&first.request).await;
    wait_until_listening(&second.request).await;
    let web = start_web("web-both", &[&first.request, &second.request], &[&first.publish, &second.publish]).await;
    let witness1 = start_web("web-first", &[&first.request], &[&first.publish]).await;
    let witness2 = start_web("web-second", &[&second.request], &[&second.publish]).await;
    let witnesses = [WebClient::new(witness1.local_addr()), WebClient::new(witness2.local_addr())];
    let ana = WebClient::new(web.local_addr());
    sign_up_when_up(&ana, "ana").await;
    wait_until_linked(&ana, &witnesses[0]).await;
    wait_until_linked(&ana, &witnesses[1]).await;
    // ana's registration may have been published before the other data server subscribed, and
    // then it arrives by catch-up, later than the probes. The survivor must know ana.
    for (index, witness) in witnesses.iter().enumerate() {
        let server = index + 1;
        eventually(&format!("data server {server} knows ana"), || async {
            witness.users().await.iter().any(|user| user["name"] == "ana")
        })
        .await;
    }
    // On a busy machine a first ping can time out, and then the web server starts with the
    // second data server, or moves between the sign-up and this request. Both are allowed
    // here: the test kills whichever data server the web server uses.
    let created = std::sync::Mutex::new(None::<String>);
    eventually("ana's subject is created", || async {
        let response = ana.post("/api/subjects", json!({"title": "Killed"})).await;
        if response.status == 201 {
            *created.lock().unwrap() = Some(response.body["id"].as_str().expect("subject id").to_owned());
        }
        response.status == 201
    })
    .await;
    let subject = created.into_inner().unwrap().expect("the subject id was kept");
    let path = format!("/api/subjects/{subject}/messages");
    for (index, witness) in witnesses.iter().enumerate() {
        let server = index + 1;
        eventually(&format!("data server {server} has the subject"), || async { witness.get(&path).await.status == 200 }).await;
    }
    let used = web.data_server().expect("the web server uses a data server");
    let mut processes = [first, second];
    let killed = &mut processes[(used as usize) - 1];

    killed.process.child.kill().expect("killing the data server in use");
    let started = Instant::now();
    let posted = ana.post(&path, json!({"text": "after the kill"})).await;
    let failover_time = started.elapsed();
    assert_eq!(posted.status, 201, "{posted:?}");
    println!("failover took {failover_time:?} from SIGKILL of data server {used} to the stored write");
    assert!(failover_time < FAILOVER_BOUND, "the move took {failover_time:?}, more than {FAILOVER_BOUND:?}");
    assert_eq!(count_of(&ana, &subject, "after the kill").await, 1);
    assert_ne!(web.data_server(), Some(used), "the web server moved off the killed data server");
    web.shutdown().await;
    witness1.shutdown().await;
    witness2.shutdown().await;
}
