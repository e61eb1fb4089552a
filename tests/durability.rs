//! Stopping a data server process while pipelined writes are in flight: a kill -9 or a
//! SIGTERM must lose no acknowledged write and leave no gap in the server's own sequence
//! numbers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::Cluster;
use forum_protocol::{ChangeId, Reply, Request};

/// Concurrent clients, each pipelining this many posts at a time.
const WRITERS: usize = 4;
const PIPELINE: usize = 10;

/// How long the writers run before the server is stopped.
const LOAD_TIME: Duration = Duration::from_millis(1500);

/// Starts one server with a user and a subject, and returns the subject's id.
async fn seeded_server() -> (Cluster, ChangeId) {
    let cluster = Cluster::start(1).await;
    let mut client = cluster.client(0);
    let register = Request::Register { name: "ana".into(), password: "password-of-ana".into() };
    assert!(matches!(client.expect("registering", register).await, Reply::User(_)));
    let create = Request::CreateSubject { title: "Load".into(), created_by: "ana".into() };
    let Reply::Subject(subject) = client.expect("creating a subject", create).await else { panic!("the subject is created") };
    (cluster, subject.id)
}

/// Starts writers that post until `stop` is set or a pipeline fails, and returns, per writer,
/// the ids of the posts that were acknowledged.
fn start_writers(cluster: &Cluster, subject: ChangeId, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<ChangeId>>> {
    (0..WRITERS)
        .map(|writer| {
            let mut client = cluster.client(0);
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut round = 0;
                while !stop.load(Ordering::Acquire) {
                    let requests = (0..PIPELINE)
                        .map(|number| Request::PostMessage { subject, author: "ana".into(), text: format!("w{writer} r{round} n{number}") })
                        .collect();
                    let Some(replies) = client.pipeline(requests).await else { break };
                    for reply in replies {
                        match reply {
                            Reply::Message(message) => acknowledged.push(message.id),
                            other => panic!("writer {writer} expected a posted message, got {other:?}"),
                        }
                    }
                    round += 1;
                }
                acknowledged
            })
        })
        .collect()
}

/// Restarts the server and checks that it contains every acknowledged post, and that its own
/// changes are numbered 1 to N without a gap: the user, the subject, then the posts.
async fn assert_restart_holds(cluster: &mut Cluster, acknowledged: &[ChangeId]) {
    cluster.restart(0).await;
    let snapshot = cluster.snapshot(0).await.expect("the restarted server answers");
    let stored = snapshot.message_ids();
    let stored_set: std::collections::HashSet<ChangeId> = stored.iter().copied().collect();
    let missing: Vec<&ChangeId> = acknowledged.iter().filter(|id| !stored_set.contains(id)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged posts are missing, such as {:?}", missing.len(), acknowledged.len(), missing.first());

    let mut sequence_numbers: Vec<u64> = stored.iter().map(|id| id.seq).collect();
    sequence_numbers.sort_unstable();
    let expected: Vec<u64> = (3..3 + stored.len() as u64).collect();
    assert_eq!(sequence_numbers, expected, "the stored posts' sequence numbers have a gap");
    assert_eq!(snapshot.vector.get(&1), Some(&(2 + stored.len() as u64)), "the version vector");
}

async fn acknowledged_by(writers: Vec<tokio::task::JoinHandle<Vec<ChangeId>>>) -> Vec<ChangeId> {
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("a writer task panicked"));
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_under_load_keeps_acknowledged() {
    let (mut cluster, subject) = seeded_server().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&cluster, subject, &stop);
    tokio::time::sleep(LOAD_TIME).await;

    cluster.kill(0);
    stop.store(true, Ordering::Release);
    let acknowledged = acknowledged_by(writers).await;
    assert!(acknowledged.len() >= PIPELINE, "the writers were acknowledged only {} posts", acknowledged.len());

    assert_restart_holds(&mut cluster, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_under_load_keeps_acknowledged() {
    let (mut cluster, subject) = seeded_server().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&cluster, subject, &stop);
    tokio::time::sleep(LOAD_TIME).await;

    let status = cluster.terminate(0);
    stop.store(true, Ordering::Release);
    assert!(status.success(), "the server exited with {status} after SIGTERM; its log:\n{}", cluster.log(0));
    let log = cluster.log(0);
    assert!(log.contains("data server stopped"), "the log does not show a clean stop:\n{log}");
    let acknowledged = acknowledged_by(writers).await;
    assert!(acknowledged.len() >= PIPELINE, "the writers were acknowledged only {} posts", acknowledged.len());

    assert_restart_holds(&mut cluster, &acknowledged).await;
}
