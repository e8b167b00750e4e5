//! etcdctl processes that run for a while (watch, lock, elect, watch -i): their output
//! is collected while they run. The one-shot runner is `common::etcdctl`.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A long-running etcdctl whose output is collected while it runs; killed and reaped on
/// drop, also when the test panics.
pub struct EtcdctlProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                break;
            }
            into.lock().expect("lock").extend_from_slice(&buffer[..n]);
        }
    })
}

/// stderr without clientv3's JSON log lines (retry warnings differ between runs).
pub fn without_client_log(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs one etcdctl command to completion: (success, stdout, stderr without clientv3's
/// JSON log lines).
pub fn run(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let output = super::etcdctl(endpoint, args, None);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        without_client_log(&output.stderr),
    )
}

impl EtcdctlProcess {
    pub fn spawn(endpoint: &str, args: &[&str], with_stdin: bool) -> EtcdctlProcess {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .args(args)
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run etcdctl (apt-get install etcd-client)");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), out.clone()),
            collect(child.stderr.take().expect("stderr"), err.clone()),
        ];
        EtcdctlProcess {
            stdin: child.stdin.take(),
            child,
            out,
            err,
            readers,
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().expect("lock")).into_owned()
    }

    pub fn input(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with stdin");
        stdin.write_all(line.as_bytes()).expect("write to etcdctl");
        stdin.flush().expect("flush");
    }

    /// Waits (at most 15 s) until stdout satisfies `done`; false if it never does.
    pub fn wait_until(&self, done: impl Fn(&str) -> bool) -> bool {
        self.wait_until_within(Duration::from_secs(15), done)
    }

    /// Waits at most `limit` until stdout satisfies `done`; false if it does not.
    pub fn wait_until_within(&self, limit: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done(&self.stdout()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done(&self.stdout())
    }

    /// Waits (bounded) until stdout contains `needle`; false if it never does.
    pub fn wait_for(&self, needle: &str) -> bool {
        self.wait_until(|out| out.contains(needle))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM (etcdctl's lock and elect release what they hold), then the exit status
    /// and everything it wrote (stderr without the client's JSON log lines).
    pub fn finish(mut self) -> (bool, String, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let err = without_client_log(&self.err.lock().expect("lock"));
        (status.success(), self.stdout(), err)
    }
}

impl Drop for EtcdctlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Masks what legitimately differs in etcdctl output: member and cluster IDs (JSON).
pub fn mask_ids(text: &str) -> String {
    mask_fields(text, &["\"cluster_id\":", "\"member_id\":"])
}

/// Like [`mask_ids`], and the raft term too: for comparing two clusters, whose terms
/// depend on how many elections their starts took (as in `differential.rs`).
pub fn mask_ids_and_term(text: &str) -> String {
    mask_fields(
        text,
        &["\"cluster_id\":", "\"member_id\":", "\"raft_term\":"],
    )
}

/// `text` with the number after each of `patterns` replaced by `N`.
fn mask_fields(text: &str, patterns: &[&str]) -> String {
    let mut out = text.to_string();
    for pattern in patterns {
        let mut masked = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(pattern) {
            let after = at + pattern.len();
            masked.push_str(&rest[..after]);
            rest = &rest[after..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            masked.push('N');
            rest = &rest[digits..];
        }
        masked.push_str(rest);
        out = masked;
    }
    out
}
