//! Every limit of the peer transport, each with its reason and what it costs. The
//! relations between them are checked at compile time at the bottom of this file.

use std::time::Duration;

/// Largest raft message one frame may carry. A raft `MsgApp` is cut at raft's
/// `max_size_per_msg` (1 MiB in etcd) unless a single entry is larger, and entries are
/// bounded by `--max-request-bytes` (1.5 MiB by default; etcd advises against more than
/// 10 MiB). 32 MiB leaves room for a raised request limit while keeping what one peer can
/// make us buffer small. Snapshots do not go through this limit: they stream in chunks.
/// Memory: at most one such frame per link is held while it is being read.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// How long a retired link (a duplicate connection, see `link::install`) stays open
/// for what was written on it to arrive, at most: the peer finishes its side at once, so
/// on a working path this is never reached; a peer that never does is given up on.
pub const LINK_RETIRE_DRAIN: Duration = Duration::from_secs(2);
/// How long a retired link stays open once both sides finished and the peer received
/// everything: time for the peer's reader to take what it received before the close
/// discards it (a local hand-over to the raft core).
pub const LINK_RETIRE_GRACE: Duration = Duration::from_millis(100);

/// Messages queued for one peer before `send` refuses more (and the caller reports the
/// peer unreachable to raft). etcd's stream writer buffers 4096 messages
/// (`streamBufSize`); raft itself keeps at most `max_inflight_msgs` appends in flight, so
/// a full queue means the link is down or far too slow, and dropping is what raft expects.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;

/// Bytes queued for one peer before `send` refuses more. etcd bounds only the count; a
/// queue of 4096 one-megabyte appends would be 4 GiB, so the bytes are bounded too.
/// Memory: at most this much per peer.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Messages taken from a peer's queue and written to its stream in one write. Several
/// raft messages per write amortise the per-write cost (one wake-up of the connection
/// driver, fewer and fuller packets) under load; when the queue holds one message, it goes
/// out alone at once, so batching never delays a message.
pub const BATCH_MESSAGES_MAX: usize = 256;

/// Bytes gathered into one write before it is issued. Large enough for many heartbeats
/// and appends, small enough that one write does not hold a large staging copy.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Messages at most this long are copied into the batch's staging buffer; longer ones
/// are handed to QUIC as their own chunk without copying.
pub const BATCH_COPY_BYTES_MAX: usize = 16 * 1024;

/// Incoming messages and snapshot announcements waiting for the caller (the raft core)
/// to take them. When it is full, readers stop reading and QUIC flow control pushes back
/// on the senders, so a slow raft core slows its peers instead of growing memory.
pub const INCOMING_QUEUE_MAX: usize = 4096;

/// Largest snapshot metadata (the raft snapshot message without its data: index, term,
/// configuration). A configuration of thousands of members fits many times over.
pub const SNAPSHOT_METADATA_BYTES_MAX: usize = 1024 * 1024;

/// Largest snapshot data chunk in one frame. The sender cuts the caller's chunks to this
/// size; the receiver holds at most one partial chunk per snapshot stream while reading.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// Chunks of one incoming snapshot buffered for the caller. With 1 MiB chunks this is
/// at most 16 MiB per snapshot; beyond it, flow control stops the sender.
pub const SNAPSHOT_CHUNKS_QUEUED_MAX: usize = 16;

/// Snapshot streams a peer may have open towards us at once. Raft sends one snapshot
/// per follower at a time; two tolerate a retry that starts while the aborted one is
/// still being torn down.
pub const SNAPSHOT_STREAMS_MAX: u32 = 2;

/// Members known to one transport, including members learned from their incoming
/// connections. Raft clusters have a handful of voters and a few learners.
pub const PEERS_MAX: usize = 128;

/// Removed member IDs remembered so that their connections are refused (etcd refuses
/// traffic from removed members). Member IDs are never reused, so forgetting the oldest
/// one only costs an extra connection from a member that should be gone.
pub const REMOVED_MEMBERS_MAX: usize = 1024;

/// Incoming connections whose handshake may be in progress at once. Peers dial once per
/// lost link, so more than this at a time is a storm or an attack; the rest are refused.
pub const HANDSHAKES_MAX: usize = 64;

/// Time for a dial or an accepted connection to finish the QUIC handshake and the hello
/// exchange. etcd's peer dial timeout is 1 s plus the election timeout, 2 s by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// A link that hears nothing for this long is dead. etcd's peer connections time out
/// reads after 5 s (`ConnReadTimeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive packets on an otherwise silent link, so that the idle timeout only fires
/// when the peer is really gone (raft heartbeats normally keep the link busy anyway).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// First wait before redialing a peer after a failed dial or a short-lived link. etcd's
/// stream readers retry every 100 ms.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Longest wait between dials. A restarted peer dials us itself as soon as it is up, so
/// the cap mainly bounds how long a lost link stays down when only we have traffic.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A link that lived at least this long resets the backoff: the peer was healthy, so the
/// next dial goes out at once. Links that die sooner keep backing off, so a peer that
/// accepts and then drops us cannot cause a dial loop.
pub const LINK_HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Sending a snapshot slower than this is logged (etcd warns at 30 s).
pub const SNAPSHOT_SEND_WARN_AFTER: Duration = Duration::from_secs(30);

/// QUIC flow-control window of one stream. On a 1 ms link 16 MiB allows 16 GB/s; on
/// loopback the limit is the CPU. Memory: what the peer may have in flight per stream.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// QUIC flow-control window of a whole connection: the message stream and the snapshot
/// streams together.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 4 * STREAM_RECEIVE_WINDOW_BYTES;

/// Smallest send window of a connection: the bytes it may have sent and not yet had
/// acknowledged (quinn also counts what is written but not sent yet). Everything in
/// flight is queued ahead of the next raft message, so this is the delay a snapshot adds
/// to heartbeats: on loopback, where the receiver's CPU is the bottleneck, 64 MiB in
/// flight delayed messages by ~20 ms (p50) and 256 KiB by well under 1 ms, while the
/// snapshot still streamed faster (less buffering, warmer caches).
pub const SEND_WINDOW_BYTES_MIN: u64 = 256 * 1024;

/// The send window grows with the path's minimum round-trip time to allow this rate,
/// so that a long path is not throttled by the small window above: window =
/// rate × min RTT (1 MB at 1 ms, 10 MB at 10 ms). It uses the *minimum* RTT, which the
/// queue the window builds up cannot inflate.
pub const SEND_WINDOW_BYTES_PER_SECOND: u64 = 1_000_000_000;

/// Largest send window, whatever the RTT. Memory: what one connection may buffer.
pub const SEND_WINDOW_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// How often a link's send window follows its minimum RTT.
pub const SEND_WINDOW_UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Size of the UDP socket's kernel buffers. Linux defaults to about 200 KiB, which a
/// snapshot burst overflows on loopback (the drops then look like congestion).
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Largest QUIC packet that path MTU discovery probes for: the largest UDP payload
/// (quinn's default is 1452, an Ethernet frame). Fewer, larger packets cut the
/// per-packet cost of encryption, header protection, acknowledgements and system calls;
/// where the path does not carry them (quinn sets don't-fragment), the probes are lost
/// and discovery settles on what does, so the bound is safe on any path (quinn's own
/// documentation). TCP gets the same on loopback or jumbo-frame links without asking:
/// with 1452 every 1 MiB append left a member as ~720 packets.
///
/// Measured (2026-12-07, `rivet-bench compare --members 3`, put 100 conns / 1000 clients
/// spread over all members, 3 rounds, against 1452): server CPU per put 0.89× (0.88–0.93),
/// QPS 1.18×; to the leader 0.96×, 1.07×.
pub const MTU_UPPER_BOUND: u16 = 65527;

const _: () = assert!(PEER_QUEUE_BYTES_MAX >= 2 * MESSAGE_BYTES_MAX);
const _: () = assert!(BATCH_COPY_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SNAPSHOT_METADATA_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX <= STREAM_RECEIVE_WINDOW_BYTES as usize);
const _: () = assert!(
    KEEP_ALIVE_INTERVAL.as_millis() * 2 < IDLE_TIMEOUT.as_millis(),
    "keep-alives must arrive well within the idle timeout"
);
const _: () = assert!(BACKOFF_INITIAL.as_millis() < BACKOFF_MAX.as_millis());
const _: () = assert!(SEND_WINDOW_BYTES_MIN <= SEND_WINDOW_BYTES_MAX);

/// HashKV streams a peer may have open on a link at once (QUIC's stream limit, besides
/// the link stream): a corruption check asks each peer once per pass.
pub const HASHKV_STREAMS_MAX: u32 = 4;

/// How long a HashKV exchange may take, asking or answering: etcd's request timeout
/// (5 s plus twice the default election timeout). The answer needs a linearizable read
/// and a pass over every version, so it is longer than a raft message's round trip.
pub const HASHKV_TIMEOUT: Duration = Duration::from_secs(7);
