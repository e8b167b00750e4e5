//! Every limit of the engine in one place, each with the reason for its value.

use std::time::Duration;

// ---- Raft core -------------------------------------------------------------------------

/// Largest raft append message (etcd's `maxSizePerMsg`, 1 MiB): bounds the memory of one
/// message and how long it holds the peer stream.
pub const RAFT_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;
/// Append messages in flight per follower (etcd's `maxInflightMsgs`, 4096 / 8 … we use
/// 256): with 1 MiB messages this bounds the unacknowledged bytes per peer to 256 MiB.
pub const RAFT_INFLIGHT_MESSAGES_MAX: usize = 256;
/// Commands the raft core takes in one turn before it handles the Ready: large enough for
/// big group commits, small enough that a flood cannot starve ticks and acks.
pub const RAFT_COMMANDS_PER_TURN_MAX: usize = 8192;
/// Entries kept in the raft log behind a checkpoint for followers that lag a little
/// (etcd's `SnapshotCatchUpEntries`).
pub const RAFT_LOG_KEPT_AFTER_CHECKPOINT: u64 = 5000;
/// etcd warns when an fdatasync of the WAL takes longer than a second.
pub const WAL_FSYNC_WARN: Duration = Duration::from_secs(1);

/// How many protobuf messages deep a txn may nest (the txn itself is 1; each nested txn
/// adds two: its RequestOp and itself): as deep as prost decodes a `TxnRequest` (it stops
/// at 100 nested messages below the top), so that whatever the gRPC service accepts also
/// decodes from a raft entry on every replica (`decode_internal_request`), and nothing
/// deeper (from the JSON gateway) is proposed: an entry the replicas cannot decode would
/// stop the cluster.
pub const TXN_NESTED_MESSAGES_MAX: usize = 101;

/// Learners at once (etcd 3.4 allows one): a learner costs the leader a full replication
/// stream without adding fault tolerance.
pub const LEARNERS_MAX: usize = 1;
/// A learner is promoted only when its log holds this share of the leader's committed
/// entries (etcd: 90%), so the promotion does not stall the quorum while it catches up.
pub const LEARNER_READY_PERCENT: u64 = 90;
/// A linearizable read raft has not answered for this long is asked about again (etcd
/// 3.5's `readIndexRetryTime`): raft drops a ReadIndex that finds no leader.
pub const READ_INDEX_RETRY: Duration = Duration::from_millis(500);
/// How long a starting member waits, before it serves clients, for the entries of its log
/// after the checkpoint to be known committed and applied (see `net/src/server.rs`). etcd
/// serves nothing until a quorum confirms its start; rivet serves (with a warning) after
/// this, so a member left without a quorum still answers serializable reads, /health and
/// the metrics. Several election timeouts at etcd's default of 1 s.
pub const START_REPLAY_WAIT: Duration = Duration::from_secs(5);
/// With `--strict-reconfig-check`, a peer counts as connected for a membership change
/// only when its link has been up this long (etcd's `HealthInterval`): a member that
/// just came back may go again, and a change should not lean on it.
pub const RECONFIG_CONNECTED_FOR: Duration = Duration::from_secs(5);

// ---- Channels between cores (all bounded: a slow receiver slows its senders) ----------

/// Client commands waiting for the raft core: one per in-flight request of all shard
/// cores; 64 Ki covers 1000 clients × many streams and costs ~100 B per slot.
pub const RAFT_COMMAND_QUEUE: usize = 65_536;
/// Apply batches queued for one shard. One batch per raft Ready; 1024 lets the raft core
/// run well ahead of a momentarily busy shard without unbounded memory.
pub const APPLY_QUEUE_BATCHES: usize = 1024;
/// Acknowledgements from all shards to the raft core (tiny messages).
pub const SHARD_ACK_QUEUE: usize = 4096;
/// Scattered read parts queued for one shard core from the others.
pub const SHARD_REQUEST_QUEUE: usize = 4096;
/// Peers' HashKV requests (corruption checks) waiting for shard 0: each peer has at
/// most a few HashKV streams open at once (`net/src/peer/limits.rs`), so a few per
/// peer of the largest cluster.
pub const PEER_HASH_KV_QUEUE: usize = 512;
/// Messages from the peer transport waiting for the raft core: a few heartbeat rounds of
/// a large cluster; when full, the transport waits (QUIC flow control pushes back).
pub const PEER_EVENT_QUEUE: usize = 4096;
/// Wake-ups and defragmentation requests queued for a shard's garbage collection task:
/// one pending wake-up is as good as many; defragmentations are rare.
pub const GC_REQUEST_QUEUE: usize = 64;
/// Chunks of live keys in flight from the shards to the raft core at start-up.
pub const RESTORE_QUEUE_CHUNKS: usize = 4;
/// Keys per start-up chunk: the sequencer is rebuilt in chunks, never by loading every
/// key twice (ETCD_LESSONS 11).
pub const RESTORE_CHUNK_KEYS: usize = 4096;

// ---- Leases ----------------------------------------------------------------------------

/// etcd's `MaxLeaseTTL` (9,000,000,000 s): larger TTLs are refused.
pub const LEASE_TTL_MAX_SECONDS: i64 = 9_000_000_000;
/// Leases the leader revokes per second at most (etcd's `leaseRevokeRate`): expiring
/// leases never turn into a storm of deletes; the rest wait for the next second.
pub const LEASE_REVOKES_PER_SECOND: usize = 1000;
/// How often the leader checkpoints remaining TTLs into the log (etcd: 5 minutes), so a
/// new leader continues them instead of restarting them at their full TTL.
pub const LEASE_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);
/// Leases per checkpoint entry (etcd's `maxLeaseCheckpointBatchSize`).
pub const LEASE_CHECKPOINT_BATCH: usize = 1000;

// ---- Snapshots in etcd's format (Maintenance.Snapshot) ---------------------------------

/// Bytes per `SnapshotResponse` blob: etcd's `snapshotSendBufferSize` (32 KiB), so that
/// clients see the same message sizes.
pub const SNAPSHOT_BLOB_BYTES: usize = 32 * 1024;
/// Versions a shard hands the snapshot stream per request: bounds the memory of one
/// chunk (with [`SNAPSHOT_CHUNK_BYTES`]) while keeping the cross-core round trips few.
pub const SNAPSHOT_CHUNK_VERSIONS: usize = 1024;
/// Key and value bytes per chunk at most (one version may exceed it).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Versions and blobs queued between the stream's core and its writer thread.
pub const SNAPSHOT_QUEUE: usize = 4096;
/// A snapshot pin nobody read a chunk of for this long is dropped: a stream whose end
/// was never reported must not hold back garbage collection and compactions forever.
pub const SNAPSHOT_PIN_IDLE: Duration = Duration::from_secs(300);

// ---- Auto-compaction -----------------------------------------------------------------

/// How long the leader's auto-compactor waits for its compaction to apply before it
/// counts it failed and retries (etcd's request timeout with default timings: its
/// `Compact` call returns a timeout then).
pub const AUTO_COMPACTION_TIMEOUT: Duration = Duration::from_secs(7);

/// etcd's `revInterval`: how often the revision compactor looks.
pub const REVISION_COMPACTION_INTERVAL: Duration = Duration::from_secs(300);

/// How often the revision auto-compactor looks: etcd's `revInterval`, 5 minutes, unless
/// the test-only `RIVET_TEST_REVISION_COMPACTION_INTERVAL_MS=<n>` (n > 0) shortens it
/// (`net/tests/storage.rs`). Honoured only when set; read once per process.
pub fn revision_compaction_interval() -> Duration {
    static INTERVAL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *INTERVAL.get_or_init(|| {
        std::env::var("RIVET_TEST_REVISION_COMPACTION_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&ms: &u64| ms > 0)
            .map_or(REVISION_COMPACTION_INTERVAL, Duration::from_millis)
    })
}

// ---- Watch -----------------------------------------------------------------------------

/// Changes each shard keeps in memory for watchers that keep up (~100 B each: 6.4 MiB per
/// shard). A watcher that falls further behind reads the index instead (catch-up path),
/// so a slow watcher costs reads, never memory or a blocked apply stream.
pub const WATCH_RECENT_CHANGES_MAX: usize = 65_536;
/// The recent-changes bound in force: [`WATCH_RECENT_CHANGES_MAX`], unless the test-only
/// variable `RIVET_TEST_WATCH_RECENT_CHANGES=<n>` (n > 0) is set, which tests use to force
/// the catch-up path with a tiny log (`net/tests/watch_lease_scale.rs`). Like
/// `RIVET_TEST_FAULTS` it is honoured only when set; read once per process.
pub fn watch_recent_changes_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("RIVET_TEST_WATCH_RECENT_CHANGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(WATCH_RECENT_CHANGES_MAX)
    })
}
/// Revisions one catch-up response covers at most (etcd: 1000), so that one response
/// stays well below clients' message size limits.
pub const WATCH_CATCH_UP_REVISIONS_MAX: i64 = 1000;
/// Responses queued to one watch stream's client before its task waits for the client.
pub const WATCH_STREAM_QUEUE: usize = 128;
/// etcd's default interval of progress notifications for watchers that asked for them.
pub const WATCH_PROGRESS_NOTIFY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

// ---- JSON gateway (net/src/gateway) ----------------------------------------------------

/// Requests of one gateway stream (watch, lease keep-alive) read from the HTTP body ahead
/// of the service: a client that writes faster than the stream serves waits here instead
/// of growing a buffer.
pub const GATEWAY_STREAM_REQUEST_QUEUE: usize = 16;
/// The JSON of one gateway request may be this many times `--max-request-bytes` (plus
/// [`GATEWAY_REQUEST_OVERHEAD_BYTES`]): base64 makes keys and values 4/3 as long and JSON
/// adds names and quotes; a larger body is refused before it is buffered, as the request
/// it carries would be too large anyway.
pub const GATEWAY_REQUEST_EXPANSION: usize = 2;
/// Room for field names and punctuation of a gateway request with small keys and values.
pub const GATEWAY_REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

// ---- Executors -------------------------------------------------------------------------

// A shard core parks as soon as it has nothing to run: no `spin_before_park`. Spinning
// (200 µs until 2026-12-07) only pays when the next event comes within the spin, but a
// put's reply waits for an fdatasync (~0.7 ms on this disk), so at one client every
// spin timed out and was pure CPU (put 1 conn / 1 client: 760–843 against 573–597 µs of
// server CPU per put; serializable range at 1 client: 160–218 against 110–132 µs, for
// ~20 µs more p50), and under load a busy core never parks, so nothing was gained there
// (put 100 conns / 1000 clients: 37.0–37.7 against 33.3–37.5 µs per put). An idle or
// lightly loaded member now leaves its CPU to co-located processes. Parking needs the
// patched glommio in `vendor/` (0.9.0 could park with runnable tasks; spinning hid it).
/// glommio's registered I/O buffer per executor. Three rings per executor must fit the
/// memlock limit when not running as root (`ulimit -l`, 8 MiB here): 2 MiB each.
pub const GLOMMIO_IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;

// ---- Storage: page files and the index ------------------------------------------------

/// The size of one page-file segment unless the shard is configured otherwise.
///
/// Why 64 MiB: large enough that rollover (create, `fallocate`, `mmap`, one `mprotect`)
/// happens rarely — about every 500,000 small records — and small enough that a segment
/// that defragmentation must rewrite, or a checkpoint that must `msync` a sealed segment,
/// stays a bounded amount of I/O. Cost: one preallocated file of this size on disk and one
/// mapping of this size in virtual memory (resident only as pages are touched).
pub const SEGMENT_BYTES_DEFAULT: u32 = 64 * 1024 * 1024;

/// Appended bytes of the active segment that stay mapped in this process before the
/// shard lets go of them (`madvise(MADV_DONTNEED)` on the written pages; the data stays
/// in the page cache and on disk, and a later read maps it again).
///
/// Why 4 MiB: without it every page appended to stayed resident until the segment rolled
/// over, up to a whole segment per shard (~40 MB of a member's 147 MiB peak after 95,000
/// puts, 2026-12-07); one `madvise` per 4 MiB is ~10,000 small records' worth, so its
/// cost per record is nothing.
///
/// The same step starts the writeback of the released pages (`sync_file_range`), so it
/// also bounds what a checkpoint's sync finds dirty: 4 MiB, not a whole checkpoint
/// interval's pages sent to the disk at once with the WAL's fdatasyncs queued behind them.
pub const PAGE_RESIDENT_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// The granularity of segment sizes: every segment file is a whole number of these.
///
/// Why 4 KiB: the page size of the machines we run on, so a mapping covers whole pages,
/// `msync` ranges need no rounding beyond one page, and no mapped page extends past the
/// end of the file (touching such a page raises `SIGBUS`).
pub const SEGMENT_ALIGNMENT_BYTES: u32 = 4096;

/// The smallest segment a page file may be configured with.
///
/// Why one page: it holds the segment header and a few small records, which is what the
/// tests want — with 4 KiB segments rollover runs every few dozen appends, so the cold
/// path is exercised constantly. Smaller would make most records "oversized".
pub const SEGMENT_BYTES_MIN: u32 = SEGMENT_ALIGNMENT_BYTES;

/// The largest segment a page file may be configured with.
///
/// Why 1 GiB: record offsets in a `PagePtr` are `u32`, so no segment may exceed 4 GiB;
/// 1 GiB keeps a wide margin and still makes rollover negligible. Cost: virtual address
/// space only.
pub const SEGMENT_BYTES_MAX: u32 = 1024 * 1024 * 1024;

/// The largest page record (header + key + value), and so the largest key or value.
///
/// Why 1 GiB: far above anything etcd accepts (its `--max-request-bytes` defaults to
/// 1.5 MiB and etcd warns above 10 MiB), so no request etcd would accept is refused here,
/// while a record that gets a segment of its own (record + segment header, rounded up to
/// [`SEGMENT_ALIGNMENT_BYTES`]) still fits the `u32` offsets and lengths of the format.
/// Cost: none until such a record is written; then one segment file of its size.
pub const RECORD_BYTES_MAX: u32 = 1024 * 1024 * 1024;

/// The largest key the in-memory index accepts.
///
/// Why: a key must fit in one page record, and the index stores key lengths as `u32`.
/// etcd itself has no separate key limit; its request size limit applies upstream.
/// Cost: the key's bytes live on the heap for as long as any version of it is indexed.
pub const KEY_BYTES_MAX: u32 = RECORD_BYTES_MAX;

/// A page segment is rewritten by the background garbage collection once this share of
/// its record bytes is dead (after a compaction).
///
/// Why 50%: rewriting a segment costs writing its live bytes; at half dead, every byte
/// written frees at least one, so the write amplification of garbage collection stays at
/// most 2 (the usual trade-off of log-structured stores), while at most half of the disk
/// space of old segments waits for reuse. Maintenance.Defragment ignores the threshold
/// and rewrites every segment with a dead byte.
pub const GC_DEAD_PERCENT_MIN: u64 = 50;

/// Records garbage collection examines per step before it lets the shard core serve
/// other work (it goes on to finish the revision at hand). ~1000 small records take
/// ~100 µs, well below a read's latency budget.
pub const GC_STEP_RECORDS: usize = 1024;

/// The share of a shard core garbage collection runs at, against 1000 for serving
/// requests (glommio task queue shares): under load it takes ~1/10 of the core; idle, all
/// of it.
pub const GC_TASK_QUEUE_SHARES: usize = 100;

/// The page segment size in force: [`SEGMENT_BYTES_DEFAULT`], unless the test-only
/// variable `RIVET_TEST_PAGE_SEGMENT_BYTES=<n>` names a valid size (a multiple of
/// [`SEGMENT_ALIGNMENT_BYTES`] between the limits), which tests use so that a few
/// megabytes of data span many segments and garbage collection has work
/// (`net/tests/storage.rs`). Honoured only when set; read once per process.
pub fn page_segment_bytes() -> u32 {
    static BYTES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("RIVET_TEST_PAGE_SEGMENT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &u32| {
                (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&n)
                    && n % SEGMENT_ALIGNMENT_BYTES == 0
            })
            .unwrap_or(SEGMENT_BYTES_DEFAULT)
    })
}

// ---- Client connections ----------------------------------------------------------------

/// Time a client has to complete its TLS handshake on an https listener. etcd sets none
/// (a connection that never finishes holds a goroutine forever); a shard core must not
/// keep half-open handshakes from a scanner or a stuck client. A TLS handshake on
/// loopback takes about a millisecond; 10 s leave room for slow networks.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---- Client HTTP/2 server (net/src/h2) --------------------------------------------------

/// Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE): large enough that a
/// request of `--max-request-bytes` (1.5 MiB by default) rarely waits for credit, which
/// returns as the service reads the body.
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// The connection's receive window. Credit returns as DATA arrives (each stream's own
/// window bounds what it holds), so clients never stall on it.
pub const H2_CONNECTION_WINDOW: u32 = 64 << 20;
/// SETTINGS_MAX_HEADER_LIST_SIZE, and the bound of a header block held while its
/// CONTINUATION frames arrive.
pub const H2_HEADER_LIST_MAX: usize = 1 << 20;
/// A stream's response DATA queued beyond the client's windows before its task stops
/// reading the response body (a snapshot of hundreds of MB is never all in memory).
pub const H2_STREAM_QUEUE_MAX: usize = 256 * 1024;
/// Bytes of a connection waiting for the socket before response tasks wait for them to go.
pub const H2_OUT_MAX: usize = 1 << 20;
/// Request DATA a fast-path KV call waits for before it goes the general way instead (a
/// large message: tonic reads it as it comes). Below the gRPC decode limit
/// (`--max-request-bytes` + 512 KiB), so the fast path never accepts what tonic refuses.
pub const H2_FAST_BYTES_MAX: usize = 256 * 1024;
// The limits of the HPACK decoder's cache of Huffman strings live with it, in
// `net/hpack/src/lib.rs` (rivet-hpack: shared with rivet-bench, which has no engine).

const _: () = assert!(SEGMENT_BYTES_DEFAULT % SEGMENT_ALIGNMENT_BYTES == 0);
const _: () = assert!(GC_DEAD_PERCENT_MIN > 0 && GC_DEAD_PERCENT_MIN <= 100);
const _: () = assert!(SEGMENT_BYTES_MIN % SEGMENT_ALIGNMENT_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MAX % SEGMENT_ALIGNMENT_BYTES == 0);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
// A record that gets a segment of its own must still be addressable with u32 offsets:
// header + record, rounded up to the alignment, must stay below 4 GiB.
const _: () =
    assert!((RECORD_BYTES_MAX as u64) + 2 * (SEGMENT_ALIGNMENT_BYTES as u64) < u32::MAX as u64);
const _: () = assert!(KEY_BYTES_MAX <= RECORD_BYTES_MAX);

/// Threads that run bcrypt (password hashing and checks, `auth::password::PasswordPool`).
/// One bcrypt at cost 10 takes tens of milliseconds of CPU; two threads keep logins going
/// while one is slow, and at most two cores' worth of CPU ever goes to them, however many
/// clients log in at once.
pub const PASSWORD_HASH_THREADS: usize = 2;

/// bcrypt jobs waiting for a thread. Beyond this a login or password change is refused at
/// once with etcd's `too many requests`: 64 jobs are about 2 s of work for two threads at
/// cost 10, under etcdctl's 5 s command timeout.
pub const PASSWORD_HASH_QUEUE: usize = 64;

/// JWTs a core remembers as checked (`auth::jwt::VerifiedJwtCache`): a signature check
/// costs 0.1-0.2 ms of CPU, a lookup well under a microsecond. 4096 tokens of ~400 bytes
/// is ~2 MiB per core at most; past it the cache is emptied and refills.
pub const JWT_VERIFIED_CACHE_ENTRIES: usize = 4096;
