//! (e) Catch-up: the time for a restarted data server to fetch and apply the changes it
//! missed while it was down.
//!
//! Two data servers form a group. The second one stops, the first one stores N − 1 posts and
//! then one subject that marks the end, and the second one restarts on the same endpoints and
//! store. The time runs from the restart until the second server has the end subject and
//! every post. A group whose data servers do not catch up is reported as not available.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use forum_protocol::{Reply, Request};

use crate::data_client::{self, Bound};
use crate::forum::{self, post_text, DataServerProcess, USER};
use crate::report::Report;
use crate::Plan;

/// The maximum time a catch-up may take before the run fails.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the history of the restarted server is read once the end subject is there;
/// a history of 100,000 posts is tens of MiB.
const HISTORY_POLL: Duration = Duration::from_millis(250);

pub async fn measure(plan: &Plan, scratch: &Path, report: &mut Report) -> anyhow::Result<()> {
    let changes = plan.catch_up_changes;
    Report::section(&format!("(e) catch-up: a restarted data server fetches {changes} changes it missed"));
    // Without a catch-up protocol nothing arrives at all, so a short wait is enough to detect it.
    let no_catch_up_after = if plan.quick { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let mut servers = forum::start_data_group(2, scratch, "catch-up").await?;
    let subject = forum::prepare(&servers, "Catch-up benchmark").await?;
    let writer = servers[0].request.clone();

    let mut seconds = Vec::new();
    for run in 0..plan.runs.min(3) {
        let stopped = servers.pop().expect("two servers");
        let before = forum::history_length(&stopped.request, subject).await?;
        let DataServerProcess { process, id, request, publish, data_dir, peers } = stopped;
        process.stop().await?;

        let text_bytes = plan.text_bytes;
        let result = data_client::load(
            std::slice::from_ref(&writer),
            plan.write_connections,
            plan.write_window,
            Bound::Count(changes - 1, Duration::from_secs(600)),
            move |index| data_client::post_request(index, subject, USER, post_text(index, text_bytes)),
            data_client::is_stored_message,
        )
        .await?;
        if result.accepted != changes - 1 {
            bail!("only {} of {} posts were stored", result.accepted, changes - 1);
        }
        let end_title = format!("Catch-up end {run}");
        let end = match data_client::request(&writer, Request::CreateSubject { title: end_title.clone(), created_by: USER.into() }).await? {
            Reply::Subject(subject) => subject.id,
            other => bail!("creating the subject {end_title:?} failed: {other:?}"),
        };
        let expected = before + (changes - 1) as usize;

        let restarted_at = Instant::now();
        let restarted = DataServerProcess::start(id, request, publish, data_dir, peers).await?;
        let outcome = wait_for_catch_up(&restarted.request, subject, end, before, expected, restarted_at, no_catch_up_after).await;
        servers.push(restarted);
        match outcome? {
            Some(elapsed) => seconds.push(elapsed.as_secs_f64()),
            None => {
                report.add_unavailable(
                    "catch_up.seconds",
                    "time to fetch and apply the missed changes",
                    &format!("no catch-up yet (the restarted data server received none of {changes} missed changes within {no_catch_up_after:?})"),
                );
                break;
            }
        }
    }
    if !seconds.is_empty() {
        report.add("catch_up.seconds", &format!("time to fetch and apply {changes} missed changes"), "s", seconds);
    }
    forum::stop_all(servers.into_iter().map(|server| server.process).collect()).await
}

/// Waits until the server at `endpoint` has the subject `end` and `expected` posts in
/// `subject`, and returns the time since `since`. Returns `None` when after
/// `no_catch_up_after` it still has only the `before` posts it had when it stopped.
async fn wait_for_catch_up(
    endpoint: &str,
    subject: forum_protocol::ChangeId,
    end: forum_protocol::ChangeId,
    before: usize,
    expected: usize,
    since: Instant,
    no_catch_up_after: Duration,
) -> anyhow::Result<Option<Duration>> {
    let mut checked_progress = false;
    let mut last_history_read = None::<Instant>;
    loop {
        let has_end = match data_client::request(endpoint, Request::ListSubjects).await? {
            Reply::Subjects(subjects) => subjects.iter().any(|listed| listed.id == end),
            other => bail!("listing the subjects failed: {other:?}"),
        };
        if has_end && last_history_read.is_none_or(|read| read.elapsed() >= HISTORY_POLL) {
            let now = Instant::now();
            let length = forum::history_length(endpoint, subject).await?;
            last_history_read = Some(now);
            if length >= expected {
                return Ok(Some(now.duration_since(since)));
            }
        }
        if !checked_progress && since.elapsed() >= no_catch_up_after && !has_end {
            checked_progress = true;
            if forum::history_length(endpoint, subject).await? <= before {
                return Ok(None);
            }
        }
        if since.elapsed() > CATCH_UP_TIMEOUT {
            bail!("the restarted data server had not caught up after {CATCH_UP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
