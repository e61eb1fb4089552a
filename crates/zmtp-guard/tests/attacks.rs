//! Each hostile client against a guarded ROUTER socket: the guard cuts the
//! connection, counts it, and a fresh REQ client still gets a reply in 1 s.
//!
//! Without the guard, the 73-byte size attack alone would abort this test
//! process: zeromq 0.7's decoder calls `BytesMut::reserve` with the declared
//! 2^45 bytes, the allocation fails, and Rust aborts on allocation failure.

mod common;

use std::time::Duration;

use common::{attacks, handshake, test_limits, Harness};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use zmtp_guard::Limits;

const PROMPT_CUT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn size_attack_cut() {
    let harness = Harness::start(test_limits()).await;
    let elapsed = attacks::size_attack(harness.address()).await;
    assert!(elapsed < PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(1).await;

    let elapsed = attacks::size_attack_after_ready(harness.address()).await;
    assert!(elapsed < PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(2).await;

    harness.assert_serves().await;
    harness.stop().await;
}

#[tokio::test]
async fn random_bytes_cut() {
    let harness = Harness::start(test_limits()).await;
    let elapsed = attacks::random_bytes(harness.address()).await;
    assert!(elapsed < PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(1).await;
    harness.assert_serves().await;
    harness.stop().await;
}

#[tokio::test]
async fn greeting_then_silence_cut() {
    let limits = test_limits();
    let timeout = limits.greeting_timeout;
    let harness = Harness::start(limits).await;
    let elapsed = attacks::greeting_then_silence(harness.address(), timeout).await;
    assert!(
        elapsed >= timeout,
        "cut after {elapsed:?}, before the {timeout:?} timeout"
    );
    assert!(elapsed < timeout + PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(1).await;
    harness.assert_serves().await;
    harness.stop().await;
}

#[tokio::test]
async fn incomplete_frame_header_cut() {
    let limits = test_limits();
    let timeout = limits.stalled_frame_timeout;
    let harness = Harness::start(limits).await;
    let elapsed = attacks::incomplete_frame_header(harness.address(), timeout).await;
    assert!(
        elapsed >= timeout,
        "cut after {elapsed:?}, before the {timeout:?} timeout"
    );
    assert!(elapsed < timeout + PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(1).await;
    harness.assert_serves().await;
    harness.stop().await;
}

#[tokio::test]
async fn incomplete_frame_body_cut() {
    let limits = test_limits();
    let timeout = limits.stalled_frame_timeout;
    let harness = Harness::start(limits).await;
    let elapsed = attacks::incomplete_frame_body(harness.address(), timeout).await;
    assert!(
        elapsed >= timeout,
        "cut after {elapsed:?}, before the {timeout:?} timeout"
    );
    assert!(elapsed < timeout + PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(1).await;
    harness.assert_serves().await;
    harness.stop().await;
}

/// A client that completes its handshake and then stays quiet is a normal
/// subscriber, so the guard keeps it open past both timeouts.
#[tokio::test]
async fn idle_between_messages_kept() {
    let limits = test_limits();
    let wait = limits.greeting_timeout.max(limits.stalled_frame_timeout) * 2;
    let harness = Harness::start(limits).await;

    let mut idle = TcpStream::connect(harness.address())
        .await
        .expect("connect to the guard");
    idle.write_all(&handshake())
        .await
        .expect("send the handshake");
    tokio::time::sleep(wait).await;

    assert_eq!(harness.guard.active_connections(), 1);
    assert_eq!(harness.guard.rejected_connections(), 0);
    harness.assert_serves().await;
    harness.stop().await;
}

#[tokio::test]
async fn million_tiny_frames_cut() {
    let harness = Harness::start(test_limits()).await;
    let (elapsed, _written) = attacks::million_tiny_frames(harness.address()).await;
    assert!(elapsed < PROMPT_CUT, "cut after {elapsed:?}");
    harness.wait_for_rejections(1).await;
    harness.assert_serves().await;
    harness.stop().await;
}

#[tokio::test]
async fn connection_flood_capped() {
    let limits = test_limits();
    let max_connections = limits.max_connections;
    let harness = Harness::start(limits).await;

    // Held connections complete the handshake, so no timeout closes them.
    let mut held_connections = Vec::with_capacity(max_connections);
    for _ in 0..max_connections {
        let mut stream = TcpStream::connect(harness.address())
            .await
            .expect("connect to the guard");
        stream
            .write_all(&handshake())
            .await
            .expect("send the handshake");
        held_connections.push(stream);
    }
    harness.wait_for_active(max_connections).await;

    let mut extra = TcpStream::connect(harness.address())
        .await
        .expect("connect to the guard");
    let started = std::time::Instant::now();
    let elapsed = attacks::wait_for_close(&mut extra, started, Duration::from_secs(1)).await;
    assert!(
        elapsed < PROMPT_CUT,
        "connection beyond the limit closed after {elapsed:?}"
    );
    harness.wait_for_rejections(1).await;
    assert_eq!(harness.guard.active_connections(), max_connections);

    drop(held_connections);
    harness.wait_for_active(0).await;
    harness.assert_serves().await;
    harness.stop().await;
}

/// A client that sends requests and never reads the replies is cut once the
/// guard has waited `stalled_read_timeout` to relay them. Without the cut the
/// replies would pile up in the zeromq socket behind the guard.
#[tokio::test]
async fn client_that_never_reads_cut() {
    let limits = Limits {
        stalled_read_timeout: Duration::from_millis(300),
        ..test_limits()
    };
    let harness = Harness::start(limits).await;

    // A small receive buffer fills after a few replies.
    let socket = TcpSocket::new_v4().expect("create a socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("shrink the receive buffer");
    let mut hostile = socket
        .connect(harness.address())
        .await
        .expect("connect to the guard");
    hostile
        .write_all(&handshake())
        .await
        .expect("send the handshake");
    // Messages of 16 KiB (long frames), 16 MiB in all, more than the socket
    // buffers on both sides of the guard can hold. Writing stops once the
    // guard cuts the connection.
    let mut message = vec![0x02];
    message.extend_from_slice(&(16u64 << 10).to_be_bytes());
    message.resize(message.len() + (16 << 10), b'x');
    let writer = tokio::spawn(async move {
        for _ in 0..1024 {
            if hostile.write_all(&message).await.is_err() {
                break;
            }
        }
        hostile
    });

    // Generous for a busy machine: the cut comes 300 ms after the buffers fill.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while harness.guard.rejected_connections() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guard did not cut a client that never reads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _hostile = writer.await.expect("the writer task");
    harness.wait_for_active(0).await;
    harness.assert_serves().await;
    harness.stop().await;
}
