//! Event streams that reconnect: `Last-Event-ID` replays exactly the missed events, also
//! after a web server restart; a gap that is too old, or an id of another data server, gets
//! `resync`; a browser that stops reading is dropped and resumes later.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, start_web_server, Event, EventStream, Group, WebClient};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The replay limit of the web server, `MAX_REPLAY` in `crates/webserver/src/events.rs`.
const MAX_REPLAY: usize = 1000;

/// Waits for the post event with `text`, returning it.
async fn post_event(stream: &mut EventStream, text: &str) -> Event {
    stream.expect("post", |data| data["text"] == text).await
}

/// Returns the events of kinds other than keep-alive noise (presence), until `window` passes.
async fn posts_within(stream: &mut EventStream, window: Duration) -> Vec<Event> {
    stream.collect_for(window).await.into_iter().filter(|event| event.kind != "presence").collect()
}

/// Posts `count` messages with up to 32 in flight at once.
async fn post_many(author: &WebClient, subject: &str, count: usize, text: impl Fn(usize) -> String) {
    let path = format!("/api/subjects/{subject}/messages");
    futures::stream::iter(0..count)
        .map(|index| {
            let author = author.clone();
            let path = path.clone();
            let body = json!({"text": text(index)});
            async move {
                let response = author.post(&path, body).await;
                assert_eq!(response.status, 201, "{response:?}");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_replays_missed_events() {
    let mut group = Group::start(1).await;
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject("Resume").await;

    let mut stream = ana.events().await;
    ana.post_message(&subject, "seen").await;
    let last_seen = post_event(&mut stream, "seen").await.id.expect("events have ids");
    drop(stream);

    for text in ["missed 1", "missed 2", "missed 3"] {
        ana.post_message(&subject, text).await;
    }
    let mut resumed = ana.events_after(Some(&last_seen)).await;
    let replayed = posts_within(&mut resumed, Duration::from_millis(500)).await;
    let texts: Vec<&str> = replayed.iter().map(|event| event.data["text"].as_str().unwrap_or(event.kind.as_str())).collect();
    assert_eq!(texts, ["missed 1", "missed 2", "missed 3"], "exactly the missed events, in order");

    ana.post_message(&subject, "live").await;
    let live = post_event(&mut resumed, "live").await;
    let after_live = posts_within(&mut resumed, Duration::from_millis(300)).await;
    assert!(after_live.is_empty(), "nothing is sent twice: {after_live:?}");
    let last_seen = live.id.expect("events have ids");
    drop(resumed);

    // The ids survive a web server restart: they are positions in the data server's feed.
    let old_web = group.nodes[0].web.local_addr();
    let restarted = start_web_server(&group.nodes[0].data, "web-1-again").await;
    let web = std::mem::replace(&mut group.nodes[0].web, restarted);
    web.shutdown().await;
    let ana_again = ana.same_browser_at(group.nodes[0].web.local_addr());
    assert_ne!(old_web, group.nodes[0].web.local_addr());
    ana_again.post_message(&subject, "while restarting").await;
    let mut after_restart = ana_again.events_after(Some(&last_seen)).await;
    let replayed = posts_within(&mut after_restart, Duration::from_millis(500)).await;
    let texts: Vec<&str> = replayed.iter().map(|event| event.data["text"].as_str().unwrap_or(event.kind.as_str())).collect();
    assert_eq!(texts, ["while restarting"], "a restarted web server replays from the same ids");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_when_gap_too_old_or_foreign() {
    let group = Group::start(1).await;
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject("Busy").await;

    let mut stream = ana.events().await;
    ana.post_message(&subject, "seen").await;
    let last_seen = post_event(&mut stream, "seen").await.id.expect("events have ids");
    drop(stream);

    post_many(&ana, &subject, MAX_REPLAY + 10, |index| format!("flood {index}")).await;
    let mut resumed = ana.events_after(Some(&last_seen)).await;
    let first = resumed.next().await.expect("the stream stays open");
    assert_eq!(first.kind, "resync", "a gap beyond the replay limit gets resync first: {first:?}");
    ana.post_message(&subject, "after the resync").await;
    post_event(&mut resumed, "after the resync").await;

    for foreign in ["999:1", "not an id"] {
        let mut stream = ana.events_after(Some(foreign)).await;
        let first = stream.next().await.expect("the stream stays open");
        assert_eq!(first.kind, "resync", "Last-Event-ID {foreign:?}: {first:?}");
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stuck_event_stream_is_dropped() {
    let group = Group::start(1).await;
    let ana = group.web(0).user("ana").await;
    let subject = ana.create_subject("Flood").await;
    let web = &group.nodes[0].web;

    // A browser that opens the stream and never reads: a small receive buffer makes the
    // kernel hold little for it.
    let socket = tokio::net::TcpSocket::new_v4().expect("creating a socket");
    socket.set_recv_buffer_size(4096).expect("shrinking the receive buffer");
    let mut stuck = socket.connect(web.local_addr()).await.expect("connecting");
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n", web.local_addr());
    stuck.write_all(request.as_bytes()).await.expect("sending the request");
    eventually("the stuck stream is open", || async { web.open_streams() == 1 }).await;

    // Each post is about 4 KiB of event data, so the flood is far more than the kernel
    // buffers, the stream's queue and the broadcast hold together.
    let sent = 3000;
    let text = "x".repeat(4000);
    let started = Instant::now();
    post_many(&ana, &subject, sent, |index| format!("{index} {text}")).await;
    println!("posted {sent} messages in {:?}", started.elapsed());
    eventually("the stuck stream is closed", || async { web.open_streams() == 0 }).await;

    // Reading now yields what was buffered before the drop, then the end of the stream.
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stuck.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) => break,
            Ok(Ok(count)) => received.extend_from_slice(&buffer[..count]),
            Ok(Err(error)) => panic!("reading the stuck stream: {error}"),
            Err(_) => panic!("the dropped stream did not end"),
        }
    }
    let events = String::from_utf8_lossy(&received).matches("event:post").count();
    println!("the stuck stream got {events} of {sent} posts before it was dropped ({} bytes)", received.len());
    assert!(events < sent / 2, "a stuck stream got {events} of {sent} posts; its queue is not bounded");

    // The browser comes back, from where it stopped, and resynchronises.
    let mut back = ana.events_after(Some("1:1")).await;
    let first = back.next().await.expect("the stream is open");
    assert_eq!(first.kind, "resync", "{first:?}");
    group.shutdown().await;
}
