//! rivet's network layer: the etcd v3 gRPC services and HTTP endpoints served on every
//! shard core, the peer transport (QUIC), flags, and member start-up.

pub mod authority;
pub mod config;
pub mod glommio_hyper;
pub mod http;
pub mod lease;
pub mod listener;
pub mod lock;
pub mod peer;
pub mod peer_link;
pub mod server;
pub mod services;
pub mod watch;
