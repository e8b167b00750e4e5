//! Command-line flags: etcd's `benchmark` tool's subcommand and flag names. The global
//! flags (`--endpoints --conns --clients --total --rate --target-leader …`) may appear
//! before or after the subcommand, as with etcd's persistent flags.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rivet-bench",
    about = "Benchmark an etcd v3 endpoint (rivet or etcd)",
    args_override_self = true
)]
pub struct Args {
    /// gRPC endpoints (comma-separated host:port).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of concurrent clients.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total number of requests (default 10000; for watch and watch-latency, the default of
    /// --put-total).
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// Maximum requests per second (0 is no limit).
    #[arg(long, global = true, default_value_t = 0)]
    pub rate: u64,
    /// Send every request to the leader: Maintenance.Status on each endpoint picks it.
    #[arg(long = "target-leader", global = true)]
    pub target_leader: bool,
    /// Print the summary as JSON (no progress bar).
    #[arg(long, global = true)]
    pub json: bool,
    /// Write the latency percentile distribution to FILE in HdrHistogram's .hgrm format
    /// (values in milliseconds).
    #[arg(long = "hdr-out", global = true, value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,
    /// Draw latency by percentile into FILE.svg; runs already plotted in FILE.svg are kept
    /// and overlaid, with a legend.
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The legend entry of this run in --plot (default: command and endpoints). A run with
    /// the same label replaces the one plotted before.
    #[arg(long = "plot-label", global = true)]
    pub plot_label: Option<String>,
    /// Draw p50, p99 and maximum latency and the throughput per interval over time into
    /// FILE.svg and write them to FILE.csv; runs already drawn in FILE.svg are kept (as with
    /// --plot, the same --plot-label replaces). With compare: one FILE-<workload>.svg and
    /// .csv per workload, one line per server and round.
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
    /// The interval of --timeline and of the JSON report's `timeline`, in seconds.
    #[arg(long = "timeline-interval", global = true, default_value_t = 1.0, value_name = "SECONDS", value_parser = positive_seconds)]
    pub timeline_interval: f64,
    /// Verify the servers' certificates with this CA bundle (etcd's benchmark and
    /// etcdctl flag); endpoints without a scheme then use https.
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Identify with this client certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM). (`range` has a positional `key`, hence the
    /// field's other name.)
    #[arg(long = "key", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Authenticate as this user (etcd's benchmark flag): every connection gets a token
    /// from Auth.Authenticate and sends it with each request.
    #[arg(long, global = true, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Benchmark put.
    Put(PutArgs),
    /// Benchmark range.
    Range(RangeArgs),
    /// Benchmark put through transactions (--txn-ops puts per txn).
    TxnPut(TxnPutArgs),
    /// Benchmark a mixed load of txn-put and txn-range.
    TxnMixed(TxnMixedArgs),
    /// Benchmark watch: watch creation, then the delivery of events of concurrent puts
    /// (latency from sending each put to each watcher receiving its event).
    Watch(WatchArgs),
    /// Benchmark watch latency: time from each put's response to each watcher seeing the
    /// event.
    WatchLatency(WatchLatencyArgs),
    /// Benchmark lease keep-alive round trips on granted leases.
    LeaseKeepalive,
    /// Start rivet and etcd with equivalent settings, run the same workloads against each
    /// and print one comparison table.
    Compare(CompareArgs),
    /// Start rivet and etcd (one member each) and measure their memory: resident memory
    /// per key and per extra version after loading keys, and per watch stream and watcher.
    Memory(MemoryArgs),
}

#[derive(ClapArgs, Debug, Clone)]
pub struct PutArgs {
    /// Key size of put request.
    #[arg(long = "key-size", default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request.
    #[arg(long = "val-size", default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long = "key-space-size", default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long = "sequential-keys")]
    pub sequential_keys: bool,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct RangeArgs {
    pub key: String,
    pub end: Option<String>,
    /// Linearizable (l) or Serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Maximum number of results.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Only returns the count of keys.
    #[arg(long = "count-only")]
    pub count_only: bool,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct TxnPutArgs {
    /// Key size of txn put.
    #[arg(long = "key-size", default_value_t = 8)]
    pub key_size: usize,
    /// Value size of txn put.
    #[arg(long = "val-size", default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long = "key-space-size", default_value_t = 1)]
    pub key_space_size: u64,
    /// Number of puts per txn.
    #[arg(long = "txn-ops", default_value_t = 1)]
    pub txn_ops: u64,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct TxnMixedArgs {
    /// First key of the reads (default: every key, limited by --limit).
    pub key: Option<String>,
    /// Read range end (as --end-key).
    pub end_range: Option<String>,
    /// Key size of mixed txn.
    #[arg(long = "key-size", default_value_t = 8)]
    pub key_size: usize,
    /// Value size of mixed txn.
    #[arg(long = "val-size", default_value_t = 8)]
    pub val_size: usize,
    /// Read operation range end key.
    #[arg(long = "end-key")]
    pub end_key: Option<String>,
    /// Read operation range result limit.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Maximum possible keys.
    #[arg(long = "key-space-size", default_value_t = 1)]
    pub key_space_size: u64,
    /// Linearizable (l) or Serializable (s).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    pub consistency: String,
    /// Read/write ops ratio.
    #[arg(long = "rw-ratio", default_value_t = 1.0)]
    pub rw_ratio: f64,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct WatchArgs {
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long = "watch-per-stream", default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Total number of keys to be watched.
    #[arg(long = "watched-key-total", default_value_t = 1)]
    pub watched_key_total: u64,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long = "put-rate", default_value_t = 0)]
    pub put_rate: u64,
    /// Number of put requests (default: --total, else 1000).
    #[arg(long = "put-total")]
    pub put_total: Option<u64>,
    /// Key size of watch request.
    #[arg(long = "key-size", default_value_t = 32)]
    pub key_size: usize,
    /// Value size of put request (at least 20: each value carries its send time).
    #[arg(long = "val-size", default_value_t = 32)]
    pub val_size: usize,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct WatchLatencyArgs {
    /// Total number of put requests (default: --total, else 1000).
    #[arg(long = "put-total")]
    pub put_total: Option<u64>,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long = "put-rate", default_value_t = 100)]
    pub put_rate: u64,
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long = "watchers-per-stream", default_value_t = 10)]
    pub watchers_per_stream: usize,
    /// Key size of watch response.
    #[arg(long = "key-size", default_value_t = 32)]
    pub key_size: usize,
    /// Value size of watch response.
    #[arg(long = "val-size", default_value_t = 32)]
    pub val_size: usize,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct MemoryArgs {
    /// Key counts to load and measure at, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub keys: Vec<u64>,
    /// Key size of the loaded keys.
    #[arg(long = "key-size", default_value_t = 8)]
    pub key_size: usize,
    /// Value size of the loaded keys.
    #[arg(long = "val-size", default_value_t = 256)]
    pub val_size: usize,
    /// Watch streams of the first watch shape (one watcher each).
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Watch streams of the second watch shape.
    #[arg(long = "watch-streams", default_value_t = 10)]
    pub watch_streams: usize,
    /// Watchers per stream of the second watch shape.
    #[arg(long = "watch-per-stream", default_value_t = 10_000)]
    pub watch_per_stream: usize,
    /// rivet's binary (default: as for compare).
    #[arg(long)]
    pub rivet: Option<PathBuf>,
    /// etcd's binary (default: etcd on PATH).
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Measure rivet only.
    #[arg(long = "rivet-only")]
    pub rivet_only: bool,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct CompareArgs {
    /// Members per server: 1, or 3 of each (rivet falls back to 1 if its 3-member cluster
    /// does not start).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub members: u8,
    /// rivet's binary (default: target/release/rivet of the repository, or next to
    /// rivet-bench).
    #[arg(long)]
    pub rivet: Option<PathBuf>,
    /// etcd's binary (default: etcd on PATH).
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// A workload to run, as rivet-bench's own arguments, e.g. "--conns 100 --clients 1000
    /// put --val-size 256" (repeatable; the global --total, --conns, --clients and --rate
    /// are its defaults).
    #[arg(long = "workload", value_name = "ARGS")]
    pub workloads: Vec<String>,
    /// Serve clients over TLS with this certificate (both servers get `--cert-file`,
    /// `--key-file`, and with --cacert `--trusted-ca-file` and `--client-cert-auth`).
    #[arg(long = "server-cert", value_name = "FILE", requires = "server_key")]
    pub server_cert: Option<PathBuf>,
    /// The key of --server-cert.
    #[arg(long = "server-key", value_name = "FILE", requires = "server_cert")]
    pub server_key: Option<PathBuf>,
    /// Rounds: each starts rivet, runs the workloads, stops it, then the same with etcd.
    /// The table shows each figure's median over the rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// CPUs for rivet-bench itself (a Linux CPU list: `0`, `0-1`, `0,2`), so that the load
    /// generator does not take the servers' CPU time.
    #[arg(long = "bench-cpus", value_name = "LIST")]
    pub bench_cpus: Option<String>,
    /// CPUs every server process runs on (a Linux CPU list).
    #[arg(long = "server-cpus", value_name = "LIST")]
    pub server_cpus: Option<String>,
    /// With --user NAME:PASSWORD: before measuring, create on each server the user `root`
    /// (role `root`), the user NAME with a role holding readwrite on the workloads' keys
    /// (the numeric keys rivet-bench writes, and each range's key or range), and enable
    /// auth; every workload then runs authenticated as NAME on both servers.
    #[arg(long = "setup-auth")]
    pub setup_auth: bool,
    /// One more workload, written after the flags: `compare --total 1000 put --val-size 64`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "WORKLOAD"
    )]
    pub workload: Vec<String>,
}

impl Command {
    /// etcd benchmark's subcommand name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::Range(_) => "range",
            Command::TxnPut(_) => "txn-put",
            Command::TxnMixed(_) => "txn-mixed",
            Command::Watch(_) => "watch",
            Command::WatchLatency(_) => "watch-latency",
            Command::LeaseKeepalive => "lease-keepalive",
            Command::Compare(_) => "compare",
            Command::Memory(_) => "memory",
        }
    }

    /// The subcommand with all its flags, as it could be typed again.
    pub fn describe(&self) -> String {
        let name = self.name();
        match self {
            Command::Put(a) => format!(
                "{name} --key-size {} --val-size {} --key-space-size {}{}",
                a.key_size,
                a.val_size,
                a.key_space_size,
                if a.sequential_keys {
                    " --sequential-keys"
                } else {
                    ""
                }
            ),
            Command::Range(a) => format!(
                "{name} {}{} --consistency {} --limit {}{}",
                a.key,
                a.end.as_ref().map(|e| format!(" {e}")).unwrap_or_default(),
                a.consistency,
                a.limit,
                if a.count_only { " --count-only" } else { "" }
            ),
            Command::TxnPut(a) => format!(
                "{name} --key-size {} --val-size {} --key-space-size {} --txn-ops {}",
                a.key_size, a.val_size, a.key_space_size, a.txn_ops
            ),
            Command::TxnMixed(a) => format!(
                "{name}{}{} --key-size {} --val-size {} --key-space-size {} --consistency {} --rw-ratio {} --limit {}",
                a.key.as_ref().map(|k| format!(" {k}")).unwrap_or_default(),
                a.end_key
                    .as_ref()
                    .or(a.end_range.as_ref())
                    .map(|e| format!(" --end-key {e}"))
                    .unwrap_or_default(),
                a.key_size,
                a.val_size,
                a.key_space_size,
                a.consistency,
                a.rw_ratio,
                a.limit
            ),
            Command::Watch(a) => format!(
                "{name} --streams {} --watch-per-stream {} --watched-key-total {} --put-rate {} --key-size {} --val-size {}",
                a.streams, a.watch_per_stream, a.watched_key_total, a.put_rate, a.key_size, a.val_size
            ),
            Command::WatchLatency(a) => format!(
                "{name} --put-rate {} --streams {} --watchers-per-stream {} --key-size {} --val-size {}",
                a.put_rate, a.streams, a.watchers_per_stream, a.key_size, a.val_size
            ),
            Command::LeaseKeepalive | Command::Compare(_) | Command::Memory(_) => {
                name.to_string()
            }
        }
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.001 => Ok(s),
        _ => Err(format!("{text:?}: seconds, at least 0.001")),
    }
}

impl Args {
    /// `--timeline-interval`.
    pub fn timeline_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.timeline_interval)
    }

    /// `--total`, or the workload's default.
    pub fn total(&self) -> u64 {
        self.total.unwrap_or(10_000)
    }

    /// The run as a label: the workload's flags plus connections, clients and requests.
    pub fn describe(&self) -> String {
        let total = match &self.command {
            Command::Watch(a) => a.put_total.or(self.total).unwrap_or(1000),
            Command::WatchLatency(a) => a.put_total.or(self.total).unwrap_or(1000),
            _ => self.total(),
        };
        let total_flag = match &self.command {
            Command::Watch(_) | Command::WatchLatency(_) => "--put-total",
            _ => "--total",
        };
        let mut out = format!(
            "{} --conns {} --clients {} {total_flag} {total}",
            self.command.describe(),
            self.conns,
            self.clients
        );
        if self.rate > 0 {
            out.push_str(&format!(" --rate {}", self.rate));
        }
        if self.target_leader {
            out.push_str(" --target-leader");
        }
        out
    }
}
