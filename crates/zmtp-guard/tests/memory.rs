//! Runs every attack three times in a row against one guarded ROUTER socket
//! and bounds the growth of this process's resident memory.
//!
//! This file is its own test binary, so no other test allocates in the
//! process while it measures. Run with `--nocapture` to see the timings.

mod common;

use std::time::{Duration, Instant};

use common::{attacks, handshake, resident_bytes, test_limits, Harness};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bound on resident memory growth across all rounds of attacks. The 1,000
/// held_connections connections alone cost the guard 16 KiB of relay buffers each, about
/// 16 MiB, plus what the zeromq server keeps per peer.
const MAX_GROWTH_BYTES: u64 = 64 << 20;

const ROUNDS: usize = 3;

#[tokio::test]
async fn attacks_bounded_memory() {
    let limits = test_limits();
    let greeting_timeout = limits.greeting_timeout;
    let stalled_timeout = limits.stalled_frame_timeout;
    let max_connections = limits.max_connections;
    let harness = Harness::start(limits).await;
    harness.assert_serves().await;
    let before = resident_bytes();

    let mut expected_rejections = 0;
    for round in 1..=ROUNDS {
        let mut timings: Vec<(&str, Duration)> = Vec::new();
        let target = harness.address();

        timings.push(("73-byte size attack", attacks::size_attack(target).await));
        timings.push((
            "size attack after READY",
            attacks::size_attack_after_ready(target).await,
        ));
        timings.push(("64 KiB random bytes", attacks::random_bytes(target).await));
        timings.push((
            "greeting then silence",
            attacks::greeting_then_silence(target, greeting_timeout).await,
        ));
        timings.push((
            "incomplete frame header",
            attacks::incomplete_frame_header(target, stalled_timeout).await,
        ));
        timings.push((
            "incomplete frame body",
            attacks::incomplete_frame_body(target, stalled_timeout).await,
        ));
        timings.push((
            "million tiny frames",
            attacks::million_tiny_frames(target).await.0,
        ));
        expected_rejections += 7;

        let started = Instant::now();
        let mut held_connections = Vec::with_capacity(max_connections);
        for _ in 0..max_connections {
            let mut stream = TcpStream::connect(target)
                .await
                .expect("connect to the guard");
            stream
                .write_all(&handshake())
                .await
                .expect("send the handshake");
            held_connections.push(stream);
        }
        harness.wait_for_active(max_connections).await;
        let mut extra = TcpStream::connect(target)
            .await
            .expect("connect to the guard");
        attacks::wait_for_close(&mut extra, Instant::now(), Duration::from_secs(1)).await;
        let during_flood = resident_bytes();
        drop(held_connections);
        harness.wait_for_active(0).await;
        timings.push(("1,000 held_connections connections + 1", started.elapsed()));
        expected_rejections += 1;

        harness.wait_for_rejections(expected_rejections).await;
        let reply_time = harness.assert_serves().await;

        eprintln!("round {round}:");
        for (attack, elapsed) in &timings {
            eprintln!("  {attack:<28} {:>8.1} ms", elapsed.as_secs_f64() * 1e3);
        }
        eprintln!(
            "  fresh REQ round trip         {:>8.1} ms",
            reply_time.as_secs_f64() * 1e3
        );
        eprintln!(
            "  VmRSS during the flood       {:>8.1} MiB",
            during_flood as f64 / (1 << 20) as f64
        );
    }

    let after = resident_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "VmRSS before {:.1} MiB, after {:.1} MiB, growth {:.1} MiB",
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        growth as f64 / (1 << 20) as f64
    );
    assert!(
        growth < MAX_GROWTH_BYTES,
        "resident memory grew by {growth} bytes, more than {MAX_GROWTH_BYTES}"
    );
    harness.stop().await;
}
