//! Well-behaved zeromq clients talk to zeromq servers through a guard.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{endpoint_of, socket_addr, test_limits, Harness, REPLY_DEADLINE};
use tokio::io::AsyncWriteExt;
use zeromq::{
    DealerSocket, PubSocket, RouterSocket, Socket, SocketOptions, SocketRecv,
    SocketSend, SubSocket, ZmqMessage,
};
use zmtp_guard::{Guard, Limits, RoutingId};

#[tokio::test]
async fn req_round_trip() {
    let harness = Harness::start(test_limits()).await;
    for _ in 0..3 {
        harness.assert_serves().await;
    }
    assert_eq!(harness.guard.rejected_connections(), 0);
    harness.stop().await;
}

#[tokio::test]
async fn dealer_multipart_round_trip() {
    let harness = Harness::start(test_limits()).await;
    let mut dealer = DealerSocket::new();
    dealer
        .connect(&harness.endpoint())
        .await
        .expect("connect the DEALER socket");

    // Frames up to the 1 MiB message limit pass, including long and empty ones.
    let frames: Vec<Vec<u8>> = vec![
        b"header".to_vec(),
        Vec::new(),
        vec![7u8; 300],
        vec![9u8; 512 * 1024],
    ];
    let mut request = ZmqMessage::from(frames[0].clone());
    for frame in &frames[1..] {
        request.push_back(frame.clone().into());
    }
    dealer.send(request).await.expect("send the request");

    let reply = tokio::time::timeout(REPLY_DEADLINE, dealer.recv())
        .await
        .expect("reply within 1 s")
        .expect("receive the reply");
    let received: Vec<Vec<u8>> = reply
        .into_vec()
        .into_iter()
        .map(|frame| frame.to_vec())
        .collect();
    assert_eq!(received, frames);
    assert_eq!(harness.guard.active_connections(), 1);
    assert_eq!(harness.guard.rejected_connections(), 0);

    drop(dealer);
    harness.wait_for_active(0).await;
    harness.stop().await;
}

#[tokio::test]
async fn pub_sub_through_guard() {
    let mut publisher = PubSocket::new();
    let bound = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .expect("bind the PUB socket");
    let public = SocketAddr::from(([127, 0, 0, 1], 0));
    let guard = Guard::start(public, socket_addr(&bound), Limits::default())
        .await
        .expect("start the guard");

    let mut subscriber = SubSocket::new();
    subscriber
        .connect(&endpoint_of(guard.local_addr()))
        .await
        .expect("connect the SUB socket");
    subscriber.subscribe("forum.").await.expect("subscribe");

    // The subscription reaches the publisher some time after connect, so
    // publish until the first message arrives.
    let received = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            publisher
                .send("other.ignored".into())
                .await
                .expect("publish");
            publisher.send("forum.post".into()).await.expect("publish");
            let wait = tokio::time::timeout(Duration::from_millis(50), subscriber.recv());
            if let Ok(message) = wait.await {
                return message.expect("receive a publication");
            }
        }
    })
    .await
    .expect("publication through the guard within 5 s");

    assert_eq!(
        received.get(0).map(|frame| frame.as_ref()),
        Some(&b"forum.post"[..])
    );
    assert_eq!(guard.rejected_connections(), 0);
    guard.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_relays() {
    let harness = Harness::start(test_limits()).await;
    let mut dealer = DealerSocket::new();
    dealer
        .connect(&harness.endpoint())
        .await
        .expect("connect the DEALER socket");
    dealer.send("hello".into()).await.expect("send");
    tokio::time::timeout(REPLY_DEADLINE, dealer.recv())
        .await
        .expect("reply")
        .expect("receive");
    let address = harness.address();

    tokio::time::timeout(Duration::from_secs(1), harness.stop())
        .await
        .expect("shutdown within 1 s");

    let connect_after_shutdown = tokio::net::TcpStream::connect(address).await;
    assert!(
        connect_after_shutdown.is_err(),
        "the public port still accepts after shutdown"
    );
}

#[tokio::test]
async fn unreachable_internal_closes_client() {
    // Bind and release a port so that nothing listens on it.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port");
    let internal = unused.local_addr().expect("local address");
    drop(unused);

    let public = SocketAddr::from(([127, 0, 0, 1], 0));
    let guard = Guard::start(public, internal, test_limits())
        .await
        .expect("start the guard");
    let mut client = tokio::net::TcpStream::connect(guard.local_addr())
        .await
        .expect("connect to the guard");
    let started = std::time::Instant::now();
    common::attacks::wait_for_close(&mut client, started, Duration::from_secs(1)).await;

    assert_eq!(guard.rejected_connections(), 0);
    guard.shutdown().await;
}

#[tokio::test]
async fn excessive_max_connections_rejected() {
    let limits = Limits {
        max_connections: usize::MAX,
        ..Limits::default()
    };
    let public = SocketAddr::from(([127, 0, 0, 1], 0));
    let result = Guard::start(public, public, limits).await;
    let error = result.expect_err("start accepted usize::MAX connections");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

/// Receives one message on `router` and returns its routing id as text and its body.
async fn receive_routed(router: &mut RouterSocket) -> (String, Vec<u8>) {
    let message = tokio::time::timeout(REPLY_DEADLINE, router.recv())
        .await
        .expect("a message within 1 s")
        .expect("receive a message");
    let frames = message.into_vec();
    assert_eq!(frames.len(), 2, "expected [routing id, body], got {frames:?}");
    let routing_id = String::from_utf8(frames[0].to_vec()).expect("a routing id in UTF-8");
    (routing_id, frames[1].to_vec())
}

#[tokio::test]
async fn router_sees_client_address() {
    let mut router = RouterSocket::new();
    let bound = router
        .bind("tcp://127.0.0.1:0")
        .await
        .expect("bind the ROUTER socket");
    let public = SocketAddr::from(([127, 0, 0, 1], 0));
    let guard = Guard::start_with_routing_id(
        public,
        socket_addr(&bound),
        test_limits(),
        RoutingId::ClientAddress,
    )
    .await
    .expect("start the guard");

    // A raw client, whose local port the test reads, sets an Identity of its own.
    let mut raw = tokio::net::TcpStream::connect(guard.local_addr())
        .await
        .expect("connect a raw client");
    let mut ready = common::ready_dealer();
    let identity_property = b"\x08Identity\x00\x00\x00\x07spoofed";
    ready[1] += identity_property.len() as u8;
    ready.extend_from_slice(identity_property);
    let message = [&[0x00, 0x05][..], b"hello"].concat();
    // The stream arrives in three writes, the READY split in the middle.
    let stream = [common::greeting(), ready, message].concat();
    for part in [&stream[..70], &stream[70..90], &stream[90..]] {
        raw.write_all(part).await.expect("send to the guard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raw_address = raw.local_addr().expect("local address").to_string();
    assert_eq!(
        receive_routed(&mut router).await,
        (raw_address, b"hello".to_vec())
    );

    // Two zeromq DEALERs that set the same Identity still get distinct routing
    // ids, so each receives its own reply.
    let mut dealers = Vec::new();
    for _ in 0..2 {
        let mut options = SocketOptions::default();
        // zeromq 0.7 does not export its identity type, so `parse` infers it.
        options.peer_identity("same-id".parse().expect("a valid identity"));
        let mut dealer = DealerSocket::with_options(options);
        dealer
            .connect(&endpoint_of(guard.local_addr()))
            .await
            .expect("connect a DEALER socket");
        dealers.push(dealer);
    }
    let mut routing_ids = Vec::new();
    for (index, dealer) in dealers.iter_mut().enumerate() {
        let body = format!("dealer {index}");
        dealer.send(body.clone().into()).await.expect("send a request");
        let (routing_id, received) = receive_routed(&mut router).await;
        assert_eq!(received, body.as_bytes());
        assert!(routing_id.starts_with("127.0.0.1:"), "routing id {routing_id:?}");
        routing_ids.push(routing_id.clone());

        let mut reply = ZmqMessage::from(routing_id);
        reply.push_back(format!("reply to {index}").into_bytes().into());
        router.send(reply).await.expect("send a reply");
    }
    assert_ne!(routing_ids[0], routing_ids[1]);
    for (index, dealer) in dealers.iter_mut().enumerate() {
        let reply = tokio::time::timeout(REPLY_DEADLINE, dealer.recv())
            .await
            .expect("a reply within 1 s")
            .expect("receive a reply");
        assert_eq!(reply.into_vec()[0].as_ref(), format!("reply to {index}").as_bytes());
    }

    assert_eq!(guard.rejected_connections(), 0);
    guard.shutdown().await;
}
