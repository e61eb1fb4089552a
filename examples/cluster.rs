//! The demo group: three data servers grouped together and three web servers, one per data
//! server, all on loopback, with their data under `forum-demo/` (or `FORUM_DEMO_DIR`).
//!
//! Run it with `cargo run --release --example cluster`, open the printed web addresses in
//! browsers, and stop it with Ctrl-C. A new group starts with a few subjects.
//!
//! The servers share a cluster key, generated on the first run and kept in
//! `forum-demo/cluster-key`, so every ZeroMQ message between them is encrypted and authenticated.
//!
//! Ports: data server N (1 to 3) publishes on 127.0.0.1:2000{N-1} and serves requests on
//! 127.0.0.1:2100{N-1}; web server N listens on 127.0.0.1:808N.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use forum_dataserver::{Config as DataConfig, DataServer, Options as DataOptions};
use forum_protocol::ClusterKey;
use forum_webserver::{Config as WebConfig, Options as WebOptions, WebServer};
use serde_json::json;

const GROUP_SIZE: u16 = 3;

/// Subjects a new group starts with, so a newcomer finds a forum and not an empty page.
const STARTER_SUBJECTS: [&str; 3] = [
    "Welcome / Bienvenida",
    "Distributed systems lab / Laboratorio de sistemas distribuidos",
    "ZeroMQ patterns / Patrones de ZeroMQ",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let demo_dir = PathBuf::from(std::env::var_os("FORUM_DEMO_DIR").unwrap_or_else(|| "forum-demo".into()));
    std::fs::create_dir_all(&demo_dir)
        .with_context(|| format!("failed to create the demo folder {}", demo_dir.display()))?;

    let cluster_key = demo_cluster_key(&demo_dir)?;
    let publish_endpoints: Vec<String> =
        (0..GROUP_SIZE).map(|index| format!("tcp://127.0.0.1:{}", 20000 + index)).collect();
    let mut data_servers = Vec::new();
    for index in 0..GROUP_SIZE {
        let peers = publish_endpoints
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != usize::from(index))
            .map(|(_, endpoint)| endpoint.clone())
            .collect();
        let config = DataConfig {
            id: u32::from(index) + 1,
            request_endpoint: format!("tcp://127.0.0.1:{}", 21000 + index),
            pub_endpoint: publish_endpoints[usize::from(index)].clone(),
            data_dir: demo_dir.join(format!("data-{}", index + 1)),
            peers,
        };
        let options = DataOptions { cluster_key: Some(cluster_key.clone()), ..DataOptions::default() };
        let server = DataServer::start_with(config, options)
            .await
            .with_context(|| format!("failed to start data server {} (is the port in use?)", index + 1))?;
        data_servers.push(server);
    }

    let mut web_servers = Vec::new();
    for (index, data) in data_servers.iter().enumerate() {
        let config = WebConfig {
            listen: format!("127.0.0.1:{}", 8081 + index).parse()?,
            data_request_endpoint: data.request_endpoint().to_owned(),
            data_pub_endpoint: data.pub_endpoint().to_owned(),
            name: format!("web-{}", index + 1),
            request_timeout: Duration::from_secs(5),
        };
        let options = WebOptions { cluster_key: Some(cluster_key.clone()), ..WebOptions::default() };
        let server = WebServer::start_with(config, options)
            .await
            .with_context(|| format!("failed to start web server {} (is the port in use?)", index + 1))?;
        web_servers.push(server);
    }

    // A peer that misses the starter subjects over PUB/SUB fetches them by catch-up. The pause
    // only lets the connections settle, so the log shows the group up before the seeding.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first_web = format!("http://{}", web_servers[0].local_addr());
    if let Err(error) = seed_starter_subjects(&first_web, &demo_dir).await {
        tracing::warn!(%error, "failed to create the starter subjects");
    }

    println!();
    println!("The forum demo group is running. Open any of these in a browser:");
    for server in &web_servers {
        println!("  web server  http://{}", server.local_addr());
    }
    for server in &data_servers {
        println!(
            "  data server {}  requests {}  publishes {}",
            server.id(),
            server.request_endpoint(),
            server.pub_endpoint()
        );
    }
    println!("Data is under {}. Press Ctrl-C to stop.", demo_dir.display());

    tokio::signal::ctrl_c().await.context("failed to wait for Ctrl-C")?;
    println!("Stopping...");
    for server in web_servers {
        server.shutdown().await;
    }
    for server in data_servers {
        server.shutdown().await;
    }
    println!("Stopped.");
    Ok(())
}

/// Returns the key in `<demo_dir>/cluster-key`, or generates one and stores it there.
fn demo_cluster_key(demo_dir: &std::path::Path) -> anyhow::Result<ClusterKey> {
    let path = demo_dir.join("cluster-key");
    if path.exists() {
        return Ok(ClusterKey::from_file(&path)?);
    }
    let (key, text) = ClusterKey::generate();
    std::fs::write(&path, format!("{text}\n")).with_context(|| format!("failed to write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to make {} private", path.display()))?;
    }
    tracing::info!(file = %path.display(), "generated a cluster key");
    Ok(key)
}

/// Creates the starter subjects through the HTTP API when the forum has none, as a
/// `moderator` account whose password is kept in the demo folder.
async fn seed_starter_subjects(web: &str, demo_dir: &std::path::Path) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().cookie_store(true).build()?;
    let subjects: Vec<serde_json::Value> = client.get(format!("{web}/api/subjects")).send().await?.json().await?;
    if !subjects.is_empty() {
        return Ok(());
    }
    let password_file = demo_dir.join("moderator-password");
    let password = match std::fs::read_to_string(&password_file) {
        Ok(password) => password.trim().to_owned(),
        Err(_) => {
            let password = format!("{:032x}", rand::random::<u128>());
            std::fs::write(&password_file, &password)
                .with_context(|| format!("failed to write {}", password_file.display()))?;
            client
                .post(format!("{web}/api/users"))
                .json(&json!({"name": "moderator", "password": password}))
                .send()
                .await?
                .error_for_status()?;
            password
        }
    };
    client
        .post(format!("{web}/api/login"))
        .json(&json!({"name": "moderator", "password": password}))
        .send()
        .await?
        .error_for_status()?;
    for title in STARTER_SUBJECTS {
        let subject: serde_json::Value = client
            .post(format!("{web}/api/subjects"))
            .json(&json!({"title": title}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if title == STARTER_SUBJECTS[0] {
            let id = subject["id"].as_str().unwrap_or_default();
            let text = "Welcome! Posts here reach every web server of the group live. \
                        / ¡Bienvenidos! Los mensajes llegan en directo a todos los servidores web del grupo.";
            client
                .post(format!("{web}/api/subjects/{id}/messages"))
                .json(&json!({"text": text}))
                .send()
                .await?
                .error_for_status()?;
        }
    }
    Ok(())
}
