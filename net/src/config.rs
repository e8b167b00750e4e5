//! rivet's flags: etcd 3.4's names and defaults, each also read from its `ETCD_*`
//! environment variable (the command line wins), plus `--shards`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rivet",
    about = "rivet: a replicated key-value store that speaks the etcd v3 API",
    version,
    disable_version_flag = true
)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.rivet).
    #[arg(long = "data-dir", env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to the dedicated WAL directory (default: ${data-dir}/member/wal).
    #[arg(long = "wal-dir", env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// List of URLs to listen on for client traffic (comma-separated).
    #[arg(
        long = "listen-client-urls",
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long = "advertise-client-urls",
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(
        long = "max-request-bytes",
        env = "ETCD_MAX_REQUEST_BYTES",
        default_value_t = 1_572_864
    )]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long = "max-txn-ops", env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(
        long = "quota-backend-bytes",
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0
    )]
    pub quota_backend_bytes: u64,
    /// Number of committed transactions to trigger a snapshot (a checkpoint of every shard).
    #[arg(
        long = "snapshot-count",
        env = "ETCD_SNAPSHOT_COUNT",
        default_value_t = 100_000
    )]
    pub snapshot_count: u64,
    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long = "log-level", env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Shard cores (each owns a partition of the keys); default: cores - 1, at least 1.
    #[arg(long, env = "RIVET_SHARDS")]
    pub shards: Option<usize>,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
}

/// Go's flag package, which etcd uses, accepts `-name` as well as `--name`; clap only
/// knows the second form, so single-dash long flags are rewritten first.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let is_single_dash_long = i > 0
                && arg.starts_with('-')
                && !arg.starts_with("--")
                && arg.len() > 2
                && arg.as_bytes()[1].is_ascii_alphabetic();
            if is_single_dash_long {
                format!("-{arg}")
            } else {
                arg
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("URL scheme must be http or https: {0}")]
    Scheme(String),
    #[error("https client URLs need TLS settings, which rivet does not support yet: {0}")]
    Tls(String),
    #[error("invalid URL {0}: {1}")]
    Invalid(String, String),
}

/// Resolves `http://host:port` URLs to socket addresses (IPv4 first, like etcd's
/// `localhost`).
pub fn listen_addresses(urls: &str) -> Result<Vec<SocketAddr>, UrlError> {
    let mut addresses = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(UrlError::Tls(url.to_string()));
        } else {
            return Err(UrlError::Scheme(url.to_string()));
        };
        let host_port = rest.trim_end_matches('/');
        let mut resolved: Vec<SocketAddr> = host_port
            .to_socket_addrs()
            .map_err(|e| UrlError::Invalid(url.to_string(), e.to_string()))?
            .collect();
        resolved.sort_by_key(|a| !a.is_ipv4());
        let first = resolved
            .into_iter()
            .next()
            .ok_or_else(|| UrlError::Invalid(url.to_string(), "no address".into()))?;
        if !addresses.contains(&first) {
            addresses.push(first);
        }
    }
    Ok(addresses)
}

/// etcd's member ID: the first 8 bytes (big endian) of SHA-1 over the sorted peer URLs
/// followed by the cluster token.
pub fn member_id(peer_urls: &[&str], cluster_token: &str) -> u64 {
    use sha1::{Digest, Sha1};
    let mut sorted: Vec<&str> = peer_urls.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for url in sorted {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

/// etcd's cluster ID: SHA-1 over the sorted member IDs, big endian, first 8 bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    use sha1::{Digest, Sha1};
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcds_defaults() {
        // etcd 3.4 with default flags reports these IDs.
        let member = member_id(&["http://localhost:2380"], "etcd-cluster");
        assert_eq!(member, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[member]), 0xcdf818194e3a8c32);
    }

    #[test]
    fn single_dash_flags_are_accepted() {
        let args =
            normalize_args(["rivet", "-name", "x", "--data-dir", "d", "-h"].map(String::from));
        assert_eq!(args, ["rivet", "--name", "x", "--data-dir", "d", "-h"]);
    }
}
