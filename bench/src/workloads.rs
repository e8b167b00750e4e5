//! The workloads, on raw tonic clients of the etcd v3 API: closed loops of `--clients`
//! clients over `--conns` connections for put, range, txn-put, txn-mixed and
//! lease-keepalive, and the two watch benchmarks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::channel::mpsc;
use rivet_api::etcdserverpb::kv_client::KvClient;
use rivet_api::etcdserverpb::lease_client::LeaseClient;
use rivet_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rivet_api::etcdserverpb::watch_client::WatchClient;
use rivet_api::etcdserverpb::{
    request_op, watch_request, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use tonic::codec::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;
use tonic::Status;

use crate::cli::{
    Args, Command, PutArgs, RangeArgs, TxnMixedArgs, TxnPutArgs, WatchArgs, WatchLatencyArgs,
};
use crate::progress::{self, Progress};
use crate::report::{record, Outcome, Phase};
use crate::timeline::{Recorder, Timeline};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A key of `size` bytes: `n` in decimal, zero-padded on the left (truncated to the last
/// `size` digits).
pub fn key_of(n: u64, size: usize) -> Bytes {
    let mut key = vec![b'0'; size.max(1)];
    let digits = n.to_string();
    let digits = digits.as_bytes();
    let take = digits.len().min(key.len());
    let start = key.len() - take;
    key[start..].copy_from_slice(&digits[digits.len() - take..]);
    Bytes::from(key)
}

/// One connection to a server: the channel, with the auth token of `--user` (if any)
/// added to every request.
pub type Channel = InterceptedService<tonic::transport::Channel, TokenInterceptor>;

/// Adds the `token` metadata etcd reads credentials from.
#[derive(Clone)]
pub struct TokenInterceptor(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// `--user name:password`, set once at start.
static USER: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();

/// Reads `--user`.
pub fn set_user(args: &crate::cli::Args) -> anyhow::Result<()> {
    let user = match &args.user {
        None => None,
        Some(user) => match user.split_once(':') {
            Some((name, password)) => Some((name.to_string(), password.to_string())),
            None => anyhow::bail!("--user takes name:password"),
        },
    };
    let _already_set = USER.set(user);
    Ok(())
}

/// The client TLS of this process (`--cacert --cert --key`), set once at start.
static CLIENT_TLS: std::sync::OnceLock<Option<ClientTls>> = std::sync::OnceLock::new();

/// PEM files of the client's TLS settings.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Reads `--cacert`, `--cert` and `--key`; every later connection uses them for https.
pub fn set_client_tls(args: &crate::cli::Args) -> anyhow::Result<()> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let tls = match (&args.cacert, &args.cert, &args.tls_key) {
        (None, None, None) => None,
        (ca, cert, key) => Some(ClientTls {
            ca: ca.as_ref().map(read).transpose()?,
            identity: match (cert, key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                (None, None) => None,
                _ => anyhow::bail!("--cert and --key go together"),
            },
        }),
    };
    let _already_set = CLIENT_TLS.set(tls);
    Ok(())
}

fn client_tls() -> Option<&'static ClientTls> {
    CLIENT_TLS.get().and_then(Option::as_ref)
}

/// `http://host:port` for a `host:port` endpoint (`https://` with TLS settings).
pub fn url_of(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if client_tls().is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let channel = connect_channel(endpoint).await?;
    let token = match authenticate(&channel).await? {
        None => None,
        Some(token) => Some(token.parse().context("the token is not ASCII")?),
    };
    Ok(InterceptedService::new(channel, TokenInterceptor(token)))
}

/// With `--user`: a token from Auth.Authenticate on `channel`.
async fn authenticate(channel: &tonic::transport::Channel) -> anyhow::Result<Option<String>> {
    let Some((name, password)) = USER.get().and_then(Option::as_ref) else {
        return Ok(None);
    };
    let response = rivet_api::etcdserverpb::auth_client::AuthClient::new(channel.clone())
        .authenticate(rivet_api::etcdserverpb::AuthenticateRequest {
            name: name.clone(),
            password: password.clone(),
        })
        .await
        .with_context(|| format!("authenticating as {name}"))?
        .into_inner();
    Ok(Some(response.token))
}

pub async fn connect_channel(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    let url = url_of(endpoint);
    let mut builder = Endpoint::from_shared(url.clone())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(tls) = client_tls() {
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
        }
        builder = builder
            .tls_config(config)
            .with_context(|| format!("TLS settings for {url}"))?;
    }
    builder
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The endpoint whose member is the leader, by Maintenance.Status on each.
pub async fn leader_endpoint(endpoints: &[String]) -> anyhow::Result<String> {
    let mut problems = Vec::new();
    for endpoint in endpoints {
        let status = async {
            let channel = connect(endpoint).await?;
            let status = tokio::time::timeout(
                Duration::from_secs(5),
                MaintenanceClient::new(channel).status(StatusRequest {}),
            )
            .await
            .context("Maintenance.Status timed out")??
            .into_inner();
            anyhow::Ok(status)
        }
        .await;
        match status {
            Ok(status) => {
                let member = status.header.as_ref().map(|h| h.member_id).unwrap_or(0);
                if status.leader != 0 && status.leader == member {
                    return Ok(endpoint.clone());
                }
            }
            Err(e) => problems.push(format!("{endpoint}: {e:#}")),
        }
    }
    bail!(
        "--target-leader: no endpoint of {} is the leader{}",
        endpoints.join(","),
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        }
    )
}

/// Paces requests at `rate` per second across all clients (a token bucket of one token).
pub struct Limiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Limiter {
    pub fn new(rate: u64) -> Option<Arc<Limiter>> {
        (rate > 0).then(|| {
            Arc::new(Limiter {
                interval: Duration::from_secs_f64(1.0 / rate as f64),
                next: Mutex::new(Instant::now()),
            })
        })
    }

    pub async fn wait(&self) {
        tokio::time::sleep_until(self.reserve().into()).await;
    }

    /// The next free slot, taken: when its request may go (now or later).
    pub fn reserve(&self) -> Instant {
        let mut next = self.next.lock().expect("limiter lock");
        let slot = (*next).max(Instant::now());
        *next = slot + self.interval;
        slot
    }
}

async fn wait_for(limiter: &Option<Arc<Limiter>>) {
    if let Some(limiter) = limiter {
        limiter.wait().await;
    }
}

/// Keeps the first error message of a run.
#[derive(Clone, Default)]
struct FirstError(Arc<Mutex<Option<String>>>);

impl FirstError {
    fn note(&self, error: impl std::fmt::Display) {
        let mut first = self.0.lock().expect("first error lock");
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }

    fn take(&self) -> Option<String> {
        self.0.lock().expect("first error lock").take()
    }
}

/// One client of a closed loop.
trait Op: Send + 'static {
    /// Issues request number `n`: its class (an index into the loop's class names) and
    /// the request.
    fn call(&mut self, n: u64) -> (usize, BoxFuture<'_, Result<(), Status>>);
}

struct ClosedLoop {
    main: Phase,
    classes: Vec<Phase>,
    first_error: Option<String>,
    timeline: Timeline,
}

/// The figures of a closed loop's clients: one set for the run, behind a lock taken once
/// per answer (the tonic path's clients are tokio tasks on a multi-thread runtime; a
/// histogram per client was ~140 KB each, 140 MB for 1,000 lease clients).
struct LoopTally {
    main: Phase,
    classes: Vec<Phase>,
    timeline: Recorder,
}

/// Runs `total` requests over the clients, each client issuing its next request when the
/// previous one returns, paced by `--rate`; `interval` is the timeline's.
async fn closed_loop(
    ops: Vec<Box<dyn Op>>,
    name: &str,
    classes: &[&str],
    total: u64,
    rate: u64,
    show_progress: bool,
    interval: Duration,
) -> anyhow::Result<ClosedLoop> {
    let progress = Progress::start(name, total, show_progress);
    let issued = Arc::new(AtomicU64::new(0));
    let limiter = Limiter::new(rate);
    let first_error = FirstError::default();
    let started = Instant::now();
    let class_count = classes.len().max(1);
    let tally = Arc::new(Mutex::new(LoopTally {
        main: Phase::new(name),
        classes: (0..class_count)
            .map(|c| Phase::new(classes.get(c).copied().unwrap_or("")))
            .collect(),
        timeline: Recorder::new(started, interval),
    }));
    let mut tasks = Vec::with_capacity(ops.len());
    for mut op in ops {
        let issued = Arc::clone(&issued);
        let limiter = limiter.clone();
        let done = progress.counter();
        let first_error = first_error.clone();
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                wait_for(&limiter).await;
                let begin = Instant::now();
                let (class, request) = op.call(n);
                let result = request.await;
                let end = Instant::now();
                let latency = end.saturating_duration_since(begin);
                {
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    let tally = &mut *tally;
                    let class = &mut tally.classes[class.min(class_count - 1)];
                    match result {
                        Ok(()) => {
                            record(&mut tally.main.histogram, latency);
                            record(&mut class.histogram, latency);
                            tally.timeline.record(end, latency);
                        }
                        Err(e) => {
                            tally.main.errors += 1;
                            class.errors += 1;
                            tally.timeline.error(end);
                            first_error.note(format_status(&e));
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    let LoopTally {
        mut main,
        classes: mut per_class,
        timeline,
    } = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("a closed loop's client outlived it"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    main.seconds = seconds;
    // A workload of one class has no per-class phases.
    per_class.truncate(classes.len());
    for class in &mut per_class {
        class.seconds = seconds;
    }
    Ok(ClosedLoop {
        main,
        classes: per_class,
        first_error: first_error.take(),
        timeline: timeline.timeline(seconds),
    })
}

/// A phase that every task of a benchmark records into (one histogram per run, not a
/// ~140 KB one per stream or client).
type SharedPhase = Arc<Mutex<Phase>>;

fn shared_phase(name: &str) -> SharedPhase {
    Arc::new(Mutex::new(Phase::new(name)))
}

fn record_shared(phase: &Mutex<Phase>, latency: Duration) {
    record(
        &mut phase.lock().unwrap_or_else(|e| e.into_inner()).histogram,
        latency,
    );
}

fn error_shared(phase: &Mutex<Phase>, errors: u64) {
    phase.lock().unwrap_or_else(|e| e.into_inner()).errors += errors;
}

/// The phase once every task that recorded into it has ended.
fn unshare(phase: SharedPhase) -> anyhow::Result<Phase> {
    Ok(Arc::try_unwrap(phase)
        .map_err(|_| anyhow::anyhow!("a benchmark task outlived its phase"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner()))
}

pub(crate) fn format_status(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

struct PutOp {
    kv: KvClient<Channel>,
    args: PutArgs,
    value: Bytes,
}

impl Op for PutOp {
    fn call(&mut self, n: u64) -> (usize, BoxFuture<'_, Result<(), Status>>) {
        let space = self.args.key_space_size.max(1);
        let k = if self.args.sequential_keys {
            n % space
        } else {
            rand::random::<u64>() % space
        };
        let request = PutRequest {
            key: key_of(k, self.args.key_size),
            value: self.value.clone(),
            ..Default::default()
        };
        (
            0,
            Box::pin(async move { self.kv.put(request).await.map(drop) }),
        )
    }
}

struct RangeOp {
    kv: KvClient<Channel>,
    request: RangeRequest,
}

impl Op for RangeOp {
    fn call(&mut self, _: u64) -> (usize, BoxFuture<'_, Result<(), Status>>) {
        let request = self.request.clone();
        (
            0,
            Box::pin(async move { self.kv.range(request).await.map(drop) }),
        )
    }
}

/// Waits for `count` set-up reports (or until every sender is gone) and answers the first
/// failure among them: how the load's tasks say they are ready before it starts.
pub(crate) async fn first_failure(
    reports: &mut tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
    count: usize,
) -> Option<String> {
    let mut failed = None;
    for _ in 0..count {
        match reports.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failed.get_or_insert(e);
            }
            None => break,
        }
    }
    failed
}

/// A txn's put of `key` (the tonic and the lean paths build their txns from it).
pub(crate) fn put_op(key: Bytes, value: Bytes) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

struct TxnPutOp {
    kv: KvClient<Channel>,
    args: TxnPutArgs,
    value: Bytes,
}

impl Op for TxnPutOp {
    fn call(&mut self, n: u64) -> (usize, BoxFuture<'_, Result<(), Status>>) {
        let ops = self.args.txn_ops.max(1);
        let space = self.args.key_space_size.max(1);
        let success = (0..ops)
            .map(|j| {
                let k = (n.wrapping_mul(ops).wrapping_add(j)) % space;
                put_op(key_of(k, self.args.key_size), self.value.clone())
            })
            .collect();
        let request = TxnRequest {
            success,
            ..Default::default()
        };
        (
            0,
            Box::pin(async move { self.kv.txn(request).await.map(drop) }),
        )
    }
}

struct TxnMixedOp {
    kv: KvClient<Channel>,
    args: TxnMixedArgs,
    read: RangeRequest,
    value: Bytes,
}

const READ: usize = 0;
const WRITE: usize = 1;

impl Op for TxnMixedOp {
    fn call(&mut self, n: u64) -> (usize, BoxFuture<'_, Result<(), Status>>) {
        let ratio = self.args.rw_ratio;
        let (class, op) = if rand::random::<f64>() < ratio / (1.0 + ratio) {
            (
                READ,
                RequestOp {
                    request: Some(request_op::Request::RequestRange(self.read.clone())),
                },
            )
        } else {
            let k = n % self.args.key_space_size.max(1);
            (
                WRITE,
                put_op(key_of(k, self.args.key_size), self.value.clone()),
            )
        };
        let request = TxnRequest {
            success: vec![op],
            ..Default::default()
        };
        (
            class,
            Box::pin(async move { self.kv.txn(request).await.map(drop) }),
        )
    }
}

struct LeaseOp {
    id: i64,
    tx: mpsc::UnboundedSender<LeaseKeepAliveRequest>,
    rx: Streaming<LeaseKeepAliveResponse>,
}

impl Op for LeaseOp {
    fn call(&mut self, _: u64) -> (usize, BoxFuture<'_, Result<(), Status>>) {
        (
            0,
            Box::pin(async move {
                self.tx
                    .unbounded_send(LeaseKeepAliveRequest { id: self.id })
                    .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
                match self.rx.message().await? {
                    Some(response) if response.ttl > 0 => Ok(()),
                    Some(_) => Err(Status::not_found("lease not found or expired")),
                    None => Err(Status::unavailable("keep-alive stream ended")),
                }
            }),
        )
    }
}

/// Grants a lease (TTL 100 s, as etcd's benchmark) and opens its keep-alive stream; the
/// first keep-alive goes out with the stream (a bidirectional call returns once the server
/// answers) and is not measured.
async fn lease_op(channel: Channel) -> anyhow::Result<LeaseOp> {
    let mut lease = LeaseClient::new(channel);
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 100, id: 0 })
        .await
        .context("LeaseGrant")?
        .into_inner();
    if !granted.error.is_empty() {
        bail!("LeaseGrant: {}", granted.error);
    }
    let (tx, requests) = mpsc::unbounded();
    tx.unbounded_send(LeaseKeepAliveRequest { id: granted.id })
        .expect("channel open");
    let mut rx = lease
        .lease_keep_alive(requests)
        .await
        .context("LeaseKeepAlive")?
        .into_inner();
    rx.message()
        .await
        .context("LeaseKeepAlive")?
        .context("LeaseKeepAlive stream ended")?;
    Ok(LeaseOp {
        id: granted.id,
        tx,
        rx,
    })
}

/// The end of the range of keys with prefix `key` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(key: &[u8]) -> Bytes {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// Called by [`run`] once every connection is made (and authenticated), before the first
/// request: `compare` takes the servers' CPU time there, so that logins (bcrypt on the
/// server) are not counted per operation.
type ConnectedHook = Box<dyn Fn() + Send>;
static ON_CONNECTED: std::sync::Mutex<Option<ConnectedHook>> = std::sync::Mutex::new(None);

/// Sets (or clears) the hook [`run`] calls once connected.
pub fn on_connected(hook: Option<ConnectedHook>) {
    *ON_CONNECTED.lock().unwrap_or_else(|e| e.into_inner()) = hook;
}

fn connected() {
    if let Some(hook) = ON_CONNECTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        hook();
    }
}

/// Whether `args` runs on the lean HTTP/2 client ([`crate::lean`]): the unary KV
/// workloads over plain HTTP/2. TLS, leases and watch stay on tonic.
fn lean_path(args: &Args, endpoints: &[String]) -> bool {
    let unary_kv = matches!(
        args.command,
        Command::Put(_) | Command::Range(_) | Command::TxnPut(_) | Command::TxnMixed(_)
    );
    let plain = client_tls().is_none()
        && endpoints
            .iter()
            .all(|e| !e.contains("://") || e.starts_with("http://"));
    unary_kv && plain
}

fn check_txn_put(a: &TxnPutArgs) -> anyhow::Result<()> {
    if a.txn_ops == 0 {
        bail!("--txn-ops must be at least 1");
    }
    if a.txn_ops > a.key_space_size {
        bail!(
            "--txn-ops {} needs --key-space-size of at least {0}: a txn cannot put the same key twice",
            a.txn_ops
        );
    }
    Ok(())
}

/// txn-mixed's read, after checking `--rw-ratio`.
fn txn_mixed_read(a: &TxnMixedArgs) -> anyhow::Result<RangeRequest> {
    if a.rw_ratio.is_nan() || a.rw_ratio < 0.0 {
        bail!("--rw-ratio must be a non-negative number");
    }
    let (key, range_end) = match &a.key {
        None => (Bytes::from_static(b"\0"), Bytes::from_static(b"\0")),
        Some(key) => {
            let end = a
                .end_key
                .as_ref()
                .or(a.end_range.as_ref())
                .map(|e| Bytes::copy_from_slice(e.as_bytes()))
                .unwrap_or_else(|| prefix_end(key.as_bytes()));
            (Bytes::copy_from_slice(key.as_bytes()), end)
        }
    };
    Ok(RangeRequest {
        key,
        range_end,
        limit: a.limit,
        serializable: a.consistency == "s",
        ..Default::default()
    })
}

/// put, range, txn-put and txn-mixed on [`crate::lean`]: the same closed loop as
/// [`closed_loop`] (client `i` on connection `i % --conns`), driven per connection.
async fn run_lean(args: &Args, endpoints: Vec<String>) -> anyhow::Result<Outcome> {
    use crate::lean::{Method3, Planned, Source};
    let name = args.command.name();
    let conns = args.conns.max(1);
    let clients = args.clients.max(1);
    let total = args.total();
    type Make = Box<dyn Fn() -> anyhow::Result<Source> + Send>;
    let (classes, make): (&[&str], Make) = match &args.command {
        Command::Put(a) => {
            let a = a.clone();
            (&[], Box::new(move || Source::put(&a)))
        }
        Command::Range(a) => {
            let body = crate::lean::frame(&range_request(a));
            (
                &[],
                Box::new(move || {
                    Ok(Source::Fixed {
                        method: Method3::Range,
                        body: body.clone(),
                    })
                }),
            )
        }
        Command::TxnPut(a) => {
            check_txn_put(a)?;
            let a = a.clone();
            (&[], Box::new(move || Ok(Source::txn_put(&a))))
        }
        Command::TxnMixed(a) => {
            let read = txn_mixed_read(a)?;
            let a = a.clone();
            (
                &["read", "write"],
                Box::new(move || Ok(Source::txn_mixed(&a, &read))),
            )
        }
        _ => bail!("{name} does not run on the lean client"),
    };
    let mut planned = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = endpoints[i % endpoints.len()].clone();
        // With --user, each connection gets its own token, as on tonic.
        let token = if USER.get().and_then(Option::as_ref).is_some() {
            authenticate(&connect_channel(&endpoint).await?).await?
        } else {
            None
        };
        planned.push(Planned {
            endpoint,
            token,
            sources: Vec::new(),
        });
    }
    for i in 0..clients {
        let source = make()?;
        let planned = &mut planned[i % conns];
        planned.sources.push(source);
    }
    drop(make);
    let progress = Progress::start(name, total, progress::wanted(args.json));
    let shared = Arc::new(crate::lean::Shared {
        issued: AtomicU64::new(0),
        total,
        limiter: Limiter::new(args.rate),
        done: progress.counter(),
        interval: args.timeline_interval(),
    });
    let mut started = Instant::now();
    let crate::lean::Ran {
        mut main,
        classes: mut phases,
        first_error,
        timeline,
    } = crate::lean::run(planned, classes.len(), shared, || {
        connected();
        started = Instant::now();
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    main.name = name.to_string();
    main.seconds = seconds;
    for (phase, class) in phases.iter_mut().zip(classes) {
        phase.name = class.to_string();
        phase.seconds = seconds;
    }
    Ok(Outcome {
        command: name.to_string(),
        workload: args.describe(),
        endpoints,
        main,
        phases,
        first_error,
        timeline: Some(timeline.timeline(seconds)),
    })
}

/// Runs the workload of `args` (any command but `compare`).
pub async fn run(args: &Args) -> anyhow::Result<Outcome> {
    if args.endpoints.is_empty() {
        bail!("--endpoints: no endpoint given");
    }
    let endpoints = if args.target_leader {
        vec![leader_endpoint(&args.endpoints).await?]
    } else {
        args.endpoints.clone()
    };
    if lean_path(args, &endpoints) {
        return run_lean(args, endpoints).await;
    }
    let mut channels = Vec::with_capacity(args.conns.max(1));
    for i in 0..args.conns.max(1) {
        channels.push(connect(&endpoints[i % endpoints.len()]).await?);
    }
    connected();
    let show_progress = progress::wanted(args.json);
    let clients = args.clients.max(1);
    let total = args.total();
    let kv = |i: usize| {
        KvClient::new(channels[i % channels.len()].clone()).max_decoding_message_size(usize::MAX)
    };
    let name = args.command.name();
    let interval = args.timeline_interval();
    let mut phases = Vec::new();
    let mut timeline = None;
    let (main, first_error) = match &args.command {
        Command::Put(a) => {
            let value = Bytes::from(vec![b'x'; a.val_size]);
            let ops = (0..clients)
                .map(|i| {
                    Box::new(PutOp {
                        kv: kv(i),
                        args: a.clone(),
                        value: value.clone(),
                    }) as Box<dyn Op>
                })
                .collect();
            let run =
                closed_loop(ops, name, &[], total, args.rate, show_progress, interval).await?;
            timeline = Some(run.timeline);
            (run.main, run.first_error)
        }
        Command::Range(a) => {
            let request = range_request(a);
            let ops = (0..clients)
                .map(|i| {
                    Box::new(RangeOp {
                        kv: kv(i),
                        request: request.clone(),
                    }) as Box<dyn Op>
                })
                .collect();
            let run =
                closed_loop(ops, name, &[], total, args.rate, show_progress, interval).await?;
            timeline = Some(run.timeline);
            (run.main, run.first_error)
        }
        Command::TxnPut(a) => {
            check_txn_put(a)?;
            let value = Bytes::from(vec![b'x'; a.val_size]);
            let ops = (0..clients)
                .map(|i| {
                    Box::new(TxnPutOp {
                        kv: kv(i),
                        args: a.clone(),
                        value: value.clone(),
                    }) as Box<dyn Op>
                })
                .collect();
            let run =
                closed_loop(ops, name, &[], total, args.rate, show_progress, interval).await?;
            timeline = Some(run.timeline);
            (run.main, run.first_error)
        }
        Command::TxnMixed(a) => {
            let read = txn_mixed_read(a)?;
            let value = Bytes::from(vec![b'x'; a.val_size]);
            let ops = (0..clients)
                .map(|i| {
                    Box::new(TxnMixedOp {
                        kv: kv(i),
                        args: a.clone(),
                        read: read.clone(),
                        value: value.clone(),
                    }) as Box<dyn Op>
                })
                .collect();
            let run = closed_loop(
                ops,
                name,
                &["read", "write"],
                total,
                args.rate,
                show_progress,
                interval,
            )
            .await?;
            timeline = Some(run.timeline);
            phases = run.classes;
            (run.main, run.first_error)
        }
        Command::LeaseKeepalive => {
            let mut leases = Vec::with_capacity(clients);
            for i in 0..clients {
                leases.push(lease_op(channels[i % channels.len()].clone()).await?);
            }
            let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
            let ops = leases
                .into_iter()
                .map(|l| Box::new(l) as Box<dyn Op>)
                .collect();
            let run =
                closed_loop(ops, name, &[], total, args.rate, show_progress, interval).await?;
            timeline = Some(run.timeline);
            let mut lease = LeaseClient::new(channels[0].clone());
            for id in ids {
                let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
            }
            (run.main, run.first_error)
        }
        Command::Watch(a) => {
            let put_total = a.put_total.or(args.total).unwrap_or(1000);
            let run = watch(args, a, put_total, &channels, show_progress).await?;
            phases = run.phases;
            (run.main, run.first_error)
        }
        Command::WatchLatency(a) => {
            let put_total = a.put_total.or(args.total).unwrap_or(1000);
            let run = watch_latency(a, put_total, &channels, show_progress).await?;
            phases = run.phases;
            (run.main, run.first_error)
        }
        Command::Compare(_) => bail!("compare is not a workload"),
        Command::Memory(_) => bail!("memory is not a workload"),
    };
    Ok(Outcome {
        command: name.to_string(),
        workload: args.describe(),
        endpoints,
        main,
        phases,
        first_error,
        timeline,
    })
}

fn range_request(a: &RangeArgs) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(a.key.as_bytes()),
        range_end: a
            .end
            .as_ref()
            .map(|e| Bytes::copy_from_slice(e.as_bytes()))
            .unwrap_or_default(),
        serializable: a.consistency == "s",
        limit: a.limit,
        count_only: a.count_only,
        ..Default::default()
    }
}

struct WatchRun {
    main: Phase,
    phases: Vec<Phase>,
    first_error: Option<String>,
}

fn create_request(key: Bytes) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

/// A watch stream with its watchers created one after the other, each creation timed from
/// its request to its `created` response.
struct WatchStream {
    tx: mpsc::UnboundedSender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

async fn open_watchers(
    channel: Channel,
    keys: &[Bytes],
    creation: &Mutex<Phase>,
    done: &AtomicU64,
) -> anyhow::Result<WatchStream> {
    let first = keys.first().context("a watch stream needs a watcher")?;
    let (tx, requests) = mpsc::unbounded();
    let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
    // A bidirectional call returns once the server answers, so the first create goes out
    // with the call.
    let begin = Instant::now();
    tx.unbounded_send(create_request(first.clone()))
        .map_err(|_| anyhow::anyhow!("watch stream closed"))?;
    let rx = client.watch(requests).await.context("Watch")?.into_inner();
    finish_open(tx, rx, keys, begin, creation, done).await
}

async fn finish_open(
    tx: mpsc::UnboundedSender<WatchRequest>,
    mut rx: Streaming<WatchResponse>,
    keys: &[Bytes],
    first_begin: Instant,
    creation: &Mutex<Phase>,
    done: &AtomicU64,
) -> anyhow::Result<WatchStream> {
    let mut begin = first_begin;
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            begin = Instant::now();
            tx.unbounded_send(create_request(key.clone()))
                .map_err(|_| anyhow::anyhow!("watch stream closed"))?;
        }
        loop {
            let response = rx
                .message()
                .await
                .context("Watch")?
                .context("watch stream ended while creating watchers")?;
            if response.canceled {
                bail!("watch create canceled: {}", response.cancel_reason);
            }
            if response.created {
                record_shared(creation, begin.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    Ok(WatchStream { tx, rx })
}

/// The put's send time, in nanoseconds since the run's start, leads each value (20 digits).
const STAMP: usize = 20;

fn stamped_value(base: Instant, size: usize) -> Bytes {
    let mut value = format!("{:020}", base.elapsed().as_nanos()).into_bytes();
    if value.len() < size {
        value.resize(size, b'x');
    }
    Bytes::from(value)
}

fn stamp_of(value: &[u8]) -> Option<Duration> {
    let digits = std::str::from_utf8(value.get(..STAMP)?).ok()?;
    Some(Duration::from_nanos(digits.parse().ok()?))
}

/// Waits until `counter` reaches `target`, or until it has not moved for `idle`.
async fn wait_until_count(counter: &AtomicU64, target: u64, idle: Duration) {
    let mut last = counter.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= target {
            return;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `watch`: `--streams` streams of `--watch-per-stream` watchers over `--watched-key-total`
/// keys; then `--put-total` puts on those keys (`--clients` concurrent, `--put-rate` per
/// second). Measured: watch creation, the puts, and, per event received by a watcher, the
/// time from sending its put to receiving it.
async fn watch(
    args: &Args,
    a: &WatchArgs,
    put_total: u64,
    channels: &[Channel],
    show_progress: bool,
) -> anyhow::Result<WatchRun> {
    let key_count = a.watched_key_total.max(1) as usize;
    let keys: Vec<Bytes> = (0..key_count as u64)
        .map(|i| key_of(i, a.key_size))
        .collect();
    let puts_on_key = |k: usize| -> u64 {
        let k = k as u64;
        let n = key_count as u64;
        put_total / n + u64::from(k < put_total % n)
    };
    if a.streams == 0 || a.watch_per_stream == 0 {
        bail!("--streams and --watch-per-stream must be at least 1");
    }
    let streams = a.streams;
    let per_stream = a.watch_per_stream;
    let watchers = (streams * per_stream) as u64;
    let expected: u64 = (0..streams * per_stream)
        .map(|w| puts_on_key(w % key_count))
        .sum();
    let base = Instant::now();
    let first_error = FirstError::default();

    // Creation.
    let creating = Progress::start("watch: creating watchers", watchers, show_progress);
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel();
    let creation_started = Instant::now();
    let creation = shared_phase("watch creation");
    let events = shared_phase("watch events received");
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let stream_keys: Vec<Bytes> = (0..per_stream)
            .map(|j| keys[(s * per_stream + j) % key_count].clone())
            .collect();
        let expected_here: u64 = (0..per_stream)
            .map(|j| puts_on_key((s * per_stream + j) % key_count))
            .sum();
        let channel = channels[s % channels.len()].clone();
        let done = creating.counter();
        let received = Arc::clone(&received);
        let created_tx = created_tx.clone();
        let mut stop_rx = stop_rx.clone();
        let first_error = first_error.clone();
        let creation = Arc::clone(&creation);
        let events = Arc::clone(&events);
        tasks.push(tokio::spawn(async move {
            let opened = open_watchers(channel, &stream_keys, &creation, &done).await;
            drop(creation);
            let mut stream = match opened {
                Ok(stream) => {
                    let _ = created_tx.send(Ok(()));
                    stream
                }
                Err(e) => {
                    let _ = created_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let mut got = 0u64;
            while got < expected_here {
                let message = tokio::select! {
                    m = stream.rx.message() => m,
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                };
                match message {
                    Ok(Some(response)) => {
                        if response.canceled {
                            first_error.note(format!("watch canceled: {}", response.cancel_reason));
                            break;
                        }
                        for event in response.events {
                            let now = base.elapsed();
                            match event.kv.as_ref().and_then(|kv| stamp_of(&kv.value)) {
                                Some(sent) => record_shared(&events, now.saturating_sub(sent)),
                                None => {
                                    error_shared(&events, 1);
                                    first_error.note("watch event without a send time");
                                }
                            }
                            got += 1;
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {
                        first_error.note("watch stream ended");
                        break;
                    }
                    Err(e) => {
                        first_error.note(format_status(&e));
                        break;
                    }
                }
            }
            error_shared(&events, expected_here.saturating_sub(got));
            drop(stream.tx);
        }));
    }
    drop(created_tx);
    let failed = first_failure(&mut created_rx, streams).await;
    let creation_seconds = creation_started.elapsed().as_secs_f64();
    drop(creating);
    if let Some(e) = failed {
        let _ = stop_tx.send(true);
        bail!("creating watchers: {e}");
    }

    // Puts.
    let delivering = Progress::start_with(
        "watch: events",
        expected,
        show_progress,
        Arc::clone(&received),
    );
    let issued = Arc::new(AtomicU64::new(0));
    let limiter = Limiter::new(a.put_rate);
    let puts_started = Instant::now();
    let puts = shared_phase("put");
    let mut putters = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let issued = Arc::clone(&issued);
        let limiter = limiter.clone();
        let keys = keys.clone();
        let first_error = first_error.clone();
        let val_size = a.val_size;
        let puts = Arc::clone(&puts);
        putters.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= put_total {
                    break;
                }
                wait_for(&limiter).await;
                let begin = Instant::now();
                let request = PutRequest {
                    key: keys[(n % keys.len() as u64) as usize].clone(),
                    value: stamped_value(base, val_size),
                    ..Default::default()
                };
                match kv.put(request).await {
                    Ok(_) => record_shared(&puts, begin.elapsed()),
                    Err(e) => {
                        error_shared(&puts, 1);
                        first_error.note(format_status(&e));
                    }
                }
            }
        }));
    }
    for putter in putters {
        putter.await?;
    }
    let mut puts = unshare(puts)?;
    puts.seconds = puts_started.elapsed().as_secs_f64();
    // Every event should arrive; give up after 10 s without one.
    wait_until_count(&received, expected, Duration::from_secs(10)).await;
    let events_seconds = puts_started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    drop(delivering);

    for task in tasks {
        task.await?;
    }
    let mut creation = unshare(creation)?;
    let mut events = unshare(events)?;
    creation.seconds = creation_seconds;
    events.seconds = events_seconds;
    Ok(WatchRun {
        main: events,
        phases: vec![creation, puts],
        first_error: first_error.take(),
    })
}

/// `watch-latency`: `--streams` streams of `--watchers-per-stream` watchers on one key;
/// `--put-total` puts, one at a time at `--put-rate`; measured per watcher and put: from the
/// put's response to the watcher receiving the event (0 if it came first).
async fn watch_latency(
    a: &WatchLatencyArgs,
    put_total: u64,
    channels: &[Channel],
    show_progress: bool,
) -> anyhow::Result<WatchRun> {
    let key: Bytes =
        {
            let mut key = b"watch-latency/".to_vec();
            key.extend((0..16).map(|_| {
                b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random::<u32>() as usize % 36]
            }));
            key.resize(a.key_size.max(1), b'k');
            Bytes::from(key)
        };
    let value = Bytes::from(vec![b'v'; a.val_size]);
    let streams = a.streams.max(1);
    let per_stream = a.watchers_per_stream.max(1);
    let watchers = (streams * per_stream) as u64;
    let first_error = FirstError::default();

    let creating = Progress::start("watch-latency: creating watchers", watchers, show_progress);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (receipt_tx, mut receipts) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel();
    let creation_started = Instant::now();
    let creation = shared_phase("watch creation");
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let keys = vec![key.clone(); per_stream];
        let channel = channels[s % channels.len()].clone();
        let done = creating.counter();
        let created_tx = created_tx.clone();
        let receipt_tx = receipt_tx.clone();
        let mut stop_rx = stop_rx.clone();
        let first_error = first_error.clone();
        let creation = Arc::clone(&creation);
        tasks.push(tokio::spawn(async move {
            let opened = open_watchers(channel, &keys, &creation, &done).await;
            drop(creation);
            let mut stream = match opened {
                Ok(stream) => {
                    let _ = created_tx.send(Ok(()));
                    stream
                }
                Err(e) => {
                    let _ = created_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            loop {
                let message = tokio::select! {
                    m = stream.rx.message() => m,
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                };
                match message {
                    Ok(Some(response)) => {
                        let now = Instant::now();
                        for event in response.events {
                            let revision = event.kv.map(|kv| kv.mod_revision).unwrap_or(0);
                            let _ = receipt_tx.send((revision, now));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        first_error.note(format_status(&e));
                        break;
                    }
                }
            }
            drop(stream.tx);
        }));
    }
    drop(created_tx);
    drop(receipt_tx);
    let failed = first_failure(&mut created_rx, streams).await;
    let creation_seconds = creation_started.elapsed().as_secs_f64();
    drop(creating);
    if let Some(e) = failed {
        let _ = stop_tx.send(true);
        bail!("creating watchers: {e}");
    }

    let delivering = Progress::start("watch-latency", put_total * watchers, show_progress);
    let mut kv = KvClient::new(channels[0].clone());
    let limiter = Limiter::new(a.put_rate);
    let mut latency = Phase::new("watch latency");
    let mut puts = Phase::new("put");
    let mut early: HashMap<i64, Vec<Instant>> = HashMap::new();
    let started = Instant::now();
    for _ in 0..put_total {
        wait_for(&limiter).await;
        let begin = Instant::now();
        let response = kv
            .put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            })
            .await;
        let put_done = Instant::now();
        let revision = match response {
            Ok(response) => {
                record(&mut puts.histogram, put_done - begin);
                response
                    .into_inner()
                    .header
                    .map(|h| h.revision)
                    .unwrap_or(0)
            }
            Err(e) => {
                puts.errors += 1;
                latency.errors += watchers;
                first_error.note(format_status(&e));
                continue;
            }
        };
        let mut seen = early.remove(&revision).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (seen.len() as u64) < watchers {
            match tokio::time::timeout_at(deadline, receipts.recv()).await {
                Ok(Some((r, at))) if r == revision => seen.push(at),
                Ok(Some((r, at))) if r > revision => early.entry(r).or_default().push(at),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for at in &seen {
            record(
                &mut latency.histogram,
                at.saturating_duration_since(put_done),
            );
        }
        let missing = watchers.saturating_sub(seen.len() as u64);
        if missing > 0 {
            first_error.note(format!(
                "{missing} watchers did not see revision {revision} within 10 s"
            ));
        }
        latency.errors += missing;
        delivering.add(watchers);
    }
    latency.seconds = started.elapsed().as_secs_f64();
    puts.seconds = latency.seconds;
    let _ = stop_tx.send(true);
    drop(delivering);
    for task in tasks {
        task.await?;
    }
    let mut creation = unshare(creation)?;
    creation.seconds = creation_seconds;
    Ok(WatchRun {
        main: latency,
        phases: vec![creation, puts],
        first_error: first_error.take(),
    })
}
