//! zeromq 0.7 clients and raw ZMTP streams against a [`ZmtpListener`] that echoes every
//! message in the shape a ROUTER replies: to the connection that sent it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, PubSocket, ReqSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmtp_guard::codec::{write_command, write_frame, write_greeting, write_ready, Event, FrameReader};
use zmtp_guard::{wait_until_stopping, Connection, ConnectionEnd, GuardStats, Limits, Phase, Rejection, SocketSpec, ZmtpListener};

const SPEC: SocketSpec = SocketSpec { socket_type: "ROUTER", peer_types: &["REQ", "DEALER"] };
const DEADLINE: Duration = Duration::from_secs(5);

struct EchoServer {
    endpoint: String,
    address: SocketAddr,
    stats: GuardStats,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl EchoServer {
    async fn start(limits: Limits) -> EchoServer {
        let listener = ZmtpListener::bind("127.0.0.1:0".parse().unwrap(), limits).await.expect("bind the listener");
        let address = listener.local_addr();
        let stats = listener.stats();
        let (stop, stopping) = watch::channel(false);
        let task = listener.serve(SPEC, stopping, echo);
        EchoServer { endpoint: format!("tcp://{address}"), address, stats, stop, task }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(DEADLINE, self.task).await.expect("the server stops").unwrap();
    }
}

/// Writes every message back as it came, all replies of one read in one write.
async fn echo(connection: Connection) -> ConnectionEnd {
    let Connection { mut stream, mut reader, mut stopping, limits, .. } = connection;
    let mut out = BytesMut::new();
    loop {
        while let Some(event) = reader.next_event().expect("valid frames") {
            match event {
                Event::Message(frames) => {
                    for (index, frame) in frames.iter().enumerate() {
                        write_frame(&mut out, frame, index + 1 < frames.len());
                    }
                }
                Event::Command(command) if command.name.as_ref() == b"PING" => zmtp_guard::codec::write_pong(&mut out, &command.data),
                _ => {}
            }
        }
        if !out.is_empty() {
            if let Err(error) = stream.write_all(&out).await {
                return ConnectionEnd::Closed(Some(error));
            }
            out.clear();
        }
        let stall_timeout = match reader.phase() {
            Phase::InsideMessage => limits.stalled_frame_timeout,
            Phase::Handshake | Phase::BetweenMessages => Duration::MAX,
        };
        tokio::select! {
            () = wait_until_stopping(&mut stopping) => return ConnectionEnd::Closed(None),
            read = tokio::time::timeout(stall_timeout, reader.read_from(&mut stream)) => match read {
                Err(_elapsed) => return ConnectionEnd::Cut(Rejection::FrameStalled(stall_timeout)),
                Ok(Ok(0)) => return ConnectionEnd::Closed(None),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return error.into(),
            },
        }
    }
}

/// Returns our client side of a handshake as a `socket_type` socket.
fn client_handshake(socket_type: &str) -> BytesMut {
    let mut out = BytesMut::new();
    write_greeting(&mut out);
    write_ready(&mut out, socket_type);
    out
}

/// Connects, sends a handshake and reads the server's greeting and READY.
async fn raw_client(address: SocketAddr, socket_type: &str) -> (TcpStream, FrameReader) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(&client_handshake(socket_type)).await.unwrap();
    let mut reader = FrameReader::new(&Limits::default());
    let mut events = Vec::new();
    while events.len() < 2 {
        let read = tokio::time::timeout(DEADLINE, reader.read_from(&mut stream)).await.expect("the server's handshake arrives").unwrap();
        assert!(read > 0, "the server closed the connection during the handshake");
        while let Some(event) = reader.next_event().unwrap() {
            events.push(event);
        }
    }
    assert_eq!(events[0], Event::Greeting { minor_version: 1 });
    let Event::Command(ready) = &events[1] else { panic!("expected READY, got {:?}", events[1]) };
    assert_eq!(ready.name.as_ref(), b"READY");
    let socket_type = zmtp_guard::codec::ready_property(&ready.data, "Socket-Type").unwrap();
    assert_eq!(socket_type, Some(&b"ROUTER"[..]));
    (stream, reader)
}

async fn next_event(stream: &mut TcpStream, reader: &mut FrameReader) -> Event {
    loop {
        if let Some(event) = reader.next_event().unwrap() {
            return event;
        }
        let read = tokio::time::timeout(DEADLINE, reader.read_from(stream)).await.expect("a reply arrives").unwrap();
        assert!(read > 0, "the server closed the connection");
    }
}

async fn wait_for_close(stream: &mut TcpStream) {
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(DEADLINE, async {
        while !matches!(stream.read(&mut buffer).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn req_and_dealer_get_replies() {
    let server = EchoServer::start(Limits::default()).await;

    let mut req = ReqSocket::new();
    req.connect(&server.endpoint).await.unwrap();
    req.send(ZmqMessage::from("from req")).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, req.recv()).await.expect("the REQ reply arrives").unwrap();
    assert_eq!(reply.into_vec(), vec![bytes::Bytes::from_static(b"from req")]);

    let mut dealer = DealerSocket::new();
    dealer.connect(&server.endpoint).await.unwrap();
    for index in 0..100 {
        dealer.send(ZmqMessage::from(format!("request {index}"))).await.unwrap();
    }
    for index in 0..100 {
        let reply = tokio::time::timeout(DEADLINE, dealer.recv()).await.expect("the DEALER reply arrives").unwrap();
        assert_eq!(reply.into_vec(), vec![bytes::Bytes::from(format!("request {index}"))]);
    }

    assert_eq!(server.stats.active_connections(), 2);
    assert_eq!(server.stats.rejected_connections(), 0);
    drop((req, dealer));
    server.stop().await;
}

#[tokio::test]
async fn req_delimiter_reaches_service() {
    let server = EchoServer::start(Limits::default()).await;
    let (mut stream, mut reader) = raw_client(server.address, "REQ").await;
    let mut request = BytesMut::new();
    write_frame(&mut request, b"", true);
    write_frame(&mut request, b"payload", false);
    stream.write_all(&request).await.unwrap();
    let reply = next_event(&mut stream, &mut reader).await;
    assert_eq!(reply, Event::Message(vec![bytes::Bytes::new(), bytes::Bytes::from_static(b"payload")]));
    server.stop().await;
}

#[tokio::test]
async fn ping_gets_pong() {
    let server = EchoServer::start(Limits::default()).await;
    let (mut stream, mut reader) = raw_client(server.address, "DEALER").await;
    let mut ping = BytesMut::new();
    write_command(&mut ping, "PING", b"\x00\x64context");
    write_frame(&mut ping, b"after the ping", false);
    stream.write_all(&ping).await.unwrap();

    let Event::Command(pong) = next_event(&mut stream, &mut reader).await else { panic!("expected PONG") };
    assert_eq!(pong.name.as_ref(), b"PONG");
    assert_eq!(pong.data.as_ref(), b"context");
    let message = next_event(&mut stream, &mut reader).await;
    assert_eq!(message, Event::Message(vec![bytes::Bytes::from_static(b"after the ping")]));
    server.stop().await;
}

#[tokio::test]
async fn wrong_socket_type_is_cut() {
    let server = EchoServer::start(Limits::default()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream.write_all(&client_handshake("PUB")).await.unwrap();
    wait_for_close(&mut stream).await;
    assert_eq!(server.stats.rejected_connections(), 1);

    // A zeromq 0.7 PUB socket is refused as well, and the server still serves others.
    let mut publisher = PubSocket::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), publisher.connect(&server.endpoint)).await;
    let mut dealer = DealerSocket::new();
    dealer.connect(&server.endpoint).await.unwrap();
    dealer.send(ZmqMessage::from("still here")).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, dealer.recv()).await.expect("the DEALER reply arrives").unwrap();
    assert_eq!(reply.into_vec(), vec![bytes::Bytes::from_static(b"still here")]);
    drop((publisher, dealer));
    server.stop().await;
}

#[tokio::test]
async fn oversized_frame_and_silence_are_cut() {
    let mut limits = Limits::default();
    limits.greeting_timeout = Duration::from_millis(300);
    limits.stalled_frame_timeout = Duration::from_millis(300);
    let server = EchoServer::start(limits).await;

    let (mut stream, _) = raw_client(server.address, "DEALER").await;
    let mut attack = vec![0x02];
    attack.extend_from_slice(&(1u64 << 45).to_be_bytes());
    stream.write_all(&attack).await.unwrap();
    wait_for_close(&mut stream).await;

    let (mut stream, _) = raw_client(server.address, "DEALER").await;
    stream.write_all(&[0x00, 10, b'h']).await.unwrap();
    wait_for_close(&mut stream).await;

    let mut silent = TcpStream::connect(server.address).await.unwrap();
    wait_for_close(&mut silent).await;

    assert_eq!(server.stats.rejected_connections(), 3);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_max_are_closed() {
    let mut limits = Limits::default();
    limits.max_connections = 1;
    let server = EchoServer::start(limits).await;
    let (_held, _) = raw_client(server.address, "DEALER").await;
    let mut refused = TcpStream::connect(server.address).await.unwrap();
    wait_for_close(&mut refused).await;
    assert_eq!(server.stats.active_connections(), 1);
    assert_eq!(server.stats.rejected_connections(), 1);
    server.stop().await;
}
