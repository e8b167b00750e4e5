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
//! A self-signed certificate is generated at start and **certificates are not verified**
//! yet (see [`tls`]): the peer certificate flags come later.

pub mod frame;
pub mod limits;
pub mod tls;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tracing::{debug, info, warn};

use frame::{decode_frame, Frame, FrameError, Hello, SnapshotEnd};
use limits::*;

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
}

/// The data of an incoming snapshot, chunk by chunk, bounded
/// ([`limits::SNAPSHOT_CHUNKS_QUEUED_MAX`] chunks are buffered; then the sender waits).
pub struct SnapshotReceiver {
    pieces: mpsc::Receiver<SnapshotPiece>,
    complete: bool,
}

enum SnapshotPiece {
    Data(Bytes),
    Complete,
    Failed(SnapshotError),
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SnapshotReceiver")
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

impl SnapshotReceiver {
    /// The next chunk; `Ok(None)` once all data arrived and its length and checksum
    /// matched what the sender announced. Any error means the snapshot is incomplete and
    /// must be discarded.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SnapshotError> {
        if self.complete {
            return Ok(None);
        }
        match self.pieces.recv().await {
            Some(SnapshotPiece::Data(chunk)) => Ok(Some(chunk)),
            Some(SnapshotPiece::Complete) => {
                self.complete = true;
                Ok(None)
            }
            Some(SnapshotPiece::Failed(error)) => Err(error),
            None => Err(SnapshotError::Aborted),
        }
    }

    /// Reads the whole snapshot into memory; fails if it exceeds `bytes_max`.
    pub async fn read_to_end(mut self, bytes_max: usize) -> Result<Bytes, SnapshotError> {
        let mut data = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            if data.len() + chunk.len() > bytes_max {
                return Err(SnapshotError::TooLarge { bytes_max });
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data.freeze())
    }
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

/// Why a snapshot was not sent or not received completely.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no peer with member ID {0:x}")]
    UnknownPeer(u64),
    #[error("peer {0:x} is unreachable: no link")]
    Unreachable(u64),
    #[error("traffic with peer {0:x} is blocked")]
    Blocked(u64),
    #[error(
        "snapshot metadata of {bytes} bytes exceeds the limit of {SNAPSHOT_METADATA_BYTES_MAX}"
    )]
    MetadataTooLarge { bytes: usize },
    #[error("snapshot larger than {bytes_max} bytes")]
    TooLarge { bytes_max: usize },
    #[error("snapshot link failed: {0}")]
    Link(String),
    #[error("reading the snapshot to send: {0}")]
    Source(io::Error),
    #[error("the receiver stopped the snapshot stream with code {0}")]
    Stopped(u64),
    #[error("snapshot data does not match its end frame: received {bytes} bytes with crc32c {crc32c:08x}, the sender announced {expected_bytes} bytes with crc32c {expected_crc32c:08x}")]
    Checksum {
        bytes: u64,
        crc32c: u32,
        expected_bytes: u64,
        expected_crc32c: u32,
    },
    #[error("snapshot stream: {0}")]
    Protocol(#[from] FrameError),
    #[error("snapshot stream ended before its end frame")]
    Truncated,
    #[error("snapshot stream {0}")]
    UnexpectedFrame(&'static str),
    #[error("the snapshot was abandoned (transport shut down)")]
    Aborted,
}

/// A completed snapshot send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSent {
    /// Data bytes sent (without metadata and framing).
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Completion of [`PeerTransport::send_snapshot`]: resolves once the receiver's QUIC stack
/// acknowledged all the data, or with the error that ended the send. The send proceeds
/// whether or not this is polled.
pub struct SnapshotSending {
    result: oneshot::Receiver<Result<SnapshotSent, SnapshotError>>,
}

impl Future for SnapshotSending {
    type Output = Result<SnapshotSent, SnapshotError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result)
            .poll(context)
            .map(|result| result.unwrap_or(Err(SnapshotError::Aborted)))
    }
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
    endpoint: Endpoint,
    runtime: tokio::runtime::Handle,
    table: Mutex<PeerTable>,
    incoming: mpsc::Sender<Incoming>,
    counters: Counters,
    handshakes: Arc<Semaphore>,
    /// Set once when the transport shuts down; every long-running task watches it.
    closing: watch::Sender<bool>,
}

#[derive(Default)]
struct PeerTable {
    peers: HashMap<u64, Arc<Peer>>,
    /// Oldest first, at most [`REMOVED_MEMBERS_MAX`].
    removed: VecDeque<u64>,
    blocked: HashSet<u64>,
}

struct Peer {
    id: u64,
    address: Mutex<SocketAddr>,
    queue: mpsc::Sender<Bytes>,
    /// Held by the writer of the current link; the next link's writer takes it over.
    queue_receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    queued_bytes: AtomicUsize,
    blocked: AtomicBool,
    /// The last dial failed and no link came up since.
    unreachable: AtomicBool,
    /// Removed or shut down: the dialer exits, no link is installed any more.
    stopped: AtomicBool,
    link: Mutex<Option<Link>>,
    /// Wakes the dialer when the link goes down or the peer stops.
    wake_dialer: Notify,
}

/// The connection currently used with a peer.
#[derive(Clone)]
struct Link {
    connection: Connection,
    /// Member ID of the side that dialed.
    dialed_by: u64,
    remote_incarnation: u64,
    established_at: Instant,
}

impl Link {
    /// Whether this new connection should replace `existing`. Both members evaluate the
    /// same rule on the same facts, so they keep the same connection: a new incarnation
    /// of the peer wins (the existing connection is to a process that is gone); a redial
    /// by the same side wins (that side gave the old one up); otherwise the connection
    /// dialed by the lower member ID wins.
    fn replaces(&self, existing: &Link, local_id: u64, peer_id: u64) -> bool {
        connection_replaces(
            (self.dialed_by, self.remote_incarnation),
            (existing.dialed_by, existing.remote_incarnation),
            local_id,
            peer_id,
        )
    }
}

/// [`Link::replaces`] on plain values: `(dialed_by, remote_incarnation)` of the new and
/// the existing connection.
fn connection_replaces(new: (u64, u64), existing: (u64, u64), local_id: u64, peer_id: u64) -> bool {
    let (new_dialed_by, new_incarnation) = new;
    let (existing_dialed_by, existing_incarnation) = existing;
    new_incarnation != existing_incarnation
        || new_dialed_by == existing_dialed_by
        || new_dialed_by == local_id.min(peer_id)
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
        let tls = tls::self_signed()?;
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
        info!(
            member_id = %format_args!("{:x}", shared.member_id),
            cluster_id = %format_args!("{:x}", shared.cluster_id()),
            listen = %shared.endpoint.local_addr().map_err(|source| PeerError::Bind { address: config.listen, source })?,
            "peer transport listening (QUIC; peer certificates are not verified yet)"
        );
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
        wait: Duration,
    ) -> Result<u64, PeerError> {
        let (transport, _incoming) =
            PeerTransport::start(PeerConfig::new(member_id, 0, listen, peers)).await?;
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
            let outcome = send_snapshot(&shared, to, metadata, data).await;
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
    fn peer(&self, id: u64) -> Option<Arc<Peer>> {
        lock(&self.table).peers.get(&id).cloned()
    }

    /// Adds a peer to `table` and starts its dialer. The caller checked the limits.
    fn insert_peer(
        self: &Arc<Self>,
        table: &mut PeerTable,
        id: u64,
        address: SocketAddr,
    ) -> Arc<Peer> {
        let (queue, queue_receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let peer = Arc::new(Peer {
            id,
            address: Mutex::new(address),
            queue,
            queue_receiver: Arc::new(tokio::sync::Mutex::new(queue_receiver)),
            queued_bytes: AtomicUsize::new(0),
            blocked: AtomicBool::new(table.blocked.contains(&id)),
            unreachable: AtomicBool::new(false),
            stopped: AtomicBool::new(*self.closing.borrow()),
            link: Mutex::new(None),
            wake_dialer: Notify::new(),
        });
        table.peers.insert(id, peer.clone());
        self.runtime.spawn(run_dialer(self.clone(), peer.clone()));
        peer
    }

    /// The peer an incoming connection from member `from` belongs to, learning it if it
    /// is new. Refuses removed members and more than [`PEERS_MAX`] peers.
    fn peer_for_incoming(
        self: &Arc<Self>,
        from: u64,
        remote: SocketAddr,
    ) -> Result<Arc<Peer>, (u32, &'static str)> {
        let mut table = lock(&self.table);
        if let Some(peer) = table.peers.get(&from) {
            return Ok(peer.clone());
        }
        if table.removed.contains(&from) {
            return Err((close_code::MEMBER_REMOVED, "member removed"));
        }
        if table.peers.len() >= PEERS_MAX {
            return Err((close_code::TOO_MANY_PEERS, "too many peers"));
        }
        info!(
            peer = %format_args!("{from:x}"),
            address = %remote,
            "learned a peer from its incoming connection"
        );
        Ok(self.insert_peer(&mut table, from, remote))
    }

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

impl Peer {
    fn enqueue(&self, message: Bytes, counters: &Counters) -> Result<(), SendError> {
        let bytes = message.len();
        if bytes > MESSAGE_BYTES_MAX {
            return Err(SendError::TooLarge { bytes });
        }
        if self.blocked.load(Relaxed) {
            // A partition loses messages silently; so does the fault switch.
            add(&counters.dropped_blocked, 1);
            return Ok(());
        }
        if self.unreachable.load(Relaxed) {
            add(&counters.dropped_unreachable, 1);
            return Err(SendError::Unreachable(self.id));
        }
        let queued = self.queued_bytes.fetch_add(bytes, Relaxed);
        if queued + bytes > PEER_QUEUE_BYTES_MAX || self.queue.try_send(message).is_err() {
            self.queued_bytes.fetch_sub(bytes, Relaxed);
            add(&counters.dropped_queue_full, 1);
            return Err(SendError::QueueFull(self.id));
        }
        Ok(())
    }

    /// Marks the peer unreachable after a failed dial and drops what is queued for it:
    /// raft will resend, and stale messages would only delay fresh ones.
    fn mark_unreachable(&self, counters: &Counters) {
        {
            // Under the link lock, as `install` clears the flag under it: a dial that
            // lost to a link that came up meanwhile must not mark the peer unreachable.
            let link = lock(&self.link);
            if link.is_some() {
                return;
            }
            self.unreachable.store(true, Relaxed);
        }
        if let Ok(mut queue) = self.queue_receiver.try_lock() {
            let mut dropped = 0;
            while let Ok(message) = queue.try_recv() {
                self.queued_bytes.fetch_sub(message.len(), Relaxed);
                dropped += 1;
            }
            add(&counters.dropped_unreachable, dropped);
        }
    }

    fn current_link(&self) -> Option<Link> {
        lock(&self.link).clone()
    }

    fn stop(&self, code: u32, reason: &'static str) {
        self.stopped.store(true, Relaxed);
        let link = lock(&self.link).take();
        if let Some(link) = link {
            link.connection
                .close(VarInt::from_u32(code), reason.as_bytes());
        }
        self.wake_dialer.notify_one();
    }
}

/// The QUIC transport parameters of every peer connection.
fn transport_config(tuning: &PeerTuning) -> Result<quinn::TransportConfig, PeerError> {
    let mut transport = quinn::TransportConfig::default();
    let idle_timeout = quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
        .map_err(|error| PeerError::Config(format!("idle timeout: {error}")))?;
    let stream_window = tuning.stream_receive_window_bytes;
    transport
        // One bidirectional stream per connection: the link stream.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
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

/// Binds the UDP socket and sizes its kernel buffers.
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

/// Exponential backoff with jitter for redialing one peer.
struct Backoff {
    next: Duration,
    random: u64,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
            random: seed | 1,
        }
    }

    /// The wait before the next dial: the current step ±25 %, then the step doubles.
    fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter only needs to keep members from dialing in lockstep.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let quarter = step / 4;
        let jitter_nanos = self.random % (2 * quarter.as_nanos() as u64 + 1);
        step - quarter + Duration::from_nanos(jitter_nanos)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// Keeps a link to `peer` up: dials whenever there is none, backing off after failures.
async fn run_dialer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let mut backoff = Backoff::new(shared.incarnation ^ peer.id);
    let mut delay: Option<Duration> = None;
    let mut failures_in_a_row: u32 = 0;
    loop {
        if peer.stopped.load(Relaxed) {
            return;
        }
        if let Some(link) = peer.current_link() {
            peer.wake_dialer.notified().await;
            // A link that died young does not reset the backoff: a peer that accepts and
            // then drops us must not cause a dial loop.
            if link.established_at.elapsed() >= LINK_HEALTHY_AFTER {
                backoff.reset();
                delay = None;
            } else {
                delay = Some(backoff.next_delay());
            }
            continue;
        }
        if let Some(wait) = delay.take() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = peer.wake_dialer.notified() => {}
            }
            continue;
        }
        match dial(&shared, &peer).await {
            Ok(()) => failures_in_a_row = 0,
            Err(error) if error.is_duplicate() => {
                // Both members dialed at once and the peer kept the other connection,
                // which is about to become the link here too. Not a failure.
                debug!(peer = %format_args!("{:x}", peer.id), "dial lost to a simultaneous dial");
                delay = Some(backoff.next_delay());
            }
            Err(error) => {
                if error.is_removed() {
                    warn!(peer = %format_args!("{:x}", peer.id), "this member was removed from the cluster");
                    let _ = shared
                        .incoming
                        .send(Incoming::RemovedFromCluster { by: peer.id })
                        .await;
                }
                failures_in_a_row += 1;
                add(&shared.counters.dial_failures, 1);
                peer.mark_unreachable(&shared.counters);
                let address = *lock(&peer.address);
                // The first failure and then ever more rarely: a peer that is down for a
                // long time must not flood the log.
                if error.is_refusal() || failures_in_a_row.is_power_of_two() {
                    warn!(
                        peer = %format_args!("{:x}", peer.id),
                        %address,
                        failures_in_a_row,
                        %error,
                        "cannot reach peer"
                    );
                } else {
                    debug!(peer = %format_args!("{:x}", peer.id), %address, %error, "cannot reach peer");
                }
                delay = Some(backoff.next_delay());
            }
        }
    }
}

/// Why a dial or an accepted connection did not become a link.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("timed out after {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    #[error("{0}")]
    Stream(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the stream ended before the HELLO")]
    NoHello,
    #[error("expected a HELLO, got another frame")]
    NotHello,
    #[error("{0}")]
    Refused(String),
}

impl HandshakeError {
    /// The peer closed our connection because it keeps another one with us.
    fn is_duplicate(&self) -> bool {
        matches!(self, HandshakeError::Connection(ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::DUPLICATE))
    }

    /// The peer refused us because we were removed from the cluster.
    fn is_removed(&self) -> bool {
        matches!(self, HandshakeError::Connection(ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::MEMBER_REMOVED))
    }

    /// The peer answered but refused us (e.g. another cluster): always worth a warning.
    fn is_refusal(&self) -> bool {
        match self {
            HandshakeError::Refused(_) => true,
            HandshakeError::Connection(ConnectionError::ApplicationClosed(close)) => {
                close.error_code != VarInt::from_u32(close_code::DUPLICATE)
            }
            _ => false,
        }
    }
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

/// Dials `peer`, exchanges HELLOs and installs the connection as the peer's link (unless
/// a link that wins over it came up meanwhile).
async fn dial(shared: &Arc<Shared>, peer: &Arc<Peer>) -> Result<(), HandshakeError> {
    let address = *lock(&peer.address);
    let handshake = async {
        let connection = shared.endpoint.connect(address, tls::SERVER_NAME)?.await?;
        let result = async {
            let (mut send, mut recv) = connection.open_bi().await?;
            let mut buffer = BytesMut::new();
            frame::encode_hello(&mut buffer, &shared.hello_to(peer.id));
            send.write_all(&buffer).await?;
            buffer.clear();
            let hello = read_hello(&mut recv, &mut buffer).await?;
            Ok::<_, HandshakeError>((send, recv, buffer, hello))
        }
        .await;
        match result {
            Ok(parts) => Ok((connection, parts)),
            Err(error) => {
                connection.close(VarInt::from_u32(close_code::PROTOCOL), b"handshake failed");
                Err(error)
            }
        }
    };
    let (connection, (send, recv, buffer, hello)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HandshakeError::Timeout)??;
    // A joining member (cluster ID 0) learns the cluster's ID from the first answer.
    let _ = shared.cluster_id.compare_exchange(
        0,
        hello.cluster_id,
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
    );
    if hello.cluster_id != shared.cluster_id() {
        warn!(
            peer = %format_args!("{:x}", peer.id),
            %address,
            local_cluster_id = %format_args!("{:x}", shared.cluster_id()),
            remote_cluster_id = %format_args!("{:x}", hello.cluster_id),
            "cluster ID mismatch"
        );
        connection.close(
            VarInt::from_u32(close_code::CLUSTER_ID_MISMATCH),
            b"cluster ID mismatch",
        );
        return Err(HandshakeError::Refused("cluster ID mismatch".into()));
    }
    if hello.from != peer.id || hello.to != shared.member_id {
        connection.close(
            VarInt::from_u32(close_code::MEMBER_ID_MISMATCH),
            b"member ID mismatch",
        );
        return Err(HandshakeError::Refused(format!(
            "member ID mismatch: {address} answered as member {:x} (to {:x}), expected member {:x}",
            hello.from, hello.to, peer.id
        )));
    }
    install(
        shared,
        peer,
        Link {
            connection,
            dialed_by: shared.member_id,
            remote_incarnation: hello.incarnation,
            established_at: Instant::now(),
        },
        send,
        recv,
        buffer,
    );
    Ok(())
}

/// Reads the HELLO that opens a link stream. Bytes after it stay in `buffer`.
async fn read_hello(recv: &mut RecvStream, buffer: &mut BytesMut) -> Result<Hello, HandshakeError> {
    loop {
        match decode_frame(buffer)? {
            Some(Frame::Hello(hello)) => return Ok(hello),
            Some(_) => return Err(HandshakeError::NotHello),
            None => {}
        }
        match recv
            .read_chunk(frame::FRAME_HEADER_BYTES + frame::HELLO_BYTES, true)
            .await?
        {
            Some(chunk) => buffer.extend_from_slice(&chunk.bytes),
            None => return Err(HandshakeError::NoHello),
        }
    }
}

/// Accepts incoming connections until the transport closes.
async fn run_acceptor(shared: Arc<Shared>) {
    let mut closing = shared.closing.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = closing.wait_for(|closing| *closing) => None,
        };
        let Some(incoming) = incoming else {
            return;
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            add(&shared.counters.connections_refused, 1);
            debug!(remote = %incoming.remote_address(), "refusing a peer connection: too many handshakes in progress");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        shared.runtime.clone().spawn(async move {
            let remote = incoming.remote_address();
            if let Err(error) = accept(&shared, incoming).await {
                add(&shared.counters.connections_refused, 1);
                debug!(%remote, %error, "incoming peer connection failed");
            }
            drop(permit);
        });
    }
}

/// Completes an incoming connection's handshake, checks its HELLO and installs it.
async fn accept(shared: &Arc<Shared>, incoming: quinn::Incoming) -> Result<(), HandshakeError> {
    let remote = incoming.remote_address();
    let handshake = async {
        let connection = incoming.accept()?.await?;
        let result = async {
            let (send, mut recv) = connection.accept_bi().await?;
            let mut buffer = BytesMut::new();
            let hello = read_hello(&mut recv, &mut buffer).await?;
            Ok::<_, HandshakeError>((send, recv, buffer, hello))
        }
        .await;
        match result {
            Ok(parts) => Ok((connection, parts)),
            Err(error) => {
                connection.close(VarInt::from_u32(close_code::PROTOCOL), b"handshake failed");
                Err(error)
            }
        }
    };
    let (connection, (mut send, recv, buffer, hello)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HandshakeError::Timeout)??;
    let refuse = |code: u32, reason: &str| {
        connection.close(VarInt::from_u32(code), reason.as_bytes());
        Err(HandshakeError::Refused(reason.to_string()))
    };
    // A joining member says cluster ID 0; it is accepted only if it is already a member
    // here (MemberAdd applied), and learns the ID from this side's answer.
    let known_joiner = hello.cluster_id == 0 && lock(&shared.table).peers.contains_key(&hello.from);
    if hello.cluster_id != shared.cluster_id() && !known_joiner {
        warn!(
            %remote,
            remote_member_id = %format_args!("{:x}", hello.from),
            local_cluster_id = %format_args!("{:x}", shared.cluster_id()),
            remote_cluster_id = %format_args!("{:x}", hello.cluster_id),
            "cluster ID mismatch: refusing the peer connection"
        );
        return refuse(close_code::CLUSTER_ID_MISMATCH, "cluster ID mismatch");
    }
    if hello.to != shared.member_id || hello.from == shared.member_id {
        warn!(
            %remote,
            remote_member_id = %format_args!("{:x}", hello.from),
            wanted_member_id = %format_args!("{:x}", hello.to),
            local_member_id = %format_args!("{:x}", shared.member_id),
            "member ID mismatch: refusing the peer connection"
        );
        return refuse(close_code::MEMBER_ID_MISMATCH, "member ID mismatch");
    }
    let peer = match shared.peer_for_incoming(hello.from, remote) {
        Ok(peer) => peer,
        Err((code, reason)) => {
            warn!(%remote, remote_member_id = %format_args!("{:x}", hello.from), "refusing the peer connection: {reason}");
            return refuse(code, reason);
        }
    };
    let mut reply = BytesMut::new();
    frame::encode_hello(&mut reply, &shared.hello_to(hello.from));
    send.write_all(&reply).await?;
    install(
        shared,
        &peer,
        Link {
            connection,
            dialed_by: hello.from,
            remote_incarnation: hello.incarnation,
            established_at: Instant::now(),
        },
        send,
        recv,
        buffer,
    );
    Ok(())
}

/// Makes `link` the peer's link unless the current one wins over it, and starts it.
fn install(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    link: Link,
    send: SendStream,
    recv: RecvStream,
    buffer: BytesMut,
) {
    {
        let mut current = lock(&peer.link);
        if peer.stopped.load(Relaxed) {
            link.connection
                .close(VarInt::from_u32(close_code::SHUTDOWN), b"peer stopped");
            return;
        }
        if let Some(existing) = current.as_ref() {
            if !link.replaces(existing, shared.member_id, peer.id) {
                debug!(peer = %format_args!("{:x}", peer.id), "keeping the existing link, closing the duplicate connection");
                link.connection.close(
                    VarInt::from_u32(close_code::DUPLICATE),
                    b"duplicate connection",
                );
                return;
            }
            existing.connection.close(
                VarInt::from_u32(close_code::DUPLICATE),
                b"replaced by a newer connection",
            );
        }
        *current = Some(link.clone());
        peer.unreachable.store(false, Relaxed);
    }
    add(&shared.counters.links_established, 1);
    ignore_closed(send.set_priority(LINK_STREAM_PRIORITY));
    info!(
        peer = %format_args!("{:x}", peer.id),
        remote = %link.connection.remote_address(),
        dialed_by = %format_args!("{:x}", link.dialed_by),
        "peer link up"
    );
    shared.runtime.spawn(run_link(
        shared.clone(),
        peer.clone(),
        link,
        send,
        recv,
        buffer,
    ));
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    #[error("{0}")]
    Stream(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the peer ended the link stream")]
    Finished,
    #[error("unexpected frame on the link stream")]
    UnexpectedFrame,
    #[error("transport shut down")]
    Closing,
}

/// Runs one link until it fails or is replaced: writes queued messages, reads incoming
/// ones, accepts snapshot streams.
async fn run_link(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    link: Link,
    send: SendStream,
    recv: RecvStream,
    buffer: BytesMut,
) {
    let mut closing = shared.closing.subscribe();
    let connection = link.connection.clone();
    let error = tokio::select! {
        Err(error) = write_link(&shared, &peer, send) => error,
        Err(error) = read_link(&shared, &peer, recv, buffer) => error,
        Err(error) = accept_snapshots(&shared, &peer, &connection) => error,
        Err(error) = follow_rtt(&connection, shared.send_window_bytes_min) => error,
        _ = closing.wait_for(|closing| *closing) => LinkError::Closing,
    };
    connection.close(VarInt::from_u32(close_code::LINK_FAILED), b"link failed");
    // A link that is no longer the peer's link was replaced by a duplicate or a newer one.
    let replaced = {
        let mut current = lock(&peer.link);
        let is_current = current
            .as_ref()
            .is_some_and(|current| current.connection.stable_id() == connection.stable_id());
        if is_current {
            *current = None;
        }
        !is_current && !peer.stopped.load(Relaxed)
    };
    peer.wake_dialer.notify_one();
    if replaced {
        debug!(peer = %format_args!("{:x}", peer.id), %error, "duplicate peer connection closed");
    } else {
        info!(peer = %format_args!("{:x}", peer.id), %error, "peer link down");
    }
}

/// Sizes the link's send window to its minimum round-trip time, now and then.
async fn follow_rtt(connection: &Connection, window_bytes_min: u64) -> Result<(), LinkError> {
    loop {
        tokio::time::sleep(SEND_WINDOW_UPDATE_INTERVAL).await;
        connection.set_send_window(send_window_bytes(connection.min_rtt(), window_bytes_min));
    }
}

/// The send window for a path whose minimum round-trip time is `min_rtt`.
fn send_window_bytes(min_rtt: Duration, window_bytes_min: u64) -> u64 {
    let bytes = u128::from(SEND_WINDOW_BYTES_PER_SECOND) * min_rtt.as_nanos() / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX).clamp(
        window_bytes_min,
        SEND_WINDOW_BYTES_MAX.max(window_bytes_min),
    )
}

/// Writes the peer's queued messages to the link stream, batching what is queued.
async fn write_link(shared: &Shared, peer: &Peer, mut send: SendStream) -> Result<(), LinkError> {
    let mut queue = peer.queue_receiver.clone().lock_owned().await;
    let mut staging = BytesMut::with_capacity(64 * 1024);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let Some(first) = queue.recv().await else {
            // Every sender is gone: the peer was dropped.
            return Err(LinkError::Closing);
        };
        let mut messages = 0u64;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            messages += 1;
            bytes += message.len();
            peer.queued_bytes.fetch_sub(message.len(), Relaxed);
            if message.len() <= BATCH_COPY_BYTES_MAX {
                frame::encode_message(&mut staging, &message);
            } else {
                frame::encode_message_header(&mut staging, message.len());
                chunks.push(staging.split().freeze());
                chunks.push(message);
            }
            if (messages as usize) < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
                next = queue.try_recv().ok();
            }
        }
        if !staging.is_empty() {
            chunks.push(staging.split().freeze());
        }
        if peer.blocked.load(Relaxed) {
            add(&shared.counters.dropped_blocked, messages);
            chunks.clear();
            continue;
        }
        send.write_all_chunks(&mut chunks).await?;
        chunks.clear();
        add(&shared.counters.messages_sent, messages);
        add(&shared.counters.message_bytes_sent, bytes as u64);
    }
}

/// Reads message frames from the link stream and hands them to the owner.
async fn read_link(
    shared: &Shared,
    peer: &Peer,
    mut recv: RecvStream,
    mut buffer: BytesMut,
) -> Result<(), LinkError> {
    let mut chunks: [Bytes; 32] = Default::default();
    loop {
        while let Some(frame) = decode_frame(&mut buffer)? {
            let Frame::Message(bytes) = frame else {
                return Err(LinkError::UnexpectedFrame);
            };
            if peer.blocked.load(Relaxed) {
                add(&shared.counters.dropped_blocked, 1);
                continue;
            }
            add(&shared.counters.messages_received, 1);
            let message = Incoming::Message {
                from: peer.id,
                bytes,
            };
            if shared.incoming.send(message).await.is_err() {
                // The owner dropped its receiver: nothing can be delivered any more.
                shared.close();
                return Err(LinkError::Closing);
            }
        }
        match recv.read_chunks(&mut chunks).await? {
            Some(count) => {
                for chunk in &mut chunks[..count] {
                    buffer.extend_from_slice(chunk);
                    *chunk = Bytes::new();
                }
            }
            None => return Err(LinkError::Finished),
        }
    }
}

/// Accepts the snapshot streams the peer opens on this link.
async fn accept_snapshots(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    connection: &Connection,
) -> Result<(), LinkError> {
    loop {
        let recv = connection.accept_uni().await?;
        shared
            .runtime
            .spawn(receive_snapshot(shared.clone(), peer.clone(), recv));
    }
}

/// Reads the next frame of a snapshot stream; `Ok(None)` at its clean end.
async fn read_snapshot_frame(
    recv: &mut RecvStream,
    buffer: &mut BytesMut,
    chunks: &mut [Bytes],
) -> Result<Option<Frame>, SnapshotError> {
    loop {
        if let Some(frame) = decode_frame(buffer)? {
            return Ok(Some(frame));
        }
        match recv
            .read_chunks(chunks)
            .await
            .map_err(|error| SnapshotError::Link(error.to_string()))?
        {
            Some(count) => {
                for chunk in &mut chunks[..count] {
                    buffer.extend_from_slice(chunk);
                    *chunk = Bytes::new();
                }
            }
            None if buffer.is_empty() => return Ok(None),
            None => return Err(SnapshotError::Truncated),
        }
    }
}

/// Receives one snapshot stream and passes its chunks to the owner.
async fn receive_snapshot(shared: Arc<Shared>, peer: Arc<Peer>, mut recv: RecvStream) {
    let mut buffer = BytesMut::new();
    let mut chunks: [Bytes; 32] = Default::default();
    let metadata = match read_snapshot_frame(&mut recv, &mut buffer, &mut chunks).await {
        Ok(Some(Frame::SnapshotBegin(metadata))) => metadata,
        Ok(_) => {
            warn!(peer = %format_args!("{:x}", peer.id), "snapshot stream does not start with SNAPSHOT_BEGIN");
            ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            add(&shared.counters.snapshots_receive_failed, 1);
            return;
        }
        Err(error) => {
            warn!(peer = %format_args!("{:x}", peer.id), %error, "snapshot stream failed before its metadata");
            ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            add(&shared.counters.snapshots_receive_failed, 1);
            return;
        }
    };
    if peer.blocked.load(Relaxed) {
        ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_NOT_WANTED)));
        return;
    }
    let (pieces, receiver) = mpsc::channel(SNAPSHOT_CHUNKS_QUEUED_MAX);
    let announcement = Incoming::Snapshot {
        from: peer.id,
        metadata,
        data: SnapshotReceiver {
            pieces: receiver,
            complete: false,
        },
    };
    if shared.incoming.send(announcement).await.is_err() {
        ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_NOT_WANTED)));
        return;
    }
    let mut crc32c = 0u32;
    let mut bytes = 0u64;
    let outcome = loop {
        match read_snapshot_frame(&mut recv, &mut buffer, &mut chunks).await {
            Ok(Some(Frame::SnapshotChunk(chunk))) => {
                if peer.blocked.load(Relaxed) {
                    break Err(SnapshotError::Blocked(peer.id));
                }
                crc32c = crc32c::crc32c_append(crc32c, &chunk);
                bytes += chunk.len() as u64;
                if pieces.send(SnapshotPiece::Data(chunk)).await.is_err() {
                    // The owner dropped the receiver: it does not want this snapshot.
                    ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_NOT_WANTED)));
                    add(&shared.counters.snapshots_receive_failed, 1);
                    return;
                }
                // A chunk is up to a megabyte of copying and checksumming: let the link
                // tasks on this thread (heartbeats) run between chunks.
                tokio::task::yield_now().await;
            }
            Ok(Some(Frame::SnapshotEnd(SnapshotEnd {
                data_bytes,
                crc32c: expected_crc32c,
            }))) => {
                if data_bytes != bytes || expected_crc32c != crc32c {
                    break Err(SnapshotError::Checksum {
                        bytes,
                        crc32c,
                        expected_bytes: data_bytes,
                        expected_crc32c,
                    });
                }
                break match read_snapshot_frame(&mut recv, &mut buffer, &mut chunks).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(SnapshotError::UnexpectedFrame(
                        "continues after SNAPSHOT_END",
                    )),
                    Err(error) => Err(error),
                };
            }
            Ok(Some(_)) => {
                break Err(SnapshotError::UnexpectedFrame(
                    "carries a frame other than SNAPSHOT_CHUNK",
                ))
            }
            Ok(None) => break Err(SnapshotError::Truncated),
            Err(error) => break Err(error),
        }
    };
    match outcome {
        Ok(()) => {
            add(&shared.counters.snapshots_received, 1);
            debug!(peer = %format_args!("{:x}", peer.id), bytes, "snapshot received");
            // If the owner dropped the receiver, nobody is left to tell.
            let _receiver_gone = pieces.send(SnapshotPiece::Complete).await;
        }
        Err(error) => {
            add(&shared.counters.snapshots_receive_failed, 1);
            warn!(peer = %format_args!("{:x}", peer.id), %error, "receiving a snapshot failed");
            ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            let _receiver_gone = pieces.send(SnapshotPiece::Failed(error)).await;
        }
    }
}

/// Sends one snapshot on a new stream of the peer's link.
async fn send_snapshot<S>(
    shared: &Shared,
    to: u64,
    metadata: Bytes,
    data: S,
) -> Result<SnapshotSent, SnapshotError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let started = Instant::now();
    if metadata.len() > SNAPSHOT_METADATA_BYTES_MAX {
        return Err(SnapshotError::MetadataTooLarge {
            bytes: metadata.len(),
        });
    }
    let peer = shared.peer(to).ok_or(SnapshotError::UnknownPeer(to))?;
    if peer.blocked.load(Relaxed) {
        return Err(SnapshotError::Blocked(to));
    }
    let link = peer.current_link().ok_or(SnapshotError::Unreachable(to))?;
    let mut send = link
        .connection
        .open_uni()
        .await
        .map_err(|error| SnapshotError::Link(error.to_string()))?;
    ignore_closed(send.set_priority(SNAPSHOT_STREAM_PRIORITY));
    let result = write_snapshot(&peer, &mut send, &metadata, data).await;
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(error) => {
            ignore_closed(send.reset(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            return Err(error);
        }
    };
    match send.stopped().await {
        Ok(None) => Ok(SnapshotSent {
            bytes,
            elapsed: started.elapsed(),
        }),
        Ok(Some(code)) => Err(SnapshotError::Stopped(code.into_inner())),
        Err(error) => Err(SnapshotError::Link(error.to_string())),
    }
}

/// Writes a snapshot's frames; returns the data bytes written.
async fn write_snapshot<S>(
    peer: &Peer,
    send: &mut SendStream,
    metadata: &[u8],
    data: S,
) -> Result<u64, SnapshotError>
where
    S: Stream<Item = io::Result<Bytes>>,
{
    let write_error = |error: quinn::WriteError| match error {
        quinn::WriteError::Stopped(code) => SnapshotError::Stopped(code.into_inner()),
        error => SnapshotError::Link(error.to_string()),
    };
    let mut header = BytesMut::new();
    frame::encode_snapshot_begin(&mut header, metadata);
    send.write_all_chunks(&mut [header.split().freeze()])
        .await
        .map_err(write_error)?;
    let mut data = pin!(data);
    let mut crc32c = 0u32;
    let mut bytes = 0u64;
    while let Some(chunk) = data.next().await {
        let mut chunk = chunk.map_err(SnapshotError::Source)?;
        while !chunk.is_empty() {
            if peer.blocked.load(Relaxed) {
                return Err(SnapshotError::Blocked(peer.id));
            }
            let piece = chunk.split_to(chunk.len().min(SNAPSHOT_CHUNK_BYTES_MAX));
            crc32c = crc32c::crc32c_append(crc32c, &piece);
            bytes += piece.len() as u64;
            frame::encode_snapshot_chunk_header(&mut header, piece.len());
            send.write_all_chunks(&mut [header.split().freeze(), piece])
                .await
                .map_err(write_error)?;
        }
    }
    frame::encode_snapshot_end(
        &mut header,
        &SnapshotEnd {
            data_bytes: bytes,
            crc32c,
        },
    );
    send.write_all_chunks(&mut [header.split().freeze()])
        .await
        .map_err(write_error)?;
    send.finish()
        .map_err(|error| SnapshotError::Link(error.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_keep_the_same_connection() {
        // Members 1 and 2 dial each other at once: c1 dialed by 1, c2 dialed by 2. In
        // whichever order each side sees them, both keep c1.
        let (c1, c2) = ((1, 0), (2, 0));
        for (local, peer) in [(1, 2), (2, 1)] {
            // Seen from `local`, the remote incarnation is the same for both.
            assert!(
                connection_replaces(c1, c2, local, peer),
                "c1 replaces c2 at {local}"
            );
            assert!(
                !connection_replaces(c2, c1, local, peer),
                "c2 does not replace c1 at {local}"
            );
        }
        // A connection from a restarted peer replaces whatever was there.
        assert!(connection_replaces((2, 7), (1, 6), 1, 2));
    }

    #[test]
    fn send_window_follows_the_round_trip_time() {
        let floor = SEND_WINDOW_BYTES_MIN;
        assert_eq!(send_window_bytes(Duration::from_micros(30), floor), floor);
        assert_eq!(
            send_window_bytes(Duration::from_millis(10), floor),
            10_000_000
        );
        assert_eq!(
            send_window_bytes(Duration::from_secs(3), floor),
            SEND_WINDOW_BYTES_MAX
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(42);
        let mut previous = Duration::ZERO;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay <= BACKOFF_MAX + BACKOFF_MAX / 4, "{delay:?}");
            assert!(delay >= BACKOFF_INITIAL * 3 / 4, "{delay:?}");
            previous = previous.max(delay);
        }
        assert!(previous >= BACKOFF_MAX * 3 / 4);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_INITIAL * 5 / 4);
    }
}
