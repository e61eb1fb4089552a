//! A minimal event-stream client over plain TCP, light enough to open ten thousand.
//!
//! It sends `GET /api/events` with HTTP/1.1, waits for the `:connected` greeting and then
//! reports every `post` event whose text starts with `bench <seq> ` (see
//! [`crate::forum::post_text`]).
//!
//! NOTE: the response body is chunked, and the parser does not decode the chunks. It reads
//! lines and relies on warp writing each event as one chunk, so that a chunk-size line never
//! falls inside an event's `data:` line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long opening a stream may take, up to the greeting.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The read buffer of each stream.
const READ_BUFFER_BYTES: usize = 4096;

/// Receives the posts that event streams see.
pub trait PostSink: Send + Sync + 'static {
    /// Called when stream number `stream` received the post with sequence number `seq` at `at`.
    fn post(&self, stream: usize, seq: u64, at: Instant);
}

/// Opens an event stream on `address` and returns once its greeting arrived. The returned
/// task reads the stream until the server closes it or the task is aborted.
pub async fn open(address: SocketAddr, stream: usize, sink: Arc<dyn PostSink>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (connection, pending) = tokio::time::timeout(OPEN_TIMEOUT, connect(address))
        .await
        .with_context(|| format!("opening an event stream on {address} took more than {OPEN_TIMEOUT:?}"))??;
    Ok(tokio::spawn(read_events(connection, pending, stream, sink)))
}

/// Connects, sends the request and reads up to the greeting. Returns the bytes read after it.
async fn connect(address: SocketAddr) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut connection = TcpStream::connect(address).await.with_context(|| format!("failed to connect to {address}"))?;
    let request = format!("GET /api/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n");
    connection.write_all(request.as_bytes()).await?;
    let mut received = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut buffer = [0u8; 1024];
    loop {
        let read = connection.read(&mut buffer).await?;
        if read == 0 {
            bail!("{address} closed the event stream before its greeting");
        }
        received.extend_from_slice(&buffer[..read]);
        if !received.starts_with(b"HTTP/1.1 200") && received.len() >= 12 {
            let status = String::from_utf8_lossy(&received[..received.len().min(40)]).into_owned();
            bail!("{address} responded to the event stream request with {status:?}");
        }
        if let Some(position) = find(&received, b":connected\n") {
            let rest = received.split_off(position + b":connected\n".len());
            return Ok((connection, rest));
        }
    }
}

async fn read_events(mut connection: TcpStream, mut pending: Vec<u8>, stream: usize, sink: Arc<dyn PostSink>) {
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let at = Instant::now();
        let mut consumed = 0;
        while let Some(end) = pending[consumed..].iter().position(|byte| *byte == b'\n') {
            let line = &pending[consumed..consumed + end];
            if let Some(seq) = post_seq(line) {
                sink.post(stream, seq, at);
            }
            consumed += end + 1;
        }
        pending.drain(..consumed);
        match connection.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => pending.extend_from_slice(&buffer[..read]),
        }
    }
}

/// Returns the sequence number of a `data:` line of a bench post.
fn post_seq(line: &[u8]) -> Option<u64> {
    const MARKER: &[u8] = b"\"text\":\"bench ";
    if !line.starts_with(b"data:") {
        return None;
    }
    let start = find(line, MARKER)? + MARKER.len();
    let digits = line[start..].iter().take_while(|byte| byte.is_ascii_digit()).count();
    std::str::from_utf8(&line[start..start + digits]).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_seq_reads_bench_posts() {
        let line = br#"data:{"author":"bench","id":"1-9","lamport":9,"subject":"1-2","text":"bench 42 xxxx","time":5}"#;
        assert_eq!(post_seq(line), Some(42));
    }

    #[test]
    fn post_seq_ignores_other_lines() {
        assert_eq!(post_seq(b"event:post"), None);
        assert_eq!(post_seq(br#"data:{"text":"hola"}"#), None);
        assert_eq!(post_seq(br#"data:{"name":"bench"}"#), None);
    }
}
