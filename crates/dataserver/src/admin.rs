//! The optional HTTP admin endpoint: `GET /healthz` and `GET /metrics` (Prometheus text).

use std::net::SocketAddr;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;
use warp::http::{header, HeaderValue, Response};
use warp::Filter;

/// Builds a 200 response in the Prometheus text format's content type, which plain text fits.
fn text_response(body: String) -> Response<String> {
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

use crate::status::{prometheus_text, StatusSource};

/// Binds the admin address and serves it until `shutdown` turns true. Returns the bound
/// address (with the real port when port 0 was asked) and the serving task.
pub(crate) async fn start(
    address: SocketAddr,
    status: StatusSource,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let server = status.server;
    let health = warp::path("healthz").and(warp::path::end()).and(warp::get()).map(|| text_response("ok\n".to_owned()));
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || text_response(prometheus_text(&status.snapshot())));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("failed to bind the admin address {address}: {error}"))?;
    let bound = listener.local_addr()?;
    let routes = health.or(metrics).unify().boxed();
    let serving = warp::serve(routes)
        .incoming(listener)
        .graceful(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        })
        .run();
    let task = tokio::spawn(async move {
        serving.await;
        info!(server, "admin endpoint stopped");
    });
    Ok((bound, task))
}
