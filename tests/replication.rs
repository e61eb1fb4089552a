//! Replication scenarios on real `dataserver` processes: crashes, late joiners, partitions,
//! replays and conflicts, each ending with every server holding the same forum.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::data_client::DataClient;
use forum_protocol::{ChangeId, ChangeKind, ErrorCode, Liveness, Reply, Request};

/// How long a healed or restarted group may take to converge in these scenarios.
const CONVERGENCE: Duration = Duration::from_secs(20);

/// Registers `name` through `client` and asserts it worked.
async fn register(client: &mut DataClient, name: &str, password: &str) {
    let reply = client.expect("registering", Request::Register { name: name.into(), password: password.into() }).await;
    assert!(matches!(reply, Reply::User(_)), "registering {name}: {reply:?}");
}

/// Creates a subject through `client` and returns its id.
async fn create_subject(client: &mut DataClient, title: &str, author: &str) -> ChangeId {
    match client.expect("creating a subject", Request::CreateSubject { title: title.into(), created_by: author.into() }).await {
        Reply::Subject(subject) => subject.id,
        other => panic!("creating {title:?}: {other:?}"),
    }
}

/// Posts `count` messages in one pipeline and returns the ids of those acknowledged.
async fn post_many(client: &mut DataClient, subject: ChangeId, author: &str, label: &str, count: usize) -> Vec<ChangeId> {
    let requests = (0..count)
        .map(|number| Request::PostMessage { subject, author: author.into(), text: format!("{label} {number}") })
        .collect();
    let Some(replies) = client.pipeline(requests).await else { return Vec::new() };
    replies
        .into_iter()
        .filter_map(|reply| match reply {
            Reply::Message(message) => Some(message.id),
            _ => None,
        })
        .collect()
}

/// Starts a group of `size`, registers ana and creates one subject, and waits until every
/// server has both.
async fn seeded_cluster(size: usize) -> (Cluster, ChangeId) {
    let cluster = Cluster::start(size).await;
    let mut client = cluster.client(0);
    register(&mut client, "ana", "password-of-ana").await;
    let subject = create_subject(&mut client, "Replication", "ana").await;
    cluster.wait_until_equal(&cluster.indices(), CONVERGENCE).await;
    (cluster, subject)
}

/// Asserts that `snapshot` contains every id in `acknowledged`.
fn assert_holds_all(snapshot: &common::cluster::Snapshot, acknowledged: &[ChangeId]) {
    let held: std::collections::HashSet<ChangeId> = snapshot.message_ids().into_iter().collect();
    let missing: Vec<&ChangeId> = acknowledged.iter().filter(|id| !held.contains(id)).collect();
    assert!(missing.is_empty(), "{} acknowledged posts are missing, such as {:?}", missing.len(), missing.first());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_server_recovers_every_post() {
    let (mut cluster, subject) = seeded_cluster(3).await;
    let mut acknowledged = Vec::new();
    let mut clients: Vec<DataClient> = cluster.indices().into_iter().map(|index| cluster.client(index)).collect();

    for round in 0..3 {
        for (index, client) in clients.iter_mut().enumerate() {
            acknowledged.extend(post_many(client, subject, "ana", &format!("before crash {round} via {index}"), 20).await);
        }
    }
    cluster.kill(1);
    cluster.wait_until_peer_is(0, 1, Liveness::Down).await;
    for round in 0..3 {
        for index in [0, 2] {
            let label = format!("while down {round} via {index}");
            acknowledged.extend(post_many(&mut clients[index], subject, "ana", &label, 20).await);
        }
    }
    assert_eq!(acknowledged.len(), 9 * 20 + 6 * 20, "every post to a live server is acknowledged");

    cluster.restart(1).await;
    let restarted = Instant::now();
    let snapshot = cluster.wait_until_equal(&cluster.indices(), Duration::from_secs(5)).await;
    println!("converged {:?} after the restart", restarted.elapsed());
    assert_holds_all(&snapshot, &acknowledged);
    assert_eq!(snapshot.histories[&subject].len(), acknowledged.len(), "no post is stored twice");

    cluster.wait_until_peer_is(0, 1, Liveness::Up).await;
    let transitions = liveness_log(&cluster.log(0), &cluster.link_endpoint(0, 1));
    assert!(transitions.windows(2).all(|pair| pair[0] != pair[1]), "a state is logged twice in a row: {transitions:?}");
    let down = transitions.iter().position(|state| *state == "peer is down").expect("the crash is logged");
    assert!(transitions[down..].contains(&"peer is back"), "the return is logged: {transitions:?}");
}

/// Returns the liveness messages that a server's log has about one peer, in order.
fn liveness_log(log: &str, peer: &str) -> Vec<&'static str> {
    let messages = ["peer is up", "peer is suspected", "peer is down", "peer is back"];
    log.lines()
        .filter(|line| line.contains(peer))
        .filter_map(|line| messages.into_iter().find(|message| line.contains(message)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_server_receives_whole_history() {
    let (mut cluster, subject) = seeded_cluster(3).await;
    let mut acknowledged = Vec::new();
    for index in 0..3 {
        let mut client = cluster.client(index);
        for batch in 0..4 {
            let label = format!("batch {batch} via {index}");
            let count = if index == 0 { 84 } else { 83 };
            acknowledged.extend(post_many(&mut client, subject, "ana", &label, count).await);
        }
    }
    assert_eq!(acknowledged.len(), 1000);

    let fourth = cluster.add_server().await;
    let snapshot = cluster.wait_until_equal(&cluster.indices(), CONVERGENCE).await;
    assert_holds_all(&snapshot, &acknowledged);
    let status = cluster.status(fourth).await;
    assert!(status.counters.fetched_changes >= 1000, "the fourth server fetched the history: {:?}", status.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_into_same_history() {
    let (cluster, subject) = seeded_cluster(3).await;
    cluster.cut_off(2);
    cluster.wait_until_peer_is(0, 2, Liveness::Down).await;
    cluster.wait_until_peer_is(2, 0, Liveness::Down).await;

    let mut acknowledged = Vec::new();
    for index in [0, 1, 2, 0, 2] {
        let mut client = cluster.client(index);
        acknowledged.extend(post_many(&mut client, subject, "ana", &format!("cut off, via {index}"), 30).await);
    }
    assert_eq!(acknowledged.len(), 150);

    cluster.heal_all();
    let snapshot = cluster.wait_until_equal(&cluster.indices(), CONVERGENCE).await;
    assert_holds_all(&snapshot, &acknowledged);
    cluster.wait_until_peers_are(Liveness::Up, &cluster.indices()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_and_title_conflicts_resolve_everywhere() {
    let (cluster, _) = seeded_cluster(3).await;
    cluster.cut_off(2);
    cluster.wait_until_peer_is(0, 2, Liveness::Down).await;

    let (mut left, mut right) = (cluster.client(0), cluster.client(2));
    register(&mut left, "zoe", "password-left").await;
    register(&mut right, "ZOE", "password-right").await;
    let left_subject = create_subject(&mut left, "Exams", "ana").await;
    let right_subject = create_subject(&mut right, "exams", "ana").await;
    let left_posts = post_many(&mut left, left_subject, "ana", "left", 3).await;
    let right_posts = post_many(&mut right, right_subject, "ana", "right", 3).await;

    cluster.heal_all();
    let snapshot = cluster.wait_until_equal(&cluster.indices(), CONVERGENCE).await;

    let exams: Vec<&(ChangeId, String)> =
        snapshot.subjects.iter().filter(|(_, title)| title.eq_ignore_ascii_case("exams")).collect();
    assert_eq!(exams.len(), 1, "one subject keeps the title: {:?}", snapshot.subjects);
    let winner = exams[0].0;
    assert!(winner == left_subject || winner == right_subject);
    assert_eq!(snapshot.histories[&winner].len(), 6, "the merged history has both sides' posts");
    assert_holds_all(&snapshot, &[left_posts, right_posts].concat());

    let mut outcomes = Vec::new();
    for index in cluster.indices() {
        let mut client = cluster.client(index);
        let loser = if winner == left_subject { right_subject } else { left_subject };
        let Reply::Messages(merged) = client.expect("reading the loser's history", Request::History { subject: loser, before: None, limit: None }).await else {
            panic!("the losing subject's id resolves")
        };
        assert_eq!(merged.iter().map(|message| message.id).collect::<Vec<_>>(), snapshot.histories[&winner]);

        let mut codes = Vec::new();
        for password in ["password-left", "password-right"] {
            let reply = client.expect("logging in", Request::Login { name: "zoe".into(), password: password.into() }).await;
            codes.push(match reply {
                Reply::User(_) => None,
                Reply::Error(error) => Some(error.code),
                other => panic!("unexpected login reply {other:?}"),
            });
        }
        outcomes.push(codes);
    }
    assert!(outcomes.iter().all(|codes| *codes == outcomes[0]), "every server picks the same winner: {outcomes:?}");
    let mut codes = outcomes[0].clone();
    codes.sort_by_key(|code| code.is_some());
    assert_eq!(codes, [None, Some(ErrorCode::NameConflict)], "one account logs in and the other learns of the conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_peers_and_vectors() {
    let (cluster, subject) = seeded_cluster(3).await;
    let mut client = cluster.client(0);
    post_many(&mut client, subject, "ana", "counted", 5).await;
    let snapshot = cluster.wait_until_equal(&cluster.indices(), CONVERGENCE).await;

    let status = cluster.status(0).await;
    assert_eq!(status.server, 1);
    assert_eq!(status.vector, snapshot.vector);
    assert_eq!(status.peers.len(), 2);
    assert!(status.peers.iter().all(|peer| peer.liveness == Liveness::Up), "{:?}", status.peers);
    assert!(status.counters.local_changes >= 7, "{:?}", status.counters);
    assert!(status.counters.heartbeats_received > 0, "{:?}", status.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_change_is_stored_once() {
    use forum_dataserver::{Config, DataServer};
    use forum_protocol::TOPIC_CHECKPOINT;
    use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket};

    let directory = tempfile::tempdir().unwrap();
    let config = |id: u32, peers: Vec<String>| Config {
        id,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: directory.path().join(format!("data-{id}")),
        peers,
    };
    // Capture a real checkpoint message from an origin server.
    let origin = DataServer::start(config(1, Vec::new())).await.unwrap();
    let mut tap = SubSocket::new();
    tap.connect(origin.pub_endpoint()).await.unwrap();
    tap.subscribe(TOPIC_CHECKPOINT).await.unwrap();
    let mut origin_client = DataClient::new(origin.request_endpoint());
    let captured = loop {
        register(&mut origin_client, &format!("user{}", rand::random::<u32>()), "password-of-test").await;
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(500), tap.recv()).await {
            if message.get(0).is_some_and(|topic| topic.as_ref() == TOPIC_CHECKPOINT.as_bytes()) {
                break message;
            }
        }
    };
    let payload: forum_protocol::WireChange = forum_protocol::decode(captured.get(1).unwrap()).unwrap();
    let ChangeKind::UserRegistered { user, .. } = payload.change.kind.clone() else { panic!("a registration was captured") };

    // A replica subscribed to a replaying peer receives that message again and again.
    let mut replayer = PubSocket::new();
    let replayer_endpoint = replayer.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let replica = DataServer::start(config(2, vec![replayer_endpoint])).await.unwrap();
    let mut replica_client = DataClient::new(replica.request_endpoint());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut duplicates = 0;
    while duplicates < 3 {
        replayer.send(captured.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Reply::Status(status) = replica_client.expect("reading the status", Request::Status).await else { panic!("a status") };
        duplicates = status.counters.duplicate_changes;
        assert!(Instant::now() < deadline, "the replica did not receive the replays: {:?}", status.counters);
    }

    let Reply::Users(users) = replica_client.expect("listing users", Request::ListUsers).await else { panic!("users") };
    let names: Vec<&str> = users.iter().map(|status| status.name.as_str()).collect();
    assert_eq!(names, [user.name.as_str()], "the replayed registration is stored once");
    let Reply::Status(status) = replica_client.expect("reading the status", Request::Status).await else { panic!("a status") };
    assert_eq!(status.counters.replicated_changes, 1);
    replica.shutdown().await;
    origin.shutdown().await;
}

/// One step of a random scenario on three servers.
#[derive(Clone, Debug)]
enum Step {
    Post { server: usize, count: usize },
    /// Kill -9 the server and start it again on the same data folder.
    Crash { server: usize },
    CutOff { server: usize },
    HealAll,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..3usize, 1..15usize).prop_map(|(server, count)| Step::Post { server, count }),
        1 => (0..3usize).prop_map(|server| Step::Crash { server }),
        1 => (0..3usize).prop_map(|server| Step::CutOff { server }),
        1 => Just(Step::HealAll),
    ]
}

/// Runs the steps on a fresh group of three and checks that it converges with every
/// acknowledged post.
async fn run_scenario(steps: Vec<Step>) {
    let (mut cluster, subject) = seeded_cluster(3).await;
    let mut acknowledged = Vec::new();
    for (number, step) in steps.iter().enumerate() {
        match *step {
            Step::Post { server, count } => {
                let mut client = cluster.client(server);
                acknowledged.extend(post_many(&mut client, subject, "ana", &format!("step {number}"), count).await);
            }
            Step::Crash { server } => {
                cluster.kill(server);
                cluster.restart(server).await;
            }
            Step::CutOff { server } => cluster.cut_off(server),
            Step::HealAll => cluster.heal_all(),
        }
    }
    cluster.heal_all();
    let snapshot = cluster.wait_until_equal(&cluster.indices(), CONVERGENCE).await;
    assert_holds_all(&snapshot, &acknowledged);
    assert_eq!(snapshot.histories[&subject].len(), acknowledged.len(), "no post is stored twice");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 8, max_shrink_iters: 8, ..Default::default() })]

    #[test]
    fn random_faults_end_in_same_state(steps in proptest::collection::vec(step(), 1..8)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run_scenario(steps));
    }
}

/// Measures catch-up: a server that joins late fetches 100,000 changes, and the test prints
/// the time. Measure release servers with `FORUM_DATASERVER_BINARY=target/release/dataserver
/// cargo test --test replication catch_up_of_100k -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that takes a minute in debug builds"]
async fn catch_up_of_100k_changes() {
    let mut cluster = Cluster::start(1).await;
    let mut client = cluster.client(0);
    register(&mut client, "ana", "password-of-ana").await;
    let subject = create_subject(&mut client, "Bulk", "ana").await;
    for batch in 0..200 {
        let acknowledged = post_many(&mut client, subject, "ana", &format!("bulk {batch}"), 500).await;
        assert_eq!(acknowledged.len(), 500, "batch {batch} was acknowledged");
    }
    let origin_vector = cluster.status(0).await.vector;
    assert_eq!(origin_vector.get(&1), Some(&100_002));

    let started = Instant::now();
    let late = cluster.add_server().await;
    loop {
        if cluster.status(late).await.vector == origin_vector {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "catch-up did not finish within 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let caught_up = cluster.log(late).lines().find(|line| line.contains("caught up from peer")).unwrap_or_default().to_owned();
    println!("100,002 changes caught up {elapsed:?} after the process started\n{caught_up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_changes_go_to_webserver_only() {
    use forum_dataserver::{Config, DataServer};
    use forum_protocol::{TOPIC_CHECKPOINT, TOPIC_HEARTBEAT, TOPIC_WEBSERVER};
    use zeromq::{Socket, SocketRecv, SubSocket};

    let directory = tempfile::tempdir().unwrap();
    let config = |id: u32| Config {
        id,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: directory.path().join(format!("data-{id}")),
        peers: Vec::new(),
    };
    let origin = DataServer::start(config(1)).await.unwrap();
    let mut origin_client = DataClient::new(origin.request_endpoint());
    register(&mut origin_client, "ana", "password-of-ana").await;
    let subject = create_subject(&mut origin_client, "Fetched", "ana").await;
    assert_eq!(post_many(&mut origin_client, subject, "ana", "old", 50).await.len(), 50);

    // Listen to the late server until its own heartbeat arrives, so the subscription is in
    // place before it learns of its peer.
    let late = DataServer::start(config(2)).await.unwrap();
    let mut listener = SubSocket::new();
    listener.connect(late.pub_endpoint()).await.unwrap();
    listener.subscribe("").await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await.expect("a heartbeat").unwrap();
        if message.get(0).is_some_and(|topic| topic.as_ref() == TOPIC_HEARTBEAT.as_bytes()) {
            break;
        }
    }

    late.add_peer(origin.pub_endpoint().to_owned()).await.unwrap();
    let mut topics: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    while topics.get(TOPIC_WEBSERVER).copied().unwrap_or(0) < 52 {
        let message = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .unwrap_or_else(|_| panic!("the fetched changes were not all published; seen so far: {topics:?}"))
            .unwrap();
        let topic = String::from_utf8_lossy(message.get(0).unwrap()).into_owned();
        *topics.entry(topic).or_default() += 1;
    }
    assert_eq!(topics.get(TOPIC_CHECKPOINT), None, "a fetched change was published on checkpoint: {topics:?}");
    let mut late_client = DataClient::new(late.request_endpoint());
    let Reply::Status(status) = late_client.expect("reading the status", Request::Status).await else { panic!("a status") };
    assert_eq!(status.counters.fetched_changes, 52, "{:?}", status.counters);
    late.shutdown().await;
    origin.shutdown().await;
}
