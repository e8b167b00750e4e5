//! A rivet cluster of real processes on loopback for tests: each member gets free client
//! and peer ports and a data directory under one temp dir; `RIVET_TEST_FAULTS=1` enables
//! the transport's isolate/heal switch. Members are killed when dropped.
//!
//! The same harness starts a real etcd 3.4 cluster ([`Cluster::start_etcd`]) with the
//! same flags, so that tests can run one script against both and compare.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{etcdctl, etcdctl_ok, free_port, free_udp_port, Rivet};

pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub dir: std::path::PathBuf,
    pub child: Option<Child>,
    /// A real etcd member (peer port on TCP) instead of rivet (peer port on UDP).
    pub etcd: bool,
    /// `http`, or `https` for members whose peer flags carry certificates.
    pub peer_scheme: &'static str,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer)
    }

    pub fn start(&mut self, initial_cluster: &str, state: &str, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("log");
        let client = format!("http://127.0.0.1:{}", self.client);
        let binary = if self.etcd { "etcd" } else { Rivet::binary() };
        let child = Command::new(binary)
            .env("RIVET_TEST_FAULTS", "1")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args(["--listen-peer-urls", &self.peer_url()])
            // A test may advertise another member's URL (an impostor).
            .args(
                if extra
                    .iter()
                    .any(|a| a.starts_with("--initial-advertise-peer-urls"))
                {
                    vec![]
                } else {
                    vec!["--initial-advertise-peer-urls".to_string(), self.peer_url()]
                },
            )
            .args(["--initial-cluster-token", "cluster-test"])
            .args([
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                state,
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(if self.etcd {
                &[][..]
            } else {
                &["--pin-cores=false"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start rivet");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the graceful stop (the member checkpoints its shards first).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            super::stop_gracefully(child, &self.name);
        }
    }

    /// Waits up to `limit` for the member to exit by itself; its exit status, or `None`
    /// if it still runs.
    pub fn exit_status(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// Sets this member's test-only fault switch (`engine/src/raft/faults.rs`), e.g.
    /// `drop=0.2`, `delay_ms=120`, `duplicate=0.3`, `deaf_to=<hex id>`; "" turns it off.
    pub fn set_faults(&self, query: &str) {
        let answer = super::http_get(&self.endpoint(), &format!("/rivet/test/faults?{query}"))
            .expect("fault switch");
        assert!(answer.contains(" 200 "), "fault switch {query}: {answer}");
    }

    /// Clears every fault of the test switch (isolation included).
    pub fn heal(&self) {
        let answer = super::http_get(&self.endpoint(), "/rivet/test/heal").expect("heal");
        assert!(answer.contains(" 200 "), "heal: {answer}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_of(false, size, extra)
    }

    /// A rivet cluster with https peer URLs; `extra` carries the peer TLS flags.
    pub fn start_https_peers(size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_scheme(false, "https", size, extra)
    }

    /// A real etcd 3.4 cluster started with the same flags as [`Cluster::start`].
    pub fn start_etcd(size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_of(true, size, extra)
    }

    fn start_of(etcd: bool, size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_scheme(etcd, "http", size, extra)
    }

    fn start_with_scheme(
        etcd: bool,
        peer_scheme: &'static str,
        size: usize,
        extra: &[&str],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: if etcd { free_port() } else { free_udp_port() },
                dir: dir
                    .path()
                    .join(format!("m{i}.{}", if etcd { "etcd" } else { "rivet" })),
                child: None,
                etcd,
                peer_scheme,
            })
            .collect();
        let initial = Cluster::initial(&members);
        for member in &mut members {
            member.start(&initial, "new", extra);
        }
        let cluster = Cluster { members, dir };
        cluster.wait_for_leader(None);
        cluster
    }

    /// A member that is not started yet, with fresh ports and a data dir beside the
    /// others (for `member add` tests).
    pub fn new_member(&self, name: &str) -> Member {
        let etcd = self.members.first().is_some_and(|m| m.etcd);
        Member {
            name: name.into(),
            client: free_port(),
            peer: if etcd { free_port() } else { free_udp_port() },
            dir: self.dir.path().join(format!("{name}.rivet")),
            child: None,
            etcd,
            peer_scheme: self.members.first().map_or("http", |m| m.peer_scheme),
        }
    }

    /// Starts `member`, already added with `member add`, with `--initial-cluster-state
    /// existing` and the cluster's members plus itself; returns its index.
    pub fn join(&mut self, mut member: Member, extra: &[&str]) -> usize {
        let mut names: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        names.push(format!("{}={}", member.name, member.peer_url()));
        member.start(&names.join(","), "existing", extra);
        self.members.push(member);
        self.members.len() - 1
    }

    /// The ID of the member named `name` (hex, as `member list` prints it).
    pub fn member_id(endpoint: &str, name: &str) -> String {
        let list = etcdctl_ok(endpoint, &["member", "list"]);
        list.lines()
            .find(|l| l.split(", ").nth(2) == Some(name))
            .and_then(|l| l.split(',').next())
            .unwrap_or_else(|| panic!("{name} not in member list:\n{list}"))
            .to_string()
    }

    pub fn initial(members: &[Member]) -> String {
        members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect()
    }

    /// The index of the member that says it leads, if a running member does.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some() && {
                let out = etcdctl(
                    &m.endpoint(),
                    &[
                        "endpoint",
                        "status",
                        "-w",
                        "json",
                        "--command-timeout",
                        "2s",
                    ],
                    None,
                );
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let s = &status[0]["Status"];
                !s.is_null() && s["leader"] == s["header"]["member_id"]
            }
        })
    }

    pub fn wait_for_leader(&self, not: Option<usize>) -> usize {
        let mut found = None;
        wait_until("a member leads", Duration::from_secs(30), || {
            found = self.leader().filter(|l| Some(*l) != not);
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// Every running member's HashKV; `None` while one does not answer (a member that
    /// just rejoined may still be catching up).
    pub fn hashes(&self) -> Option<Vec<String>> {
        self.endpoints()
            .iter()
            .map(|e| {
                let out = etcdctl(e, &["endpoint", "hashkv", "-w", "json"], None);
                if !out.status.success() {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                Some(v[0]["HashKV"]["hash"].to_string())
            })
            .collect()
    }

    pub fn wait_converged(&self) {
        wait_until(
            "every member has the same HashKV",
            Duration::from_secs(30),
            || {
                self.hashes()
                    .is_some_and(|hashes| hashes.windows(2).all(|w| w[0] == w[1]))
            },
        );
    }
}

pub fn put_ok(endpoint: &str, key: &str, value: &str) -> bool {
    etcdctl(
        endpoint,
        &["put", key, value, "--command-timeout", "3s"],
        None,
    )
    .status
    .success()
}
