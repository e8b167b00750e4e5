//! rivet's network layer: the etcd v3 gRPC services, their JSON gateway and the HTTP
//! endpoints served on every shard core, the peer transport (QUIC), flags, and member start-up.

pub mod access;
pub mod auth;
pub mod config;
pub mod corrupt;
pub mod discovery;
pub mod forward;
pub mod gateway;
pub mod glommio_hyper;
pub mod grpc_metrics;
pub mod h2;
pub mod http;
pub mod lease;
pub mod listener;
pub mod listeners;
pub mod lock;
pub mod logging;
pub mod page_sync;
pub mod peer;
pub mod peer_link;
pub mod pprof;
pub mod server;
pub mod services;
pub mod tls;
pub mod watch;
pub mod watchers;
