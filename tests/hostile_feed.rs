//! Malformed messages on the `webserver` topic: a web server whose data server's PUB endpoint
//! sends them drops each one and keeps its change feed running, on the live path and through
//! `FeedSince`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::WebClient;
use forum_dataserver::{Config, DataServer};
use forum_protocol::{encode_change, encode_feed_header, Change, ChangeId, ChangeKind, FeedNote, Message, TOPIC_WEBSERVER};
use forum_webserver::{Config as WebConfig, WebServer};
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

fn message(frames: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(frames).expect("at least one frame")
}

fn post(id: ChangeId, subject: ChangeId, text: &str) -> Change {
    let message = Message { id, subject, author: "ana".into(), text: text.into(), time: 0, lamport: id.seq };
    Change { id, lamport: id.seq, time: 0, kind: ChangeKind::MessagePosted { message }, key: None }
}

/// Messages of the wrong layout or with undecodable frames, all on the `webserver` topic.
fn malformed_messages() -> Vec<ZmqMessage> {
    let topic = Bytes::from_static(TOPIC_WEBSERVER.as_bytes());
    let header = Bytes::from(encode_feed_header(1, 1_000, FeedNote::default()));
    let change = Bytes::from(encode_change(&post(ChangeId::new(1, 1_000), ChangeId::new(1, 1), "never shown")));
    vec![
        message(vec![topic.clone()]),
        message(vec![topic.clone(), change.clone()]),
        message(vec![topic.clone(), header.clone(), change.clone(), change.clone()]),
        message(vec![topic.clone(), Bytes::from_static(b"\xc1 not a header"), change.clone()]),
        message(vec![topic.clone(), change.clone(), change.clone()]),
        message(vec![topic.clone(), header.clone(), Bytes::from_static(b"\x81\xa1v\x01")]),
        message(vec![topic.clone(), header.clone(), Bytes::from(vec![0x91u8; 50_000])]),
        message(vec![topic, Bytes::new(), Bytes::new()]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_feed_messages_dropped() {
    common::init_logging();
    let directory = tempfile::tempdir().unwrap();
    let data = DataServer::start(Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: directory.path().to_owned(),
        peers: Vec::new(),
    })
    .await
    .expect("starting a data server");

    // The web server takes its changes from this PUB socket instead of the data server's.
    let mut hostile_pub = PubSocket::new();
    let hostile_endpoint = hostile_pub.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let web = WebServer::start(WebConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_request_endpoint: data.request_endpoint().to_owned(),
        data_pub_endpoint: hostile_endpoint,
        name: "web".into(),
        request_timeout: Duration::from_secs(5),
    })
    .await
    .expect("starting a web server");

    // Sends every malformed message every 10 ms until `stop` fires, so they reach the web
    // server whenever its SUB socket connects.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        loop {
            for malformed in malformed_messages() {
                hostile_pub.send(malformed).await.expect("publishing a malformed message");
            }
            tokio::select! {
                _ = &mut stopped => return hostile_pub,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });

    let ana = WebClient::new(web.local_addr()).user("ana").await;
    let subject = ana.create_subject("Hostile feed").await;
    let mut events = ana.events().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ana.post_message(&subject, "fetched after malformed messages").await;
    let fetched = events.expect("post", |data| data["text"] == "fetched after malformed messages").await;
    stop.send(()).expect("the sender is running");
    let mut hostile_pub = sender.await.expect("the sender task panicked");

    // The live path still takes a valid message: the change at the next position is shown.
    let head = fetched.id.expect("a post event has an id");
    let (server, position) = head.split_once(':').expect("an event id is server:position");
    assert_eq!(server, "1");
    let next = position.parse::<u64>().unwrap() + 1;
    let subject_id = ChangeId::new(1, 2);
    let live = post(ChangeId::new(1, 900), subject_id, "live after malformed messages");
    let frames = vec![
        Bytes::from_static(TOPIC_WEBSERVER.as_bytes()),
        Bytes::from(encode_feed_header(1, next, FeedNote::default())),
        Bytes::from(encode_change(&live)),
    ];
    hostile_pub.send(message(frames)).await.unwrap();
    let live_event = events.expect("post", |data| data["text"] == "live after malformed messages").await;
    assert_eq!(live_event.id, Some(format!("1:{next}")));

    web.shutdown().await;
    data.shutdown().await;
}
