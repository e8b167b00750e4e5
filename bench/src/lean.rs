//! The lean client of the unary KV workloads (put, range, txn-put, txn-mixed) over plain
//! HTTP/2: gRPC on a minimal HTTP/2 client of its own ([`crate::h2c`]), so that
//! rivet-bench's own CPU per request stays far below the servers' (tonic's channel, tower
//! buffer, hyper body, a tokio task and a histogram per client cost 35–50 µs per request
//! on a 2-core VM; the `h2` crate's connection 7–11 µs against etcd, whose answers come
//! one or two per read).
//!
//! - Requests are encoded once per workload (range, txn-mixed's read) or into a reused
//!   buffer from an encoded template whose key bytes are rewritten (put).
//! - One task per connection owns its socket and its clients: it writes every pending
//!   request in one write, reads, parses all whole frames, records the calls that ended
//!   and encodes their clients' next requests, and again. Clients are not futures; a
//!   rate-limited one whose slot is to come waits in the connection's queue. The tasks run
//!   on one or two current-thread runtimes (threads), one per CPU rivet-bench may run on,
//!   at most two.
//! - A unary call is HEADERS + DATA (the 5-byte gRPC prefix and the protobuf); the answer
//!   DATA and trailers. A `grpc-status` other than 0 (in the trailers, or in the headers of
//!   a trailers-only answer) is the call's error with its code and message, as tonic reports
//!   it; an answer is decoded as its message type.
//! - Latency: from just before the request is handed to the connection to the trailers.
//!
//! `--user` tokens go in a `token` header (each connection authenticates with tonic first).
//! TLS (`--cacert`, https endpoints), leases and watch stay on tonic ([`crate::workloads`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode, Uri};
use prost::Message;
use rivet_api::etcdserverpb::{
    request_op, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};

use crate::cli::{PutArgs, TxnMixedArgs, TxnPutArgs};
use crate::h2c::{Conn, FRAME_HEADER_BYTES};
use crate::report::{record, Phase};
use crate::timeline::Recorder;
use crate::workloads::put_op;

/// The three methods of the KV service the lean path calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method3 {
    Put = 0,
    Range = 1,
    Txn = 2,
}

pub(crate) const PATHS: [&str; 3] = [
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Txn",
];

/// One request's body: its class (an index into the loop's class names), method and
/// the gRPC-framed message.
pub struct Call {
    pub class: usize,
    pub method: Method3,
    pub body: Bytes,
}

/// A gRPC frame of `message`: uncompressed flag, length, message.
pub fn frame(message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.encoded_len());
    frame_into(message, &mut buf);
    buf.freeze()
}

fn frame_into(message: &impl Message, buf: &mut BytesMut) {
    let len = message.encoded_len();
    buf.reserve(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(buf)
        .expect("the buffer was reserved for the message");
}

/// Writes `n` in decimal into `key`, zero-padded on the left and truncated to the last
/// `key.len()` digits: [`crate::workloads::key_of`] without allocating.
pub fn write_key(mut n: u64, key: &mut [u8]) {
    for byte in key.iter_mut().rev() {
        *byte = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Where the requests of one client come from.
pub enum Source {
    /// The same request every time (range).
    Fixed { method: Method3, body: Bytes },
    /// Puts from an encoded template: only the key digits change.
    Put {
        template: Bytes,
        key_at: usize,
        key_len: usize,
        space: u64,
        sequential: bool,
        buf: BytesMut,
    },
    /// txn-put: `--txn-ops` puts per txn.
    TxnPut {
        args: TxnPutArgs,
        value: Bytes,
        buf: BytesMut,
    },
    /// txn-mixed: a read (encoded once) or a put, at `--rw-ratio`.
    TxnMixed {
        args: TxnMixedArgs,
        read: Bytes,
        value: Bytes,
        buf: BytesMut,
    },
}

/// The read and write classes of txn-mixed (as [`crate::workloads`]).
const READ: usize = 0;
const WRITE: usize = 1;

impl Source {
    pub fn fixed(method: Method3, message: &impl Message) -> Source {
        Source::Fixed {
            method,
            body: frame(message),
        }
    }

    pub fn put(args: &PutArgs) -> anyhow::Result<Source> {
        let key_len = args.key_size.max(1);
        let template = frame(&PutRequest {
            key: Bytes::from(vec![b'0'; key_len]),
            value: Bytes::from(vec![b'x'; args.val_size]),
            ..Default::default()
        });
        // Field 1 (key, length-delimited) leads the message: tag 0x0a, the length, the key.
        let key_at = 5 + 1 + prost::encoding::encoded_len_varint(key_len as u64);
        if template.get(5) != Some(&0x0a) || template.len() < key_at + key_len {
            bail!("unexpected encoding of PutRequest");
        }
        Ok(Source::Put {
            template,
            key_at,
            key_len,
            space: args.key_space_size.max(1),
            sequential: args.sequential_keys,
            buf: BytesMut::new(),
        })
    }

    pub fn txn_put(args: &TxnPutArgs) -> Source {
        Source::TxnPut {
            args: args.clone(),
            value: Bytes::from(vec![b'x'; args.val_size]),
            buf: BytesMut::new(),
        }
    }

    pub fn txn_mixed(args: &TxnMixedArgs, read: &RangeRequest) -> Source {
        Source::TxnMixed {
            args: args.clone(),
            read: frame(&TxnRequest {
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(read.clone())),
                }],
                ..Default::default()
            }),
            value: Bytes::from(vec![b'x'; args.val_size]),
            buf: BytesMut::new(),
        }
    }

    /// Request number `n`.
    fn next(&mut self, n: u64) -> Call {
        match self {
            Source::Fixed { method, body } => Call {
                class: 0,
                method: *method,
                body: body.clone(),
            },
            Source::Put {
                template,
                key_at,
                key_len,
                space,
                sequential,
                buf,
            } => {
                let k = if *sequential {
                    n % *space
                } else {
                    rand::random::<u64>() % *space
                };
                // The buffer's memory is reused once the connection has copied (and
                // dropped) the previous request.
                buf.reserve(template.len());
                buf.extend_from_slice(template);
                write_key(k, &mut buf[*key_at..*key_at + *key_len]);
                Call {
                    class: 0,
                    method: Method3::Put,
                    body: buf.split().freeze(),
                }
            }
            Source::TxnPut { args, value, buf } => {
                let ops = args.txn_ops.max(1);
                let space = args.key_space_size.max(1);
                let success = (0..ops)
                    .map(|j| {
                        let k = (n.wrapping_mul(ops).wrapping_add(j)) % space;
                        put_op(crate::workloads::key_of(k, args.key_size), value.clone())
                    })
                    .collect();
                frame_into(
                    &TxnRequest {
                        success,
                        ..Default::default()
                    },
                    buf,
                );
                Call {
                    class: 0,
                    method: Method3::Txn,
                    body: buf.split().freeze(),
                }
            }
            Source::TxnMixed {
                args,
                read,
                value,
                buf,
            } => {
                let ratio = args.rw_ratio;
                if rand::random::<f64>() < ratio / (1.0 + ratio) {
                    Call {
                        class: READ,
                        method: Method3::Txn,
                        body: read.clone(),
                    }
                } else {
                    let k = n % args.key_space_size.max(1);
                    frame_into(
                        &TxnRequest {
                            success: vec![put_op(
                                crate::workloads::key_of(k, args.key_size),
                                value.clone(),
                            )],
                            ..Default::default()
                        },
                        buf,
                    );
                    Call {
                        class: WRITE,
                        method: Method3::Txn,
                        body: buf.split().freeze(),
                    }
                }
            }
        }
    }
}

/// The error of a call: its gRPC status from `headers` (trailers, or the headers of a
/// trailers-only answer); `None` for status 0.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let code = headers.get("grpc-status")?;
    if code.as_bytes() == b"0" {
        return Some(Ok(()));
    }
    Some(Err(Status::from_header_map(headers).unwrap_or_else(|| {
        Status::new(Code::from_bytes(code.as_bytes()), "")
    })))
}

/// The gRPC code of an answer without `grpc-status` (gRPC's HTTP-to-gRPC status mapping).
pub(crate) fn status_of_http(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        StatusCode::OK => {
            return Status::unknown("protocol error: the answer has no grpc-status");
        }
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {status} without grpc-status"))
}

/// Checks the gRPC frame and decodes its message as `method`'s answer: bytes from the
/// server, so any input gets an error, never a panic (fuzz target `bench_answer`).
pub fn decode(method: Method3, frame: Bytes) -> Result<(), Status> {
    if frame.len() < 5 {
        return Err(Status::internal("the answer has no message"));
    }
    if frame[0] != 0 {
        return Err(Status::internal("the answer is compressed (not asked for)"));
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    if frame.len() != 5 + len {
        return Err(Status::internal(format!(
            "the answer's gRPC frame says {len} bytes, {} came",
            frame.len() - 5
        )));
    }
    let message = frame.slice(5..);
    let decoded = match method {
        Method3::Put => PutResponse::decode(message).map(drop),
        Method3::Range => RangeResponse::decode(message).map(drop),
        Method3::Txn => TxnResponse::decode(message).map(drop),
    };
    decoded.map_err(|e| Status::internal(format!("failed to decode the answer: {e}")))
}

/// The figures of one thread's clients (one histogram per thread, not per client or
/// connection: fewer pages to touch while recording and to clear at the start).
struct Tally {
    pub main: Phase,
    pub classes: Vec<Phase>,
    pub first_error: Option<String>,
    /// The main phase per interval.
    pub timeline: Recorder,
}

impl Tally {
    /// `classes`: the workload's classes beyond the main phase (none for one class);
    /// `start` and `interval`: the timeline's.
    fn new(classes: usize, start: Instant, interval: Duration) -> Tally {
        Tally {
            main: Phase::new(""),
            classes: (0..classes).map(|_| Phase::new("")).collect(),
            first_error: None,
            timeline: Recorder::new(start, interval),
        }
    }

    /// A call of class `class` that ended at `end` after `latency`.
    fn record(
        &mut self,
        class: usize,
        end: Instant,
        latency: Duration,
        result: Result<(), Status>,
    ) {
        let last = self.classes.len().saturating_sub(1);
        let class = self.classes.get_mut(class.min(last));
        match result {
            Ok(()) => {
                record(&mut self.main.histogram, latency);
                self.timeline.record(end, latency);
                if let Some(class) = class {
                    record(&mut class.histogram, latency);
                }
            }
            Err(e) => {
                self.main.errors += 1;
                self.timeline.error(end);
                if let Some(class) = class {
                    class.errors += 1;
                }
                self.first_error
                    .get_or_insert_with(|| crate::workloads::format_status(&e));
            }
        }
    }
}

/// What every client shares: the request counter, pacing and the progress counter.
pub struct Shared {
    pub issued: AtomicU64,
    pub total: u64,
    pub limiter: Option<Arc<crate::workloads::Limiter>>,
    pub done: Arc<AtomicU64>,
    /// The timeline's interval.
    pub interval: Duration,
}

/// Bytes read at a time: several answers, and always room for a whole frame after the
/// part of one a read left ([`crate::h2c::FRAME_BYTES_DEFAULT`]).
const READ_BYTES: usize = 64 << 10;
const _: () = assert!(READ_BYTES >= 2 * (FRAME_HEADER_BYTES + crate::h2c::FRAME_BYTES_DEFAULT));

/// A call on the wire: its client, class and start.
struct InFlight {
    client: usize,
    class: usize,
    begin: Instant,
}

/// A connection made but not yet driven: the socket, with the preface and settings sent.
pub struct Connection {
    tcp: tokio::net::TcpStream,
    conn: Conn<InFlight>,
}

/// Connects to `endpoint` (`host:port` or `http://host:port`) over plain HTTP/2; `token`
/// goes with every request. Runs on the runtime that will drive the connection.
pub async fn connect(endpoint: &str, token: Option<&str>) -> anyhow::Result<Connection> {
    let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let authority = authority.trim_end_matches('/');
    let uri: Uri = format!("http://{authority}/")
        .parse()
        .with_context(|| format!("endpoint {endpoint:?}"))?;
    let authority = uri
        .authority()
        .context("endpoint without host:port")?
        .as_str()
        .to_string();
    if let Some(token) = token {
        HeaderValue::from_str(token).context("the token is not a header value")?;
    }
    let mut tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .with_context(|| format!("connecting to http://{authority}: timed out"))?
    .with_context(|| format!("connecting to http://{authority}"))?;
    tcp.set_nodelay(true)?;
    let mut conn = Conn::new(&authority, token);
    tcp.write_all(&conn.out)
        .await
        .with_context(|| format!("HTTP/2 handshake with http://{authority}"))?;
    conn.out.clear();
    Ok(Connection { tcp, conn })
}

/// The status of an I/O error on a connection (as tonic words h2's).
fn io_status(error: &std::io::Error) -> Status {
    Status::new(Code::Unknown, format!("h2 protocol error: {error}"))
}

/// The clients of one connection: each has one call at a time.
struct Clients<'a> {
    sources: Vec<Source>,
    shared: &'a Shared,
    tally: &'a RefCell<Tally>,
    /// Rate-limited clients waiting for their slot, in slot order (the limiter hands out
    /// increasing slots): slot, client, request number.
    delayed: VecDeque<(Instant, usize, u64)>,
    /// Finished calls being recorded (a reused buffer).
    batch: Vec<(InFlight, Result<(), Status>)>,
}

impl Clients<'_> {
    /// Client `client`'s next request, if the run has more and the connection takes calls:
    /// started on `conn` at once, or when the rate limiter's slot comes.
    fn issue(&mut self, client: usize, conn: &mut Conn<InFlight>) {
        if conn.is_closed() {
            return;
        }
        let n = self.shared.issued.fetch_add(1, Ordering::Relaxed);
        if n >= self.shared.total {
            return;
        }
        if let Some(limiter) = &self.shared.limiter {
            let slot = limiter.reserve();
            if slot > Instant::now() {
                self.delayed.push_back((slot, client, n));
                return;
            }
        }
        self.start(client, n, conn);
    }

    fn start(&mut self, client: usize, n: u64, conn: &mut Conn<InFlight>) {
        let Some(source) = self.sources.get_mut(client) else {
            return;
        };
        let call = source.next(n);
        let begin = Instant::now();
        let tag = InFlight {
            client,
            class: call.class,
            begin,
        };
        conn.start(tag, call.method, call.body);
    }

    /// Starts the delayed requests whose slot has come.
    fn start_due(&mut self, conn: &mut Conn<InFlight>) {
        let now = Instant::now();
        while let Some(&(slot, client, n)) = self.delayed.front() {
            if slot > now {
                break;
            }
            self.delayed.pop_front();
            self.start(client, n, conn);
        }
    }

    /// Records the finished calls and issues their clients' next requests, until no call
    /// finishes at once (a closed connection fails them as they start).
    fn settle(&mut self, conn: &mut Conn<InFlight>) {
        loop {
            std::mem::swap(&mut self.batch, &mut conn.completed);
            if self.batch.is_empty() {
                return;
            }
            let end = Instant::now();
            let mut batch = std::mem::take(&mut self.batch);
            for (call, result) in batch.drain(..) {
                let latency = end.saturating_duration_since(call.begin);
                self.tally
                    .borrow_mut()
                    .record(call.class, end, latency, result);
                self.shared.done.fetch_add(1, Ordering::Relaxed);
                self.issue(call.client, conn);
            }
            self.batch = batch;
        }
    }
}

/// Drives `connection` and its clients (one [`Source`] each) until `shared.total`
/// requests are issued and answered; each client sends its next request when the previous
/// one returns. Each turn writes everything pending in one write, then reads once.
async fn drive(
    connection: Connection,
    sources: Vec<Source>,
    shared: &Shared,
    tally: &RefCell<Tally>,
) {
    let Connection { mut tcp, mut conn } = connection;
    let mut clients = Clients {
        sources,
        shared,
        tally,
        delayed: VecDeque::new(),
        batch: Vec::new(),
    };
    for client in 0..clients.sources.len() {
        clients.issue(client, &mut conn);
    }
    clients.settle(&mut conn);
    let mut input = vec![0u8; READ_BYTES];
    let mut filled = 0;
    let (mut reader, writer) = tcp.split();
    let failure = loop {
        let mut written = Ok(());
        while !conn.out.is_empty() {
            match writer.try_write(&conn.out) {
                Ok(n) => conn.out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = written {
            break Some(io_status(&e));
        }
        if conn.in_flight() == 0 && clients.delayed.is_empty() {
            // Every request issued is answered (or the connection closed gracefully).
            break None;
        }
        let Some(space) = input.get_mut(filled..) else {
            break Some(Status::internal("the read buffer is full"));
        };
        let read = if conn.out.is_empty() && clients.delayed.is_empty() {
            Some(reader.read(space).await)
        } else {
            let slot = clients.delayed.front().map(|d| d.0);
            let sleep = tokio::time::sleep_until(slot.unwrap_or_else(Instant::now).into());
            tokio::select! {
                biased;
                read = reader.read(space) => Some(read),
                _ = writer.writable(), if !conn.out.is_empty() => None,
                () = sleep, if slot.is_some() => None,
            }
        };
        match read {
            None => {}
            Some(Ok(0)) => break Some(Status::unavailable("the server closed the connection")),
            Some(Ok(n)) => {
                filled += n;
                match conn.receive(&input[..filled]) {
                    Ok(used) => {
                        input.copy_within(used..filled, 0);
                        filled -= used;
                    }
                    Err(status) => {
                        // Tell the server why (best effort): the GOAWAY is in `out`.
                        let _ = writer.try_write(&conn.out);
                        break Some(status);
                    }
                }
            }
            Some(Err(e)) => break Some(io_status(&e)),
        }
        clients.start_due(&mut conn);
        clients.settle(&mut conn);
    };
    if let Some(status) = &failure {
        conn.fail(status);
    }
    // Requests issued and waiting for their slot fail with the connection.
    while let Some((_, client, n)) = clients.delayed.pop_front() {
        clients.start(client, n, &mut conn);
    }
    clients.settle(&mut conn);
    if let Some(status) = failure.or_else(|| conn.error()) {
        tally
            .borrow_mut()
            .first_error
            .get_or_insert_with(|| crate::workloads::format_status(&status));
    }
}

/// One connection of a run: its endpoint, auth token and clients.
pub struct Planned {
    pub endpoint: String,
    pub token: Option<String>,
    pub sources: Vec<Source>,
}

/// The threads the lean path runs on: one per CPU this process may run on (its affinity,
/// e.g. `compare --bench-cpus`), at most two, and no more than connections.
pub fn threads_for(conns: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.clamp(1, 2).min(conns.max(1))
}

/// Runs a closed loop over `planned` connections on [`threads_for`] threads, each with a
/// current-thread runtime driving its share of the connections. `connected` is called
/// once every connection is made, before the first request; the timeline starts when it
/// returns.
pub async fn run(
    planned: Vec<Planned>,
    classes: usize,
    shared: Arc<Shared>,
    connected: impl FnOnce(),
) -> anyhow::Result<Ran> {
    let threads = threads_for(planned.len());
    let mut shares: Vec<Vec<Planned>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, p) in planned.into_iter().enumerate() {
        shares[i % threads].push(p);
    }
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut go = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for (t, share) in shares.into_iter().enumerate() {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Instant>();
        go.push(go_tx);
        let connected_tx = connected_tx.clone();
        let shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name(format!("rivet-bench-{t}"))
            .spawn(move || -> anyhow::Result<Option<Tally>> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("a tokio runtime")?;
                runtime.block_on(async move {
                    let mut connections = Vec::with_capacity(share.len());
                    let mut sources = Vec::with_capacity(share.len());
                    for planned in share {
                        match connect(&planned.endpoint, planned.token.as_deref()).await {
                            Ok(c) => connections.push(c),
                            Err(e) => {
                                let message = format!("{e:#}");
                                let _ = connected_tx.send(Err(message.clone()));
                                bail!(message);
                            }
                        }
                        sources.push(planned.sources);
                    }
                    let _ = connected_tx.send(Ok(()));
                    drop(connected_tx);
                    let Ok(start) = go_rx.await else {
                        return Ok(None);
                    };
                    let tally = RefCell::new(Tally::new(
                        if classes > 1 { classes } else { 0 },
                        start,
                        shared.interval,
                    ));
                    let mut drivers: FuturesUnordered<_> = connections
                        .into_iter()
                        .zip(sources)
                        .map(|(c, s)| drive(c, s, &shared, &tally))
                        .collect();
                    while drivers.next().await.is_some() {}
                    drop(drivers);
                    Ok(Some(tally.into_inner()))
                })
            })
            .context("starting a rivet-bench thread")?;
        handles.push(handle);
    }
    drop(connected_tx);
    let failed = crate::workloads::first_failure(&mut connected_rx, threads).await;
    if let Some(e) = failed {
        drop(go);
        for handle in handles {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        bail!(e);
    }
    connected();
    let start = Instant::now();
    for go in go {
        let _ = go.send(start);
    }
    let mut timeline = Recorder::new(start, shared.interval);
    let mut main = Phase::new("");
    let mut per_class: Vec<Phase> = (0..classes).map(|_| Phase::new("")).collect();
    let mut first_error = None;
    for handle in handles {
        let tally = tokio::task::spawn_blocking(move || handle.join())
            .await
            .context("joining a rivet-bench thread")?
            .map_err(|_| anyhow::anyhow!("a rivet-bench thread panicked"))??;
        if let Some(tally) = tally {
            main.histogram.add(&tally.main.histogram)?;
            main.errors += tally.main.errors;
            timeline.merge(&tally.timeline)?;
            // With one class, the class is the main phase.
            let classes = if tally.classes.is_empty() {
                std::slice::from_ref(&tally.main)
            } else {
                &tally.classes
            };
            for (into, from) in per_class.iter_mut().zip(classes) {
                into.histogram.add(&from.histogram)?;
                into.errors += from.errors;
            }
            if first_error.is_none() {
                first_error = tally.first_error;
            }
        }
    }
    Ok(Ran {
        main,
        classes: per_class,
        first_error,
        timeline,
    })
}

/// What [`run`] measured: the merged main phase, the per-class phases (none for a
/// workload of one class), the first error and the main phase per interval.
pub struct Ran {
    pub main: Phase,
    pub classes: Vec<Phase>,
    pub first_error: Option<String>,
    pub timeline: Recorder,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_as_key_of_makes_them() {
        for (n, size) in [(0, 8), (42, 8), (123_456_789, 4), (7, 1), (u64::MAX, 25)] {
            let mut key = vec![0u8; size];
            write_key(n, &mut key);
            assert_eq!(
                key,
                crate::workloads::key_of(n, size).to_vec(),
                "{n} {size}"
            );
        }
    }

    #[test]
    fn grpc_status_and_message_become_the_error() {
        let mut headers = HeaderMap::new();
        assert!(status_of(&headers).is_none());
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(matches!(status_of(&headers), Some(Ok(()))));
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: request is too large%21"),
        );
        let status = status_of(&headers)
            .expect("a status")
            .expect_err("an error");
        assert_eq!(
            crate::workloads::format_status(&status),
            "InvalidArgument: etcdserver: request is too large!"
        );
        assert_eq!(
            status_of_http(StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(status_of_http(StatusCode::OK).code(), Code::Unknown);
    }

    #[test]
    fn answers_are_checked_and_decoded() {
        let answer = frame(&PutResponse::default());
        assert!(decode(Method3::Put, answer.clone()).is_ok());
        let mut compressed = answer.to_vec();
        compressed[0] = 1;
        assert_eq!(
            decode(Method3::Put, Bytes::from(compressed))
                .expect_err("compressed")
                .code(),
            Code::Internal
        );
        let mut short = frame(&RangeResponse {
            count: 5,
            ..Default::default()
        })
        .to_vec();
        short.pop();
        assert_eq!(
            decode(Method3::Range, Bytes::from(short))
                .expect_err("truncated")
                .code(),
            Code::Internal
        );
        // A length-delimited field running past the end of the message.
        let garbage = Bytes::from_static(&[0, 0, 0, 0, 2, 0x0a, 0x05]);
        assert_eq!(
            decode(Method3::Txn, garbage).expect_err("garbage").code(),
            Code::Internal
        );
        assert!(decode(Method3::Range, Bytes::new()).is_err());
    }

    #[test]
    fn put_template_rewrites_only_the_key() {
        let args = PutArgs {
            key_size: 8,
            val_size: 300,
            key_space_size: 1000,
            sequential_keys: true,
        };
        let mut source = Source::put(&args).expect("put source");
        for n in [0u64, 5, 999, 1000, 123_456] {
            let call = source.next(n);
            assert_eq!(call.method, Method3::Put);
            let expected = frame(&PutRequest {
                key: crate::workloads::key_of(n % 1000, 8),
                value: Bytes::from(vec![b'x'; 300]),
                ..Default::default()
            });
            assert_eq!(call.body, expected, "request {n}");
        }
    }
}
