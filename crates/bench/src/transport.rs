//! (a) The transport ceiling: raw zeromq DEALER→ROUTER request/reply and PUB→SUB
//! throughput between two processes, with messages the size of a forum post.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use forum_protocol::{encode, encode_feed_header, Change, ChangeId, ChangeKind, FeedNote, Message, WireChange, PROTOCOL_VERSION, TOPIC_WEBSERVER};
use zeromq::{Socket, SocketRecv, SubSocket};

use crate::children::ChildProcess;
use crate::data_client::{self, Bound};
use crate::forum::post_text;
use crate::report::Report;
use crate::Plan;

/// The time a new SUB socket is given to have its subscription reach the PUB side.
const SUBSCRIPTION_SETTLE: Duration = Duration::from_millis(300);
/// A PUB→SUB run ends when no message arrived for this long.
const IDLE_END: Duration = Duration::from_millis(500);

/// Returns the size of a `PostMessage` request carrying a post of `text_bytes` bytes.
pub fn post_request_size(text_bytes: usize) -> usize {
    data_client::post_request(u64::MAX / 2, ChangeId::new(1, 2), crate::forum::USER, post_text(u64::MAX / 2, text_bytes)).len()
}

/// Returns the sizes of the header and change frames of the `webserver` message that
/// publishes a post of `text_bytes` bytes.
pub fn published_post_sizes(text_bytes: usize) -> (usize, usize) {
    let id = ChangeId::new(1, 1_000_000);
    let message = Message {
        id,
        subject: ChangeId::new(1, 2),
        author: crate::forum::USER.into(),
        text: post_text(1_000_000, text_bytes),
        time: forum_protocol::now_millis(),
        lamport: 1_000_000,
    };
    let change = Change { id, lamport: message.lamport, time: message.time, kind: ChangeKind::MessagePosted { message }, key: None };
    let header = encode_feed_header(1, 1_000_000, FeedNote::default());
    (header.len(), encode(&WireChange { v: PROTOCOL_VERSION, change }).len())
}

pub async fn measure(plan: &Plan, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    Report::section("(a) transport ceiling: raw zeromq between two processes");
    let request_bytes = post_request_size(plan.text_bytes);
    let (header_bytes, change_bytes) = published_post_sizes(plan.text_bytes);
    report.add("transport.request_bytes", "size of a post request (DEALER/ROUTER payload)", "bytes", vec![request_bytes as f64]);
    report.add("transport.header_bytes", "size of a published post's header frame (PUB/SUB)", "bytes", vec![header_bytes as f64]);
    report.add("transport.change_bytes", "size of a published post's change frame (PUB/SUB)", "bytes", vec![change_bytes as f64]);

    let echo = ChildProcess::start("echo peer", &["echo".to_owned()], &scratch.join("echo.log")).await?;
    let endpoint = echo.addresses[0].clone();
    let mut rates = Vec::new();
    for _ in 0..plan.runs {
        let payload = Bytes::from(vec![b'x'; request_bytes]);
        let result = data_client::load(
            std::slice::from_ref(&endpoint),
            plan.write_connections,
            plan.write_window,
            Bound::Time(plan.run_length),
            move |_| payload.clone(),
            |_| true,
        )
        .await?;
        rates.push(result.per_second());
    }
    echo.stop().await?;
    report.add(
        "transport.dealer_router.per_second",
        &format!("DEALER→ROUTER echo, {} connections × {} in flight", plan.write_connections, plan.write_window),
        "replies/s",
        rates,
    );

    let count = (if plan.quick { 20_000 } else { 200_000 }) as u64;
    let arguments =
        vec!["publish".to_owned(), format!("--count={count}"), format!("--header-bytes={header_bytes}"), format!("--bytes={change_bytes}")];
    let mut publisher = ChildProcess::start("publisher peer", &arguments, &scratch.join("publish.log")).await?;
    let mut subscriber = SubSocket::new();
    subscriber.connect(&publisher.addresses[0]).await.context("failed to connect to the publisher peer")?;
    subscriber.subscribe(TOPIC_WEBSERVER).await?;
    tokio::time::sleep(SUBSCRIPTION_SETTLE).await;
    let mut rates = Vec::new();
    let mut delivered = Vec::new();
    for _ in 0..plan.runs {
        publisher.send_line("go").await?;
        let (received, elapsed) = receive_burst(&mut subscriber, count).await?;
        rates.push(received as f64 / elapsed.as_secs_f64());
        delivered.push(received as f64 / count as f64);
    }
    drop(subscriber);
    publisher.stop().await?;
    report.add("transport.pub_sub.per_second", &format!("PUB→SUB, bursts of {count} messages"), "messages/s", rates);
    report.add("transport.pub_sub.delivered_fraction", "PUB→SUB, fraction of a burst received", "", delivered);
    Ok(())
}

/// Receives one burst of up to `count` messages and returns how many arrived and the time
/// from the first to the last.
async fn receive_burst(subscriber: &mut SubSocket, count: u64) -> anyhow::Result<(u64, Duration)> {
    let first = tokio::time::timeout(Duration::from_secs(10), subscriber.recv())
        .await
        .context("no message from the publisher peer within 10 s")??;
    drop(first);
    let started = Instant::now();
    let mut received = 1u64;
    let mut last = started;
    while received < count {
        match tokio::time::timeout(IDLE_END, subscriber.recv()).await {
            Ok(message) => {
                message?;
                received += 1;
                last = Instant::now();
            }
            Err(_) => break,
        }
    }
    Ok((received, last.duration_since(started).max(Duration::from_micros(1))))
}
