//! `rivet-bench compare` end to end with tiny totals: rivet and etcd started, the default
//! workloads run against each, one table out.

mod common;

use std::time::Duration;

#[test]
fn compare_one_member_end_to_end() {
    let etcd = common::etcd_binary();
    let rivet = common::rivet_binary();
    let output = common::bench(
        &[
            "--total",
            "40",
            "--json",
            "compare",
            "--members",
            "1",
            "--rivet",
            rivet.to_str().expect("utf-8 path"),
            "--etcd",
            etcd.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(240),
    );
    assert!(output.success, "compare failed:\n{}", output.stderr);
    let table: serde_json::Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", output.stdout));
    assert_eq!(table["command"], "compare");
    assert_eq!(table["rivet"]["members"], 1);
    assert_eq!(table["etcd"]["members"], 1);
    let rows = table["workloads"].as_array().expect("workloads");
    let labels: Vec<&str> = rows.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "put conns=1 clients=1",
            "put conns=100 clients=1000",
            "range linearizable conns=100 clients=1000",
            "range serializable conns=100 clients=1000",
        ]
    );
    for row in rows {
        for server in ["rivet", "etcd"] {
            let cell = &row[server];
            assert_eq!(cell["requests"], 40, "{server}: {row}");
            assert_eq!(cell["errors"], 0, "{server}: {row}");
            assert!(cell["qps"].as_f64().unwrap() > 0.0, "{row}");
            assert!(cell["p99_seconds"].as_f64().unwrap() > 0.0, "{row}");
            assert!(cell["peak_rss_bytes"].as_u64().unwrap() > 0, "{row}");
            assert!(cell["cpu_seconds_per_op"].as_f64().unwrap() >= 0.0, "{row}");
            assert!(cell.get("error").is_none(), "{row}");
        }
        assert!(row["ratio"]["qps"].as_f64().unwrap() > 0.0, "{row}");
        // Latency over time: each server's run, every answer in one interval.
        let timelines = row["timelines"].as_array().expect("timelines");
        let servers: Vec<&str> = timelines
            .iter()
            .map(|t| t["server"].as_str().unwrap())
            .collect();
        assert_eq!(servers, ["rivet", "etcd"], "{row}");
        for t in timelines {
            let answered: u64 = t["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| p["requests"].as_u64().unwrap())
                .sum();
            assert_eq!(answered, 40, "{t}");
        }
    }
}

#[test]
fn compare_a_given_workload_as_text_with_a_plot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("compare.svg");
    let timeline = dir.path().join("timeline.svg");
    let rivet = common::rivet_binary();
    common::etcd_binary();
    let output = common::bench(
        &[
            "--total",
            "30",
            "--plot",
            svg.to_str().expect("utf-8 path"),
            "--timeline",
            timeline.to_str().expect("utf-8 path"),
            "compare",
            "--rivet",
            rivet.to_str().expect("utf-8 path"),
            "--workload",
            "--clients 2 txn-put",
            "watch-latency",
            "--streams",
            "1",
            "--watchers-per-stream",
            "2",
            "--put-rate",
            "0",
        ],
        Duration::from_secs(240),
    );
    assert!(output.success, "compare failed:\n{}", output.stderr);
    let text = &output.stdout;
    assert!(text.contains("WORKLOAD"), "{text}");
    assert!(
        text.contains("txn-put txn-ops=1 conns=1 clients=2"),
        "{text}"
    );
    assert!(text.contains("watch-latency conns=1 clients=1"), "{text}");
    assert_eq!(text.matches("rivet/etcd").count(), 2, "{text}");
    assert!(!text.contains("failed"), "{text}");
    let series =
        rivet_bench::plot::series_in(&std::fs::read_to_string(&svg).expect("svg")).expect("data");
    assert_eq!(series.len(), 4, "{series:?}");
    // One time series per workload with a closed loop (watch-latency has none): rivet
    // and etcd on one plot.
    let txn_put = dir
        .path()
        .join("timeline-txn-put-txn-ops-1-conns-1-clients-2.svg");
    assert!(
        text.contains(&format!(
            "timeline: txn-put txn-ops=1 conns=1 clients=2: {}",
            txn_put.display()
        )),
        "{text}"
    );
    let drawn = common::check_timeline_svg(&txn_put, 2);
    let labels: Vec<&str> = drawn.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["rivet", "etcd"]);
    let files = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(
        files, 3,
        "compare.svg and the txn-put timeline's SVG and CSV"
    );
}

/// `--setup-auth --user`: both servers get root and the bench user with readwrite on the
/// workloads' keys, auth is enabled, and every workload runs authenticated without errors
/// (a put and a range, the workloads of the auth benchmark).
#[test]
fn compare_with_auth_set_up_on_both_servers() {
    let rivet = common::rivet_binary();
    let etcd = common::etcd_binary();
    let output = common::bench(
        &[
            "--total",
            "40",
            "--json",
            "--user",
            "bench:benchpw",
            "compare",
            "--setup-auth",
            "--rivet",
            rivet.to_str().expect("utf-8 path"),
            "--etcd",
            etcd.to_str().expect("utf-8 path"),
            "--workload",
            "--conns 2 --clients 4 put --key-size 8 --sequential-keys",
            "--conns",
            "2",
            "--clients",
            "4",
            "range",
            "foo",
        ],
        Duration::from_secs(240),
    );
    assert!(output.success, "compare failed:\n{}", output.stderr);
    let table: serde_json::Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", output.stdout));
    let notes = table["notes"].to_string();
    assert!(notes.contains("auth on"), "{notes}");
    let rows = table["workloads"].as_array().expect("workloads");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        for server in ["rivet", "etcd"] {
            let cell = &row[server];
            assert_eq!(cell["requests"], 40, "{server}: {row}");
            assert_eq!(cell["errors"], 0, "{server}: {row}");
            assert!(cell.get("error").is_none(), "{row}");
        }
    }
}
