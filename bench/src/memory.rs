//! `rivet-bench memory`: the memory figures of etcd's performance documentation, measured
//! on rivet and etcd side by side (one member each, started by this tool):
//!
//! - storage: resident memory (VmRSS) and on-disk size after loading N keys, for each N of
//!   `--keys`, then after writing every key of the first step once more (an extra version
//!   per key);
//! - watch: resident memory of a fresh member before and after opening watch streams, in
//!   two shapes (many streams with one watcher each; few streams with many watchers each),
//!   from which the cost of one stream and of one watcher are solved.
//!
//! Each figure is a difference of VmRSS readings of the server process, so it counts what
//! the server really holds (index, caches, allocator slack), not what a data structure is
//! supposed to cost. Key bytes and value bytes are part of it.

use std::path::Path;
use std::time::Duration;

use crate::workloads::Channel;
use anyhow::{bail, Context};
use futures::StreamExt;
use rivet_api::etcdserverpb::kv_client::KvClient;
use rivet_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rivet_api::etcdserverpb::watch_client::WatchClient;
use rivet_api::etcdserverpb::watch_request::RequestUnion;
use rivet_api::etcdserverpb::{PutRequest, StatusRequest, WatchCreateRequest, WatchRequest};
use serde::Serialize;

use crate::cli::MemoryArgs;
use crate::compare::{rivet_binary, version_of};
use crate::servers::{find_on_path, Cluster, Kind};
use crate::workloads::{connect, key_of};

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Puts in flight while loading keys.
const LOAD_CONCURRENCY: usize = 256;
/// gRPC connections used to load keys and to carry watch streams.
const CONNECTIONS: usize = 8;
/// How long RSS is left to settle (allocator caches, lazily touched pages) before a reading.
const SETTLE: Duration = Duration::from_millis(1500);

/// One storage step: the figures after `keys` keys (and `versions` versions of each of the
/// first step's keys).
#[derive(Debug, Clone, Serialize)]
pub struct StorageStep {
    pub keys: u64,
    pub extra_versions: u64,
    pub rss_bytes: u64,
    pub db_size_bytes: i64,
}

/// One watch shape and the RSS it added.
#[derive(Debug, Clone, Serialize)]
pub struct WatchShape {
    pub streams: usize,
    pub watchers_per_stream: usize,
    pub rss_added_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    pub server: String,
    pub version: String,
    pub baseline_rss_bytes: u64,
    pub storage: Vec<StorageStep>,
    pub watch: Vec<WatchShape>,
    /// Solved from the two watch shapes.
    pub bytes_per_watch_stream: f64,
    pub bytes_per_watcher: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub key_size: usize,
    pub val_size: usize,
    pub servers: Vec<ServerMemory>,
}

/// VmRSS in bytes, from the text of /proc/PID/status.
pub fn parse_rss(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss(&status)
}

async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    tokio::time::sleep(SETTLE).await;
    rss_bytes(pid)
}

async fn open_channels(endpoint: &str) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(connect(endpoint).await?);
    }
    Ok(channels)
}

/// Puts keys `from..to` (each `key_of(n)`) with `LOAD_CONCURRENCY` puts in flight.
async fn load(
    channels: &[Channel],
    from: u64,
    to: u64,
    key_size: usize,
    value: &[u8],
) -> anyhow::Result<()> {
    let value = bytes::Bytes::copy_from_slice(value);
    let mut puts = futures::stream::iter(from..to)
        .map(|n| {
            let mut client = KvClient::new(channels[n as usize % channels.len()].clone());
            let request = PutRequest {
                key: key_of(n, key_size),
                value: value.clone(),
                ..Default::default()
            };
            async move { client.put(request).await }
        })
        .buffer_unordered(LOAD_CONCURRENCY);
    while let Some(result) = puts.next().await {
        result.context("put while loading keys")?;
    }
    Ok(())
}

async fn db_size(channel: &Channel) -> anyhow::Result<i64> {
    Ok(MaintenanceClient::new(channel.clone())
        .status(StatusRequest {})
        .await?
        .into_inner()
        .db_size)
}

/// Opens `streams` watch streams with `per_stream` watchers each (distinct keys under a
/// prefix of their own), waits until every watcher was created, and returns the streams'
/// request senders and response streams, which keep them open until dropped.
async fn open_watches(
    channels: &[Channel],
    streams: usize,
    per_stream: usize,
    tag: &str,
) -> anyhow::Result<Vec<OpenStream>> {
    let mut open = Vec::with_capacity(streams);
    for s in 0..streams {
        let (sender, receiver) = tokio::sync::mpsc::channel::<WatchRequest>(per_stream.max(1));
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let requests = tokio_stream_of(receiver);
        let creating = tokio::spawn(async move { client.watch(requests).await });
        for w in 0..per_stream {
            let key = format!("memwatch/{tag}/{s}/{w}").into_bytes();
            sender
                .send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                        key: key.into(),
                        ..Default::default()
                    })),
                })
                .await
                .context("watch stream closed")?;
        }
        let mut responses = creating.await??.into_inner();
        let mut created = 0;
        while created < per_stream {
            let response = tokio::time::timeout(Duration::from_secs(30), responses.message())
                .await
                .context("watch creation timed out")??
                .context("watch stream ended")?;
            if response.created {
                created += 1;
            }
        }
        open.push(OpenStream {
            _sender: sender,
            _responses: responses,
        });
    }
    Ok(open)
}

/// A watch stream kept open: dropping it closes the stream.
struct OpenStream {
    _sender: tokio::sync::mpsc::Sender<WatchRequest>,
    _responses: tonic::Streaming<rivet_api::etcdserverpb::WatchResponse>,
}

fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<WatchRequest>,
) -> impl futures::Stream<Item = WatchRequest> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

async fn measure(kind: Kind, binary: &Path, args: &MemoryArgs) -> anyhow::Result<ServerMemory> {
    let value = vec![b'v'; args.val_size];
    let mut storage = Vec::new();

    // Storage: one member, keys loaded in steps.
    let cluster = Cluster::start(kind, binary, 1, START_TIMEOUT).await?;
    let pid = cluster.pids()[0];
    let endpoint = cluster.endpoints()[0].clone();
    let channels = open_channels(&endpoint).await?;
    let baseline_rss_bytes = settled_rss(pid).await?;
    let mut loaded = 0;
    for &keys in &args.keys {
        eprintln!("memory: {kind}: loading keys {loaded}..{keys}");
        load(&channels, loaded, keys, args.key_size, &value).await?;
        loaded = keys;
        storage.push(StorageStep {
            keys,
            extra_versions: 0,
            rss_bytes: settled_rss(pid).await?,
            db_size_bytes: db_size(&channels[0]).await?,
        });
    }
    if let Some(&first) = args.keys.first() {
        eprintln!("memory: {kind}: one more version of keys 0..{first}");
        load(&channels, 0, first, args.key_size, &value).await?;
        storage.push(StorageStep {
            keys: loaded,
            extra_versions: first,
            rss_bytes: settled_rss(pid).await?,
            db_size_bytes: db_size(&channels[0]).await?,
        });
    }
    drop(channels);
    drop(cluster);

    // Watch: a fresh member per shape, so one shape's leftovers do not count in the other.
    let shapes = [
        (args.streams, 1),
        (args.watch_streams, args.watch_per_stream),
    ];
    let mut watch = Vec::new();
    for (i, &(streams, per_stream)) in shapes.iter().enumerate() {
        let cluster = Cluster::start(kind, binary, 1, START_TIMEOUT).await?;
        let pid = cluster.pids()[0];
        let channels = open_channels(&cluster.endpoints()[0]).await?;
        // Warm the connections and the watch service once, outside the measurement.
        drop(open_watches(&channels, CONNECTIONS, 1, "warm").await?);
        let before = settled_rss(pid).await?;
        eprintln!("memory: {kind}: {streams} watch streams × {per_stream} watchers");
        let open = open_watches(&channels, streams, per_stream, &format!("s{i}")).await?;
        let after = settled_rss(pid).await?;
        drop(open);
        watch.push(WatchShape {
            streams,
            watchers_per_stream: per_stream,
            rss_added_bytes: after as i64 - before as i64,
        });
    }
    let (stream, watcher) = solve(&watch)?;
    Ok(ServerMemory {
        server: kind.to_string(),
        version: version_of(binary),
        baseline_rss_bytes,
        storage,
        watch,
        bytes_per_watch_stream: stream,
        bytes_per_watcher: watcher,
    })
}

/// Per-stream and per-watcher bytes from two shapes: added = streams × (stream + watchers
/// per stream × watcher).
pub fn solve(shapes: &[WatchShape]) -> anyhow::Result<(f64, f64)> {
    let [a, b] = shapes else {
        bail!("two watch shapes are needed");
    };
    let (sa, wa, ra) = (
        a.streams as f64,
        a.watchers_per_stream as f64,
        a.rss_added_bytes as f64,
    );
    let (sb, wb, rb) = (
        b.streams as f64,
        b.watchers_per_stream as f64,
        b.rss_added_bytes as f64,
    );
    // ra = sa·s + sa·wa·w ; rb = sb·s + sb·wb·w
    let determinant = sa * sb * wb - sb * sa * wa;
    if determinant == 0.0 {
        bail!("the two watch shapes must differ in watchers per stream");
    }
    let watcher = (sa * rb - sb * ra) / determinant;
    let stream = (ra - sa * wa * watcher) / sa;
    Ok((stream, watcher))
}

pub async fn run(args: &MemoryArgs) -> anyhow::Result<MemoryReport> {
    if args.keys.windows(2).any(|w| w[0] >= w[1]) || args.keys.is_empty() {
        bail!("--keys: increasing counts, e.g. 100000,1000000");
    }
    let rivet = rivet_binary(args.rivet.as_deref())?;
    let etcd = find_on_path(&args.etcd).with_context(|| {
        format!(
            "etcd not found ({} is not a file nor on PATH): install etcd 3.4 or pass --etcd PATH",
            args.etcd.display()
        )
    })?;
    let mut servers = vec![measure(Kind::Rivet, &rivet, args).await?];
    if !args.rivet_only {
        servers.push(measure(Kind::Etcd, &etcd, args).await?);
    }
    Ok(MemoryReport {
        key_size: args.key_size,
        val_size: args.val_size,
        servers,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl MemoryReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "storage ({} B keys, {} B values; RSS B/key = (RSS − baseline) ÷ keys; marginal: since the previous row):\n",
            self.key_size, self.val_size
        );
        out += &format!(
            "    {:<8} {:>10} {:>9} {:>10} {:>10} {:>22} {:>10}\n",
            "SERVER", "KEYS", "VERSIONS", "RSS MiB", "RSS B/key", "MARGINAL RSS", "DB MiB"
        );
        for server in &self.servers {
            let mut previous: Option<&StorageStep> = None;
            for step in &server.storage {
                let (before_rss, before_keys) = previous
                    .map(|p| (p.rss_bytes, p.keys))
                    .unwrap_or((server.baseline_rss_bytes, 0));
                let added = step.rss_bytes as f64 - before_rss as f64;
                let (per_key, marginal) = if step.extra_versions > 0 {
                    (
                        String::new(),
                        format!("{:.0} B/version", added / step.extra_versions as f64),
                    )
                } else {
                    (
                        format!(
                            "{:.0}",
                            (step.rss_bytes as f64 - server.baseline_rss_bytes as f64)
                                / step.keys as f64
                        ),
                        format!("{:.0} B/key", added / (step.keys - before_keys) as f64),
                    )
                };
                out += &format!(
                    "    {:<8} {:>10} {:>9} {:>10.1} {:>10} {:>22} {:>10.1}\n",
                    server.server,
                    step.keys,
                    step.extra_versions,
                    mib(step.rss_bytes),
                    per_key,
                    marginal,
                    step.db_size_bytes as f64 / (1024.0 * 1024.0)
                );
                previous = Some(step);
            }
        }
        out += "watch (RSS added by open watchers on a fresh member):\n";
        out += &format!(
            "    {:<8} {:>8} {:>12} {:>14} {:>16} {:>14}\n",
            "SERVER", "STREAMS", "WATCH/STREAM", "RSS ADDED KiB", "B/STREAM", "B/WATCHER"
        );
        for server in &self.servers {
            for (i, shape) in server.watch.iter().enumerate() {
                let (stream, watcher) = if i == 0 {
                    (
                        format!("{:.0}", server.bytes_per_watch_stream),
                        format!("{:.0}", server.bytes_per_watcher),
                    )
                } else {
                    (String::new(), String::new())
                };
                out += &format!(
                    "    {:<8} {:>8} {:>12} {:>14.0} {:>16} {:>14}\n",
                    server.server,
                    shape.streams,
                    shape.watchers_per_stream,
                    shape.rss_added_bytes as f64 / 1024.0,
                    stream,
                    watcher
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tetcd\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_rss(status).expect("status"), 1024 * 1024);
        assert!(rss_bytes(std::process::id()).expect("own VmRSS") > 0);
    }

    #[test]
    fn solves_stream_and_watcher_costs() {
        // 18 KiB per stream, 350 B per watcher.
        let shape = |streams: usize, per: usize| WatchShape {
            streams,
            watchers_per_stream: per,
            rss_added_bytes: (streams * (18 * 1024 + per * 350)) as i64,
        };
        let (stream, watcher) = solve(&[shape(1000, 1), shape(10, 10_000)]).expect("solve");
        assert!((stream - 18.0 * 1024.0).abs() < 1e-6, "{stream}");
        assert!((watcher - 350.0).abs() < 1e-6, "{watcher}");
        assert!(solve(&[shape(10, 5), shape(20, 5)]).is_err());
    }
}
