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
