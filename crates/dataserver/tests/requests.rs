//! Requests over real sockets: a REQ client walking through the forum, a pipelining DEALER,
//! and payloads that must be rejected without harm.

mod support;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use forum_dataserver::{MAX_IN_FLIGHT, MAX_REQUEST_BYTES};
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
    assert_eq!(client.request(Request::History { subject: exams.id, before: None, limit: None }).await, Reply::Messages(vec![first, second]));

    let send = Request::SendPrivate { from: "ana".into(), to: "BOB".into(), text: "psst".into() };
    let Reply::PrivateMessage(private) = client.request(send).await else { panic!("private message sent") };
    assert_eq!(private.to, "bob");
    let unknown_recipient = Request::SendPrivate { from: "ana".into(), to: "nobody".into(), text: "psst".into() };
    assert_eq!(error_code(&client.request(unknown_recipient).await), ErrorCode::UnknownUser);
    let conversation = Request::PrivateHistory { user: "bob".into(), other: "ana".into(), before: None, limit: None };
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
            Request::History { subject: subject.id, before: None, limit: None }
        };
        let payload = Bytes::from(encode(&WireRequest { v: PROTOCOL_VERSION, id, request, client: None, brief: false }));
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

    let Reply::Messages(history) = setup.request(Request::History { subject: subject.id, before: None, limit: None }).await else { panic!("history") };
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

    let other_version = client.send_raw(encode(&WireRequest { v: 99, id: 5, request: Request::Ping, client: None, brief: false })).await;
    assert_eq!(other_version.id, 5, "the error reply carries the request's id");
    assert_eq!(error_code(&other_version.reply), ErrorCode::UnsupportedVersion);

    let huge_name = "a".repeat(MAX_REQUEST_BYTES);
    let huge = encode(&WireRequest {
        v: PROTOCOL_VERSION,
        id: 6,
        request: Request::Register { name: huge_name, password: "secret12".into() },
        client: None,
        brief: false,
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

/// Sends one request on a DEALER socket, without the empty delimiter.
async fn send_on_dealer(dealer: &mut DealerSocket, id: u64, request: Request) {
    let payload = encode(&WireRequest { v: PROTOCOL_VERSION, id, request, client: None, brief: false });
    dealer.send(ZmqMessage::from(payload)).await.unwrap();
}

async fn receive_on_dealer(dealer: &mut DealerSocket) -> WireReply {
    let message = tokio::time::timeout(PATIENCE, dealer.recv()).await.expect("a reply arrives in time").unwrap();
    decode(message.into_vec().last().unwrap()).expect("the reply decodes")
}

/// Registrations hash their passwords with argon2 two at a time, so a burst of them stays in
/// flight long enough to fill the bound. Every request beyond the bound gets `Overloaded`
/// with its own id, and the server goes on serving once a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_bound_get_overloaded() {
    const EXTRA: u64 = 200;
    let total = MAX_IN_FLIGHT as u64 + EXTRA;
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;

    let mut dealer = DealerSocket::new();
    dealer.connect(server.request_endpoint()).await.unwrap();
    for id in 1..=total {
        send_on_dealer(&mut dealer, id, Request::Register { name: format!("user{id}"), password: "secret12".into() }).await;
    }

    // The Overloaded replies are sent at once, while the admitted registrations still hash.
    let mut overloaded = HashSet::new();
    let mut other_replies = 0;
    while overloaded.len() + other_replies < total as usize {
        let reply = receive_on_dealer(&mut dealer).await;
        match reply.reply {
            Reply::Error(ErrorReply { code: ErrorCode::Overloaded, .. }) => {
                assert!(reply.id > MAX_IN_FLIGHT as u64, "request {} was rejected although it was within the bound", reply.id);
                assert!(reply.id <= total, "an Overloaded reply carries the unknown id {}", reply.id);
                assert!(overloaded.insert(reply.id), "request {} got two Overloaded replies", reply.id);
            }
            Reply::User(_) => other_replies += 1,
            other => panic!("unexpected reply to request {}: {other:?}", reply.id),
        }
        // The hashing finishes tens of registrations per second per core (an estimate), so
        // most of the extra ones meet a full bound. Waiting for all the admitted ones would
        // take too long.
        if other_replies >= 1 && overloaded.len() as u64 >= EXTRA / 2 {
            break;
        }
    }
    assert!(overloaded.len() as u64 >= EXTRA / 2, "only {} of {EXTRA} extra requests got Overloaded", overloaded.len());

    let mut client = Client::connect(&server).await;
    support::wait_for_reply("a ping is served again", &mut client, || Request::Ping, |reply| *reply == Reply::Pong { server: 1 }).await;

    server.shutdown().await;
}

/// A registration waiting for its password hash holds up neither a ping pipelined behind it
/// on the same connection nor a request on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_register_does_not_stall_others() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    let mut dealer = DealerSocket::new();
    dealer.connect(server.request_endpoint()).await.unwrap();

    // Each hash takes tens of milliseconds (an estimate for argon2's defaults), so the
    // pipelined ping arrives while most of these still wait for a hash.
    const REGISTRATIONS: u64 = 64;
    for id in 1..=REGISTRATIONS {
        send_on_dealer(&mut dealer, id, Request::Register { name: format!("user{id}"), password: "secret12".into() }).await;
    }
    let ping_id = REGISTRATIONS + 1;
    send_on_dealer(&mut dealer, ping_id, Request::Ping).await;

    let mut client = Client::connect(&server).await;
    let started = std::time::Instant::now();
    assert_eq!(client.request(Request::Ping).await, Reply::Pong { server: 1 });
    let other_connection = started.elapsed();

    let mut registered_before_ping = 0;
    loop {
        let reply = receive_on_dealer(&mut dealer).await;
        if reply.id == ping_id {
            assert_eq!(reply.reply, Reply::Pong { server: 1 });
            break;
        }
        assert!(matches!(reply.reply, Reply::User(_)), "registration {} failed: {:?}", reply.id, reply.reply);
        registered_before_ping += 1;
    }
    assert!(
        registered_before_ping < REGISTRATIONS / 2,
        "the pipelined ping waited for {registered_before_ping} of {REGISTRATIONS} registrations"
    );
    assert!(other_connection < std::time::Duration::from_secs(1), "a ping on another connection took {other_connection:?}");

    server.shutdown().await;
}

/// Hostile payloads that the tests above do not send: deep nesting, a second `v` field, a
/// version in a wider integer form, text that is not UTF-8 and containers that declare more
/// items than follow. Each gets an error reply with the request's id when it has one.
#[tokio::test]
async fn hostile_payloads_get_error_replies() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;
    let mut client = Client::connect(&server).await;

    let mut deep = b"\x84\xa1v\x01\xa2id\x09\xa6client\xc0\xa7request".to_vec();
    deep.extend(std::iter::repeat_n(0x91, 1000));
    deep.push(0xc0);
    let cases: Vec<(&str, Vec<u8>, u64, ErrorCode)> = vec![
        ("deep nesting", deep, 0, ErrorCode::Malformed),
        ("a second v field", b"\x84\xa1v\x01\xa2id\x05\xa7request\xa4Ping\xa1v\x01".to_vec(), 5, ErrorCode::Malformed),
        ("a later v of another version", b"\x84\xa1v\x01\xa2id\x05\xa7request\xa4Ping\xa1v\x02".to_vec(), 5, ErrorCode::Malformed),
        ("an empty map", b"\x80".to_vec(), 0, ErrorCode::Malformed),
        ("a map that declares more entries than follow", b"\x8f\xa1v\x01".to_vec(), 0, ErrorCode::Malformed),
        ("a 32-bit array length", b"\xdd\xff\xff\xff\xff".to_vec(), 0, ErrorCode::Malformed),
        ("version 0", b"\x83\xa1v\x00\xa2id\x07\xa7request\xa4Ping".to_vec(), 7, ErrorCode::UnsupportedVersion),
        ("a negative version", b"\x83\xa1v\xff\xa2id\x07\xa7request\xa4Ping".to_vec(), 7, ErrorCode::Malformed),
        (
            "a name that is not UTF-8",
            b"\x83\xa1v\x01\xa2id\x08\xa7request\x81\xa8Register\x82\xa4name\xa2\xff\xfe\xa8password\xa8secret12".to_vec(),
            8,
            ErrorCode::Malformed,
        ),
    ];
    for (what, payload, id, code) in cases {
        let reply = client.send_raw(payload).await;
        assert_eq!(reply.id, id, "the reply to {what} carries the request's id");
        assert_eq!(error_code(&reply.reply), code, "the reply to {what}");
    }

    // A version written as a uint8 is valid MessagePack and takes the general decoding.
    let wide = client.send_raw(b"\x83\xa1v\xcc\x01\xa2id\x05\xa7request\xa4Ping".to_vec()).await;
    assert_eq!((wide.id, wide.reply), (5, Reply::Pong { server: 1 }));

    assert_eq!(client.request(Request::ListUsers).await, Reply::Users(vec![]), "no hostile request stored anything");
    server.shutdown().await;
}

/// A client that sends requests and never reads the replies must not stall the others.
///
/// A burst of 300,000 pings from a DEALER that never reads once stopped the data server for
/// good, when one task sent every reply from one bounded queue. Each connection now writes
/// its own replies, so the other client should get its reply at once. The hostile client is
/// cut after `stalled_read_timeout` (10 s). The test allows 5 s, less than that timeout, so
/// it fails if the other client's reply had to wait for the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_stalls_nobody() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(1, directory.path()).await;

    let mut hostile = DealerSocket::new();
    hostile.connect(server.request_endpoint()).await.unwrap();
    for id in 1..=300_000 {
        send_on_dealer(&mut hostile, id, Request::Ping).await;
    }
    // Let the server work through the burst, so that its replies pile up.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;

    let mut other = DealerSocket::new();
    other.connect(server.request_endpoint()).await.unwrap();
    send_on_dealer(&mut other, 1, Request::Ping).await;
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), other.recv())
        .await
        .expect("the other client gets a reply within 5 s while the hostile one never reads")
        .unwrap();
    let reply: WireReply = decode(message.into_vec().last().unwrap()).expect("the reply decodes");
    assert_eq!(reply.reply, Reply::Pong { server: 1 });
    drop(hostile);
    server.shutdown().await;
}

/// With `brief`, a new post or private message gets `Stored`, and a retried write gets the
/// whole message it stored. Without `brief`, a post gets the whole message.
#[tokio::test]
async fn brief_replies_to_stored_messages() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(4, directory.path()).await;
    let mut client = Client::connect(&server).await;
    assert!(matches!(client.register("ana", "secret12").await, Reply::User(_)));
    assert!(matches!(client.register("bob", "secret12").await, Reply::User(_)));
    let Reply::Subject(subject) = client.request(Request::CreateSubject { title: "Brief".into(), created_by: "ana".into() }).await else {
        panic!("the subject is created")
    };
    let mut send = async |id, request: Request, brief| {
        let payload = encode(&WireRequest { v: PROTOCOL_VERSION, id, request, client: Some(11), brief });
        client.send_raw(payload).await.reply
    };
    let post = || Request::PostMessage { subject: subject.id, author: "ANA".into(), text: "hola".into() };

    let Reply::Stored(stored) = send(100, post(), true).await else { panic!("a brief reply to a new post") };
    assert_eq!(stored.subject, None, "the post went to the subject it named");
    assert_eq!(stored.author.as_deref(), Some("ana"), "the request spelled the name otherwise");
    let message = stored.clone().message(subject.id, "ANA".into(), "hola".into());

    let retried = send(100, post(), true).await;
    assert_eq!(retried, Reply::Message(message.clone()), "a retry gets the whole message it stored");
    let Reply::Message(whole) = send(101, post(), false).await else { panic!("the whole message without the flag") };
    assert_eq!((whole.author.as_str(), whole.text.as_str()), ("ana", "hola"));

    let private = Request::SendPrivate { from: "bob".into(), to: "ana".into(), text: "hi".into() };
    let Reply::Stored(stored) = send(102, private, true).await else { panic!("a brief reply to a new private message") };
    assert_eq!((stored.author, stored.to), (None, None), "both names as registered");

    let Reply::MessagePage(page) = client.request(Request::History { subject: subject.id, before: None, limit: Some(10) }).await else {
        panic!("a page")
    };
    assert_eq!(page.messages[0], message, "the message rebuilt from the brief reply is the stored one");
    server.shutdown().await;
}
