//! Test support: real `rivet` and `etcd` processes on free loopback ports, and `etcdctl`.
//! Every process is killed and reaped when its handle drops (also when a test panics), so
//! no test leaves a process behind.

#![allow(dead_code)]

pub mod cluster;
pub mod history;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A loopback UDP port (rivet's peer transport is QUIC) that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    socket.local_addr().expect("local addr").port()
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

/// A `rivet` member started by a test.
pub struct Rivet {
    child: Option<Child>,
    pub port: u16,
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

    /// Starts a member on `data_dir` (kept by the caller) with extra flags and
    /// environment variables.
    pub fn start_in_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Rivet {
        let port = free_port();
        let mut args = vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen-client-urls".to_string(),
            format!("http://127.0.0.1:{port}"),
            "--advertise-client-urls".to_string(),
            format!("http://127.0.0.1:{port}"),
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
        let log = std::fs::File::create(&self.log).expect("log file");
        let mut child = Command::new(Rivet::binary())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rivet");
        wait_for_health(&self.endpoint(), &mut child, &self.log);
        self.child = Some(child);
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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

    /// Waits until the member exits by itself (a test crash point killed it), at most
    /// 60 s.
    pub fn wait_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("rivet did not exit within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
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
        let dir = tempfile::tempdir().expect("temp dir");
        let mut etcd = Etcd::start_in(&dir.path().join("data.etcd"), extra);
        etcd._dir = Some(dir);
        etcd
    }

    /// Starts a member on `data_dir` (kept by the caller: an existing data dir, e.g. one
    /// `etcdctl snapshot restore` made, or a new one), its log beside it.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Etcd {
        Etcd::start_in_until(data_dir, extra, |body| body.contains("\"health\":\"true\""))
    }

    /// Like [`Etcd::start_in`] for a data dir with an active alarm: etcd then answers
    /// `/health` with `"health":"false"` while it serves.
    pub fn start_in_with_alarm(data_dir: &Path, extra: &[&str]) -> Etcd {
        Etcd::start_in_until(data_dir, extra, |body| body.contains("\"health\":"))
    }

    fn start_in_until(data_dir: &Path, extra: &[&str], ready: impl Fn(&str) -> bool) -> Etcd {
        let port = free_port();
        let peer = free_port();
        let log_path = data_dir.with_extension(format!("{port}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
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
            _dir: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: etcd commits its backend and closes its files, so the data dir
    /// can be read (`member/snap/db`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("etcd did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
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

/// A tokio runtime for tests that use the `etcd-client` crate.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
