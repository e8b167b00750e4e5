//! etcd 3.4's write-ahead log, read (never written): what a stopped etcd member's
//! `member/wal/*.wal` files hold, so that rivet started on etcd's data dir can replay the
//! entries its backend (`member/snap/db`) had not applied yet. Format:
//! `docs/format/etcd-wal.md`.
//!
//! Each file is a sequence of frames: an 8-byte little-endian length whose low 56 bits
//! are the record's size and whose top byte, when its high bit is set, holds the number
//! of padding bytes (0..7) that follow the record to an 8-byte boundary. A record is a
//! `walpb.Record` {type, crc, data}; the crc is the CRC-32C of `data` chained over every
//! record since the first file began (a `crc` record at the start of each file repeats
//! the running value). A length of 0 is the preallocated, never written end.
//!
//! The reader never panics on bytes: lengths are bounded, every decode error is a typed
//! [`EtcdWalError`] naming the file and offset. A damaged last record of the last file
//! that etcd's own decoder would call torn (a 512-byte sector of it all zeros, or cut
//! short) ends the log there, as etcd's repair would cut it; damage anywhere else
//! refuses the read.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{Entry, HardState};

/// Record types (etcd's `wal/wal.go`).
pub const RECORD_METADATA: i64 = 1;
pub const RECORD_ENTRY: i64 = 2;
pub const RECORD_STATE: i64 = 3;
pub const RECORD_CRC: i64 = 4;
pub const RECORD_SNAPSHOT: i64 = 5;

/// etcd refuses a record this large or larger (`maxWALEntrySizeLimit`, 10 MB).
pub const MAX_RECORD_BYTES: u64 = 10 * 1024 * 1024;
/// The sector size etcd's torn-write check uses (`minSectorSize`).
const SECTOR_BYTES: u64 = 512;

/// `walpb.Record`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WalRecord {
    #[prost(int64, tag = "1")]
    pub kind: i64,
    #[prost(uint32, tag = "2")]
    pub crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// `etcdserverpb.Metadata`: what etcd's metadata record holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdMetadata {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
}

/// `walpb.Snapshot`: the raft snapshot a file starts after.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct WalSnapshot {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(uint64, tag = "2")]
    pub term: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EtcdWalError {
    #[error("reading {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path} at offset {offset}: {reason}")]
    Damaged {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("no etcd WAL files (*.wal) in {0}")]
    Empty(String),
    #[error("etcd WAL files disagree on the member: {0}")]
    MetadataConflict(String),
}

/// What the log says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtcdLog {
    /// The member and cluster IDs (etcd's metadata record), if the log has one.
    pub metadata: Option<EtcdMetadata>,
    /// The last hard state (term, vote, commit).
    pub hard_state: HardState,
    /// The last snapshot record (index, term), if any.
    pub last_snapshot: Option<WalSnapshot>,
    /// The entries with an index above the `after` given to the reader, a later entry at
    /// an index replacing that index and everything after it (as etcd's `ReadAll`).
    pub entries: Vec<Entry>,
    /// The term of the entry at index `after`, if the log holds it.
    pub term_at_after: Option<u64>,
    /// A torn last record that was left out: file and offset.
    pub torn_tail: Option<String>,
}

/// Decodes the records of one file after another, carrying the CRC chain across them.
pub struct Decoder {
    crc: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

/// One step of [`Decoder::next`].
#[derive(Debug)]
pub enum Step {
    Record(WalRecord),
    /// The end of the file's written part (a zero length, or the file's end).
    End,
    /// A damaged record that etcd's decoder would call torn (only the last record of
    /// a log may be).
    Torn(String),
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { crc: 0 }
    }

    /// The next record of `reader`, which is at `*offset` in its file; `*offset` moves
    /// past the record. CRC records are checked against the running CRC and restart it.
    pub fn next(&mut self, reader: &mut impl Read, offset: &mut u64) -> Result<Step, String> {
        let mut length = [0u8; 8];
        match read_full(reader, &mut length) {
            Ok(0) => return Ok(Step::End),
            Ok(8) => {}
            Ok(n) => return Ok(Step::Torn(format!("a frame length cut after {n} bytes"))),
            Err(e) => return Err(e.to_string()),
        }
        let field = u64::from_le_bytes(length);
        if field == 0 {
            return Ok(Step::End);
        }
        let record_bytes = field & !(0xff << 56);
        let pad_bytes = if field >> 63 == 1 {
            (field >> 56) & 0x7
        } else {
            0
        };
        if record_bytes >= MAX_RECORD_BYTES - pad_bytes {
            return Err(format!(
                "record of {record_bytes} bytes exceeds etcd's limit of {MAX_RECORD_BYTES}"
            ));
        }
        let frame = (record_bytes + pad_bytes) as usize;
        let mut data = vec![0u8; frame];
        let read = read_full(reader, &mut data).map_err(|e| e.to_string())?;
        let data_offset = *offset + 8;
        if read < frame {
            return Ok(Step::Torn(format!(
                "a record of {frame} bytes cut after {read}"
            )));
        }
        let torn = || is_torn(data_offset, &data);
        let record = match WalRecord::decode(&data[..record_bytes as usize]) {
            Ok(record) => record,
            Err(e) if torn() => return Ok(Step::Torn(format!("undecodable record: {e}"))),
            Err(e) => return Err(format!("undecodable record: {e}")),
        };
        if record.kind == RECORD_CRC {
            if self.crc != 0 && record.crc != self.crc {
                return Err(format!(
                    "CRC record holds {:08x}, the log so far {:08x}",
                    record.crc, self.crc
                ));
            }
            self.crc = record.crc;
        } else {
            let crc = crc32c::crc32c_append(self.crc, &record.data);
            if crc != record.crc {
                if torn() {
                    return Ok(Step::Torn(format!(
                        "CRC mismatch ({:08x}, computed {crc:08x})",
                        record.crc
                    )));
                }
                return Err(format!(
                    "CRC mismatch: the record holds {:08x}, computed {crc:08x}",
                    record.crc
                ));
            }
            self.crc = crc;
        }
        *offset = data_offset + frame as u64;
        Ok(Step::Record(record))
    }
}

/// etcd's `isTornEntry`: a frame written across sectors of which one never reached the
/// disk has an all-zero sector chunk.
fn is_torn(file_offset: u64, data: &[u8]) -> bool {
    let mut start = 0usize;
    let mut offset = file_offset;
    while start < data.len() {
        let to_boundary = (SECTOR_BYTES - offset % SECTOR_BYTES) as usize;
        let end = (start + to_boundary).min(data.len());
        if data[start..end].iter().all(|&b| b == 0) {
            return true;
        }
        offset += (end - start) as u64;
        start = end;
    }
    false
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Builds an [`EtcdLog`] from records, file after file.
pub struct LogBuilder {
    after: u64,
    log: EtcdLog,
}

impl LogBuilder {
    /// Keeps the entries with an index above `after` (a backend's consistent index).
    pub fn new(after: u64) -> LogBuilder {
        LogBuilder {
            after,
            log: EtcdLog::default(),
        }
    }

    /// Takes one decoded record.
    pub fn add(&mut self, record: &WalRecord) -> Result<(), String> {
        match record.kind {
            RECORD_METADATA => {
                let metadata = EtcdMetadata::decode(record.data.as_slice())
                    .map_err(|e| format!("undecodable metadata: {e}"))?;
                if let Some(known) = &self.log.metadata {
                    if *known != metadata {
                        return Err(format!(
                            "metadata of member {:x} in cluster {:x} after {:x} in {:x}",
                            metadata.node_id, metadata.cluster_id, known.node_id, known.cluster_id
                        ));
                    }
                }
                self.log.metadata = Some(metadata);
            }
            RECORD_ENTRY => {
                let mut entry = Entry::default();
                entry
                    .merge_from_bytes(&record.data)
                    .map_err(|e| format!("undecodable entry: {e}"))?;
                if entry.index == self.after {
                    self.log.term_at_after = Some(entry.term);
                }
                if entry.index > self.after {
                    while self
                        .log
                        .entries
                        .last()
                        .is_some_and(|last| last.index >= entry.index)
                    {
                        self.log.entries.pop();
                    }
                    if let Some(last) = self.log.entries.last() {
                        if entry.index != last.index + 1 {
                            return Err(format!(
                                "entry {} does not follow entry {}",
                                entry.index, last.index
                            ));
                        }
                    }
                    self.log.entries.push(entry);
                } else if !self.log.entries.is_empty() {
                    // An entry at or below `after` rewrites the log below what we keep.
                    self.log.entries.clear();
                }
            }
            RECORD_STATE => {
                let mut state = HardState::default();
                state
                    .merge_from_bytes(&record.data)
                    .map_err(|e| format!("undecodable hard state: {e}"))?;
                // etcd writes an empty state when nothing changed; it keeps the last.
                if state != HardState::default() {
                    self.log.hard_state = state;
                }
            }
            RECORD_SNAPSHOT => {
                let snapshot = WalSnapshot::decode(record.data.as_slice())
                    .map_err(|e| format!("undecodable snapshot record: {e}"))?;
                if snapshot.index == self.after {
                    self.log.term_at_after = Some(snapshot.term);
                }
                self.log.last_snapshot = Some(snapshot);
            }
            RECORD_CRC => {}
            other => return Err(format!("unknown record type {other}")),
        }
        Ok(())
    }

    pub fn finish(self) -> EtcdLog {
        self.log
    }
}

/// Decodes one file's bytes (the fuzz target's entry point, and tests').
pub fn decode_bytes(bytes: &[u8], after: u64) -> Result<EtcdLog, EtcdWalError> {
    let mut builder = LogBuilder::new(after);
    let mut decoder = Decoder::new();
    let mut reader = bytes;
    let mut offset = 0u64;
    let damaged = |offset: u64, reason: String| EtcdWalError::Damaged {
        path: "<bytes>".into(),
        offset,
        reason,
    };
    loop {
        let at = offset;
        match decoder
            .next(&mut reader, &mut offset)
            .map_err(|r| damaged(at, r))?
        {
            Step::Record(record) => builder.add(&record).map_err(|r| damaged(at, r))?,
            Step::End => break,
            Step::Torn(reason) => {
                let mut log = builder.finish();
                log.torn_tail = Some(format!("offset {at}: {reason}"));
                return Ok(log);
            }
        }
    }
    Ok(builder.finish())
}

/// The `*.wal` files of `dir`, in etcd's order (names are `<seq>-<index>.wal` in hex).
pub fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, EtcdWalError> {
    let io_error = |e: io::Error| EtcdWalError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_wal_name(name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// etcd's `parseWALName`: `%016x-%016x.wal`.
pub fn is_wal_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".wal") else {
        return false;
    };
    let Some((seq, index)) = stem.split_once('-') else {
        return false;
    };
    seq.len() == 16
        && index.len() == 16
        && seq
            .chars()
            .chain(index.chars())
            .all(|c| c.is_ascii_hexdigit())
}

/// Reads every WAL file of `dir` (streaming, one record in memory at a time besides the
/// kept entries) and keeps the entries after index `after`.
pub fn read_dir(dir: &Path, after: u64) -> Result<EtcdLog, EtcdWalError> {
    let files = wal_files(dir)?;
    if files.is_empty() {
        return Err(EtcdWalError::Empty(dir.display().to_string()));
    }
    let mut builder = LogBuilder::new(after);
    let mut decoder = Decoder::new();
    let count = files.len();
    for (i, path) in files.iter().enumerate() {
        let display = path.display().to_string();
        let file = fs::File::open(path).map_err(|e| EtcdWalError::Io {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        let mut reader = io::BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        loop {
            let at = offset;
            let damaged = |reason: String| EtcdWalError::Damaged {
                path: display.clone(),
                offset: at,
                reason,
            };
            match decoder.next(&mut reader, &mut offset).map_err(damaged)? {
                Step::Record(record) => builder.add(&record).map_err(damaged)?,
                Step::End => break,
                Step::Torn(reason) if i + 1 == count => {
                    let mut log = builder.finish();
                    log.torn_tail = Some(format!("{display} at offset {at}: {reason}"));
                    return Ok(log);
                }
                Step::Torn(reason) => return Err(damaged(reason)),
            }
        }
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's encoder, for tests: frames with padding, chained CRCs.
    fn frame(out: &mut Vec<u8>, crc: &mut u32, kind: i64, data: &[u8]) {
        let record_crc = if kind == RECORD_CRC {
            *crc
        } else {
            *crc = crc32c::crc32c_append(*crc, data);
            *crc
        };
        let record = WalRecord {
            kind,
            crc: record_crc,
            data: data.to_vec(),
        }
        .encode_to_vec();
        let len = record.len() as u64;
        let pad = (8 - len % 8) % 8;
        let field = if pad == 0 {
            len
        } else {
            len | ((0x80 | pad) << 56)
        };
        out.extend_from_slice(&field.to_le_bytes());
        out.extend_from_slice(&record);
        out.extend(std::iter::repeat_n(0u8, pad as usize));
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
        .write_to_bytes()
        .expect("entry")
    }

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let mut crc = 0;
        frame(&mut out, &mut crc, RECORD_CRC, &[]);
        let meta = EtcdMetadata {
            node_id: 0x8e9e05c52164694d,
            cluster_id: 0xcdf818194e3a8c32,
        };
        frame(&mut out, &mut crc, RECORD_METADATA, &meta.encode_to_vec());
        frame(
            &mut out,
            &mut crc,
            RECORD_SNAPSHOT,
            &WalSnapshot { index: 0, term: 0 }.encode_to_vec(),
        );
        for i in 1..=5 {
            frame(&mut out, &mut crc, RECORD_ENTRY, &entry(i, 2, b"abc"));
        }
        // A new leader rewrites 4 and 5.
        frame(&mut out, &mut crc, RECORD_ENTRY, &entry(4, 3, b"x"));
        let hs = HardState {
            term: 3,
            commit: 4,
            ..Default::default()
        };
        frame(
            &mut out,
            &mut crc,
            RECORD_STATE,
            &hs.write_to_bytes().expect("hs"),
        );
        out
    }

    #[test]
    fn reads_entries_after_an_index() {
        let bytes = sample();
        let log = decode_bytes(&bytes, 2).expect("log");
        assert_eq!(
            log.metadata.as_ref().map(|m| m.node_id),
            Some(0x8e9e05c52164694d)
        );
        let indexes: Vec<(u64, u64)> = log.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(indexes, vec![(3, 2), (4, 3)]);
        assert_eq!(log.term_at_after, Some(2));
        assert_eq!(log.hard_state.commit, 4);
        assert!(log.torn_tail.is_none());
        // Preallocated zeros end the log.
        let mut padded = bytes.clone();
        padded.extend(std::iter::repeat_n(0u8, 4096));
        assert_eq!(decode_bytes(&padded, 2).expect("log"), log);
    }

    #[test]
    fn damage_is_an_error_and_a_torn_tail_is_cut() {
        let bytes = sample();
        // A flipped byte inside an entry's data (not the last record): CRC mismatch.
        let mut damaged = bytes.clone();
        let at = damaged
            .windows(3)
            .position(|w| w == b"abc")
            .expect("an entry");
        damaged[at] ^= 0x40;
        let error = decode_bytes(&damaged, 0).expect_err("damage");
        assert!(error.to_string().contains("CRC mismatch"), "{error}");
        // A last record cut short is torn.
        let cut = &bytes[..bytes.len() - 3];
        let log = decode_bytes(cut, 0).expect("torn tail");
        assert!(log.torn_tail.is_some());
        assert_eq!(log.hard_state, HardState::default());
        // Every prefix and every single-byte change decodes or errs, never panics.
        for len in 0..bytes.len() {
            let _ = decode_bytes(&bytes[..len], 0);
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] = b[i].wrapping_add(0x5a);
            let _ = decode_bytes(&b, 0);
        }
    }

    #[test]
    fn wal_names() {
        assert!(is_wal_name("0000000000000000-0000000000000000.wal"));
        assert!(!is_wal_name("0.tmp"));
        assert!(!is_wal_name("0000000000000000-0000000000000000.wal.broken"));
    }
}
