//! A TCP gate in front of a local service (Azurite's blob port, say): open, it forwards every connection;
//! closed, it cuts the connections it carries and stops listening, so new ones are refused as by a host that is
//! down. A test points one client at the gate and the rest of the stack at the service itself, so one account
//! (or one of Azurite's services) goes away while everything else keeps answering — an outage no process kill
//! can give, since one Azurite serves both blobs and tables.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A forwarding listener on a loopback port chosen at start. Dropping it stops forwarding.
pub struct Gate {
    port: u16,
    open: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Starts forwarding `127.0.0.1:<new port>` to `target`, open.
    pub async fn to(target: SocketAddr) -> std::io::Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let sender = open.clone();
        let mut state = open.subscribe();
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let Some(l) = listener.as_ref() else {
                    // Closed: nothing listens on the port until the gate opens again (then it listens anew).
                    if state.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    listener = TcpListener::bind(("127.0.0.1", port)).await.ok();
                    continue;
                };
                let accepted = tokio::select! {
                    biased;
                    _ = state.wait_for(|open| !*open) => None,
                    accepted = l.accept() => Some(accepted),
                };
                let Some(accepted) = accepted else {
                    listener = None;
                    continue;
                };
                // A failed accept (a connection reset before it was taken) leaves the gate listening.
                let Ok((mut client, _)) = accepted else { continue };
                let mut closed = sender.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    // The close comes first: nothing more is forwarded once the gate is closed.
                    tokio::select! {
                        biased;
                        _ = closed.wait_for(|open| !*open) => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Ok(Gate { port, open, task })
    }

    /// The gate's port: clients that should see the outage use it instead of the service's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection through the gate and refuses new ones until [`Gate::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
