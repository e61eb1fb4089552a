//! A TCP proxy that a test can cut and heal, to put faults between two data servers.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection on its own loopback port to `target`. While cut, it closes the
/// connections it carries and closes each new one at once, as a broken network link would
/// look to zeromq.
pub struct Proxy {
    pub port: u16,
    open: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a proxy port");
        let port = listener.local_addr().expect("a bound proxy port").port();
        let (open, _) = watch::channel(true);
        let link = open.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut state = link.subscribe();
                if !*state.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Proxy { port, open, acceptor }
    }

    /// Returns the endpoint that peers use in place of the target's.
    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.acceptor.abort();
    }
}
