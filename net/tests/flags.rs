//! rivet's flags: environment variables, precedence, Go-style single-dash flags, unknown
//! flags, request limits, the backend quota, and the data dir layout. Where a limit is
//! etcd's, the same check runs against a real etcd first, so the expectation is etcd's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, runtime, Etcd, Rivet};
use etcd_client::{Client, GetOptions, Txn, TxnOp};

/// A rivet started by hand (own environment and working dir); killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args` in `cwd` with `envs` and nothing else of the caller's
    /// `ETCD_*` variables or of the helpers `spawn` adds.
    fn spawn_plain(program: &str, cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let log = cwd.join(format!("{program}-{}.log", free_port()).replace('/', "_"));
        let file = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(program);
        for (name, _) in std::env::vars() {
            if name.starts_with("ETCD_") || name.starts_with("RIVET_") {
                command.env_remove(name);
            }
        }
        let child = command
            .current_dir(cwd)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start the server");
        Proc { child, log }
    }

    /// Starts `rivet args` in `cwd` with `envs` (and no other `ETCD_*` variable).
    fn spawn(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let log = cwd.join(format!("rivet-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(Rivet::binary());
        for (name, _) in std::env::vars() {
            if name.starts_with("ETCD_") || name.starts_with("RIVET_") {
                command.env_remove(name);
            }
        }
        // Each member gets a UDP peer port of its own (the default 2380 would be shared by
        // tests running in parallel), unless the test sets peer URLs itself; as in etcd,
        // a member named "default" then needs the initial cluster spelled out.
        let given = |flag: &str| {
            let env = format!("ETCD_{}", flag.replace('-', "_").to_uppercase());
            args.iter()
                .any(|a| a.trim_start_matches('-').starts_with(flag))
                || envs.iter().any(|(n, _)| *n == env)
        };
        if !given("listen-peer-urls") && !given("initial-advertise-peer-urls") {
            let peer = format!("http://127.0.0.1:{}", common::free_udp_port());
            command.env("ETCD_LISTEN_PEER_URLS", &peer);
            command.env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer);
            if !given("name") && !given("initial-cluster") {
                command.env("ETCD_INITIAL_CLUSTER", format!("default={peer}"));
            }
        }
        // etcd refuses listen client URLs without advertised ones: advertise the same.
        if !given("advertise-client-urls") {
            let listen = args
                .iter()
                .position(|a| a.trim_start_matches('-') == "listen-client-urls")
                .and_then(|i| args.get(i + 1).map(|v| v.to_string()))
                .or_else(|| {
                    args.iter()
                        .find_map(|a| {
                            a.trim_start_matches('-')
                                .strip_prefix("listen-client-urls=")
                        })
                        .map(str::to_string)
                })
                .or_else(|| {
                    envs.iter()
                        .find(|(n, _)| *n == "ETCD_LISTEN_CLIENT_URLS")
                        .map(|(_, v)| v.to_string())
                });
            if let Some(listen) = listen {
                command.env("ETCD_ADVERTISE_CLIENT_URLS", listen);
            }
        }
        let child = command
            .current_dir(cwd)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start rivet");
        Proc { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` on `port` answers healthy.
    fn wait_healthy(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rivet exited with {status}; log:\n{}", self.log_text());
            }
            if http_get(&format!("127.0.0.1:{port}"), "/health")
                .is_ok_and(|body| body.contains("\"health\":\"true\""))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rivet not healthy on port {port} after 30 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most 30 s) for the process to exit by itself; returns whether it
    /// succeeded and its output.
    fn wait_exit(&mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.success(), self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "rivet still running after 30 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn grpc_status(error: &etcd_client::Error) -> (tonic::Code, String) {
    match error {
        etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

async fn revision(client: &mut Client) -> i64 {
    client
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

#[test]
fn environment_variables_configure_the_member() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let data_dir = dir.path().join("from-env");
    let mut rivet = Proc::spawn(
        dir.path(),
        &[],
        &[
            ("ETCD_NAME", "envname"),
            ("ETCD_DATA_DIR", data_dir.to_str().expect("utf-8")),
            ("ETCD_LISTEN_CLIENT_URLS", &url(port)),
            ("ETCD_ADVERTISE_CLIENT_URLS", &url(port)),
        ],
    );
    rivet.wait_healthy(port);
    assert!(data_dir.join("member").join("wal").is_dir());
    assert!(data_dir.join("member").join("snap").is_dir());
    assert!(!dir.path().join("envname.rivet").exists());
    assert!(!dir.path().join("default.rivet").exists());
    assert_eq!(
        common::etcdctl_ok(&format!("127.0.0.1:{port}"), &["put", "k", "v"]),
        "OK\n"
    );

    // ETCD_NAME alone names the default data dir.
    let port = free_port();
    let mut named = Proc::spawn(
        dir.path(),
        &[],
        &[
            ("ETCD_NAME", "envname"),
            ("ETCD_LISTEN_CLIENT_URLS", &url(port)),
        ],
    );
    named.wait_healthy(port);
    assert!(dir.path().join("envname.rivet/member/wal").is_dir());
}

#[test]
fn an_unknown_environment_variable_is_only_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut rivet = Proc::spawn(
        dir.path(),
        &["--listen-client-urls", &url(port)],
        &[("ETCD_NO_SUCH_SETTING", "1")],
    );
    rivet.wait_healthy(port);
    assert!(
        rivet
            .log_text()
            .contains("W | pkg/flags: unrecognized environment variable ETCD_NO_SUCH_SETTING=1"),
        "{}",
        rivet.log_text()
    );
}

/// A variable for a flag that is not on the command line is used; one shadowed by a
/// flag stops the start with etcd's fatal message (etcd 3.4 refuses it too).
#[test]
fn the_environment_fills_flags_the_command_line_left_and_may_not_shadow_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let data_dir = dir.path().join("from-env");
    let mut rivet = Proc::spawn(
        dir.path(),
        &["--name", "fromflag", "--listen-client-urls", &url(port)],
        &[("ETCD_DATA_DIR", data_dir.to_str().expect("utf-8"))],
    );
    rivet.wait_healthy(port);
    assert!(data_dir.join("member/wal").is_dir());
    assert!(
        rivet
            .log_text()
            .contains("I | pkg/flags: recognized and used environment variable ETCD_DATA_DIR="),
        "{}",
        rivet.log_text()
    );
    drop(rivet);

    let shadowed = [("ETCD_NAME", "fromenv")];
    let args = ["--name", "fromflag", "--data-dir", "shadow.data"];
    let etcd = common::run_to_exit("etcd", &args, &shadowed, dir.path());
    let ours = common::run_to_exit(Rivet::binary(), &args, &shadowed, dir.path());
    let expected = "C | pkg/flags: conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)";
    for (who, run) in [("etcd", &etcd), ("rivet", &ours)] {
        assert_eq!(run.code, Some(1), "{who}: {run:?}");
        assert!(run.stderr.contains(expected), "{who}: {}", run.stderr);
    }
    assert!(!dir.path().join("shadow.data").exists());
}

#[test]
fn single_dash_long_flags_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let listen = url(port);
    let mut rivet = Proc::spawn(
        dir.path(),
        &["-name", "single", "-listen-client-urls", &listen],
        &[],
    );
    rivet.wait_healthy(port);
    assert!(dir.path().join("single.rivet/member/wal").is_dir());

    let port = free_port();
    let mut rivet = Proc::spawn(
        dir.path(),
        &[
            "-name=equals",
            &format!("-listen-client-urls={}", url(port)),
        ],
        &[],
    );
    rivet.wait_healthy(port);
    assert!(dir.path().join("equals.rivet/member/wal").is_dir());
}

#[test]
fn an_unknown_flag_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for flag in ["--no-such-flag", "-no-such-flag"] {
        let mut rivet = Proc::spawn(
            dir.path(),
            &[flag, "--listen-client-urls", &url(free_port())],
            &[],
        );
        let (success, output) = rivet.wait_exit();
        assert!(!success, "rivet accepted {flag}: {output}");
        assert!(output.contains("no-such-flag"), "{flag}: {output}");
    }
    assert!(!dir.path().join("default.rivet").exists());
}

#[test]
fn the_default_data_dir_is_name_dot_rivet_with_member_wal_and_snap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut rivet = Proc::spawn(dir.path(), &["--listen-client-urls", &url(port)], &[]);
    rivet.wait_healthy(port);
    let data = dir.path().join("default.rivet");
    assert!(data.join("member/wal").is_dir());
    assert!(data.join("member/snap").is_dir());
    let wal_files = std::fs::read_dir(data.join("member/wal"))
        .expect("wal dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal"))
        })
        .count();
    assert!(wal_files > 0, "no WAL file in member/wal");
}

#[test]
fn wal_dir_puts_the_wal_elsewhere_and_keeps_working_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let wal = dir.path().join("elsewhere").join("wal");
    let wal_flag = wal.display().to_string();
    let mut rivet = Rivet::start_in(&data, &["--wal-dir", &wal_flag]);
    common::etcdctl_ok(&rivet.endpoint(), &["put", "k", "v"]);
    let wal_files: Vec<_> = std::fs::read_dir(&wal)
        .expect("the WAL dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
        .collect();
    assert!(!wal_files.is_empty(), "no WAL file in --wal-dir");
    let default_wal = data.join("member").join("wal");
    assert!(
        !default_wal.exists()
            || std::fs::read_dir(&default_wal)
                .expect("member/wal")
                .next()
                .is_none(),
        "WAL files under the data dir although --wal-dir is set"
    );
    assert!(data.join("member").join("snap").is_dir());
    rivet.kill9();
    rivet.restart();
    assert_eq!(
        common::etcdctl_ok(&rivet.endpoint(), &["get", "k"]),
        "k\nv\n"
    );
}

/// A txn of three puts is refused with `--max-txn-ops 2`; two are fine.
async fn check_max_txn_ops(url: String) {
    let mut client = Client::connect([url], None).await.expect("connect");
    let puts = |n: usize| {
        Txn::new().and_then(
            (0..n)
                .map(|i| TxnOp::put(format!("t{i}"), "v", None))
                .collect::<Vec<_>>(),
        )
    };
    let before = revision(&mut client).await;
    let error = client.txn(puts(3)).await.expect_err("a 3-op txn");
    assert_eq!(
        grpc_status(&error),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request".to_string()
        )
    );
    assert_eq!(revision(&mut client).await, before);
    client.txn(puts(2)).await.expect("a 2-op txn");
    assert_eq!(revision(&mut client).await, before + 1);
}

#[test]
fn max_txn_ops_limits_txns() {
    let rt = runtime();
    let etcd = Etcd::start(&["--max-txn-ops", "2"]);
    rt.block_on(check_max_txn_ops(format!("http://{}", etcd.endpoint())));
    let rivet = Rivet::start(&["--max-txn-ops", "2"]);
    rt.block_on(check_max_txn_ops(rivet.url()));
    drop(rivet);
    // The same through the environment.
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut rivet = Proc::spawn(
        dir.path(),
        &["--listen-client-urls", &url(port)],
        &[("ETCD_MAX_TXN_OPS", "2")],
    );
    rivet.wait_healthy(port);
    rt.block_on(check_max_txn_ops(url(port)));
}

/// A 2 KiB put is refused with `--max-request-bytes 1024` and changes nothing.
async fn check_max_request_bytes(url: String) {
    let mut client = Client::connect([url], None).await.expect("connect");
    client
        .put("small", "x".repeat(512), None)
        .await
        .expect("a 512 B put");
    let before = revision(&mut client).await;
    let error = client
        .put("big", "x".repeat(2048), None)
        .await
        .expect_err("a 2 KiB put");
    assert_eq!(
        grpc_status(&error),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large".to_string()
        )
    );
    assert_eq!(revision(&mut client).await, before);
    let big = client.get("big", None).await.expect("get");
    assert!(big.kvs().is_empty());
    let txn = Txn::new().and_then([TxnOp::put("big", "x".repeat(2048), None)]);
    let error = client.txn(txn).await.expect_err("a 2 KiB txn");
    assert_eq!(
        grpc_status(&error).1,
        "etcdserver: request is too large".to_string()
    );
    assert_eq!(revision(&mut client).await, before);
}

#[test]
fn max_request_bytes_limits_requests() {
    let rt = runtime();
    let etcd = Etcd::start(&["--max-request-bytes", "1024"]);
    rt.block_on(check_max_request_bytes(format!(
        "http://{}",
        etcd.endpoint()
    )));
    let rivet = Rivet::start(&["--max-request-bytes", "1024"]);
    rt.block_on(check_max_request_bytes(rivet.url()));
}

fn is_no_space(error: &etcd_client::Error) -> bool {
    grpc_status(error)
        == (
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded".to_string(),
        )
}

/// Under a `quota`-byte quota: 1 MiB of data fits; writing on with `value_bytes` values is
/// eventually refused with "database space exceeded"; then reads and deletes still work
/// and puts stay refused.
async fn check_quota_refusals(client: &mut Client, quota: u64, value_bytes: usize) {
    let status = client.status().await.expect("status");
    println!(
        "empty member: Status.dbSize {} (quota {quota})",
        status.db_size()
    );
    let small = "s".repeat(16 * 1024);
    for i in 0..64 {
        if let Err(e) = client
            .put(format!("small/{i:03}"), small.as_str(), None)
            .await
        {
            let status = client.status().await.expect("status");
            panic!(
                "put {i} of 64 × 16 KiB (1 MiB in all) under a {quota}-byte quota failed: \
                 {e}; Status.dbSize is {}",
                status.db_size()
            );
        }
    }
    let big = "b".repeat(value_bytes);
    let mut refused = None;
    for i in 0..(4 * quota / value_bytes as u64) {
        if let Err(e) = client.put(format!("big/{i:04}"), big.as_str(), None).await {
            refused = Some((i, e));
            break;
        }
    }
    let (i, error) = refused.expect("puts past the quota were never refused");
    assert!(is_no_space(&error), "put {i}: {error:?}");
    let status = client.status().await.expect("status");
    println!(
        "refused after {i} puts of {value_bytes} bytes; Status.dbSize {}",
        status.db_size()
    );

    // Reads and deletes still work.
    let read = client.get("small/000", None).await.expect("get");
    assert_eq!(read.kvs()[0].value(), small.as_bytes());
    let all = client
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .expect("get all");
    assert_eq!(all.kvs().len() as u64, 64 + i);
    let deleted = client.delete("small/000", None).await.expect("delete");
    assert_eq!(deleted.deleted(), 1);
    // Puts stay refused (in etcd, the alarm stays until an operator disarms it).
    let error = client.put("tiny", "t", None).await.expect_err("a tiny put");
    assert!(is_no_space(&error), "{error:?}");
}

/// The NOSPACE alarm is raised: in `Status.errors` and in the alarm list.
async fn check_nospace_alarm(client: &mut Client) {
    let status = client.status().await.expect("status");
    assert!(
        status.errors().iter().any(|e| e.contains("alarm:NOSPACE")),
        "Status.errors {:?}",
        status.errors()
    );
    let alarms = client
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .expect("alarm list");
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == etcd_client::AlarmType::Nospace),
        "alarm list: {:?}",
        alarms
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect::<Vec<_>>()
    );
}

/// `/health` as a client sees it: status, the headers etcd sets itself, and the body.
fn health(endpoint: &str) -> common::HttpParts {
    let (status, headers, body) = common::http_get_parts(endpoint, "/health").expect("/health");
    let kept = ["content-type", "x-content-type-options", "content-length"];
    let mut headers: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(name, _)| kept.contains(&name.as_str()))
        .collect();
    // Header order is not part of HTTP's meaning (Go and hyper order them differently).
    headers.sort();
    (status, headers, body)
}

/// etcd 3.4 with an 8 MiB quota takes 1 MiB, refuses puts at about 9 MiB written, keeps
/// serving reads and deletes, and raises NOSPACE. rivet must do the same. While the alarm
/// is active `/health` answers unhealthy (issue 10 item 5), byte for byte as etcd does,
/// and healthy again once `etcdctl alarm disarm` cleared it.
#[test]
fn a_small_quota_eventually_refuses_puts_but_not_reads_or_deletes() {
    const QUOTA: u64 = 8 * 1024 * 1024;
    let rt = runtime();
    let quota = QUOTA.to_string();
    let check = |url: String, endpoint: String| async move {
        let mut client = Client::connect([url], None).await.expect("connect");
        check_quota_refusals(&mut client, QUOTA, 64 * 1024).await;
        check_nospace_alarm(&mut client).await;
        let alarmed = health(&endpoint);
        common::etcdctl_ok(&endpoint, &["alarm", "disarm"]);
        let disarmed = health(&endpoint);
        (alarmed, disarmed)
    };
    let etcd = Etcd::start(&["--quota-backend-bytes", &quota]);
    let etcd_health = rt.block_on(check(
        format!("http://{}", etcd.endpoint()),
        etcd.endpoint(),
    ));
    drop(etcd);
    let rivet = Rivet::start(&["--quota-backend-bytes", &quota, "--shards", "1"]);
    let rivet_health = rt.block_on(check(rivet.url(), rivet.endpoint()));
    println!("etcd /health with NOSPACE, then disarmed: {etcd_health:?}");
    assert_eq!(etcd_health.0 .0, 503, "etcd's /health during the alarm");
    assert_eq!(etcd_health.1 .2, "{\"health\":\"true\"}");
    assert_eq!(
        rivet_health, etcd_health,
        "/health during the alarm, then disarmed"
    );
}

/// A quota above what rivet preallocates for an empty member (one 64 MiB page segment
/// per shard): puts are refused once the data outgrows it, reads and deletes go on.
#[test]
fn a_quota_above_the_preallocated_size_refuses_puts_once_exceeded() {
    const QUOTA: u64 = 72 * 1024 * 1024;
    let rt = runtime();
    let quota = QUOTA.to_string();
    let rivet = Rivet::start(&["--quota-backend-bytes", &quota, "--shards", "1"]);
    rt.block_on(async {
        let mut client = Client::connect([rivet.url()], None).await.expect("connect");
        check_quota_refusals(&mut client, QUOTA, 1024 * 1024).await;
    });
}

/// The flags `--help` lists, by group: `(group title, flag, default as shown)`.
fn help_flags(help: &str) -> Vec<(String, String, String)> {
    let mut group = String::new();
    let mut flags = Vec::new();
    for line in help.lines() {
        if let Some(flag) = line.strip_prefix("  --") {
            let (name, shown) = flag.split_once(' ').unwrap_or((flag, ""));
            flags.push((group.clone(), name.to_string(), shown.to_string()));
        } else if !line.starts_with(' ') && line.ends_with(':') {
            group = line.to_string();
        }
    }
    flags
}

/// rivet's own flags, in a group of their own.
const RIVET_ONLY: &[&str] = &["shards", "pin-cores"];

/// `rivet --help` lists etcd 3.4's flags in etcd's groups, with etcd's defaults; only
/// rivet's own flags (in their own group) differ, and the data dir's default name.
#[test]
fn help_lists_every_etcd_flag_in_its_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = common::run_to_exit("etcd", &["--help"], &[], dir.path());
    let ours = common::run_to_exit(Rivet::binary(), &["--help"], &[], dir.path());
    assert_eq!(etcd.code, Some(0));
    assert_eq!(ours.code, Some(0), "{ours:?}");
    let etcd_flags = help_flags(&etcd.stdout);
    let rivet_flags = help_flags(&ours.stdout);
    let (own, listed): (Vec<_>, Vec<_>) = rivet_flags
        .into_iter()
        .partition(|(_, name, _)| RIVET_ONLY.contains(&name.as_str()));
    assert_eq!(own.len(), RIVET_ONLY.len(), "{own:?}");
    assert!(own
        .iter()
        .all(|(group, _, _)| group == "rivet (not in etcd):"));
    assert!(
        etcd_flags.len() > 60,
        "etcd --help parsed to {etcd_flags:?}"
    );
    let normalize = |flags: Vec<(String, String, String)>| -> Vec<(String, String, String)> {
        flags
            .into_iter()
            .map(|(group, name, shown)| {
                let shown = if name == "data-dir" {
                    "<name>.<dir>".into()
                } else {
                    shown
                };
                (group, name, shown)
            })
            .collect()
    };
    let etcd_flags = normalize(etcd_flags);
    let listed = normalize(listed);
    for flag in &etcd_flags {
        assert!(listed.contains(flag), "rivet --help lacks {flag:?}");
    }
    for flag in &listed {
        assert!(
            etcd_flags.contains(flag),
            "rivet --help has {flag:?}, etcd does not"
        );
    }
    assert_eq!(etcd_flags, listed, "same order");
    // The usage lines go to stderr, as etcd's.
    assert!(ours.stderr.starts_with("Usage:"), "{}", ours.stderr);
}

/// Drops capnslog's timestamp and names the program `etcd`, so lines compare.
fn comparable(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let line = if line.len() > 27
                && line.as_bytes()[4] == b'-'
                && line.as_bytes()[10] == b' '
                && line.as_bytes()[19] == b'.'
            {
                &line[27..]
            } else {
                line
            };
            line.replace("'rivet --help'", "'etcd --help'")
        })
        .filter(|line| !line.starts_with("[WARNING] Deprecated '--logger=capnslog'"))
        .collect()
}

/// A command line and its `ETCD_*` variables.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// Bad command lines and variables are refused by rivet as by etcd 3.4: the same
/// message (Go's flag package's or etcdmain's) and the same exit code, and nothing is
/// created.
#[test]
fn bad_flags_are_refused_with_etcds_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: &[Case] = &[
        (&["--bogus"], &[]),
        (&["-no-such-flag=1"], &[]),
        (&["--name"], &[]),
        (&["--heartbeat-interval", "abc"], &[]),
        (&["--heartbeat-interval", "1e3"], &[]),
        (&["--max-request-bytes", "-1"], &[]),
        (&["--max-concurrent-streams", "4294967296"], &[]),
        (&["--grpc-keepalive-min-time", "5"], &[]),
        (&["--pre-vote=maybe"], &[]),
        (&["--strict-reconfig-check", "false"], &[]),
        (&["extra"], &[]),
        (&["---name", "x"], &[]),
        (&["--initial-cluster-state", "foo"], &[]),
        (&["--discovery-fallback", "foo"], &[]),
        (&["--listen-client-urls", "foo"], &[]),
        (&["--listen-client-urls", "http://127.0.0.1:2379/x"], &[]),
        (&["--cors", "http://example.com"], &[]),
        (&["--listen-client-urls", "http://127.0.0.1:1"], &[]),
        (
            &[
                "--listen-client-urls",
                "http://example.com:1",
                "--advertise-client-urls",
                "http://127.0.0.1:1",
            ],
            &[],
        ),
        (&["--heartbeat-interval", "300"], &[]),
        (&["--election-timeout", "60000"], &[]),
        (&["--logger", "x"], &[]),
        (&["--auto-compaction-mode", "x"], &[]),
        (&["--log-outputs", "stderr,stdout"], &[]),
        (&["--log-outputs", "/tmp/x.log"], &[]),
        (&["--logger", "zap", "--log-outputs", "default,stderr"], &[]),
        (
            &[
                "--discovery",
                "http://127.0.0.1:1/d",
                "--initial-cluster",
                "a=http://127.0.0.1:2",
            ],
            &[],
        ),
        (&[], &[("ETCD_HEARTBEAT_INTERVAL", "abc")]),
        (&[], &[("ETCD_INITIAL_CLUSTER_STATE", "foo")]),
    ];
    for (args, env) in cases {
        let mut all = vec!["--data-dir", "refused.data"];
        all.extend_from_slice(args);
        let etcd = common::run_to_exit("etcd", &all, env, dir.path());
        let ours = common::run_to_exit(Rivet::binary(), &all, env, dir.path());
        assert_eq!(
            etcd.code, ours.code,
            "{args:?} {env:?}: etcd {etcd:?}, rivet {ours:?}"
        );
        assert!(
            ours.code.is_some() && ours.code != Some(0),
            "{args:?}: {ours:?}"
        );
        // etcd follows Go's flag errors with its usage lines: the first line is the message.
        let etcd_lines = comparable(&etcd.stderr);
        let our_lines = comparable(&ours.stderr);
        assert_eq!(
            etcd_lines.first(),
            our_lines.first(),
            "{args:?} {env:?}:\netcd:\n{}\nrivet:\n{}",
            etcd.stderr,
            ours.stderr
        );
        assert!(
            !dir.path().join("refused.data").exists(),
            "{args:?} created the data dir"
        );
    }
}

/// A config file for a one-member cluster on `port` (client) and `peer`, with
/// `--max-txn-ops 2`, zap logs into `log` and settings rivet accepts for later work.
fn config_file(dir: &Path, name: &str, port: u16, peer: u16, log: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.conf.yml"));
    let data = dir.join(format!("{name}.data"));
    let text = format!(
        "# etcd.conf.yml.sample's keys\n\
         name: '{name}'\n\
         data-dir: {data}\n\
         wal-dir:\n\
         snapshot-count: 10000\n\
         heartbeat-interval: 100\n\
         election-timeout: 1000\n\
         quota-backend-bytes: 0\n\
         listen-peer-urls: http://127.0.0.1:{peer}\n\
         listen-client-urls: http://127.0.0.1:{port}\n\
         max-snapshots: 5\n\
         max-wals: 5\n\
         max-txn-ops: 2\n\
         cors:\n\
         initial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
         advertise-client-urls: http://127.0.0.1:{port}\n\
         discovery:\n\
         discovery-fallback: 'proxy'\n\
         discovery-proxy:\n\
         discovery-srv:\n\
         initial-cluster: {name}=http://127.0.0.1:{peer}\n\
         initial-cluster-token: 'etcd-cluster'\n\
         initial-cluster-state: 'new'\n\
         strict-reconfig-check: false\n\
         enable-v2: false\n\
         enable-pprof: true\n\
         proxy: 'off'\n\
         proxy-failure-wait: 5000\n\
         proxy-refresh-interval: 30000\n\
         proxy-dial-timeout: 1000\n\
         proxy-write-timeout: 5000\n\
         proxy-read-timeout: 0\n\
         client-transport-security:\n\
         \x20 cert-file:\n\
         \x20 key-file:\n\
         \x20 client-cert-auth: false\n\
         \x20 trusted-ca-file:\n\
         \x20 auto-tls: false\n\
         peer-transport-security:\n\
         \x20 cert-file:\n\
         \x20 key-file:\n\
         \x20 client-cert-auth: false\n\
         \x20 trusted-ca-file:\n\
         \x20 auto-tls: false\n\
         debug: false\n\
         logger: zap\n\
         log-outputs: [{log}]\n\
         force-new-cluster: false\n\
         auto-compaction-mode: periodic\n\
         auto-compaction-retention: \"1\"\n",
        data = data.display(),
        log = log.display(),
    );
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// The same config file starts etcd 3.4 and rivet: its values take effect (ports, name,
/// data dir, `max-txn-ops`, zap logs into the file), and the flags and variables given
/// beside it are ignored, as etcd ignores them.
#[test]
fn a_config_file_configures_etcd_and_rivet_alike() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    for program in ["etcd", Rivet::binary()] {
        let port = free_port();
        let peer = if program == "etcd" {
            free_port()
        } else {
            common::free_udp_port()
        };
        let name = if program == "etcd" {
            "etcdfile"
        } else {
            "rivetfile"
        };
        let log = dir.path().join(format!("{name}.json.log"));
        let path = config_file(dir.path(), name, port, peer, &log);
        let path = path.to_str().expect("utf-8");
        let mut server = Proc::spawn_plain(
            program,
            dir.path(),
            &[
                "--config-file",
                path,
                "--max-txn-ops",
                "100",
                "--name",
                "ignored",
            ],
            &[("ETCD_MAX_TXN_OPS", "100"), ("ETCD_NAME", "ignored-too")],
        );
        server.wait_healthy(port);
        rt.block_on(check_max_txn_ops(url(port)));
        assert!(dir.path().join(format!("{name}.data/member/wal")).is_dir());
        assert!(!dir.path().join("ignored.etcd").exists());
        assert!(!dir.path().join("ignored.rivet").exists());
        let members = common::etcdctl_ok(&format!("127.0.0.1:{port}"), &["member", "list"]);
        assert!(members.contains(name), "{program}: {members}");
        let text = std::fs::read_to_string(&log).expect("the log file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{program}: {e}: {l}")))
            .collect();
        assert!(
            lines.iter().any(|l| l["msg"]
                == "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
                && l["path"] == path),
            "{program}: {text}"
        );
        for line in &lines {
            for key in ["level", "ts", "caller", "msg"] {
                assert!(line[key].is_string(), "{program}: no {key} in {line}");
            }
        }
    }
}

/// True when `line` has capnslog's shape: `2026-12-07 01:00:00.000000 I | pkg: text`.
fn is_capnslog(line: &str) -> bool {
    let b = line.as_bytes();
    line.len() > 32
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[26] == b' '
        && b"DIWENC".contains(&b[27])
        && &line[28..31] == " | "
        && line[31..].contains(": ")
}

/// `--logger capnslog` (the default) writes capnslog lines; `--log-level warn` keeps
/// info lines out; `--logger zap` writes one JSON object per line, with etcd's fields
/// first, to every output of `--log-outputs`.
#[test]
fn logs_take_etcds_two_forms_and_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut rivet = Proc::spawn(dir.path(), &["--listen-client-urls", &url(port)], &[]);
    rivet.wait_healthy(port);
    let text = rivet.log_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("[WARNING]"))
        .collect();
    assert!(lines.iter().all(|l| is_capnslog(l)), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" I | embed: ready to serve client requests")),
        "{text}"
    );
    // The election line operators grep for, in etcd's words.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" I | raft: raft.node: ") && l.contains(" elected leader ")),
        "{text}"
    );
    drop(rivet);

    let port = free_port();
    let mut quiet = Proc::spawn(
        dir.path(),
        &[
            "--listen-client-urls",
            &url(port),
            "--log-level",
            "warn",
            "--data-dir",
            "quiet",
        ],
        &[],
    );
    quiet.wait_healthy(port);
    // Only pkg/flags' lines, written before the level is set (as etcd's), are info.
    let text = quiet.log_text();
    assert!(
        text.lines()
            .all(|l| !l.contains(" I | ") || l.contains(" I | pkg/flags: ")),
        "{text}"
    );
    drop(quiet);

    let port = free_port();
    let file = dir.path().join("zap.log");
    let outputs = format!("stdout,{}", file.display());
    let mut zap = Proc::spawn(
        dir.path(),
        &[
            "--listen-client-urls",
            &url(port),
            "--logger",
            "zap",
            "--log-outputs",
            &outputs,
            "--data-dir",
            "zap",
        ],
        &[],
    );
    zap.wait_healthy(port);
    let in_file = std::fs::read_to_string(&file).expect("zap log file");
    let on_stdout = zap.log_text();
    for text in [&in_file, &on_stdout] {
        let mut ready = false;
        let mut elected = false;
        // The variables' lines of pkg/flags are written before the logger exists, in
        // capnslog form to stderr (the process log here), as etcd writes them.
        for line in text.lines().filter(|l| !l.contains(" I | pkg/flags: ")) {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let keys: Vec<&str> = line
                .trim_start_matches('{')
                .split(',')
                .take(4)
                .map(|k| k.split(':').next().unwrap_or(""))
                .collect();
            assert_eq!(
                keys,
                ["\"level\"", "\"ts\"", "\"caller\"", "\"msg\""],
                "{line}"
            );
            assert!(
                ["debug", "info", "warn", "error"].contains(&value["level"].as_str().unwrap_or(""))
            );
            ready |= value["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("ready to serve client requests"));
            elected |= value["msg"]
                .as_str()
                .is_some_and(|m| m.contains(" elected leader "));
        }
        assert!(ready, "{text}");
        assert!(elected, "no election line: {text}");
    }
}

fn decode_profile(gzipped: &[u8]) -> rivet_net::pprof::proto::Profile {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut bytes)
        .expect("a gzip'd body");
    prost::Message::decode(bytes.as_slice()).expect("a perftools.profiles.Profile")
}

/// `--enable-pprof`: a CPU profile taken while clients write is a gzip'd pprof Profile
/// with CPU samples and symbolized functions; the heap endpoint answers a Profile with
/// the totals; without the flag both are 404.
#[test]
fn pprof_serves_profiles_go_tool_pprof_reads() {
    let rivet = Rivet::start(&["--enable-pprof"]);
    let endpoint = rivet.endpoint();
    let writer_url = rivet.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = std::sync::Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut client = Client::connect([writer_url], None).await.expect("connect");
            let mut i = 0u64;
            while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .put(format!("k{}", i % 100), "v", None)
                    .await
                    .expect("put");
                i += 1;
            }
            i
        })
    });
    let answer = common::http_request(
        &endpoint,
        "GET",
        "/debug/pprof/profile?seconds=2",
        &[],
        Duration::from_secs(120),
    )
    .expect("profile");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let puts = writer.join().expect("writer");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/octet-stream")
    );
    let profile = decode_profile(&answer.body);
    let name = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (name(t.r#type), name(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(profile.period, 10_000_000);
    assert!(
        !profile.sample.is_empty(),
        "no samples while {puts} puts ran"
    );
    assert!(profile.duration_nanos >= 2_000_000_000);
    let functions: Vec<&str> = profile.function.iter().map(|f| name(f.name)).collect();
    assert!(
        functions.iter().any(|f| f.contains("rivet")),
        "no rivet function among {} functions",
        functions.len()
    );
    for sample in &profile.sample {
        assert_eq!(sample.value.len(), 2);
        assert_eq!(sample.value[1], sample.value[0] * profile.period);
        for id in &sample.location_id {
            assert!(profile.location.iter().any(|l| l.id == *id));
        }
    }

    let heap = common::http_request(
        &endpoint,
        "GET",
        "/debug/pprof/heap",
        &[],
        Duration::from_secs(30),
    )
    .expect("heap");
    assert_eq!(heap.status, 200);
    let profile = decode_profile(&heap.body);
    assert_eq!(profile.sample.len(), 2);
    assert!(profile
        .sample
        .iter()
        .all(|s| s.value[0] > 0 && s.value[1] >= s.value[0]));
    drop(rivet);

    let plain = Rivet::start(&[]);
    let answer = common::http_request(
        &plain.endpoint(),
        "GET",
        "/debug/pprof/heap",
        &[],
        Duration::from_secs(10),
    )
    .expect("heap");
    assert_eq!(answer.status, 404);
}

/// A method, a path and extra headers.
type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// `--host-whitelist` and `--cors` on plain HTTP requests, against etcd 3.4: the same
/// status, body and CORS headers for an allowed host, a refused one (421 with etcd's
/// text), an allowed and a foreign origin, and `OPTIONS`.
#[test]
fn host_whitelist_and_cors_answer_as_etcd() {
    let flags = [
        "--host-whitelist",
        "127.0.0.1,localhost",
        "--cors",
        "http://a.example:80",
    ];
    let etcd = Etcd::start(&flags);
    let rivet = Rivet::start(&flags);
    let requests: &[Request] = &[
        ("GET", "/version", &[]),
        ("GET", "/version", &[("Host", "evil.example:2379")]),
        ("GET", "/health", &[("Host", "evil.example")]),
        ("GET", "/version", &[("Origin", "http://a.example:80")]),
        ("GET", "/version", &[("Origin", "http://b.example:80")]),
        ("OPTIONS", "/version", &[("Origin", "http://a.example:80")]),
    ];
    for (method, path, headers) in requests {
        let ask = |endpoint: &str| {
            common::http_request(endpoint, method, path, headers, Duration::from_secs(10))
                .expect("request")
        };
        let theirs = ask(&etcd.endpoint());
        let ours = ask(&rivet.endpoint());
        assert_eq!(theirs.status, ours.status, "{method} {path} {headers:?}");
        for header in [
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-headers",
        ] {
            assert_eq!(
                theirs.header(header),
                ours.header(header),
                "{header} of {method} {path} {headers:?}"
            );
        }
        if theirs.status == 421 {
            assert_eq!(
                String::from_utf8_lossy(&theirs.body),
                String::from_utf8_lossy(&ours.body)
            );
        }
    }
}

/// `--pre-vote` (off by default, as in etcd 3.4) turns raft's PreVote phase on, and
/// `--experimental-warning-apply-duration` sets when applying is warned about.
#[test]
fn pre_vote_and_the_apply_warning_follow_their_flags() {
    let plain = Rivet::start(&[]);
    common::etcdctl_ok(&plain.endpoint(), &["put", "k", "v"]);
    let text = plain.log_text();
    assert!(text.contains("became candidate"), "{text}");
    assert!(!text.contains("pre-candidate"), "{text}");
    assert!(!text.contains("apply request took too long"), "{text}");
    drop(plain);

    let tuned = Rivet::start(&["--pre-vote", "--experimental-warning-apply-duration", "1ns"]);
    common::etcdctl_ok(&tuned.endpoint(), &["put", "k", "v"]);
    let text = tuned.log_text();
    assert!(text.contains("became pre-candidate"), "{text}");
    // etcd's capnslog wording of the warning: `request "…" with result "…" took too
    // long (…) to execute`.
    assert!(
        text.lines()
            .any(|l| l.contains("W | etcdserver: request ") && l.contains(" took too long (")),
        "{text}"
    );
}

/// Counts a watch stream's progress notifications (no events, not created/canceled)
/// until `wanted` arrived or `limit` passed; returns (notifications, revision seen).
async fn progress_notifications(
    stream: &mut etcd_client::WatchStream,
    wanted: usize,
    limit: Duration,
) -> (usize, i64) {
    let deadline = tokio::time::Instant::now() + limit;
    let (mut count, mut revision) = (0, 0);
    while count < wanted {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(response))) => {
                if response.events().is_empty() && !response.created() && !response.canceled() {
                    count += 1;
                    revision = response.header().map_or(0, |h| h.revision());
                }
            }
            Ok(other) => panic!("watch stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    (count, revision)
}

/// `--experimental-watch-progress-notify-interval`: a watcher that asked for progress
/// notifications gets empty responses at the current revision, one that did not gets
/// none — on etcd 3.4 and rivet alike.
#[test]
fn watch_progress_notifications_follow_the_interval() {
    let rt = runtime();
    let flags = ["--experimental-watch-progress-notify-interval", "1s"];
    let etcd = Etcd::start(&flags);
    let rivet = Rivet::start(&flags);
    for url in [format!("http://{}", etcd.endpoint()), rivet.url()] {
        rt.block_on(async {
            let mut client = Client::connect([url.clone()], None).await.expect("connect");
            client.put("p", "1", None).await.expect("put");
            let revision = revision(&mut client).await;
            let mut quiet = client.watch("q", None).await.expect("watch");
            let mut stream = client
                .watch(
                    "p",
                    Some(etcd_client::WatchOptions::new().with_progress_notify()),
                )
                .await
                .expect("watch");
            let (count, seen) =
                progress_notifications(&mut stream, 2, Duration::from_secs(20)).await;
            assert_eq!(count, 2, "{url}: progress notifications");
            assert_eq!(seen, revision, "{url}");
            let (none, _) = progress_notifications(&mut quiet, 1, Duration::from_millis(10)).await;
            assert_eq!(
                none, 0,
                "{url}: a watcher without progress_notify was notified"
            );
        });
    }
}

/// `--metrics extensive` adds etcd's `grpc_server_handling_seconds` histogram; the
/// default (`basic`) does not export it — as etcd 3.4.
#[test]
fn metrics_extensive_adds_the_grpc_handling_histogram() {
    for (flags, expected) in [(&[][..], false), (&["--metrics", "extensive"][..], true)] {
        let etcd = Etcd::start(flags);
        let rivet = Rivet::start(flags);
        for endpoint in [etcd.endpoint(), rivet.endpoint()] {
            common::etcdctl_ok(&endpoint, &["put", "k", "v"]);
            let text = http_get(&endpoint, "/metrics").expect("metrics");
            let series = "grpc_server_handling_seconds_bucket{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\",le=\"+Inf\"} ";
            assert_eq!(text.contains(series), expected, "{endpoint} {flags:?}");
            if expected {
                let count = text
                    .lines()
                    .find_map(|l| l.strip_prefix(series))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                assert!(count.is_some_and(|c| c >= 1), "{endpoint}: {count:?}");
            }
        }
    }
}

/// Every flag of the table is in the README's flags section.
#[test]
fn the_readme_lists_every_flag() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    for spec in rivet_net::config::SPECS {
        assert!(
            readme.contains(&format!("| `--{}` |", spec.name)),
            "README.md does not list --{}",
            spec.name
        );
    }
}

/// Reads HTTP/2 frames from a raw connection: (type, flags, payload).
fn read_frame(stream: &mut std::net::TcpStream) -> std::io::Result<(u8, u8, Vec<u8>)> {
    use std::io::Read;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let length =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload)?;
    Ok((header[3], header[4], payload))
}

/// Opens an HTTP/2 connection (prior knowledge), returns the server's first SETTINGS
/// values and whether a PING from the server arrived within `wait`.
fn h2_settings_and_ping(endpoint: &str, wait: Duration) -> (Vec<(u16, u32)>, bool) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(endpoint).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("preface");
    let deadline = Instant::now() + wait;
    let mut settings = None;
    let mut pinged = false;
    while Instant::now() < deadline && !(settings.is_some() && pinged) {
        match read_frame(&mut stream) {
            Ok((0x4, flags, payload)) if flags & 0x1 == 0 => {
                settings = Some(
                    payload
                        .chunks(6)
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect::<Vec<_>>(),
                );
                // Acknowledge, as a client must.
                stream
                    .write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                    .expect("ack");
            }
            Ok((0x6, flags, payload)) if flags & 0x1 == 0 => {
                pinged = true;
                let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                stream.write_all(&ack).expect("ping ack");
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{endpoint}: {e}"),
        }
    }
    (settings.expect("the server's SETTINGS"), pinged)
}

/// `--max-concurrent-streams` is announced in the server's HTTP/2 SETTINGS, and
/// `--grpc-keepalive-interval`/`--grpc-keepalive-timeout` make the server ping an idle
/// connection — as etcd 3.4 does.
#[test]
fn http2_settings_and_keepalive_pings_follow_the_flags() {
    let flags = [
        "--max-concurrent-streams",
        "7",
        "--grpc-keepalive-interval",
        "1s",
        "--grpc-keepalive-timeout",
        "5s",
    ];
    let etcd = Etcd::start(&flags);
    let rivet = Rivet::start(&flags);
    for endpoint in [etcd.endpoint(), rivet.endpoint()] {
        let (settings, pinged) = h2_settings_and_ping(&endpoint, Duration::from_secs(15));
        // SETTINGS_MAX_CONCURRENT_STREAMS is 0x3.
        assert!(settings.contains(&(0x3, 7)), "{endpoint}: {settings:?}");
        assert!(pinged, "{endpoint}: no keep-alive ping");
    }
}

/// `--log-package-levels` (capnslog) sets a level per etcd package: with `embed=WARNING`
/// the start's info lines of `embed` are gone while `etcdserver`'s stay.
#[test]
fn log_package_levels_filter_by_etcd_package() {
    let plain = Rivet::start(&[]);
    assert!(
        plain.log_text().contains(" I | embed: "),
        "{}",
        plain.log_text()
    );
    drop(plain);
    let filtered = Rivet::start(&["--log-package-levels", "embed=WARNING,etcdserver=DEBUG"]);
    let text = filtered.log_text();
    assert!(!text.contains(" I | embed: "), "{text}");
    assert!(text.contains(" I | etcdserver: "), "{text}");
    assert!(
        text.contains("[WARNING] Deprecated '--log-package-levels=embed=WARNING,etcdserver=DEBUG' flag is set; use '--logger=zap' flag instead"),
        "{text}"
    );
}
