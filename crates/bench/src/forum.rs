//! Starting groups of data servers and web servers as child processes, and the forum
//! contents every benchmark needs: one user and one subject.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use forum_protocol::{ChangeId, Message, Page, Reply, Request, MAX_PAGE_LIMIT};

use crate::children::{free_port, ChildProcess};
use crate::data_client;

/// The bench user's name and password. Registering costs one argon2 hash, so each group
/// registers it once.
pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-password";

/// How long set-up waits for a change to reach every data server.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(20);

/// One data server process and how to restart it.
pub struct DataServerProcess {
    pub process: ChildProcess,
    pub id: u32,
    pub request: String,
    pub publish: String,
    pub data_dir: PathBuf,
    pub peers: Vec<String>,
}

impl DataServerProcess {
    /// Starts a data server on fixed endpoints, so that a restart reuses them.
    pub async fn start(id: u32, request: String, publish: String, data_dir: PathBuf, peers: Vec<String>) -> anyhow::Result<Self> {
        let arguments = vec![
            "serve-data".to_owned(),
            format!("--id={id}"),
            format!("--request={request}"),
            format!("--publish={publish}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--peers={}", peers.join(",")),
        ];
        let log = data_dir.with_extension("log");
        let process = ChildProcess::start(&format!("data server {id}"), &arguments, &log).await?;
        Ok(DataServerProcess { process, id, request, publish, data_dir, peers })
    }

    /// Stops the process and starts it again on the same endpoints, store and peers.
    pub async fn restart(self) -> anyhow::Result<Self> {
        self.process.stop().await?;
        Self::start(self.id, self.request, self.publish, self.data_dir, self.peers).await
    }
}

/// Starts `count` data servers grouped together, with stores under `scratch/<label>-<id>`.
pub async fn start_data_group(count: usize, scratch: &Path, label: &str) -> anyhow::Result<Vec<DataServerProcess>> {
    let mut endpoints = Vec::with_capacity(count);
    for _ in 0..count {
        endpoints.push((format!("tcp://127.0.0.1:{}", free_port()?), format!("tcp://127.0.0.1:{}", free_port()?)));
    }
    let mut servers = Vec::with_capacity(count);
    for (index, (request, publish)) in endpoints.iter().enumerate() {
        let id = index as u32 + 1;
        let peers = endpoints
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, (_, peer_publish))| peer_publish.clone())
            .collect();
        let data_dir = scratch.join(format!("{label}-{id}"));
        servers.push(DataServerProcess::start(id, request.clone(), publish.clone(), data_dir, peers).await?);
    }
    Ok(servers)
}

/// Starts one web server process in front of `data`.
pub async fn start_web(data: &DataServerProcess, name: &str, scratch: &Path) -> anyhow::Result<ChildProcess> {
    let arguments = vec![
        "serve-web".to_owned(),
        format!("--data-request={}", data.request),
        format!("--data-pub={}", data.publish),
        format!("--name={name}"),
    ];
    ChildProcess::start(&format!("web server {name}"), &arguments, &scratch.join(format!("{name}.log"))).await
}

/// Registers the bench user and creates a subject through the first server, waits until
/// every server has both, and returns the subject's id.
pub async fn prepare(servers: &[DataServerProcess], title: &str) -> anyhow::Result<ChangeId> {
    let first = &servers[0].request;
    let registration = Request::Register { name: USER.into(), password: PASSWORD.into() };
    match data_client::request(first, registration).await? {
        Reply::User(_) => {}
        Reply::Error(error) if error.code == forum_protocol::ErrorCode::NameTaken => {}
        other => bail!("registering the bench user failed: {other:?}"),
    }
    let subject = match data_client::request(first, Request::CreateSubject { title: title.into(), created_by: USER.into() }).await? {
        Reply::Subject(subject) => subject.id,
        other => bail!("creating the subject {title:?} failed: {other:?}"),
    };
    for server in servers {
        wait_for_subject(&server.request, subject).await?;
    }
    Ok(subject)
}

/// Waits until the data server at `endpoint` has the subject `id`.
pub async fn wait_for_subject(endpoint: &str, id: ChangeId) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Reply::Subjects(subjects) = data_client::request(endpoint, Request::ListSubjects).await? {
            if subjects.iter().any(|subject| subject.id == id) {
                return Ok(());
            }
        }
        if started.elapsed() > REPLICATION_TIMEOUT {
            bail!("subject {id} did not reach {endpoint} within {REPLICATION_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the number of messages in subject `id` on the data server at `endpoint`.
///
/// Reads the history in pages of [`MAX_PAGE_LIMIT`] messages, newest first, so that the data
/// server never builds the whole history as one reply. While messages arrive, the count is
/// at most the final length, because a message that arrives newer than the page being read is
/// not counted.
pub async fn history_length(endpoint: &str, id: ChangeId) -> anyhow::Result<usize> {
    count_history_pages(|before| async move {
        let request = Request::History { subject: id, before, limit: Some(MAX_PAGE_LIMIT) };
        match data_client::request(endpoint, request).await.context("reading a history page")? {
            Reply::MessagePage(page) => Ok(page),
            other => bail!("reading the history of {id} failed: {other:?}"),
        }
    })
    .await
}

/// Counts the messages of a history by calling `read_page` with the paging cursor: `None`
/// for the newest page, then the id of the oldest message of the previous page.
async fn count_history_pages<F, R>(mut read_page: F) -> anyhow::Result<usize>
where
    F: FnMut(Option<ChangeId>) -> R,
    R: Future<Output = anyhow::Result<Page<Message>>>,
{
    let mut count = 0;
    let mut before = None;
    loop {
        let page = read_page(before).await?;
        count += page.messages.len();
        if !page.more {
            return Ok(count);
        }
        let Some(oldest) = page.messages.first() else {
            bail!("invalid history page after {count} messages: it is empty but `more` is set");
        };
        before = Some(oldest.id);
    }
}

/// Returns a post's text: `bench <seq> ` padded with letters to `bytes` bytes. Event-stream
/// clients find the sequence number in it.
pub fn post_text(seq: u64, bytes: usize) -> String {
    let mut text = format!("bench {seq} ");
    while text.len() < bytes {
        text.push('x');
    }
    text
}

/// Stops every process, reporting the first failure after trying them all.
pub async fn stop_all(processes: Vec<ChildProcess>) -> anyhow::Result<()> {
    let mut first_error = None;
    for process in processes {
        if let Err(error) = process.stop().await {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use forum_protocol::{ChangeId, Message, Page};

    use super::count_history_pages;

    /// Returns `length` messages in history order, with ids of sequence numbers 1 to `length`.
    fn history(length: u64) -> Vec<Message> {
        (1..=length)
            .map(|seq| Message {
                id: ChangeId::new(1, seq),
                subject: ChangeId::new(1, 0),
                author: "bench".into(),
                text: format!("post {seq}"),
                time: 0,
                lamport: seq,
            })
            .collect()
    }

    /// Serves pages of `size` messages from `messages` as a data server does: the newest
    /// `size` messages older than `before`, oldest first.
    fn page(messages: &[Message], before: Option<ChangeId>, size: usize) -> Page<Message> {
        let end = before.map_or(messages.len(), |id| messages.iter().position(|message| message.id == id).expect("a known cursor"));
        let start = end.saturating_sub(size);
        Page { messages: messages[start..end].to_vec(), more: start > 0 }
    }

    #[tokio::test]
    async fn count_follows_cursors_to_oldest() {
        for (length, size) in [(0, 1000), (1, 1000), (1000, 1000), (2500, 1000), (7, 2)] {
            let messages = history(length);
            let cursors = RefCell::new(Vec::new());

            let count = count_history_pages(|before| {
                cursors.borrow_mut().push(before);
                let reply = page(&messages, before, size);
                async move { Ok(reply) }
            })
            .await
            .unwrap();

            assert_eq!(count, length as usize, "{length} messages in pages of {size}");
            let expected_requests = (length as usize).div_ceil(size).max(1);
            assert_eq!(cursors.borrow().len(), expected_requests, "{length} messages in pages of {size}");
            assert_eq!(cursors.borrow()[0], None, "the first request has no cursor");
        }
    }

    #[tokio::test]
    async fn count_rejects_empty_page_with_more() {
        let result = count_history_pages(|_| async { Ok(Page::<Message> { messages: Vec::new(), more: true }) }).await;

        let message = format!("{:#}", result.unwrap_err());
        assert!(message.contains("empty"), "{message}");
    }

    #[tokio::test]
    async fn count_passes_read_errors_on() {
        let result = count_history_pages(|_| async { anyhow::bail!("connection refused") }).await;

        assert!(result.is_err());
    }
}
