//! A UDP relay on loopback that can lose every packet from the server to the client, to make
//! an acknowledgement disappear after the server stored the batch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;

pub(crate) struct LossyProxy {
    pub addr: SocketAddr,
    pub drop_replies: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    pub(crate) async fn start(server: SocketAddr) -> LossyProxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let drop_replies = Arc::new(AtomicBool::new(false));
        let drop = Arc::clone(&drop_replies);
        let task = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            // Dropped with this task when the proxy is dropped: that aborts the relays too.
            let mut relays = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((len, client)) = front.recv_from(&mut buf).await else { return };
                let upstream = match upstreams.get(&client) {
                    Some(upstream) => Arc::clone(upstream),
                    None => {
                        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        upstream.connect(server).await.unwrap();
                        upstreams.insert(client, Arc::clone(&upstream));
                        let (front, relay, drop) = (Arc::clone(&front), Arc::clone(&upstream), Arc::clone(&drop));
                        relays.spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(len) = relay.recv(&mut buf).await {
                                if !drop.load(Ordering::SeqCst) {
                                    let _ = front.send_to(&buf[..len], client).await;
                                }
                            }
                        });
                        upstream
                    }
                };
                let _ = upstream.send(&buf[..len]).await;
            }
        });
        LossyProxy { addr, drop_replies, task }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP relay on loopback that behaves like a NAT whose mapping expires: every `interval` it
/// sends the client's packets from a new source port (a new upstream socket) and forgets the
/// old one, so the server sees the client's address change mid-connection.
pub(crate) struct RebindingRelay {
    pub addr: SocketAddr,
    /// How many times the upstream port changed.
    pub rebinds: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RebindingRelay {
    pub(crate) async fn start(server: SocketAddr, interval: std::time::Duration) -> RebindingRelay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let rebinds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&rebinds);
        let task = tokio::spawn(async move {
            let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
            let mut upstream: Option<(Arc<UdpSocket>, tokio::task::JoinHandle<()>)> = None;
            let mut next_rebind = tokio::time::Instant::now() + interval;
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((len, from)) = front.recv_from(&mut buf).await else { return };
                *client.lock().unwrap() = Some(from);
                if upstream.is_some() && tokio::time::Instant::now() >= next_rebind {
                    // The mapping expired: the old port is gone, replies sent to it are lost.
                    let (_, relay) = upstream.take().unwrap();
                    relay.abort();
                    counter.fetch_add(1, Ordering::SeqCst);
                    next_rebind = tokio::time::Instant::now() + interval;
                }
                if upstream.is_none() {
                    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    socket.connect(server).await.unwrap();
                    let (front, replies, client) = (Arc::clone(&front), Arc::clone(&socket), Arc::clone(&client));
                    let relay = tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(len) = replies.recv(&mut buf).await {
                            let to = *client.lock().unwrap();
                            if let Some(to) = to {
                                let _ = front.send_to(&buf[..len], to).await;
                            }
                        }
                    });
                    upstream = Some((socket, relay));
                }
                let _ = upstream.as_ref().unwrap().0.send(&buf[..len]).await;
            }
        });
        RebindingRelay { addr, rebinds, task }
    }
}

impl Drop for RebindingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
