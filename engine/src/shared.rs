//! The few facts every core reads and one core writes: plain atomics, no locks.

use std::sync::atomic::{AtomicI64, AtomicU64};

pub struct Shared {
    pub member_id: u64,
    pub cluster_id: u64,
    /// Written by the raft core.
    pub term: AtomicU64,
    pub leader: AtomicU64,
    /// A revision every shard has applied: serializable reads that span shards read it.
    /// Only moves forward (`fetch_max`).
    pub applied_revision: AtomicI64,
    pub compact_revision: AtomicI64,
}

impl Shared {
    pub fn new(member_id: u64, cluster_id: u64) -> Shared {
        Shared {
            member_id,
            cluster_id,
            term: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            applied_revision: AtomicI64::new(1),
            compact_revision: AtomicI64::new(-1),
        }
    }
}
