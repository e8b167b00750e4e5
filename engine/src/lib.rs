//! rivet engine: per-shard storage (page file, MVCC index) for now; the raft core,
//! sequencer, shards, leases, auth and watch come later.

pub mod limits;
pub mod mvcc;
pub mod page;
