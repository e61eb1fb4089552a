//! (d) Fan-out: many event-stream clients on one web server. It measures the web server's
//! resident memory per stream, and the time for one post to reach every stream.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use serde_json::json;

use crate::forum::{self, post_text, PASSWORD, USER};
use crate::report::Report;
use crate::sse::{self, PostSink};
use crate::Plan;

/// Streams being opened at once.
const OPENING_AT_ONCE: usize = 200;
/// How long the web server is given to settle after the last stream opened, before its
/// memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How long one post may take to reach every stream.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The arrival times of the post being measured.
struct Arrivals {
    /// The sequence number of the post being measured.
    seq: AtomicU64,
    sent_at: Mutex<Option<Instant>>,
    delays: Mutex<Vec<Duration>>,
}

impl PostSink for Arrivals {
    fn post(&self, _stream: usize, seq: u64, at: Instant) {
        if seq != self.seq.load(Ordering::Acquire) {
            return;
        }
        if let Some(sent_at) = *self.sent_at.lock().expect("the lock is never poisoned") {
            self.delays.lock().expect("the lock is never poisoned").push(at.duration_since(sent_at));
        }
    }
}

pub async fn measure(plan: &Plan, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    Report::section(&format!("(d) fan-out: {} event streams on one web server", plan.fan_out_streams));
    let data_servers = forum::start_data_group(1, scratch, "fan-out").await?;
    let web = forum::start_web(&data_servers[0], "fan-out-web", scratch).await?;
    let result = measure_with(plan, &web, report).await;
    let mut processes = vec![web];
    processes.extend(data_servers.into_iter().map(|server| server.process));
    forum::stop_all(processes).await?;
    result
}

async fn measure_with(plan: &Plan, web: &crate::children::ChildProcess, report: &mut Report) -> anyhow::Result<()> {
    let address: std::net::SocketAddr = web.addresses[0].parse().context("the web server printed an invalid address")?;
    let client = reqwest::Client::new();
    let credentials = json!({ "name": USER, "password": PASSWORD });
    let response = client.post(format!("http://{address}/api/users")).json(&credentials).send().await?;
    if !matches!(response.status().as_u16(), 201 | 409) {
        bail!("registering the bench user failed with {}", response.status());
    }
    let response = client.post(format!("http://{address}/api/login")).json(&credentials).send().await?;
    let cookie = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| value.split(';').next().filter(|pair| pair.starts_with("forum_session=")))
        .map(str::to_owned)
        .context("the login set no forum_session cookie")?;
    let response = client
        .post(format!("http://{address}/api/subjects"))
        .header("Cookie", &cookie)
        .json(&json!({ "title": "Fan-out benchmark" }))
        .send()
        .await?;
    let subject: serde_json::Value = response.json().await?;
    let subject = subject["id"].as_str().context("the created subject has no id")?.to_owned();

    let arrivals = Arc::new(Arrivals { seq: AtomicU64::new(0), sent_at: Mutex::new(None), delays: Mutex::new(Vec::new()) });
    tokio::time::sleep(SETTLE).await;
    let before_kib = web.resident_kib()?;
    let opening_started = Instant::now();
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> = stream::iter(0..plan.fan_out_streams)
        .map(|index| {
            let sink: Arc<dyn PostSink> = arrivals.clone();
            sse::open(address, index, sink)
        })
        .buffer_unordered(OPENING_AT_ONCE)
        .collect()
        .await;
    let opening_time = opening_started.elapsed();
    let streams = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    tokio::time::sleep(SETTLE).await;
    let after_kib = web.resident_kib()?;
    let per_stream_kib = after_kib.saturating_sub(before_kib) as f64 / streams.len() as f64;
    report.add("fan_out.open_seconds", "time to open every stream", "s", vec![opening_time.as_secs_f64()]);
    report.add("fan_out.web_resident_mib", "web server resident memory with every stream open", "MiB", vec![after_kib as f64 / 1024.0]);
    report.add("fan_out.kib_per_stream", "web server resident memory per stream", "KiB", vec![per_stream_kib]);

    let runs = plan.runs.max(3);
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut reached = Vec::new();
    for run in 0..runs {
        let seq = 1_000_000 + u64::from(run);
        arrivals.delays.lock().expect("the lock is never poisoned").clear();
        arrivals.seq.store(seq, Ordering::Release);
        *arrivals.sent_at.lock().expect("the lock is never poisoned") = Some(Instant::now());
        let response = client
            .post(format!("http://{address}/api/subjects/{subject}/messages"))
            .header("Cookie", &cookie)
            .json(&json!({ "text": post_text(seq, plan.text_bytes) }))
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!("posting failed with {}", response.status());
        }
        let started = Instant::now();
        while arrivals.delays.lock().expect("the lock is never poisoned").len() < streams.len() && started.elapsed() < DELIVERY_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut delays = arrivals.delays.lock().expect("the lock is never poisoned").clone();
        delays.sort();
        reached.push(delays.len() as f64 / streams.len() as f64);
        // Streams that the post did not reach count as the timeout.
        let delay_at = |quantile: f64| {
            let rank = ((streams.len() as f64 * quantile).ceil() as usize).clamp(1, streams.len());
            delays.get(rank - 1).copied().unwrap_or(DELIVERY_TIMEOUT).as_secs_f64() * 1000.0
        };
        p50s.push(delay_at(0.5));
        p99s.push(delay_at(0.99));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.add("fan_out.p50_ms", "one post reaching the streams, p50 over streams", "ms", p50s);
    report.add("fan_out.p99_ms", "one post reaching the streams, p99 over streams", "ms", p99s);
    report.add("fan_out.reached_fraction", "fraction of streams the post reached", "", reached);
    for stream in streams {
        stream.abort();
    }
    Ok(())
}
