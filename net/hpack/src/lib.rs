//! HPACK (RFC 7541) for rivet's client HTTP/2 server (`rivet-net`, `net/src/h2`) and
//! rivet-bench's HTTP/2 client (`bench/src/h2c.rs`): a decoder with the dynamic table and
//! Huffman strings, and an encoder that indexes only the few fields every gRPC response
//! repeats (`content-type: application/grpc`, `grpc-status: 0`).
//!
//! A crate of its own so that rivet-bench decodes with the same fuzzed decoder without
//! depending on the server (glommio, QUIC, TLS…).

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};

/// The limits of this decoder, as `rivet_engine::limits` keeps the others.
pub mod limits {
    /// Huffman strings longer than this are not kept in a core's cache of decoded strings
    /// (clients repeat short ones: `:path`, metadata).
    pub const H2_HUFFMAN_SEEN_BYTES_MAX: usize = 256;
    /// The cache of decoded Huffman strings is emptied when it holds this many: at most
    /// 1024 × 256 B per core.
    pub const H2_HUFFMAN_SEEN_MAX: usize = 1024;
}

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// What an entry costs in a table beyond its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpackError {
    /// An integer longer than 32 bits or cut off.
    Integer,
    /// A string or field cut off by the end of the block.
    Truncated,
    /// An index beyond both tables (or 0).
    Index,
    /// A Huffman string that does not decode.
    Huffman,
    /// A table size update larger than the settings allow, or not at the block's start.
    SizeUpdate,
}

/// Huffman strings as sent → their text.
type HuffmanSeen = std::collections::HashMap<Box<[u8]>, Box<[u8]>>;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// Decodes header blocks; one per connection (the dynamic table is the connection's).
pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE this side announced: the bound of size updates.
    limit: usize,
}

thread_local! {
    /// Building a Huffman decoder costs far more than decoding a header value with it.
    static HUFFMAN: std::cell::RefCell<hpack::huffman::HuffmanDecoder> =
        std::cell::RefCell::new(hpack::huffman::HuffmanDecoder::new());
    /// Huffman strings decoded lately. The `hpack` crate decodes bit by bit (a fifth of a
    /// put's server CPU when a client sends its `:path` or metadata as Huffman literals
    /// without indexing), and clients send the same few strings again and again.
    static HUFFMAN_SEEN: std::cell::RefCell<HuffmanSeen> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    if raw.len() <= limits::H2_HUFFMAN_SEEN_BYTES_MAX {
        if let Some(text) = HUFFMAN_SEEN.with(|seen| seen.borrow().get(raw).map(|t| t.to_vec())) {
            return Ok(text);
        }
    }
    let text = HUFFMAN
        .with(|decoder| decoder.borrow_mut().decode(raw))
        .map_err(|_| HpackError::Huffman)?;
    if raw.len() <= limits::H2_HUFFMAN_SEEN_BYTES_MAX {
        HUFFMAN_SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if seen.len() >= limits::H2_HUFFMAN_SEEN_MAX {
                seen.clear();
            }
            seen.insert(raw.into(), text.clone().into());
        });
    }
    Ok(text)
}

fn read_integer(src: &mut &[u8], prefix_bits: u8) -> Result<usize, HpackError> {
    let (&first, rest) = src.split_first().ok_or(HpackError::Integer)?;
    *src = rest;
    let mask = ((1u16 << prefix_bits) - 1) as u8;
    let mut value = (first & mask) as u64;
    if value < mask as u64 {
        return Ok(value as usize);
    }
    let mut shift = 0u32;
    loop {
        let (&byte, rest) = src.split_first().ok_or(HpackError::Integer)?;
        *src = rest;
        value += ((byte & 0x7f) as u64) << shift;
        if value > u32::MAX as u64 {
            return Err(HpackError::Integer);
        }
        if byte & 0x80 == 0 {
            return Ok(value as usize);
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::Integer);
        }
    }
}

fn read_string(src: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman = src.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let length = read_integer(src, 7)?;
    if length > src.len() {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = src.split_at(length);
    *src = rest;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

impl Decoder {
    /// A decoder whose table may grow to `limit` bytes (the SETTINGS_HEADER_TABLE_SIZE
    /// this side announces; 4096 unless announced).
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.table.pop_back() {
                Some((name, value)) => self.size -= name.len() + value.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // An entry larger than the table empties it (RFC 7541 §4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.table.push_front((name.into(), value.into()));
        self.size += size;
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::Index),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(name, value)| (&name[..], &value[..]))
                .ok_or(HpackError::Index),
        }
    }

    /// Decodes one whole header block, calling `field` with each name and value in order.
    pub fn decode(
        &mut self,
        mut src: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut at_start = true;
        while let Some(&first) = src.first() {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = read_integer(&mut src, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                let index = read_integer(&mut src, 6)?;
                let name = match index {
                    0 => read_string(&mut src)?,
                    _ => self.entry(index)?.0.to_vec(),
                };
                let value = read_string(&mut src)?;
                field(&name, &value);
                self.insert(&name, &value);
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only at the start of a block.
                if !at_start {
                    return Err(HpackError::SizeUpdate);
                }
                let size = read_integer(&mut src, 5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdate);
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
                let index = read_integer(&mut src, 4)?;
                let name = match index {
                    0 => read_string(&mut src)?,
                    _ => self.entry(index)?.0.to_vec(),
                };
                let value = read_string(&mut src)?;
                field(&name, &value);
            }
            at_start = false;
        }
        Ok(())
    }

    /// The dynamic table's size in bytes, as RFC 7541 counts it.
    pub fn table_size(&self) -> usize {
        self.size
    }
}

fn write_integer(out: &mut BytesMut, first_bits: u8, prefix_bits: u8, value: usize) {
    let mask = ((1u16 << prefix_bits) - 1) as usize;
    if value < mask {
        out.put_u8(first_bits | value as u8);
        return;
    }
    out.put_u8(first_bits | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.put_u8((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

fn write_string(out: &mut BytesMut, text: &[u8]) {
    write_integer(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

/// Fields an encoder puts in the client's dynamic table: every gRPC response has them.
const INDEXED: [(&str, &str); 2] = [("content-type", "application/grpc"), ("grpc-status", "0")];

/// Encodes response header blocks. Literal fields go without indexing (names from the
/// static table where it has them), except [`INDEXED`]'s, which enter the peer's dynamic
/// table once and are sent as an index after.
pub struct Encoder {
    /// [`INDEXED`] positions in the peer's table, oldest first.
    entries: Vec<usize>,
    size: usize,
    /// The peer's SETTINGS_HEADER_TABLE_SIZE.
    max_size: usize,
    /// A size update owed at the start of the next block.
    update: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            entries: Vec::new(),
            size: 0,
            max_size: 4096,
            update: None,
        }
    }

    /// The peer announced SETTINGS_HEADER_TABLE_SIZE.
    pub fn set_max_size(&mut self, size: usize) {
        if size == self.max_size {
            return;
        }
        self.max_size = size;
        // Evict oldest first, as the peer's decoder will.
        while self.size > size {
            let evicted = self.entries.remove(0);
            let (name, value) = INDEXED[evicted];
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
        // The smallest size since the last block, then the new size (§4.2).
        self.update = Some(self.update.map_or(size, |u| u.min(size)));
    }

    /// Starts a header block in `out` (a pending table size update).
    pub fn begin(&mut self, out: &mut BytesMut) {
        if let Some(update) = self.update.take() {
            write_integer(out, 0x20, 5, update);
            if update != self.max_size {
                write_integer(out, 0x20, 5, self.max_size);
            }
        }
    }

    /// `:status`.
    pub fn status(&mut self, out: &mut BytesMut, code: u16) {
        let index = match code {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index != 0 {
            out.put_u8(0x80 | index);
            return;
        }
        write_integer(out, 0, 4, 8);
        let digits = [
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        write_string(out, &digits);
    }

    /// One field (a lowercase name).
    pub fn field(&mut self, out: &mut BytesMut, name: &[u8], value: &[u8]) {
        if let Some(which) = INDEXED
            .iter()
            .position(|(n, v)| n.as_bytes() == name && v.as_bytes() == value)
        {
            if let Some(position) = self.entries.iter().position(|e| *e == which) {
                // Newest is 62.
                let index = 62 + (self.entries.len() - 1 - position);
                write_integer(out, 0x80, 7, index);
                return;
            }
            let size = name.len() + value.len() + ENTRY_OVERHEAD;
            if self.size + size <= self.max_size {
                self.entries.push(which);
                self.size += size;
                write_field(out, 0x40, 6, name, value);
                return;
            }
        }
        literal(out, name, value);
    }
}

/// A literal field without indexing (§6.2.2), its name indexed in the static table when it
/// is there: no Huffman, no table state for either side.
pub fn literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    write_field(out, 0, 4, name, value);
}

/// A literal field with the representation's `pattern` and prefix `bits`: the name as its
/// static table index, or spelled out when it has none, then the value.
fn write_field(out: &mut BytesMut, pattern: u8, bits: u8, name: &[u8], value: &[u8]) {
    let index = static_name(name);
    write_integer(out, pattern, bits, index);
    if index == 0 {
        write_string(out, name);
    }
    write_string(out, value);
}

/// The static table's index of a name (0: none).
fn static_name(name: &[u8]) -> usize {
    STATIC
        .iter()
        .position(|(n, _)| n.as_bytes() == name)
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        decoder
            .decode(block, |n, v| {
                fields.push((
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ))
            })
            .unwrap();
        fields
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.1: integer representation examples.
    #[test]
    fn integers() {
        let mut out = BytesMut::new();
        write_integer(&mut out, 0, 5, 10);
        assert_eq!(&out[..], &[0b01010]);
        out.clear();
        write_integer(&mut out, 0, 5, 1337);
        assert_eq!(&out[..], &[31, 154, 10]);
        let mut src: &[u8] = &[31, 154, 10];
        assert_eq!(read_integer(&mut src, 5), Ok(1337));
        let mut src: &[u8] = &[42];
        assert_eq!(read_integer(&mut src, 8), Ok(42));
        let mut src: &[u8] = &[31, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_integer(&mut src, 5), Err(HpackError::Integer));
        let mut src: &[u8] = &[31, 0xff];
        assert_eq!(read_integer(&mut src, 5), Err(HpackError::Integer));
    }

    /// RFC 7541 C.3: requests without Huffman coding, one connection's decoder.
    #[test]
    fn requests_without_huffman() {
        let mut decoder = Decoder::new(4096);
        let first = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        assert_eq!(
            decode(&mut decoder, &first),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(decoder.table_size(), 57);
        let second = hex("8286 84be 5808 6e6f 2d63 6163 6865");
        assert_eq!(
            decode(&mut decoder, &second),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(decoder.table_size(), 110);
        let third = hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
        assert_eq!(
            decode(&mut decoder, &third),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(decoder.table_size(), 164);
    }

    /// RFC 7541 C.4: the same requests with Huffman coding.
    #[test]
    fn requests_with_huffman() {
        let mut decoder = Decoder::new(4096);
        let first = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        assert_eq!(
            decode(&mut decoder, &first)[3],
            (":authority".to_string(), "www.example.com".to_string())
        );
        let second = hex("8286 84be 5886 a8eb 1064 9cbf");
        assert_eq!(
            decode(&mut decoder, &second)[4],
            ("cache-control".to_string(), "no-cache".to_string())
        );
        let third = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        assert_eq!(
            decode(&mut decoder, &third)[4],
            ("custom-key".to_string(), "custom-value".to_string())
        );
        assert_eq!(decoder.table_size(), 164);
    }

    /// RFC 7541 C.5: responses with eviction from a 256-byte table.
    #[test]
    fn responses_with_eviction() {
        let mut decoder = Decoder::new(256);
        let first = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
        );
        assert_eq!(decode(&mut decoder, &first).len(), 4);
        assert_eq!(decoder.table_size(), 222);
        let second = hex("4803 3330 37c1 c0bf");
        assert_eq!(
            decode(&mut decoder, &second)[0],
            (":status".to_string(), "307".to_string())
        );
        assert_eq!(decoder.table_size(), 222);
    }

    #[test]
    fn bad_blocks_are_errors() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decoder.decode(&[0x80], |_, _| {}), Err(HpackError::Index));
        assert_eq!(decoder.decode(&[0xbe], |_, _| {}), Err(HpackError::Index));
        assert_eq!(
            decoder.decode(&[0x40, 0x05, b'a'], |_, _| {}),
            Err(HpackError::Truncated)
        );
        // A size update after a field, and one over the limit.
        assert_eq!(
            decoder.decode(&[0x82, 0x20], |_, _| {}),
            Err(HpackError::SizeUpdate)
        );
        assert_eq!(
            decoder.decode(&[0x3f, 0xe2, 0x1f], |_, _| {}),
            Err(HpackError::SizeUpdate)
        );
    }

    /// What the encoder writes, a decoder reads back, indexed fields included.
    #[test]
    fn encoder_round_trip() {
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new(4096);
        for round in 0..3 {
            let mut out = BytesMut::new();
            encoder.begin(&mut out);
            encoder.status(&mut out, if round == 1 { 503 } else { 200 });
            encoder.field(&mut out, b"content-type", b"application/grpc");
            encoder.field(&mut out, b"grpc-status", b"0");
            encoder.field(&mut out, b"grpc-message", b"a%20b");
            let fields = decode(&mut decoder, &out);
            assert_eq!(
                fields,
                pairs(&[
                    (":status", if round == 1 { "503" } else { "200" }),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "0"),
                    ("grpc-message", "a%20b"),
                ])
            );
            if round == 2 {
                // `:status`, then both indexed fields one byte each, then the literal.
                assert_eq!(out.len(), 3 + 1 + 1 + 12 + 1 + 5);
            }
        }
        // The peer shrinks its table to nothing: an update, then only literals.
        encoder.set_max_size(0);
        let mut out = BytesMut::new();
        encoder.begin(&mut out);
        encoder.field(&mut out, b"grpc-status", b"0");
        assert_eq!(decode(&mut decoder, &out), pairs(&[("grpc-status", "0")]));
        assert_eq!(decoder.table_size(), 0);
    }
}
