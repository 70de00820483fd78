//! The xDS ports' listeners: a deep accept queue, and accepts on a thread of their own.
//!
//! After a restart every proxy dials at once. The kernel holds at most `net.core.somaxconn`
//! (4096 by default) connections waiting to be accepted and drops the SYNs beyond, which the
//! clients send again only after 1, 3, 7, 15… seconds. An accept loop that is one task among
//! thousands of busy streams waits its turn on the runtime's workers, the queue overflows, and
//! the storm's tail grows by those back-offs (seen: 32 000 dropped SYNs for 10 000 proxies,
//! the last synced after 90 s while 90 % were in 35 s). A thread that only accepts keeps the
//! queue short whatever the workers are doing.
//!
//! The same thread enforces the listener's connection cap: a connection over it is closed as
//! soon as it is accepted, before it costs a task, a buffer or a TLS handshake.

use futures::Stream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// An accepted connection within its listener's cap.
pub struct Admitted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    /// Its place under the cap, given back when dropped.
    pub slot: OwnedSemaphorePermit,
}

/// Connections a listener closed at once for being over its cap.
#[derive(Default, Debug)]
pub struct Refused(pub AtomicU64);

/// Each listener's [`Refused`] count by name, kept across restarts of its server, for
/// `/metrics`.
#[derive(Default, Debug)]
pub struct RefusedByListener(
    std::sync::Mutex<std::collections::BTreeMap<&'static str, Arc<Refused>>>,
);

impl RefusedByListener {
    pub fn listener(&self, name: &'static str) -> Arc<Refused> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default()
            .clone()
    }

    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, r)| (*name, r.0.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A listener whose accept queue holds a reconnect storm (tokio's default backlog is 1024; the
/// kernel caps this at `net.core.somaxconn`).
pub fn listen_for_proxies(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(65535)
}

/// Accepts on a thread named `name` until `stop` turns true or the returned stream is dropped,
/// at most `max_connections` open at once (counting those not yet closed). The connections
/// come out registered with the runtime that polls the stream.
pub fn accept_on_own_thread(
    listener: TcpListener,
    name: &str,
    max_connections: usize,
    refused: Arc<Refused>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<impl Stream<Item = Admitted> + use<>> {
    let listener = listener.into_std()?;
    let slots = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
    let (tx, rx) =
        mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr, OwnedSemaphorePermit)>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let label = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(listener = %label, error = %e, "accept thread");
                        return;
                    }
                };
                loop {
                    let accepted = tokio::select! {
                        r = listener.accept() => r,
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tx.closed() => return,
                    };
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors, say: wait rather than spin.
                            tracing::warn!(listener = %label, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        let n = refused.0.fetch_add(1, Ordering::Relaxed) + 1;
                        // Once per power of two: a flood must not become a log flood.
                        if n.is_power_of_two() {
                            tracing::warn!(listener = %label, %peer, refused = n, max_connections, "connection cap reached: connection closed");
                        }
                        drop(tcp);
                        continue;
                    };
                    match tcp.set_nodelay(true).and_then(|()| tcp.into_std()) {
                        Ok(tcp) => {
                            if tx.send((tcp, peer, slot)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(listener = %label, %peer, error = %e, "accepted connection unusable");
                        }
                    }
                }
            })
        })?;
    Ok(
        UnboundedReceiverStream::new(rx).filter_map(|(tcp, peer, slot)| match TcpStream::from_std(
            tcp,
        ) {
            Ok(tcp) => Some(Admitted { tcp, peer, slot }),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "accepted connection unusable");
                None
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_accepted_on_the_thread_are_usable_here_and_stop_ends_it() {
        let listener = listen_for_proxies("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let refused = Arc::new(Refused::default());
        let mut incoming = Box::pin(
            accept_on_own_thread(listener, "test-accept", 10, refused.clone(), stop).unwrap(),
        );
        for i in 0..3u8 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let Admitted {
                tcp: mut served, ..
            } = incoming.next().await.unwrap();
            assert!(served.nodelay().unwrap());
            client.write_all(&[i]).await.unwrap();
            let mut got = [0u8];
            served.read_exact(&mut got).await.unwrap();
            assert_eq!(got[0], i);
        }
        assert_eq!(refused.0.load(Ordering::Relaxed), 0);
        stop_tx.send(true).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), incoming.next())
                .await
                .expect("the stream ends once the thread stops")
                .is_none()
        );
    }
}
