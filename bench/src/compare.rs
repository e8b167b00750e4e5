//! `rivet-bench compare`: starts rivet, runs the workloads against it, stops it; then the
//! same with etcd; and prints one table of both servers' throughput, latency, CPU time per
//! operation and peak memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use rivet_api::etcdserverpb::kv_client::KvClient;
use rivet_api::etcdserverpb::PutRequest;
use serde::Serialize;

use crate::cli::{Args, Command, CompareArgs};
use crate::servers::{find_on_path, Cluster, Kind, ServerTls};
use crate::timeline::{self, Timeline};
use crate::{plot, procstat, workloads};

/// How long a server gets to start and elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One workload to run against both servers.
#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub args: Args,
}

/// The default workloads: put with 1 connection and 1 client, put with 100 connections and
/// 1000 clients, linearizable and serializable range with 100/1000 (etcd's performance
/// documentation's set).
pub const DEFAULT_WORKLOADS: [&str; 4] = [
    "--conns 1 --clients 1 put --key-size 8 --val-size 256 --sequential-keys",
    "--conns 100 --clients 1000 put --key-size 8 --val-size 256 --sequential-keys",
    "--conns 100 --clients 1000 range foo --consistency l",
    "--conns 100 --clients 1000 range foo --consistency s",
];

/// Parses a workload, the global flags of the `compare` invocation being its defaults.
pub fn parse_spec(global: &Args, tokens: &[String]) -> anyhow::Result<Spec> {
    let mut argv: Vec<String> = vec![
        "rivet-bench".into(),
        "--total".into(),
        global.total().to_string(),
        "--conns".into(),
        global.conns.to_string(),
        "--clients".into(),
        global.clients.to_string(),
        "--rate".into(),
        global.rate.to_string(),
        "--timeline-interval".into(),
        global.timeline_interval.to_string(),
    ];
    if global.target_leader {
        argv.push("--target-leader".into());
    }
    if global.json {
        argv.push("--json".into());
    }
    argv.extend(tokens.iter().cloned());
    let mut args = Args::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("workload {:?}: {e}", tokens.join(" ")))?;
    if matches!(args.command, Command::Compare(_) | Command::Memory(_)) {
        bail!(
            "workload {:?}: compare and memory cannot be workloads",
            tokens.join(" ")
        );
    }
    // Output options belong to compare itself.
    args.hdr_out = None;
    args.plot = None;
    args.timeline = None;
    let label = short_label(&args);
    Ok(Spec { label, args })
}

/// E.g. `put conns=1 clients=1`, `range serializable conns=100 clients=1000`.
pub fn short_label(args: &Args) -> String {
    let consistency = |c: &str| {
        if c == "s" {
            "serializable"
        } else {
            "linearizable"
        }
    };
    let detail = match &args.command {
        Command::Range(a) => format!(
            " {}{}",
            consistency(&a.consistency),
            if a.count_only { " count-only" } else { "" }
        ),
        Command::TxnMixed(a) => {
            format!(" {} rw-ratio={}", consistency(&a.consistency), a.rw_ratio)
        }
        Command::TxnPut(a) => format!(" txn-ops={}", a.txn_ops),
        _ => String::new(),
    };
    let mut label = format!(
        "{}{detail} conns={} clients={}",
        args.command.name(),
        args.conns,
        args.clients
    );
    if args.rate > 0 {
        label.push_str(&format!(" rate={}", args.rate));
    }
    if args.target_leader {
        label.push_str(" target-leader");
    }
    label
}

/// The workloads of a `compare` invocation: `--workload`s, then the trailing one; the
/// defaults if neither is given.
pub fn specs(global: &Args, compare: &CompareArgs) -> anyhow::Result<Vec<Spec>> {
    let mut lists: Vec<Vec<String>> = compare
        .workloads
        .iter()
        .map(|w| w.split_whitespace().map(String::from).collect())
        .collect();
    if !compare.workload.is_empty() {
        lists.push(compare.workload.clone());
    }
    if lists.is_empty() {
        lists = DEFAULT_WORKLOADS
            .iter()
            .map(|w| w.split_whitespace().map(String::from).collect())
            .collect();
    }
    lists
        .iter()
        .map(|tokens| parse_spec(global, tokens))
        .collect()
}

/// rivet's binary: `--rivet`, else `release/rivet` under $CARGO_TARGET_DIR or the
/// repository's `target/`, else next to this binary.
pub fn rivet_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--rivet {}: no such file", path.display());
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("release/rivet"));
    }
    if let Some(root) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        candidates.push(root.join("target/release/rivet"));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("rivet"));
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "rivet's binary not found (looked at {}): build it with `cargo build --release --bin rivet` or pass --rivet PATH",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

pub fn version_of(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

/// One server's figures for one workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cell {
    pub requests: u64,
    pub errors: u64,
    pub qps: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    /// utime + stime of the server's processes during the workload.
    pub cpu_seconds: f64,
    pub cpu_seconds_per_op: f64,
    /// The largest VmHWM of the server's processes after the workload.
    pub peak_rss_bytes: u64,
    /// rivet-bench's own CPU time per request during the workload.
    pub bench_cpu_seconds_per_op: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run's latency and throughput per interval (in the row's `timelines`).
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}

/// One server's timeline in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTimeline {
    pub server: String,
    pub round: u32,
    #[serde(flatten)]
    pub timeline: Timeline,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratio {
    pub qps: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cpu_per_op: Option<f64>,
    pub peak_rss: Option<f64>,
}

/// The lowest and highest per-round ratio of each figure (over rounds that ran both).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub qps: Option<(f64, f64)>,
    pub p50: Option<(f64, f64)>,
    pub p99: Option<(f64, f64)>,
    pub cpu_per_op: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    pub workload: String,
    pub rivet: Cell,
    pub etcd: Cell,
    /// rivet ÷ etcd.
    pub ratio: Ratio,
    /// With several rounds: each ratio's range over the rounds.
    pub spread: Spread,
    /// Latency and throughput over time: each server in each round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timelines: Vec<RoundTimeline>,
    /// `--timeline`: the SVG drawn for this workload (and its CSV next to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline_svg: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub binary: String,
    pub version: String,
    pub members: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub command: String,
    pub rivet: ServerInfo,
    pub etcd: ServerInfo,
    pub notes: Vec<String>,
    pub workloads: Vec<Row>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

impl Row {
    fn new(spec: &Spec, rivet: Cell, etcd: Cell) -> Row {
        let usable = rivet.error.is_none() && etcd.error.is_none();
        let r = |f: fn(&Cell) -> f64| {
            if usable {
                ratio(f(&rivet), f(&etcd))
            } else {
                None
            }
        };
        Row {
            label: spec.label.clone(),
            workload: spec.args.describe(),
            ratio: Ratio {
                qps: r(|c| c.qps),
                p50: r(|c| c.p50_seconds),
                p99: r(|c| c.p99_seconds),
                cpu_per_op: r(|c| c.cpu_seconds_per_op),
                peak_rss: r(|c| c.peak_rss_bytes as f64),
            },
            rivet,
            etcd,
            spread: Spread::default(),
            timelines: Vec::new(),
            timeline_svg: None,
        }
    }
}

/// Each ratio's range over the rounds in which both servers ran workload `w`.
fn spread(rivet_rounds: &[Vec<Cell>], etcd_rounds: &[Vec<Cell>], w: usize) -> Spread {
    let pairs: Vec<(&Cell, &Cell)> = rivet_rounds
        .iter()
        .zip(etcd_rounds)
        .filter_map(|(r, e)| Some((r.get(w)?, e.get(w)?)))
        .filter(|(r, e)| r.error.is_none() && e.error.is_none())
        .collect();
    let range = |f: fn(&Cell) -> f64| {
        let ratios: Vec<f64> = pairs
            .iter()
            .filter_map(|(r, e)| ratio(f(r), f(e)))
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!ratios.is_empty()).then_some((low, high))
    };
    Spread {
        qps: range(|c| c.qps),
        p50: range(|c| c.p50_seconds),
        p99: range(|c| c.p99_seconds),
        cpu_per_op: range(|c| c.cpu_seconds_per_op),
    }
}

/// The role `--setup-auth` gives the bench user.
const BENCH_ROLE: &str = "rivet-bench";
/// Root's password on servers set up by `--setup-auth` (throwaway servers of the run).
const ROOT_PASSWORD: &str = "rivet-bench-root";

/// The key ranges the workloads touch: the numeric keys of [`workloads::key_of`] (all in
/// `["0", ":")`) and each range workload's key or range.
fn bench_permissions(specs: &[Spec]) -> Vec<(Bytes, Bytes)> {
    let mut ranges = vec![(Bytes::from_static(b"0"), Bytes::from_static(b":"))];
    for spec in specs {
        if let Command::Range(a) = &spec.args.command {
            let end = a.end.as_deref().unwrap_or_default();
            ranges.push((
                Bytes::copy_from_slice(a.key.as_bytes()),
                Bytes::copy_from_slice(end.as_bytes()),
            ));
        }
    }
    ranges
}

/// `--setup-auth`: root, the bench user with readwrite on the workloads' keys, auth on.
async fn setup_auth(endpoint: &str, user: &str, specs: &[Spec]) -> anyhow::Result<()> {
    use rivet_api::authpb::{permission, Permission};
    use rivet_api::etcdserverpb::{
        auth_client::AuthClient, AuthEnableRequest, AuthRoleAddRequest,
        AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    };
    let Some((name, password)) = user.split_once(':') else {
        bail!("--user takes name:password");
    };
    let mut auth = AuthClient::new(workloads::connect_channel(endpoint).await?);
    let add_user = |name: &str, password: &str| AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        options: None,
    };
    let grant_role = |user: &str, role: &str| AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    };
    let step = "--setup-auth";
    auth.user_add(add_user("root", ROOT_PASSWORD))
        .await
        .context(step)?;
    for role in ["root", BENCH_ROLE] {
        auth.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .context(step)?;
    }
    auth.user_grant_role(grant_role("root", "root"))
        .await
        .context(step)?;
    for (key, range_end) in bench_permissions(specs) {
        let perm = Permission {
            perm_type: permission::Type::Readwrite as i32,
            key,
            range_end,
        };
        auth.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: BENCH_ROLE.into(),
            perm: Some(perm),
        })
        .await
        .context(step)?;
    }
    if name != "root" {
        auth.user_add(add_user(name, password))
            .await
            .context(step)?;
        auth.user_grant_role(grant_role(name, BENCH_ROLE))
            .await
            .context(step)?;
    }
    auth.auth_enable(AuthEnableRequest {}).await.context(step)?;
    Ok(())
}

/// Writes a small value under each single-key range workload's key, so reads find one.
async fn seed(endpoint: &str, specs: &[Spec]) -> anyhow::Result<()> {
    let mut kv = KvClient::new(workloads::connect(endpoint).await?);
    for spec in specs {
        if let Command::Range(a) = &spec.args.command {
            if a.end.is_none() {
                kv.put(PutRequest {
                    key: Bytes::copy_from_slice(a.key.as_bytes()),
                    value: Bytes::from_static(b"rivet-bench"),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("seeding key {:?}", a.key))?;
            }
        }
    }
    Ok(())
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| procstat::cpu_seconds(*pid).ok())
        .sum()
}

fn peak_rss_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| procstat::peak_rss_bytes(*pid).ok())
        .max()
        .unwrap_or(0)
}

/// The median of `values` (the upper one of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Per workload, each figure's median over the rounds that ran it without error (the
/// first round's error when none did); errors are summed and the peak memory is the
/// largest seen.
fn median_cells(rounds: &[Vec<Cell>], workloads: usize) -> Vec<Cell> {
    (0..workloads)
        .map(|w| {
            let cells: Vec<&Cell> = rounds.iter().filter_map(|round| round.get(w)).collect();
            let ok: Vec<&Cell> = cells
                .iter()
                .copied()
                .filter(|c| c.error.is_none())
                .collect();
            if ok.is_empty() {
                return cells.first().map(|c| (*c).clone()).unwrap_or_default();
            }
            let of = |field: fn(&Cell) -> f64| median(ok.iter().map(|c| field(c)).collect());
            Cell {
                requests: of(|c| c.requests as f64) as u64,
                errors: cells.iter().map(|c| c.errors).sum(),
                qps: of(|c| c.qps),
                bench_cpu_seconds_per_op: of(|c| c.bench_cpu_seconds_per_op),
                p50_seconds: of(|c| c.p50_seconds),
                p99_seconds: of(|c| c.p99_seconds),
                cpu_seconds: of(|c| c.cpu_seconds),
                cpu_seconds_per_op: of(|c| c.cpu_seconds_per_op),
                peak_rss_bytes: cells.iter().map(|c| c.peak_rss_bytes).max().unwrap_or(0),
                error: None,
                timeline: None,
            }
        })
        .collect()
}

/// The series label of `kind` in `round` of `rounds` in a compare timeline.
fn round_label(kind: Kind, round: u32, rounds: u32) -> String {
    if rounds > 1 {
        format!("{kind} round {round}")
    } else {
        kind.to_string()
    }
}

/// Where a compare run draws each workload's timeline.
struct TimelineTo<'a> {
    /// Per workload, in order.
    paths: &'a [PathBuf],
    round: u32,
    rounds: u32,
}

/// `--timeline FILE.svg`: each workload's file, `FILE-<label>.svg`; workloads of the same
/// label (e.g. puts differing only in value size) get their position in the list too.
pub fn timeline_paths(base: &Path, specs: &[Spec]) -> Vec<PathBuf> {
    specs
        .iter()
        .enumerate()
        .map(|(w, spec)| {
            let shared = specs.iter().filter(|s| s.label == spec.label).count() > 1;
            if shared {
                timeline::path_for(base, &format!("{} {}", spec.label, w + 1))
            } else {
                timeline::path_for(base, &spec.label)
            }
        })
        .collect()
}

/// Runs every spec against `cluster` (after `--setup-auth`'s users, with `auth_user`).
async fn run_all(
    cluster: &Cluster,
    specs: &[Spec],
    plot_to: Option<&Path>,
    timeline_to: Option<&TimelineTo<'_>>,
    auth_user: Option<&str>,
) -> anyhow::Result<Vec<Cell>> {
    let endpoints = cluster.endpoints();
    if let Some(user) = auth_user {
        setup_auth(&endpoints[0], user, specs).await?;
    }
    seed(&endpoints[0], specs).await?;
    let pids = cluster.pids();
    let mut cells = Vec::with_capacity(specs.len());
    for (w, spec) in specs.iter().enumerate() {
        eprintln!("{}: {}", cluster.kind, spec.args.describe());
        let mut args = spec.args.clone();
        args.endpoints = endpoints.clone();
        // CPU time from when every connection is made (logins are not operations).
        let before = std::sync::Arc::new(std::sync::Mutex::new((
            cpu_of(&pids),
            cpu_of(&[std::process::id()]),
        )));
        {
            let (before, pids) = (std::sync::Arc::clone(&before), pids.clone());
            workloads::on_connected(Some(Box::new(move || {
                let now = (cpu_of(&pids), cpu_of(&[std::process::id()]));
                *before.lock().unwrap_or_else(|e| e.into_inner()) = now;
            })));
        }
        let outcome = workloads::run(&args).await;
        workloads::on_connected(None);
        let (cpu_before, own_before) = *before.lock().unwrap_or_else(|e| e.into_inner());
        let cpu_seconds = (cpu_of(&pids) - cpu_before).max(0.0);
        let own_seconds = (cpu_of(&[std::process::id()]) - own_before).max(0.0);
        let peak_rss_bytes = peak_rss_of(&pids);
        let cell = match outcome {
            Ok(outcome) => {
                let summary = outcome.main.summary();
                if let Some(path) = plot_to {
                    let label = format!("{} {}", cluster.kind, spec.label);
                    plot::update(path, plot::Series::of(&label, &outcome.main.histogram))?;
                }
                if let (Some(to), Some(points)) = (timeline_to, &outcome.timeline) {
                    timeline::update(
                        &to.paths[w],
                        timeline::Series {
                            label: round_label(cluster.kind, to.round, to.rounds),
                            timeline: points.clone(),
                        },
                    )?;
                }
                let ops = summary.requests;
                Cell {
                    requests: ops,
                    errors: summary.errors,
                    qps: summary.requests_per_second,
                    p50_seconds: summary.at(50.0).unwrap_or(0.0),
                    p99_seconds: summary.at(99.0).unwrap_or(0.0),
                    cpu_seconds,
                    cpu_seconds_per_op: if ops > 0 {
                        cpu_seconds / ops as f64
                    } else {
                        0.0
                    },
                    peak_rss_bytes,
                    bench_cpu_seconds_per_op: if ops > 0 {
                        own_seconds / ops as f64
                    } else {
                        0.0
                    },
                    error: outcome.first_error.filter(|_| summary.errors > 0),
                    timeline: outcome.timeline,
                }
            }
            Err(e) => {
                eprintln!("{}: {} failed: {e:#}", cluster.kind, spec.label);
                Cell {
                    cpu_seconds,
                    peak_rss_bytes,
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                }
            }
        };
        cells.push(cell);
    }
    Ok(cells)
}

pub async fn run(global: &Args, compare: &CompareArgs) -> anyhow::Result<Table> {
    let specs = specs(global, compare)?;
    let rivet = rivet_binary(compare.rivet.as_deref())?;
    let etcd = find_on_path(&compare.etcd).with_context(|| {
        format!(
            "etcd not found ({} is not a file nor on PATH): install etcd 3.4 or pass --etcd PATH",
            compare.etcd.display()
        )
    })?;
    if global.hdr_out.is_some() {
        eprintln!("compare: --hdr-out is ignored (use --plot, or run a workload alone)");
    }
    let mut members = usize::from(compare.members);
    if members == 2 {
        bail!("--members: 1 or 3");
    }
    let mut notes = Vec::new();
    let tls = match (&compare.server_cert, &compare.server_key) {
        (Some(cert), Some(key)) => {
            if global.cacert.is_none() {
                bail!("--server-cert needs --cacert (and --cert/--key if the CA should also require client certificates)");
            }
            notes.push(format!(
                "clients over TLS: both servers serve {} with --trusted-ca-file and --client-cert-auth; rivet-bench presents {}",
                cert.display(),
                global
                    .cert
                    .as_ref()
                    .map_or("no certificate".to_string(), |c| c.display().to_string())
            ));
            Some(ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                ca: global.cacert.clone(),
            })
        }
        _ => None,
    };
    if let Some(list) = &compare.server_cpus {
        let cpus = crate::cpus::parse_list(list)?;
        notes.push(format!("servers pinned to CPUs {list}"));
        let _ = crate::servers::SERVER_CPUS.set(cpus);
    }
    if let Some(list) = &compare.bench_cpus {
        let cpus = crate::cpus::parse_list(list)?;
        crate::cpus::pin_this_process(&cpus)?;
        notes.push(format!("rivet-bench pinned to CPUs {list}"));
    }
    let auth_user = match (compare.setup_auth, &global.user) {
        (false, _) => None,
        (true, None) => bail!("--setup-auth needs --user NAME:PASSWORD"),
        (true, Some(user)) => {
            notes.push(format!(
                "auth on (--setup-auth): both servers have root and the user {} with readwrite \
                 on the workloads' keys; every connection authenticates as that user",
                user.split_once(':').map_or(user.as_str(), |(name, _)| name)
            ));
            Some(user.as_str())
        }
    };
    let rounds = compare.rounds;
    if rounds > 1 {
        notes.push(format!(
            "{rounds} rounds, alternating rivet and etcd (fresh servers each round); every figure is the median over the rounds"
        ));
    }
    let timeline_files = global
        .timeline
        .as_deref()
        .map(|base| timeline_paths(base, &specs));
    let mut rivet_rounds: Vec<Vec<Cell>> = Vec::new();
    let mut etcd_rounds: Vec<Vec<Cell>> = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("compare: round {round} of {rounds}");
        }
        let rivet_cluster = match Cluster::start_with_tls(
            Kind::Rivet,
            &rivet,
            members,
            START_TIMEOUT,
            tls.as_ref(),
        )
        .await
        {
            Ok(cluster) => cluster,
            Err(e) if members > 1 && round == 1 => {
                let note = format!(
                    "rivet's {members}-member cluster failed to start, so both servers run with 1 member: {e:#}"
                );
                eprintln!("compare: {note}");
                notes.push(note);
                members = 1;
                Cluster::start_with_tls(Kind::Rivet, &rivet, members, START_TIMEOUT, tls.as_ref())
                    .await?
            }
            Err(e) => return Err(e),
        };
        eprintln!(
            "compare: rivet running ({members} member{}, in {})",
            if members == 1 { "" } else { "s" },
            rivet_cluster.dir().display()
        );
        let timeline_to = timeline_files.as_deref().map(|paths| TimelineTo {
            paths,
            round,
            rounds,
        });
        rivet_rounds.push(
            run_all(
                &rivet_cluster,
                &specs,
                global.plot.as_deref(),
                timeline_to.as_ref(),
                auth_user,
            )
            .await?,
        );
        drop(rivet_cluster);

        let etcd_cluster =
            Cluster::start_with_tls(Kind::Etcd, &etcd, members, START_TIMEOUT, tls.as_ref())
                .await?;
        eprintln!(
            "compare: etcd running ({members} member{}, in {})",
            if members == 1 { "" } else { "s" },
            etcd_cluster.dir().display()
        );
        etcd_rounds.push(
            run_all(
                &etcd_cluster,
                &specs,
                global.plot.as_deref(),
                timeline_to.as_ref(),
                auth_user,
            )
            .await?,
        );
        drop(etcd_cluster);
    }
    let rivet_cells = median_cells(&rivet_rounds, specs.len());
    let etcd_cells = median_cells(&etcd_rounds, specs.len());

    Ok(Table {
        command: "compare".into(),
        rivet: ServerInfo {
            version: version_of(&rivet),
            binary: rivet.display().to_string(),
            members,
        },
        etcd: ServerInfo {
            version: version_of(&etcd),
            binary: etcd.display().to_string(),
            members,
        },
        notes,
        workloads: specs
            .iter()
            .zip(rivet_cells)
            .zip(etcd_cells)
            .enumerate()
            .map(|(w, ((spec, r), e))| {
                let mut row = Row::new(spec, r, e);
                if rounds > 1 {
                    row.spread = spread(&rivet_rounds, &etcd_rounds, w);
                }
                for (kind, all) in [(Kind::Rivet, &rivet_rounds), (Kind::Etcd, &etcd_rounds)] {
                    for (i, round) in all.iter().enumerate() {
                        if let Some(t) = round.get(w).and_then(|c| c.timeline.clone()) {
                            row.timelines.push(RoundTimeline {
                                server: kind.to_string(),
                                round: i as u32 + 1,
                                timeline: t,
                            });
                        }
                    }
                }
                row.timeline_svg = timeline_files
                    .as_ref()
                    .map(|paths| paths[w].display().to_string());
                row
            })
            .collect(),
    })
}

fn times(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

impl Table {
    /// The table as text: per workload, a row for each server and one of rivet ÷ etcd.
    pub fn text(&self) -> String {
        let width = self
            .workloads
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(8)
            .max(8);
        let mut out = format!(
            "rivet: {} ({}), etcd: {} ({}), {} member{} each\n",
            self.rivet.binary,
            self.rivet.version,
            self.etcd.binary,
            self.etcd.version,
            self.rivet.members,
            if self.rivet.members == 1 { "" } else { "s" }
        );
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out.push_str(&format!(
            "\n{:<width$}  {:<10} {:>10} {:>9} {:>9} {:>11} {:>14} {:>7} {:>13}\n",
            "WORKLOAD",
            "SERVER",
            "QPS",
            "p50 ms",
            "p99 ms",
            "CPU µs/op",
            "peak RSS MiB",
            "errors",
            "bench µs/op"
        ));
        for row in &self.workloads {
            for (i, (server, cell)) in [("rivet", &row.rivet), ("etcd", &row.etcd)]
                .into_iter()
                .enumerate()
            {
                let label = if i == 0 { row.label.as_str() } else { "" };
                if let (Some(error), 0) = (&cell.error, cell.requests) {
                    out.push_str(&format!(
                        "{label:<width$}  {server:<10} failed: {}\n",
                        error.lines().next().unwrap_or("")
                    ));
                    continue;
                }
                out.push_str(&format!(
                    "{label:<width$}  {server:<10} {:>10.1} {:>9.3} {:>9.3} {:>11.1} {:>14.1} {:>7} {:>13.1}\n",
                    cell.qps,
                    cell.p50_seconds * 1e3,
                    cell.p99_seconds * 1e3,
                    cell.cpu_seconds_per_op * 1e6,
                    cell.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                    cell.errors,
                    cell.bench_cpu_seconds_per_op * 1e6
                ));
            }
            out.push_str(&format!(
                "{:<width$}  {:<10} {:>10} {:>9} {:>9} {:>11} {:>14}\n",
                "",
                "rivet/etcd",
                times(row.ratio.qps),
                times(row.ratio.p50),
                times(row.ratio.p99),
                times(row.ratio.cpu_per_op),
                times(row.ratio.peak_rss)
            ));
            let range = |r: Option<(f64, f64)>| {
                r.map(|(low, high)| format!("{low:.2}-{high:.2}"))
                    .unwrap_or_else(|| "-".into())
            };
            if row.spread.qps.is_some() {
                out.push_str(&format!(
                    "{:<width$}  {:<10} {:>10} {:>9} {:>9} {:>11}\n",
                    "",
                    "spread",
                    range(row.spread.qps),
                    range(row.spread.p50),
                    range(row.spread.p99),
                    range(row.spread.cpu_per_op)
                ));
            }
        }
        for row in &self.workloads {
            if let (Some(svg), false) = (&row.timeline_svg, row.timelines.is_empty()) {
                out.push_str(&format!("timeline: {}: {svg}\n", row.label));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_files_are_one_per_workload() {
        let global = Args::try_parse_from(["rivet-bench", "compare"]).expect("args");
        let spec = |w: &str| {
            let tokens: Vec<String> = w.split_whitespace().map(String::from).collect();
            parse_spec(&global, &tokens).expect("spec")
        };
        let specs = [
            spec("--conns 2 put --val-size 64"),
            spec("--conns 2 put --val-size 1024"),
            spec("range foo"),
        ];
        let paths = timeline_paths(Path::new("/x/t.svg"), &specs);
        assert_eq!(
            paths,
            [
                PathBuf::from("/x/t-put-conns-2-clients-1-1.svg"),
                PathBuf::from("/x/t-put-conns-2-clients-1-2.svg"),
                PathBuf::from("/x/t-range-linearizable-conns-1-clients-1.svg"),
            ]
        );
    }
}
