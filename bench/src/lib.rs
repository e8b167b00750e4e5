//! `rivet-bench`: a load generator for any etcd v3 endpoint (rivet or etcd), with the
//! workloads and flag names of etcd's `benchmark` tool, plus `compare`, which starts rivet
//! and etcd side by side and tabulates both.

pub mod cli;
pub mod compare;
pub mod cpus;
pub mod h2c;
pub mod hgrm;
pub mod lean;
pub mod memory;
pub mod plot;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod servers;
pub mod timeline;
pub mod workloads;
