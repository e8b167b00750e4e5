//! `rivet-bench memory` end to end with small counts: rivet and etcd started, keys loaded in
//! steps, watch shapes opened, every figure present.

mod common;

use std::time::Duration;

#[test]
fn memory_end_to_end() {
    let etcd = common::etcd_binary();
    let rivet = common::rivet_binary();
    let output = common::bench(
        &[
            "--json",
            "memory",
            "--keys",
            "300,600",
            "--streams",
            "20",
            "--watch-streams",
            "2",
            "--watch-per-stream",
            "50",
            "--rivet",
            rivet.to_str().expect("utf-8 path"),
            "--etcd",
            etcd.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(240),
    );
    assert!(output.success, "memory failed:\n{}", output.stderr);
    let report: serde_json::Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", output.stdout));
    let servers = report["servers"].as_array().expect("servers");
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["server"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rivet", "etcd"]);
    for server in servers {
        assert!(
            server["baseline_rss_bytes"].as_u64().unwrap() > 0,
            "{server}"
        );
        let steps = server["storage"].as_array().expect("storage");
        let keys: Vec<u64> = steps.iter().map(|s| s["keys"].as_u64().unwrap()).collect();
        assert_eq!(keys, [300, 600, 600], "{server}");
        assert_eq!(steps[2]["extra_versions"], 300, "{server}");
        for step in steps {
            assert!(step["rss_bytes"].as_u64().unwrap() > 0, "{server}");
            assert!(step["db_size_bytes"].as_i64().unwrap() > 0, "{server}");
        }
        let shapes = server["watch"].as_array().expect("watch");
        assert_eq!(shapes.len(), 2, "{server}");
        assert_eq!(shapes[1]["watchers_per_stream"], 50, "{server}");
        assert!(server["bytes_per_watcher"].is_number(), "{server}");
        assert!(server["bytes_per_watch_stream"].is_number(), "{server}");
    }
}
