//! Starting rivet or etcd, one member or three, on free loopback ports in a temporary
//! directory, with the same (etcd's) flags; a [`Cluster`] kills its processes when dropped,
//! so they go away on errors and panics too.

use std::collections::HashSet;
use std::fmt;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rivet_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rivet_api::etcdserverpb::StatusRequest;

use crate::workloads::connect_channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rivet,
    Etcd,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Rivet => "rivet",
            Kind::Etcd => "etcd",
        })
    }
}

/// Ports handed out by this process, never handed out twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port free for TCP and UDP (rivet's peers speak QUIC over UDP), as far as one
/// can tell before the server binds it.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
        let port = listener.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut handed_out = HANDED_OUT.lock().expect("port set lock");
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

/// `name` on PATH, or `name` itself if it holds a '/'.
pub fn find_on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The servers' TLS files: both get the same certificate, and with a CA they require
/// client certificates from it.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl ServerTls {
    fn flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--cert-file".to_string(),
            self.cert.display().to_string(),
            "--key-file".into(),
            self.key.display().to_string(),
        ];
        if let Some(ca) = &self.ca {
            flags.extend([
                "--trusted-ca-file".to_string(),
                ca.display().to_string(),
                "--client-cert-auth".into(),
            ]);
        }
        flags
    }
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Member {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

/// A running rivet or etcd cluster; dropping it kills the members.
/// `compare --server-cpus`: the CPUs every server process starts on (set once).
pub static SERVER_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `members` members of `kind` from `binary` and waits until they serve with a
    /// leader (up to `timeout`); tries again on fresh ports, twice, if a member found its
    /// port taken.
    pub async fn start(
        kind: Kind,
        binary: &Path,
        members: usize,
        timeout: Duration,
    ) -> anyhow::Result<Cluster> {
        Cluster::start_with_tls(kind, binary, members, timeout, None).await
    }

    /// [`Cluster::start`] with clients served over TLS when `tls` is given.
    pub async fn start_with_tls(
        kind: Kind,
        binary: &Path,
        members: usize,
        timeout: Duration,
        tls: Option<&ServerTls>,
    ) -> anyhow::Result<Cluster> {
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            match Cluster::start_once(kind, binary, members, timeout, tls).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => {
                    let message = format!("{e:#}");
                    let port_taken = message.to_lowercase().contains("address already in use");
                    failures.push(if attempt == 1 {
                        message
                    } else {
                        format!("on fresh ports: {message}")
                    });
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        bail!(
            "{kind} ({members} member{}) did not start: {}",
            if members == 1 { "" } else { "s" },
            failures.join("\n")
        )
    }

    async fn start_once(
        kind: Kind,
        binary: &Path,
        members: usize,
        timeout: Duration,
        tls: Option<&ServerTls>,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rivet-bench-{kind}-"))
            .tempdir()
            .context("creating a temporary directory")?;
        let mut ports = Vec::with_capacity(members);
        for _ in 0..members {
            ports.push((free_port()?, free_port()?));
        }
        let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("rivet-bench-{}-{}", std::process::id(), ports[0].0);
        let mut cluster = Cluster {
            kind,
            members: Vec::with_capacity(members),
            dir,
        };
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let log = cluster.dir.path().join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let client_url = format!(
                "{}://127.0.0.1:{client}",
                if tls.is_some() { "https" } else { "http" }
            );
            let tls_flags = tls.map(ServerTls::flags).unwrap_or_default();
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data_dir = cluster.dir.path().join(format!("{name}.{kind}"));
            // Members of one cluster share this machine's CPUs: rivet's would queue on the
            // same pinned CPUs (etcd's Go threads are never pinned).
            let pin_cores: &[&str] = match (kind, members) {
                (Kind::Rivet, 2..) => &["--pin-cores=false"],
                _ => &[],
            };
            let mut command = Command::new(binary);
            if let Some(cpus) = SERVER_CPUS.get() {
                crate::cpus::pin_command(&mut command, cpus.clone());
            }
            let child = command
                .args(pin_cores)
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", &token])
                .args(["--initial-cluster-state", "new"])
                .args(["--log-level", "warn"])
                .args(&tls_flags)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            cluster.members.push(Member {
                name: name.clone(),
                client_port: *client,
                log,
                child,
            });
        }
        cluster.wait_ready(timeout).await?;
        Ok(cluster)
    }

    /// Waits until every member answers Maintenance.Status naming a leader.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            loop {
                let member = &mut self.members[i];
                if let Some(status) = member.child.try_wait()? {
                    bail!(
                        "{} member {} exited ({status}); its log ends:\n{}",
                        self.kind,
                        member.name,
                        log_tail(&member.log)
                    );
                }
                let endpoint = member.endpoint();
                let ready = tokio::time::timeout(Duration::from_secs(2), async {
                    // Without --user: the users may not exist yet (compare --setup-auth).
                    let channel = connect_channel(&endpoint).await?;
                    let status = MaintenanceClient::new(channel)
                        .status(StatusRequest {})
                        .await?
                        .into_inner();
                    anyhow::Ok(status.leader != 0)
                })
                .await;
                if matches!(ready, Ok(Ok(true))) {
                    break;
                }
                if Instant::now() > deadline {
                    let member = &self.members[i];
                    bail!(
                        "{} member {} not ready with a leader after {:?}; its log ends:\n{}",
                        self.kind,
                        member.name,
                        timeout,
                        log_tail(&member.log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Member::pid).collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the members (also done on drop).
    pub fn stop(&mut self) {
        for member in &mut self.members {
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last lines of a log file, indented.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() {
        "    (empty)".to_string()
    } else {
        tail.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
