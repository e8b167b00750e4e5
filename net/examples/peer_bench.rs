//! Peer transport benchmark on loopback: round-trip and one-way time of a 200-byte raft
//! message between two members, the same while a snapshot streams, and snapshot
//! throughput. Each member runs on its own pinned thread with a current-thread tokio
//! runtime, like the raft core; with `--processes` the second member is a child process.
//!
//! ```text
//! cargo run --release -p rivet-net --example peer_bench
//! cargo run --release -p rivet-net --example peer_bench -- --processes
//! cargo run --release -p rivet-net --example peer_bench -- --congestion bbr --no-gso
//! ```
//!
//! One-way times use CLOCK_MONOTONIC stamps carried in the messages, which are comparable
//! across threads and processes of one machine.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use rivet_net::peer::{Congestion, Incoming, PeerConfig, PeerTransport, PeerTuning};
use tokio::sync::mpsc;

#[derive(Parser, Clone, Debug)]
struct Arguments {
    /// Run the second member in a child process instead of a thread.
    #[arg(long)]
    processes: bool,
    /// Measured round trips (after as many warm-up ones as a tenth of this).
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Size of each message.
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    /// Snapshot size in MiB (0 skips the snapshot).
    #[arg(long, default_value_t = 256)]
    snapshot_mib: usize,
    /// Snapshot chunk size handed to the transport, in KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    #[arg(long, value_parser = ["cubic", "newreno", "bbr"], default_value = "cubic")]
    congestion: String,
    /// Disable UDP segmentation offload.
    #[arg(long)]
    no_gso: bool,
    /// UDP socket buffer size in bytes; 0 keeps the system default.
    #[arg(long)]
    socket_buffer_bytes: Option<usize>,
    /// QUIC stream receive window in bytes.
    #[arg(long)]
    stream_window_bytes: Option<u32>,
    /// Smallest QUIC connection send window (bytes in flight) in bytes.
    #[arg(long)]
    send_window_bytes: Option<u64>,
    /// Upper bound of path MTU discovery (0 disables discovery).
    #[arg(long)]
    mtu: Option<u16>,
    /// Do not pin the members' threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Internal: run as the echoing member of `--processes`.
    #[arg(long, hide = true)]
    echo_for: Option<SocketAddr>,
}

const DRIVER_ID: u64 = 1;
const ECHO_ID: u64 = 2;
const CLUSTER_ID: u64 = 0xbe4c;

/// Message layout: kind | sequence | sent at (driver) | received at (echo) | echoed at.
const KIND_PING: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 * 4;

fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn tuning(arguments: &Arguments) -> PeerTuning {
    let mut tuning = PeerTuning {
        congestion: match arguments.congestion.as_str() {
            "newreno" => Congestion::NewReno,
            "bbr" => Congestion::Bbr,
            _ => Congestion::Cubic,
        },
        segmentation_offload: !arguments.no_gso,
        ..PeerTuning::default()
    };
    if let Some(bytes) = arguments.socket_buffer_bytes {
        tuning.socket_buffer_bytes = (bytes > 0).then_some(bytes);
    }
    if let Some(bytes) = arguments.stream_window_bytes {
        tuning.stream_receive_window_bytes = bytes;
    }
    if let Some(mtu) = arguments.mtu {
        tuning.mtu_upper_bound = (mtu > 0).then_some(mtu);
    }
    if let Some(bytes) = arguments.send_window_bytes {
        tuning.send_window_bytes_min = bytes;
    }
    tuning
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn pin(arguments: &Arguments, core: usize) {
    if arguments.no_pin {
        return;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(id) = cores.get(core % cores.len().max(1)) {
        core_affinity::set_for_current(*id);
    }
}

async fn start(arguments: &Arguments, id: u64) -> (PeerTransport, mpsc::Receiver<Incoming>) {
    let mut config = PeerConfig::new(
        id,
        CLUSTER_ID,
        "127.0.0.1:0".parse().expect("address"),
        Vec::new(),
    );
    config.tuning = tuning(arguments);
    PeerTransport::start(config).await.expect("start transport")
}

/// The echoing member: answers every ping, stamping when it received and answered it;
/// drains snapshots and reports when each one completed.
async fn echo(transport: PeerTransport, mut incoming: mpsc::Receiver<Incoming>) {
    while let Some(item) = incoming.recv().await {
        match item {
            Incoming::Message { from, bytes } => {
                let received_at = monotonic_nanos();
                let mut reply = BytesMut::from(&bytes[..]);
                reply[17..25].copy_from_slice(&received_at.to_le_bytes());
                reply[25..33].copy_from_slice(&monotonic_nanos().to_le_bytes());
                if transport.send(from, reply.freeze()).is_err() {
                    eprintln!("echo: reply dropped");
                }
            }
            Incoming::Snapshot { from, mut data, .. } => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    let mut bytes = 0u64;
                    while let Some(chunk) = data.next_chunk().await.expect("snapshot chunk") {
                        bytes += chunk.len() as u64;
                    }
                    // Tell the driver when the last byte arrived (kind 2 message).
                    let mut done = BytesMut::new();
                    done.put_u8(2);
                    done.put_u64_le(bytes);
                    done.put_u64_le(monotonic_nanos());
                    transport
                        .send(from, done.freeze())
                        .expect("report snapshot");
                });
            }
            Incoming::RemovedFromCluster { .. } | Incoming::HashKv { .. } => {}
        }
    }
}

struct Sample {
    round_trip: u64,
    there: u64,
    back: u64,
}

fn ping(sequence: u64, message_bytes: usize) -> Bytes {
    let mut message = BytesMut::with_capacity(message_bytes.max(HEADER_BYTES));
    message.put_u8(KIND_PING);
    message.put_u64_le(sequence);
    message.put_u64_le(monotonic_nanos());
    message.put_u64_le(0);
    message.put_u64_le(0);
    message.resize(message_bytes.max(HEADER_BYTES), 0xa5);
    message.freeze()
}

/// Waits for the answer to ping `sequence`; other messages go to `others`.
async fn pong(
    incoming: &mut mpsc::Receiver<Incoming>,
    sequence: u64,
    others: &mut Vec<Bytes>,
) -> Sample {
    loop {
        let Some(Incoming::Message { bytes, .. }) = incoming.recv().await else {
            panic!("transport stopped");
        };
        let received = monotonic_nanos();
        if bytes[0] != KIND_PING {
            others.push(bytes);
            continue;
        }
        let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("field"));
        if field(1) != sequence {
            continue;
        }
        let (sent, echo_received, echo_sent) = (field(9), field(17), field(25));
        return Sample {
            round_trip: received - sent,
            there: echo_received - sent,
            back: received - echo_sent,
        };
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index] as f64 / 1000.0
}

fn report(label: &str, samples: &[Sample]) {
    let summary = |values: Vec<u64>| {
        let mut values = values;
        values.sort_unstable();
        format!(
            "p50 {:7.1} µs  p99 {:7.1} µs  p99.9 {:7.1} µs",
            percentile(&values, 0.50),
            percentile(&values, 0.99),
            percentile(&values, 0.999)
        )
    };
    println!("{label} ({} samples)", samples.len());
    println!(
        "  round trip     {}",
        summary(samples.iter().map(|s| s.round_trip).collect())
    );
    println!(
        "  one way there  {}",
        summary(samples.iter().map(|s| s.there).collect())
    );
    println!(
        "  one way back   {}",
        summary(samples.iter().map(|s| s.back).collect())
    );
}

/// The driving member: latency, then snapshot throughput with latency alongside.
async fn drive(
    arguments: &Arguments,
    transport: PeerTransport,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    let mut others = Vec::new();
    // Wait for the link: ping until one comes back.
    let mut sequence = 0u64;
    loop {
        sequence += 1;
        let _ignored = transport.send(ECHO_ID, ping(sequence, arguments.message_bytes));
        let answer = tokio::time::timeout(
            Duration::from_millis(200),
            pong(&mut incoming, sequence, &mut others),
        )
        .await;
        if answer.is_ok() {
            break;
        }
    }
    let warmup = arguments.round_trips / 10;
    let mut samples = Vec::with_capacity(arguments.round_trips);
    for round in 0..warmup + arguments.round_trips {
        sequence += 1;
        transport
            .send(ECHO_ID, ping(sequence, arguments.message_bytes))
            .expect("queue ping");
        let sample = pong(&mut incoming, sequence, &mut others).await;
        if round >= warmup {
            samples.push(sample);
        }
    }
    report(
        &format!("{}-byte message, idle link", arguments.message_bytes),
        &samples,
    );

    if arguments.snapshot_mib == 0 {
        return;
    }
    let chunk_bytes = arguments.chunk_kib * 1024;
    let total_bytes = arguments.snapshot_mib * 1024 * 1024;
    let chunk = Bytes::from(
        (0..chunk_bytes)
            .map(|index| (index * 7 + 3) as u8)
            .collect::<Vec<_>>(),
    );
    let chunks = total_bytes / chunk_bytes;
    let data =
        futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let started = monotonic_nanos();
    let mut sending = transport.send_snapshot(ECHO_ID, Bytes::from_static(b"bench"), data);
    // Ping every 1 ms while the snapshot streams.
    let mut during = Vec::new();
    let sent = loop {
        sequence += 1;
        transport
            .send(ECHO_ID, ping(sequence, arguments.message_bytes))
            .expect("queue ping");
        let sample = pong(&mut incoming, sequence, &mut others).await;
        during.push(sample);
        tokio::select! {
            result = &mut sending => break result.expect("snapshot sent"),
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    };
    let sender_done = monotonic_nanos();
    // The echo reports when it read the last byte.
    let receiver_done = loop {
        if let Some(report) = others.iter().find(|bytes| bytes[0] == 2) {
            assert_eq!(
                u64::from_le_bytes(report[1..9].try_into().expect("bytes")),
                sent.bytes
            );
            break u64::from_le_bytes(report[9..17].try_into().expect("time"));
        }
        match incoming.recv().await {
            Some(Incoming::Message { bytes, .. }) => others.push(bytes),
            Some(_) => {}
            None => panic!("transport stopped"),
        }
    };
    let mib = sent.bytes as f64 / (1024.0 * 1024.0);
    let megabytes = sent.bytes as f64 / 1e6;
    let receiver_seconds = (receiver_done - started) as f64 / 1e9;
    let sender_seconds = (sender_done - started) as f64 / 1e9;
    println!(
        "snapshot {mib:.0} MiB in {}-KiB chunks: received in {receiver_seconds:.3} s = {:.0} MB/s \
         (sender saw it acknowledged after {sender_seconds:.3} s)",
        arguments.chunk_kib,
        megabytes / receiver_seconds
    );
    report(
        &format!(
            "{}-byte message, one every 1 ms while the snapshot streams",
            arguments.message_bytes
        ),
        &during,
    );
    let stats = transport.stats();
    println!(
        "driver stats: sent {} messages, links {}, dropped (full/unreachable) {}/{}",
        stats.messages_sent,
        stats.links_established,
        stats.dropped_queue_full,
        stats.dropped_unreachable
    );
}

fn main() {
    let arguments = Arguments::parse();
    if let Some(driver) = arguments.echo_for {
        // Child process of `--processes`: echo until the parent closes our stdin.
        pin(&arguments, 1);
        let runtime = new_runtime();
        runtime.block_on(async {
            let (transport, incoming) = start(&arguments, ECHO_ID).await;
            transport.add_peer(DRIVER_ID, driver).expect("add driver");
            println!("{}", transport.local_addr().expect("address"));
            std::io::stdout().flush().expect("flush");
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
            });
            tokio::select! {
                () = echo(transport, incoming) => {}
                _ = stdin_closed => {}
            }
        });
        return;
    }

    println!(
        "peer_bench: {} ({}), congestion {}, gso {}, socket buffer {:?}, stream window {}, send window {}, mtu bound {:?}",
        if arguments.processes {
            "two processes"
        } else {
            "two threads of one process"
        },
        if arguments.no_pin {
            "not pinned"
        } else {
            "pinned to cores 0 and 1"
        },
        arguments.congestion,
        !arguments.no_gso,
        tuning(&arguments).socket_buffer_bytes,
        tuning(&arguments).stream_receive_window_bytes,
        tuning(&arguments).send_window_bytes_min,
        tuning(&arguments).mtu_upper_bound
    );
    pin(&arguments, 0);
    let runtime = new_runtime();
    let (transport, incoming) = runtime.block_on(start(&arguments, DRIVER_ID));
    let driver_address = transport.local_addr().expect("address");

    let mut child = None;
    let echo_address = if arguments.processes {
        let mut command = Command::new(std::env::current_exe().expect("current executable"));
        command
            .args(std::env::args().skip(1))
            .arg("--echo-for")
            .arg(driver_address.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut process = command.spawn().expect("spawn the echo process");
        let mut line = String::new();
        BufReader::new(process.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("echo address");
        child = Some(process);
        line.trim().parse().expect("echo address")
    } else {
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let echo_arguments = arguments.clone();
        std::thread::spawn(move || {
            pin(&echo_arguments, 1);
            let runtime = new_runtime();
            runtime.block_on(async {
                let (transport, incoming) = start(&echo_arguments, ECHO_ID).await;
                transport.add_peer(DRIVER_ID, driver_address).expect("add");
                address_sender
                    .send(transport.local_addr().expect("address"))
                    .expect("send address");
                echo(transport, incoming).await;
            });
        });
        address_receiver.recv().expect("echo address")
    };

    runtime.block_on(async {
        transport.add_peer(ECHO_ID, echo_address).expect("add echo");
        drive(&arguments, transport.clone(), incoming).await;
        transport.shutdown().await;
    });
    if let Some(mut child) = child {
        drop(child.stdin.take());
        child.wait().expect("echo process");
    }
}
