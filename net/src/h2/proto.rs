//! The HTTP/2 connection state machine (RFC 9113), without I/O: bytes from the client go
//! in through [`Proto::receive`], which parses frames, keeps the streams, flow control and
//! HPACK state and records [`Event`]s for the connection task; what goes back to the
//! client collects in [`Proto::out`], written by the connection task in one write per
//! turn. The response side ([`Proto::send_headers`], [`Proto::send_data`],
//! [`Proto::send_trailers`]) queues DATA beyond the client's windows and sends it as
//! WINDOW_UPDATEs arrive.
//!
//! Nothing a client sends panics here: a malformed frame is a connection error (GOAWAY,
//! then the connection closes) or a stream error (RST_STREAM), as RFC 9113 §5.4 says.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::HashMap;

use rivet_engine::limits::{
    H2_CONNECTION_WINDOW, H2_HEADER_LIST_MAX, H2_OUT_MAX, H2_STREAM_QUEUE_MAX, H2_STREAM_WINDOW,
};

use super::hpack;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const FRAME_HEADER_BYTES: usize = 9;
/// The largest frame payload this side accepts: the protocol's default, never raised.
pub const MAX_FRAME_SIZE: usize = 16_384;
/// The largest window RFC 9113 allows.
const WINDOW_MAX: i64 = (1 << 31) - 1;

/// A request's header section.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: String,
    pub headers: HeaderMap,
}

impl Head {
    /// The request as the `http` crate has it.
    pub fn into_request<B>(self, body: B) -> Option<http::Request<B>> {
        let mut uri = http::Uri::builder();
        if let (Some(scheme), Some(authority)) = (&self.scheme, &self.authority) {
            uri = uri.scheme(scheme.as_str()).authority(authority.as_str());
        }
        let uri = uri.path_and_query(self.path.as_str()).build().ok()?;
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = self.headers;
        Some(request)
    }
}

#[derive(Debug)]
pub enum Event {
    /// A new stream's request headers.
    Request {
        id: u32,
        head: Head,
        end_stream: bool,
    },
    /// DATA arrived on a stream (`end_stream`: the request's last).
    Data { id: u32, end_stream: bool },
    /// The client reset a stream, or the connection closed it.
    Reset { id: u32 },
    /// The client acknowledged a PING of ours.
    PingAck,
}

struct Stream {
    /// END_STREAM received.
    recv_closed: bool,
    /// What the client may still send before more credit.
    recv_window: i64,
    /// Bytes read by the service and not yet credited back.
    recv_unacked: u32,
    /// Request DATA not yet read by the service.
    inbound: VecDeque<Bytes>,
    inbound_bytes: usize,
    body_waker: Option<Waker>,
    /// What this side may still send on the stream.
    send_window: i64,
    headers_sent: bool,
    /// Response DATA waiting for window.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// END_STREAM goes out once the queue is sent (with trailers, if any).
    send_end: bool,
    trailers: Option<Trailers>,
    send_closed: bool,
    send_waker: Option<Waker>,
    /// Stops the stream's task when the client resets it or the connection ends.
    abort: Option<futures::future::AbortHandle>,
}

impl Stream {
    fn new(send_window: i64) -> Stream {
        Stream {
            recv_closed: false,
            recv_window: H2_STREAM_WINDOW as i64,
            recv_unacked: 0,
            inbound: VecDeque::new(),
            inbound_bytes: 0,
            body_waker: None,
            send_window,
            headers_sent: false,
            queue: VecDeque::new(),
            queued: 0,
            send_end: false,
            trailers: None,
            send_closed: false,
            send_waker: None,
            abort: None,
        }
    }

    fn wake_all(&mut self) {
        if let Some(waker) = self.body_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.send_waker.take() {
            waker.wake();
        }
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
    }
}

/// A response's trailers.
pub enum Trailers {
    Map(HeaderMap),
    /// `grpc-status: 0`, a gRPC call's success.
    GrpcOk,
}

/// A header block arriving in HEADERS and CONTINUATION frames.
struct PartialBlock {
    id: u32,
    end_stream: bool,
    block: BytesMut,
}

/// The connection error that ends it: GOAWAY with the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionError(pub u32);

pub struct Proto {
    /// Bytes for the client, written by the connection task.
    pub out: BytesMut,
    pub events: Vec<Event>,
    decoder: hpack::Decoder,
    encoder: hpack::Encoder,
    streams: HashMap<u32, Stream>,
    /// The highest stream the client opened.
    last_stream_id: u32,
    max_concurrent_streams: u32,
    /// The client's first frame must be SETTINGS.
    settings_seen: bool,
    continuation: Option<PartialBlock>,
    peer_max_frame_size: usize,
    peer_initial_window: i64,
    send_window: i64,
    /// Connection credit received and not yet returned.
    recv_unacked: u32,
    /// Streams with DATA held back by the connection's send window.
    blocked: VecDeque<u32>,
    /// Tasks waiting for [`Proto::out`] to drain.
    out_waiters: Vec<Waker>,
    /// The connection task, woken when there is something to write.
    pub conn_waker: Option<Waker>,
    /// GOAWAY sent (an error, or the server stops): no new streams.
    pub goaway_sent: bool,
    /// The client sent GOAWAY.
    pub peer_goaway: bool,
}

fn frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, id: u32) {
    out.put_uint(length as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(id);
}

/// `host:port` of an authority that is a URL: Go clients send `http://host:port` for
/// some calls (see `crate::authority`), which Go's server takes.
fn authority_of_url(value: &str) -> &str {
    match value.find("://") {
        Some(at) => {
            let rest = &value[at + 3..];
            &rest[..rest.find('/').unwrap_or(rest.len())]
        }
        None => value,
    }
}

/// Why a request's header block is refused (a stream error, PROTOCOL_ERROR).
fn request_head(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Option<Head> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut regular = false;
    for (name, value) in fields {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular {
                return None;
            }
            let value = String::from_utf8(value).ok()?;
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None;
            }
            continue;
        }
        regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        match &name[..] {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return None,
            b"te" if value != b"trailers" => return None,
            _ => {}
        }
        let name = HeaderName::from_bytes(&name).ok()?;
        let value = HeaderValue::from_bytes(&value).ok()?;
        headers.append(name, value);
    }
    let method = Method::from_bytes(method?.as_bytes()).ok()?;
    let path = path.filter(|p| !p.is_empty())?;
    if method == Method::CONNECT {
        return None;
    }
    let authority = authority.map(|a| authority_of_url(&a).to_string());
    Some(Head {
        method,
        scheme,
        authority,
        path,
        headers,
    })
}

/// Header fields a response never carries over HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

impl Proto {
    /// A connection whose client preface has been read; our SETTINGS go out first.
    pub fn new(max_concurrent_streams: u32) -> Proto {
        let mut out = BytesMut::with_capacity(16 * 1024);
        frame_header(&mut out, 18, SETTINGS, 0, 0);
        out.put_u16(0x3);
        out.put_u32(max_concurrent_streams);
        out.put_u16(0x4);
        out.put_u32(H2_STREAM_WINDOW);
        out.put_u16(0x6);
        out.put_u32(H2_HEADER_LIST_MAX as u32);
        frame_header(&mut out, 4, WINDOW_UPDATE, 0, 0);
        out.put_u32(H2_CONNECTION_WINDOW - 65_535);
        Proto {
            out,
            events: Vec::new(),
            decoder: hpack::Decoder::new(4096),
            encoder: hpack::Encoder::new(),
            streams: HashMap::new(),
            last_stream_id: 0,
            max_concurrent_streams,
            settings_seen: false,
            continuation: None,
            peer_max_frame_size: MAX_FRAME_SIZE,
            peer_initial_window: 65_535,
            send_window: 65_535,
            recv_unacked: 0,
            blocked: VecDeque::new(),
            out_waiters: Vec::new(),
            conn_waker: None,
            goaway_sent: false,
            peer_goaway: false,
        }
    }

    fn wake_conn(&mut self) {
        if let Some(waker) = self.conn_waker.take() {
            waker.wake();
        }
    }

    /// Open streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Sends GOAWAY with `code` (once); the connection closes when the streams finish
    /// (at once for an error).
    pub fn goaway(&mut self, code: u32) {
        if self.goaway_sent {
            return;
        }
        self.goaway_sent = true;
        frame_header(&mut self.out, 8, GOAWAY, 0, 0);
        self.out.put_u32(self.last_stream_id);
        self.out.put_u32(code);
        self.wake_conn();
    }

    /// Sends a PING (keepalive).
    pub fn ping(&mut self, payload: [u8; 8]) {
        frame_header(&mut self.out, 8, PING, 0, 0);
        self.out.extend_from_slice(&payload);
    }

    /// Parses the complete frames at the start of `input` (removing them). A connection
    /// error has sent GOAWAY: the caller flushes [`Proto::out`] and closes.
    pub fn receive(&mut self, input: &mut BytesMut) -> Result<(), ConnectionError> {
        while input.len() >= FRAME_HEADER_BYTES {
            let length =
                ((input[0] as usize) << 16) | ((input[1] as usize) << 8) | input[2] as usize;
            if length > MAX_FRAME_SIZE {
                return Err(self.fail(FRAME_SIZE_ERROR));
            }
            if input.len() < FRAME_HEADER_BYTES + length {
                break;
            }
            let kind = input[3];
            let flags = input[4];
            let id = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
            input.advance(FRAME_HEADER_BYTES);
            let payload = input.split_to(length).freeze();
            if let Err(e) = self.frame(kind, flags, id, payload) {
                return Err(self.fail(e.0));
            }
        }
        Ok(())
    }

    fn fail(&mut self, code: u32) -> ConnectionError {
        self.goaway(code);
        for (id, mut stream) in self.streams.drain() {
            stream.wake_all();
            self.events.push(Event::Reset { id });
        }
        ConnectionError(code)
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        id: u32,
        payload: Bytes,
    ) -> Result<(), ConnectionError> {
        if !self.settings_seen && kind != SETTINGS {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        if let Some(partial) = &self.continuation {
            if kind != CONTINUATION || id != partial.id {
                return Err(ConnectionError(PROTOCOL_ERROR));
            }
        }
        match kind {
            DATA => self.data(flags, id, payload),
            HEADERS => self.headers(flags, id, payload),
            CONTINUATION => self.continuation_frame(flags, id, payload),
            PRIORITY => {
                if id == 0 {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                if payload.len() != 5 {
                    self.reset(id, FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            RST_STREAM => {
                if id == 0 || id > self.last_stream_id {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                if payload.len() != 4 {
                    return Err(ConnectionError(FRAME_SIZE_ERROR));
                }
                if let Some(mut stream) = self.streams.remove(&id) {
                    stream.wake_all();
                    self.events.push(Event::Reset { id });
                }
                Ok(())
            }
            SETTINGS => self.settings(flags, id, payload),
            PUSH_PROMISE => Err(ConnectionError(PROTOCOL_ERROR)),
            PING => {
                if id != 0 {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                if payload.len() != 8 {
                    return Err(ConnectionError(FRAME_SIZE_ERROR));
                }
                if flags & FLAG_ACK != 0 {
                    self.events.push(Event::PingAck);
                } else {
                    frame_header(&mut self.out, 8, PING, FLAG_ACK, 0);
                    self.out.extend_from_slice(&payload);
                }
                Ok(())
            }
            GOAWAY => {
                if id != 0 {
                    return Err(ConnectionError(PROTOCOL_ERROR));
                }
                if payload.len() < 8 {
                    return Err(ConnectionError(FRAME_SIZE_ERROR));
                }
                self.peer_goaway = true;
                Ok(())
            }
            WINDOW_UPDATE => self.window_update(id, payload),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn settings(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnectionError> {
        if id != 0 {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        if flags & FLAG_ACK != 0 {
            if !payload.is_empty() {
                return Err(ConnectionError(FRAME_SIZE_ERROR));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(ConnectionError(FRAME_SIZE_ERROR));
        }
        self.settings_seen = true;
        for setting in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match u16::from_be_bytes([setting[0], setting[1]]) {
                0x1 => self.encoder.set_max_size(value.min(65_536) as usize),
                0x2 if value > 1 => return Err(ConnectionError(PROTOCOL_ERROR)),
                0x4 => {
                    if value as i64 > WINDOW_MAX {
                        return Err(ConnectionError(FLOW_CONTROL_ERROR));
                    }
                    let delta = value as i64 - self.peer_initial_window;
                    self.peer_initial_window = value as i64;
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > WINDOW_MAX {
                            return Err(ConnectionError(FLOW_CONTROL_ERROR));
                        }
                    }
                }
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnectionError(PROTOCOL_ERROR));
                    }
                    self.peer_max_frame_size = value as usize;
                }
                _ => {}
            }
        }
        frame_header(&mut self.out, 0, SETTINGS, FLAG_ACK, 0);
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.flush_stream(id);
        }
        Ok(())
    }

    fn window_update(&mut self, id: u32, payload: Bytes) -> Result<(), ConnectionError> {
        if payload.len() != 4 {
            return Err(ConnectionError(FRAME_SIZE_ERROR));
        }
        let increment = (u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
            & 0x7fff_ffff) as i64;
        if id == 0 {
            if increment == 0 {
                return Err(ConnectionError(PROTOCOL_ERROR));
            }
            self.send_window += increment;
            if self.send_window > WINDOW_MAX {
                return Err(ConnectionError(FLOW_CONTROL_ERROR));
            }
            let blocked = std::mem::take(&mut self.blocked);
            for id in blocked {
                self.flush_stream(id);
            }
            return Ok(());
        }
        if id > self.last_stream_id {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if increment == 0 {
            self.reset(id, PROTOCOL_ERROR);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > WINDOW_MAX {
            self.reset(id, FLOW_CONTROL_ERROR);
            return Ok(());
        }
        self.flush_stream(id);
        Ok(())
    }

    /// Strips padding (and the priority fields of HEADERS).
    fn unpad(flags: u8, mut payload: Bytes, priority: bool) -> Result<Bytes, ConnectionError> {
        let mut pad = 0;
        if flags & FLAG_PADDED != 0 {
            if payload.is_empty() {
                return Err(ConnectionError(FRAME_SIZE_ERROR));
            }
            pad = payload[0] as usize;
            payload.advance(1);
        }
        if priority && flags & FLAG_PRIORITY != 0 {
            if payload.len() < 5 {
                return Err(ConnectionError(FRAME_SIZE_ERROR));
            }
            payload.advance(5);
        }
        if pad > payload.len() {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        payload.truncate(payload.len() - pad);
        Ok(payload)
    }

    fn data(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnectionError> {
        if id == 0 || id > self.last_stream_id {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        let flow = payload.len();
        // The connection's window: credit returns at once.
        self.recv_unacked += flow as u32;
        if self.recv_unacked >= H2_CONNECTION_WINDOW / 2 {
            frame_header(&mut self.out, 4, WINDOW_UPDATE, 0, 0);
            self.out.put_u32(self.recv_unacked);
            self.recv_unacked = 0;
        }
        let data = Self::unpad(flags, payload, false)?;
        let end_stream = flags & FLAG_END_STREAM != 0;
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream closed or reset: the frame may have been in flight.
            return Ok(());
        };
        if stream.recv_closed {
            self.reset(id, STREAM_CLOSED);
            return Ok(());
        }
        stream.recv_window -= flow as i64;
        if stream.recv_window < 0 {
            self.reset(id, FLOW_CONTROL_ERROR);
            return Ok(());
        }
        // Padding is credited back as soon as it arrives.
        stream.recv_unacked += (flow - data.len()) as u32;
        if !data.is_empty() {
            stream.inbound_bytes += data.len();
            stream.inbound.push_back(data);
        }
        if end_stream {
            stream.recv_closed = true;
        }
        if let Some(waker) = stream.body_waker.take() {
            waker.wake();
        }
        self.events.push(Event::Data { id, end_stream });
        self.maybe_close(id);
        Ok(())
    }

    fn headers(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnectionError> {
        if id == 0 || id.is_multiple_of(2) {
            return Err(ConnectionError(PROTOCOL_ERROR));
        }
        let fragment = Self::unpad(flags, payload, true)?;
        let mut block = BytesMut::with_capacity(fragment.len());
        block.extend_from_slice(&fragment);
        let partial = PartialBlock {
            id,
            end_stream: flags & FLAG_END_STREAM != 0,
            block,
        };
        if flags & FLAG_END_HEADERS != 0 {
            self.header_block(partial)
        } else {
            self.continuation = Some(partial);
            Ok(())
        }
    }

    fn continuation_frame(
        &mut self,
        flags: u8,
        id: u32,
        payload: Bytes,
    ) -> Result<(), ConnectionError> {
        let Some(partial) = self.continuation.as_mut().filter(|p| p.id == id) else {
            return Err(ConnectionError(PROTOCOL_ERROR));
        };
        if partial.block.len() + payload.len() > H2_HEADER_LIST_MAX {
            return Err(ConnectionError(ENHANCE_YOUR_CALM));
        }
        partial.block.extend_from_slice(&payload);
        if flags & FLAG_END_HEADERS != 0 {
            let partial = self.continuation.take().expect("checked above");
            return self.header_block(partial);
        }
        Ok(())
    }

    fn header_block(&mut self, partial: PartialBlock) -> Result<(), ConnectionError> {
        let PartialBlock {
            id,
            end_stream,
            block,
        } = partial;
        let mut fields = Vec::with_capacity(8);
        let mut list_size = 0usize;
        self.decoder
            .decode(&block, |name, value| {
                list_size += name.len() + value.len() + 32;
                if list_size <= H2_HEADER_LIST_MAX {
                    fields.push((name.to_vec(), value.to_vec()));
                }
            })
            .map_err(|_| ConnectionError(COMPRESSION_ERROR))?;
        if id <= self.last_stream_id {
            // Trailers of a request: taken as its end, their fields unused.
            return match self.streams.get_mut(&id) {
                Some(stream) if !stream.recv_closed => {
                    if !end_stream {
                        return Err(ConnectionError(PROTOCOL_ERROR));
                    }
                    stream.recv_closed = true;
                    if let Some(waker) = stream.body_waker.take() {
                        waker.wake();
                    }
                    self.events.push(Event::Data {
                        id,
                        end_stream: true,
                    });
                    self.maybe_close(id);
                    Ok(())
                }
                // A stream this side ended or reset: the frame may have been in flight.
                _ => Ok(()),
            };
        }
        self.last_stream_id = id;
        if self.goaway_sent {
            return Ok(());
        }
        if self.streams.len() >= self.max_concurrent_streams as usize {
            self.write_reset(id, REFUSED_STREAM);
            return Ok(());
        }
        if list_size > H2_HEADER_LIST_MAX {
            self.write_reset(id, PROTOCOL_ERROR);
            return Ok(());
        }
        let Some(head) = request_head(fields) else {
            self.write_reset(id, PROTOCOL_ERROR);
            return Ok(());
        };
        let mut stream = Stream::new(self.peer_initial_window);
        stream.recv_closed = end_stream;
        self.streams.insert(id, stream);
        self.events.push(Event::Request {
            id,
            head,
            end_stream,
        });
        Ok(())
    }

    fn write_reset(&mut self, id: u32, code: u32) {
        frame_header(&mut self.out, 4, RST_STREAM, 0, id);
        self.out.put_u32(code);
        self.wake_conn();
    }

    /// Resets a stream (a stream error, or its task failed): RST_STREAM, and the
    /// stream's task and body stop.
    pub fn reset(&mut self, id: u32, code: u32) {
        if let Some(mut stream) = self.streams.remove(&id) {
            stream.wake_all();
            self.events.push(Event::Reset { id });
        }
        self.write_reset(id, code);
    }

    /// Removes a stream both sides have ended. One whose response ended before its
    /// request is reset with NO_ERROR: the client need not send the rest.
    fn maybe_close(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if !stream.send_closed {
            return;
        }
        let recv_closed = stream.recv_closed;
        if let Some(mut stream) = self.streams.remove(&id) {
            stream.abort = None;
            stream.wake_all();
        }
        if !recv_closed {
            self.write_reset(id, NO_ERROR);
        }
    }

    /// Sets the handle that stops a stream's task when the stream goes.
    pub fn set_abort(&mut self, id: u32, abort: futures::future::AbortHandle) {
        match self.streams.get_mut(&id) {
            Some(stream) => stream.abort = Some(abort),
            None => abort.abort(),
        }
    }

    /// Whether the stream is still open.
    pub fn is_open(&self, id: u32) -> bool {
        self.streams.contains_key(&id)
    }

    /// Request DATA received and not yet read, in bytes.
    pub fn inbound_bytes(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.inbound_bytes)
    }

    /// Takes all request DATA received (the request ended), crediting it back.
    pub fn take_inbound(&mut self, id: u32) -> Option<Bytes> {
        let stream = self.streams.get_mut(&id)?;
        let taken = stream.inbound_bytes;
        stream.inbound_bytes = 0;
        let body = if stream.inbound.len() == 1 {
            stream.inbound.pop_front()
        } else {
            let mut all = BytesMut::with_capacity(taken);
            for chunk in stream.inbound.drain(..) {
                all.extend_from_slice(&chunk);
            }
            Some(all.freeze())
        };
        self.credit(id, taken);
        body
    }

    /// Credits `n` bytes of a stream's request back to the client.
    fn credit(&mut self, id: u32, n: usize) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.recv_unacked += n as u32;
        if !stream.recv_closed && stream.recv_unacked >= H2_STREAM_WINDOW / 4 {
            let increment = stream.recv_unacked;
            stream.recv_window += increment as i64;
            stream.recv_unacked = 0;
            frame_header(&mut self.out, 4, WINDOW_UPDATE, 0, id);
            self.out.put_u32(increment);
            self.wake_conn();
        }
    }

    /// A request body's next DATA: `Ready(Some(Ok))` data, `Ready(None)` the end,
    /// `Ready(Some(Err))` the stream was reset.
    pub fn poll_body(&mut self, id: u32, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ()>>> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Poll::Ready(Some(Err(())));
        };
        if let Some(data) = stream.inbound.pop_front() {
            stream.inbound_bytes -= data.len();
            let n = data.len();
            self.credit(id, n);
            return Poll::Ready(Some(Ok(data)));
        }
        if stream.recv_closed {
            return Poll::Ready(None);
        }
        stream.body_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the request body has ended with nothing left to read.
    pub fn body_ended(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_none_or(|s| s.recv_closed && s.inbound.is_empty())
    }

    /// Ready when a response task may queue more DATA on the stream; `Err` when the
    /// stream is gone.
    pub fn poll_capacity(&mut self, id: u32, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let out_full = self.out.len() >= H2_OUT_MAX;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(()));
        };
        if stream.send_closed {
            return Poll::Ready(Err(()));
        }
        if stream.queued >= H2_STREAM_QUEUE_MAX {
            stream.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if out_full {
            self.out_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// The connection task wrote `Proto::out`: tasks waiting for room go on.
    pub fn out_drained(&mut self) {
        for waker in self.out_waiters.drain(..) {
            waker.wake();
        }
    }

    fn write_block(&mut self, id: u32, block: &[u8], end_stream: bool) {
        let max = self.peer_max_frame_size;
        let mut chunks = block.chunks(max).peekable();
        let first = chunks.next().unwrap_or(&[]);
        let mut flags = if end_stream { FLAG_END_STREAM } else { 0 };
        if chunks.peek().is_none() {
            flags |= FLAG_END_HEADERS;
        }
        frame_header(&mut self.out, first.len(), HEADERS, flags, id);
        self.out.extend_from_slice(first);
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            frame_header(&mut self.out, chunk.len(), CONTINUATION, flags, id);
            self.out.extend_from_slice(chunk);
        }
    }

    fn encode_fields(&mut self, block: &mut BytesMut, headers: &HeaderMap) {
        for (name, value) in headers {
            if connection_specific(name) {
                continue;
            }
            self.encoder
                .field(block, name.as_str().as_bytes(), value.as_bytes());
        }
    }

    /// A gRPC response's headers (`:status: 200`, `content-type: application/grpc`).
    pub fn send_grpc_headers(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.headers_sent {
            return;
        }
        stream.headers_sent = true;
        let mut block = BytesMut::with_capacity(16);
        self.encoder.begin(&mut block);
        self.encoder.status(&mut block, 200);
        self.encoder
            .field(&mut block, b"content-type", b"application/grpc");
        self.write_block(id, &block, false);
        self.wake_conn();
    }

    /// The response's headers; `end_stream`: there is no body (a trailers-only gRPC
    /// response, or an empty HTTP one).
    pub fn send_headers(&mut self, id: u32, status: u16, headers: &HeaderMap, end_stream: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.headers_sent {
            return;
        }
        stream.headers_sent = true;
        if end_stream {
            stream.send_closed = true;
        }
        let mut block = BytesMut::with_capacity(64);
        self.encoder.begin(&mut block);
        self.encoder.status(&mut block, status);
        self.encode_fields(&mut block, headers);
        self.write_block(id, &block, end_stream);
        self.wake_conn();
        if end_stream {
            self.maybe_close(id);
        }
    }

    /// Response DATA (queued beyond the client's windows); `end_stream` ends the
    /// response without trailers.
    pub fn send_data(&mut self, id: u32, data: Bytes, end_stream: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.send_closed || stream.send_end {
            return;
        }
        if !data.is_empty() {
            stream.queued += data.len();
            stream.queue.push_back(data);
        }
        stream.send_end |= end_stream;
        self.flush_stream(id);
        self.wake_conn();
    }

    /// The response's trailers, after its DATA.
    pub fn send_trailers(&mut self, id: u32, trailers: Trailers) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if stream.send_closed || stream.send_end {
            return;
        }
        stream.trailers = Some(trailers);
        stream.send_end = true;
        self.flush_stream(id);
        self.wake_conn();
    }

    /// Sends what the windows allow of a stream's queue, then its end.
    fn flush_stream(&mut self, id: u32) {
        let max_frame = self.peer_max_frame_size;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if !stream.headers_sent || stream.send_closed {
            return;
        }
        while let Some(front) = stream.queue.front_mut() {
            let window = stream.send_window.min(self.send_window);
            if window <= 0 {
                if self.send_window <= 0 && !self.blocked.contains(&id) {
                    self.blocked.push_back(id);
                }
                break;
            }
            let n = front.len().min(window as usize).min(max_frame);
            let chunk = front.split_to(n);
            if front.is_empty() {
                stream.queue.pop_front();
            }
            stream.queued -= n;
            stream.send_window -= n as i64;
            self.send_window -= n as i64;
            let last = stream.queue.is_empty() && stream.send_end && stream.trailers.is_none();
            let flags = if last { FLAG_END_STREAM } else { 0 };
            frame_header(&mut self.out, n, DATA, flags, id);
            self.out.extend_from_slice(&chunk);
            if last {
                stream.send_closed = true;
            }
        }
        if stream.queue.is_empty() && stream.send_end && !stream.send_closed {
            stream.send_closed = true;
            match stream.trailers.take() {
                Some(trailers) => {
                    let mut block = BytesMut::with_capacity(32);
                    self.encoder.begin(&mut block);
                    match &trailers {
                        Trailers::Map(map) => self.encode_fields(&mut block, map),
                        Trailers::GrpcOk => self.encoder.field(&mut block, b"grpc-status", b"0"),
                    }
                    self.write_block(id, &block, true);
                }
                None => frame_header(&mut self.out, 0, DATA, FLAG_END_STREAM, id),
            }
        }
        let stream = self.streams.get_mut(&id).expect("looked up above");
        if stream.queued < H2_STREAM_QUEUE_MAX {
            if let Some(waker) = stream.send_waker.take() {
                waker.wake();
            }
        }
        if stream.send_closed {
            self.maybe_close(id);
        }
    }

    /// Ends every stream (the connection is closing): their tasks stop.
    pub fn close_all(&mut self) {
        for (_, mut stream) in self.streams.drain() {
            stream.wake_all();
        }
        for waker in self.out_waiters.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
