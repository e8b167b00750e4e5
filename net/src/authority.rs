//! Accepts the HTTP/2 `:authority` that etcd's Go clients send for an endpoint given as a
//! URL.
//!
//! clientv3 dials some calls straight at an endpoint string — `etcdctl endpoint status
//! --cluster`, `endpoint hashkv --cluster`, `move-leader`, and any `--endpoints
//! http://host:port` with those commands — and grpc-go then sends the whole URL,
//! `http://127.0.0.1:2379`, as `:authority`. Go's HTTP/2 server takes it; hyper's (h2)
//! resets the stream with PROTOCOL_ERROR, since an authority holds no scheme. etcd users
//! run those commands every day, so rivet accepts them: this filter sits between the
//! client socket and hyper and, inside each request's HPACK header block, rewrites an
//! `:authority` of the form `scheme://host:port[/]` to `host:port`. Every other byte
//! passes unchanged.
//!
//! The rewrite keeps the field's representation (indexed or not), so the server's HPACK
//! table receives the shorter value where the client's holds the longer one. Indexes
//! still agree: both tables hold the same entries in the same order, and the server's,
//! with smaller entries, evicts no sooner than the client's, so every entry the client
//! refers to is in both.
//!
//! Only HTTP/2 with prior knowledge (gRPC) is filtered; a connection that does not open
//! with the HTTP/2 preface (HTTP/1.1: `/health`, `/metrics`) passes untouched.

use bytes::{Buf, BufMut, BytesMut};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set, and hyper's default: rewritten
/// header blocks are cut into frames no larger.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// A header block this filter holds while it waits for the block's last frame; larger
/// blocks pass unfiltered (hyper limits header lists to 16 KiB by default anyway).
const HEADER_BLOCK_BYTES_MAX: usize = 256 * 1024;
/// `:authority` is entry 1 of HPACK's static table (RFC 7541 Appendix A).
const STATIC_AUTHORITY: u64 = 1;
const AUTHORITY: &[u8] = b":authority";

enum Mode {
    /// Matching the first bytes against the HTTP/2 preface.
    Preface,
    /// HTTP/2: frames are parsed and header blocks filtered.
    Frames,
    /// Not HTTP/2 with prior knowledge, or a block too large: bytes pass as they come.
    Passthrough,
}

/// A header block split over HEADERS and CONTINUATION frames, held until it ends.
struct Block {
    /// The frames as they arrived, to pass on unchanged when nothing is rewritten.
    raw: BytesMut,
    /// The HPACK fragment: the frames' payloads without padding and priority.
    fragment: BytesMut,
    stream_id: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Option<[u8; 5]>,
}

/// The filter of one client connection: bytes from the socket go in with [`feed`],
/// filtered bytes for hyper come out of [`output`].
///
/// [`feed`]: AuthorityFilter::feed
/// [`output`]: AuthorityFilter::output
pub struct AuthorityFilter {
    mode: Mode,
    /// Bytes received and not yet filtered (an incomplete frame).
    pending: BytesMut,
    /// Filtered bytes hyper has not read yet.
    out: BytesMut,
    block: Option<Block>,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        AuthorityFilter::new()
    }
}

impl AuthorityFilter {
    pub fn new() -> AuthorityFilter {
        AuthorityFilter {
            mode: Mode::Preface,
            pending: BytesMut::new(),
            out: BytesMut::new(),
            block: None,
        }
    }

    /// Whether bytes pass untouched from now on (then the caller may bypass the filter
    /// once [`AuthorityFilter::output`] is drained).
    pub fn is_passthrough(&self) -> bool {
        matches!(self.mode, Mode::Passthrough)
    }

    /// The filtered bytes ready for hyper.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Takes bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Mode::Passthrough = self.mode {
            self.out.extend_from_slice(bytes);
            return;
        }
        self.pending.extend_from_slice(bytes);
        if let Mode::Preface = self.mode {
            let seen = self.pending.len().min(PREFACE.len());
            if self.pending[..seen] != PREFACE[..seen] {
                self.pass_through();
                return;
            }
            if seen < PREFACE.len() {
                return;
            }
            self.out
                .extend_from_slice(&self.pending.split_to(PREFACE.len()));
            self.mode = Mode::Frames;
        }
        self.filter_frames();
    }

    fn pass_through(&mut self) {
        self.mode = Mode::Passthrough;
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.raw);
        }
        let rest = self.pending.split();
        self.out.extend_from_slice(&rest);
    }

    fn filter_frames(&mut self) {
        while self.pending.len() >= FRAME_HEADER_BYTES {
            let header = &self.pending[..FRAME_HEADER_BYTES];
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let kind = header[3];
            let flags = header[4];
            let stream_id =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let whole = FRAME_HEADER_BYTES + length;
            if kind != FRAME_HEADERS && kind != FRAME_CONTINUATION && self.block.is_none() {
                // Not part of a header block: passed on whole (frames are at most
                // 16 KiB, hyper's SETTINGS_MAX_FRAME_SIZE).
                if self.pending.len() < whole {
                    return;
                }
                let frame = self.pending.split_to(whole);
                self.out.extend_from_slice(&frame);
                continue;
            }
            if self.pending.len() < whole {
                return;
            }
            let frame = self.pending.split_to(whole);
            if !self.take_header_frame(frame, kind, flags, stream_id) {
                self.pass_through();
                return;
            }
        }
    }

    /// Adds a HEADERS or CONTINUATION frame (or, inside a block, any frame: a protocol
    /// error hyper will report) to the current block; false when the block cannot be
    /// filtered and the connection should pass through.
    fn take_header_frame(&mut self, frame: BytesMut, kind: u8, flags: u8, stream_id: u32) -> bool {
        let payload = &frame[FRAME_HEADER_BYTES..];
        match (kind, self.block.as_mut()) {
            (FRAME_HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0;
                if flags & FLAG_PADDED != 0 {
                    let Some((&p, rest)) = body.split_first() else {
                        return false;
                    };
                    pad = usize::from(p);
                    body = rest;
                }
                let mut priority = None;
                if flags & FLAG_PRIORITY != 0 {
                    if body.len() < 5 {
                        return false;
                    }
                    let mut fields = [0u8; 5];
                    fields.copy_from_slice(&body[..5]);
                    priority = Some(fields);
                    body = &body[5..];
                }
                if pad > body.len() {
                    return false;
                }
                let fragment = BytesMut::from(&body[..body.len() - pad]);
                self.block = Some(Block {
                    raw: frame,
                    fragment,
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                });
            }
            (FRAME_CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
            }
            _ => return false,
        }
        let block = self.block.as_ref().expect("a block");
        if block.raw.len() > HEADER_BLOCK_BYTES_MAX {
            return false;
        }
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.block.take().expect("a block");
            match rewrite_authority(&block.fragment) {
                Some(fragment) => self.emit(&block, &fragment),
                None => self.out.extend_from_slice(&block.raw),
            }
        }
        true
    }

    /// Writes `fragment` as the block's HEADERS frame and as many CONTINUATION frames
    /// as it needs.
    fn emit(&mut self, block: &Block, fragment: &[u8]) {
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first = fragment.len().min(FRAME_PAYLOAD_MAX - priority.len());
        let (head, mut rest) = fragment.split_at(first);
        let mut flags = if block.end_stream { FLAG_END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        put_frame_header(
            &mut self.out,
            priority.len() + head.len(),
            FRAME_HEADERS,
            flags,
            block.stream_id,
        );
        self.out.extend_from_slice(priority);
        self.out.extend_from_slice(head);
        while !rest.is_empty() {
            let (part, after) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
            let flags = if after.is_empty() {
                FLAG_END_HEADERS
            } else {
                0
            };
            put_frame_header(
                &mut self.out,
                part.len(),
                FRAME_CONTINUATION,
                flags,
                block.stream_id,
            );
            self.out.extend_from_slice(part);
            rest = after;
        }
    }
}

fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_uint(length as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1) at the start of `src`,
/// which is advanced past it.
fn read_integer(src: &mut &[u8], prefix: u8) -> Option<u64> {
    let mask = ((1u16 << prefix) - 1) as u8;
    let first = src.first()? & mask;
    src.advance(1);
    if first < mask {
        return Some(u64::from(first));
    }
    let mut value = u64::from(mask);
    let mut shift = 0;
    loop {
        let byte = *src.first()?;
        src.advance(1);
        if shift > 56 {
            return None;
        }
        value += u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
}

fn write_integer(out: &mut BytesMut, first_bits: u8, prefix: u8, value: u64) {
    let mask = ((1u16 << prefix) - 1) as u8;
    if value < u64::from(mask) {
        out.put_u8(first_bits | value as u8);
        return;
    }
    out.put_u8(first_bits | mask);
    let mut rest = value - u64::from(mask);
    while rest >= 0x80 {
        out.put_u8((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// An HPACK string literal at the start of `src` (advanced past it): its bytes as sent
/// and whether they are Huffman-coded.
fn read_string<'a>(src: &mut &'a [u8]) -> Option<(&'a [u8], bool)> {
    let huffman = src.first()? & 0x80 != 0;
    let length = usize::try_from(read_integer(src, 7)?).ok()?;
    if src.len() < length {
        return None;
    }
    let (raw, rest) = src.split_at(length);
    *src = rest;
    Some((raw, huffman))
}

thread_local! {
    /// Building a Huffman decoder costs far more than decoding a header value with it.
    static HUFFMAN: std::cell::RefCell<hpack::huffman::HuffmanDecoder> =
        std::cell::RefCell::new(hpack::huffman::HuffmanDecoder::new());
}

/// The text of a string literal.
fn decode_string(raw: &[u8], huffman: bool) -> Option<Vec<u8>> {
    if huffman {
        HUFFMAN.with(|decoder| decoder.borrow_mut().decode(raw).ok())
    } else {
        Some(raw.to_vec())
    }
}

/// `host:port` of an authority that is a URL (`scheme://host:port[/...]`).
fn authority_of_url(value: &[u8]) -> Option<&[u8]> {
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The header block with each `:authority` that is a URL replaced by its host and port;
/// `None` when there is none (or the block does not parse: hyper reports that).
pub fn rewrite_authority(fragment: &[u8]) -> Option<BytesMut> {
    let mut src = fragment;
    let mut out = BytesMut::with_capacity(fragment.len());
    let mut changed = false;
    while let Some(&first) = src.first() {
        let start = src;
        // The representation's name-index prefix, or `None` for fields that carry no
        // literal value (indexed fields, table size updates).
        let prefix = if first & 0x80 != 0 {
            read_integer(&mut src, 7)?;
            None
        } else if first & 0x40 != 0 {
            Some(6)
        } else if first & 0x20 != 0 {
            read_integer(&mut src, 5)?;
            None
        } else {
            Some(4)
        };
        let Some(prefix) = prefix else {
            out.extend_from_slice(&start[..start.len() - src.len()]);
            continue;
        };
        let index = read_integer(&mut src, prefix)?;
        let is_authority = if index == 0 {
            // A literal name; ":authority" takes 10 bytes raw and fewer Huffman-coded,
            // so longer names need no decoding.
            let (raw, huffman) = read_string(&mut src)?;
            raw.len() <= AUTHORITY.len()
                && decode_string(raw, huffman).is_some_and(|name| name == AUTHORITY)
        } else {
            index == STATIC_AUTHORITY
        };
        let name_part = &start[..start.len() - src.len()];
        let value_start = src;
        let (raw, huffman) = read_string(&mut src)?;
        // Only an authority's value is decoded (most values are Huffman-coded).
        let value = if is_authority {
            decode_string(raw, huffman)?
        } else {
            Vec::new()
        };
        match authority_of_url(&value).filter(|_| is_authority) {
            Some(host) => {
                out.extend_from_slice(name_part);
                write_integer(&mut out, 0, 7, host.len() as u64);
                out.extend_from_slice(host);
                changed = true;
            }
            None => {
                out.extend_from_slice(name_part);
                out.extend_from_slice(&value_start[..value_start.len() - src.len()]);
            }
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(encoder: &mut hpack::Encoder, headers: &[(&str, &str)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn decode(decoder: &mut hpack::Decoder, block: &[u8]) -> Vec<(String, String)> {
        decoder
            .decode(block)
            .expect("decodes")
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n).expect("utf8"),
                    String::from_utf8(v).expect("utf8"),
                )
            })
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Splits a filtered connection's frames and returns the header blocks in order.
    fn header_blocks(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut blocks = Vec::new();
        let mut current = Vec::new();
        while !bytes.is_empty() {
            let length =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let (kind, flags) = (bytes[3], bytes[4]);
            let mut payload = &bytes[9..9 + length];
            if kind == FRAME_HEADERS {
                if flags & FLAG_PADDED != 0 {
                    let pad = usize::from(payload[0]);
                    payload = &payload[1..payload.len() - pad];
                }
                if flags & FLAG_PRIORITY != 0 {
                    payload = &payload[5..];
                }
            }
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                current.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(std::mem::take(&mut current));
                }
            }
            bytes = &bytes[9 + length..];
        }
        blocks
    }

    fn request(authority: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", "/etcdserverpb.Maintenance/Status".into()),
            (":authority", authority.into()),
            ("content-type", "application/grpc".into()),
            ("te", "trailers".into()),
        ]
    }

    fn run(filter: &mut AuthorityFilter, input: &[u8], step: usize) -> Vec<u8> {
        for chunk in input.chunks(step) {
            filter.feed(chunk);
        }
        filter.output().split().to_vec()
    }

    #[test]
    fn a_url_authority_becomes_host_and_port_and_indexes_stay_in_step() {
        let mut client = hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for i in 0..3 {
            let headers = request("http://127.0.0.1:2379");
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let block = encode(&mut client, &pairs);
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1 + 2 * i, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, 1 + 2 * i, b"\0\0\0\0\0"));
        }
        for step in [1, 7, 4096] {
            let mut filter = AuthorityFilter::new();
            let filtered = run(&mut filter, &input, step);
            let mut server = hpack::Decoder::new();
            let blocks = header_blocks(&filtered);
            assert_eq!(blocks.len(), 3);
            for block in blocks {
                let headers = decode(&mut server, &block);
                assert!(
                    headers.contains(&(":authority".into(), "127.0.0.1:2379".into())),
                    "{headers:?}"
                );
                assert!(
                    headers.contains(&(":path".into(), "/etcdserverpb.Maintenance/Status".into()))
                );
            }
        }
    }

    #[test]
    fn other_connections_pass_unchanged() {
        let mut client = hpack::Encoder::new();
        let headers = request("127.0.0.1:2379");
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &encode(&mut client, &pairs),
        ));
        input.extend(frame(0x0, 0, 1, &[7; 100]));
        let mut filter = AuthorityFilter::new();
        assert_eq!(run(&mut filter, &input, 3), input);

        let http1 = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n\r\n".to_vec();
        let mut filter = AuthorityFilter::new();
        assert_eq!(run(&mut filter, &http1, 5), http1);
        assert!(filter.is_passthrough());
    }

    #[test]
    fn blocks_over_continuation_frames_with_padding_and_priority() {
        let mut client = hpack::Encoder::new();
        let headers = request("https://member-1.example:2379/");
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let block = encode(&mut client, &pairs);
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            5,
            &payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let mut filter = AuthorityFilter::new();
        let filtered = run(&mut filter, &input, 2);
        let blocks = header_blocks(&filtered);
        let headers = decode(&mut hpack::Decoder::new(), &blocks[0]);
        assert!(headers.contains(&(":authority".into(), "member-1.example:2379".into())));
        // The priority survives.
        assert_eq!(filtered[PREFACE.len() + 4] & FLAG_PRIORITY, FLAG_PRIORITY);
    }

    #[test]
    fn integers_round_trip() {
        for prefix in 1..=8u8 {
            for value in [0u64, 1, 30, 31, 127, 128, 255, 1337, 1 << 20] {
                let mut out = BytesMut::new();
                write_integer(&mut out, 0, prefix, value);
                let mut src = &out[..];
                assert_eq!(read_integer(&mut src, prefix), Some(value));
                assert!(src.is_empty());
            }
        }
    }

    #[test]
    fn huffman_coded_values_are_read() {
        // RFC 7541 C.4.1: `:authority: www.example.com`, Huffman-coded, then the same
        // field as a URL in a raw literal without indexing.
        let mut block = vec![
            0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(rewrite_authority(&block), None);
        block.push(0x01);
        block.push(21);
        block.extend_from_slice(b"http://127.0.0.1:2379");
        let rewritten = rewrite_authority(&block).expect("rewritten");
        assert_eq!(&rewritten[..14], &block[..14]);
        assert_eq!(&rewritten[14..], b"\x01\x0e127.0.0.1:2379");
    }

    #[test]
    fn garbage_is_left_alone() {
        assert_eq!(rewrite_authority(&[0x41, 0xff, 0xff]), None);
        assert_eq!(rewrite_authority(&[]), None);
    }
}
