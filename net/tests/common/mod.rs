//! Test support: real `rivet` and `etcd` processes on free loopback ports, and `etcdctl`.
//! Every process is killed and reaped when its handle drops (also when a test panics), so
//! no test leaves a process behind.

#![allow(dead_code)]

pub mod cluster;
pub mod dns;
pub mod etcdctl;
pub mod history;
pub mod kv_diff;
pub mod request_fuzz;
pub mod rng;
pub mod tls;
pub mod watch;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Ports the tests hand to servers: below Linux's default ephemeral range (32768–60999),
/// so that no outgoing connection of another test takes one between the check here and
/// the server's bind (CI once saw etcd fail with "address already in use" on a port
/// `bind(0)` had just returned), and never the same twice in one test process.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port, free for TCP and UDP a moment ago (see [`TEST_PORTS`]).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Each test binary starts elsewhere in the range, so that a server a previous binary
    // left in TIME_WAIT or still stopping is unlikely to be in the way.
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (TEST_PORTS.start + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// A loopback UDP port (rivet's peer transport is QUIC) that was free a moment ago.
pub fn free_udp_port() -> u16 {
    free_port()
}

fn wait_for_health(endpoint: &str, child: &mut Child, log: &Path) {
    wait_for_health_body(endpoint, child, log, |body| {
        body.contains("\"health\":\"true\"")
    });
}

/// Waits until `/health` answers with a body `accept` takes.
fn wait_for_health_body(
    endpoint: &str,
    child: &mut Child,
    log: &Path,
    accept: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited with {status} before becoming healthy; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(body) = http_get(endpoint, "/health") {
            if accept(&body) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "server at {endpoint} not healthy after 30 s; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 POST of a JSON body with extra headers (etcd's JSON gateway).
pub fn http_post(
    endpoint: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// A minimal HTTP/1.1 GET (no client library needed for two endpoints).
pub fn http_get(endpoint: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// An HTTP response as [`http_get_parts`] splits it: status code, headers (names
/// lower-cased, in order) and body.
pub type HttpParts = (u16, Vec<(String, String)>, String);

/// [`http_get`] split into the status code, the headers and the body. The response must
/// carry a `Content-Length` body (not chunked).
pub fn http_get_parts(endpoint: &str, path: &str) -> std::io::Result<HttpParts> {
    let response = http_get(endpoint, path)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// A `rivet` member started by a test.
pub struct Rivet {
    child: Option<Child>,
    pub port: u16,
    /// The https client port of a member started with [`Rivet::start_secure`] (0 if none).
    pub tls_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// Extra environment variables (test-only settings).
    env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Rivet {
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_rivet")
    }

    /// Starts a member in a fresh temporary data dir with extra flags.
    pub fn start(extra: &[&str]) -> Rivet {
        Rivet::start_with_env(extra, &[])
    }

    /// Starts a member in a fresh temporary data dir with extra flags and environment
    /// variables (test-only settings such as `RIVET_TEST_WATCH_RECENT_CHANGES`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Rivet {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data.rivet");
        let mut rivet = Rivet::start_in_with_env(&data_dir, extra, env);
        rivet._dir = Some(dir);
        rivet
    }

    /// Starts a member on `data_dir` (kept by the caller) with extra flags.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Rivet {
        Rivet::start_in_with_env(data_dir, extra, &[])
    }

    /// Starts a member that serves clients on an https URL ([`Rivet::tls_url`]) besides
    /// its plain http one (used to wait for health); `extra` carries the TLS flags.
    pub fn start_secure(extra: &[&str]) -> Rivet {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data.rivet");
        let mut rivet = Rivet::start_in_with(&data_dir, extra, &[], free_port());
        rivet._dir = Some(dir);
        rivet
    }

    /// Starts a member on `data_dir` (kept by the caller) with extra flags and
    /// environment variables.
    pub fn start_in_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Rivet {
        Rivet::start_in_with(data_dir, extra, env, 0)
    }

    fn start_in_with(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        tls_port: u16,
    ) -> Rivet {
        let port = free_port();
        let (listen, advertise) = if tls_port == 0 {
            (
                format!("http://127.0.0.1:{port}"),
                format!("http://127.0.0.1:{port}"),
            )
        } else {
            (
                format!("http://127.0.0.1:{port},https://127.0.0.1:{tls_port}"),
                format!("https://127.0.0.1:{tls_port}"),
            )
        };
        let mut args = vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen-client-urls".to_string(),
            listen,
            "--advertise-client-urls".to_string(),
            advertise,
        ];
        // A member of its own: a peer URL of its own, unless the test sets cluster flags.
        if !extra.iter().any(|a| a.starts_with("--listen-peer-urls")) {
            let peer = format!("http://127.0.0.1:{}", free_udp_port());
            args.extend([
                "--listen-peer-urls".to_string(),
                peer.clone(),
                "--initial-advertise-peer-urls".to_string(),
                peer.clone(),
                "--initial-cluster".to_string(),
                format!("default={peer}"),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut rivet = Rivet {
            child: None,
            port,
            tls_port,
            data_dir: data_dir.to_path_buf(),
            log: data_dir.with_extension(format!("{port}.log")),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: None,
        };
        rivet.spawn();
        rivet
    }

    fn spawn(&mut self) {
        self.spawn_unchecked();
        self.wait_healthy();
    }

    /// Starts the process without waiting for it to serve.
    fn spawn_unchecked(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(Rivet::binary())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rivet");
        self.child = Some(child);
    }

    /// Waits until the member answers `/health` (panics if it exits first).
    pub fn wait_healthy(&mut self) {
        let endpoint = self.endpoint();
        let child = self.child.as_mut().expect("a running member");
        wait_for_health(&endpoint, child, &self.log);
    }

    /// [`Rivet::restart`] without waiting for `/health`: for tests of what a member
    /// answers from the moment it accepts connections. Call [`Rivet::wait_healthy`]
    /// after.
    pub fn restart_unchecked(&mut self) {
        assert!(self.child.is_none(), "stop or kill the member first");
        self.spawn_unchecked();
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The https client URL of a member started with [`Rivet::start_secure`].
    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `kill -9`: no checkpoint, no flush; what was acknowledged must survive.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the graceful stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("rivet did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits up to `limit` for the member to exit by itself (it stopped, or crashed)
    /// and returns its exit status; panics if it is still running then.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running member");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rivet did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the member exited by itself within `wait`.
    pub fn exits_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => return true,
                _ if Instant::now() > deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Replaces the extra environment variables of the next [`Rivet::restart`].
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Starts the same member again with other environment variables.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.set_env(env);
        self.restart();
    }

    /// Starts the same member again on the same data dir and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the member first");
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rivet {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real etcd 3.4 (Debian's `etcd-server`) started by a test, for differential checks.
pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The https client port of an etcd started with [`Etcd::start_secure`] (0 if none).
    pub tls_port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Etcd {
    /// Whether an `etcd` binary is on PATH (`.ci/run` installs it).
    pub fn available() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts a member in a fresh temporary data dir with extra flags.
    pub fn start(extra: &[&str]) -> Etcd {
        Etcd::start_with(extra, 0)
    }

    /// Like [`Rivet::start_secure`]: an https client URL ([`Etcd::tls_url`]) besides the
    /// plain one; `extra` carries the TLS flags.
    pub fn start_secure(extra: &[&str]) -> Etcd {
        Etcd::start_with(extra, free_port())
    }

    fn start_with(extra: &[&str], tls_port: u16) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut etcd =
            Etcd::start_in_until(&dir.path().join("data.etcd"), extra, tls_port, |body| {
                body.contains("\"health\":\"true\"")
            });
        etcd._dir = Some(dir);
        etcd
    }

    /// Starts a member on `data_dir` (kept by the caller: an existing data dir, e.g. one
    /// `etcdctl snapshot restore` made, or a new one), its log beside it.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Etcd {
        Etcd::start_in_until(data_dir, extra, 0, |body| {
            body.contains("\"health\":\"true\"")
        })
    }

    /// Like [`Etcd::start_in`] for a data dir with an active alarm: etcd then answers
    /// `/health` with `"health":"false"` while it serves.
    pub fn start_in_with_alarm(data_dir: &Path, extra: &[&str]) -> Etcd {
        Etcd::start_in_until(data_dir, extra, 0, |body| body.contains("\"health\":"))
    }

    fn start_in_until(
        data_dir: &Path,
        extra: &[&str],
        tls_port: u16,
        ready: impl Fn(&str) -> bool,
    ) -> Etcd {
        let port = free_port();
        let peer = free_port();
        let log_path = data_dir.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let (client_url, advertise_url) = if tls_port == 0 {
            (
                format!("http://127.0.0.1:{port}"),
                format!("http://127.0.0.1:{port}"),
            )
        } else {
            (
                format!("http://127.0.0.1:{port},https://127.0.0.1:{tls_port}"),
                format!("https://127.0.0.1:{tls_port}"),
            )
        };
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &advertise_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        wait_for_health_body(&format!("127.0.0.1:{port}"), &mut child, &log_path, ready);
        Etcd {
            child: Some(child),
            port,
            data_dir: data_dir.to_path_buf(),
            tls_port,
            _dir: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether the etcd process has exited (it panics on a few requests).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The end of etcd's log (at most `lines` lines).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.data_dir.with_extension(format!("{}.log", self.port));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM and wait: etcd commits its backend and closes its files, so the data dir
    /// can be read (`member/snap/db`).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_gracefully(child, "etcd");
        }
    }

    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port)
    }

    /// `kill -9`: etcd's backend keeps only what its last batch commit wrote; the rest
    /// is in its WAL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `etcdctl` (v3 API) against `endpoint` with `args`, feeding `stdin`.
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (apt-get install etcd-client)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl output")
}

/// Runs `etcdctl` for at most `seconds` (for commands that never end by themselves, such
/// as `watch`): what it printed by then.
pub fn etcdctl_for(endpoint: &str, args: &[&str], seconds: u32) -> Output {
    Command::new("timeout")
        .arg(seconds.to_string())
        .arg("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run timeout etcdctl")
}

/// stdout of a successful etcdctl run; panics with stderr otherwise.
pub fn etcdctl_ok(endpoint: &str, args: &[&str]) -> String {
    let output = etcdctl(endpoint, args, None);
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a comparison looks at: exit status, stdout, and stderr without the client's
/// JSON log lines (they carry timestamps and connection IDs).
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Replaces the digits after `pattern` with `N`.
pub fn mask_number_after(text: &str, pattern: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(pattern) {
        let after = at + pattern.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('N');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Masks member and cluster IDs and raft terms in `-w json` and `-w fields` output.
pub fn mask(text: &str) -> String {
    [
        "\"cluster_id\":",
        "\"member_id\":",
        "\"raft_term\":",
        "\"ClusterID\" : ",
        "\"MemberID\" : ",
        "\"RaftTerm\" : ",
    ]
    .iter()
    .fold(text.to_string(), |t, pattern| {
        mask_number_after(&t, pattern)
    })
}

pub fn seen(output: Output) -> Seen {
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.starts_with("{\"level\":"))
        .map(|line| format!("{line}\n"))
        .collect();
    Seen {
        success: output.status.success(),
        stdout: mask(&String::from_utf8_lossy(&output.stdout)),
        stderr,
    }
}

/// A tokio runtime for tests that use the `etcd-client` crate.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// etcd's prefix end (clientv3 `GetPrefixRangeEnd`): the key with its last byte below
/// 0xff incremented and what follows it dropped; `"\0"` (every key from there on) when
/// every byte is 0xff or the key is empty.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// [`prefix_end`] as `Bytes` (protobuf fields of the raw clients).
pub fn prefix_end_bytes(key: &[u8]) -> bytes::Bytes {
    bytes::Bytes::from(prefix_end(key))
}

/// Waits (without blocking the runtime) until `done`, at most `limit`; panics naming
/// `what` after that.
pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bound on one request or wait of a test: a server that never answers fails the
/// test instead of hanging it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// `f`, or a panic naming `what` if it takes longer than [`ANSWER_TIMEOUT`].
pub async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(ANSWER_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_TIMEOUT:?}"))
}

/// A gRPC channel to `endpoint` (`host:port`), for the raw generated clients.
pub async fn grpc_channel(endpoint: &str) -> tonic::transport::Channel {
    grpc_channel_with_window(endpoint, None).await
}

/// [`grpc_channel`] with an initial HTTP/2 stream window (small windows make a slow
/// client).
pub async fn grpc_channel_with_window(
    endpoint: &str,
    stream_window: Option<u32>,
) -> tonic::transport::Channel {
    let url = if endpoint.starts_with("http") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let mut builder = tonic::transport::Endpoint::from_shared(url.clone()).expect("endpoint url");
    if let Some(window) = stream_window {
        builder = builder.initial_stream_window_size(window);
    }
    bounded("connect", builder.connect())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Fails (never skips) unless etcd 3.4 is on PATH: the differential tests need it.
pub fn require_etcd_34() {
    assert!(
        Etcd::available(),
        "this test needs etcd 3.4 on PATH (apt-get install etcd-server, as CI does); it \
         fails rather than skip"
    );
    let version = Command::new("etcd")
        .arg("--version")
        .output()
        .expect("etcd --version");
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        text.contains("etcd Version: 3.4."),
        "this test needs etcd 3.4, found:\n{text}"
    );
}

/// The first lines where two pretty-printed answers differ, with a little context.
pub fn first_line_difference(etcd: &str, rivet: &str) -> String {
    let e: Vec<&str> = etcd.lines().collect();
    let r: Vec<&str> = rivet.lines().collect();
    let at = (0..e.len().max(r.len()))
        .find(|&i| e.get(i) != r.get(i))
        .unwrap_or(0);
    let from = at.saturating_sub(4);
    let mut out = String::new();
    for i in from..at {
        out.push_str(&format!("        {}\n", e.get(i).unwrap_or(&"")));
    }
    out.push_str(&format!(
        "  etcd: {}\n rivet: {}\n",
        e.get(at).unwrap_or(&"<end>"),
        r.get(at).unwrap_or(&"<end>")
    ));
    out
}

/// `b` as `Bytes` (protobuf fields of the raw clients).
pub fn bytes(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}

/// Clears what differs between any two clusters in a response header: the member and
/// cluster IDs (random per cluster). `raft_term` stays: rivet elects itself at term 2,
/// like etcd's bootstrap.
pub fn clear_ids(header: &mut Option<rivet_api::etcdserverpb::ResponseHeader>) {
    if let Some(h) = header {
        h.member_id = 0;
        h.cluster_id = 0;
    }
}

/// A unary gRPC answer or its error (code and message), as text comparable across
/// servers.
pub fn grpc_outcome<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> String {
    match result {
        Ok(r) => format!("{:?}", r.into_inner()),
        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
    }
}

/// What a process that was expected to stop by itself printed.
#[derive(Debug)]
pub struct Exited {
    /// The exit code (`None` if it had to be killed: it did not stop within 20 s).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args` in `cwd` with only `env` for its `ETCD_*`/`RIVET_*` variables and
/// waits (at most 20 s) for it to exit by itself: for command lines that must be refused.
pub fn run_to_exit(program: &str, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Exited {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("ETCD_") || name.starts_with("RIVET_") {
            command.env_remove(name);
        }
    }
    let out = cwd.join(format!("exit-{}.out", free_port()));
    let err = cwd.join(format!("exit-{}.err", free_port()));
    let mut child = command
        .current_dir(cwd)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exited {
        code,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// An HTTP/1.1 answer: status, headers (names in lower case) and body bytes.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with extra header lines (`Host` given there replaces the
/// default); the body is read whole (content-length, chunked or until close).
pub fn http_request(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(endpoint)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {endpoint}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = body.as_slice();
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..end])
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = end + 2;
            decoded.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
            rest = &rest[(start + size + 2).min(rest.len())..];
        }
        body = decoded;
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// An `--auth-token` value for RS256 JWTs with a key pair made by openssl in `dir`.
pub fn jwt_option(dir: &std::path::Path) -> String {
    let private = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let made = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .expect("openssl genrsa");
    assert!(made.status.success(), "{made:?}");
    let made = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("openssl rsa -pubout");
    assert!(made.status.success(), "{made:?}");
    format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        public.display(),
        private.display()
    )
}

/// SIGTERM, then wait up to 20 s for `child` (named `name` in the panic) to exit.
pub fn stop_gracefully(mut child: std::process::Child, name: &str) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(child.try_wait(), Ok(Some(_))) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
