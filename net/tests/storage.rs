//! The storage lifecycle (issue 14): page-file garbage collection gives space back after
//! delete + compact + defragment; a defragmentation never stops reads and writes; etcd's
//! NOSPACE recovery runbook works (against etcd 3.4 in the same run); `kill -9` at each
//! step of a segment rewrite loses nothing and leaves no garbage.
//!
//! Members run with `RIVET_TEST_PAGE_SEGMENT_BYTES` small, so that a few megabytes span
//! many segments.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{etcdctl, etcdctl_ok, http_get, runtime, Etcd, Rivet};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

/// 256 KiB segments: 10 MB of data is 40 of them.
const SEGMENT_BYTES: &str = "262144";

fn start(extra: &[&str]) -> Rivet {
    Rivet::start_with_env(extra, &[("RIVET_TEST_PAGE_SEGMENT_BYTES", SEGMENT_BYTES)])
}

async fn connect(endpoint: &str) -> Client {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect([format!("http://{endpoint}")], Some(options))
        .await
        .expect("connect")
}

/// `dbSize` and `dbSizeInUse` from etcd's metrics.
fn sizes(endpoint: &str) -> (u64, u64) {
    let body = http_get(endpoint, "/metrics").expect("metrics");
    let gauge = |name: &str| -> u64 {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    (
        gauge("etcd_mvcc_db_total_size_in_bytes"),
        gauge("etcd_mvcc_db_total_size_in_use_in_bytes"),
    )
}

/// `endpoint status -w json` fields: dbSize, dbSizeInUse.
fn status_sizes(endpoint: &str) -> (u64, u64) {
    let json = etcdctl_ok(endpoint, &["endpoint", "status", "-w", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    let status = &value[0]["Status"];
    (
        status["dbSize"].as_u64().expect("dbSize"),
        status["dbSizeInUse"].as_u64().unwrap_or(0),
    )
}

/// Every key under `prefix` with its revisions and value, as the member answers.
async fn dump(client: &mut Client, prefix: &str) -> BTreeMap<String, (i64, i64, i64, Vec<u8>)> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.value().to_vec(),
                ),
            )
        })
        .collect()
}

async fn fill(client: &mut Client, prefix: &str, keys: usize, value_bytes: usize) {
    let value = vec![b'x'; value_bytes];
    for i in 0..keys {
        client
            .put(format!("{prefix}{i:06}"), value.clone(), None)
            .await
            .expect("put");
    }
}

async fn compact_now(client: &mut Client) -> i64 {
    let revision = client
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    revision
}

#[test]
fn space_comes_back_after_delete_compact_defragment() {
    let rivet = start(&["--shards", "2"]);
    let endpoint = rivet.endpoint();
    runtime().block_on(async {
        let mut client = connect(&endpoint).await;
        fill(&mut client, "dead/", 400, 20_000).await;
        fill(&mut client, "live/", 100, 1_000).await;
        let live_before = dump(&mut client, "live/").await;
        let (full, _) = sizes(&endpoint);
        assert!(full > 8_000_000, "dbSize {full} after 8 MB of puts");

        client
            .delete("dead/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .expect("delete");
        compact_now(&mut client).await;
        let (after_compact, in_use_after_compact) = sizes(&endpoint);
        assert!(
            in_use_after_compact < full / 4,
            "dbSizeInUse {in_use_after_compact} still near dbSize {after_compact}"
        );

        client
            .maintenance_client()
            .defragment()
            .await
            .expect("defragment");
        let (size, in_use) = sizes(&endpoint);
        let (status_size, status_in_use) = status_sizes(&endpoint);
        println!(
            "dbSize {full} → {after_compact} (compact) → {size} (defragment); in use {in_use}; status {status_size}/{status_in_use}"
        );
        // What is left: the live records, a segment header each, checkpoint records.
        assert!(
            size <= in_use + 64 * 1024,
            "dbSize {size} not within 64 KiB of dbSizeInUse {in_use}"
        );
        assert!(size < full / 20, "dbSize {size} after freeing ~8 MB of {full}");
        assert_eq!((status_size, status_in_use), (size, in_use));
        assert_eq!(dump(&mut client, "live/").await, live_before);
        assert!(dump(&mut client, "dead/").await.is_empty());
    });
    // The rewritten files load again.
    let mut rivet = rivet;
    rivet.kill9();
    rivet.restart();
    let (size, in_use) = sizes(&rivet.endpoint());
    assert!(
        size <= in_use + 64 * 1024,
        "after a restart: {size} / {in_use}"
    );
    assert_no_garbage(&rivet.data_dir);
}

/// After a restart the sequencer reads restored values through its own mappings of the
/// shards' page segments. A defragmentation that rewrites and deletes those segments must
/// not leave them mapped (deleted but allocated: `du` would not go down, and etcd's
/// NOSPACE runbook would not free the disk): the sequencer copies the values it still
/// needs and lets the mappings go. The values it then answers are the same.
#[test]
fn a_restart_then_defragment_leaves_no_deleted_segment_mapped() {
    let mut rivet = start(&["--shards", "2"]);
    let live_value = |i: usize| format!("live-{i:04}-").repeat(1 + i % 50).into_bytes();
    let live_before = runtime().block_on(async {
        let mut client = connect(&rivet.endpoint()).await;
        // Live keys spread over segments that are mostly dead bytes once `dead/` goes.
        let dead = vec![b'x'; 20_000];
        for i in 0..300 {
            client
                .put(format!("dead/{i:06}"), dead.clone(), None)
                .await
                .expect("put");
            if i % 3 == 0 {
                client
                    .put(format!("live/{i:06}"), live_value(i), None)
                    .await
                    .expect("put");
            }
        }
        dump(&mut client, "live/").await
    });
    assert_eq!(live_before.len(), 100);
    // A graceful stop checkpoints: the next start replays no put from the WAL, so every
    // head is restored from the page files, its value read through the segments.
    rivet.stop();
    rivet.restart();
    let endpoint = rivet.endpoint();
    let data_dir = rivet.data_dir.canonicalize().expect("data dir");
    let pid = rivet.pid();
    assert!(
        !mapped_page_files(pid, &data_dir).is_empty(),
        "the restarted member maps its page segments"
    );
    runtime().block_on(async {
        let mut client = connect(&endpoint).await;
        client
            .delete(
                "dead/",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("delete");
        compact_now(&mut client).await;
        client
            .maintenance_client()
            .defragment()
            .await
            .expect("defragment");
    });
    // The release travels from the shards to the raft core after each rewrite: wait for
    // it, with a bound far above what it takes (a deleted segment stayed mapped until the
    // next restart before).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let deleted: Vec<String> = mapped_page_files(pid, &data_dir)
            .into_iter()
            .filter(|line| line.ends_with("(deleted)"))
            .collect();
        if deleted.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deleted page segments still mapped:\n{}",
            deleted.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (size, in_use) = sizes(&endpoint);
    assert!(
        size <= in_use + 64 * 1024,
        "dbSize {size} not within 64 KiB of dbSizeInUse {in_use}"
    );
    runtime().block_on(async {
        let mut client = connect(&endpoint).await;
        assert_eq!(dump(&mut client, "live/").await, live_before);
        // VALUE compares and prev_kv read the values the sequencer copied.
        for i in (0..300).step_by(3) {
            let key = format!("live/{i:06}");
            let response = client
                .txn(
                    Txn::new()
                        .when([Compare::value(key.clone(), CompareOp::Equal, live_value(i))])
                        .and_then([TxnOp::put(
                            key.clone(),
                            "",
                            Some(
                                etcd_client::PutOptions::new()
                                    .with_ignore_value()
                                    .with_prev_key(),
                            ),
                        )]),
                )
                .await
                .expect("txn");
            assert!(response.succeeded(), "{key}: the VALUE compare failed");
            let Some(etcd_client::TxnOpResponse::Put(put)) = response.op_responses().pop() else {
                panic!("{key}: no put response");
            };
            let prev = put.prev_key().expect("prev_kv");
            assert_eq!(prev.value(), live_value(i), "{key}: prev_kv");
            let now = client.get(key.clone(), None).await.expect("get");
            assert_eq!(now.kvs()[0].value(), live_value(i), "{key}: ignore_value");
        }
    });
}

/// The lines of `/proc/<pid>/maps` that map a page segment file under `data_dir`
/// (deleted ones end in `(deleted)`).
fn mapped_page_files(pid: u32, data_dir: &Path) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let dir = data_dir.to_string_lossy().into_owned();
    maps.lines()
        .filter(|line| line.contains(&dir) && line.contains(".page"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn reads_and_writes_go_on_during_a_defragment() {
    let rivet = start(&["--shards", "2"]);
    let endpoint = rivet.endpoint();
    runtime().block_on(async {
        let mut client = connect(&endpoint).await;
        // A large keyspace for a debug build: 40,000 keys, half of them then deleted.
        let mut txn_keys = 0;
        while txn_keys < 40_000 {
            let ops: Vec<TxnOp> = (0..100)
                .map(|i| TxnOp::put(format!("big/{:06}", txn_keys + i), vec![b'v'; 200], None))
                .collect();
            client.txn(Txn::new().and_then(ops)).await.expect("txn");
            txn_keys += 100;
        }
        for chunk in 0..200 {
            client
                .delete(
                    format!("big/{:06}", chunk * 200),
                    Some(etcd_client::DeleteOptions::new().with_range(format!(
                        "big/{:06}",
                        chunk * 200 + 100
                    ))),
                )
                .await
                .expect("delete");
        }
        compact_now(&mut client).await;

        let defragmenting = Arc::new(AtomicBool::new(true));
        let during = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for worker in 0..4 {
            let defragmenting = Arc::clone(&defragmenting);
            let during = Arc::clone(&during);
            let mut client = connect(&endpoint).await;
            workers.push(tokio::spawn(async move {
                let mut i = 0;
                while defragmenting.load(Ordering::SeqCst) {
                    let key = format!("during/{worker}/{i}");
                    client.put(key.clone(), "v", None).await.expect("put during defragment");
                    let got = client.get(key, None).await.expect("get during defragment");
                    assert_eq!(got.kvs().len(), 1);
                    let old = client
                        .get(format!("big/{:06}", 100 + (i % 100) * 200), None)
                        .await
                        .expect("read of a live key during defragment");
                    assert_eq!(old.kvs().len(), 1, "a live key vanished during defragment");
                    if defragmenting.load(Ordering::SeqCst) {
                        during.fetch_add(1, Ordering::SeqCst);
                    }
                    i += 1;
                }
            }));
        }
        // Let the workers get going, then defragment while they run.
        while during.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = during.load(Ordering::SeqCst);
        let (before, _) = sizes(&endpoint);
        client
            .maintenance_client()
            .defragment()
            .await
            .expect("defragment");
        let finished = during.load(Ordering::SeqCst);
        defragmenting.store(false, Ordering::SeqCst);
        for worker in workers {
            worker.await.expect("worker");
        }
        let (after, in_use) = sizes(&endpoint);
        println!(
            "{} reads+writes completed while the defragment ran; dbSize {before} → {after} (in use {in_use})",
            finished - started
        );
        assert!(
            finished > started,
            "no request completed while the defragment ran"
        );
        assert!(after < before, "defragment freed nothing: {before} → {after}");
        let left = client
            .get("big/", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .expect("count");
        assert_eq!(left.count(), 20_000);
    });
}

/// etcd's documented recovery from NOSPACE ("Space quota" in the maintenance guide): get
/// the revision, compact, defragment, disarm; then writes succeed again. The same script
/// against etcd 3.4 and rivet; both must let 5 of 5 later 700 KB txns through.
#[test]
fn nospace_recovery_works_as_etcds_runbook_says() {
    let quota = "8000000";
    let rivet = start(&["--quota-backend-bytes", quota]);
    let rivet_result = nospace_runbook(&rivet.endpoint());
    assert_eq!(rivet_result.after_recovery, 5, "rivet: {rivet_result:?}");
    if Etcd::available() {
        let etcd = Etcd::start(&["--quota-backend-bytes", quota]);
        let etcd_result = nospace_runbook(&etcd.endpoint());
        println!("etcd: {etcd_result:?}\nrivet: {rivet_result:?}");
        assert_eq!(etcd_result.after_recovery, 5, "etcd: {etcd_result:?}");
        assert!(etcd_result.hit_nospace && rivet_result.hit_nospace);
        assert_eq!(etcd_result.alarm_after, rivet_result.alarm_after);
    }
}

#[derive(Debug, Default)]
struct Runbook {
    hit_nospace: bool,
    written_before: usize,
    after_recovery: usize,
    alarm_after: String,
}

fn nospace_runbook(endpoint: &str) -> Runbook {
    let mut result = Runbook::default();
    runtime().block_on(async {
        let mut client = connect(endpoint).await;
        let value = vec![b'q'; 700_000];
        for i in 0..40 {
            let txn = Txn::new()
                .when([Compare::version(format!("big-{i}"), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(format!("big-{i}"), value.clone(), None)]);
            match client.txn(txn).await {
                Ok(_) => result.written_before += 1,
                Err(error) => {
                    assert!(
                        error.to_string().contains("database space exceeded"),
                        "{error}"
                    );
                    result.hit_nospace = true;
                    break;
                }
            }
        }
    });
    let alarms = etcdctl_ok(endpoint, &["alarm", "list"]);
    assert!(alarms.contains("NOSPACE"), "alarm list: {alarms}");
    // The runbook: delete what is not needed, compact to the current revision,
    // defragment, disarm.
    etcdctl_ok(endpoint, &["del", "big-", "--prefix"]);
    let status = etcdctl_ok(endpoint, &["endpoint", "status", "-w", "json"]);
    let value: serde_json::Value = serde_json::from_str(&status).expect("json");
    let revision = value[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision");
    etcdctl_ok(endpoint, &["compact", &revision.to_string(), "--physical"]);
    etcdctl_ok(endpoint, &["defrag"]);
    etcdctl_ok(endpoint, &["alarm", "disarm"]);
    runtime().block_on(async {
        let mut client = connect(endpoint).await;
        let value = vec![b'r'; 700_000];
        for i in 0..5 {
            let txn = Txn::new().and_then([TxnOp::put(format!("after-{i}"), value.clone(), None)]);
            if client.txn(txn).await.is_ok() {
                result.after_recovery += 1;
            }
        }
    });
    result.alarm_after = etcdctl_ok(endpoint, &["alarm", "list"]);
    result
}

/// The rewrite steps a `kill -9` can fall between (`engine/src/crash.rs`).
const GC_CRASH_POINTS: [&str; 4] = [
    "gc-copied",
    "gc-manifest-written",
    "gc-committed",
    "gc-deleted",
];

#[test]
fn kill_9_at_every_step_of_a_segment_rewrite_loses_nothing() {
    for point in GC_CRASH_POINTS {
        let started = std::time::Instant::now();
        let dir = tempfile::tempdir().expect("dir");
        let data_dir = dir.path().join("data.rivet");
        let env = [
            ("RIVET_TEST_PAGE_SEGMENT_BYTES", SEGMENT_BYTES),
            ("RIVET_TEST_CRASH_AT", point),
        ];
        let mut rivet = Rivet::start_in_with_env(&data_dir, &[], &env);
        let endpoint = rivet.endpoint();
        let log = rivet.log.clone();
        let before = runtime().block_on(async {
            let mut client = connect(&endpoint).await;
            let filled = async {
                fill(&mut client, "gone/", 60, 20_000).await;
                fill(&mut client, "kept/", 60, 3_000).await;
                client
                    .delete(
                        "gone/",
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                    .await
                    .expect("delete");
                fill(&mut client, "after/", 20, 100).await;
            };
            if let Err(panic) =
                futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(filled)).await
            {
                panic!(
                    "{point}: writing failed ({:?}); log:\n{}",
                    panic.downcast_ref::<String>(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let mut all = dump(&mut client, "").await;
            let revision = client
                .get("x", None)
                .await
                .expect("get")
                .header()
                .expect("h")
                .revision();
            all.insert("#revision".into(), (revision, 0, 0, Vec::new()));
            all
        });
        // The compaction makes a checkpoint, after which the background pass rewrites
        // the segments the deletes emptied; if it does not reach the crash point, the
        // defragment does. Either way the member dies under it.
        let _ = etcdctl(
            &endpoint,
            &["compact", &before["#revision"].0.to_string()],
            None,
        );
        if !rivet.exits_within(Duration::from_secs(3)) {
            let _ = etcdctl(&endpoint, &["defrag", "--command-timeout", "30s"], None);
        }
        println!(
            "{point}: compact and defrag sent after {:?}",
            started.elapsed()
        );
        rivet.wait_exit(std::time::Duration::from_secs(60));
        println!("{point}: died after {:?}", started.elapsed());
        let log = rivet.log_text();
        assert!(
            log.contains("test crash point reached") && log.contains(point),
            "{point}: not reached; log:\n{log}"
        );
        rivet.set_env(&[("RIVET_TEST_PAGE_SEGMENT_BYTES", SEGMENT_BYTES)]);
        rivet.restart();
        assert_no_garbage(&data_dir);
        let endpoint = rivet.endpoint();
        runtime().block_on(async {
            let mut client = connect(&endpoint).await;
            let mut after = dump(&mut client, "").await;
            let revision = client
                .get("x", None)
                .await
                .expect("get")
                .header()
                .expect("h")
                .revision();
            after.insert("#revision".into(), (revision, 0, 0, Vec::new()));
            assert_eq!(after, before, "{point}: the data after the restart");
            // And the rewrite can be done now.
            client
                .maintenance_client()
                .defragment()
                .await
                .expect("defragment after the restart");
            let mut again = dump(&mut client, "").await;
            again.insert("#revision".into(), (revision, 0, 0, Vec::new()));
            assert_eq!(again, before, "{point}: after the defragment");
        });
        let (size, in_use) = sizes(&endpoint);
        assert!(size <= in_use + 64 * 1024, "{point}: {size} / {in_use}");
        assert_no_garbage(&data_dir);
        println!("{point}: ok in {:?}", started.elapsed());
    }
}

/// No file a garbage collection left behind in any shard directory. A running member's
/// background pass may be writing a relocation its manifest does not name yet; so the
/// check is repeated while that can be the reason (the pass finishes in well under the
/// bound on an idle member), and a file the manifest never takes fails it.
fn assert_no_garbage(data_dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match garbage(data_dir) {
            Ok(()) => return,
            Err(found) if std::time::Instant::now() > deadline => panic!("{found}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The first file of a shard directory that its manifest does not account for.
fn garbage(data_dir: &Path) -> Result<(), String> {
    let snap = data_dir.join("member").join("snap");
    for shard in std::fs::read_dir(&snap).expect("snap dir").flatten() {
        let dir = shard.path();
        if !dir.is_dir() {
            continue;
        }
        let manifest = std::fs::read(dir.join("manifest")).ok();
        let manifest = manifest.map(|bytes| {
            rivet_engine::page::Manifest::decode(&bytes).expect("a manifest that decodes")
        });
        for entry in std::fs::read_dir(&dir).expect("shard dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "manifest.tmp" {
                return Err(format!("{}: a temporary manifest", dir.display()));
            }
            let Some(stem) = name.strip_suffix(".page") else {
                continue;
            };
            let manifest = manifest.clone().unwrap_or_default();
            match stem.split_once(".r") {
                Some((slot, generation)) => {
                    let slot: u32 = slot.parse().expect("slot");
                    let generation: u8 = generation.parse().expect("generation");
                    if manifest.state(slot)
                        != Some(rivet_engine::page::SlotState::Relocated { generation })
                    {
                        return Err(format!(
                            "{}/{name}: not the manifest's segment",
                            dir.display()
                        ));
                    }
                }
                None => {
                    let slot: u32 = stem.parse().expect("slot");
                    if manifest.replaces_chain(slot) {
                        return Err(format!(
                            "{}/{name}: replaced by the manifest but still there",
                            dir.display()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The compact revision a member reports (HashKV), or `None` when it does not answer.
async fn compact_revision(endpoint: &str) -> Option<i64> {
    let client = connect(endpoint).await;
    client
        .maintenance_client()
        .hash_kv(0)
        .await
        .ok()
        .map(|response| response.compact_version())
}

/// Writes `count` puts and answers the revision reached.
async fn write_revisions(endpoint: &str, count: usize) -> i64 {
    let mut client = connect(endpoint).await;
    let mut revision = 0;
    for i in 0..count {
        let response = client
            .put(format!("auto/{}", i % 7), format!("v{i}"), None)
            .await
            .expect("put");
        revision = response.header().expect("header").revision();
    }
    revision
}

/// Waits (at most `limit`) until `endpoint` reports compact revision `expected`.
async fn wait_compacted(endpoint: &str, expected: i64, limit: Duration) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        last = compact_revision(endpoint).await;
        if last == Some(expected) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("compact revision {last:?}, expected {expected}"))
}

/// `--auto-compaction-mode periodic --auto-compaction-retention 2s`, on etcd 3.4 and on a
/// three-member rivet cluster: once writes stop, every sample the compactor keeps is the
/// last revision, so both end up compacted exactly there — on every rivet member, since
/// the leader's compaction goes through raft. Before that, nothing newer than the
/// retention was compacted: the revision of the last write stays readable for ~2 s.
#[test]
fn auto_compaction_periodic_compacts_what_the_retention_left_behind() {
    let flags = [
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ];
    let cluster = common::cluster::Cluster::start(3, &flags);
    let endpoints = cluster.endpoints();
    runtime().block_on(async {
        let last = write_revisions(&endpoints[0], 40).await;
        // Right after the writes the newest revisions are still there.
        let mut client = connect(&endpoints[0]).await;
        let old = client
            .get("auto/0", Some(GetOptions::new().with_revision(last - 1)))
            .await;
        assert!(
            old.is_ok(),
            "a revision younger than the retention was compacted: {old:?}"
        );
        for endpoint in &endpoints {
            wait_compacted(endpoint, last, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("rivet {endpoint}: {e}"));
        }
    });
    if Etcd::available() {
        let etcd = Etcd::start(&flags);
        runtime().block_on(async {
            let last = write_revisions(&etcd.endpoint(), 40).await;
            wait_compacted(&etcd.endpoint(), last, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("etcd: {e}"));
        });
    }
}

/// `--auto-compaction-mode revision --auto-compaction-retention 10`: the last 10
/// revisions stay. etcd looks every 5 minutes; the test shortens that to 500 ms with
/// `RIVET_TEST_REVISION_COMPACTION_INTERVAL_MS` (etcd has no such switch, so it is not
/// run here).
#[test]
fn auto_compaction_revision_keeps_the_last_n_revisions() {
    let rivet = Rivet::start_with_env(
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
        ],
        &[("RIVET_TEST_REVISION_COMPACTION_INTERVAL_MS", "500")],
    );
    let endpoint = rivet.endpoint();
    runtime().block_on(async {
        let first = write_revisions(&endpoint, 30).await;
        wait_compacted(&endpoint, first - 10, Duration::from_secs(20))
            .await
            .expect("first compaction");
        let mut client = connect(&endpoint).await;
        let kept = client
            .get("auto/0", Some(GetOptions::new().with_revision(first - 10)))
            .await;
        assert!(
            kept.is_ok(),
            "revision {} should stay: {kept:?}",
            first - 10
        );
        let gone = client
            .get("auto/0", Some(GetOptions::new().with_revision(first - 11)))
            .await;
        assert!(
            gone.is_err_and(|e| e
                .to_string()
                .contains("required revision has been compacted")),
            "revision {} should be compacted",
            first - 11
        );
        let second = write_revisions(&endpoint, 25).await;
        wait_compacted(&endpoint, second - 10, Duration::from_secs(20))
            .await
            .expect("second compaction");
    });
    let log = rivet.log_text();
    assert!(log.contains("starting auto compaction"), "{log}");
}

#[test]
fn auto_compaction_flags_are_checked_as_etcd_checks_them() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(Rivet::binary())
            .args(args)
            .output()
            .expect("run rivet");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().join("d").display().to_string();
    let mode = run(&["--data-dir", &data_dir, "--auto-compaction-mode", "bad"]);
    assert!(
        mode.contains(
            r#"error verifying flags, unknown auto-compaction-mode "bad". See 'rivet --help'."#
        ),
        "{mode}"
    );
    let retention = run(&["--data-dir", &data_dir, "--auto-compaction-retention", "1x"]);
    assert!(
        retention.contains(
            r#"error parsing CompactionRetention: time: unknown unit "x" in duration "1x""#
        ),
        "{retention}"
    );
}
