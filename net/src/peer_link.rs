//! Connects the raft core to the QUIC transport: raft messages out, peers' messages and
//! snapshots in, membership changes turned into the transport's peer table.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use rivet_engine::raft::{PeerEvent, PeerLink};
use tokio::sync::mpsc;

use crate::peer::{Incoming, PeerTransport};

/// The largest snapshot a member accepts (in memory while it is staged).
const SNAPSHOT_BYTES_MAX: usize = 8 << 30;

/// The socket address of the first URL in a list of `http://host:port` peer URLs.
pub fn peer_address(urls: &[String]) -> Option<SocketAddr> {
    urls.iter().find_map(|url| {
        let host_port = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let mut addresses: Vec<SocketAddr> = host_port.to_socket_addrs().ok()?.collect();
        addresses.sort_by_key(|a| !a.is_ipv4());
        addresses.into_iter().next()
    })
}

pub struct QuicLink {
    transport: PeerTransport,
    events: mpsc::Sender<PeerEvent>,
    known: RefCell<HashMap<u64, SocketAddr>>,
}

impl QuicLink {
    /// Wraps a started transport and forwards what it receives to the raft core.
    pub fn new(
        transport: PeerTransport,
        mut incoming: mpsc::Receiver<Incoming>,
        events: mpsc::Sender<PeerEvent>,
    ) -> QuicLink {
        let forward = events.clone();
        tokio::spawn(async move {
            while let Some(item) = incoming.recv().await {
                let event = match item {
                    Incoming::Message { bytes, .. } => PeerEvent::Message(bytes),
                    Incoming::RemovedFromCluster { .. } => PeerEvent::RemovedFromCluster,
                    Incoming::Snapshot {
                        from,
                        metadata,
                        data,
                    } => match data.read_to_end(SNAPSHOT_BYTES_MAX).await {
                        Ok(data) => PeerEvent::Snapshot {
                            message: metadata,
                            data,
                        },
                        Err(e) => {
                            tracing::warn!(
                                from = format_args!("{from:x}"),
                                "a snapshot did not arrive whole: {e}"
                            );
                            continue;
                        }
                    },
                };
                if forward.send(event).await.is_err() {
                    break;
                }
            }
        });
        QuicLink {
            transport,
            events,
            known: RefCell::new(HashMap::new()),
        }
    }
}

impl PeerLink for QuicLink {
    fn send(&self, to: u64, message: Bytes) -> bool {
        self.transport.send(to, message).is_ok()
    }

    fn set_peers(&self, peers: Vec<(u64, Vec<String>)>) {
        let mut known = self.known.borrow_mut();
        let mut now: HashMap<u64, SocketAddr> = HashMap::new();
        for (id, urls) in peers {
            match peer_address(&urls) {
                Some(address) => {
                    now.insert(id, address);
                }
                None => tracing::warn!(
                    member = format_args!("{id:x}"),
                    ?urls,
                    "cannot resolve a peer URL"
                ),
            }
        }
        for (id, address) in &now {
            match known.get(id) {
                Some(old) if old == address => {}
                Some(_) => self.transport.update_peer(*id, *address),
                None => {
                    if let Err(e) = self.transport.add_peer(*id, *address) {
                        tracing::warn!(member = format_args!("{id:x}"), "cannot add peer: {e}");
                    }
                }
            }
        }
        for id in known.keys() {
            if !now.contains_key(id) {
                self.transport.remove_peer(*id);
            }
        }
        *known = now;
    }

    fn set_blocked(&self, peers: &[u64]) {
        self.transport.set_blocked(peers);
    }

    fn connected_since(&self, to: u64) -> Option<std::time::Instant> {
        self.transport.connected_since(to)
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        // The transport's tasks run on this thread's runtime: one yield lets them write.
        Box::pin(tokio::task::yield_now())
    }

    fn send_snapshot(&self, to: u64, message: Bytes, data: Bytes) {
        let sending = self
            .transport
            .send_snapshot(to, message, futures::stream::iter([Ok(data)]));
        let events = self.events.clone();
        tokio::spawn(async move {
            let delivered = sending.await.is_ok();
            let _ = events
                .send(PeerEvent::SnapshotStatus { to, delivered })
                .await;
        });
    }
}
