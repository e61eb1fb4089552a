//! Writes that share an idempotency key: copies in one pipeline to one data server, and
//! copies sent to two data servers at once, as a web server retrying after a failover does.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cluster::Cluster;
use forum_protocol::{decode, encode, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Sends every request with the same web server id `client`, and returns the replies in order.
async fn send_keyed(endpoint: &str, client: u64, requests: Vec<(u64, Request)>) -> Vec<Reply> {
    let mut socket = DealerSocket::new();
    socket.connect(endpoint).await.expect("connecting to the data server");
    let count = requests.len();
    for (id, request) in requests {
        let envelope = WireRequest { v: PROTOCOL_VERSION, id, request, client: Some(client), brief: false };
        socket.send(ZmqMessage::from(Bytes::from(encode(&envelope)))).await.expect("sending a request");
    }
    let mut replies = Vec::new();
    while replies.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await.expect("a reply in time").expect("receiving");
        let reply: WireReply = decode(&message.into_vec().pop().expect("a payload")).expect("decoding a reply");
        replies.push(reply.reply);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_posts_stored_once() {
    let cluster = Cluster::start(2).await;
    let mut setup = cluster.client(0);
    setup.expect("registering", Request::Register { name: "ana".into(), password: "secret-password".into() }).await;
    let Reply::Subject(subject) = setup.expect("creating", Request::CreateSubject { title: "Exams".into(), created_by: "ana".into() }).await else {
        panic!("expected a subject")
    };
    cluster.wait_until_equal(&[0, 1], Duration::from_secs(10)).await;

    let client = 77;
    let keys: Vec<u64> = (1000..1040).collect();
    let post = |key: u64| (key, Request::PostMessage { subject: subject.id, author: "ana".into(), text: format!("post {key}") });
    // Each key three times in one pipeline to server 1, and once to server 2 at the same time.
    let to_first: Vec<_> = keys.iter().flat_map(|&key| [post(key), post(key), post(key)]).collect();
    let to_second: Vec<_> = keys.iter().map(|&key| post(key)).collect();
    let (first_endpoint, second_endpoint) = (cluster.request_endpoint(0), cluster.request_endpoint(1));
    let (first, second) =
        tokio::join!(send_keyed(&first_endpoint, client, to_first), send_keyed(&second_endpoint, client, to_second));
    for reply in first.iter().chain(&second) {
        assert!(matches!(reply, Reply::Message(_)), "every copy is answered with a message: {reply:?}");
    }

    let snapshot = cluster.wait_until_equal(&[0, 1], Duration::from_secs(20)).await;
    assert_eq!(snapshot.message_ids().len(), keys.len(), "one message per key");
    assert!(cluster.is_running(0), "server 1 stopped:\n{}", cluster.logs());
    assert!(cluster.is_running(1), "server 2 stopped:\n{}", cluster.logs());
}
