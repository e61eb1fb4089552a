//! (f) Memory: a data server's resident memory when it stores many messages, after storing
//! them and again after a restart has replayed them from its store.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::data_client::{self, Bound};
use crate::forum::{self, post_text, USER};
use crate::report::Report;
use crate::Plan;

/// The maximum time that storing the messages may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn measure(plan: &Plan, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    let messages = plan.stored_messages;
    Report::section(&format!("(f) memory: one data server holding {messages} messages (one run)"));
    let mut servers = forum::start_data_group(1, scratch, "memory").await?;
    let subject = forum::prepare(&servers, "Memory benchmark").await?;
    let server = servers.pop().expect("one server");
    let empty_kib = server.process.resident_kib()?;

    let text_bytes = plan.text_bytes;
    let result = data_client::load(
        std::slice::from_ref(&server.request),
        plan.write_connections,
        plan.write_window,
        Bound::Count(messages, WRITE_TIMEOUT),
        move |index| data_client::post_request(index, subject, USER, post_text(index, text_bytes)),
        data_client::is_stored_message,
    )
    .await?;
    if result.accepted != messages {
        bail!("only {} of {messages} messages were stored within {WRITE_TIMEOUT:?}", result.accepted);
    }
    let written_kib = server.process.resident_kib()?;

    let restart_started = Instant::now();
    let server = server.restart().await?;
    let replay = restart_started.elapsed();
    // Read before the history below, because its replies take memory of their own.
    let replayed_kib = server.process.resident_kib()?;
    let length = forum::history_length(&server.request, subject).await?;
    if length as u64 != messages {
        bail!("the restarted data server returned {length} messages instead of {messages}");
    }
    let store_bytes = std::fs::metadata(server.data_dir.join(forum_dataserver::STORE_FILE)).map(|meta| meta.len()).unwrap_or(0);
    server.process.stop().await?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    report.add("memory.write_per_second", "storing them: acknowledged writes per second", "writes/s", vec![result.per_second()]);
    report.add("memory.empty_mib", "resident memory, empty", "MiB", vec![mib(empty_kib)]);
    report.add("memory.after_writes_mib", "resident memory after storing them", "MiB", vec![mib(written_kib)]);
    report.add("memory.after_restart_mib", "resident memory after a restart replayed them", "MiB", vec![mib(replayed_kib)]);
    report.add("memory.max_mib", "the larger of the two", "MiB", vec![mib(written_kib.max(replayed_kib))]);
    report.add("memory.restart_seconds", "restart time (stop, start, replay the store)", "s", vec![replay.as_secs_f64()]);
    report.add("memory.store_mib", "size of forum.redb", "MiB", vec![store_bytes as f64 / (1024.0 * 1024.0)]);
    Ok(())
}
