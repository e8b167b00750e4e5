//! rivet tools: offline tools for testing and operating rivet.
//!
//! * [`linearizability`]: a linearizability checker for key-value histories
//!   recorded by test clients, with a text format to save and replay them.
//! * [`snapshot`]: `rivetctl snapshot status|restore` on etcd snapshot files.

pub mod linearizability;
pub mod snapshot;
