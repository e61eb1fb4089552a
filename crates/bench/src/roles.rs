//! The hidden subcommands that the tool starts as child processes: a data server, a web
//! server, and the two raw zeromq peers of the transport ceiling.
//!
//! Each one prints one line `READY <address>...` on standard output once it is bound, then
//! serves until SIGTERM or until its standard input reaches end-of-file. The parent owns the
//! write end of that pipe, so a child also stops when the parent dies, even by SIGKILL.

use std::io::{BufRead, Write};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use forum_dataserver::DataServer;
use forum_webserver::WebServer;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

#[derive(Subcommand, Debug)]
pub enum Role {
    /// Runs one data server (the library code of the `dataserver` binary).
    #[command(hide = true)]
    ServeData {
        #[arg(long)]
        id: u32,
        #[arg(long)]
        request: String,
        #[arg(long)]
        publish: String,
        #[arg(long)]
        data_dir: PathBuf,
        /// The other data servers' PUB endpoints, separated by commas.
        #[arg(long, default_value = "")]
        peers: String,
    },
    /// Runs one web server (the library code of the `webserver` binary).
    #[command(hide = true)]
    ServeWeb {
        #[arg(long)]
        data_request: String,
        #[arg(long)]
        data_pub: String,
        #[arg(long)]
        name: String,
    },
    /// Binds a ROUTER socket and sends every message back to its sender.
    #[command(hide = true)]
    Echo,
    /// Binds a PUB socket and publishes `count` messages for each line read from standard
    /// input, each laid out as a `webserver` message: the topic, a header frame of
    /// `header_bytes` bytes and a change frame of `bytes` bytes.
    #[command(hide = true)]
    Publish {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        header_bytes: usize,
        #[arg(long)]
        bytes: usize,
    },
}

/// Runs a child role to its end.
pub fn run(role: Role) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // The same runtime as `#[tokio::main]` in the server binaries: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start tokio")?;
    runtime.block_on(async move {
        match role {
            Role::ServeData { id, request, publish, data_dir, peers } => serve_data(id, request, publish, data_dir, peers).await,
            Role::ServeWeb { data_request, data_pub, name } => serve_web(data_request, data_pub, name).await,
            Role::Echo => echo().await,
            Role::Publish { count, header_bytes, bytes } => publish(count, header_bytes, bytes).await,
        }
    })
}

fn announce(addresses: &[&str]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY {}", addresses.join(" "))?;
    stdout.flush()?;
    Ok(())
}

/// Completes on SIGTERM or when standard input reaches end-of-file (or fails).
///
/// Standard input is read on a plain thread, because a blocking read cannot be cancelled and
/// would keep a runtime's blocking pool from shutting down. Each line read is sent to
/// `lines`, when given, for roles that take commands.
async fn stop_requested(lines: Option<tokio::sync::mpsc::Sender<()>>) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to listen for SIGTERM")?;
    let (closed, input_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            if let Some(lines) = &lines {
                if lines.blocking_send(()).is_err() {
                    break;
                }
            }
        }
        let _ = closed.send(());
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = input_closed => tracing::info!("standard input closed, so the parent has stopped or died; stopping"),
    }
    Ok(())
}

async fn serve_data(id: u32, request: String, publish: String, data_dir: PathBuf, peers: String) -> anyhow::Result<()> {
    let peers = forum_protocol::parse_peer_list(&peers)?;
    let config = forum_dataserver::Config { id, request_endpoint: request, pub_endpoint: publish, data_dir, peers };
    let options = forum_dataserver::Options { cluster_key: crate::data_client::cluster_key().cloned(), ..Default::default() };
    let server = DataServer::start_with(config, options).await?;
    announce(&[server.request_endpoint(), server.pub_endpoint()])?;
    stop_requested(None).await?;
    server.shutdown().await;
    Ok(())
}

async fn serve_web(data_request: String, data_pub: String, name: String) -> anyhow::Result<()> {
    let config = forum_webserver::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_request_endpoint: data_request,
        data_pub_endpoint: data_pub,
        name,
        request_timeout: forum_webserver::DEFAULT_REQUEST_TIMEOUT,
    };
    let options = forum_webserver::Options { cluster_key: crate::data_client::cluster_key().cloned(), ..Default::default() };
    let server = WebServer::start_with(config, options).await?;
    announce(&[&server.local_addr().to_string()])?;
    stop_requested(None).await?;
    server.shutdown().await;
    Ok(())
}

async fn echo() -> anyhow::Result<()> {
    let mut socket = RouterSocket::new();
    let bound = socket.bind("tcp://127.0.0.1:0").await?;
    announce(&[&bound.to_string()])?;
    let stop = stop_requested(None);
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            result = &mut stop => return result,
            message = socket.recv() => message?,
        };
        // A ROUTER message is [identity, payload]; sending it back routes it to its sender.
        socket.send(message).await?;
    }
}

async fn publish(count: u64, header_bytes: usize, bytes: usize) -> anyhow::Result<()> {
    let mut socket = PubSocket::new();
    let bound = socket.bind("tcp://127.0.0.1:0").await?;
    announce(&[&bound.to_string()])?;
    let header = Bytes::from(vec![b'h'; header_bytes]);
    let payload = Bytes::from(vec![b'x'; bytes]);
    let (lines, mut starts) = tokio::sync::mpsc::channel::<()>(1);
    let stop = stop_requested(Some(lines));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            result = &mut stop => return result,
            start = starts.recv() => if start.is_none() { return Ok(()) },
        }
        for _ in 0..count {
            let frames = vec![Bytes::from_static(forum_protocol::TOPIC_WEBSERVER.as_bytes()), header.clone(), payload.clone()];
            socket.send(ZmqMessage::try_from(frames).expect("three frames")).await?;
        }
        // Lets the socket's writer tasks flush before the next command.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
