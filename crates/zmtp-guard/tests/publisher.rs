//! zeromq 0.7 SUB clients and raw TCP clients against the native PUB port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::{DealerSocket, Socket, SocketRecv, SubSocket};
use zmtp_guard::{Limits, Publisher};

const DEADLINE: Duration = Duration::from_secs(5);

fn limits() -> Limits {
    Limits { stalled_read_timeout: Duration::from_millis(500), ..Limits::for_pub_socket() }
}

async fn start() -> Publisher {
    Publisher::start("127.0.0.1:0".parse().unwrap(), limits()).await.expect("bind the publisher")
}

fn endpoint(address: SocketAddr) -> String {
    format!("tcp://{address}")
}

fn message(topic: &'static str, payload: &[u8]) -> Vec<Bytes> {
    vec![Bytes::from_static(topic.as_bytes()), Bytes::copy_from_slice(payload)]
}

/// Publishes `frames` until at least `subscribers` get it, which shows that their
/// subscriptions have arrived. Returns how many publications that took.
async fn publish_until_received(publisher: &Publisher, frames: &[Bytes], subscribers: usize) -> usize {
    let start = Instant::now();
    let mut published = 0;
    loop {
        published += 1;
        if publisher.publish(frames) >= subscribers {
            return published;
        }
        assert!(start.elapsed() < DEADLINE, "the subscriptions never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn receive(socket: &mut SubSocket) -> Vec<Vec<u8>> {
    let message = tokio::time::timeout(DEADLINE, socket.recv()).await.expect("a message in time").expect("receive");
    message.into_vec().into_iter().map(|frame| frame.to_vec()).collect()
}

#[tokio::test]
async fn zeromq_sub_gets_only_its_topics() {
    let publisher = start().await;
    let mut news = SubSocket::new();
    news.connect(&endpoint(publisher.local_addr())).await.unwrap();
    news.subscribe("news").await.unwrap();
    let mut all = SubSocket::new();
    all.connect(&endpoint(publisher.local_addr())).await.unwrap();
    all.subscribe("").await.unwrap();

    publish_until_received(&publisher, &message("news.probe", b"p"), 2).await;
    // Probes sent before both subscriptions arrived reached one subscriber or none.
    for socket in [&mut news, &mut all] {
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), socket.recv()).await {}
    }

    assert_eq!(publisher.publish(&message("weather", b"rain")), 1, "only the empty prefix matches");
    let long = vec![5u8; 70_000];
    assert_eq!(publisher.publish(&message("news", &long)), 2);
    assert_eq!(receive(&mut all).await, vec![b"weather".to_vec(), b"rain".to_vec()]);
    assert_eq!(receive(&mut all).await, vec![b"news".to_vec(), long.clone()]);
    assert_eq!(receive(&mut news).await, vec![b"news".to_vec(), long], "long frames arrive whole");
    assert_eq!(publisher.subscribers(), 2);
    assert_eq!(publisher.stats().active_connections(), 2);

    drop(news);
    let start = Instant::now();
    while publisher.subscribers() > 1 {
        assert!(start.elapsed() < DEADLINE, "a closed subscriber is removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publisher.shutdown().await;
}

#[tokio::test]
async fn dealer_is_rejected() {
    let publisher = start().await;
    let mut dealer = DealerSocket::new();
    // zeromq 0.7 may reject the DEALER-PUB pair itself and fail the connect. Otherwise the
    // handshake reaches the publisher, which cuts the connection, so no subscriber is added.
    // Both ways end with no subscriber.
    let _ = tokio::time::timeout(DEADLINE, dealer.connect(&endpoint(publisher.local_addr()))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(publisher.subscribers(), 0);
    publisher.shutdown().await;
}

/// Returns the greeting of a ZMTP 3.0 client with the NULL mechanism.
fn client_greeting() -> Vec<u8> {
    let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    let mut mechanism = [0u8; 20];
    mechanism[..4].copy_from_slice(b"NULL");
    greeting.extend_from_slice(&mechanism);
    greeting.extend_from_slice(&[0u8; 32]);
    greeting
}

fn command(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend_from_slice(body);
    frame
}

fn ready(socket_type: &[u8]) -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type);
    command(&body)
}

/// Connects a raw client that completes the handshake as a SUB and subscribes to everything.
async fn raw_subscriber(publisher: &Publisher) -> TcpStream {
    let mut stream = TcpStream::connect(publisher.local_addr()).await.unwrap();
    let mut bytes = client_greeting();
    bytes.extend_from_slice(&ready(b"SUB"));
    // A ZMTP 3.0 subscription: a one-frame message of 1 and an empty prefix.
    bytes.extend_from_slice(&[0x00, 0x01, 0x01]);
    stream.write_all(&bytes).await.unwrap();
    stream
}

#[tokio::test]
async fn hostile_frame_header_is_cut() {
    let publisher = start().await;
    let mut stream = TcpStream::connect(publisher.local_addr()).await.unwrap();
    let mut bytes = client_greeting();
    bytes.extend_from_slice(&ready(b"SUB"));
    // A long frame header declaring 2^45 bytes.
    bytes.push(0x02);
    bytes.extend_from_slice(&(1u64 << 45).to_be_bytes());
    stream.write_all(&bytes).await.unwrap();
    let mut sink = Vec::new();
    // The connection ends, by a close or a reset.
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await.expect("the publisher closes the connection");
    assert_eq!(publisher.stats().rejected_connections(), 1);
    assert_eq!(publisher.subscribers(), 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn ping_gets_pong_and_commands_subscribe() {
    let publisher = start().await;
    let mut stream = TcpStream::connect(publisher.local_addr()).await.unwrap();
    let mut bytes = client_greeting();
    bytes.extend_from_slice(&ready(b"XSUB"));
    bytes.extend_from_slice(&command(b"\x09SUBSCRIBEab"));
    bytes.extend_from_slice(&command(b"\x04PING\x00\x10hello"));
    stream.write_all(&bytes).await.unwrap();
    publish_until_received(&publisher, &message("abc", b"x"), 1).await;

    // Our greeting, our READY, the PONG and the messages arrive in that order.
    let mut received = Vec::new();
    let pong = b"\x04\x0a\x04PONGhello";
    let start = Instant::now();
    while !received.windows(pong.len()).any(|window| window == pong) {
        assert!(start.elapsed() < DEADLINE, "no PONG arrived");
        let mut chunk = [0u8; 1024];
        let length = tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(length > 0, "the publisher closed the connection");
        received.extend_from_slice(&chunk[..length]);
    }

    stream.write_all(&command(b"\x06CANCELab")).await.unwrap();
    let start = Instant::now();
    while publisher.publish(&message("abc", b"x")) > 0 {
        assert!(start.elapsed() < DEADLINE, "the cancel never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publisher.shutdown().await;
}

#[tokio::test]
async fn subscriber_that_never_reads_is_dropped_then_cut() {
    let publisher = start().await;
    let stalled = raw_subscriber(&publisher).await;
    let mut reader = SubSocket::new();
    reader.connect(&endpoint(publisher.local_addr())).await.unwrap();
    reader.subscribe("").await.unwrap();
    publish_until_received(&publisher, &message("probe", b""), 2).await;

    // 30,000 messages of 1 KiB: more than the stalled client's queue and TCP buffers hold.
    let payload = vec![1u8; 1024];
    let started = Instant::now();
    for _ in 0..30_000 {
        publisher.publish(&message("bulk", &payload));
        tokio::task::yield_now().await;
    }
    assert!(publisher.dropped_messages() > 0, "a full queue drops instead of waiting");
    assert!(started.elapsed() < Duration::from_secs(60));

    let start = Instant::now();
    while publisher.stats().rejected_connections() == 0 {
        assert!(start.elapsed() < DEADLINE, "the stalled subscriber is cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(publisher.subscribers(), 1, "the reading subscriber stays");
    drop(stalled);
    drop(reader);
    publisher.shutdown().await;
}
