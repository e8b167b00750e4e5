//! `rivet-bench`: a load generator for any etcd v3 endpoint (rivet or etcd), with the
//! workloads and flag names of etcd's `benchmark` tool.
//!
//! `rivet-bench --endpoints 127.0.0.1:2379 --conns 100 --clients 1000 --total 100000 put --key-size 8 --val-size 256`

mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rivet_api::etcdserverpb::kv_client::KvClient;
use rivet_api::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rivet-bench",
    about = "Benchmark an etcd v3 endpoint (rivet or etcd)"
)]
struct Args {
    /// gRPC endpoints (comma-separated host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Total number of concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Maximum requests per second (0 is no limit).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug, Clone)]
enum Workload {
    /// Benchmark put.
    Put {
        #[arg(long = "key-size", default_value_t = 8)]
        key_size: usize,
        #[arg(long = "val-size", default_value_t = 8)]
        val_size: usize,
        /// Maximum possible keys.
        #[arg(long = "key-space-size", default_value_t = 1)]
        key_space_size: u64,
        /// Use sequential keys.
        #[arg(long = "sequential-keys")]
        sequential_keys: bool,
    },
    /// Benchmark range.
    Range {
        key: String,
        end: Option<String>,
        /// Linearizable (l) or Serializable (s).
        #[arg(long, default_value = "l")]
        consistency: String,
        #[arg(long, default_value_t = 0)]
        limit: i64,
        #[arg(long = "count-only")]
        count_only: bool,
    },
}

fn key_of(n: u64, size: usize) -> Bytes {
    let mut key = vec![b'0'; size.max(1)];
    let digits = n.to_string();
    let digits = digits.as_bytes();
    let take = digits.len().min(key.len());
    let start = key.len() - take;
    key[start..].copy_from_slice(&digits[digits.len() - take..]);
    Bytes::from(key)
}

/// Latencies in microseconds, 1 µs to 60 s, three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3).expect("valid histogram bounds")
}

const LATENCY_MICROS_MAX: u64 = 60_000_000;

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    Channel::from_shared(url.clone())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns.max(1) {
        channels.push(connect(&args.endpoints[i % args.endpoints.len()]).await?);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let interval = if args.rate > 0 {
        Some(Duration::from_secs_f64(
            args.clients as f64 / args.rate as f64,
        ))
    } else {
        None
    };
    let mut tasks = Vec::with_capacity(args.clients);
    for client in 0..args.clients.max(1) {
        let mut kv = KvClient::new(channels[client % channels.len()].clone())
            .max_decoding_message_size(usize::MAX);
        let issued = Arc::clone(&issued);
        let errors = Arc::clone(&errors);
        let workload = args.workload.clone();
        let total = args.total;
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let value = match &workload {
                Workload::Put { val_size, .. } => Bytes::from(vec![b'x'; *val_size]),
                Workload::Range { .. } => Bytes::new(),
            };
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                if let Some(interval) = interval {
                    tokio::time::sleep(interval).await;
                }
                let begin = Instant::now();
                let result = match &workload {
                    Workload::Put {
                        key_size,
                        key_space_size,
                        sequential_keys,
                        ..
                    } => {
                        let k = if *sequential_keys {
                            n % key_space_size.max(&1)
                        } else {
                            rand::random::<u64>() % key_space_size.max(&1)
                        };
                        kv.put(PutRequest {
                            key: key_of(k, *key_size),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                    }
                    Workload::Range {
                        key,
                        end,
                        consistency,
                        limit,
                        count_only,
                    } => kv
                        .range(RangeRequest {
                            key: Bytes::copy_from_slice(key.as_bytes()),
                            range_end: end
                                .as_ref()
                                .map(|e| Bytes::copy_from_slice(e.as_bytes()))
                                .unwrap_or_default(),
                            serializable: consistency == "s",
                            limit: *limit,
                            count_only: *count_only,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        let micros =
                            (begin.elapsed().as_micros() as u64).clamp(1, LATENCY_MICROS_MAX);
                        histogram.saturating_record(micros);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            histogram
        }));
    }
    let mut histogram = new_histogram();
    for task in tasks {
        histogram.add(task.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = report::summarize(&histogram, errors.load(Ordering::Relaxed), elapsed);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", report::render(&summary, &histogram));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}
