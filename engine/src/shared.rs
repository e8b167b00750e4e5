//! The few facts every core reads and one core writes: plain atomics, no locks.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use futures::task::AtomicWaker;

/// What one shard publishes about its progress through the apply stream, and how the
/// other cores wake it when they are the ones it waits for.
pub struct ShardProgress {
    /// Written only by the shard's core, after applying a batch.
    pub applied_index: AtomicU64,
    pub applied_revision: AtomicI64,
    /// The smallest index a request on this core waits for all shards to apply
    /// (`u64::MAX`: none). Other shards wake this core when they pass it.
    pub waiting_for: AtomicU64,
    pub notified: AtomicBool,
    pub waker: AtomicWaker,
}

impl ShardProgress {
    fn new() -> ShardProgress {
        ShardProgress {
            applied_index: AtomicU64::new(0),
            applied_revision: AtomicI64::new(1),
            waiting_for: AtomicU64::new(u64::MAX),
            notified: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }
}

pub struct Shared {
    pub member_id: u64,
    pub cluster_id: u64,
    /// Written by the raft core.
    pub term: AtomicU64,
    pub leader: AtomicU64,
    /// Whether this member is a learner (written by the raft core when membership
    /// changes): a learner serves only Status and serializable ranges, as in etcd 3.4.
    pub is_learner: AtomicBool,
    pub shards: Vec<ShardProgress>,
}

impl Shared {
    pub fn new(member_id: u64, cluster_id: u64, shard_count: usize) -> Shared {
        Shared {
            member_id,
            cluster_id,
            term: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            is_learner: AtomicBool::new(false),
            shards: (0..shard_count).map(|_| ShardProgress::new()).collect(),
        }
    }

    /// An index every shard has applied.
    pub fn applied_index(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.applied_index.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    /// A revision every shard has applied: reads that span shards read at it.
    pub fn applied_revision(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.applied_revision.load(Ordering::SeqCst))
            .min()
            .unwrap_or(1)
    }
}
