//! Helpers of the integration tests: the etcd and rivet binaries, servers, and running
//! rivet-bench with a time limit.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rivet_bench::servers::{find_on_path, Cluster, Kind};

/// etcd on PATH; the tests need it (CI installs etcd 3.4).
pub fn etcd_binary() -> PathBuf {
    find_on_path(Path::new("etcd")).unwrap_or_else(|| {
        panic!(
            "etcd is not on PATH: these tests run rivet-bench against a real etcd; install etcd 3.4 (e.g. /usr/bin/etcd) and run them again"
        )
    })
}

/// The rivet binary of this build (target/<profile>/rivet), built first if missing.
pub fn rivet_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    BUILT
        .get_or_init(|| {
            // current_exe: target/<profile>/deps/<test>-<hash>
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary in target/<profile>/deps")
                .to_path_buf();
            let rivet = profile_dir.join("rivet");
            if rivet.is_file() {
                return rivet;
            }
            let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace root");
            let mut build = Command::new(env!("CARGO"));
            build
                .current_dir(workspace)
                .args(["build", "-p", "rivet-net", "--bin", "rivet", "--target-dir"])
                .arg(&target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            eprintln!("building rivet: {build:?}");
            let status = build.status().expect("running cargo build");
            assert!(status.success(), "cargo build --bin rivet failed");
            assert!(
                rivet.is_file(),
                "{} missing after the build",
                rivet.display()
            );
            rivet
        })
        .clone()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Starts a one-member server of `kind`; it is killed when dropped.
pub fn start(kind: Kind) -> Cluster {
    let binary = match kind {
        Kind::Etcd => etcd_binary(),
        Kind::Rivet => rivet_binary(),
    };
    runtime()
        .block_on(Cluster::start(kind, &binary, 1, Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("starting {kind}: {e:#}"))
}

pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs rivet-bench with `args`, killing it (and failing) after `limit`.
pub fn bench(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rivet-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting rivet-bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for rivet-bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("rivet-bench {args:?} still running after {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        success: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs a workload with `--json` and returns its report, failing on a non-zero exit.
pub fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = bench(&all, Duration::from_secs(120));
    assert!(
        output.success,
        "rivet-bench {all:?} failed:\n{}",
        output.stderr
    );
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("rivet-bench {all:?}: bad JSON ({e}):\n{}", output.stdout))
}

/// Every workload, briefly (`--total 50`), against `endpoint`: each report holds the
/// requests asked for and no errors.
pub fn every_subcommand(endpoint: &str, scratch: &Path) {
    let total = "50";
    let hgrm = scratch.join("put.hgrm");
    let svg = scratch.join("put.svg");
    let timeline_svg = scratch.join("put-timeline.svg");
    let timeline_arg = timeline_svg.to_str().expect("utf-8 path").to_string();
    let hgrm_arg = hgrm.to_str().expect("utf-8 path").to_string();
    let svg_arg = svg.to_str().expect("utf-8 path").to_string();
    // (arguments, command, requests expected)
    let cases: Vec<(Vec<&str>, &str, u64)> = vec![
        (vec!["put"], "put", 50),
        (
            vec![
                "put",
                "--sequential-keys",
                "--key-space-size",
                "10",
                "--val-size",
                "64",
                "--hdr-out",
                &hgrm_arg,
                "--plot",
                &svg_arg,
                "--timeline",
                &timeline_arg,
                "--timeline-interval",
                "0.05",
            ],
            "put",
            50,
        ),
        (vec!["--target-leader", "put"], "put", 50),
        (vec!["range", "foo"], "range", 50),
        (
            vec!["range", "a", "z", "--consistency", "s", "--limit", "5"],
            "range",
            50,
        ),
        (
            vec!["txn-put", "--txn-ops", "2", "--key-space-size", "10"],
            "txn-put",
            50,
        ),
        (
            vec!["txn-mixed", "--key-space-size", "10", "--rw-ratio", "2"],
            "txn-mixed",
            50,
        ),
        (vec!["txn-mixed", "--consistency", "s"], "txn-mixed", 50),
        (
            vec!["watch", "--streams", "1", "--watch-per-stream", "1"],
            "watch",
            50,
        ),
        // 4 watchers over 2 keys, 25 puts on each key: 100 events.
        (
            vec![
                "watch",
                "--streams",
                "2",
                "--watch-per-stream",
                "2",
                "--watched-key-total",
                "2",
            ],
            "watch",
            100,
        ),
        (
            vec![
                "watch-latency",
                "--streams",
                "1",
                "--watchers-per-stream",
                "1",
                "--put-rate",
                "0",
            ],
            "watch-latency",
            50,
        ),
        (vec!["lease-keepalive"], "lease-keepalive", 50),
    ];
    for (workload, command, requests) in cases {
        let mut args = vec![
            "--endpoints",
            endpoint,
            "--total",
            total,
            "--conns",
            "2",
            "--clients",
            "4",
        ];
        args.extend(workload.iter().copied());
        let report = bench_json(&args);
        assert_eq!(report["command"], command, "{args:?}: {report}");
        assert_eq!(report["requests"], requests, "{args:?}: {report}");
        assert_eq!(report["errors"], 0, "{args:?}: {report}");
        assert!(report["workload"]
            .as_str()
            .is_some_and(|w| w.starts_with(command)));
        let percentiles = report["percentiles"].as_array().expect("percentiles");
        assert_eq!(percentiles.len(), 9, "{report}");
        for phase in report["phases"].as_array().into_iter().flatten() {
            assert_eq!(phase["errors"], 0, "{args:?}: {phase}");
        }
        // The closed loops' timelines count every answer once.
        if !command.starts_with("watch") {
            let points = report["timeline"]["points"]
                .as_array()
                .unwrap_or_else(|| panic!("{args:?}: no timeline: {report}"));
            assert!(!points.is_empty(), "{args:?}: {report}");
            let answered: u64 = points.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
            assert_eq!(answered, requests, "{args:?}: {report}");
        }
    }
    // A server's error reaches the report with its gRPC code and message: a put over
    // etcd's 1.5 MiB request limit (under gRPC's 2 MiB receive limit).
    let report = bench_json(&[
        "--endpoints",
        endpoint,
        "--total",
        "2",
        "put",
        "--val-size",
        "1600000",
    ]);
    assert_eq!(report["requests"], 0, "{report}");
    assert_eq!(report["errors"], 2, "{report}");
    assert_eq!(
        report["first_error"], "InvalidArgument: etcdserver: request is too large",
        "{report}"
    );
    let hgrm = std::fs::read_to_string(&hgrm).expect("--hdr-out written");
    let parsed = rivet_bench::hgrm::parse(&hgrm).expect(".hgrm parses");
    assert_eq!(parsed.total_count, 50);
    assert_eq!(parsed.rows.last().expect("rows").total_count, 50);
    let svg = std::fs::read_to_string(&svg).expect("--plot written");
    assert_eq!(
        rivet_bench::plot::series_in(&svg).expect("plot data").len(),
        1
    );
    check_timeline_svg(&timeline_svg, 1);
}

/// `--timeline`'s SVG holds `series` runs whose points count their requests, and the CSV
/// next to it one line per point.
pub fn check_timeline_svg(svg: &Path, series: usize) -> Vec<rivet_bench::timeline::Series> {
    let text = std::fs::read_to_string(svg)
        .unwrap_or_else(|e| panic!("--timeline {} not written: {e}", svg.display()));
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    assert_eq!(text.matches("<polyline").count(), 4 * series, "{text}");
    let all = rivet_bench::timeline::series_in(&text).expect("timeline data");
    assert_eq!(all.len(), series, "{all:?}");
    let csv = std::fs::read_to_string(rivet_bench::timeline::csv_path(svg)).expect("csv");
    let points: usize = all.iter().map(|s| s.timeline.points.len()).sum();
    assert_eq!(csv.lines().count(), 1 + points, "{csv}");
    for s in &all {
        assert!(!s.timeline.points.is_empty(), "{s:?}");
        for p in &s.timeline.points {
            assert!(p.max_seconds >= p.p99_seconds && p.p99_seconds >= p.p50_seconds);
        }
    }
    all
}
