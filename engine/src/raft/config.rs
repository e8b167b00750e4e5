//! What the raft core is started with: the member's flags, and the knobs tests shrink.

use std::path::PathBuf;
use std::time::Duration;

use rivet_api::rivetpb::Member;

use crate::limits;
use crate::page::PageOptions;

/// What the raft core needs to start.
pub struct RaftCoreConfig {
    pub wal_dir: PathBuf,
    pub member_id: u64,
    pub cluster_id: u64,
    pub shard_count: usize,
    /// Applied entries between checkpoints (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub quota_backend_bytes: u64,
    pub heartbeat_interval: Duration,
    pub election_ticks: usize,
    /// This member's name and client URLs, published to the member table at start.
    pub name: String,
    pub client_urls: Vec<String>,
    /// The members of a new cluster (`--initial-cluster-state new`); empty when this
    /// member joins an existing cluster and learns everything from a snapshot.
    pub initial_members: Vec<Member>,
    /// Refuse membership changes that would lose quorum (`--strict-reconfig-check`).
    pub strict_reconfig_check: bool,
    /// `--initial-cluster-token`: part of every member ID.
    pub cluster_token: String,
    /// `member/snap`: where snapshots are staged next to the shards' page files.
    pub snap_dir: PathBuf,
    /// `--pre-vote`: raft's PreVote phase (etcd 3.4's default is off).
    pub pre_vote: bool,
    /// `--initial-election-tick-advance`: once a restarted member of a multi-member
    /// cluster reaches its peers, fast-forward its election ticks as etcd does.
    pub initial_election_tick_advance: bool,
    /// `--experimental-warning-apply-duration`: applying longer than this is warned about.
    pub warning_apply_duration: Duration,
    /// `--auth-token-ttl`: how long a simple token lives unused (on this member's clock).
    pub simple_token_ttl: Duration,
    pub tuning: RaftCoreTuning,
}

/// Knobs with production defaults that tests shrink so that rare paths run constantly
/// ("cold code is buggy code"): the simulation keeps a short log after a checkpoint so
/// that lagging members need snapshots, and draws election timeouts from its own seeded
/// randomness.
#[derive(Clone, Copy, Debug)]
pub struct RaftCoreTuning {
    /// Entries kept in the raft log behind a checkpoint for followers that lag a little.
    pub log_entries_kept_after_checkpoint: u64,
    /// Whether raft randomizes election timeouts (raft-rs draws them from the thread's
    /// RNG, which a seeded simulation cannot replay; it jitters ticks instead).
    pub randomized_election_timeout: bool,
    /// The layout of the page files a snapshot install stages.
    pub page_options: PageOptions,
    /// A number this member never started with before (random by default): this start's
    /// proposal IDs and ReadIndex contexts begin from it, so that an answer meant for an
    /// earlier start — an entry it proposed that commits only now, a ReadIndex response
    /// still in flight — is never taken for an answer to this one. The simulation draws it
    /// from its seed.
    pub incarnation: u64,
}

impl Default for RaftCoreTuning {
    fn default() -> RaftCoreTuning {
        RaftCoreTuning {
            log_entries_kept_after_checkpoint: limits::RAFT_LOG_KEPT_AFTER_CHECKPOINT,
            randomized_election_timeout: true,
            page_options: PageOptions::default(),
            incarnation: random_u64(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("wal: {0}")]
    Wal(String),
    #[error("the WAL in {dir} was written by member {found:x} of cluster {found_cluster:x}, not member {expected:x} of cluster {expected_cluster:x}")]
    Identity {
        dir: String,
        found: u64,
        found_cluster: u64,
        expected: u64,
        expected_cluster: u64,
    },
    #[error("the data dir was created with --shards {found}; rivet was started with --shards {requested}: start it with --shards {found} (re-sharding a data dir is not supported yet)")]
    ShardCount { found: u32, requested: usize },
    #[error("damaged {what} in the WAL at index {index}: {reason}")]
    Decode {
        what: &'static str,
        index: u64,
        reason: String,
    },
    #[error("raft: {0}")]
    Raft(String),
}

/// A random number from the standard library's per-process hash keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
