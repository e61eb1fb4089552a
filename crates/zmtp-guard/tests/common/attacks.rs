//! Hostile clients. Each one connects to `target` (a guard on 127.0.0.1),
//! sends its bytes, and returns the time from its first byte until the
//! guard closed the connection. Each panics if the connection stays open.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{greeting, handshake};

/// Frame size declared by the 73-byte attack: 32 TiB.
pub const ATTACK_FRAME_SIZE: u64 = 1 << 45;

/// Time allowed for a cut that does not wait for a timeout.
const PROMPT_CUT: Duration = Duration::from_secs(1);

/// Extra time allowed beyond a guard timeout.
const TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// Builds the 73 bytes that abort an unguarded zeromq 0.7 process: a valid greeting,
/// then a long message frame header declaring [`ATTACK_FRAME_SIZE`] bytes.
pub fn size_attack_bytes() -> Vec<u8> {
    let mut bytes = greeting();
    bytes.push(0x02);
    bytes.extend_from_slice(&ATTACK_FRAME_SIZE.to_be_bytes());
    assert_eq!(bytes.len(), 73);
    bytes
}

/// Reads (and discards the server's greeting) until the peer closes the
/// connection, and returns the time from `since`.
pub async fn wait_for_close(stream: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    let mut buffer = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => return,
                Ok(_) => continue,
                Err(error) if error.kind() == ErrorKind::ConnectionReset => return,
                Err(error) => panic!("read failed with {error} before the connection closed"),
            }
        }
    };
    tokio::time::timeout(within, closed)
        .await
        .unwrap_or_else(|_| panic!("connection still open after {within:?}"));
    since.elapsed()
}

/// Writes `bytes`, ignoring the error of a write that the guard cut short.
async fn write_until_cut(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
}

pub async fn size_attack(target: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    write_until_cut(&mut stream, &size_attack_bytes()).await;
    wait_for_close(&mut stream, started, PROMPT_CUT).await
}

/// Sends the size attack after a valid READY, so that the guard's size check
/// cuts it and not its handshake check.
pub async fn size_attack_after_ready(target: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    let mut bytes = handshake();
    bytes.push(0x02);
    bytes.extend_from_slice(&ATTACK_FRAME_SIZE.to_be_bytes());
    write_until_cut(&mut stream, &bytes).await;
    wait_for_close(&mut stream, started, PROMPT_CUT).await
}

/// Sends 64 KiB of pseudo-random bytes from a fixed seed.
pub async fn random_bytes(target: SocketAddr) -> Duration {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();

    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    write_until_cut(&mut stream, &bytes).await;
    wait_for_close(&mut stream, started, PROMPT_CUT).await
}

/// Sends a valid greeting, then nothing.
pub async fn greeting_then_silence(target: SocketAddr, greeting_timeout: Duration) -> Duration {
    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    write_until_cut(&mut stream, &greeting()).await;
    wait_for_close(&mut stream, started, greeting_timeout + TIMEOUT_SLACK).await
}

/// Sends a handshake, then a long frame header with 3 of its 8 size bytes.
pub async fn incomplete_frame_header(target: SocketAddr, stalled_timeout: Duration) -> Duration {
    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    let bytes = [handshake(), vec![0x02, 0, 0, 0]].concat();
    write_until_cut(&mut stream, &bytes).await;
    wait_for_close(&mut stream, started, stalled_timeout + TIMEOUT_SLACK).await
}

/// Sends a handshake, then a frame header declaring 100 bytes, then 10 of them.
pub async fn incomplete_frame_body(target: SocketAddr, stalled_timeout: Duration) -> Duration {
    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    let bytes = [handshake(), vec![0x00, 100], vec![b'x'; 10]].concat();
    write_until_cut(&mut stream, &bytes).await;
    wait_for_close(&mut stream, started, stalled_timeout + TIMEOUT_SLACK).await
}

/// Sends a handshake, then one message of a million empty frames, each with
/// the MORE bit set, in 64 KiB writes. Returns the time to the cut and the
/// number of frame bytes the client managed to write before it.
pub async fn million_tiny_frames(target: SocketAddr) -> (Duration, usize) {
    const FRAMES: usize = 1_000_000;
    let tiny_frames = [0x01u8, 0x00].repeat(FRAMES);

    let mut stream = TcpStream::connect(target)
        .await
        .expect("connect to the guard");
    let started = Instant::now();
    stream
        .write_all(&handshake())
        .await
        .expect("send the handshake");
    let mut written = 0;
    for chunk in tiny_frames.chunks(64 * 1024) {
        if stream.write_all(chunk).await.is_err() {
            break;
        }
        written += chunk.len();
    }
    let elapsed = wait_for_close(&mut stream, started, PROMPT_CUT).await;
    (elapsed, written)
}
