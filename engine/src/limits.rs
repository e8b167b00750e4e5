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
/// etcd warns when applying entries takes longer than 100 ms (a slow disk is a dead
/// leader: ETCD_LESSONS 7).
pub const APPLY_WARN: Duration = Duration::from_millis(100);

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
/// Chunks of live keys in flight from the shards to the raft core at start-up.
pub const RESTORE_QUEUE_CHUNKS: usize = 4;
/// Keys per start-up chunk: the sequencer is rebuilt in chunks, never by loading every
/// key twice (ETCD_LESSONS 11).
pub const RESTORE_CHUNK_KEYS: usize = 4096;

// ---- Executors -------------------------------------------------------------------------

/// glommio's registered I/O buffer per executor. Three rings per executor must fit the
/// memlock limit when not running as root (`ulimit -l`, 8 MiB here): 2 MiB each.
pub const GLOMMIO_IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;
