//! Hostile ZeroMQ requests sent straight to a data server's request socket: each gets an error
//! reply, nothing is stored, and the server keeps serving.

mod common;

use bytes::Bytes;
use forum_dataserver::{Config, DataServer};
use forum_protocol::{decode, encode, ErrorCode, Reply, Request, WireReply, WireRequest, PROTOCOL_VERSION};
use zeromq::{Socket, SocketRecv, SocketSend};

async fn start_server(dir: &std::path::Path) -> DataServer {
    common::init_logging();
    DataServer::start(Config {
        id: 1,
        request_endpoint: "tcp://127.0.0.1:0".into(),
        pub_endpoint: "tcp://127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        peers: Vec::new(),
    })
    .await
    .expect("starting a data server")
}

/// Sends one payload on a fresh REQ socket and returns the decoded reply.
async fn request_raw(endpoint: &str, payload: Vec<u8>) -> WireReply {
    let mut socket = zeromq::ReqSocket::new();
    socket.connect(endpoint).await.expect("connecting a REQ socket");
    socket.send(zeromq::ZmqMessage::from(Bytes::from(payload))).await.expect("sending a request");
    let reply = tokio::time::timeout(common::PATIENCE, socket.recv()).await.expect("a reply in time").expect("a reply");
    decode(&reply.into_vec()[0]).expect("a decodable reply")
}

fn error_code(reply: &WireReply) -> Option<ErrorCode> {
    match &reply.reply {
        Reply::Error(error) => Some(error.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_request_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let endpoint = server.request_endpoint().to_owned();

    // Without a structure scan before decoding, a few hundred nested array headers overflow
    // the stack of a debug build and abort the process.
    for depth in [800, 20_000, 60_000] {
        let mut payload = b"\x83\xa1v\x01\xa2id\x01\xa7request".to_vec();
        payload.extend(std::iter::repeat_n(0x91u8, depth));
        payload.push(0xc0);
        let reply = request_raw(&endpoint, payload).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "depth {depth}: {reply:?}");
    }
    let mut nested_maps = b"\x84\xa1v\x01\xa2id\x01\xa7request\xa4Ping\xa5extra".to_vec();
    nested_maps.extend(std::iter::repeat_n([0x81u8, 0xa1, b'k'], 20_000).flatten());
    nested_maps.push(0xc0);
    let reply = request_raw(&endpoint, nested_maps).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Malformed), "nested maps: {reply:?}");

    let ping = encode(&WireRequest { v: PROTOCOL_VERSION, id: 5, request: Request::Ping, client: None });
    let reply = request_raw(&endpoint, ping).await;
    assert!(matches!(reply.reply, Reply::Pong { server: 1 }), "the server stopped serving: {reply:?}");
    server.shutdown().await;
}
