//! Connects the raft core to the QUIC transport: raft messages out, peers' messages and
//! snapshots in, membership changes turned into the transport's peer table.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};

use std::rc::Rc;

use bytes::Bytes;
use rivet_api::etcdserverpb::HashKvResponse;
use rivet_engine::core::ShardCore;
use rivet_engine::error::EtcdError;
use rivet_engine::messages::{PeerHash, PeerHashOutcome};
use rivet_engine::raft::{PeerEvent, PeerLink};
use tokio::sync::mpsc;

use crate::peer::frame::HashKvAnswer;
use crate::peer::{Incoming, PeerTransport};

/// A peer's HashKV request, handed to the shard core that answers them
/// ([`serve_peer_hash_kv`]).
pub struct PeerHashRequest {
    pub revision: i64,
    pub reply: futures::channel::oneshot::Sender<Result<HashKvResponse, EtcdError>>,
}

/// Answers the peers' HashKV requests on a shard core (the transport runs on the raft
/// core's thread, the hash is the shard cores'), each in a task of its own.
pub async fn serve_peer_hash_kv(
    core: Rc<ShardCore>,
    requests: async_channel::Receiver<PeerHashRequest>,
) {
    while let Ok(request) = requests.recv().await {
        let core = Rc::clone(&core);
        glommio::spawn_local(async move {
            let _ = request
                .reply
                .send(core.hash_kv_local(request.revision).await);
        })
        .detach();
    }
}

/// What goes back on the wire for a HashKV answer (etcd's HashByRev outcomes).
fn wire_answer(answer: Result<HashKvResponse, EtcdError>) -> HashKvAnswer {
    match answer {
        Ok(response) => match response.header {
            Some(header) if header.member_id != 0 => HashKvAnswer::Answered {
                member_id: header.member_id,
                revision: header.revision,
                compact_revision: response.compact_revision,
                hash: response.hash,
            },
            _ => HashKvAnswer::Unavailable,
        },
        Err(EtcdError::Compacted) => HashKvAnswer::Compacted,
        Err(EtcdError::FutureRevision) => HashKvAnswer::FutureRevision,
        Err(_) => HashKvAnswer::Unavailable,
    }
}

/// A peer's answer as the corruption checks take it.
fn outcome(
    answer: Result<Result<HashKvAnswer, crate::peer::hash_kv::HashKvError>, impl std::fmt::Display>,
) -> PeerHashOutcome {
    match answer {
        Ok(Ok(HashKvAnswer::Answered {
            revision,
            compact_revision,
            hash,
            ..
        })) => PeerHashOutcome::Answered {
            revision,
            compact_revision,
            hash,
        },
        Ok(Ok(HashKvAnswer::Compacted)) => PeerHashOutcome::Compacted,
        Ok(Ok(HashKvAnswer::FutureRevision)) => PeerHashOutcome::FutureRevision,
        Ok(Ok(HashKvAnswer::Unavailable)) => {
            PeerHashOutcome::Failed("the peer could not compute its hash".into())
        }
        Ok(Err(error)) => PeerHashOutcome::Failed(error.to_string()),
        Err(error) => PeerHashOutcome::Failed(error.to_string()),
    }
}

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
        hash_requests: async_channel::Sender<PeerHashRequest>,
    ) -> QuicLink {
        let forward = events.clone();
        tokio::spawn(async move {
            while let Some(item) = incoming.recv().await {
                let event = match item {
                    Incoming::Message { bytes, .. } => PeerEvent::Message(bytes),
                    Incoming::RemovedFromCluster { .. } => PeerEvent::RemovedFromCluster,
                    Incoming::HashKv {
                        revision, reply, ..
                    } => {
                        let hash_requests = hash_requests.clone();
                        tokio::spawn(async move {
                            let (answer_tx, answer) = futures::channel::oneshot::channel();
                            let request = PeerHashRequest {
                                revision,
                                reply: answer_tx,
                            };
                            let answer = match hash_requests.send(request).await {
                                Ok(()) => answer.await.unwrap_or(Err(EtcdError::Stopped)),
                                Err(_) => Err(EtcdError::Stopped),
                            };
                            let _ = reply.send(wire_answer(answer));
                        });
                        continue;
                    }
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

    fn hash_kvs(
        &self,
        peers: Vec<(u64, Vec<String>)>,
        revision: i64,
        reply: futures::channel::oneshot::Sender<Vec<PeerHash>>,
    ) {
        let asked: Vec<_> = peers
            .into_iter()
            .map(|(id, peer_urls)| (id, peer_urls, self.transport.hash_kv(id, revision)))
            .collect();
        tokio::spawn(async move {
            let mut answers = Vec::with_capacity(asked.len());
            for (id, peer_urls, answer) in asked {
                answers.push(PeerHash {
                    id,
                    peer_urls,
                    outcome: outcome(answer.await),
                });
            }
            let _ = reply.send(answers);
        });
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
