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
        // tests running in parallel), unless the test sets peer URLs itself.
        let sets_peers = args.iter().any(|a| a.contains("peer-urls"))
            || envs.iter().any(|(n, _)| n.contains("PEER_URLS"));
        if !sets_peers {
            let peer = format!("http://127.0.0.1:{}", common::free_udp_port());
            command.env("ETCD_LISTEN_PEER_URLS", &peer);
            command.env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer);
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
        rivet.log_text().contains("ETCD_NO_SUCH_SETTING"),
        "{}",
        rivet.log_text()
    );
}

#[test]
fn the_command_line_wins_over_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env_port = free_port();
    let flag_port = free_port();
    let mut rivet = Proc::spawn(
        dir.path(),
        &[
            "--name",
            "fromflag",
            "--listen-client-urls",
            &url(flag_port),
        ],
        &[
            ("ETCD_NAME", "fromenv"),
            ("ETCD_LISTEN_CLIENT_URLS", &url(env_port)),
        ],
    );
    rivet.wait_healthy(flag_port);
    assert!(dir.path().join("fromflag.rivet/member/wal").is_dir());
    assert!(!dir.path().join("fromenv.rivet").exists());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", env_port)).is_err(),
        "rivet also listens on the environment's URL"
    );

    let env_dir = dir.path().join("env-data");
    let flag_dir = dir.path().join("flag-data");
    let port = free_port();
    let mut rivet = Proc::spawn(
        dir.path(),
        &[
            "--data-dir",
            flag_dir.to_str().expect("utf-8"),
            "--listen-client-urls",
            &url(port),
        ],
        &[("ETCD_DATA_DIR", env_dir.to_str().expect("utf-8"))],
    );
    rivet.wait_healthy(port);
    assert!(flag_dir.join("member/wal").is_dir());
    assert!(!env_dir.exists());
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
