//! Peer transport: raft messages and snapshots between the members of a cluster, over
//! QUIC (quinn, TLS 1.3).
//!
//! Everything runs as tasks on the tokio runtime that called [`PeerTransport::start`] —
//! in rivet, the raft core's pinned current-thread runtime — and nothing blocks the
//! caller: [`PeerTransport::send`] queues and returns at once, snapshots stream in their
//! own task.
//!
//! # Links
//! Two members share **one QUIC connection**, their *link*. Both dial when they have no
//! link (eagerly, at start and whenever it is lost), so a member that restarts, or a
//! member that does not know the other yet, is reachable from either side. When both
//! dial at once, each ends up with two connections; both members then keep the same one
//! and close the other, by one rule applied on both sides ([`Link::replaces`]): a
//! connection from a new *incarnation* of the peer (it restarted) always wins, and
//! otherwise the connection dialed by the member with the lower ID wins.
//!
//! A link starts with a HELLO exchange on its one bidirectional stream (see [`frame`])
//! that carries the cluster ID and the member IDs. A peer of another cluster is refused
//! with a `cluster ID mismatch` warning, etcd's wording. A connection from a member that
//! is not in the peer list is accepted and the member is learned (its address is the
//! connection's source address, which is its listen address): a lagging member must hear
//! a leader that joined after its last applied configuration change, as etcd's pipeline
//! handler allows. Connections from removed members are refused. Which members' messages
//! raft may act on is the caller's decision.
//!
//! After the HELLOs, raft messages travel on that stream as length-prefixed frames in
//! both directions; every write takes all the messages queued at that moment (up to
//! [`limits::BATCH_MESSAGES_MAX`]). Each snapshot gets a unidirectional stream of its own
//! with a lower priority, so it never delays heartbeats.
//!
//! # Failures
//! A message for a peer whose link is down waits in the peer's bounded queue while the
//! link is being re-established. When a dial fails, the peer is marked unreachable: its
//! queue is emptied and `send` answers [`SendError::Unreachable`] until a link is up
//! again, so that the caller reports the peer to raft (`report_unreachable`) at once.
//! Dials back off exponentially (100 ms doubling to 2 s, with jitter).
//!
//! # TLS
//! Without peer certificate flags, a self-signed certificate is generated at start and
//! **peers are not authenticated** (encrypted only). With etcd's peer flags both sides
//! present the member's certificate and verify the other's against the trusted CA, the
//! CRL and the allowed CN or hostname; see [`tls`]. A refused peer is logged with its
//! address and the reason.

//!
//! # Files
//! This file holds the public API ([`PeerTransport`], its configuration, errors and
//! statistics) and the state every task shares; [`table`] the peers and their links,
//! [`handshake`] dialing, accepting and the HELLO exchange, [`link`] a running link's
//! reader and writer, [`snapshot`] the snapshot streams, [`frame`] the wire format,
//! [`limits`] every limit, [`tls`] the TLS configuration.

pub mod frame;
mod handshake;
pub mod hash_kv;
pub mod limits;
mod link;
mod snapshot;
mod table;
pub mod tls;

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use quinn::{Endpoint, VarInt};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

use frame::Hello;
use handshake::{run_acceptor, HandshakeError};
use limits::*;
use link::LinkError;
use table::{Peer, PeerTable};

pub use snapshot::{SnapshotError, SnapshotReceiver, SnapshotSending, SnapshotSent};

/// Configuration of one member's peer transport.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This member's ID.
    pub member_id: u64,
    /// The cluster's ID; links to members of another cluster are refused.
    pub cluster_id: u64,
    /// UDP address to listen on: the host and port of the member's peer URL.
    pub listen: SocketAddr,
    /// The other members: ID and peer address. This member's own ID is skipped.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Transport knobs. The defaults are the measured best; the benchmark changes them to
    /// show what each is worth.
    pub tuning: PeerTuning,
    /// How links are secured: generated certificates (the default) or the member's
    /// certificate files with etcd's peer rules.
    pub tls: tls::PeerTls,
}

impl PeerConfig {
    /// A configuration with the default tuning.
    pub fn new(
        member_id: u64,
        cluster_id: u64,
        listen: SocketAddr,
        peers: Vec<(u64, SocketAddr)>,
    ) -> Self {
        PeerConfig {
            member_id,
            cluster_id,
            listen,
            peers,
            tuning: PeerTuning::default(),
            tls: tls::PeerTls::default(),
        }
    }
}

/// QUIC knobs that matter for latency and throughput.
#[derive(Clone, Debug)]
pub struct PeerTuning {
    /// Congestion controller of every connection.
    pub congestion: Congestion,
    /// UDP generic segmentation offload: one system call sends many packets.
    pub segmentation_offload: bool,
    /// Kernel send and receive buffer of the UDP socket; `None` keeps the system default.
    pub socket_buffer_bytes: Option<usize>,
    /// Per-stream flow-control window (the connection's is four times larger): how much
    /// the peer may send that our side has not read yet.
    pub stream_receive_window_bytes: u32,
    /// Smallest send window (bytes in flight) of a connection; it grows with the RTT
    /// (see [`limits::SEND_WINDOW_BYTES_PER_SECOND`]).
    pub send_window_bytes_min: u64,
    /// Largest UDP payload path MTU discovery may probe for; `None` disables discovery
    /// (packets stay at 1200 bytes).
    pub mtu_upper_bound: Option<u16>,
}

/// Congestion controllers quinn offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Congestion {
    Cubic,
    NewReno,
    Bbr,
}

impl Default for PeerTuning {
    fn default() -> Self {
        PeerTuning {
            congestion: Congestion::Cubic,
            segmentation_offload: true,
            socket_buffer_bytes: Some(SOCKET_BUFFER_BYTES),
            stream_receive_window_bytes: STREAM_RECEIVE_WINDOW_BYTES,
            send_window_bytes_min: SEND_WINDOW_BYTES_MIN,
            mtu_upper_bound: Some(MTU_UPPER_BOUND),
        }
    }
}

/// What the transport delivers to its owner.
#[derive(Debug)]
pub enum Incoming {
    /// One raft message, as the sender passed it to [`PeerTransport::send`].
    Message { from: u64, bytes: Bytes },
    /// A snapshot that is arriving: its metadata at once, its data as it streams in.
    Snapshot {
        from: u64,
        metadata: Bytes,
        data: SnapshotReceiver,
    },
    /// A peer refused us because this member was removed from the cluster (etcd's
    /// "the member has been permanently removed"): the member should stop.
    RemovedFromCluster { by: u64 },
    /// A peer asks for this member's HashKV at `revision` (a corruption check); the
    /// owner answers through `reply` (dropping it answers "unavailable").
    HashKv {
        from: u64,
        revision: i64,
        reply: oneshot::Sender<frame::HashKvAnswer>,
    },
}

/// Errors starting the transport or changing its peers.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("binding the peer UDP socket on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("peer transport configuration: {0}")]
    Config(String),
    #[error("member {0:x} cannot be its own peer")]
    OwnId(u64),
    #[error("too many peers: the limit is {PEERS_MAX}")]
    TooManyPeers,
    #[error("no member of the cluster answered within {0:?}: was this member added with `member add` first, and are the peer URLs in --initial-cluster right?")]
    Discovery(Duration),
}

/// Why [`PeerTransport::send`] did not queue a message. Every case means the message is
/// lost and the caller should report the peer unreachable to raft.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no peer with member ID {0:x}")]
    UnknownPeer(u64),
    #[error("the queue for peer {0:x} is full")]
    QueueFull(u64),
    #[error("peer {0:x} is unreachable: its last dial failed")]
    Unreachable(u64),
    #[error("a raft message of {bytes} bytes exceeds the limit of {MESSAGE_BYTES_MAX}")]
    TooLarge { bytes: usize },
}

/// Counters since start, and the state of each peer.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// Raft messages written to links.
    pub messages_sent: u64,
    pub message_bytes_sent: u64,
    /// Raft messages delivered to the owner.
    pub messages_received: u64,
    /// Messages refused by `send` because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages refused by `send`, or dropped from the queue, because the peer's last
    /// dial failed.
    pub dropped_unreachable: u64,
    /// Messages dropped by [`PeerTransport::set_blocked`], both directions.
    pub dropped_blocked: u64,
    /// Connections that became a peer's link (the first one and every reconnect).
    pub links_established: u64,
    pub dial_failures: u64,
    /// Incoming connections refused: wrong cluster, wrong member, removed member, too
    /// many handshakes or peers.
    pub connections_refused: u64,
    pub snapshots_sent: u64,
    pub snapshots_send_failed: u64,
    pub snapshots_received: u64,
    pub snapshots_receive_failed: u64,
    pub peers: Vec<PeerLinkStats>,
}

/// State of one peer.
#[derive(Clone, Debug)]
pub struct PeerLinkStats {
    pub id: u64,
    pub address: SocketAddr,
    pub connected: bool,
    pub unreachable: bool,
    pub blocked: bool,
    pub queued_messages: usize,
    /// QUIC's smoothed round-trip estimate of the link, if connected.
    pub rtt: Option<Duration>,
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    message_bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_blocked: AtomicU64,
    links_established: AtomicU64,
    dial_failures: AtomicU64,
    connections_refused: AtomicU64,
    snapshots_sent: AtomicU64,
    snapshots_send_failed: AtomicU64,
    snapshots_received: AtomicU64,
    snapshots_receive_failed: AtomicU64,
}

fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Relaxed);
}

/// QUIC application error codes closing a connection; the reason text goes along.
mod close_code {
    pub const SHUTDOWN: u32 = 0;
    pub const DUPLICATE: u32 = 1;
    pub const CLUSTER_ID_MISMATCH: u32 = 2;
    pub const MEMBER_ID_MISMATCH: u32 = 3;
    pub const MEMBER_REMOVED: u32 = 4;
    pub const PROTOCOL: u32 = 5;
    pub const TOO_MANY_PEERS: u32 = 6;
    pub const ADDRESS_CHANGED: u32 = 7;
    pub const LINK_FAILED: u32 = 8;
    pub const CERTIFICATE_REFUSED: u32 = 9;
}

/// QUIC application error codes ending a snapshot stream early.
mod stream_code {
    pub const SNAPSHOT_ABORTED: u32 = 1;
    pub const SNAPSHOT_NOT_WANTED: u32 = 2;
}

/// The link stream's data goes before snapshot data.
const LINK_STREAM_PRIORITY: i32 = 1;
const SNAPSHOT_STREAM_PRIORITY: i32 = 0;

/// A handle on a running peer transport. Clones share it; when the last clone is dropped
/// the transport shuts down (as [`PeerTransport::shutdown`], without waiting).
#[derive(Clone)]
pub struct PeerTransport {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared {
    member_id: u64,
    /// 0 while a joining member has not learned its cluster's ID yet (see
    /// [`PeerTransport::discover_cluster_id`]); then the ID the first peer answered with.
    cluster_id: std::sync::atomic::AtomicU64,
    /// Drawn at start; see [`Hello::incarnation`].
    incarnation: u64,
    send_window_bytes_min: u64,
    /// etcd's SAN check of accepted peers' certificates (see [`tls`]).
    check_san: bool,
    /// Dial by the peer's IP address as TLS server name (certificates are verified).
    dial_by_address: bool,
    endpoint: Endpoint,
    runtime: tokio::runtime::Handle,
    table: Mutex<PeerTable>,
    incoming: mpsc::Sender<Incoming>,
    counters: Counters,
    handshakes: Arc<Semaphore>,
    /// Set once when the transport shuts down; every long-running task watches it.
    closing: watch::Sender<bool>,
}

/// For stream operations whose only failure is that the stream is already closed, which
/// is the outcome they aim for anyway.
fn ignore_closed(_already_closed: Result<(), quinn::ClosedStream>) {}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here panics; if one ever does, its data is still consistent
    // (plain assignments), so carry on rather than poison every later caller.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PeerTransport {
    /// Binds the UDP socket, starts listening and dialing the configured peers. Must be
    /// called on the tokio runtime that will run the transport (any flavour, including a
    /// current-thread runtime).
    pub async fn start(
        config: PeerConfig,
    ) -> Result<(PeerTransport, mpsc::Receiver<Incoming>), PeerError> {
        let tls = tls::configs(&config.tls)?;
        let (authenticates, check_san, dial_by_address) =
            (tls.authenticates, tls.check_san, tls.dial_by_address);
        let transport = Arc::new(transport_config(&config.tuning)?);
        let mut server_config = quinn::ServerConfig::with_crypto(tls.server);
        server_config.transport_config(transport.clone());
        server_config.max_incoming(HANDSHAKES_MAX).migration(false);
        let mut client_config = quinn::ClientConfig::new(tls.client);
        client_config.transport_config(transport);

        let socket =
            bind_socket(config.listen, config.tuning.socket_buffer_bytes).map_err(|source| {
                PeerError::Bind {
                    address: config.listen,
                    source,
                }
            })?;
        let mut endpoint = Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| PeerError::Bind {
            address: config.listen,
            source,
        })?;
        endpoint.set_default_client_config(client_config);

        let (incoming, incoming_receiver) = mpsc::channel(INCOMING_QUEUE_MAX);
        let shared = Arc::new(Shared {
            member_id: config.member_id,
            cluster_id: std::sync::atomic::AtomicU64::new(config.cluster_id),
            incarnation: random_u64(),
            send_window_bytes_min: config.tuning.send_window_bytes_min,
            check_san,
            dial_by_address,
            endpoint,
            runtime: tokio::runtime::Handle::current(),
            table: Mutex::new(PeerTable::default()),
            incoming,
            counters: Counters::default(),
            handshakes: Arc::new(Semaphore::new(HANDSHAKES_MAX)),
            closing: watch::Sender::new(false),
        });
        let transport = PeerTransport {
            handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
        };
        for (id, address) in config.peers {
            if id != config.member_id {
                transport.add_peer(id, address)?;
            }
        }
        let listen = shared
            .endpoint
            .local_addr()
            .map_err(|source| PeerError::Bind {
                address: config.listen,
                source,
            })?;
        if authenticates {
            info!(
                member_id = %format_args!("{:x}", shared.member_id),
                cluster_id = %format_args!("{:x}", shared.cluster_id()),
                %listen,
                "peer transport listening (QUIC; peers authenticated by their certificates)"
            );
        } else {
            info!(
                member_id = %format_args!("{:x}", shared.member_id),
                cluster_id = %format_args!("{:x}", shared.cluster_id()),
                %listen,
                "peer transport listening (QUIC, encrypted; peers are not authenticated: no --peer-trusted-ca-file)"
            );
        }
        shared.runtime.spawn(run_acceptor(shared.clone()));
        Ok((transport, incoming_receiver))
    }

    /// The cluster ID this transport speaks for (a joiner's is 0 until a peer answered).
    pub fn cluster_id(&self) -> u64 {
        self.handle.shared.cluster_id()
    }

    /// For a member joining an existing cluster (`--initial-cluster-state existing`): dials
    /// the given members with cluster ID 0 until one that already knows this member (it was
    /// added with MemberAdd) answers with the cluster's ID. etcd learns it the same way,
    /// from its peers.
    pub async fn discover_cluster_id(
        member_id: u64,
        listen: SocketAddr,
        peers: Vec<(u64, SocketAddr)>,
        tls: tls::PeerTls,
        wait: Duration,
    ) -> Result<u64, PeerError> {
        let mut config = PeerConfig::new(member_id, 0, listen, peers);
        config.tls = tls;
        let (transport, _incoming) = PeerTransport::start(config).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let found = loop {
            let id = transport.cluster_id();
            if id != 0 || tokio::time::Instant::now() >= deadline {
                break id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        transport.shutdown().await;
        if found == 0 {
            return Err(PeerError::Discovery(wait));
        }
        Ok(found)
    }

    /// The UDP address the transport listens on (useful when started on port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.handle.shared.endpoint.local_addr()
    }

    /// Queues one raft message for `to`. Never blocks. An error means the message was
    /// dropped (and counted); the caller should then call raft's `report_unreachable`.
    /// `Ok` does not promise delivery: a link can fail with messages in flight.
    pub fn send(&self, to: u64, message: Bytes) -> Result<(), SendError> {
        let shared = &self.handle.shared;
        let peer = shared.peer(to).ok_or(SendError::UnknownPeer(to))?;
        peer.enqueue(message, &shared.counters)
    }

    /// Streams a snapshot to `to` on a stream of its own. `data` yields the chunks (of any
    /// size; they are cut to [`limits::SNAPSHOT_CHUNK_BYTES_MAX`]); an error from it
    /// aborts the send. The returned future tells how it ended, for raft's
    /// `report_snapshot`.
    pub fn send_snapshot<S>(&self, to: u64, metadata: Bytes, data: S) -> SnapshotSending
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let shared = self.handle.shared.clone();
        let (sender, result) = oneshot::channel();
        self.handle.shared.runtime.spawn(async move {
            let outcome = snapshot::send_snapshot(&shared, to, metadata, data).await;
            match &outcome {
                Ok(sent) => {
                    add(&shared.counters.snapshots_sent, 1);
                    if sent.elapsed > SNAPSHOT_SEND_WARN_AFTER {
                        warn!(
                            peer = %format_args!("{to:x}"),
                            bytes = sent.bytes,
                            elapsed = ?sent.elapsed,
                            "sending a snapshot took longer than {SNAPSHOT_SEND_WARN_AFTER:?}"
                        );
                    } else {
                        debug!(peer = %format_args!("{to:x}"), bytes = sent.bytes, elapsed = ?sent.elapsed, "snapshot sent");
                    }
                }
                Err(error) => {
                    add(&shared.counters.snapshots_send_failed, 1);
                    warn!(peer = %format_args!("{to:x}"), %error, "sending a snapshot failed");
                }
            }
            let _ignored_if_not_awaited = sender.send(outcome);
        });
        SnapshotSending { result }
    }

    /// Asks `to` for its HashKV at `revision` over the link (see [`hash_kv`]). Runs on
    /// the transport's runtime; the answer may be awaited from any thread.
    pub fn hash_kv(
        &self,
        to: u64,
        revision: i64,
    ) -> oneshot::Receiver<Result<frame::HashKvAnswer, hash_kv::HashKvError>> {
        let shared = self.handle.shared.clone();
        let (sender, answer) = oneshot::channel();
        self.handle.shared.runtime.spawn(async move {
            let _ = sender.send(hash_kv::ask(&shared, to, revision).await);
        });
        answer
    }

    /// Adds a peer (or changes its address if it is known) and starts dialing it.
    pub fn add_peer(&self, id: u64, address: SocketAddr) -> Result<(), PeerError> {
        let shared = &self.handle.shared;
        if id == shared.member_id {
            return Err(PeerError::OwnId(id));
        }
        let mut table = lock(&shared.table);
        if table.peers.contains_key(&id) {
            drop(table);
            self.update_peer(id, address);
            return Ok(());
        }
        if table.peers.len() >= PEERS_MAX {
            return Err(PeerError::TooManyPeers);
        }
        table.removed.retain(|removed| *removed != id);
        shared.insert_peer(&mut table, id, address);
        Ok(())
    }

    /// Removes a peer: its link is closed, its queue dropped, and its future connections
    /// are refused (etcd refuses removed members).
    pub fn remove_peer(&self, id: u64) {
        let shared = &self.handle.shared;
        let peer = {
            let mut table = lock(&shared.table);
            if table.removed.len() >= REMOVED_MEMBERS_MAX {
                table.removed.pop_front();
            }
            table.removed.push_back(id);
            table.peers.remove(&id)
        };
        if let Some(peer) = peer {
            info!(peer = %format_args!("{id:x}"), "peer removed");
            peer.stop(close_code::MEMBER_REMOVED, "member removed");
        }
    }

    /// Changes a peer's address. A link to another address is closed so that the next
    /// dial goes to the new one.
    pub fn update_peer(&self, id: u64, address: SocketAddr) {
        let Some(peer) = self.handle.shared.peer(id) else {
            return;
        };
        *lock(&peer.address) = address;
        let link = lock(&peer.link).clone();
        if let Some(link) = link {
            if link.connection.remote_address() != address {
                link.connection.close(
                    VarInt::from_u32(close_code::ADDRESS_CHANGED),
                    b"peer address changed",
                );
            }
        }
    }

    /// Test-only fault switch: while set, all traffic to and from `peers` is dropped
    /// (messages both ways, snapshots fail), as in a network partition. Links stay up, so
    /// clearing the set (`set_blocked(&[])`) heals at once. Replaces the previous set.
    pub fn set_blocked(&self, peers: &[u64]) {
        let shared = &self.handle.shared;
        let mut table = lock(&shared.table);
        table.blocked = peers.iter().copied().collect();
        for (id, peer) in &table.peers {
            peer.blocked.store(table.blocked.contains(id), Relaxed);
        }
    }

    /// Counters and per-peer state.
    pub fn stats(&self) -> PeerStats {
        let shared = &self.handle.shared;
        let counters = &shared.counters;
        let mut peers: Vec<PeerLinkStats> = lock(&shared.table)
            .peers
            .values()
            .map(|peer| {
                let link = lock(&peer.link).clone();
                PeerLinkStats {
                    id: peer.id,
                    address: *lock(&peer.address),
                    connected: link.is_some(),
                    unreachable: peer.unreachable.load(Relaxed),
                    blocked: peer.blocked.load(Relaxed),
                    queued_messages: peer.queue.max_capacity() - peer.queue.capacity(),
                    rtt: link.map(|link| link.connection.rtt()),
                }
            })
            .collect();
        peers.sort_by_key(|peer| peer.id);
        PeerStats {
            messages_sent: counters.messages_sent.load(Relaxed),
            message_bytes_sent: counters.message_bytes_sent.load(Relaxed),
            messages_received: counters.messages_received.load(Relaxed),
            dropped_queue_full: counters.dropped_queue_full.load(Relaxed),
            dropped_unreachable: counters.dropped_unreachable.load(Relaxed),
            dropped_blocked: counters.dropped_blocked.load(Relaxed),
            links_established: counters.links_established.load(Relaxed),
            dial_failures: counters.dial_failures.load(Relaxed),
            connections_refused: counters.connections_refused.load(Relaxed),
            snapshots_sent: counters.snapshots_sent.load(Relaxed),
            snapshots_send_failed: counters.snapshots_send_failed.load(Relaxed),
            snapshots_received: counters.snapshots_received.load(Relaxed),
            snapshots_receive_failed: counters.snapshots_receive_failed.load(Relaxed),
            peers,
        }
    }

    /// Since when the link to `id` has been up; `None` while there is none.
    pub fn connected_since(&self, id: u64) -> Option<Instant> {
        let peer = self.handle.shared.peer(id)?;
        let link = lock(&peer.link);
        link.as_ref().map(|link| link.established_at)
    }

    /// Whether `id` has a link up right now.
    pub fn is_connected(&self, id: u64) -> bool {
        self.handle
            .shared
            .peer(id)
            .is_some_and(|peer| lock(&peer.link).is_some())
    }

    /// Closes every link (peers see a shutdown, not a timeout) and waits, at most one
    /// second, until the peers acknowledged it. The transport is unusable afterwards.
    pub async fn shutdown(&self) {
        let shared = &self.handle.shared;
        shared.close();
        let _timed_out =
            tokio::time::timeout(Duration::from_secs(1), shared.endpoint.wait_idle()).await;
    }
}

impl Shared {
    /// Starts shutting down: every task sees `closing`, every link is closed.
    fn close(&self) {
        if self.closing.send_replace(true) {
            return;
        }
        let peers: Vec<Arc<Peer>> = lock(&self.table).peers.values().cloned().collect();
        for peer in peers {
            peer.stop(close_code::SHUTDOWN, "shutdown");
        }
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
    }

    fn cluster_id(&self) -> u64 {
        self.cluster_id.load(std::sync::atomic::Ordering::Acquire)
    }

    fn hello_to(&self, to: u64) -> Hello {
        Hello {
            cluster_id: self.cluster_id(),
            from: self.member_id,
            to,
            incarnation: self.incarnation,
        }
    }
}

/// The QUIC transport parameters of every peer connection.
fn transport_config(tuning: &PeerTuning) -> Result<quinn::TransportConfig, PeerError> {
    let mut transport = quinn::TransportConfig::default();
    let idle_timeout = quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
        .map_err(|error| PeerError::Config(format!("idle timeout: {error}")))?;
    let stream_window = tuning.stream_receive_window_bytes;
    transport
        // Bidirectional streams: the link stream and the HashKV streams.
        .max_concurrent_bidi_streams(VarInt::from_u32(1 + HASHKV_STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(SNAPSHOT_STREAMS_MAX))
        .max_idle_timeout(Some(idle_timeout))
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .stream_receive_window(VarInt::from_u32(stream_window))
        .receive_window(VarInt::from_u64(4 * u64::from(stream_window)).unwrap_or(VarInt::MAX))
        .send_window(tuning.send_window_bytes_min)
        .enable_segmentation_offload(tuning.segmentation_offload)
        .mtu_discovery_config(tuning.mtu_upper_bound.map(|upper_bound| {
            let mut discovery = quinn::MtuDiscoveryConfig::default();
            discovery.upper_bound(upper_bound);
            discovery
        }))
        // Datagrams are not used.
        .datagram_receive_buffer_size(None);
    match tuning.congestion {
        Congestion::Cubic => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::NewReno => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
        Congestion::Bbr => transport
            .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
    };
    Ok(transport)
}

/// Binds the UDP socket and sizes its kernel buffers. Unlike the TCP listeners it sets no
/// `SO_REUSEADDR` (issue 10 item 9): UDP has no TIME-WAIT that could keep a restarted
/// member off its port, and on Linux the option lets a second process bind the same UDP
/// port and take part of the peer traffic, where a mistaken second member must fail with
/// "address in use".
fn bind_socket(
    address: SocketAddr,
    buffer_bytes: Option<usize>,
) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(address)?;
    if let Some(bytes) = buffer_bytes {
        use std::os::fd::AsRawFd;
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: a valid socket descriptor and a c_int option value of the right size.
            let result = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if result != 0 {
                // The kernel caps the size at net.core.[rw]mem_max anyway; a failure
                // only costs throughput.
                debug!(error = %io::Error::last_os_error(), "sizing the peer UDP socket buffer");
            }
        }
    }
    Ok(socket)
}

/// A random number that differs between runs of the process.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Stream errors that only say the connection is gone become the connection's error,
/// which tells why (closed by the peer with a reason, timed out, ...).
macro_rules! stream_errors_into {
    ($error:ident) => {
        impl From<quinn::ReadError> for $error {
            fn from(error: quinn::ReadError) -> Self {
                match error {
                    quinn::ReadError::ConnectionLost(error) => $error::Connection(error),
                    error => $error::Stream(error.to_string()),
                }
            }
        }

        impl From<quinn::WriteError> for $error {
            fn from(error: quinn::WriteError) -> Self {
                match error {
                    quinn::WriteError::ConnectionLost(error) => $error::Connection(error),
                    error => $error::Stream(error.to_string()),
                }
            }
        }
    };
}

stream_errors_into!(HandshakeError);
stream_errors_into!(LinkError);
