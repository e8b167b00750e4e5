//! Time and peak memory of writing and reading an etcd snapshot of many keys.
//!
//! ```text
//! cargo run --release -p rivet-engine --example etcd_backend_bench -- write FILE 1000000
//! cargo run --release -p rivet-engine --example etcd_backend_bench -- read FILE
//! ```
//!
//! `write` streams N keys (one version each, 256-byte values, every tenth with a lease)
//! through the snapshot writer; `read` checks the trailer and decodes every version.
//! Run them as separate processes: each reports its own peak RSS (VmHWM).

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use rivet_engine::etcd_backend::schema::{BackendMeta, BackendState, KeyVersion, Lease};
use rivet_engine::etcd_backend::snapshot_file::{open_snapshot, write_snapshot_file};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: etcd_backend_bench write FILE N | read FILE";
    let (Some(mode), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let path = Path::new(path);
    let started = Instant::now();
    match mode.as_str() {
        "write" => {
            let keys: u64 = args
                .get(3)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1_000_000);
            let value = Bytes::from(vec![b'x'; 256]);
            let versions = (0..keys).map(|i| {
                let revision = i as i64 + 2;
                Ok::<_, std::io::Error>(KeyVersion {
                    key: Bytes::from(format!("/registry/key/{i:08}")),
                    mod_revision: revision,
                    sub_revision: 0,
                    create_revision: revision,
                    version: 1,
                    lease: if i % 10 == 0 { 0x1234 } else { 0 },
                    value: Some(value.clone()),
                })
            });
            let state = BackendState {
                meta: BackendMeta {
                    consistent_index: keys + 10,
                    cluster_version: Some("3.4.0".into()),
                    ..BackendMeta::default()
                },
                leases: vec![Lease {
                    id: 0x1234,
                    ttl: 3600,
                    remaining_ttl: 0,
                }],
                ..BackendState::default()
            };
            let summary = write_snapshot_file(path, &state, versions).expect("write");
            println!(
                "wrote {keys} keys: {} bytes, {} pages, status {:x}/{}/{} in {:.2} s, peak RSS {} KiB",
                summary.file_bytes,
                summary.backend.db.pages,
                summary.backend.status.hash,
                summary.backend.status.revision,
                summary.backend.status.total_keys,
                started.elapsed().as_secs_f64(),
                peak_rss_kib()
            );
        }
        "read" => {
            let opened = open_snapshot(path, false).expect("open");
            let hashed = started.elapsed();
            let state = opened.backend.state().expect("state");
            let mut versions = 0u64;
            let mut value_bytes = 0u64;
            for version in opened.backend.key_versions().expect("versions") {
                let version = version.expect("decode");
                versions += 1;
                value_bytes += version.value.map_or(0, |v| v.len() as u64);
            }
            println!(
                "read {versions} versions ({value_bytes} value bytes, {} leases): trailer check {:.2} s, total {:.2} s, peak RSS {} KiB",
                state.leases.len(),
                hashed.as_secs_f64(),
                started.elapsed().as_secs_f64(),
                peak_rss_kib()
            );
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
