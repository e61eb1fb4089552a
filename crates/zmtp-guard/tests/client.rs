//! The client sockets against our own ROUTER and PUB servers, and against hostile servers
//! on 127.0.0.1 that break the limits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zmtp_guard::codec::{write_frame, write_greeting, write_ready, Event};
use zmtp_guard::{
    wait_until_stopping, ClientError, Connection, ConnectionEnd, Dealer, Limits, Publisher, Rejection, SocketSpec,
    Subscriber, Violation, ZmtpListener,
};

const DEADLINE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Frame size declared by the 73-byte attack: 32 TiB.
const ATTACK_FRAME_SIZE: u64 = 1 << 45;

fn test_limits() -> Limits {
    Limits {
        greeting_timeout: Duration::from_millis(300),
        stalled_frame_timeout: Duration::from_millis(300),
        stalled_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// Starts a ROUTER server that sends every message back to its sender.
async fn start_echo_router() -> (SocketAddr, watch::Sender<bool>, JoinHandle<()>) {
    const SPEC: SocketSpec = SocketSpec { socket_type: "ROUTER", peer_types: &["DEALER"] };
    let listener = ZmtpListener::bind("127.0.0.1:0".parse().unwrap(), Limits::default()).await.expect("bind the listener");
    let address = listener.local_addr();
    let (stop, stopping) = watch::channel(false);
    let task = listener.serve(SPEC, stopping, echo);
    (address, stop, task)
}

async fn echo(connection: Connection) -> ConnectionEnd {
    let Connection { mut stream, mut reader, mut stopping, .. } = connection;
    let mut out = BytesMut::new();
    loop {
        while let Some(event) = reader.next_event().expect("valid frames") {
            if let Event::Message(frames) = event {
                for (index, frame) in frames.iter().enumerate() {
                    write_frame(&mut out, frame, index + 1 < frames.len());
                }
            }
        }
        if !out.is_empty() {
            if let Err(error) = stream.write_all(&out).await {
                return ConnectionEnd::Closed(Some(error));
            }
            out.clear();
        }
        tokio::select! {
            () = wait_until_stopping(&mut stopping) => return ConnectionEnd::Closed(None),
            read = reader.read_from(&mut stream) => match read {
                Ok(0) => return ConnectionEnd::Closed(None),
                Ok(_) => {}
                Err(error) => return error.into(),
            },
        }
    }
}

fn endpoint(address: SocketAddr) -> String {
    format!("tcp://{address}")
}

fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
    parts.iter().map(|part| Bytes::from_static(part)).collect()
}

/// Returns a greeting and a READY command announcing `socket_type`, as a server sends them.
fn server_handshake(socket_type: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_greeting(&mut out);
    write_ready(&mut out, socket_type);
    out.to_vec()
}

/// Returns the 73 bytes that abort a zeromq 0.7 process: a valid greeting, then a long message
/// frame header declaring [`ATTACK_FRAME_SIZE`] bytes.
fn size_attack_bytes() -> Vec<u8> {
    let mut bytes = BytesMut::new();
    write_greeting(&mut bytes);
    bytes.extend_from_slice(&[0x02]);
    bytes.extend_from_slice(&ATTACK_FRAME_SIZE.to_be_bytes());
    assert_eq!(bytes.len(), 73);
    bytes.to_vec()
}

/// Starts a server that writes `bytes` to each client, then reads and discards until the client
/// closes. Returns its address.
async fn start_hostile_server(bytes: Vec<u8>) -> SocketAddr {
    start_hostile_server_in_parts(vec![bytes]).await
}

/// Starts a server that writes each of `parts` to each client, 100 ms apart, then reads and
/// discards until the client closes. Returns its address.
async fn start_hostile_server_in_parts(parts: Vec<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the hostile server");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let parts = parts.clone();
            tokio::spawn(async move {
                for (index, part) in parts.iter().enumerate() {
                    if index > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = stream.write_all(part).await;
                }
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
            });
        }
    });
    address
}

fn expect_cut(result: Result<impl std::fmt::Debug, ClientError>) -> Rejection {
    match result {
        Err(ClientError::Cut { reason, .. }) => reason,
        other => panic!("expected a cut, got {other:?}"),
    }
}

async fn within_deadline<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future).await.expect("finished within the deadline")
}

#[tokio::test]
async fn dealer_round_trip_with_router() {
    let (address, stop, task) = start_echo_router().await;
    let mut dealer = Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT).await.expect("connect");
    assert_eq!(dealer.peer(), address);

    dealer.send(&frames(&[b"", b"first"])).await.unwrap();
    assert_eq!(within_deadline(dealer.recv()).await.unwrap(), frames(&[b"", b"first"]));

    let (mut sender, mut receiver) = dealer.split();
    let long = Bytes::from(vec![7u8; 70_000]);
    sender.send(&[Bytes::new(), long.clone()]).await.unwrap();
    sender.send(&frames(&[b"third"])).await.unwrap();
    assert_eq!(within_deadline(receiver.recv()).await.unwrap(), vec![Bytes::new(), long]);
    assert_eq!(within_deadline(receiver.recv()).await.unwrap(), frames(&[b"third"]));

    stop.send(true).unwrap();
    within_deadline(task).await.unwrap();
    assert!(matches!(within_deadline(receiver.recv()).await, Err(ClientError::Closed { .. })));
}

#[tokio::test]
async fn subscriber_gets_only_its_topics() {
    let publisher = Publisher::start("127.0.0.1:0".parse().unwrap(), Limits::for_pub_socket()).await.unwrap();
    let mut subscriber =
        Subscriber::connect(&endpoint(publisher.local_addr()), &[b"news", b"alerts"], &test_limits(), CONNECT_TIMEOUT)
            .await
            .expect("connect");

    // The subscriptions travel after the handshake; publish until one is delivered.
    let started = Instant::now();
    while publisher.publish(&frames(&[b"news.probe", b"p"])) == 0 {
        assert!(started.elapsed() < DEADLINE, "the subscription never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(within_deadline(subscriber.recv()).await.unwrap(), frames(&[b"news.probe", b"p"]));

    publisher.publish(&frames(&[b"sports", b"skipped"]));
    publisher.publish(&frames(&[b"alerts", b"a"]));
    assert_eq!(within_deadline(subscriber.recv()).await.unwrap(), frames(&[b"alerts", b"a"]));
    publisher.shutdown().await;
    assert!(matches!(within_deadline(subscriber.recv()).await, Err(ClientError::Closed { .. })));
}

#[tokio::test]
async fn subscriber_drops_unsubscribed_topics() {
    // A PUB that ignores subscriptions and sends everything.
    let mut bytes = server_handshake("PUB");
    let mut messages = BytesMut::new();
    write_frame(&mut messages, b"other", true);
    write_frame(&mut messages, b"x", false);
    write_frame(&mut messages, b"checkpoint", true);
    write_frame(&mut messages, b"y", false);
    bytes.extend_from_slice(&messages);
    let address = start_hostile_server(bytes).await;
    let mut subscriber = Subscriber::connect(&endpoint(address), &[b"checkpoint"], &test_limits(), CONNECT_TIMEOUT).await.unwrap();
    assert_eq!(within_deadline(subscriber.recv()).await.unwrap(), frames(&[b"checkpoint", b"y"]));
}

#[tokio::test]
async fn size_attack_in_handshake_is_cut() {
    let address = start_hostile_server(size_attack_bytes()).await;
    let started = Instant::now();
    let dealer = within_deadline(Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT)).await;
    let reason = expect_cut(dealer);
    assert!(matches!(reason, Rejection::Violation(Violation::ExpectedReady { .. })), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(1), "the cut waited for a timeout");

    let subscriber = within_deadline(Subscriber::connect(&endpoint(address), &[b""], &test_limits(), CONNECT_TIMEOUT)).await;
    expect_cut(subscriber);
}

#[tokio::test]
async fn size_attack_after_handshake_is_cut() {
    for socket_type in ["ROUTER", "PUB"] {
        let mut attack = vec![0x02];
        attack.extend_from_slice(&ATTACK_FRAME_SIZE.to_be_bytes());
        let address = start_hostile_server_in_parts(vec![server_handshake(socket_type), attack]).await;
        let result = if socket_type == "ROUTER" {
            let mut dealer = Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT).await.unwrap();
            within_deadline(dealer.recv()).await
        } else {
            let mut subscriber = Subscriber::connect(&endpoint(address), &[b""], &test_limits(), CONNECT_TIMEOUT).await.unwrap();
            within_deadline(subscriber.recv()).await
        };
        let reason = expect_cut(result);
        assert!(
            matches!(reason, Rejection::Violation(Violation::FrameTooLarge { size: ATTACK_FRAME_SIZE, .. })),
            "{socket_type}: {reason}"
        );
    }
}

#[tokio::test]
async fn message_limits_are_enforced() {
    let limits = Limits { max_frame_bytes: 1000, max_message_bytes: 1500, max_frames_per_message: 3, ..test_limits() };

    let mut large_frame = BytesMut::new();
    write_frame(&mut large_frame, &[0u8; 1001], false);
    let mut large_message = BytesMut::new();
    write_frame(&mut large_message, &[0u8; 800], true);
    write_frame(&mut large_message, &[0u8; 800], false);
    let mut many_frames = BytesMut::new();
    for _ in 0..3 {
        write_frame(&mut many_frames, b"f", true);
    }
    write_frame(&mut many_frames, b"f", false);

    let cases: [(&str, BytesMut, fn(&Violation) -> bool); 3] = [
        ("frame", large_frame, |violation| matches!(violation, Violation::FrameTooLarge { size: 1001, max: 1000 })),
        ("message", large_message, |violation| matches!(violation, Violation::MessageTooLarge { max: 1500, .. })),
        ("frames", many_frames, |violation| matches!(violation, Violation::TooManyFrames { max: 3 })),
    ];
    for (case, message, expected) in cases {
        let address = start_hostile_server_in_parts(vec![server_handshake("ROUTER"), message.to_vec()]).await;
        let mut dealer = Dealer::connect(&endpoint(address), &limits, CONNECT_TIMEOUT).await.unwrap();
        match expect_cut(within_deadline(dealer.recv()).await) {
            Rejection::Violation(violation) => assert!(expected(&violation), "{case}: {violation}"),
            other => panic!("{case}: expected a violation, got {other}"),
        }
    }
}

#[tokio::test]
async fn silent_server_times_out_handshake() {
    let address = start_hostile_server(Vec::new()).await;
    let started = Instant::now();
    let reason = expect_cut(within_deadline(Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT)).await);
    assert!(matches!(reason, Rejection::HandshakeTimedOut(_)), "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn stalled_frame_is_cut() {
    // A frame header declaring 10 bytes, followed by only 3.
    let partial_frame = vec![0x00, 10, b'a', b'b', b'c'];
    let address = start_hostile_server_in_parts(vec![server_handshake("ROUTER"), partial_frame]).await;
    let mut dealer = Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT).await.unwrap();

    // Each call is cancelled after 50 ms, far below the 300 ms stall timeout. One of them ends
    // with the cut only because the time of cancelled calls adds up. A timeout that restarted
    // at each call would let every call run out instead.
    let mut cut = None;
    for _ in 0..40 {
        if let Ok(result) = tokio::time::timeout(Duration::from_millis(50), dealer.recv()).await {
            cut = Some(result);
            break;
        }
    }
    let result = cut.expect("40 calls of 50 ms each, and the stalled frame was never cut: cancelled calls restarted the timeout");
    let reason = expect_cut(result);
    assert!(matches!(reason, Rejection::FrameStalled(_)), "{reason}");
}

#[tokio::test]
async fn wrong_server_socket_type_is_cut() {
    let address = start_hostile_server(server_handshake("PUB")).await;
    let reason = expect_cut(within_deadline(Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT)).await);
    assert!(matches!(reason, Rejection::PeerSocketType { .. }), "{reason}");

    let address = start_hostile_server(server_handshake("ROUTER")).await;
    let reason = expect_cut(within_deadline(Subscriber::connect(&endpoint(address), &[b""], &test_limits(), CONNECT_TIMEOUT)).await);
    assert!(matches!(reason, Rejection::PeerSocketType { .. }), "{reason}");
}

#[tokio::test]
async fn connect_errors_are_reported() {
    let invalid = Dealer::connect("127.0.0.1:1", &test_limits(), CONNECT_TIMEOUT).await;
    assert!(matches!(invalid, Err(ClientError::InvalidEndpoint { .. })), "{invalid:?}");

    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let refused = Dealer::connect(&endpoint(address), &test_limits(), CONNECT_TIMEOUT).await;
    assert!(matches!(refused, Err(ClientError::Io { .. })), "{refused:?}");
}

#[tokio::test]
async fn subscriber_answers_ping() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut bytes = BytesMut::from(&server_handshake("PUB")[..]);
        zmtp_guard::codec::write_command(&mut bytes, "PING", b"\x00\x0actx");
        write_frame(&mut bytes, b"topic", false);
        stream.write_all(&bytes).await.unwrap();
        let mut reader = zmtp_guard::codec::FrameReader::new(&Limits::for_pub_socket());
        loop {
            while let Some(event) = reader.next_event().unwrap() {
                if let Event::Command(command) = event {
                    if &command.name[..] == b"PONG" {
                        return command.data;
                    }
                }
            }
            assert!(reader.read_from(&mut stream).await.unwrap() > 0, "the client closed without a PONG");
        }
    });
    let mut subscriber = Subscriber::connect(&endpoint(address), &[b"topic"], &test_limits(), CONNECT_TIMEOUT).await.unwrap();
    assert_eq!(within_deadline(subscriber.recv()).await.unwrap(), frames(&[b"topic"]));
    assert_eq!(within_deadline(server).await.unwrap(), Bytes::from_static(b"ctx"));
}
