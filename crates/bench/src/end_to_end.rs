//! (c) End to end: posts through the HTTP API of three web servers, each in front of its own
//! data server of a group of three, with event-stream clients on every web server.
//!
//! First the peak: closed-loop posting with a fixed number of requests in flight per web
//! server. Then posting paced at 5%, 25%, 50% and 90% of that peak, while the first stream of
//! each web server records the delay from sending a POST to another web server to the event's
//! arrival. Each run also measures the machine's busy fraction and the CPU time per post of the
//! data servers, the web servers and the bench process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::children::ChildProcess;
use crate::cpu::{CpuMeter, ProcessGroup};
use crate::forum::{self, post_text, DataServerProcess, PASSWORD, USER};
use crate::report::Report;
use crate::sse::{self, PostSink};
use crate::stats::{latency_histogram, quantile_ms, record};
use crate::Plan;

/// How long a run waits for the last posts' events to arrive.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The maximum number of posts in flight while posting is paced; beyond it the pacing waits.
const MAX_PACED_IN_FLIGHT: usize = 2048;
/// How long set-up waits for the bench user or the subject to reach every web server.
const SET_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// One web server as a posting client sees it.
#[derive(Clone)]
struct Web {
    address: SocketAddr,
    /// The `forum_session=<token>` cookie of the bench user on this web server.
    cookie: String,
}

/// The streams' view of the posts: which stream saw how many, and the latencies the
/// observer streams recorded.
struct Deliveries {
    /// When each post was sent, and to which web server, by sequence number.
    sent: Mutex<HashMap<u64, (Instant, usize)>>,
    /// The web server of each stream.
    stream_web: Vec<usize>,
    /// Whether each stream records latencies; the first stream of each web server does.
    observer: Vec<bool>,
    /// Posts received by each stream since the last reset.
    received: Vec<AtomicU64>,
    /// POST to event on another web server: the figure of (c).
    latencies: Mutex<Histogram<u64>>,
    /// POST to event on the web server that took the POST, which leaves out the hop between
    /// data servers.
    local_latencies: Mutex<Histogram<u64>>,
    /// POST to its `201 Created` response, once its data server has stored the write.
    acks: Mutex<Histogram<u64>>,
}

impl PostSink for Deliveries {
    fn post(&self, stream: usize, seq: u64, at: Instant) {
        self.received[stream].fetch_add(1, Ordering::Relaxed);
        if !self.observer[stream] {
            return;
        }
        let sent = self.sent.lock().expect("the sent map lock is never poisoned").get(&seq).copied();
        if let Some((sent_at, web)) = sent {
            let histogram = if web == self.stream_web[stream] { &self.local_latencies } else { &self.latencies };
            record(&mut histogram.lock().expect("the histogram lock is never poisoned"), at.duration_since(sent_at));
        }
    }
}

impl Deliveries {
    fn reset(&self) {
        self.sent.lock().expect("the sent map lock is never poisoned").clear();
        for histogram in [&self.latencies, &self.local_latencies, &self.acks] {
            histogram.lock().expect("the histogram lock is never poisoned").reset();
        }
        for count in &self.received {
            count.store(0, Ordering::Relaxed);
        }
    }

    fn fewest_received(&self) -> u64 {
        self.received.iter().map(|count| count.load(Ordering::Relaxed)).min().unwrap_or(0)
    }

    /// Waits until every stream received `posts` posts, for at most [`DELIVERY_TIMEOUT`].
    async fn wait_for(&self, posts: u64) {
        let started = Instant::now();
        while self.fewest_received() < posts && started.elapsed() < DELIVERY_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The posting side of a run.
struct Poster {
    client: reqwest::Client,
    webs: Vec<Web>,
    subject: String,
    text_bytes: usize,
    next_seq: AtomicU64,
    deliveries: Arc<Deliveries>,
}

impl Poster {
    /// Posts one message to web server `web` and returns whether it was stored (201).
    async fn post(&self, web: usize) -> bool {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let target = &self.webs[web];
        let url = format!("http://{}/api/subjects/{}/messages", target.address, self.subject);
        let body = json!({ "text": post_text(seq, self.text_bytes) });
        let sent_at = Instant::now();
        self.deliveries.sent.lock().expect("the sent map lock is never poisoned").insert(seq, (sent_at, web));
        let response = self.client.post(url).header("Cookie", &target.cookie).json(&body).send().await;
        let stored = matches!(response, Ok(response) if response.status() == reqwest::StatusCode::CREATED);
        if stored {
            record(&mut self.deliveries.acks.lock().expect("the histogram lock is never poisoned"), sent_at.elapsed());
        }
        stored
    }
}

pub async fn measure(plan: &Plan, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    Report::section(&format!(
        "(c) end to end: 3 data servers, 3 web servers, {} event streams on each web server",
        plan.streams_per_web
    ));
    let data_servers = forum::start_data_group(3, scratch, "end-to-end").await?;
    let mut web_processes = Vec::new();
    for (index, data) in data_servers.iter().enumerate() {
        web_processes.push(forum::start_web(data, &format!("web{}", index + 1), scratch).await?);
    }
    let result = measure_with(plan, &data_servers, &web_processes, report).await;
    let mut processes = web_processes;
    processes.extend(data_servers.into_iter().map(|server| server.process));
    forum::stop_all(processes).await?;
    result
}

async fn measure_with(
    plan: &Plan,
    data_servers: &[DataServerProcess],
    web_processes: &[ChildProcess],
    report: &mut Report,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.posts_in_flight_per_web * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let addresses = web_processes
        .iter()
        .map(|process| process.addresses[0].parse::<SocketAddr>().context("a web server printed an invalid address"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (webs, subject) = set_up(&client, &addresses).await?;

    let stream_count = plan.streams_per_web * webs.len();
    let deliveries = Arc::new(Deliveries {
        sent: Mutex::new(HashMap::new()),
        stream_web: (0..stream_count).map(|stream| stream / plan.streams_per_web).collect(),
        observer: (0..stream_count).map(|stream| stream % plan.streams_per_web == 0).collect(),
        received: (0..stream_count).map(|_| AtomicU64::new(0)).collect(),
        latencies: Mutex::new(latency_histogram()),
        local_latencies: Mutex::new(latency_histogram()),
        acks: Mutex::new(latency_histogram()),
    });
    let mut streams = Vec::with_capacity(stream_count);
    for stream in 0..stream_count {
        let sink: Arc<dyn PostSink> = deliveries.clone();
        streams.push(sse::open(addresses[deliveries.stream_web[stream]], stream, sink).await?);
    }
    let poster = Arc::new(Poster { client, webs, subject, text_bytes: plan.text_bytes, next_seq: AtomicU64::new(1), deliveries });

    // Warm-up, then the peak.
    closed_loop(plan, &poster, plan.run_length / 4).await;
    let new_cpu_meter = || cpu_meter(data_servers, web_processes);
    let mut peaks = Vec::new();
    let mut delivered = Vec::new();
    let mut cpu = new_cpu_meter();
    for _ in 0..plan.runs {
        poster.deliveries.reset();
        // The CPU time covers the wait for the last events too, so that it includes the
        // delivery of every post of the run.
        let cpu_start = cpu.read();
        let stored = closed_loop(plan, &poster, plan.run_length).await;
        poster.deliveries.wait_for(stored).await;
        cpu.record_run(cpu_start, stored);
        peaks.push(stored as f64 / plan.run_length.as_secs_f64());
        delivered.push((poster.deliveries.fewest_received() as f64 / stored.max(1) as f64).min(1.0));
    }
    let label = format!("peak, {} requests in flight per web server", plan.posts_in_flight_per_web);
    let peak = report.add("end_to_end.peak.per_second", &label, "posts/s", peaks);
    report.add("end_to_end.peak.delivered_fraction", "  fraction of posts that reached every stream", "", delivered);
    cpu.add_figures(report, "end_to_end.peak", "post");

    for &percent in &plan.load_levels {
        let rate = peak * f64::from(percent) / 100.0;
        let mut percentiles: [Vec<f64>; 3] = Default::default();
        let mut local_p50 = Vec::new();
        let mut ack_p50 = Vec::new();
        let mut delivered = Vec::new();
        let mut cpu = new_cpu_meter();
        for _ in 0..plan.runs {
            poster.deliveries.reset();
            let cpu_start = cpu.read();
            let stored = paced(&poster, rate, plan.run_length).await;
            poster.deliveries.wait_for(stored).await;
            cpu.record_run(cpu_start, stored);
            let latencies = poster.deliveries.latencies.lock().expect("the histogram lock is never poisoned").clone();
            for (values, quantile) in percentiles.iter_mut().zip([0.5, 0.95, 0.99]) {
                values.push(quantile_ms(&latencies, quantile));
            }
            let median = |histogram: &Mutex<Histogram<u64>>| {
                quantile_ms(&histogram.lock().expect("the histogram lock is never poisoned"), 0.5)
            };
            local_p50.push(median(&poster.deliveries.local_latencies));
            ack_p50.push(median(&poster.deliveries.acks));
            delivered.push((poster.deliveries.fewest_received() as f64 / stored.max(1) as f64).min(1.0));
        }
        let key = format!("end_to_end.load_{percent}");
        report.add(&format!("{key}.per_second"), &format!("at {percent}% of the peak: offered rate"), "posts/s", vec![rate]);
        let [p50, p95, p99] = percentiles;
        report.add(&format!("{key}.p50_ms"), "  POST to event on another web server, p50", "ms", p50);
        report.add(&format!("{key}.p95_ms"), "  p95", "ms", p95);
        report.add(&format!("{key}.p99_ms"), "  p99", "ms", p99);
        report.add(&format!("{key}.local_p50_ms"), "  POST to event on the same web server, p50", "ms", local_p50);
        report.add(&format!("{key}.ack_p50_ms"), "  POST to its 201 answer, p50", "ms", ack_p50);
        report.add(&format!("{key}.delivered_fraction"), "  fraction of posts that reached every stream", "", delivered);
        cpu.add_figures(report, &key, "post");
    }
    for stream in streams {
        stream.abort();
    }
    Ok(())
}

/// Creates a meter of the CPU time of the data servers, the web servers and this process.
fn cpu_meter(data_servers: &[DataServerProcess], web_processes: &[ChildProcess]) -> CpuMeter {
    CpuMeter::new(vec![
        ProcessGroup { key: "data", label: "data servers", pids: data_servers.iter().map(|server| server.process.pid()).collect() },
        ProcessGroup { key: "web", label: "web servers", pids: web_processes.iter().map(ChildProcess::pid).collect() },
        ProcessGroup { key: "bench", label: "bench process", pids: vec![std::process::id()] },
    ])
}

/// Posts with a fixed number of requests in flight per web server for `length`, and returns
/// the number stored.
async fn closed_loop(plan: &Plan, poster: &Arc<Poster>, length: Duration) -> u64 {
    let started = Instant::now();
    let stored = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for web in 0..poster.webs.len() {
        for _ in 0..plan.posts_in_flight_per_web {
            let poster = Arc::clone(poster);
            let stored = Arc::clone(&stored);
            tasks.spawn(async move {
                while started.elapsed() < length {
                    if poster.post(web).await {
                        stored.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    stored.load(Ordering::Relaxed)
}

/// Posts at `rate` per second in all, round-robin over the web servers, for `length`, and
/// returns the number stored.
async fn paced(poster: &Arc<Poster>, rate: f64, length: Duration) -> u64 {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let in_flight = Arc::new(Semaphore::new(MAX_PACED_IN_FLIGHT));
    let stored = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let started = tokio::time::Instant::now();
    let mut index: u32 = 0;
    loop {
        let due = started + interval * index;
        if due.duration_since(started) >= length {
            break;
        }
        tokio::time::sleep_until(due).await;
        let permit = Arc::clone(&in_flight).acquire_owned().await.expect("the semaphore is never closed");
        let poster = Arc::clone(poster);
        let stored = Arc::clone(&stored);
        let web = index as usize % poster.webs.len();
        tasks.spawn(async move {
            if poster.post(web).await {
                stored.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
        index += 1;
    }
    while tasks.join_next().await.is_some() {}
    stored.load(Ordering::Relaxed)
}

/// Registers the bench user, logs it in on every web server and creates a subject. Returns
/// the web servers with their session cookies, and the subject's id.
async fn set_up(client: &reqwest::Client, addresses: &[SocketAddr]) -> anyhow::Result<(Vec<Web>, String)> {
    let credentials = json!({ "name": USER, "password": PASSWORD });
    let response = client.post(format!("http://{}/api/users", addresses[0])).json(&credentials).send().await?;
    if !matches!(response.status().as_u16(), 201 | 409) {
        bail!("registering the bench user failed with {}: {}", response.status(), response.text().await.unwrap_or_default());
    }

    let mut webs = Vec::with_capacity(addresses.len());
    for address in addresses {
        let started = Instant::now();
        let cookie = loop {
            let response = client.post(format!("http://{address}/api/login")).json(&credentials).send().await?;
            if response.status() == reqwest::StatusCode::OK {
                let cookie = response
                    .headers()
                    .get_all(reqwest::header::SET_COOKIE)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .find_map(|value| value.split(';').next().filter(|pair| pair.starts_with("forum_session=")))
                    .map(str::to_owned);
                break cookie.with_context(|| format!("the login on {address} set no forum_session cookie"))?;
            }
            if started.elapsed() > SET_UP_TIMEOUT {
                bail!("the bench user could not log in on {address} within {SET_UP_TIMEOUT:?}: {}", response.status());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        webs.push(Web { address: *address, cookie });
    }

    let response = client
        .post(format!("http://{}/api/subjects", addresses[0]))
        .header("Cookie", &webs[0].cookie)
        .json(&json!({ "title": "End-to-end benchmark" }))
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::CREATED {
        bail!("creating the subject failed with {}", response.status());
    }
    let subject: serde_json::Value = response.json().await?;
    let subject = subject["id"].as_str().context("the created subject has no id")?.to_owned();
    for address in addresses {
        let started = Instant::now();
        loop {
            let response = client.get(format!("http://{address}/api/subjects/{subject}/messages")).send().await?;
            if response.status() == reqwest::StatusCode::OK {
                break;
            }
            if started.elapsed() > SET_UP_TIMEOUT {
                bail!("subject {subject} did not reach {address} within {SET_UP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((webs, subject))
}
