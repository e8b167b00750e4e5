//! rivet's engine: the raft core (consensus, WAL, apply sequencer), the shards (MVCC index
//! and page file per core) and the messages between them. No sockets: the `net` crate
//! serves clients on top of it.

pub mod apply;
pub mod auth;
pub mod check;
pub mod core;
pub mod crash;
pub mod error;
pub mod etcd_backend;
pub mod etcd_datadir;
pub mod etcd_import;
pub mod etcd_snapshot;
pub mod etcd_wal;
pub mod identity;
pub mod keyspace;
pub mod layout;
pub mod lessor;
pub mod limits;
pub mod membership;
pub mod messages;
pub mod metrics;
pub mod mvcc;
pub mod page;
pub mod raft;
pub mod range;
pub mod replay;
pub mod sequencer;
pub mod shard;
pub mod shared;
pub mod snapshot;
