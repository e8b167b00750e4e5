//! A minimal HTTP/2 client for unary gRPC calls (RFC 9113), without I/O: the lean path's
//! connection state machine ([`crate::lean`] owns the socket).
//!
//! - [`Conn::new`] writes the client preface, SETTINGS (no push, [`STREAM_WINDOW`]) and a
//!   connection WINDOW_UPDATE (up to [`CONNECTION_WINDOW`]) into [`Conn::out`].
//! - [`Conn::start`] writes a call: HEADERS (a header block encoded once per method, every
//!   field indexed from the static table or a literal without indexing, so the peer's
//!   dynamic table is never touched) and DATA with END_STREAM, as far as the peer's
//!   windows and MAX_FRAME_SIZE allow; the rest goes out on WINDOW_UPDATE. Calls beyond
//!   the peer's MAX_CONCURRENT_STREAMS wait for a stream to close.
//! - [`Conn::receive`] parses the complete frames at the start of its input (the caller
//!   keeps the rest for the next read) and pushes every finished call on
//!   [`Conn::completed`] with its gRPC result. Anything the peer sends gets a result or an
//!   error, never a panic (fuzz target `bench_h2_client`).
//!
//! A call's result is what tonic would report: the `grpc-status` and `grpc-message` of
//! the trailers (or of the headers of a trailers-only answer), gRPC's mapping of the HTTP
//! status when there is none, tonic's mapping of HTTP/2 error codes for RST_STREAM and
//! GOAWAY, and the answer decoded as its message type ([`crate::lean::decode`]).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use tonic::{Code, Status};

use crate::lean::{decode, status_of, status_of_http, Method3, PATHS};

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame's header: length (24 bits), type, flags, stream id.
pub const FRAME_HEADER_BYTES: usize = 9;

/// The stream receive window this client announces (SETTINGS_INITIAL_WINDOW_SIZE): a
/// stream carries one answer, so most answers never need a stream WINDOW_UPDATE.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// The connection receive window, kept topped up when half is used.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// The largest frame either side may send before the other says otherwise, and the
/// largest this client accepts (it announces no other): the read buffer's bound.
pub const FRAME_BYTES_DEFAULT: usize = 16_384;
/// The largest header block (HEADERS and its CONTINUATIONs) accepted: answers carry a
/// handful of short fields.
pub const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;
/// The largest answer accepted (larger ones fail the call): etcd's default
/// `--max-recv-bytes`-sized answers fit many times over.
pub const ANSWER_BYTES_MAX: usize = 256 << 20;
const WINDOW_MAX: i64 = (1 << 31) - 1;
const STREAM_ID_MAX: u32 = (1 << 31) - 1;
const _: () = assert!(STREAM_WINDOW as i64 <= WINDOW_MAX && CONNECTION_WINDOW as i64 <= WINDOW_MAX);
const _: () = assert!(CONNECTION_WINDOW >= 65_535 && STREAM_WINDOW >= 65_535);

// Frame types (§6).
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

// Error codes (§7).
const PROTOCOL_ERROR: u32 = 1;
const FLOW_CONTROL_ERROR: u32 = 3;
const FRAME_SIZE_ERROR: u32 = 6;
const CANCEL: u32 = 8;
const COMPRESSION_ERROR: u32 = 9;

/// h2's words for an error code (what tonic's messages carry).
fn reason_text(code: u32) -> &'static str {
    match code {
        0 => "not a result of an error",
        1 => "unspecific protocol error detected",
        2 => "unexpected internal error encountered",
        3 => "flow-control protocol violated",
        4 => "settings ACK not received in timely manner",
        5 => "received frame when stream half-closed",
        6 => "frame with invalid size",
        7 => "refused stream before processing any application logic",
        8 => "stream no longer needed",
        9 => "unable to maintain the header compression context",
        10 => {
            "connection established in response to a CONNECT request was reset or abnormally \
             closed"
        }
        11 => "detected excessive load generating behavior",
        12 => "security properties do not meet minimum requirements",
        13 => "endpoint requires HTTP/1.1",
        _ => "unknown reason",
    }
}

/// tonic's gRPC code of an HTTP/2 error code (gRPC's PROTOCOL-HTTP2.md).
fn code_of_reason(code: u32) -> Code {
    match code {
        0..=4 | 6 | 9 | 10 => Code::Internal,
        7 => Code::Unavailable,
        8 => Code::Cancelled,
        11 => Code::ResourceExhausted,
        12 => Code::PermissionDenied,
        _ => Code::Unknown,
    }
}

/// The status of an HTTP/2 error, worded as tonic words h2's: `what` is h2's "stream error
/// received", "connection error detected"…
fn h2_status(code: u32, what: &str) -> Status {
    Status::new(
        code_of_reason(code),
        format!("h2 protocol error: {what}: {}", reason_text(code)),
    )
}

/// A connection error this side detected (the connection is done).
fn connection_error(code: u32) -> Status {
    h2_status(code, "connection error detected")
}

/// Stream ids as their own hash: the table is looked up once per frame.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Streams<T> = HashMap<u32, Stream<T>, BuildHasherDefault<IdHasher>>;

/// One call in flight.
struct Stream<T> {
    tag: T,
    method: Method3,
    /// What the peer lets this stream send.
    send_window: i64,
    /// The request body not yet sent; END_STREAM goes with its last byte.
    body: Bytes,
    /// What this side lets the peer send on this stream.
    receive_window: i64,
    /// The `:status` of the answer's headers, once they came.
    http_status: Option<u16>,
    answer: BytesMut,
}

/// The fields of a header block the client looks at.
#[derive(Default)]
struct Fields {
    /// `:status`: `Some(None)` when present but not a status code.
    http_status: Option<Option<u16>>,
    grpc_status: Option<Vec<u8>>,
    grpc_message: Option<Vec<u8>>,
}

impl Fields {
    /// The block's gRPC status (`None` without `grpc-status`), as [`status_of`] reads it.
    fn grpc(&self) -> Option<Result<(), Status>> {
        let code = self.grpc_status.as_deref()?;
        if code == b"0" {
            return Some(Ok(()));
        }
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(code) {
            headers.insert("grpc-status", value);
        }
        if let Some(Ok(value)) = self.grpc_message.as_deref().map(HeaderValue::from_bytes) {
            headers.insert("grpc-message", value);
        }
        Some(Err(match status_of(&headers) {
            Some(Err(status)) => status,
            _ => Status::new(Code::from_bytes(code), ""),
        }))
    }
}

/// Why a connection takes no more calls.
struct Closed {
    status: Status,
    /// Not a GOAWAY with NO_ERROR (a graceful shutdown).
    error: bool,
}

/// A header block being assembled from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// One HTTP/2 connection's state: streams, windows, the peer's settings and the bytes to
/// write. `T` tags a call (the caller's client, start time…).
pub struct Conn<T> {
    /// Bytes to write to the socket, in order.
    pub out: BytesMut,
    /// Calls finished since the caller last emptied this, with their result.
    pub completed: Vec<(T, Result<(), Status>)>,
    /// HEADERS blocks per method.
    heads: [Bytes; 3],
    decoder: rivet_hpack::Decoder,
    streams: Streams<T>,
    next_id: u32,
    /// Calls beyond the peer's MAX_CONCURRENT_STREAMS, in order.
    waiting: VecDeque<(T, Method3, Bytes)>,
    /// Streams with body bytes waiting for a window, in order.
    blocked: VecDeque<u32>,
    send_window: i64,
    receive_window: i64,
    peer_initial_window: i64,
    peer_frame_bytes: usize,
    peer_streams_max: usize,
    block: Option<Block>,
    /// Why new calls fail: the peer sent GOAWAY, or the connection failed.
    closed: Option<Closed>,
}

impl<T> Conn<T> {
    /// A connection to `authority` (`host:port`); `token` goes in every call's `token`
    /// header. [`Conn::out`] holds the preface and settings.
    pub fn new(authority: &str, token: Option<&str>) -> Conn<T> {
        let head = |path: &str| {
            let mut block = BytesMut::new();
            // `:method: POST` and `:scheme: http` are static table entries 3 and 6.
            block.put_u8(0x80 | 3);
            block.put_u8(0x80 | 6);
            rivet_hpack::literal(&mut block, b":path", path.as_bytes());
            rivet_hpack::literal(&mut block, b":authority", authority.as_bytes());
            rivet_hpack::literal(&mut block, b"content-type", b"application/grpc");
            rivet_hpack::literal(&mut block, b"te", b"trailers");
            if let Some(token) = token {
                rivet_hpack::literal(&mut block, b"token", token.as_bytes());
            }
            block.freeze()
        };
        let mut out = BytesMut::with_capacity(1 << 16);
        out.extend_from_slice(PREFACE);
        put_frame_header(&mut out, 12, SETTINGS, 0, 0);
        // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE.
        out.put_u16(2);
        out.put_u32(0);
        out.put_u16(4);
        out.put_u32(STREAM_WINDOW);
        put_window_update(&mut out, 0, CONNECTION_WINDOW - 65_535);
        Conn {
            out,
            completed: Vec::new(),
            heads: [head(PATHS[0]), head(PATHS[1]), head(PATHS[2])],
            // This side announces no SETTINGS_HEADER_TABLE_SIZE: 4096.
            decoder: rivet_hpack::Decoder::new(4096),
            streams: Streams::default(),
            next_id: 1,
            waiting: VecDeque::new(),
            blocked: VecDeque::new(),
            send_window: 65_535,
            receive_window: i64::from(CONNECTION_WINDOW),
            peer_initial_window: 65_535,
            peer_frame_bytes: FRAME_BYTES_DEFAULT,
            peer_streams_max: usize::MAX,
            block: None,
            closed: None,
        }
    }

    /// Calls started and not finished (sent, or waiting for a stream).
    pub fn in_flight(&self) -> usize {
        self.streams.len() + self.waiting.len()
    }

    /// Whether new calls would fail at once (GOAWAY, or a failed connection).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Starts a call: `body` (a gRPC frame) to `method`.
    pub fn start(&mut self, tag: T, method: Method3, body: Bytes) {
        if let Some(closed) = &self.closed {
            self.completed.push((tag, Err(closed.status.clone())));
        } else if self.streams.len() >= self.peer_streams_max || !self.waiting.is_empty() {
            self.waiting.push_back((tag, method, body));
        } else {
            self.open(tag, method, body);
        }
    }

    fn open(&mut self, tag: T, method: Method3, body: Bytes) {
        if self.next_id > STREAM_ID_MAX {
            let status = Status::unavailable("HTTP/2 stream ids exhausted on this connection");
            self.completed.push((tag, Err(status)));
            return;
        }
        let id = self.next_id;
        self.next_id += 2;
        let head = self.heads[method as usize].clone();
        let end = if body.is_empty() { END_STREAM } else { 0 };
        // The block in HEADERS and CONTINUATIONs of at most the peer's frame size.
        let mut chunks = head.chunks(self.peer_frame_bytes.max(1)).peekable();
        let mut kind = HEADERS;
        let mut flags = end;
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            put_frame_header(&mut self.out, chunk.len(), kind, flags, id);
            self.out.extend_from_slice(chunk);
            kind = CONTINUATION;
            flags = 0;
        }
        self.streams.insert(
            id,
            Stream {
                tag,
                method,
                send_window: self.peer_initial_window,
                body,
                receive_window: i64::from(STREAM_WINDOW),
                http_status: None,
                answer: BytesMut::new(),
            },
        );
        if !self.blocked.is_empty() || !self.send_body(id) {
            self.blocked.push_back(id);
        }
    }

    /// Writes what the windows allow of stream `id`'s body; true when all is sent.
    fn send_body(&mut self, id: u32) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else {
            return true;
        };
        while !stream.body.is_empty() {
            let allowed = self.send_window.min(stream.send_window).max(0) as usize;
            let n = stream.body.len().min(self.peer_frame_bytes).min(allowed);
            if n == 0 {
                return false;
            }
            let chunk = stream.body.split_to(n);
            let flags = if stream.body.is_empty() {
                END_STREAM
            } else {
                0
            };
            put_frame_header(&mut self.out, n, DATA, flags, id);
            self.out.extend_from_slice(&chunk);
            self.send_window -= n as i64;
            stream.send_window -= n as i64;
        }
        true
    }

    /// Sends what the windows now allow of the blocked bodies, in order.
    fn send_blocked(&mut self) {
        for _ in 0..self.blocked.len() {
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            if !self.send_body(id) {
                self.blocked.push_back(id);
            }
        }
    }

    /// Starts waiting calls while the peer allows more streams.
    fn admit(&mut self) {
        while self.streams.len() < self.peer_streams_max && self.closed.is_none() {
            let Some((tag, method, body)) = self.waiting.pop_front() else {
                break;
            };
            self.open(tag, method, body);
        }
    }

    /// Ends stream `id` with `result` (resetting it with `reset` when this side ends it
    /// early).
    fn finish(&mut self, id: u32, result: Result<(), Status>, reset: Option<u32>) {
        if let Some(stream) = self.streams.remove(&id) {
            // A body not all sent: the peer answered before reading it.
            let reset = reset.or((!stream.body.is_empty()).then_some(CANCEL));
            if let Some(code) = reset {
                put_frame_header(&mut self.out, 4, RST_STREAM, 0, id);
                self.out.put_u32(code);
            }
            self.completed.push((stream.tag, result));
        }
    }

    /// Fails every call (the connection is done: `status`, e.g. an I/O error).
    pub fn fail(&mut self, status: &Status) {
        if self.closed.is_none() {
            self.closed = Some(Closed {
                status: status.clone(),
                error: true,
            });
        }
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(stream) = self.streams.remove(&id) {
                self.completed.push((stream.tag, Err(status.clone())));
            }
        }
        self.blocked.clear();
        while let Some((tag, _, _)) = self.waiting.pop_front() {
            self.completed.push((tag, Err(status.clone())));
        }
    }

    /// Takes the complete frames at the start of `input`: returns how many bytes they
    /// were (the caller keeps the rest, less than a frame, for the next read), or the
    /// connection's error (then every call has failed with it and [`Conn::out`] ends
    /// with a GOAWAY).
    pub fn receive(&mut self, input: &[u8]) -> Result<usize, Status> {
        let mut used = 0;
        let result = loop {
            let rest = input.get(used..).unwrap_or_default();
            let Some(header) = rest.get(..FRAME_HEADER_BYTES) else {
                break Ok(());
            };
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if length > FRAME_BYTES_DEFAULT {
                break Err(FRAME_SIZE_ERROR);
            }
            let Some(payload) = rest.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length) else {
                break Ok(());
            };
            let id =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & STREAM_ID_MAX;
            used += FRAME_HEADER_BYTES + length;
            if let Err(code) = self.frame(header[3], header[4], id, payload) {
                break Err(code);
            }
        };
        match result {
            Ok(()) => {
                self.admit();
                Ok(used)
            }
            Err(code) => {
                let status = connection_error(code);
                self.fail(&status);
                put_frame_header(&mut self.out, 8, GOAWAY, 0, 0);
                // The last stream the peer started that this side processed: none (no push).
                self.out.put_u32(0);
                self.out.put_u32(code);
                Err(status)
            }
        }
    }

    /// One frame; `Err`: a connection error's code.
    fn frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
        if let Some(block) = &mut self.block {
            // Nothing may come between a HEADERS without END_HEADERS and its last
            // CONTINUATION (§6.10).
            if kind != CONTINUATION || id != block.stream {
                return Err(PROTOCOL_ERROR);
            }
            if block.bytes.len() + payload.len() > HEADER_BLOCK_BYTES_MAX {
                return Err(PROTOCOL_ERROR);
            }
            block.bytes.extend_from_slice(payload);
            if flags & END_HEADERS != 0 {
                if let Some(block) = self.block.take() {
                    self.headers(block.stream, block.end_stream, &block.bytes)?;
                }
            }
            return Ok(());
        }
        match kind {
            DATA => self.data(flags, id, payload),
            HEADERS => {
                if id == 0 {
                    return Err(PROTOCOL_ERROR);
                }
                let mut fragment = unpad(flags, payload)?;
                if flags & PRIORITY != 0 {
                    fragment = fragment.get(5..).ok_or(PROTOCOL_ERROR)?;
                }
                let end_stream = flags & END_STREAM != 0;
                if flags & END_HEADERS != 0 {
                    self.headers(id, end_stream, fragment)
                } else {
                    self.block = Some(Block {
                        stream: id,
                        end_stream,
                        bytes: fragment.to_vec(),
                    });
                    Ok(())
                }
            }
            RST_STREAM => {
                let code: [u8; 4] = payload.try_into().map_err(|_| FRAME_SIZE_ERROR)?;
                if id == 0 {
                    return Err(PROTOCOL_ERROR);
                }
                let code = u32::from_be_bytes(code);
                self.finish(id, Err(h2_status(code, "stream error received")), None);
                Ok(())
            }
            SETTINGS => self.settings(flags, id, payload),
            PUSH_PROMISE => Err(PROTOCOL_ERROR),
            PING => {
                let data: [u8; 8] = payload.try_into().map_err(|_| FRAME_SIZE_ERROR)?;
                if id != 0 {
                    return Err(PROTOCOL_ERROR);
                }
                if flags & ACK == 0 {
                    put_frame_header(&mut self.out, 8, PING, ACK, 0);
                    self.out.extend_from_slice(&data);
                }
                Ok(())
            }
            GOAWAY => self.goaway(id, payload),
            WINDOW_UPDATE => {
                let increment: [u8; 4] = payload.try_into().map_err(|_| FRAME_SIZE_ERROR)?;
                let increment = i64::from(u32::from_be_bytes(increment) & STREAM_ID_MAX);
                if id == 0 {
                    if increment == 0 {
                        return Err(PROTOCOL_ERROR);
                    }
                    self.send_window += increment;
                    if self.send_window > WINDOW_MAX {
                        return Err(FLOW_CONTROL_ERROR);
                    }
                } else if let Some(stream) = self.streams.get_mut(&id) {
                    stream.send_window += increment;
                    if increment == 0 || stream.send_window > WINDOW_MAX {
                        let code = if increment == 0 {
                            PROTOCOL_ERROR
                        } else {
                            FLOW_CONTROL_ERROR
                        };
                        let status = h2_status(code, "stream error detected");
                        self.finish(id, Err(status), Some(code));
                        return Ok(());
                    }
                }
                self.send_blocked();
                Ok(())
            }
            CONTINUATION => Err(PROTOCOL_ERROR),
            // PRIORITY and unknown types (§5.5).
            _ => Ok(()),
        }
    }

    fn data(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
        if id == 0 {
            return Err(PROTOCOL_ERROR);
        }
        let data = unpad(flags, payload)?;
        // Padding counts against the windows too (§6.1).
        let length = payload.len() as i64;
        self.receive_window -= length;
        if self.receive_window < 0 {
            return Err(FLOW_CONTROL_ERROR);
        }
        if self.receive_window <= i64::from(CONNECTION_WINDOW / 2) {
            put_window_update(
                &mut self.out,
                0,
                (i64::from(CONNECTION_WINDOW) - self.receive_window) as u32,
            );
            self.receive_window = i64::from(CONNECTION_WINDOW);
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream this side already ended (reset, or finished by trailers-only).
            return Ok(());
        };
        stream.receive_window -= length;
        let problem = if stream.http_status.is_none() {
            Some((PROTOCOL_ERROR, None))
        } else if stream.receive_window < 0 {
            Some((FLOW_CONTROL_ERROR, None))
        } else if stream.answer.len() + data.len() > ANSWER_BYTES_MAX {
            let message = format!("the answer is larger than {ANSWER_BYTES_MAX} bytes");
            Some((CANCEL, Some(Status::resource_exhausted(message))))
        } else {
            None
        };
        if let Some((code, status)) = problem {
            let status = status.unwrap_or_else(|| h2_status(code, "stream error detected"));
            self.finish(id, Err(status), Some(code));
            return Ok(());
        }
        stream.answer.extend_from_slice(data);
        if flags & END_STREAM != 0 {
            // No trailers: the HTTP status says what went wrong.
            let status = http_status_of(stream.http_status);
            self.finish(id, Err(status), None);
        } else if stream.receive_window <= i64::from(STREAM_WINDOW / 2) {
            let increment = (i64::from(STREAM_WINDOW) - stream.receive_window) as u32;
            stream.receive_window = i64::from(STREAM_WINDOW);
            put_window_update(&mut self.out, id, increment);
        }
        Ok(())
    }

    /// A whole header block of stream `id`.
    fn headers(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), u32> {
        // Every block is decoded, for the dynamic table, even a stream's this side ended.
        let mut fields = Fields::default();
        self.decoder
            .decode(block, |name, value| match name {
                b":status" => {
                    let code = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| v.len() == 3)
                        .and_then(|v| v.parse::<u16>().ok())
                        .filter(|code| (100..=999).contains(code));
                    fields.http_status = Some(code);
                }
                b"grpc-status" => fields.grpc_status = Some(value.to_vec()),
                b"grpc-message" => fields.grpc_message = Some(value.to_vec()),
                _ => {}
            })
            .map_err(|_| COMPRESSION_ERROR)?;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if let Some(http_status) = stream.http_status {
            // Trailers.
            if !end_stream {
                let status = h2_status(PROTOCOL_ERROR, "stream error detected");
                self.finish(id, Err(status), Some(PROTOCOL_ERROR));
                return Ok(());
            }
            let result = match fields.grpc() {
                Some(Ok(())) if http_status == 200 => {
                    let answer = std::mem::take(&mut stream.answer).freeze();
                    decode(stream.method, answer)
                }
                Some(Ok(())) | None => Err(http_status_of(Some(http_status))),
                Some(Err(status)) => Err(status),
            };
            self.finish(id, result, None);
            return Ok(());
        }
        let Some(Some(http_status)) = fields.http_status else {
            let status = h2_status(PROTOCOL_ERROR, "stream error detected");
            self.finish(id, Err(status), Some(PROTOCOL_ERROR));
            return Ok(());
        };
        if (100..200).contains(&http_status) && !end_stream {
            // Informational headers: the answer's come next.
            return Ok(());
        }
        if let Some(result) = fields.grpc() {
            // Trailers-only: the status is in the headers.
            let result = result.and(Err(Status::internal("the answer has no message")));
            let reset = (!end_stream).then_some(CANCEL);
            self.finish(id, result, reset);
        } else if end_stream {
            self.finish(id, Err(http_status_of(Some(http_status))), None);
        } else {
            stream.http_status = Some(http_status);
        }
        Ok(())
    }

    fn settings(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), u32> {
        if id != 0 {
            return Err(PROTOCOL_ERROR);
        }
        if flags & ACK != 0 {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(FRAME_SIZE_ERROR)
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(FRAME_SIZE_ERROR);
        }
        for setting in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match u16::from_be_bytes([setting[0], setting[1]]) {
                // SETTINGS_MAX_CONCURRENT_STREAMS.
                3 => self.peer_streams_max = value as usize,
                // SETTINGS_INITIAL_WINDOW_SIZE: the change applies to open streams (§6.9.2).
                4 => {
                    let value = i64::from(value);
                    if value > WINDOW_MAX {
                        return Err(FLOW_CONTROL_ERROR);
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > WINDOW_MAX {
                            return Err(FLOW_CONTROL_ERROR);
                        }
                    }
                }
                // SETTINGS_MAX_FRAME_SIZE.
                5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(PROTOCOL_ERROR);
                    }
                    self.peer_frame_bytes = value as usize;
                }
                // SETTINGS_HEADER_TABLE_SIZE bounds this side's encoder, which keeps no
                // table; ENABLE_PUSH, MAX_HEADER_LIST_SIZE and unknown ones need nothing.
                _ => {}
            }
        }
        put_frame_header(&mut self.out, 0, SETTINGS, ACK, 0);
        self.send_blocked();
        Ok(())
    }

    fn goaway(&mut self, id: u32, payload: &[u8]) -> Result<(), u32> {
        if id != 0 {
            return Err(PROTOCOL_ERROR);
        }
        if payload.len() < 8 {
            return Err(FRAME_SIZE_ERROR);
        }
        let mut payload = payload;
        let last = payload.get_u32() & STREAM_ID_MAX;
        let code = payload.get_u32();
        let mut message = format!(
            "h2 protocol error: connection error received: {}",
            reason_text(code)
        );
        if !payload.is_empty() {
            message.push_str(&format!(" ({:?})", String::from_utf8_lossy(payload)));
        }
        let status = Status::new(code_of_reason(code), message);
        // Streams above `last` were not and will not be processed.
        let mut above: Vec<u32> = self.streams.keys().copied().filter(|s| *s > last).collect();
        above.sort_unstable();
        for id in above {
            self.finish(id, Err(status.clone()), None);
        }
        while let Some((tag, _, _)) = self.waiting.pop_front() {
            self.completed.push((tag, Err(status.clone())));
        }
        if self.closed.is_none() {
            self.closed = Some(Closed {
                status,
                error: code != 0,
            });
        }
        Ok(())
    }

    /// The connection's error, once it failed or the peer sent a GOAWAY other than
    /// NO_ERROR.
    pub fn error(&self) -> Option<Status> {
        self.closed
            .as_ref()
            .filter(|c| c.error)
            .map(|c| c.status.clone())
    }
}

/// The status of an answer without trailers (or whose trailers lack `grpc-status`).
fn http_status_of(http_status: Option<u16>) -> Status {
    match http_status.and_then(|s| StatusCode::from_u16(s).ok()) {
        Some(status) => status_of_http(status),
        None => h2_status(PROTOCOL_ERROR, "stream error detected"),
    }
}

/// A frame's content without its padding (§6.1).
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], u32> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(PROTOCOL_ERROR)?;
    let end = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or(PROTOCOL_ERROR)?;
    rest.get(..end).ok_or(PROTOCOL_ERROR)
}

fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, id: u32) {
    debug_assert!(length < 1 << 24, "frame of {length} bytes");
    out.put_u8((length >> 16) as u8);
    out.put_u16(length as u16);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
}

fn put_window_update(out: &mut BytesMut, id: u32, increment: u32) {
    put_frame_header(out, 4, WINDOW_UPDATE, 0, id);
    out.put_u32(increment);
}

#[cfg(test)]
#[path = "h2c_tests.rs"]
mod tests;
