//! Replication between data servers over PUB/SUB, checked on real sockets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use forum_protocol::{
    Change, ChangeId, ChangeKind, Reply, Request, User, TOPIC_CHECKPOINT, TOPIC_WEBSERVER,
};
use support::{change_message, start, wait_for_reply, Client, Published, Subscriber, SUBSCRIPTION_SETTLE};
use zeromq::{PubSocket, Socket, SocketSend};

/// How long a subscriber waits for more messages before it decides that none are coming.
const QUIET: Duration = Duration::from_millis(700);

async fn user_names(client: &mut Client) -> Vec<String> {
    match client.request(Request::ListUsers).await {
        Reply::Users(users) => users.into_iter().map(|user| user.name).collect(),
        other => panic!("expected users, got {other:?}"),
    }
}

fn has_user(reply: &Reply, name: &str) -> bool {
    matches!(reply, Reply::Users(users) if users.iter().any(|user| user.name == name))
}

/// Registers probe users on `from` until one shows up on `to`, which proves that `to` is
/// subscribed to `from`. Probes published before that are lost, which is why this loops.
async fn wait_for_link(from: &mut Client, to: &mut Client, label: &str) {
    for attempt in 0..20 {
        let name = format!("probe-{label}-{attempt}");
        assert!(matches!(from.register(&name, "probe-password").await, Reply::User(_)));
        for _ in 0..10 {
            if user_names(to).await.contains(&name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the {label} link never carried a change");
}

/// Counts messages per (topic, change id).
fn count(messages: &[Published]) -> HashMap<(String, ChangeId), usize> {
    let mut counts = HashMap::new();
    for published in messages {
        *counts.entry((published.topic.clone(), published.change.id)).or_default() += 1;
    }
    counts
}

/// Returns the published message of change `id` on `topic`.
fn find<'a>(messages: &'a [Published], topic: &str, id: ChangeId) -> &'a Published {
    messages
        .iter()
        .find(|published| published.topic == topic && published.change.id == id)
        .unwrap_or_else(|| panic!("no {topic} message for {id} in {messages:?}"))
}

#[tokio::test]
async fn two_servers_replicate_and_publish_once() {
    let directories = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server_a = start(1, directories.0.path()).await;
    let server_b = start(2, directories.1.path()).await;
    let mut subscriber_a = Subscriber::connect(&server_a).await;
    let mut subscriber_b = Subscriber::connect(&server_b).await;
    server_a.add_peer(server_b.pub_endpoint().to_owned()).await.unwrap();
    server_b.add_peer(server_a.pub_endpoint().to_owned()).await.unwrap();
    assert!(server_a.add_peer(server_b.pub_endpoint().to_owned()).await.is_err(), "a peer cannot be added twice");

    let mut client_a = Client::connect(&server_a).await;
    let mut client_b = Client::connect(&server_b).await;
    wait_for_link(&mut client_a, &mut client_b, "a-to-b").await;
    wait_for_link(&mut client_b, &mut client_a, "b-to-a").await;
    subscriber_a.collect(QUIET).await;
    subscriber_b.collect(QUIET).await;

    let Reply::User(ana) = client_a.register("ana", "secret12").await else { panic!("ana registers on A") };
    wait_for_reply("ana reaches B", &mut client_b, || Request::ListUsers, |reply| has_user(reply, "ana")).await;
    let create = Request::CreateSubject { title: "Exams".into(), created_by: "ana".into() };
    let Reply::Subject(exams) = client_b.request(create).await else { panic!("subject created on B") };
    let history = || Request::History { subject: exams.id, before: None, limit: None };
    wait_for_reply("the subject reaches A", &mut client_a, history, |reply| matches!(reply, Reply::Messages(_))).await;
    let post_a = Request::PostMessage { subject: exams.id, author: "ana".into(), text: "from A".into() };
    let Reply::Message(message_a) = client_a.request(post_a).await else { panic!("post on A") };
    let post_b = Request::PostMessage { subject: exams.id, author: "ana".into(), text: "from B".into() };
    let Reply::Message(message_b) = client_b.request(post_b).await else { panic!("post on B") };

    let expected_history = Reply::Messages(vec![message_a.clone(), message_b.clone()]);
    wait_for_reply("both posts reach B's history", &mut client_b, history, |reply| *reply == expected_history).await;
    wait_for_reply("both posts reach A's history", &mut client_a, history, |reply| *reply == expected_history).await;
    let login = Request::Login { name: "ana".into(), password: "secret12".into() };
    assert_eq!(client_b.request(login).await, Reply::User(ana.clone()), "the password hash replicates");

    let published_a = subscriber_a.collect_published(QUIET).await;
    let published_b = subscriber_b.collect_published(QUIET).await;
    let counts_a = count(&published_a);
    let counts_b = count(&published_b);
    let changes = [(ana.id, 1), (exams.id, 2), (message_a.id, 1), (message_b.id, 2)];
    for (id, origin) in changes {
        assert_eq!(id.origin, origin);
        let checkpoint = |counts: &HashMap<(String, ChangeId), usize>| counts.get(&(TOPIC_CHECKPOINT.into(), id)).copied().unwrap_or(0);
        let webserver = |counts: &HashMap<(String, ChangeId), usize>| counts.get(&(TOPIC_WEBSERVER.into(), id)).copied().unwrap_or(0);
        assert_eq!(checkpoint(&counts_a), usize::from(origin == 1), "checkpoint messages for {id} on A");
        assert_eq!(checkpoint(&counts_b), usize::from(origin == 2), "checkpoint messages for {id} on B");
        assert_eq!(webserver(&counts_a), 1, "webserver messages for {id} on A");
        assert_eq!(webserver(&counts_b), 1, "webserver messages for {id} on B");
    }
    assert_eq!(published_a.len(), 6, "A published only these changes: {published_a:?}");
    assert_eq!(published_b.len(), 6, "B published only these changes: {published_b:?}");

    for published in published_a.iter().chain(&published_b) {
        if let ChangeKind::UserRegistered { password_hash, .. } = &published.change.kind {
            if published.topic == TOPIC_WEBSERVER {
                assert!(password_hash.is_empty(), "the webserver topic carries no password hash");
            } else {
                assert!(password_hash.starts_with("$argon2id$"), "the checkpoint topic carries the hash");
            }
        }
    }

    // A replicated change is published to web servers with its stored encoding, which is the
    // same bytes as its origin's checkpoint message, under the receiving server's header.
    let checkpoint_on_a = find(&published_a, TOPIC_CHECKPOINT, message_a.id);
    let webserver_on_b = find(&published_b, TOPIC_WEBSERVER, message_a.id);
    assert_eq!(webserver_on_b.change_frame(), checkpoint_on_a.change_frame(), "the change frame of a replicated post on B");
    assert_eq!(webserver_on_b.header.as_ref().map(|header| header.server), Some(2), "B's webserver header names B");
    let webserver_on_a = find(&published_a, TOPIC_WEBSERVER, message_a.id);
    assert_eq!(webserver_on_a.header.as_ref().map(|header| header.server), Some(1), "A's webserver header names A");

    server_a.shutdown().await;
    server_b.shutdown().await;
}

/// The point of the `webserver` layout: a local post's change frame there is the same bytes
/// as its `checkpoint` message, and only a change with a secret gets its own, redacted frame.
#[tokio::test]
async fn webserver_frame_is_checkpoint_frame() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    let mut client = Client::connect(&server).await;
    let mut subscriber = Subscriber::connect(&server).await;
    tokio::time::sleep(SUBSCRIPTION_SETTLE).await;

    let Reply::User(ana) = client.register("ana", "secret12").await else { panic!("ana registers") };
    let create = Request::CreateSubject { title: "Frames".into(), created_by: "ana".into() };
    let Reply::Subject(subject) = client.request(create).await else { panic!("the subject is created") };
    let post = Request::PostMessage { subject: subject.id, author: "ana".into(), text: "shared bytes".into() };
    let Reply::Message(message) = client.request(post).await else { panic!("the post is stored") };
    let published = subscriber.collect_published(QUIET).await;

    let checkpoint = find(&published, TOPIC_CHECKPOINT, message.id);
    let webserver = find(&published, TOPIC_WEBSERVER, message.id);
    assert_eq!(webserver.frames.len(), 3, "topic, header and change");
    assert_eq!(webserver.change_frame(), checkpoint.change_frame(), "the post's change frame on webserver and checkpoint");
    let header = webserver.header.clone().expect("a webserver message has a header");
    assert_eq!(header.server, 1);
    assert!(header.note.is_plain(), "a post written once has no note");

    // The header's position is the post's position in the feed that web servers fetch.
    let Reply::Feed(batch) = client.request(Request::FeedSince { after: 0, limit: 100 }).await else { panic!("a feed batch") };
    let entry = batch.entries.iter().find(|entry| entry.change.id == message.id).expect("the post is in the feed");
    assert_eq!(header.position, entry.position);

    let registration_checkpoint = find(&published, TOPIC_CHECKPOINT, ana.id);
    let registration_webserver = find(&published, TOPIC_WEBSERVER, ana.id);
    assert_ne!(registration_webserver.change_frame(), registration_checkpoint.change_frame(), "a registration is redacted");
    let ChangeKind::UserRegistered { password_hash, .. } = &registration_webserver.change.kind else { panic!("a registration") };
    assert!(password_hash.is_empty(), "the webserver frame carries no password hash");
    server.shutdown().await;
}

fn registration(seq: u64, name: &str) -> Change {
    let id = ChangeId::new(50, seq);
    let user = User { id, name: name.into(), time: 0 };
    Change { id, lamport: seq, time: 0, kind: ChangeKind::UserRegistered { user, password_hash: "$argon2id$fake".into() }, key: None }
}

#[tokio::test]
async fn replayed_checkpoint_is_applied_once() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    let mut client = Client::connect(&server).await;
    let mut subscriber = Subscriber::connect(&server).await;

    let mut fake_peer = PubSocket::new();
    let fake_endpoint = fake_peer.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    server.add_peer(fake_endpoint).await.unwrap();

    // Publish a first change until the server has it, so the subscription is in place.
    let probe = registration(1, "probe");
    for _ in 0..100 {
        fake_peer.send(change_message(TOPIC_CHECKPOINT, &probe)).await.unwrap();
        if user_names(&mut client).await.contains(&"probe".to_owned()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(user_names(&mut client).await, ["probe"]);
    tokio::time::sleep(SUBSCRIPTION_SETTLE).await;
    subscriber.collect(QUIET).await;

    let zoe = registration(2, "zoe");
    fake_peer.send(change_message(TOPIC_CHECKPOINT, &zoe)).await.unwrap();
    fake_peer.send(change_message(TOPIC_CHECKPOINT, &zoe)).await.unwrap();
    fake_peer.send(change_message(TOPIC_WEBSERVER, &registration(3, "ignored"))).await.unwrap();
    wait_for_reply("zoe is applied", &mut client, || Request::ListUsers, |reply| has_user(reply, "zoe")).await;

    let published = subscriber.collect(QUIET).await;
    let topics: Vec<(&str, ChangeId)> = published.iter().map(|(topic, change)| (topic.as_str(), change.id)).collect();
    assert_eq!(topics, [(TOPIC_WEBSERVER, zoe.id)], "a replayed change is published once, on webserver only");
    assert_eq!(user_names(&mut client).await, ["probe", "zoe"], "a change on another topic is not applied");
    server.shutdown().await;

    // After a restart the log contains the replayed change once, and its sequence number is not
    // mistaken for this server's own.
    let server = start(1, directory.path()).await;
    let mut client = Client::connect(&server).await;
    assert_eq!(user_names(&mut client).await, ["probe", "zoe"]);
    let Reply::User(local) = client.register("local", "secret12").await else { panic!("local registers") };
    assert_eq!(local.id.origin, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_unreachable_peer() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    // A port that was free a moment ago, so the peer subscriber keeps retrying its connect.
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    server.add_peer(format!("tcp://127.0.0.1:{unused_port}")).await.unwrap();
    assert!(server.add_peer("udp://127.0.0.1:1".into()).await.is_err(), "an invalid endpoint is rejected");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopped = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown waits for no peer connection");

    // The store was closed, so the same directory opens again.
    let server = start(1, directory.path()).await;
    server.shutdown().await;
}

#[tokio::test]
async fn peer_started_later_is_reached() {
    let directories = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let late_pub_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let late_pub_endpoint = format!("tcp://127.0.0.1:{late_pub_port}");
    let early = start(2, directories.1.path()).await;
    early.add_peer(late_pub_endpoint.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let config = forum_dataserver::Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: late_pub_endpoint.clone(),
        data_dir: directories.0.path().to_owned(),
        peers: vec![early.pub_endpoint().to_owned()],
    };
    let late = forum_dataserver::DataServer::start(config).await.unwrap();
    assert_eq!(late.pub_endpoint(), late_pub_endpoint);

    let mut late_client = Client::connect(&late).await;
    let mut early_client = Client::connect(&early).await;
    wait_for_link(&mut late_client, &mut early_client, "late-to-early").await;
    wait_for_link(&mut early_client, &mut late_client, "early-to-late").await;
    late.shutdown().await;
    early.shutdown().await;
}

/// Sends a post with the idempotency key (client 7, request 1), as a web server sends it again
/// after a failover, and returns the stored message's id.
async fn keyed_post(client: &mut Client, subject: ChangeId) -> ChangeId {
    let request = Request::PostMessage { subject, author: "ana".into(), text: "sent twice".into() };
    let payload = forum_protocol::encode(&forum_protocol::WireRequest { v: forum_protocol::PROTOCOL_VERSION, id: 1, request, client: Some(7), brief: false });
    match client.send_raw(payload).await.reply {
        Reply::Message(message) => message.id,
        other => panic!("expected the stored message, got {other:?}"),
    }
}

async fn feed_notes(client: &mut Client) -> HashMap<ChangeId, forum_protocol::FeedNote> {
    match client.request(Request::FeedSince { after: 0, limit: 500 }).await {
        Reply::Feed(batch) => batch.entries.into_iter().map(|entry| (entry.change.id, entry.note)).collect(),
        other => panic!("expected the feed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_copy_of_write_is_hidden_in_feed() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (server_a, server_b) = (start(1, dir_a.path()).await, start(2, dir_b.path()).await);
    let (mut client_a, mut client_b) = (Client::connect(&server_a).await, Client::connect(&server_b).await);

    // Apart, both servers store the same write: the user, the subject and the keyed post.
    let mut copies = Vec::new();
    for client in [&mut client_a, &mut client_b] {
        assert!(matches!(client.register("ana", "password-of-ana").await, Reply::User(_)));
        let Reply::Subject(subject) = client.request(Request::CreateSubject { title: "Plans".into(), created_by: "ana".into() }).await
        else {
            panic!("a subject")
        };
        copies.push(keyed_post(client, subject.id).await);
    }
    server_a.add_peer(server_b.pub_endpoint().to_owned()).await.unwrap();
    server_b.add_peer(server_a.pub_endpoint().to_owned()).await.unwrap();

    // Both copies have Lamport time 3, so server 1's copy wins everywhere.
    let (winner, loser) = (copies[0], copies[1]);
    for (server, client) in [(1, &mut client_a), (2, &mut client_b)] {
        wait_for_reply("both copies", client, || Request::FeedSince { after: 0, limit: 500 }, |reply| {
            matches!(reply, Reply::Feed(batch) if batch.entries.iter().filter(|entry| entry.change.id == winner || entry.change.id == loser).count() == 2)
        })
        .await;
        let notes = feed_notes(client).await;
        assert!(notes.get(&loser).is_some_and(|note| note.hidden), "the other copy is hidden on server {server}");
        let winner_note = notes.get(&winner).copied().expect("the kept copy is in the feed");
        assert!(!winner_note.hidden, "the kept copy is shown on server {server}");
        // Server 2 applied its own copy first, so a page there may have shown it: the kept
        // copy withdraws it. Server 1 never showed the other copy.
        let replaces = if server == 2 { Some(loser) } else { None };
        assert_eq!(winner_note.replaces, replaces, "server {server}");
    }
    server_a.shutdown().await;
    server_b.shutdown().await;
}
