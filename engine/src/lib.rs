//! rivet's engine: the raft core (consensus, WAL, apply sequencer), the shards (MVCC index
//! and page file per core) and the messages between them. No sockets: the `net` crate
//! serves clients on top of it.

pub mod check;
pub mod error;
pub mod range;
pub mod sequencer;
