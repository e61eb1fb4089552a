//! A restart on the same data directory keeps the forum and continues its ids.

mod support;

use forum_protocol::{Reply, Request, UserStatus};
use support::{start, Client};

#[tokio::test]
async fn restart_keeps_forum_and_ids() {
    let directory = tempfile::tempdir().unwrap();
    let server = start(3, directory.path()).await;
    let mut client = Client::connect(&server).await;
    let Reply::User(ana) = client.register("ana", "secret12").await else { panic!("ana registers") };
    assert!(matches!(client.register("bob", "secret12").await, Reply::User(_)));
    let create = Request::CreateSubject { title: "Exams".into(), created_by: "ana".into() };
    let Reply::Subject(exams) = client.request(create).await else { panic!("subject created") };
    let post = Request::PostMessage { subject: exams.id, author: "bob".into(), text: "before".into() };
    let Reply::Message(before) = client.request(post).await else { panic!("post") };
    let send = Request::SendPrivate { from: "ana".into(), to: "bob".into(), text: "psst".into() };
    let Reply::PrivateMessage(private) = client.request(send).await else { panic!("private") };
    let online = Request::SetPresence { user: "bob".into(), webserver: "web-1".into(), online: true };
    assert_eq!(client.request(online).await, Reply::Done);
    drop(client);
    server.shutdown().await;

    let server = start(3, directory.path()).await;
    let mut client = Client::connect(&server).await;
    let users = vec![UserStatus { name: "ana".into(), online: false }, UserStatus { name: "bob".into(), online: true }];
    assert_eq!(client.request(Request::ListUsers).await, Reply::Users(users));
    assert_eq!(client.request(Request::ListSubjects).await, Reply::Subjects(vec![exams.clone()]));
    let login = Request::Login { name: "ana".into(), password: "secret12".into() };
    assert_eq!(client.request(login).await, Reply::User(ana));
    let conversation = Request::PrivateHistory { user: "ana".into(), other: "bob".into(), before: None, limit: None };
    assert_eq!(client.request(conversation).await, Reply::PrivateMessages(vec![private.clone()]));

    let post = Request::PostMessage { subject: exams.id, author: "ana".into(), text: "after".into() };
    let Reply::Message(after) = client.request(post).await else { panic!("post after restart") };
    assert_eq!(after.id.origin, 3);
    assert!(after.id.seq > private.id.seq, "{} reuses an old sequence number", after.id);
    assert!(after.lamport > private.lamport, "the Lamport clock continues");
    let history = Request::History { subject: exams.id, before: None, limit: None };
    assert_eq!(client.request(history).await, Reply::Messages(vec![before, after]));
    server.shutdown().await;
}
