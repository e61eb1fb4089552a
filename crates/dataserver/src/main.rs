//! The `dataserver` binary: parses the command line, builds a [`Config`] and runs the server
//! until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use forum_dataserver::{Config, DataServer, Options};
use forum_protocol::{parse_endpoint, ClusterKey, parse_peer_list, ServerId};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// The file in the data directory that keeps a generated server id.
const SERVER_ID_FILE: &str = "server-id";

/// A forum data server: stores the forum, serves web servers and replicates to its peers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The ZeroMQ endpoint where the ROUTER socket for web servers' requests binds.
    #[arg(long = "request", value_name = "ENDPOINT", env = "FORUM_DATA_REQUEST", default_value = "tcp://127.0.0.1:21000", value_parser = parse_one_endpoint)]
    request_endpoint: String,

    /// The ZeroMQ endpoint where the PUB socket that publishes changes binds.
    #[arg(long = "pub", value_name = "ENDPOINT", env = "FORUM_DATA_PUB", default_value = "tcp://127.0.0.1:20000", value_parser = parse_one_endpoint)]
    pub_endpoint: String,

    /// The directory for the change store (forum.redb) and the generated server id; created
    /// when missing.
    #[arg(long, value_name = "DIR", env = "FORUM_DATA_DIR", default_value = "forum-data")]
    data_dir: PathBuf,

    /// This server's id, a nonzero number unique within the group. When absent, the id stored
    /// in <DIR>/server-id is used, or a random one is generated and stored there.
    #[arg(long, value_name = "N", env = "FORUM_SERVER_ID", value_parser = clap::value_parser!(u32).range(1..))]
    id: Option<ServerId>,

    /// The request endpoint that peers use to fetch missed changes from this server, sent in
    /// every heartbeat. Default: the --request endpoint, which peers cannot use when it binds
    /// 0.0.0.0 or *.
    #[arg(long, value_name = "ENDPOINT", env = "FORUM_ADVERTISE", value_parser = parse_one_endpoint)]
    advertise: Option<String>,

    /// The address (IP:PORT) of an HTTP admin endpoint serving /healthz and /metrics in the
    /// Prometheus text format, such as 127.0.0.1:9100. None when absent.
    #[arg(long, value_name = "ADDRESS", env = "FORUM_ADMIN")]
    admin: Option<SocketAddr>,

    /// A file holding the cluster key: at least 32 bytes, such as the output of
    /// `openssl rand -hex 32`, shared by every data server and web server of the group. Every
    /// ZeroMQ message between them then has its payload encrypted and authenticated with
    /// XChaCha20-Poly1305 under this key. When absent, the key is read from the FORUM_CLUSTER_KEY
    /// environment variable; with neither, messages are neither encrypted nor authenticated and
    /// the endpoints must be loopback addresses.
    #[arg(long, value_name = "FILE", env = "FORUM_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<PathBuf>,

    /// The other data servers' PUB endpoints, separated by commas, such as
    /// tcp://127.0.0.1:20001,tcp://127.0.0.1:20002. Empty for a single server.
    #[arg(value_name = "PEERS", env = "FORUM_PEERS", default_value = "", value_parser = parse_peers)]
    peers: PeerList,
}

/// The parsed list of peer endpoints.
#[derive(Clone, Debug)]
struct PeerList(Vec<String>);

fn parse_one_endpoint(text: &str) -> Result<String, String> {
    parse_endpoint(text).map_err(|error| error.to_string())
}

fn parse_peers(text: &str) -> Result<PeerList, String> {
    parse_peer_list(text).map(PeerList).map_err(|error| error.to_string())
}

/// Returns the id stored in `<data_dir>/server-id`. When that file is missing, stores there the
/// id recorded in the data directory's store, or a random nonzero id when there is none.
fn stored_or_new_id(data_dir: &Path) -> anyhow::Result<ServerId> {
    let path = data_dir.join(SERVER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id: ServerId = text
                .trim()
                .parse()
                .ok()
                .filter(|id| *id != 0)
                .with_context(|| format!("{} does not contain a nonzero server id; fix or delete it", path.display()))?;
            Ok(id)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // A store without its server-id file (deleted, or copied alone) keeps its owner's id.
            let id = forum_dataserver::store_owner(data_dir).unwrap_or_else(|| loop {
                let candidate: ServerId = rand::random();
                if candidate != 0 {
                    break candidate;
                }
            });
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("failed to create the data directory {}", data_dir.display()))?;
            std::fs::write(&path, format!("{id}\n")).with_context(|| format!("failed to write {}", path.display()))?;
            info!(server = id, file = %path.display(), "stored the server id");
            Ok(id)
        }
        Err(error) => Err(error).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Stores an id given with `--id` in `<data_dir>/server-id`, so later starts without `--id`
/// keep it, and rejects one that differs from the id already stored there: a store's changes
/// carry its server's id, and a new id would make them look like another server's.
fn keep_given_id(data_dir: &Path, id: ServerId) -> anyhow::Result<ServerId> {
    let path = data_dir.join(SERVER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == id.to_string() => Ok(id),
        Ok(text) => anyhow::bail!(
            "--id {id} differs from the id {} stored in {}; start with --id {} or use another data directory",
            text.trim(),
            path.display(),
            text.trim()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(owner) = forum_dataserver::store_owner(data_dir).filter(|owner| *owner != id) {
                anyhow::bail!(
                    "--id {id} differs from the id {owner} recorded in the store {}; start with --id {owner} or \
                     use another data directory",
                    data_dir.join(forum_dataserver::STORE_FILE).display()
                );
            }
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("failed to create the data directory {}", data_dir.display()))?;
            std::fs::write(&path, format!("{id}\n")).with_context(|| format!("failed to write {}", path.display()))?;
            Ok(id)
        }
        Err(error) => Err(error).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Fails when the data directory has no store, or an empty store file. The caller checks
/// this only when the directory named a server id before this start.
///
/// The group stores this server's earlier changes under its id, with sequence numbers from 1
/// up. Started with that id and no store, the server would hand out those numbers again for
/// new changes, and every peer would drop them as already held.
fn refuse_lost_store(data_dir: &Path) -> anyhow::Result<()> {
    let id_path = data_dir.join(SERVER_ID_FILE);
    let store_path = data_dir.join(forum_dataserver::STORE_FILE);
    let store_size = std::fs::metadata(&store_path).map(|metadata| metadata.len()).ok();
    if store_size.unwrap_or(0) > 0 {
        return Ok(());
    }
    let state = if store_size.is_some() { "is empty" } else { "is missing" };
    anyhow::bail!(
        "{} names this server's id, but the change store {} {state}: the changes this server made are \
         gone from here, and reusing its id would make the group drop its new ones. Move the whole \
         data directory {} away and start with a new --id that the group has never used; the server \
         then fetches the whole history from its peers",
        id_path.display(),
        store_path.display(),
        data_dir.display()
    )
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("failed to listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("failed to listen for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("failed to listen for Ctrl-C")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let args = Args::parse();
    let had_id = args.data_dir.join(SERVER_ID_FILE).exists();
    let id = match args.id {
        Some(id) => keep_given_id(&args.data_dir, id)?,
        None => stored_or_new_id(&args.data_dir)?,
    };
    if had_id {
        refuse_lost_store(&args.data_dir)?;
    }
    let config = Config {
        id,
        request_endpoint: args.request_endpoint,
        pub_endpoint: args.pub_endpoint,
        data_dir: args.data_dir,
        peers: args.peers.0,
    };

    let cluster_key =
        ClusterKey::from_file_or_text(args.cluster_key_file.as_deref(), std::env::var("FORUM_CLUSTER_KEY").ok().as_deref())?;
    let options = Options { advertise: args.advertise, admin: args.admin, cluster_key };
    let server = DataServer::start_with(config, options).await?;
    stop_signal().await?;
    info!(server = id, "received a stop signal");
    server.shutdown().await;
    Ok(())
}
