//! The publisher's admission of subscribers: subscriber tokens with a key, a first
//! subscription without one, and the separate cap on connections not yet admitted. Clients
//! are our `Subscriber` and raw TCP connections on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zmtp_guard::{ClientError, Limits, Publisher, Subscriber, SubscriberKey, SubscriberPolicy, TOKEN_PREFIX};

const DEADLINE: Duration = Duration::from_secs(5);
const TOKEN_TIMEOUT: Duration = Duration::from_millis(400);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_millis(600);
const MAX_PENDING: usize = 8;

fn key(byte: u8) -> SubscriberKey {
    SubscriberKey::new(&[byte; 32])
}

fn policy(key: Option<SubscriberKey>) -> SubscriberPolicy {
    SubscriberPolicy { key, token_timeout: TOKEN_TIMEOUT, subscribe_timeout: SUBSCRIBE_TIMEOUT, max_pending: MAX_PENDING }
}

async fn start(max_connections: usize, key: Option<SubscriberKey>) -> Publisher {
    let limits = Limits { max_connections, ..Limits::for_pub_socket() };
    Publisher::start_with_policy("127.0.0.1:0".parse().unwrap(), limits, policy(key)).await.expect("bind the publisher")
}

fn endpoint(address: SocketAddr) -> String {
    format!("tcp://{address}")
}

fn news() -> Vec<Bytes> {
    vec![Bytes::from_static(b"news"), Bytes::from_static(b"published-payload")]
}

/// Publishes until `count` subscribers get a message, and panics after [`DEADLINE`].
async fn publish_until_received(publisher: &Publisher, count: usize) {
    let start = Instant::now();
    while publisher.publish(&news()) < count {
        assert!(start.elapsed() < DEADLINE, "{count} subscribers were never admitted; {} are", publisher.subscribers());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Returns the greeting and READY of a SUB client.
fn sub_handshake() -> Vec<u8> {
    let mut bytes = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    bytes.extend_from_slice(b"NULL");
    bytes.resize(64, 0);
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(b"SUB");
    bytes.extend_from_slice(&[0x04, body.len() as u8]);
    bytes.extend_from_slice(&body);
    bytes
}

/// Returns a ZMTP 3.0 subscription message for `prefix` (at most 254 bytes).
fn subscription(prefix: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x00, prefix.len() as u8 + 1, 0x01];
    bytes.extend_from_slice(prefix);
    bytes
}

/// Connects a raw SUB that sends `subscriptions` after its handshake.
async fn raw_subscriber(address: SocketAddr, subscriptions: &[&[u8]]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut bytes = sub_handshake();
    for prefix in subscriptions {
        bytes.extend_from_slice(&subscription(prefix));
    }
    stream.write_all(&bytes).await.unwrap();
    stream
}

/// Reads until the publisher closes the connection, publishing meanwhile, and returns what
/// arrived and when the connection closed.
async fn read_until_closed(publisher: &Publisher, stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut received = Vec::new();
    loop {
        publisher.publish(&news());
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, start.elapsed()),
            Ok(Ok(length)) => received.extend_from_slice(&chunk[..length]),
            Err(_elapsed) => {}
        }
        assert!(start.elapsed() < DEADLINE, "the publisher kept the connection open for {DEADLINE:?}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test]
async fn keyed_subscriber_receives() {
    let publisher = start(4, Some(key(1))).await;
    let mut subscriber = Subscriber::connect_with_key(&endpoint(publisher.local_addr()), Some(&key(1)), &[b"news"], &Limits::default(), DEADLINE)
        .await
        .unwrap();
    publish_until_received(&publisher, 1).await;
    let message = tokio::time::timeout(DEADLINE, subscriber.recv()).await.expect("a message in time").unwrap();
    assert_eq!(message, news());
    assert_eq!(publisher.subscribers(), 1);

    // Long after the token deadline the subscriber is still served.
    tokio::time::sleep(TOKEN_TIMEOUT * 2).await;
    assert_eq!(publisher.publish(&news()), 1);
    let message = tokio::time::timeout(DEADLINE, subscriber.recv()).await.expect("a message in time").unwrap();
    assert_eq!(message, news());
    assert_eq!(publisher.stats().rejected_connections(), 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn wrong_key_is_cut_and_receives_nothing() {
    let publisher = start(4, Some(key(1))).await;
    let mut subscriber = Subscriber::connect_with_key(&endpoint(publisher.local_addr()), Some(&key(2)), &[b""], &Limits::default(), DEADLINE)
        .await
        .unwrap();
    let received = tokio::time::timeout(DEADLINE, async {
        loop {
            publisher.publish(&news());
            match tokio::time::timeout(Duration::from_millis(20), subscriber.recv()).await {
                Ok(result) => return result,
                Err(_elapsed) => {}
            }
        }
    })
    .await
    .expect("the publisher cuts the subscriber in time");
    assert!(matches!(received, Err(ClientError::Closed { .. } | ClientError::Io { .. })), "{received:?}");
    assert_eq!(publisher.subscribers(), 0);
    assert_eq!(publisher.stats().rejected_connections(), 1);
    publisher.shutdown().await;
}

#[tokio::test]
async fn invalid_tokens_are_cut_at_once() {
    let publisher = start(4, Some(key(1))).await;
    let stale = key(1).token_issued_at(SystemTime::now() - Duration::from_secs(120));
    let future = key(1).token_issued_at(SystemTime::now() + Duration::from_secs(120));
    let garbled = [TOKEN_PREFIX, b"not a token"].concat();
    let mut flipped = key(1).token().to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    let cases: [(&str, &[u8]); 4] = [("stale", &stale), ("from the future", &future), ("garbled", &garbled), ("flipped MAC bit", &flipped)];

    for (case, token) in cases {
        // The topic comes first, as a client might send it; it must not admit anything.
        let mut stream = raw_subscriber(publisher.local_addr(), &[b"", token]).await;
        let (received, closed_after) = read_until_closed(&publisher, &mut stream).await;
        assert!(!contains(&received, b"published-payload"), "{case}: a message arrived");
        assert!(closed_after < TOKEN_TIMEOUT, "{case}: cut after {closed_after:?}, not at the token");
    }
    assert_eq!(publisher.stats().rejected_connections(), 4);
    assert_eq!(publisher.subscribers(), 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn missing_token_is_cut_after_timeout() {
    let publisher = start(4, Some(key(1))).await;
    let mut stream = raw_subscriber(publisher.local_addr(), &[b""]).await;
    let (received, closed_after) = read_until_closed(&publisher, &mut stream).await;
    assert!(!contains(&received, b"published-payload"), "a subscriber without a token got a message");
    assert!(closed_after >= TOKEN_TIMEOUT - Duration::from_millis(50), "cut after {closed_after:?}, before the timeout");
    assert_eq!(publisher.stats().rejected_connections(), 1);
    publisher.shutdown().await;
}

#[tokio::test]
async fn replayed_token_is_cut() {
    let publisher = start(4, Some(key(1))).await;
    let token = key(1).token();
    let mut first = raw_subscriber(publisher.local_addr(), &[&token, b"news"]).await;
    publish_until_received(&publisher, 1).await;

    let mut copy = raw_subscriber(publisher.local_addr(), &[&token, b"news"]).await;
    let (received, closed_after) = read_until_closed(&publisher, &mut copy).await;
    assert!(!contains(&received, b"published-payload"), "the copy got a message");
    assert!(closed_after < TOKEN_TIMEOUT, "cut after {closed_after:?}, not at the token");

    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(DEADLINE, first.read(&mut chunk)).await.expect("the first subscriber still receives").unwrap();
    assert!(read > 0, "the first subscriber was closed");
    assert_eq!(publisher.subscribers(), 1);
    publisher.shutdown().await;
}

#[tokio::test]
async fn keyless_idle_connection_is_cut() {
    let publisher = start(4, None).await;
    let mut idle = raw_subscriber(publisher.local_addr(), &[]).await;
    let (_, closed_after) = read_until_closed(&publisher, &mut idle).await;
    assert!(closed_after >= SUBSCRIBE_TIMEOUT - Duration::from_millis(50), "cut after {closed_after:?}, before the timeout");

    // One that subscribes stays past the timeout.
    let mut subscribed = raw_subscriber(publisher.local_addr(), &[b"news"]).await;
    publish_until_received(&publisher, 1).await;
    tokio::time::sleep(SUBSCRIBE_TIMEOUT * 2).await;
    assert_eq!(publisher.publish(&news()), 1, "a subscribed connection was cut");
    let mut chunk = [0u8; 4096];
    assert!(subscribed.read(&mut chunk).await.unwrap() > 0);
    assert_eq!(publisher.stats().rejected_connections(), 1);
    publisher.shutdown().await;
}

/// Opens `count` connections that finish their handshake and then send nothing.
async fn idle_connections(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(raw_subscriber(address, &[]).await);
    }
    streams
}

#[tokio::test]
async fn idle_connections_do_not_lock_out_subscribers() {
    for subscriber_key in [Some(key(1)), None] {
        let keyed = subscriber_key.is_some();
        let publisher = start(4, subscriber_key.clone()).await;
        // Ten times the admitted cap, and more than both caps together.
        let _idle = idle_connections(publisher.local_addr(), 40).await;
        let _silent = silent_connections(publisher.local_addr(), 10).await;

        let mut subscribers = Vec::new();
        for _ in 0..4 {
            let connected = Subscriber::connect_with_key(
                &endpoint(publisher.local_addr()),
                subscriber_key.as_ref(),
                &[b"news"],
                &Limits::default(),
                DEADLINE,
            )
            .await;
            subscribers.push(connected.unwrap_or_else(|error| panic!("keyed {keyed}: connecting after the idle flood: {error}")));
        }
        publish_until_received(&publisher, 4).await;
        for subscriber in &mut subscribers {
            let message = tokio::time::timeout(DEADLINE, subscriber.recv()).await.expect("a message in time").unwrap();
            assert_eq!(message, news(), "keyed {keyed}");
        }
        assert!(publisher.stats().active_connections() <= 4 + MAX_PENDING, "keyed {keyed}: more connections than both caps");
        publisher.shutdown().await;
    }
}

/// Opens `count` TCP connections that send nothing at all.
async fn silent_connections(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(TcpStream::connect(address).await.unwrap());
    }
    streams
}

#[tokio::test]
async fn admitted_cap_refuses_one_more() {
    let publisher = start(2, Some(key(1))).await;
    let mut admitted = Vec::new();
    for _ in 0..2 {
        admitted.push(raw_subscriber(publisher.local_addr(), &[&key(1).token(), b"news"]).await);
    }
    publish_until_received(&publisher, 2).await;

    let mut third = raw_subscriber(publisher.local_addr(), &[&key(1).token(), b"news"]).await;
    let (received, _) = read_until_closed(&publisher, &mut third).await;
    assert!(!contains(&received, b"published-payload"), "a subscriber beyond max_connections got a message");
    assert_eq!(publisher.subscribers(), 2);
    assert_eq!(publisher.stats().rejected_connections(), 1);

    drop(admitted.pop());
    let _fourth = raw_subscriber(publisher.local_addr(), &[&key(1).token(), b"news"]).await;
    publish_until_received(&publisher, 2).await;
    publisher.shutdown().await;
}
