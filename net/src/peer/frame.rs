//! Wire format of the peer transport. Pure code: no I/O, so the decoder can be fuzzed
//! (`fuzz/fuzz_targets/peer_frame.rs`) and property-tested.
//!
//! Every QUIC stream between two members carries a sequence of frames:
//!
//! ```text
//! frame = kind: u8 | length: u32 little-endian | body: length bytes
//!
//! kind 1  HELLO           body (40 bytes) = magic "RVTP" | version: u16 | reserved: u16 = 0
//!                                          | cluster_id: u64 | from: u64 | to: u64
//!                                          | incarnation: u64          (all little-endian)
//! kind 2  MESSAGE         body = one raft message, opaque (≤ MESSAGE_BYTES_MAX)
//! kind 3  SNAPSHOT_BEGIN  body = snapshot metadata, opaque (≤ SNAPSHOT_METADATA_BYTES_MAX)
//! kind 4  SNAPSHOT_CHUNK  body = snapshot data (≤ SNAPSHOT_CHUNK_BYTES_MAX)
//! kind 5  SNAPSHOT_END    body (12 bytes) = data_bytes: u64 | crc32c of the data: u32
//! kind 6  HASHKV_REQUEST  body (8 bytes)  = revision: i64 (0: the newest)
//! kind 7  HASHKV_ANSWER   body (29 bytes) = outcome: u8 | member_id: u64 | revision: i64
//!                                          | compact_revision: i64 | hash: u32
//!         outcome 0 answered, 1 compacted (etcd's ErrCompacted), 2 future revision
//!         (ErrFutureRev), 3 unavailable (any other error); the numbers are 0 unless 0.
//! ```
//!
//! Streams:
//! - The **link stream** is the one bidirectional stream of a connection, opened by the
//!   member that dialed. The dialer sends HELLO, the acceptor answers with its own HELLO
//!   (or closes the connection, e.g. on a cluster ID mismatch), then both sides send
//!   MESSAGE frames on it for the life of the connection.
//! - A **snapshot stream** is a unidirectional stream opened by the sender of one
//!   snapshot: SNAPSHOT_BEGIN, any number of SNAPSHOT_CHUNK, SNAPSHOT_END, then the end of
//!   the stream. It never delays the link stream, which has the higher priority.
//! - A **HashKV stream** is a bidirectional stream opened by a member that checks the
//!   others for corruption (etcd's `/members/hashkv` on its peer URL): one
//!   HASHKV_REQUEST, then the end of the stream; the other member answers one
//!   HASHKV_ANSWER and ends its side.
//!
//! The decoder checks each frame's length against its kind's limit *before* waiting for
//! the body, so a peer cannot make us buffer more than one frame's limit per stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::limits::{MESSAGE_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_METADATA_BYTES_MAX};

/// Bytes before every frame's body: kind and length.
pub const FRAME_HEADER_BYTES: usize = 1 + 4;
/// The four bytes that open every HELLO, so that a stray datagram or another protocol
/// is told apart from a rivet peer at once.
pub const HELLO_MAGIC: [u8; 4] = *b"RVTP";
/// Version of this wire format. A change that an older member cannot read bumps it.
pub const PROTOCOL_VERSION: u16 = 1;
/// Length of a HELLO body.
pub const HELLO_BYTES: usize = 4 + 2 + 2 + 8 + 8 + 8 + 8;
/// Length of a SNAPSHOT_END body.
pub const SNAPSHOT_END_BYTES: usize = 8 + 4;
/// Length of a HASHKV_REQUEST body.
pub const HASHKV_REQUEST_BYTES: usize = 8;
/// Length of a HASHKV_ANSWER body.
pub const HASHKV_ANSWER_BYTES: usize = 1 + 8 + 8 + 8 + 4;

const KIND_HELLO: u8 = 1;
const KIND_MESSAGE: u8 = 2;
const KIND_SNAPSHOT_BEGIN: u8 = 3;
const KIND_SNAPSHOT_CHUNK: u8 = 4;
const KIND_SNAPSHOT_END: u8 = 5;
const KIND_HASHKV_REQUEST: u8 = 6;
const KIND_HASHKV_ANSWER: u8 = 7;

/// The first frame on a link stream, in both directions: who is speaking, to whom, and in
/// which cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    /// Member ID of the sender of this HELLO.
    pub from: u64,
    /// Member ID the sender believes it is talking to.
    pub to: u64,
    /// Random number drawn when the sender's transport started. A connection from the
    /// same member with another incarnation means the member restarted, so its new
    /// connection replaces the old one at once instead of waiting for the idle timeout.
    pub incarnation: u64,
}

/// The last frame of a snapshot stream: how much data was sent and its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEnd {
    pub data_bytes: u64,
    pub crc32c: u32,
}

/// How a member answered a HashKV request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKvAnswer {
    /// The hash of every version up to `revision`, and the member's compaction revision.
    Answered {
        member_id: u64,
        revision: i64,
        compact_revision: i64,
        hash: u32,
    },
    /// The revision asked for is compacted on that member (etcd's `ErrCompacted`).
    Compacted,
    /// The revision asked for is newer than the member's (etcd's `ErrFutureRev`).
    FutureRevision,
    /// The member could not compute the hash (stopping, no leader, damaged data).
    Unavailable,
}

const OUTCOME_ANSWERED: u8 = 0;
const OUTCOME_COMPACTED: u8 = 1;
const OUTCOME_FUTURE_REVISION: u8 = 2;
const OUTCOME_UNAVAILABLE: u8 = 3;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Message(Bytes),
    SnapshotBegin(Bytes),
    SnapshotChunk(Bytes),
    SnapshotEnd(SnapshotEnd),
    /// A HashKV request at a revision (0: the newest).
    HashKvRequest(i64),
    HashKvAnswer(HashKvAnswer),
}

/// Bytes that are not a valid frame. The stream they came from is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown peer frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("peer frame of kind {kind} has {length} bytes, more than its limit of {max}")]
    TooLong { kind: u8, length: u32, max: usize },
    #[error("peer frame of kind {kind} has {length} bytes, it must have {expected}")]
    WrongLength {
        kind: u8,
        length: u32,
        expected: usize,
    },
    #[error("peer HELLO starts with {magic:02x?}, not \"RVTP\": not a rivet peer")]
    BadMagic { magic: [u8; 4] },
    #[error("peer speaks protocol version {version}, this member speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion { version: u16 },
    #[error("peer HELLO has reserved bits {reserved:#x} set")]
    ReservedNotZero { reserved: u16 },
    #[error("peer HashKV request at negative revision {revision}")]
    NegativeRevision { revision: i64 },
    #[error("peer HashKV answer has unknown outcome {outcome}")]
    UnknownOutcome { outcome: u8 },
    #[error("peer HashKV answer is inconsistent: {detail}")]
    BadHashKvAnswer { detail: &'static str },
}

/// Takes one frame off the front of `buffer`. Returns `Ok(None)` when `buffer` holds only
/// the beginning of a frame (nothing is consumed then), and an error as soon as the
/// header shows the bytes cannot be a valid frame.
pub fn decode_frame(buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buffer.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    let kind = header[0];
    let length = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    check_length(kind, length)?;
    let frame_bytes = FRAME_HEADER_BYTES + length as usize;
    if buffer.len() < frame_bytes {
        // Reserve room for the rest of the frame now: the length is within its limit.
        buffer.reserve(frame_bytes - buffer.len());
        return Ok(None);
    }
    buffer.advance(FRAME_HEADER_BYTES);
    let mut body = buffer.split_to(length as usize);
    let frame = match kind {
        KIND_HELLO => {
            let mut magic = [0; 4];
            body.copy_to_slice(&mut magic);
            if magic != HELLO_MAGIC {
                return Err(FrameError::BadMagic { magic });
            }
            let version = body.get_u16_le();
            if version != PROTOCOL_VERSION {
                return Err(FrameError::UnsupportedVersion { version });
            }
            let reserved = body.get_u16_le();
            if reserved != 0 {
                return Err(FrameError::ReservedNotZero { reserved });
            }
            Frame::Hello(Hello {
                cluster_id: body.get_u64_le(),
                from: body.get_u64_le(),
                to: body.get_u64_le(),
                incarnation: body.get_u64_le(),
            })
        }
        KIND_MESSAGE => Frame::Message(body.freeze()),
        KIND_SNAPSHOT_BEGIN => Frame::SnapshotBegin(body.freeze()),
        KIND_SNAPSHOT_CHUNK => Frame::SnapshotChunk(body.freeze()),
        KIND_SNAPSHOT_END => Frame::SnapshotEnd(SnapshotEnd {
            data_bytes: body.get_u64_le(),
            crc32c: body.get_u32_le(),
        }),
        KIND_HASHKV_REQUEST => {
            let revision = body.get_i64_le();
            if revision < 0 {
                return Err(FrameError::NegativeRevision { revision });
            }
            Frame::HashKvRequest(revision)
        }
        KIND_HASHKV_ANSWER => Frame::HashKvAnswer(decode_hash_kv_answer(&mut body)?),
        _ => return Err(FrameError::UnknownKind { kind }),
    };
    Ok(Some(frame))
}

/// A HASHKV_ANSWER body (its length is checked): the outcome must be known, the numbers
/// of an answer consistent (a member, no negative revision, the compaction not past it),
/// and every number zero for the other outcomes.
fn decode_hash_kv_answer(body: &mut BytesMut) -> Result<HashKvAnswer, FrameError> {
    let outcome = body.get_u8();
    let member_id = body.get_u64_le();
    let revision = body.get_i64_le();
    let compact_revision = body.get_i64_le();
    let hash = body.get_u32_le();
    let bad = |detail| Err(FrameError::BadHashKvAnswer { detail });
    let zeros = member_id == 0 && revision == 0 && compact_revision == 0 && hash == 0;
    match outcome {
        OUTCOME_ANSWERED => {
            if member_id == 0 {
                return bad("member ID 0");
            }
            if revision < 0 {
                return bad("negative revision");
            }
            if compact_revision > revision {
                return bad("compaction revision past the revision");
            }
            Ok(HashKvAnswer::Answered {
                member_id,
                revision,
                compact_revision,
                hash,
            })
        }
        OUTCOME_COMPACTED | OUTCOME_FUTURE_REVISION | OUTCOME_UNAVAILABLE if !zeros => {
            bad("numbers in an answer without a hash")
        }
        OUTCOME_COMPACTED => Ok(HashKvAnswer::Compacted),
        OUTCOME_FUTURE_REVISION => Ok(HashKvAnswer::FutureRevision),
        OUTCOME_UNAVAILABLE => Ok(HashKvAnswer::Unavailable),
        outcome => Err(FrameError::UnknownOutcome { outcome }),
    }
}

/// Whether `length` is allowed for frames of `kind`.
fn check_length(kind: u8, length: u32) -> Result<(), FrameError> {
    let exact = |expected: usize| {
        if length as usize == expected {
            Ok(())
        } else {
            Err(FrameError::WrongLength {
                kind,
                length,
                expected,
            })
        }
    };
    let at_most = |max: usize| {
        if length as usize <= max {
            Ok(())
        } else {
            Err(FrameError::TooLong { kind, length, max })
        }
    };
    match kind {
        KIND_HELLO => exact(HELLO_BYTES),
        KIND_MESSAGE => at_most(MESSAGE_BYTES_MAX),
        KIND_SNAPSHOT_BEGIN => at_most(SNAPSHOT_METADATA_BYTES_MAX),
        KIND_SNAPSHOT_CHUNK => at_most(SNAPSHOT_CHUNK_BYTES_MAX),
        KIND_SNAPSHOT_END => exact(SNAPSHOT_END_BYTES),
        KIND_HASHKV_REQUEST => exact(HASHKV_REQUEST_BYTES),
        KIND_HASHKV_ANSWER => exact(HASHKV_ANSWER_BYTES),
        _ => Err(FrameError::UnknownKind { kind }),
    }
}

fn put_header(buffer: &mut BytesMut, kind: u8, length: usize) {
    let length = u32::try_from(length).expect("frame lengths are checked against u32 limits");
    buffer.put_u8(kind);
    buffer.put_u32_le(length);
}

/// Appends a HELLO frame.
pub fn encode_hello(buffer: &mut BytesMut, hello: &Hello) {
    put_header(buffer, KIND_HELLO, HELLO_BYTES);
    buffer.put_slice(&HELLO_MAGIC);
    buffer.put_u16_le(PROTOCOL_VERSION);
    buffer.put_u16_le(0);
    buffer.put_u64_le(hello.cluster_id);
    buffer.put_u64_le(hello.from);
    buffer.put_u64_le(hello.to);
    buffer.put_u64_le(hello.incarnation);
}

/// Appends the header of a MESSAGE frame whose body (`length` bytes) follows.
pub fn encode_message_header(buffer: &mut BytesMut, length: usize) {
    assert!(length <= MESSAGE_BYTES_MAX, "message of {length} bytes");
    put_header(buffer, KIND_MESSAGE, length);
}

/// Appends a whole MESSAGE frame.
pub fn encode_message(buffer: &mut BytesMut, message: &[u8]) {
    encode_message_header(buffer, message.len());
    buffer.put_slice(message);
}

/// Appends a SNAPSHOT_BEGIN frame.
pub fn encode_snapshot_begin(buffer: &mut BytesMut, metadata: &[u8]) {
    assert!(
        metadata.len() <= SNAPSHOT_METADATA_BYTES_MAX,
        "snapshot metadata of {} bytes",
        metadata.len()
    );
    put_header(buffer, KIND_SNAPSHOT_BEGIN, metadata.len());
    buffer.put_slice(metadata);
}

/// Appends the header of a SNAPSHOT_CHUNK frame whose body (`length` bytes) follows.
pub fn encode_snapshot_chunk_header(buffer: &mut BytesMut, length: usize) {
    assert!(
        length <= SNAPSHOT_CHUNK_BYTES_MAX,
        "snapshot chunk of {length} bytes"
    );
    put_header(buffer, KIND_SNAPSHOT_CHUNK, length);
}

/// Appends a SNAPSHOT_END frame.
pub fn encode_snapshot_end(buffer: &mut BytesMut, end: &SnapshotEnd) {
    put_header(buffer, KIND_SNAPSHOT_END, SNAPSHOT_END_BYTES);
    buffer.put_u64_le(end.data_bytes);
    buffer.put_u32_le(end.crc32c);
}

/// Appends a HASHKV_REQUEST frame.
pub fn encode_hash_kv_request(buffer: &mut BytesMut, revision: i64) {
    put_header(buffer, KIND_HASHKV_REQUEST, HASHKV_REQUEST_BYTES);
    buffer.put_i64_le(revision);
}

/// Appends a HASHKV_ANSWER frame.
pub fn encode_hash_kv_answer(buffer: &mut BytesMut, answer: &HashKvAnswer) {
    put_header(buffer, KIND_HASHKV_ANSWER, HASHKV_ANSWER_BYTES);
    let (outcome, member_id, revision, compact_revision, hash) = match *answer {
        HashKvAnswer::Answered {
            member_id,
            revision,
            compact_revision,
            hash,
        } => (
            OUTCOME_ANSWERED,
            member_id,
            revision,
            compact_revision,
            hash,
        ),
        HashKvAnswer::Compacted => (OUTCOME_COMPACTED, 0, 0, 0, 0),
        HashKvAnswer::FutureRevision => (OUTCOME_FUTURE_REVISION, 0, 0, 0, 0),
        HashKvAnswer::Unavailable => (OUTCOME_UNAVAILABLE, 0, 0, 0, 0),
    };
    buffer.put_u8(outcome);
    buffer.put_u64_le(member_id);
    buffer.put_i64_le(revision);
    buffer.put_i64_le(compact_revision);
    buffer.put_u32_le(hash);
}

/// Appends any frame; the inverse of [`decode_frame`].
pub fn encode_frame(buffer: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Hello(hello) => encode_hello(buffer, hello),
        Frame::Message(message) => encode_message(buffer, message),
        Frame::SnapshotBegin(metadata) => encode_snapshot_begin(buffer, metadata),
        Frame::SnapshotChunk(data) => {
            encode_snapshot_chunk_header(buffer, data.len());
            buffer.put_slice(data);
        }
        Frame::SnapshotEnd(end) => encode_snapshot_end(buffer, end),
        Frame::HashKvRequest(revision) => encode_hash_kv_request(buffer, *revision),
        Frame::HashKvAnswer(answer) => encode_hash_kv_answer(buffer, answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> impl Strategy<Value = Frame> {
        let bytes =
            |max: usize| proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from);
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(cluster_id, from, to, incarnation)| Frame::Hello(Hello {
                    cluster_id,
                    from,
                    to,
                    incarnation
                })
            ),
            bytes(600).prop_map(Frame::Message),
            bytes(100).prop_map(Frame::SnapshotBegin),
            bytes(600).prop_map(Frame::SnapshotChunk),
            (any::<u64>(), any::<u32>()).prop_map(|(data_bytes, crc32c)| Frame::SnapshotEnd(
                SnapshotEnd { data_bytes, crc32c }
            )),
            (0..i64::MAX).prop_map(Frame::HashKvRequest),
            (1..u64::MAX, 0..i64::MAX, any::<u32>()).prop_flat_map(
                |(member_id, revision, hash)| {
                    (0..=revision).prop_map(move |compact_revision| {
                        Frame::HashKvAnswer(HashKvAnswer::Answered {
                            member_id,
                            revision,
                            compact_revision,
                            hash,
                        })
                    })
                }
            ),
            prop_oneof![
                Just(HashKvAnswer::Compacted),
                Just(HashKvAnswer::FutureRevision),
                Just(HashKvAnswer::Unavailable),
            ]
            .prop_map(Frame::HashKvAnswer),
        ]
    }

    /// Decodes everything in `input`, as a reader would, feeding it in pieces of `step`.
    fn decode_all(input: &[u8], step: usize) -> (Vec<Frame>, Option<FrameError>, usize) {
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(step.max(1)) {
            buffer.extend_from_slice(piece);
            loop {
                let before = buffer.len();
                match decode_frame(&mut buffer) {
                    Ok(Some(frame)) => {
                        consumed += before - buffer.len();
                        frames.push(frame);
                    }
                    Ok(None) => {
                        assert_eq!(buffer.len(), before, "an incomplete frame consumed bytes");
                        break;
                    }
                    Err(error) => return (frames, Some(error), consumed),
                }
            }
        }
        (frames, None, consumed)
    }

    proptest! {
        /// Frames survive encoding and decoding, whatever the read sizes.
        #[test]
        fn round_trip(frames in proptest::collection::vec(frames(), 0..8), step in 1usize..2000) {
            let mut encoded = BytesMut::new();
            for frame in &frames {
                encode_frame(&mut encoded, frame);
            }
            let (decoded, error, consumed) = decode_all(&encoded, step);
            prop_assert_eq!(error, None);
            prop_assert_eq!(consumed, encoded.len());
            prop_assert_eq!(decoded, frames);
        }

        /// Arbitrary bytes never panic the decoder, and whatever it accepts re-encodes to
        /// exactly the bytes it consumed.
        #[test]
        fn arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..4096), step in 1usize..5000) {
            let (frames, _error, consumed) = decode_all(&input, step);
            let mut encoded = BytesMut::new();
            for frame in &frames {
                encode_frame(&mut encoded, frame);
            }
            prop_assert_eq!(&encoded[..], &input[..consumed]);
        }

        /// Arbitrary bytes behind a valid header exercise the body decoders, which random
        /// headers rarely reach.
        #[test]
        fn arbitrary_bodies(kind in 0u8..7, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = BytesMut::new();
            input.put_u8(kind);
            input.put_u32_le(body.len() as u32);
            input.put_slice(&body);
            let (frames, _error, consumed) = decode_all(&input, input.len());
            let mut encoded = BytesMut::new();
            for frame in &frames {
                encode_frame(&mut encoded, frame);
            }
            prop_assert_eq!(&encoded[..], &input[..consumed]);
        }
    }

    #[test]
    fn limits_are_checked_before_the_body_arrives() {
        let mut buffer = BytesMut::new();
        buffer.put_u8(KIND_MESSAGE);
        buffer.put_u32_le(MESSAGE_BYTES_MAX as u32 + 1);
        assert_eq!(
            decode_frame(&mut buffer),
            Err(FrameError::TooLong {
                kind: KIND_MESSAGE,
                length: MESSAGE_BYTES_MAX as u32 + 1,
                max: MESSAGE_BYTES_MAX
            })
        );
        let mut buffer = BytesMut::from(&[9u8, 0, 0, 0, 0][..]);
        assert_eq!(
            decode_frame(&mut buffer),
            Err(FrameError::UnknownKind { kind: 9 })
        );
    }

    #[test]
    fn hello_checks_magic_and_version() {
        let hello = Hello {
            cluster_id: 1,
            from: 2,
            to: 3,
            incarnation: 4,
        };
        let mut buffer = BytesMut::new();
        encode_hello(&mut buffer, &hello);
        let mut wrong_version = buffer.clone();
        wrong_version[FRAME_HEADER_BYTES + 4] = 9;
        assert_eq!(
            decode_frame(&mut wrong_version),
            Err(FrameError::UnsupportedVersion { version: 9 })
        );
        let mut wrong_magic = buffer.clone();
        wrong_magic[FRAME_HEADER_BYTES] = b'X';
        assert_eq!(
            decode_frame(&mut wrong_magic),
            Err(FrameError::BadMagic { magic: *b"XVTP" })
        );
        assert_eq!(decode_frame(&mut buffer), Ok(Some(Frame::Hello(hello))));
        assert!(buffer.is_empty());
    }
}
