//! (b) Acknowledged writes per second: pipelined `PostMessage` requests to groups of one,
//! two and three data servers. A data server replies only after the group commit, so every
//! counted reply is a write stored on disk. Each run also measures the machine's busy
//! fraction and the CPU time per write of the data servers and the bench process.
//!
//! To show how much of a write's cost is the request path itself, the same clients also send
//! `Ping` requests to the single data server. It replies to a `Ping` on the connection's own
//! task, without the state, the store or another thread, so the figure covers decoding,
//! replying and encoding only.

use std::path::Path;

use anyhow::bail;
use forum_protocol::{ChangeId, Reply, Request};

use crate::cpu::{CpuMeter, ProcessGroup};
use crate::data_client::{self, Bound, LoadResult};
use crate::forum::{self, post_text, USER};
use crate::report::Report;
use crate::Plan;

pub async fn measure(plan: &Plan, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    Report::section("(b) data server: acknowledged (durable) writes from pipelined DEALER clients");
    let ceiling = report.value("transport.dealer_router.per_second");
    for size in 1..=3usize {
        let servers = forum::start_data_group(size, scratch, &format!("writes-{size}")).await?;
        let subject = forum::prepare(&servers, "Write benchmark").await?;
        let endpoints: Vec<String> = servers.iter().map(|server| server.request.clone()).collect();

        // A short warm-up fills the caches and the store's first pages.
        run(plan, &endpoints, subject, Bound::Time(plan.run_length / 4)).await?;
        let mut rates = Vec::new();
        let mut cpu = cpu_meter(servers.iter().map(|server| server.process.pid()).collect());
        // NOTE: the CPU time also covers the replies that arrive after the run's time bound,
        // which `accepted` leaves out, so CPU per write is high by up to one window per
        // connection out of all the run's writes.
        for _ in 0..plan.runs {
            let cpu_start = cpu.read();
            let result = run(plan, &endpoints, subject, Bound::Time(plan.run_length)).await?;
            cpu.record_run(cpu_start, result.accepted);
            rates.push(result.per_second());
        }
        let counters = replication_counters(&endpoints).await?;

        let key = format!("writes.servers_{size}");
        let label = format!("{size} data server{}, writes spread over all", if size == 1 { "" } else { "s" });
        let rate = report.add(&format!("{key}.per_second"), &label, "writes/s", rates);
        if let Some(ceiling) = ceiling {
            report.add(&format!("{key}.ratio_to_dealer_router"), "  ratio to the DEALER→ROUTER ceiling", "", vec![rate / ceiling]);
        }
        cpu.add_figures(report, &key, "write");
        if size > 1 {
            let [replicated, fetched, duplicates] = counters;
            report.add(&format!("{key}.replicated_live"), "  changes received live from peers, all servers", "changes", vec![replicated]);
            report.add(&format!("{key}.fetched"), "  changes received by catch-up fetches", "changes", vec![fetched]);
            report.add(&format!("{key}.duplicates"), "  changes received twice and ignored", "changes", vec![duplicates]);
        }
        if size == 1 {
            measure_pings(plan, &endpoints, ceiling, servers[0].process.pid(), report).await?;
        }
        forum::stop_all(servers.into_iter().map(|server| server.process).collect()).await?;
    }
    Ok(())
}

/// Returns a meter of the CPU time of the data server processes `pids` and of this process.
fn cpu_meter(pids: Vec<u32>) -> CpuMeter {
    CpuMeter::new(vec![
        ProcessGroup { key: "data", label: "data servers", pids },
        ProcessGroup { key: "bench", label: "bench process", pids: vec![std::process::id()] },
    ])
}

/// Measures `Ping` round trips through the data server at `endpoints`, whose process is `pid`.
async fn measure_pings(plan: &Plan, endpoints: &[String], ceiling: Option<f64>, pid: u32, report: &mut Report) -> anyhow::Result<()> {
    let mut cpu = cpu_meter(vec![pid]);
    let mut rates = Vec::new();
    for _ in 0..plan.runs {
        let cpu_start = cpu.read();
        let connections = plan.write_connections.max(endpoints.len());
        let bound = Bound::Time(plan.run_length);
        let result = data_client::load(endpoints, connections, plan.write_window, bound, data_client::ping_request, data_client::is_pong).await?;
        if result.rejected > 0 {
            bail!("{} of the pings got a reply other than Pong; the data server logs say why", result.rejected);
        }
        cpu.record_run(cpu_start, result.accepted);
        rates.push(result.per_second());
    }
    let label = "1 data server answering Ping instead (no write, no store)";
    let rate = report.add("writes.ping.per_second", label, "replies/s", rates);
    if let Some(ceiling) = ceiling {
        report.add("writes.ping.ratio_to_dealer_router", "  ratio to the DEALER→ROUTER ceiling", "", vec![rate / ceiling]);
    }
    cpu.add_figures(report, "writes.ping", "reply");
    Ok(())
}

fn describe_reply(frame: &[u8]) -> String {
    match forum_protocol::decode::<forum_protocol::WireReply>(frame) {
        Ok(reply) => format!("{:?}", reply.reply),
        Err(error) => format!("an undecodable reply ({error})"),
    }
}

/// Returns the changes received live from peers, by catch-up fetches, and twice, summed over
/// the data servers at `endpoints`.
async fn replication_counters(endpoints: &[String]) -> anyhow::Result<[f64; 3]> {
    let mut sums = [0.0; 3];
    for endpoint in endpoints {
        match data_client::request(endpoint, Request::Status).await? {
            Reply::Status(status) => {
                let counters = status.counters;
                sums[0] += counters.replicated_changes as f64;
                sums[1] += counters.fetched_changes as f64;
                sums[2] += counters.duplicate_changes as f64;
            }
            other => bail!("the status request to {endpoint} failed: {other:?}"),
        }
    }
    Ok(sums)
}

/// Sends posts to `endpoints` for one run and returns the acknowledged writes and the run's
/// length. Fails if any post was rejected.
pub async fn run(plan: &Plan, endpoints: &[String], subject: ChangeId, bound: Bound) -> anyhow::Result<LoadResult> {
    let text_bytes = plan.text_bytes;
    let result = data_client::load(
        endpoints,
        plan.write_connections.max(endpoints.len()),
        plan.write_window,
        bound,
        move |index| data_client::post_request(index, subject, USER, post_text(index, text_bytes)),
        data_client::is_stored_message,
    )
    .await?;
    if result.rejected > 0 {
        let example = result.first_rejection.map(|frame| describe_reply(&frame)).unwrap_or_default();
        bail!("{} of the posts were rejected, for example with {example}", result.rejected);
    }
    Ok(result)
}
