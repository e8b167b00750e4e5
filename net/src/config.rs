//! rivet's flags: every flag of etcd 3.4 with etcd's name, `ETCD_*` variable, default,
//! value syntax and messages, plus rivet's own (`--shards`, `--pin-cores`).
//!
//! One table ([`flag_table!`] below) holds each flag once: its group in `--help`, the
//! field of [`Flags`] it fills, its parser ([`Kind`]), its default, the default as the help
//! shows it, its [`Status`] in rivet, and its help text. Adding a flag is adding a line.
//!
//! Parsing follows etcd 3.4 (`etcdmain/config.go`, Go's `flag` package, `pkg/flags`):
//! `-flag` and `--flag`, `--flag=value` and `--flag value`; a bool flag takes no separate
//! value (`--x false` leaves "false" as a positional argument, which is refused); the
//! first argument that is not a flag ends the flags. A flag not given on the command line
//! is read from its `ETCD_*` variable; a variable shadowed by a flag stops the start, an
//! unknown `ETCD_*` variable is warned about. With `--config-file` (or
//! `ETCD_CONFIG_FILE`) the YAML file is the whole configuration: flags and variables
//! are ignored (`config/file.rs`).

pub mod file;
pub mod goflag;
pub mod help;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use goflag::GoDuration;

/// The groups of `etcd --help`, in its order, then rivet's own; `Hidden` flags are
/// accepted but not listed (as etcd does for deprecated ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Member,
    Clustering,
    Security,
    Auth,
    Profiling,
    Logging,
    Proxy,
    Experimental,
    Unsafe,
    Deprecated,
    Rivet,
    Hidden,
}

/// How a flag's value is parsed: Go's types and etcd's `pkg/flags` value types.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Str,
    Bool,
    /// Go's `uint` (64 bits here): `strconv.ParseUint(s, 0, 64)`.
    Uint,
    /// etcd's `uint32Value`.
    Uint32,
    /// Go's `int` / `int64`.
    Int,
    /// Go's `time.Duration`.
    Duration,
    /// etcd's `UniqueURLs` (sorted, deduplicated); the exceptions are taken as they are.
    Urls(&'static [&'static str]),
    /// etcd's `UniqueStringsValue` (sorted, deduplicated).
    UniqueStrings,
    /// etcd's `StringsValue` (split on commas).
    Strings,
    /// etcd's `SelectiveStringValue`.
    Select(&'static [&'static str]),
    /// A flag etcd no longer supports: a bool that is ignored with a warning.
    Ignored,
}

/// What rivet does with a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Does what it does in etcd.
    Implemented,
    /// Parsed and stored; the part that uses it comes with the named work. A start with
    /// a value other than the default logs once that it is not implemented yet.
    Later(&'static str),
    /// Tunes a part rivet does not have; a start with a value other than the default
    /// logs once that it has no effect, and why.
    NoEffect(&'static str),
}

/// One flag of the table.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub group: Group,
    pub kind: Kind,
    /// The default, as a value the parser reads.
    pub default: &'static str,
    /// The default as `--help` shows it after the flag name (etcd's quoting).
    pub shown: &'static str,
    pub status: Status,
    pub help: &'static str,
}

impl Spec {
    /// The environment variable: `ETCD_` + the name in upper case with `_` for `-`
    /// (`RIVET_` for rivet's own flags).
    pub fn env(&self) -> String {
        let prefix = if self.group == Group::Rivet {
            "RIVET"
        } else {
            "ETCD"
        };
        flag_to_env(prefix, self.name)
    }
}

/// etcd's `flags.FlagToEnv`.
pub fn flag_to_env(prefix: &str, name: &str) -> String {
    format!("{prefix}_{}", name.replace('-', "_").to_uppercase())
}

/// A parsed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Uint(u64),
    Int(i64),
    Duration(GoDuration),
    List(Vec<String>),
}

impl Kind {
    /// Parses `text` as etcd's `flag.Value.Set` does; the error is the one Go reports
    /// (wrapped by the caller into "invalid value ... for flag -name: ...").
    pub fn parse(self, text: &str) -> Result<Value, String> {
        Ok(match self {
            Kind::Str => Value::Str(text.to_string()),
            Kind::Bool | Kind::Ignored => Value::Bool(goflag::parse_bool(text)?),
            Kind::Uint => Value::Uint(goflag::parse_uint(text, 64)?),
            // etcd's own `uint32Value` passes strconv's error on as it is.
            Kind::Uint32 => Value::Uint(goflag::parse_uint(text, 32).map_err(|e| {
                let reason = if e == goflag::PARSE_ERROR {
                    "invalid syntax"
                } else {
                    goflag::RANGE_ERROR
                };
                format!("strconv.ParseUint: parsing {text:?}: {reason}")
            })?),
            Kind::Int => Value::Int(goflag::parse_int(text, 64)?),
            Kind::Duration => Value::Duration(
                goflag::parse_duration(text).map_err(|_| goflag::PARSE_ERROR.to_string())?,
            ),
            Kind::Urls(exceptions) => {
                if text.is_empty() {
                    // etcd's URL flags allow "" (an empty list).
                    Value::List(Vec::new())
                } else if exceptions.contains(&text) {
                    Value::List(vec![text.to_string()])
                } else {
                    Value::List(goflag::parse_url_list(text)?)
                }
            }
            Kind::UniqueStrings => {
                let set: BTreeSet<String> = text.split(',').map(str::to_string).collect();
                Value::List(set.into_iter().collect())
            }
            Kind::Strings => Value::List(if text.is_empty() {
                Vec::new()
            } else {
                text.split(',').map(str::to_string).collect()
            }),
            Kind::Select(valid) => {
                if valid.contains(&text) {
                    Value::Str(text.to_string())
                } else {
                    return Err("invalid value".into());
                }
            }
        })
    }

    fn is_bool(self) -> bool {
        matches!(self, Kind::Bool | Kind::Ignored)
    }
}

/// Converts a parsed value into a field of [`Flags`].
pub trait FromValue: Sized {
    fn from_value(value: Value) -> Self;
}

impl FromValue for String {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Str(s) => s,
            Value::List(l) => l.join(","),
            other => format!("{other:?}"),
        }
    }
}
impl FromValue for bool {
    fn from_value(value: Value) -> Self {
        matches!(value, Value::Bool(true))
    }
}
impl FromValue for u64 {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Uint(v) => v,
            Value::Int(v) => u64::try_from(v).unwrap_or(0),
            _ => 0,
        }
    }
}
impl FromValue for u32 {
    fn from_value(value: Value) -> Self {
        u32::try_from(u64::from_value(value)).unwrap_or(u32::MAX)
    }
}
impl FromValue for usize {
    fn from_value(value: Value) -> Self {
        usize::try_from(u64::from_value(value)).unwrap_or(usize::MAX)
    }
}
impl FromValue for i64 {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Int(v) => v,
            Value::Uint(v) => i64::try_from(v).unwrap_or(i64::MAX),
            _ => 0,
        }
    }
}
impl FromValue for Duration {
    fn from_value(value: Value) -> Self {
        match value {
            Value::Duration(nanos) => goflag::to_std(nanos),
            _ => Duration::ZERO,
        }
    }
}
impl FromValue for Vec<String> {
    fn from_value(value: Value) -> Self {
        match value {
            Value::List(l) => l,
            Value::Str(s) if s.is_empty() => Vec::new(),
            Value::Str(s) => vec![s],
            _ => Vec::new(),
        }
    }
}

/// A field's value as logs show it.
pub trait ValueText {
    fn text(&self) -> String;
}
impl ValueText for String {
    fn text(&self) -> String {
        self.clone()
    }
}
impl ValueText for Vec<String> {
    fn text(&self) -> String {
        self.join(",")
    }
}
impl ValueText for Duration {
    fn text(&self) -> String {
        goflag::format_duration(i64::try_from(self.as_nanos()).unwrap_or(i64::MAX))
    }
}
macro_rules! value_text_display {
    ($($t:ty),*) => { $( impl ValueText for $t { fn text(&self) -> String { self.to_string() } } )* };
}
value_text_display!(bool, u64, u32, usize, i64);

/// The TLS settings of `client-transport-security` / `peer-transport-security` in a
/// config file (etcd's `securityConfig`). Parsed here; TLS itself comes from the TLS
/// work, which maps them onto its flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportSecurity {
    pub cert_file: String,
    pub key_file: String,
    pub client_cert_auth: bool,
    pub trusted_ca_file: String,
    pub auto_tls: bool,
}

const NO_SNAP_FILES: Status = Status::NoEffect(
    "rivet writes no snapshot files to retain: a checkpoint lives in the shards' page \
     files, and garbage collection deletes the segments no recorded checkpoint needs",
);
const WAL_RELEASED_AT_CHECKPOINT: Status = Status::NoEffect(
    "rivet deletes a WAL segment as soon as a recorded checkpoint covers its entries \
     (keeping a few thousand for slow followers), so it never keeps more than a restart needs",
);
const NO_V2: Status = Status::NoEffect(
    "rivet serves only the v3 API: there is no v2 API, v2 store or v2 proxy to tune",
);
const NO_BOLT: Status = Status::NoEffect(
    "rivet has no bbolt backend: shards write their page files and the WAL is the \
     commit point, so there is no backend transaction to batch or freelist to choose",
);
const ALWAYS_CHECKPOINT: Status = Status::NoEffect(
    "rivet always checkpoints remaining lease TTLs into the log (every 5 minutes), as \
     etcd does with this flag on",
);
const ALWAYS_FSYNC: Status =
    Status::NoEffect("rivet always fdatasyncs its WAL before acknowledging a write");
const NO_COMPACTION_BATCHES: Status = Status::NoEffect(
    "rivet compacts each shard's in-memory index at once, without bbolt delete batches",
);

const NO_PING_POLICY: Status = Status::NoEffect(
    "rivet's HTTP/2 server answers a client's pings without counting them against a \
     minimum interval, so it never sends grpc-go's too_many_pings GOAWAY",
);

/// `--shards`' default: every CPU but the raft core's, at least 1.
pub const SHARDS_SHOWN: &str = "cores - 1";

macro_rules! flag_table {
    ($( $group:ident $name:literal $field:ident : $ty:ty = $kind:expr, $default:literal, $shown:literal, $status:expr, $help:literal; )*) => {
        /// Every flag's value, after the command line, the `ETCD_*` variables or the
        /// config file.
        #[derive(Debug, Clone)]
        pub struct Flags {
            $( pub $field: $ty, )*
            /// `client-transport-security` of a config file.
            pub client_transport_security: TransportSecurity,
            /// `peer-transport-security` of a config file.
            pub peer_transport_security: TransportSecurity,
            /// The flags given a value (on the command line, by variable or in the file).
            pub explicitly_set: BTreeSet<&'static str>,
            /// Whether the configuration came from `--config-file`.
            pub from_config_file: bool,
        }

        /// The table: every flag rivet accepts, in `--help` order within its group.
        pub static SPECS: &[Spec] = &[
            $( Spec { name: $name, group: Group::$group, kind: $kind, default: $default, shown: $shown, status: $status, help: $help }, )*
        ];

        impl Flags {
            fn assign(&mut self, name: &str, value: Value) {
                match name {
                    $( $name => self.$field = <$ty as FromValue>::from_value(value), )*
                    _ => {}
                }
            }

            /// A flag's value as text (for logs), by name.
            pub fn value_text(&self, name: &str) -> Option<String> {
                match name {
                    $( $name => Some(ValueText::text(&self.$field)), )*
                    _ => None,
                }
            }

            fn empty() -> Flags {
                Flags {
                    $( $field: Default::default(), )*
                    client_transport_security: TransportSecurity::default(),
                    peer_transport_security: TransportSecurity::default(),
                    explicitly_set: BTreeSet::new(),
                    from_config_file: false,
                }
            }
        }
    };
}

const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

flag_table! {
    Member "name" name: String = Kind::Str, "default", "'default'", Status::Implemented,
        "Human-readable name for this member.";
    Member "data-dir" data_dir: String = Kind::Str, "", "'${name}.rivet'", Status::Implemented,
        "Path to the data directory.";
    Member "wal-dir" wal_dir: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the dedicated wal directory.";
    Member "snapshot-count" snapshot_count: u64 = Kind::Uint, "100000", "'100000'", Status::Implemented,
        "Number of committed transactions to trigger a snapshot to disk.";
    Member "heartbeat-interval" heartbeat_interval: u64 = Kind::Uint, "100", "'100'", Status::Implemented,
        "Time (in milliseconds) of a heartbeat interval.";
    Member "election-timeout" election_timeout: u64 = Kind::Uint, "1000", "'1000'", Status::Implemented,
        "Time (in milliseconds) for an election to timeout. See tuning documentation for details.";
    Member "initial-election-tick-advance" initial_election_tick_advance: bool = Kind::Bool, "true", "'true'", Status::Implemented,
        "Whether to fast-forward initial election ticks on boot for faster election.";
    Member "listen-peer-urls" listen_peer_urls: Vec<String> = Kind::Urls(&[""]), "http://localhost:2380", "'http://localhost:2380'", Status::Implemented,
        "List of URLs to listen on for peer traffic.";
    Member "listen-client-urls" listen_client_urls: Vec<String> = Kind::Urls(&[""]), "http://localhost:2379", "'http://localhost:2379'", Status::Implemented,
        "List of URLs to listen on for client traffic.";
    Member "max-snapshots" max_snapshots: u64 = Kind::Uint, "5", "'5'", NO_SNAP_FILES,
        "Maximum number of snapshot files to retain (0 is unlimited).";
    Member "max-wals" max_wals: u64 = Kind::Uint, "5", "'5'", WAL_RELEASED_AT_CHECKPOINT,
        "Maximum number of wal files to retain (0 is unlimited).";
    Member "quota-backend-bytes" quota_backend_bytes: i64 = Kind::Int, "0", "'0'", Status::Implemented,
        "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).";
    Member "backend-batch-interval" backend_batch_interval: Duration = Kind::Duration, "0", "''", NO_BOLT,
        "BackendBatchInterval is the maximum time before commit the backend transaction.";
    Member "backend-batch-limit" backend_batch_limit: i64 = Kind::Int, "0", "'0'", NO_BOLT,
        "BackendBatchLimit is the maximum operations before commit the backend transaction.";
    Member "max-txn-ops" max_txn_ops: usize = Kind::Uint, "128", "'128'", Status::Implemented,
        "Maximum number of operations permitted in a transaction.";
    Member "max-request-bytes" max_request_bytes: usize = Kind::Uint, "1572864", "'1572864'", Status::Implemented,
        "Maximum client request size in bytes the server will accept.";
    Member "max-concurrent-streams" max_concurrent_streams: u32 = Kind::Uint32, "4294967295", "'math.MaxUint32'", Status::Implemented,
        "Maximum concurrent streams that each client can open at a time.";
    Member "grpc-keepalive-min-time" grpc_keepalive_min_time: Duration = Kind::Duration, "5s", "'5s'", NO_PING_POLICY,
        "Minimum duration interval that a client should wait before pinging server.";
    Member "grpc-keepalive-interval" grpc_keepalive_interval: Duration = Kind::Duration, "2h", "'2h'", Status::Implemented,
        "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable).";
    Member "grpc-keepalive-timeout" grpc_keepalive_timeout: Duration = Kind::Duration, "20s", "'20s'", Status::Implemented,
        "Additional duration of wait before closing a non-responsive connection (0 to disable).";

    Clustering "initial-advertise-peer-urls" initial_advertise_peer_urls: Vec<String> = Kind::Urls(&[""]), "http://localhost:2380", "'http://localhost:2380'", Status::Implemented,
        "List of this member's peer URLs to advertise to the rest of the cluster.";
    Clustering "initial-cluster" initial_cluster: String = Kind::Str, "default=http://localhost:2380", "'default=http://localhost:2380'", Status::Implemented,
        "Initial cluster configuration for bootstrapping.";
    Clustering "initial-cluster-state" initial_cluster_state: String = Kind::Select(&["new", "existing"]), "new", "'new'", Status::Implemented,
        "Initial cluster state ('new' or 'existing').";
    Clustering "initial-cluster-token" initial_cluster_token: String = Kind::Str, "etcd-cluster", "'etcd-cluster'", Status::Implemented,
        "Initial cluster token for the etcd cluster during bootstrap.\nSpecifying this can protect you from unintended cross-cluster interaction when running multiple clusters.";
    Clustering "advertise-client-urls" advertise_client_urls: Vec<String> = Kind::Urls(&[""]), "http://localhost:2379", "'http://localhost:2379'", Status::Implemented,
        "List of this member's client URLs to advertise to the public.\nThe client URLs advertised should be accessible to machines that talk to etcd cluster. etcd client libraries parse these URLs to connect to the cluster.";
    Clustering "discovery" discovery: String = Kind::Str, "", "''", Status::Implemented,
        "Discovery URL used to bootstrap the cluster.";
    Clustering "discovery-fallback" discovery_fallback: String = Kind::Select(&["proxy", "exit"]), "proxy", "'proxy'", Status::Implemented,
        "Expected behavior ('exit' or 'proxy') when discovery services fails.\n\"proxy\" supports v2 API only.";
    Clustering "discovery-proxy" discovery_proxy: String = Kind::Str, "", "''", Status::Implemented,
        "HTTP proxy to use for traffic to discovery service.";
    Clustering "discovery-srv" discovery_srv: String = Kind::Str, "", "''", Status::Implemented,
        "DNS srv domain used to bootstrap the cluster.";
    Clustering "discovery-srv-name" discovery_srv_name: String = Kind::Str, "", "''", Status::Implemented,
        "Suffix to the dns srv name queried when bootstrapping.";
    Clustering "strict-reconfig-check" strict_reconfig_check: bool = Kind::Bool, "true", "'true'", Status::Implemented,
        "Reject reconfiguration requests that would cause quorum loss.";
    Clustering "pre-vote" pre_vote: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Enable to run an additional Raft election phase.";
    Clustering "auto-compaction-retention" auto_compaction_retention: String = Kind::Str, "0", "'0'", Status::Implemented,
        "Auto compaction retention length. 0 means disable auto compaction.";
    Clustering "auto-compaction-mode" auto_compaction_mode: String = Kind::Str, "periodic", "'periodic'", Status::Implemented,
        "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention.";
    Clustering "enable-v2" enable_v2: bool = Kind::Bool, "false", "'false'", NO_V2,
        "Accept etcd V2 client requests.";

    Security "cert-file" cert_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the client server TLS cert file.";
    Security "key-file" key_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the client server TLS key file.";
    Security "client-cert-auth" client_cert_auth: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Enable client cert authentication.";
    Security "client-crl-file" client_crl_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the client certificate revocation list file.";
    Security "client-cert-allowed-hostname" client_cert_allowed_hostname: String = Kind::Str, "", "''", Status::Implemented,
        "Allowed TLS hostname for client cert authentication.";
    Security "trusted-ca-file" trusted_ca_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the client server TLS trusted CA cert file.";
    Security "auto-tls" auto_tls: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Client TLS using generated certificates.";
    Security "peer-cert-file" peer_cert_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the peer server TLS cert file.";
    Security "peer-key-file" peer_key_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the peer server TLS key file.";
    Security "peer-client-cert-auth" peer_client_cert_auth: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Enable peer client cert authentication.";
    Security "peer-trusted-ca-file" peer_trusted_ca_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the peer server TLS trusted CA file.";
    Security "peer-cert-allowed-cn" peer_cert_allowed_cn: String = Kind::Str, "", "''", Status::Implemented,
        "Required CN for client certs connecting to the peer endpoint.";
    Security "peer-cert-allowed-hostname" peer_cert_allowed_hostname: String = Kind::Str, "", "''", Status::Implemented,
        "Allowed TLS hostname for inter peer authentication.";
    Security "peer-auto-tls" peer_auto_tls: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided.";
    Security "peer-crl-file" peer_crl_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the peer certificate revocation list file.";
    Security "cipher-suites" cipher_suites: Vec<String> = Kind::Strings, "", "''", Status::Implemented,
        "Comma-separated list of supported TLS cipher suites between client/server and peers (empty will be auto-populated by Go).";
    Security "cors" cors: Vec<String> = Kind::Urls(&["*"]), "*", "'*'", Status::Implemented,
        "Comma-separated whitelist of origins for CORS, or cross-origin resource sharing, (empty or * means allow all).";
    Security "host-whitelist" host_whitelist: Vec<String> = Kind::UniqueStrings, "*", "'*'", Status::Implemented,
        "Acceptable hostnames from HTTP client requests, if server is not secure (empty or * means allow all).";

    Auth "auth-token" auth_token: String = Kind::Str, "simple", "'simple'", Status::Implemented,
        "Specify a v3 authentication token type and its options ('simple' or 'jwt').";
    Auth "bcrypt-cost" bcrypt_cost: u64 = Kind::Uint, "10", "10", Status::Implemented,
        "Specify the cost / strength of the bcrypt algorithm for hashing auth passwords. Valid values are between 4 and 31.";
    Auth "auth-token-ttl" auth_token_ttl: u64 = Kind::Uint, "300", "300", Status::Implemented,
        "Time (in seconds) of the auth-token-ttl.";

    Profiling "enable-pprof" enable_pprof: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Enable runtime profiling data via HTTP server. Address is at client URL + \"/debug/pprof/\"";
    Profiling "metrics" metrics: String = Kind::Str, "basic", "'basic'", Status::Implemented,
        "Set level of detail for exported metrics, specify 'extensive' to include histogram metrics.";
    Profiling "listen-metrics-urls" listen_metrics_urls: Vec<String> = Kind::Urls(&[""]), "", "''", Status::Implemented,
        "List of URLs to listen on for the metrics and health endpoints.";

    Logging "logger" logger: String = Kind::Str, "capnslog", "'capnslog'", Status::Implemented,
        "Specify 'zap' for structured logging or 'capnslog'. [WARN] 'capnslog' will be deprecated in v3.5.";
    Logging "log-outputs" log_outputs: Vec<String> = Kind::UniqueStrings, "default", "'default'", Status::Implemented,
        "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, or list of comma separated output targets.";
    Logging "log-level" log_level: String = Kind::Str, "info", "'info'", Status::Implemented,
        "Configures log level. Only supports debug, info, warn, error, panic, or fatal.";

    Proxy "proxy" proxy: String = Kind::Select(&["off", "readonly", "on"]), "off", "'off'", NO_V2,
        "Proxy mode setting ('off', 'readonly' or 'on').";
    Proxy "proxy-failure-wait" proxy_failure_wait: u64 = Kind::Uint, "5000", "5000", NO_V2,
        "Time (in milliseconds) an endpoint will be held in a failed state.";
    Proxy "proxy-refresh-interval" proxy_refresh_interval: u64 = Kind::Uint, "30000", "30000", NO_V2,
        "Time (in milliseconds) of the endpoints refresh interval.";
    Proxy "proxy-dial-timeout" proxy_dial_timeout: u64 = Kind::Uint, "1000", "1000", NO_V2,
        "Time (in milliseconds) for a dial to timeout.";
    Proxy "proxy-write-timeout" proxy_write_timeout: u64 = Kind::Uint, "5000", "5000", NO_V2,
        "Time (in milliseconds) for a write to timeout.";
    Proxy "proxy-read-timeout" proxy_read_timeout: u64 = Kind::Uint, "0", "0", NO_V2,
        "Time (in milliseconds) for a read to timeout.";

    Experimental "experimental-initial-corrupt-check" experimental_initial_corrupt_check: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Enable to check data corruption before serving any client/peer traffic.";
    Experimental "experimental-corrupt-check-time" experimental_corrupt_check_time: Duration = Kind::Duration, "0s", "'0s'", Status::Implemented,
        "Duration of time between cluster corruption check passes.";
    Experimental "experimental-enable-v2v3" experimental_enable_v2v3: String = Kind::Str, "", "''", NO_V2,
        "Serve v2 requests through the v3 backend under a given prefix.";
    Experimental "experimental-backend-bbolt-freelist-type" experimental_backend_bbolt_freelist_type: String = Kind::Str, "array", "'array'", NO_BOLT,
        "ExperimentalBackendFreelistType specifies the type of freelist that boltdb backend uses(array and map are supported types).";
    Experimental "experimental-enable-lease-checkpoint" experimental_enable_lease_checkpoint: bool = Kind::Bool, "false", "'false'", ALWAYS_CHECKPOINT,
        "ExperimentalEnableLeaseCheckpoint enables primary lessor to persist lease remainingTTL to prevent indefinite auto-renewal of long lived leases.";
    Experimental "experimental-compaction-batch-limit" experimental_compaction_batch_limit: i64 = Kind::Int, "1000", "1000", NO_COMPACTION_BATCHES,
        "ExperimentalCompactionBatchLimit sets the maximum revisions deleted in each compaction batch.";
    Experimental "experimental-peer-skip-client-san-verification" experimental_peer_skip_client_san_verification: bool = Kind::Bool, "false", "'false'", Status::Later("skipping the peer SAN check (peer TLS always checks it)"),
        "Skip verification of SAN field in client certificate for peer connections.";
    Experimental "experimental-watch-progress-notify-interval" experimental_watch_progress_notify_interval: Duration = Kind::Duration, "10m", "'10m'", Status::Implemented,
        "Duration of periodical watch progress notification.";
    Experimental "experimental-warning-apply-duration" experimental_warning_apply_duration: Duration = Kind::Duration, "100ms", "'100ms'", Status::Implemented,
        "Warning is generated if requests take more than this duration.";

    Unsafe "force-new-cluster" force_new_cluster: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Force to create a new one-member cluster.";

    Deprecated "debug" debug: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Enable debug-level logging for etcd. [WARN] Will be deprecated in v3.5. Use '--log-level=debug' instead.";
    Deprecated "log-package-levels" log_package_levels: String = Kind::Str, "", "''", Status::Implemented,
        "Specify a particular log level for each etcd package (eg: 'etcdmain=CRITICAL,etcdserver=DEBUG').";

    Rivet "shards" shards: usize = Kind::Uint, "0", "'cores - 1'", Status::Implemented,
        "Shard cores (each owns a partition of the keys); 0 means cores - 1, at least 1.\nA data dir keeps the count it was created with.";
    Rivet "pin-cores" pin_cores: bool = Kind::Bool, "true", "'true'", Status::Implemented,
        "Pin the raft core and each shard core to its own CPU. Turn off when several members\nshare one machine's CPUs (a local test cluster): pinned, their threads would queue on the same CPUs.";

    Hidden "config-file" config_file: String = Kind::Str, "", "''", Status::Implemented,
        "Path to the server configuration file. Note that if a configuration file is provided, other command line flags and environment variables will be ignored.";
    Hidden "self-signed-cert-validity" self_signed_cert_validity: u32 = Kind::Uint32, "1", "1", Status::Implemented,
        "The validity period of the client and peer certificates that are automatically generated when --auto-tls or --peer-auto-tls is given, in years (an etcd 3.5 flag; etcd 3.4's --help does not list it).";
    Hidden "version" version: bool = Kind::Bool, "false", "'false'", Status::Implemented,
        "Print the version and exit.";
    Hidden "log-output" log_output: Vec<String> = Kind::UniqueStrings, "default", "'default'", Status::Implemented,
        "[TO BE DEPRECATED IN v3.5] use '--log-outputs'.";
    Hidden "enable-grpc-gateway" enable_grpc_gateway: bool = Kind::Bool, "true", "'true'", Status::Implemented,
        "Enable GRPC gateway.";
    Hidden "experimental-enable-lease-checkpoint-persist" experimental_enable_lease_checkpoint_persist: bool = Kind::Bool, "false", "'false'", ALWAYS_CHECKPOINT,
        "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases.";
    Hidden "unsafe-no-fsync" unsafe_no_fsync: bool = Kind::Bool, "false", "'false'", ALWAYS_FSYNC,
        "Disables fsync, unsafe, will cause data loss.";
}

/// Flags etcd 3.4 no longer supports but still accepts (as bools), with a warning.
pub const IGNORED: &[&str] = &[
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
    "test.coverprofile",
    "test.outputdir",
];

/// The spec of a flag by name (ignored legacy flags have none).
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

fn kind_of(name: &str) -> Option<Kind> {
    spec(name)
        .map(|s| s.kind)
        .or_else(|| IGNORED.contains(&name).then_some(Kind::Ignored))
}

/// A line for the log that the flag parser writes before logging is set up: etcd's
/// `pkg/flags` logs through capnslog whatever `--logger` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyLine {
    /// capnslog's level letter (I, W, E, C).
    pub level: char,
    pub package: &'static str,
    pub message: String,
}

/// How a start ends before the server runs.
#[derive(Debug)]
pub enum Stop {
    /// `-h`/`--help`: the usage to stderr and the flags to stdout, exit 0.
    Help,
    /// `--version`.
    Version,
    /// Go's flag package failed (unknown flag, bad value, missing argument): the
    /// message and the usage to stderr, exit 2.
    Usage(String),
    /// etcd's "error verifying flags, ...": exit 1.
    Invalid(String),
    /// A fatal message from `pkg/flags` (a variable shadowed by a flag): exit 1.
    Fatal(String),
    /// A message printed as it is to stderr, exit 1 (etcd's "unexpected error setting
    /// up ..." for a bad URL in a config file).
    Raw(String),
}

/// The result of reading the command line, the environment and the config file.
pub struct Loaded {
    pub flags: Flags,
    /// Lines to log (capnslog form) before anything else.
    pub early: Vec<EarlyLine>,
}

impl Flags {
    /// Every flag at its default.
    pub fn defaults() -> Flags {
        let mut flags = Flags::empty();
        for spec in SPECS {
            match spec.kind.parse(spec.default) {
                Ok(value) => flags.assign(spec.name, value),
                Err(e) => panic!("the default of --{} does not parse: {e}", spec.name),
            }
        }
        flags
    }

    /// Parses a command line (without the program name) and the environment, as etcd
    /// 3.4 does; the environment is only read when no config file is given.
    pub fn load(
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Loaded, (Stop, Vec<EarlyLine>)> {
        let mut early = Vec::new();
        let mut flags = Flags::defaults();
        let command_line = match parse_command_line(args, &mut early) {
            Ok(parsed) => parsed,
            Err(stop) => return Err((stop, early)),
        };
        for (name, value) in &command_line.values {
            flags.assign(name, value.clone());
            flags.explicitly_set.insert(name);
        }
        if let Some(first) = command_line.positional.first() {
            return Err((
                Stop::Invalid(format!("'{first}' is not a valid flag")),
                early,
            ));
        }
        if flags.version {
            return Err((Stop::Version, early));
        }
        let env_value = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        if flags.config_file.is_empty() {
            flags.config_file = env_value("ETCD_CONFIG_FILE");
        }
        if !flags.config_file.is_empty() {
            let path = flags.config_file.clone();
            let mut from_file = match file::load(&path) {
                Ok(from_file) => from_file,
                Err(file::FileError::Raw(e)) => return Err((Stop::Raw(e), early)),
                Err(file::FileError::Invalid(e)) => {
                    early.push(config_file_line(&path));
                    return Err((Stop::Invalid(e), early));
                }
            };
            from_file.config_file = path;
            from_file.from_config_file = true;
            return Ok(Loaded {
                flags: from_file,
                early,
            });
        }
        if let Err(stop) = apply_environment(&mut flags, &command_line, env, &mut early) {
            return Err((stop, early));
        }
        flags.after_command_line();
        Ok(Loaded { flags, early })
    }

    /// etcdmain's `configFromCmdLine` after the variables: the default advertised client
    /// URL is dropped when only the listen URLs were set, and the default initial
    /// cluster when discovery is used.
    fn after_command_line(&mut self) {
        let missing_advertise = self.explicitly_set.contains("listen-client-urls")
            && !self.explicitly_set.contains("advertise-client-urls");
        if missing_advertise && !self.may_be_proxy() {
            self.advertise_client_urls.clear();
        }
        let discovery = !self.discovery.is_empty()
            || !self.discovery_srv.is_empty()
            || !self.discovery_srv_name.is_empty();
        if discovery && !self.explicitly_set.contains("initial-cluster") {
            self.initial_cluster.clear();
        }
    }

    fn may_be_proxy(&self) -> bool {
        self.proxy != "off" || (!self.discovery.is_empty() && self.discovery_fallback == "proxy")
    }

    /// etcd's `embed.Config.Validate` (without its logging part, which
    /// `crate::logging` checks) and the defaults etcd fills in after it.
    pub fn validate(&mut self) -> Result<(), String> {
        for (urls, _) in [
            (&self.listen_peer_urls, "listen-peer-urls"),
            (&self.listen_client_urls, "listen-client-urls"),
            (&self.listen_metrics_urls, "listen-metrics-urls"),
        ] {
            check_bind_urls(urls)?;
        }
        if let Err(e) = check_host_urls(&self.initial_advertise_peer_urls) {
            return Err(format!(
                "--initial-advertise-peer-urls {:?} must be \"host:port\" ({e})",
                self.initial_advertise_peer_urls.join(",")
            ));
        }
        if let Err(e) = check_host_urls(&self.advertise_client_urls) {
            return Err(format!(
                "--advertise-client-urls {:?} must be \"host:port\" ({e})",
                self.advertise_client_urls.join(",")
            ));
        }
        let bootstraps = [
            !self.discovery.is_empty(),
            !self.initial_cluster.is_empty(),
            !self.discovery_srv.is_empty(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if self.initial_cluster_state != "new" && self.initial_cluster_state != "existing" {
            return Err(format!(
                "unexpected clusterState {:?}",
                self.initial_cluster_state
            ));
        }
        if bootstraps > 1 {
            return Err("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"".into());
        }
        if self.heartbeat_interval == 0 {
            return Err(format!(
                "--heartbeat-interval must be >0 (set to {}ms)",
                self.heartbeat_interval
            ));
        }
        if self.election_timeout == 0 {
            return Err(format!(
                "--election-timeout must be >0 (set to {}ms)",
                self.election_timeout
            ));
        }
        if 5 * self.heartbeat_interval > self.election_timeout {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        if self.election_timeout > 50_000 {
            return Err(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
                self.election_timeout
            ));
        }
        if !self.listen_client_urls.is_empty() && self.advertise_client_urls.is_empty() {
            return Err(UNSET_ADVERTISE_CLIENT_URLS.into());
        }
        match self.auto_compaction_mode.as_str() {
            "" | "periodic" | "revision" => {}
            other => return Err(format!("unknown auto-compaction-mode {other:?}")),
        }
        if self.experimental_enable_lease_checkpoint_persist
            && !self.experimental_enable_lease_checkpoint
        {
            return Err("setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".into());
        }
        Ok(())
    }

    /// etcd's `UpdateDefaultClusterFromName` (the name part): a member started with only
    /// `--name` bootstraps as `name=<advertised peer URLs>`.
    pub fn update_default_cluster_from_name(&mut self) {
        let default_cluster = spec("initial-cluster").map_or("", |s| s.default);
        if self.name != "default" && self.initial_cluster == default_cluster {
            let name = if self.name.is_empty() {
                "default"
            } else {
                &self.name
            };
            self.initial_cluster = self
                .initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{name}={u}"))
                .collect::<Vec<_>>()
                .join(",");
        }
    }

    /// The flags given a value other than their default whose status is not
    /// `Implemented`, for the one log line each at start.
    pub fn not_implemented(&self) -> Vec<(&'static Spec, String)> {
        let defaults = Flags::defaults();
        SPECS
            .iter()
            .filter(|spec| spec.status != Status::Implemented)
            .filter_map(|spec| {
                let value = self.value_text(spec.name)?;
                (Some(&value) != defaults.value_text(spec.name).as_ref()).then_some((spec, value))
            })
            .collect()
    }

    /// The data dir (`--data-dir`, else `${name}.rivet`).
    pub fn data_dir_or_default(&self) -> String {
        if self.data_dir.is_empty() {
            format!("{}.rivet", self.name)
        } else {
            self.data_dir.clone()
        }
    }

    /// `--shards` as the WAL check wants it: `None` when not given.
    pub fn shards_given(&self) -> Option<usize> {
        (self.shards > 0).then_some(self.shards)
    }
}

/// etcdmain's capnslog line for a config file.
pub fn config_file_line(path: &str) -> EarlyLine {
    EarlyLine {
        level: 'I',
        package: "etcdmain",
        message: format!("Loading server configuration from {path:?}. Other configuration command line flags and environment variables will be ignored if provided."),
    }
}

/// etcd's `ErrUnsetAdvertiseClientURLsFlag`.
pub const UNSET_ADVERTISE_CLIENT_URLS: &str =
    "--advertise-client-urls is required when --listen-client-urls is set explicitly";

/// etcd's `checkBindURLs`: a listen URL names an IP address (or localhost).
fn check_bind_urls(urls: &[String]) -> Result<(), String> {
    for url in urls {
        if url.starts_with("unix://") || url.starts_with("unixs://") {
            continue;
        }
        let host_port = url.split_once("://").map_or(url.as_str(), |(_, hp)| hp);
        let host = goflag::host_of(host_port)
            .ok_or_else(|| format!("address {host_port}: missing port in address"))?;
        if host == "localhost" {
            continue;
        }
        if host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("expected IP in URL for binding ({url})"));
        }
    }
    Ok(())
}

/// etcd's `checkHostURLs`: an advertised URL has a host.
fn check_host_urls(urls: &[String]) -> Result<(), String> {
    for url in urls {
        let host_port = url.split_once("://").map_or(url.as_str(), |(_, hp)| hp);
        let host = goflag::host_of(host_port)
            .ok_or_else(|| format!("address {host_port}: missing port in address"))?;
        if host.is_empty() {
            return Err(format!("unexpected empty host ({url})"));
        }
    }
    Ok(())
}

struct CommandLine {
    values: BTreeMap<&'static str, Value>,
    positional: Vec<String>,
}

fn static_name(name: &str) -> Option<&'static str> {
    SPECS
        .iter()
        .map(|s| s.name)
        .chain(IGNORED.iter().copied())
        .find(|n| *n == name)
}

fn ignored_warning(name: &str) -> EarlyLine {
    EarlyLine {
        level: 'W',
        package: "pkg/flags",
        message: format!("flag \"-{name}\" is no longer supported - ignoring."),
    }
}

/// Go's `FlagSet.Parse` with etcd's flag set.
fn parse_command_line(args: &[String], early: &mut Vec<EarlyLine>) -> Result<CommandLine, Stop> {
    let mut values = BTreeMap::new();
    let mut rest = args;
    while let Some(arg) = rest.first() {
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            break;
        }
        let mut minuses = 1;
        if bytes[1] == b'-' {
            minuses = 2;
            if bytes.len() == 2 {
                rest = &rest[1..];
                break;
            }
        }
        let mut name = &arg[minuses..];
        if name.is_empty() || name.starts_with('-') || name.starts_with('=') {
            return Err(Stop::Usage(format!("bad flag syntax: {arg}")));
        }
        rest = &rest[1..];
        let mut value = None;
        // Go: an '=' after the first character splits name and value.
        let first = name.chars().next().map_or(0, char::len_utf8);
        if let Some(i) = name[first..].find('=') {
            value = Some(&name[first + i + 1..]);
            name = &name[..first + i];
        }
        let Some(kind) = kind_of(name) else {
            if name == "help" || name == "h" {
                return Err(Stop::Help);
            }
            return Err(Stop::Usage(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let key = static_name(name).unwrap_or("");
        if kind.is_bool() {
            let text = value.unwrap_or("true");
            let parsed = kind.parse(text).map_err(|e| {
                Stop::Usage(if value.is_some() {
                    format!("invalid boolean value {text:?} for -{name}: {e}")
                } else {
                    format!("invalid boolean flag {name}: {e}")
                })
            })?;
            if matches!(kind, Kind::Ignored) {
                early.push(ignored_warning(name));
            }
            values.insert(key, parsed);
        } else {
            let text = match value {
                Some(v) => v.to_string(),
                None => match rest.first() {
                    Some(next) => {
                        let next = next.clone();
                        rest = &rest[1..];
                        next
                    }
                    None => return Err(Stop::Usage(format!("flag needs an argument: -{name}"))),
                },
            };
            let parsed = kind.parse(&text).map_err(|e| {
                Stop::Usage(format!("invalid value {text:?} for flag -{name}: {e}"))
            })?;
            values.insert(key, parsed);
        }
    }
    Ok(CommandLine {
        values,
        positional: rest.to_vec(),
    })
}

/// etcd's `flags.SetFlagsFromEnv("ETCD", ...)`: every flag not set on the command line
/// takes its variable's value when that is not empty (flags in name order, as Go's
/// `VisitAll`); then every variable is checked: one shadowed by a flag is fatal, an
/// unknown `ETCD_*` one is warned about.
fn apply_environment(
    flags: &mut Flags,
    command_line: &CommandLine,
    env: &[(String, String)],
    early: &mut Vec<EarlyLine>,
) -> Result<(), Stop> {
    let env_name = |name: &str| match spec(name) {
        Some(spec) => spec.env(),
        None => flag_to_env("ETCD", name),
    };
    let already_set: BTreeSet<String> = command_line.values.keys().map(|n| env_name(n)).collect();
    let mut names: Vec<&'static str> = SPECS
        .iter()
        .map(|s| s.name)
        .chain(IGNORED.iter().copied())
        .collect();
    names.sort_unstable();
    let mut used = BTreeSet::new();
    let mut error = None;
    for name in names {
        let key = env_name(name);
        if already_set.contains(&key) {
            continue;
        }
        let Some(value) = env.iter().find(|(k, _)| *k == key).map(|(_, v)| v) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        used.insert(key.clone());
        let Some(kind) = kind_of(name) else { continue };
        match kind.parse(value) {
            Ok(parsed) => {
                if matches!(kind, Kind::Ignored) {
                    early.push(ignored_warning(name));
                } else {
                    flags.assign(name, parsed);
                    flags.explicitly_set.insert(name);
                }
                early.push(EarlyLine {
                    level: 'I',
                    package: "pkg/flags",
                    message: format!("recognized and used environment variable {key}={value}"),
                });
            }
            Err(e) => error = Some(format!("invalid value {value:?} for {key}: {e}")),
        }
    }
    for (key, value) in env {
        if used.contains(key) {
            continue;
        }
        if already_set.contains(key) {
            return Err(Stop::Fatal(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
            )));
        }
        if key.starts_with("ETCD_") {
            early.push(EarlyLine {
                level: 'W',
                package: "pkg/flags",
                message: format!("unrecognized environment variable {key}={value}"),
            });
        }
    }
    match error {
        Some(e) => Err(Stop::Invalid(e)),
        None => Ok(()),
    }
}

/// Whether `level` is one of etcd's `--log-level` values.
pub fn valid_log_level(level: &str) -> bool {
    LOG_LEVELS.contains(&level)
}

#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("URL scheme must be http or https: {0}")]
    Scheme(String),
    #[error("invalid URL {0}: {1}")]
    Invalid(String, String),
}

/// One URL to listen on: its socket address and whether it is `https`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenUrl {
    pub url: String,
    pub address: SocketAddr,
    pub secure: bool,
}

/// Resolves `http://host:port` and `https://host:port` URLs to socket addresses (IPv4
/// first, like etcd's `localhost`).
pub fn listen_addresses(urls: &[String]) -> Result<Vec<ListenUrl>, UrlError> {
    let mut addresses: Vec<ListenUrl> = Vec::new();
    for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
        let (rest, secure) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
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
        if !addresses.iter().any(|listen| listen.address == first) {
            addresses.push(ListenUrl {
                url: url.trim_end_matches('/').to_string(),
                address: first,
                secure,
            });
        }
    }
    Ok(addresses)
}

/// Normalizes a URL list (no trailing slash).
pub fn url_list(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| u.trim())
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
    let initial = if flags.initial_cluster.is_empty() {
        advertised
            .iter()
            .map(|u| format!("{}={u}", flags.name))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        flags.initial_cluster.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn load(list: &[&str], env: &[(&str, &str)]) -> Result<Loaded, (Stop, Vec<EarlyLine>)> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Flags::load(&args(list), &env)
    }

    #[test]
    fn every_default_parses_and_names_are_unique() {
        let flags = Flags::defaults();
        assert_eq!(flags.max_concurrent_streams, u32::MAX);
        assert_eq!(flags.grpc_keepalive_interval, Duration::from_secs(7200));
        assert_eq!(flags.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(flags.cors, vec!["*"]);
        let mut names: Vec<&str> = SPECS
            .iter()
            .map(|s| s.name)
            .chain(IGNORED.iter().copied())
            .collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a flag is in the table twice");
    }

    #[test]
    fn go_flag_syntax() {
        let loaded = load(
            &[
                "-name",
                "a",
                "--data-dir=d",
                "--pre-vote",
                "-strict-reconfig-check=false",
                "--heartbeat-interval",
                "0x10",
                "--election-timeout=1000",
            ],
            &[],
        )
        .unwrap_or_else(|(stop, _)| panic!("refused: {stop:?}"));
        let flags = loaded.flags;
        assert_eq!(flags.name, "a");
        assert_eq!(flags.data_dir, "d");
        assert!(flags.pre_vote);
        assert!(!flags.strict_reconfig_check);
        assert_eq!(flags.heartbeat_interval, 16);
    }

    fn stop(list: &[&str], env: &[(&str, &str)]) -> Stop {
        match load(list, env) {
            Ok(_) => panic!("{list:?} was accepted"),
            Err((stop, _)) => stop,
        }
    }

    #[test]
    fn etcd_messages_for_bad_command_lines() {
        let text = |s: Stop| match s {
            Stop::Usage(m) | Stop::Invalid(m) | Stop::Fatal(m) => m,
            other => format!("{other:?}"),
        };
        assert_eq!(
            text(stop(&["--bogus"], &[])),
            "flag provided but not defined: -bogus"
        );
        assert_eq!(
            text(stop(&["--name"], &[])),
            "flag needs an argument: -name"
        );
        assert_eq!(
            text(stop(&["--heartbeat-interval", "abc"], &[])),
            "invalid value \"abc\" for flag -heartbeat-interval: parse error"
        );
        assert_eq!(
            text(stop(&["--strict-reconfig-check", "false"], &[])),
            "'false' is not a valid flag"
        );
        assert_eq!(
            text(stop(&["--pre-vote=maybe"], &[])),
            "invalid boolean value \"maybe\" for -pre-vote: parse error"
        );
        assert_eq!(
            text(stop(&["--initial-cluster-state", "foo"], &[])),
            "invalid value \"foo\" for flag -initial-cluster-state: invalid value"
        );
        assert_eq!(text(stop(&["---x"], &[])), "bad flag syntax: ---x");
        assert_eq!(text(stop(&["--max-concurrent-streams", "4294967296"], &[])), "invalid value \"4294967296\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \"4294967296\": value out of range");
        assert!(matches!(stop(&["-h"], &[]), Stop::Help));
        assert_eq!(
            text(stop(&["-é=1"], &[])),
            "flag provided but not defined: -é"
        );
        assert!(matches!(stop(&["--version"], &[]), Stop::Version));
        assert_eq!(text(stop(&["--name", "x"], &[("ETCD_NAME", "y")])), "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)");
        assert_eq!(
            text(stop(&[], &[("ETCD_SNAPSHOT_COUNT", "x")])),
            "invalid value \"x\" for ETCD_SNAPSHOT_COUNT: parse error"
        );
    }

    #[test]
    fn environment_fills_what_the_command_line_left() {
        let loaded = load(
            &["--name", "n"],
            &[
                ("ETCD_PRE_VOTE", "true"),
                ("ETCD_NO_SUCH", "1"),
                ("ETCD_V", "1"),
            ],
        )
        .unwrap_or_else(|(stop, _)| panic!("refused: {stop:?}"));
        assert!(loaded.flags.pre_vote);
        assert!(loaded
            .early
            .iter()
            .any(|l| l.message == "unrecognized environment variable ETCD_NO_SUCH=1"));
        assert!(loaded
            .early
            .iter()
            .any(|l| l.message == "recognized and used environment variable ETCD_PRE_VOTE=true"));
        assert!(loaded
            .early
            .iter()
            .any(|l| l.message == "flag \"-v\" is no longer supported - ignoring."));
    }

    #[test]
    fn listen_without_advertise_is_refused_like_etcd() {
        let mut flags = load(&["--listen-client-urls", "http://127.0.0.1:1"], &[])
            .unwrap_or_else(|(stop, _)| panic!("refused: {stop:?}"))
            .flags;
        assert_eq!(
            flags.validate(),
            Err(UNSET_ADVERTISE_CLIENT_URLS.to_string())
        );
        let mut flags = load(
            &[
                "--listen-client-urls",
                "http://example.com:1",
                "--advertise-client-urls",
                "http://a:1",
            ],
            &[],
        )
        .unwrap_or_else(|(stop, _)| panic!("refused: {stop:?}"))
        .flags;
        assert_eq!(
            flags.validate(),
            Err("expected IP in URL for binding (http://example.com:1)".to_string())
        );
    }

    #[test]
    fn not_implemented_lists_only_changed_flags() {
        let flags = load(&["--max-wals", "7", "--enable-v2"], &[])
            .unwrap_or_else(|(stop, _)| panic!("refused: {stop:?}"))
            .flags;
        let names: Vec<&str> = flags
            .not_implemented()
            .iter()
            .map(|(s, _)| s.name)
            .collect();
        assert_eq!(names, ["max-wals", "enable-v2"]);
        assert_eq!(flags.value_text("max-wals").as_deref(), Some("7"));
    }
}
