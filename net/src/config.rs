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
    /// List of URLs to listen on for peer traffic (QUIC over UDP at the URL's port).
    #[arg(
        long = "listen-peer-urls",
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long = "initial-advertise-peer-urls",
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (default: ${name}=${initial-advertise-peer-urls}).
    #[arg(long = "initial-cluster", env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long = "initial-cluster-token",
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long = "initial-cluster-state", env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(
        long = "heartbeat-interval",
        env = "ETCD_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(
        long = "election-timeout",
        env = "ETCD_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout: u64,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(long = "strict-reconfig-check", env = "ETCD_STRICT_RECONFIG_CHECK", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub strict_reconfig_check: bool,
    /// Auto compaction retention length. 0 means disable auto compaction.
    #[arg(
        long = "auto-compaction-retention",
        env = "ETCD_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention.
    #[arg(
        long = "auto-compaction-mode",
        env = "ETCD_AUTO_COMPACTION_MODE",
        default_value = "periodic"
    )]
    pub auto_compaction_mode: String,
    /// Maximum number of snapshot files to retain (0 is unlimited).
    #[arg(
        long = "max-snapshots",
        env = "ETCD_MAX_SNAPSHOTS",
        default_value_t = 5
    )]
    pub max_snapshots: u32,
    /// Maximum number of wal files to retain (0 is unlimited).
    #[arg(long = "max-wals", env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: u32,
    /// Shard cores (each owns a partition of the keys); default: cores - 1, at least 1.
    #[arg(long, env = "RIVET_SHARDS")]
    pub shards: Option<usize>,
    /// Pin the raft core and each shard core to its own CPU. Turn off (`--pin-cores=false`)
    /// when several members share one machine's CPUs, as in a local test cluster: pinned,
    /// their threads would queue on the same CPUs.
    #[arg(long = "pin-cores", env = "RIVET_PIN_CORES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pin_cores: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_flags_are_accepted() {
        let args =
            normalize_args(["rivet", "-name", "x", "--data-dir", "d", "-h"].map(String::from));
        assert_eq!(args, ["rivet", "--name", "x", "--data-dir", "d", "-h"]);
    }
}

/// Splits a comma-separated URL list.
pub fn url_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.trim_end_matches('/').to_string())
        .collect()
}

/// The cluster this member bootstraps into: its own ID, the cluster ID and the initial
/// members, from `--name`, `--initial-cluster`, `--initial-advertise-peer-urls` and
/// `--initial-cluster-token`, checked the way etcd checks them.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub member_id: u64,
    pub cluster_id: u64,
    pub members: Vec<(u64, String, Vec<String>)>,
}

pub fn bootstrap(flags: &Flags) -> Result<Bootstrap, String> {
    let advertised = url_list(&flags.initial_advertise_peer_urls);
    let initial = match &flags.initial_cluster {
        Some(value) => value.clone(),
        None => advertised
            .iter()
            .map(|u| format!("{}={u}", flags.name))
            .collect::<Vec<_>>()
            .join(","),
    };
    let parsed = rivet_engine::membership::parse_initial_cluster(&initial)?;
    let Some((_, own_urls)) = parsed.iter().find(|(name, _)| *name == flags.name) else {
        return Err(format!(
            "couldn't find local name {:?} in the initial cluster configuration ({initial})",
            flags.name
        ));
    };
    let mut expected: Vec<String> = own_urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    expected.sort();
    let mut have = advertised.clone();
    have.sort();
    if expected != have {
        let missing: Vec<&String> = expected.iter().filter(|u| !have.contains(u)).collect();
        return Err(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (missing: {:?}; expected: {:?})",
            flags.name,
            expected.join(","),
            advertised.join(","),
            missing,
            expected
        ));
    }
    let members: Vec<(u64, String, Vec<String>)> = parsed
        .into_iter()
        .map(|(name, urls)| {
            let urls: Vec<String> = urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect();
            (
                rivet_engine::identity::member_id(&urls, &flags.initial_cluster_token),
                name,
                urls,
            )
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|(id, _, _)| *id).collect();
    let member_id = rivet_engine::identity::member_id(&advertised, &flags.initial_cluster_token);
    Ok(Bootstrap {
        member_id,
        cluster_id: rivet_engine::identity::cluster_id(&ids),
        members,
    })
}
