//! Requests over real sockets: a REQ client walking through the forum, a pipelining DEALER,
//! and payloads that must be rejected without harm.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use forum_dataserver::MAX_REQUEST_BYTES;
use forum_protocol::{
    decode, encode, ErrorCode, ErrorReply, Reply, Request, UserStatus, WireReply, WireRequest, PROTOCOL_VERSION,
};
use support::{start, Client, PATIENCE};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn error_code(reply: &Reply) -> ErrorCode {
    match reply {
        Reply::Error(ErrorReply { code, .. }) => *code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test]
async fn req_client_uses_the_forum() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(7, directory.path()).await;
    let mut client = Client::connect(&server).await;

    assert_eq!(client.request(Request::Ping).await, Reply::Pong { server: 7 });

    let Reply::User(ana) = client.register("Ana", "secret12").await else { panic!("ana registers") };
    assert_eq!(ana.name, "Ana");
    assert_eq!(ana.id.origin, 7);
    assert!(matches!(client.register("bob", "password").await, Reply::User(_)));
    assert_eq!(error_code(&client.register("ANA", "whatever1").await), ErrorCode::NameTaken);
    assert_eq!(error_code(&client.register("a b", "whatever1").await), ErrorCode::InvalidInput);
    assert_eq!(error_code(&client.register("carl", "short").await), ErrorCode::InvalidInput);

    let login = |name: &str, password: &str| Request::Login { name: name.into(), password: password.into() };
    assert_eq!(client.request(login("ana", "secret12")).await, Reply::User(ana.clone()));
    assert_eq!(error_code(&client.request(login("ana", "wrong-password")).await), ErrorCode::BadCredentials);
    assert_eq!(error_code(&client.request(login("nobody", "secret12")).await), ErrorCode::BadCredentials);

    let create = |title: &str, by: &str| Request::CreateSubject { title: title.into(), created_by: by.into() };
    let Reply::Subject(exams) = client.request(create("  Exams ", "ana")).await else { panic!("subject created") };
    assert_eq!(exams.title, "Exams");
    assert_eq!(exams.created_by, "Ana");
    assert_eq!(error_code(&client.request(create("exams", "bob")).await), ErrorCode::TitleTaken);
    assert_eq!(error_code(&client.request(create("Other", "nobody")).await), ErrorCode::UnknownUser);
    assert_eq!(error_code(&client.request(create(" ", "ana")).await), ErrorCode::InvalidInput);
    let Reply::Subject(trips) = client.request(create("Trips", "bob")).await else { panic!("second subject") };
    assert_eq!(client.request(Request::ListSubjects).await, Reply::Subjects(vec![exams.clone(), trips]));

    let post = |author: &str, text: &str| Request::PostMessage { subject: exams.id, author: author.into(), text: text.into() };
    let Reply::Message(first) = client.request(post("ana", "hola")).await else { panic!("first post") };
    let Reply::Message(second) = client.request(post("bob", "hi")).await else { panic!("second post") };
    assert!(first.lamport < second.lamport);
    assert_eq!(error_code(&client.request(post("nobody", "hi")).await), ErrorCode::UnknownUser);
    assert_eq!(error_code(&client.request(post("ana", "  ")).await), ErrorCode::InvalidInput);
    let unknown_subject = Request::PostMessage { subject: "99-1".parse().unwrap(), author: "ana".into(), text: "x".into() };
    assert_eq!(error_code(&client.request(unknown_subject).await), ErrorCode::UnknownSubject);
    assert_eq!(client.request(Request::History { subject: exams.id }).await, Reply::Messages(vec![first, second]));

    let send = Request::SendPrivate { from: "ana".into(), to: "BOB".into(), text: "psst".into() };
    let Reply::PrivateMessage(private) = client.request(send).await else { panic!("private message sent") };
    assert_eq!(private.to, "bob");
    let unknown_recipient = Request::SendPrivate { from: "ana".into(), to: "nobody".into(), text: "psst".into() };
    assert_eq!(error_code(&client.request(unknown_recipient).await), ErrorCode::UnknownUser);
    let conversation = Request::PrivateHistory { user: "bob".into(), other: "ana".into() };
    assert_eq!(client.request(conversation).await, Reply::PrivateMessages(vec![private]));

    let presence = |user: &str, webserver: &str, online| Request::SetPresence { user: user.into(), webserver: webserver.into(), online };
    assert_eq!(client.request(presence("bob", "web-1", true)).await, Reply::Done);
    assert_eq!(client.request(presence("bob", "web-2", true)).await, Reply::Done);
    assert_eq!(client.request(presence("bob", "web-1", false)).await, Reply::Done);
    assert_eq!(error_code(&client.request(presence("nobody", "web-1", true)).await), ErrorCode::UnknownUser);
    let users = vec![UserStatus { name: "Ana".into(), online: false }, UserStatus { name: "bob".into(), online: true }];
    assert_eq!(client.request(Request::ListUsers).await, Reply::Users(users));

    server.shutdown().await;
}

#[tokio::test]
async fn dealer_pipelines_requests() {
    const COUNT: u64 = 200;
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    let mut setup = Client::connect(&server).await;
    assert!(matches!(setup.register("ana", "secret12").await, Reply::User(_)));
    let create = Request::CreateSubject { title: "Load".into(), created_by: "ana".into() };
    let Reply::Subject(subject) = setup.request(create).await else { panic!("subject created") };

    let mut dealer = DealerSocket::new();
    dealer.connect(server.request_endpoint()).await.unwrap();
    for id in 1..=COUNT {
        // Alternate writes and reads, and frames with and without the empty delimiter.
        let request = if id.is_multiple_of(2) {
            Request::PostMessage { subject: subject.id, author: "ana".into(), text: format!("message {id}") }
        } else {
            Request::History { subject: subject.id }
        };
        let payload = Bytes::from(encode(&WireRequest { v: PROTOCOL_VERSION, id, request, client: None }));
        let frames = if id.is_multiple_of(3) { vec![Bytes::new(), payload] } else { vec![payload] };
        dealer.send(ZmqMessage::try_from(frames).unwrap()).await.unwrap();
    }

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for _ in 1..=COUNT {
        let message = tokio::time::timeout(PATIENCE, dealer.recv()).await.expect("a reply arrives in time").unwrap();
        let frames = message.into_vec();
        let payload = frames.last().unwrap();
        let reply: WireReply = decode(payload).unwrap();
        let expected_frames = if reply.id.is_multiple_of(3) { 2 } else { 1 };
        assert_eq!(frames.len(), expected_frames, "reply {} has the request's frame shape", reply.id);
        assert!(!matches!(reply.reply, Reply::Error(_)), "request {} failed: {:?}", reply.id, reply.reply);
        *seen.entry(reply.id).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, COUNT);
    assert!(seen.values().all(|count| *count == 1), "some id came back twice");
    assert!((1..=COUNT).all(|id| seen.contains_key(&id)));

    let Reply::Messages(history) = setup.request(Request::History { subject: subject.id }).await else { panic!("history") };
    assert_eq!(history.len() as u64, COUNT / 2);

    server.shutdown().await;
}

#[tokio::test]
async fn bad_payloads_get_error_replies() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    let mut client = Client::connect(&server).await;

    let garbage = client.send_raw(b"\xc1 not msgpack".to_vec()).await;
    assert_eq!(garbage.id, 0);
    assert_eq!(error_code(&garbage.reply), ErrorCode::Malformed);

    let other_version = client.send_raw(encode(&WireRequest { v: 99, id: 5, request: Request::Ping, client: None })).await;
    assert_eq!(other_version.id, 5, "the error reply carries the request's id");
    assert_eq!(error_code(&other_version.reply), ErrorCode::UnsupportedVersion);

    let huge_name = "a".repeat(MAX_REQUEST_BYTES);
    let huge = encode(&WireRequest {
        v: PROTOCOL_VERSION,
        id: 6,
        request: Request::Register { name: huge_name, password: "secret12".into() },
        client: None,
    });
    let too_large = client.send_raw(huge).await;
    assert_eq!(too_large.id, 6, "the error reply carries the request's id");
    assert_eq!(error_code(&too_large.reply), ErrorCode::InvalidInput);
    assert_eq!(client.request(Request::ListUsers).await, Reply::Users(vec![]), "the large request stored nothing");

    let mut dealer = DealerSocket::new();
    dealer.connect(server.request_endpoint()).await.unwrap();
    let extra_frames = vec![Bytes::new(), Bytes::from_static(b"one"), Bytes::from_static(b"two")];
    dealer.send(ZmqMessage::try_from(extra_frames).unwrap()).await.unwrap();
    let reply = tokio::time::timeout(PATIENCE, dealer.recv()).await.unwrap().unwrap();
    let reply: WireReply = decode(reply.into_vec().last().unwrap()).unwrap();
    assert_eq!(error_code(&reply.reply), ErrorCode::Malformed);

    assert_eq!(client.request(Request::Ping).await, Reply::Pong { server: 1 }, "the server keeps serving");
    server.shutdown().await;
}
