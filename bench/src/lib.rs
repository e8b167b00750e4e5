//! `rivet-bench`: a load generator for any etcd v3 endpoint (rivet or etcd), with the
//! workloads and flag names of etcd's `benchmark` tool.

pub mod cli;
pub mod hgrm;
pub mod plot;
pub mod progress;
pub mod report;
pub mod workloads;
