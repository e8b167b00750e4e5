//! `Maintenance.Snapshot`: a consistent snapshot of the member as etcd 3.4's backend file
//! (a bbolt database with etcd's buckets, `crate::etcd_backend`) followed by its SHA-256,
//! streamed as etcd streams it (32 KiB blobs, `remaining_bytes` counting down, the
//! digest last), read from the page files at one raft index without holding the key
//! space in memory and without stopping writes.
//!
//! How:
//! 1. The raft core takes the point: its applied index `I`, the revision `R` there, and
//!    the state that is not in the shards (leases, members, alarms, compaction: a
//!    [`BackendState`]); it sends every shard a pin through the apply stream, so each
//!    pins exactly after applying `I`.
//! 2. A pinned shard keeps read-only mappings of its segments as they are
//!    ([`crate::page::SegmentView`]), and its index keeps every version of `I`:
//!    compactions wait to drop index entries, garbage collection waits. Writes go on.
//!    A [`SnapshotCursor`] then reads the shard's live versions in revision order: each
//!    segment's records are in revision order (appends are; rewrites keep the order), so
//!    a merge over the segments by (revision, segment, offset) gives the shard's versions
//!    in (revision, apply order) — a record is live when the index holds its version at
//!    that very record.
//! 3. The asking core merges the shards' chunks by (revision, shard) — etcd's
//!    sub-revisions are numbered in that order — and feeds a writer thread running the
//!    streaming bbolt writer ([`write_backend`]).
//! 4. Two passes. A bbolt file starts with its metas, which name the root page and the
//!    page count, known only at the end; so the first pass writes the database to
//!    nowhere ([`MetaCapture`], with values replaced by zeros of their length: only
//!    sizes decide the layout) and keeps the metas it would write, and the second
//!    streams the real bytes with those metas first ([`MetaFirst`]), checking that its
//!    own metas come out the same. Memory stays one chunk per shard and one page per
//!    tree level.
//!
//! A stream that ends early (the client went away, the member stopped) unpins; a pin
//! nobody asks for chunks for [`crate::limits::SNAPSHOT_PIN_IDLE`] is dropped.

use std::collections::BinaryHeap;
use std::io::{self, Seek, SeekFrom, Write};
use std::time::Instant;

use bytes::Bytes;
use sha2::Digest;

use crate::etcd_backend::bbolt::format::PAGE_SIZE_DEFAULT;
use crate::etcd_backend::schema::{
    assign_sub_revisions, write_backend, AuthData, BackendMeta, BackendState, KeyVersion, Lease,
};
use crate::mvcc::KeyIndex;
use crate::page::{decode_record_at, PagePtr, Record, SegmentView, SEGMENT_HEADER_BYTES};

/// Where the raft core took a snapshot, and what it holds besides the shards' keys.
#[derive(Clone, Debug)]
pub struct SnapshotPoint {
    /// Pins the shards; names the stream in their requests.
    pub id: u64,
    pub index: u64,
    pub revision: i64,
    pub state: BackendState,
}

/// The state of the raft core as etcd's backend buckets hold it.
pub fn backend_state(
    index: u64,
    compact_revision: i64,
    leases: &[rivet_api::rivetpb::LeaseRecord],
    membership: &rivet_api::rivetpb::Membership,
    alarms: &[rivet_api::etcdserverpb::AlarmMember],
    cluster_version: &str,
) -> BackendState {
    let compacted = (compact_revision > 0).then_some(compact_revision);
    BackendState {
        meta: BackendMeta {
            consistent_index: index,
            scheduled_compact_revision: compacted,
            finished_compact_revision: compacted,
            cluster_version: Some(cluster_version.to_owned()),
        },
        leases: leases
            .iter()
            .map(|lease| Lease {
                id: lease.id,
                ttl: lease.ttl,
                remaining_ttl: lease.remaining_ttl,
            })
            .collect(),
        members: membership.members.clone(),
        removed_members: membership.removed.clone(),
        alarms: alarms.to_vec(),
        // rivet has no auth store yet: a fresh etcd store's auth bucket.
        auth: AuthData {
            enabled: None,
            revision: Some(1),
            users: Vec::new(),
            roles: Vec::new(),
        },
    }
}

/// One segment's position in a [`SnapshotCursor`]'s merge: its next record.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Head {
    revision: i64,
    /// Index into the cursor's views (in segment key order, so this orders like the key).
    view: usize,
    offset: usize,
}

/// A pinned shard's versions at a snapshot's revision, read in (revision, apply order).
pub struct SnapshotCursor {
    revision: i64,
    views: Vec<SegmentView>,
    heap: BinaryHeap<std::cmp::Reverse<Head>>,
    /// The first record that did not decode (its CRC failed): the stream fails there,
    /// it never skips a record.
    damaged: Option<DamagedRecord>,
    /// When a chunk was last asked for (a pin nobody reads is dropped).
    pub last_used: Instant,
}

/// A record a snapshot stream could not read: where, and why.
#[derive(Clone, Debug)]
pub struct DamagedRecord {
    pub ptr: PagePtr,
    pub error: String,
}

/// A chunk of a shard's versions, and whether the shard has no more.
pub struct SnapshotChunk {
    pub versions: Vec<KeyVersion>,
    pub done: bool,
}

/// Zeros to stand in for keys and values in the sizing pass.
fn zeros(length: usize) -> Bytes {
    static ZEROS: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let zeros = ZEROS.get_or_init(|| Bytes::from(vec![0u8; 1 << 20]));
    if length <= zeros.len() {
        zeros.slice(..length)
    } else {
        Bytes::from(vec![0u8; length])
    }
}

impl SnapshotCursor {
    /// A cursor over `views` (a pinned shard's segments) at `revision`.
    pub fn new(revision: i64, views: Vec<SegmentView>) -> SnapshotCursor {
        let mut cursor = SnapshotCursor {
            revision,
            views,
            heap: BinaryHeap::new(),
            damaged: None,
            last_used: Instant::now(),
        };
        cursor.restart();
        cursor
    }

    /// Back to the first version (the second pass).
    pub fn restart(&mut self) {
        self.heap.clear();
        self.damaged = None;
        for view in 0..self.views.len() {
            self.push_next(view, SEGMENT_HEADER_BYTES);
        }
    }

    /// Puts segment `view`'s first key record at or after `offset` into the merge.
    fn push_next(&mut self, view: usize, mut offset: usize) {
        let Some(segment) = self.views.get(view) else {
            return;
        };
        let bytes = segment.bytes();
        loop {
            match decode_record_at(bytes, offset) {
                Ok(Some((Record::Key(record), _))) => {
                    self.heap.push(std::cmp::Reverse(Head {
                        revision: record.mod_revision,
                        view,
                        offset,
                    }));
                    return;
                }
                Ok(Some((Record::Checkpoint(_), next))) => offset = next,
                Ok(None) => return,
                Err(error) => {
                    self.damaged.get_or_insert(DamagedRecord {
                        ptr: PagePtr::in_segment(
                            segment.key,
                            u32::try_from(offset).unwrap_or(u32::MAX),
                        ),
                        error: error.to_string(),
                    });
                    return;
                }
            }
        }
    }

    /// The next live versions, up to `max_versions` or about `max_bytes` of keys and
    /// values. With `sizes_only`, keys and values are zeros of their length.
    pub fn next_chunk(
        &mut self,
        index: &KeyIndex,
        max_versions: usize,
        max_bytes: usize,
        sizes_only: bool,
    ) -> Result<SnapshotChunk, DamagedRecord> {
        self.last_used = Instant::now();
        let mut versions = Vec::new();
        let mut bytes = 0;
        while versions.len() < max_versions && bytes < max_bytes {
            if let Some(damaged) = &self.damaged {
                return Err(damaged.clone());
            }
            let Some(std::cmp::Reverse(head)) = self.heap.pop() else {
                return Ok(SnapshotChunk {
                    versions,
                    done: true,
                });
            };
            let Some(segment) = self.views.get(head.view) else {
                continue;
            };
            let ptr =
                PagePtr::in_segment(segment.key, u32::try_from(head.offset).unwrap_or(u32::MAX));
            let record = match decode_record_at(segment.bytes(), head.offset) {
                Ok(Some((Record::Key(record), next))) => Some((record, next)),
                // Pushed as a key record, so it decoded then: it was damaged since.
                Ok(_) => None,
                Err(error) => {
                    return Err(DamagedRecord {
                        ptr,
                        error: error.to_string(),
                    })
                }
            };
            let Some((record, next)) = record else {
                return Err(DamagedRecord {
                    ptr,
                    error: "not a key record any more".into(),
                });
            };
            let live = record.mod_revision <= self.revision
                && index
                    .version_at(record.key, record.mod_revision)
                    .is_some_and(|(held, _)| held == ptr);
            if live {
                let (key, value) = if sizes_only {
                    (
                        zeros(record.key.len()),
                        record.value.map(|v| zeros(v.len())),
                    )
                } else {
                    (
                        Bytes::copy_from_slice(record.key),
                        record.value.map(Bytes::copy_from_slice),
                    )
                };
                bytes += key.len() + value.as_ref().map_or(0, Bytes::len);
                versions.push(KeyVersion {
                    key,
                    mod_revision: record.mod_revision,
                    sub_revision: 0,
                    create_revision: record.create_revision,
                    version: record.version,
                    lease: record.lease,
                    value,
                });
            }
            self.push_next(head.view, next);
        }
        if let Some(damaged) = &self.damaged {
            return Err(damaged.clone());
        }
        Ok(SnapshotChunk {
            versions,
            done: self.heap.is_empty(),
        })
    }
}

/// The first pass's sink: counts bytes and keeps what is written over the two meta
/// pages (which the writer writes last, at the start).
#[derive(Default)]
pub struct MetaCapture {
    position: u64,
    end: u64,
    metas: Vec<u8>,
}

impl MetaCapture {
    /// The two meta pages the pass wrote, and the database's length.
    pub fn into_metas(self) -> (Vec<u8>, u64) {
        (self.metas, self.end)
    }
}

impl Write for MetaCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let metas_bytes = 2 * PAGE_SIZE_DEFAULT as u64;
        if self.position < metas_bytes {
            let start = usize::try_from(self.position).unwrap_or(usize::MAX);
            let end = start.saturating_add(buf.len()).min(metas_bytes as usize);
            if self.metas.len() < end {
                self.metas.resize(end, 0);
            }
            if let (Some(target), Some(source)) =
                (self.metas.get_mut(start..end), buf.get(..end - start))
            {
                target.copy_from_slice(source);
            }
        }
        self.position += buf.len() as u64;
        self.end = self.end.max(self.position);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for MetaCapture {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.position = match to {
            SeekFrom::Start(position) => position,
            SeekFrom::Current(delta) => self.position.saturating_add_signed(delta),
            SeekFrom::End(delta) => self.end.saturating_add_signed(delta),
        };
        Ok(self.position)
    }
}

/// The second pass's sink: emits the metas of the first pass, then the pages as the
/// writer writes them, in blobs of [`crate::limits::SNAPSHOT_BLOB_BYTES`]; checks that
/// the metas it writes at the end are the ones already sent; hashes everything.
pub struct MetaFirst<F: FnMut(Bytes) -> io::Result<()>> {
    metas: Vec<u8>,
    sent_metas: bool,
    position: u64,
    buffer: Vec<u8>,
    emit: F,
    sha: sha2::Sha256,
}

impl<F: FnMut(Bytes) -> io::Result<()>> MetaFirst<F> {
    pub fn new(metas: Vec<u8>, emit: F) -> MetaFirst<F> {
        MetaFirst {
            metas,
            sent_metas: false,
            position: 0,
            buffer: Vec::with_capacity(crate::limits::SNAPSHOT_BLOB_BYTES),
            emit,
            sha: sha2::Sha256::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sha.update(bytes);
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = crate::limits::SNAPSHOT_BLOB_BYTES - self.buffer.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buffer.extend_from_slice(now);
            rest = later;
            if self.buffer.len() == crate::limits::SNAPSHOT_BLOB_BYTES {
                let blob = Bytes::from(std::mem::replace(
                    &mut self.buffer,
                    Vec::with_capacity(crate::limits::SNAPSHOT_BLOB_BYTES),
                ));
                (self.emit)(blob)?;
            }
        }
        Ok(())
    }

    /// Sends what is buffered and answers the SHA-256 of everything sent.
    pub fn finish(mut self) -> io::Result<[u8; 32]> {
        if !self.buffer.is_empty() {
            let blob = Bytes::from(std::mem::take(&mut self.buffer));
            (self.emit)(blob)?;
        }
        Ok(self.sha.finalize().into())
    }
}

impl<F: FnMut(Bytes) -> io::Result<()>> Write for MetaFirst<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let metas_bytes = self.metas.len() as u64;
        if self.position < metas_bytes {
            // The writer's own metas, written last: they must match what was sent.
            let start = usize::try_from(self.position).unwrap_or(usize::MAX);
            let end = start.saturating_add(buf.len()).min(self.metas.len());
            if self.metas.get(start..end) != buf.get(..end - start) {
                return Err(io::Error::other(
                    "the snapshot's second pass laid the database out differently from the first",
                ));
            }
        } else {
            if !self.sent_metas {
                let metas = std::mem::take(&mut self.metas);
                self.push(&metas)?;
                self.metas = metas;
                self.sent_metas = true;
            }
            self.push(buf)?;
        }
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<F: FnMut(Bytes) -> io::Result<()>> Seek for MetaFirst<F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.position = match to {
            SeekFrom::Start(position) => position,
            _ => {
                return Err(io::Error::other(
                    "the snapshot stream seeks only from the start",
                ))
            }
        };
        Ok(self.position)
    }
}

/// What the writer thread reports.
pub enum WriterOutput {
    /// The database's length (after the sizing pass).
    Total(u64),
    Blob(Bytes),
    /// The SHA-256 of the database (after the streaming pass).
    Done([u8; 32]),
    Failed(String),
}

/// Starts the writer thread: it reads versions (`None` ends a pass) for the sizing pass,
/// then for the streaming pass, and reports on `output`.
pub fn spawn_writer(
    state: BackendState,
    versions: async_channel::Receiver<Option<KeyVersion>>,
    output: async_channel::Sender<WriterOutput>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            let report = |message| {
                let _ = output.send_blocking(message);
            };
            let pass = || {
                std::iter::from_fn(|| versions.recv_blocking().ok().flatten())
                    .map(Ok::<KeyVersion, std::convert::Infallible>)
            };
            let sized = write_backend(MetaCapture::default(), &state, assign_sub_revisions(pass()));
            let (metas, total) = match sized {
                Ok((capture, _)) => capture.into_metas(),
                Err(e) => return report(WriterOutput::Failed(e.to_string())),
            };
            report(WriterOutput::Total(total));
            let emit = |blob: Bytes| {
                output
                    .send_blocking(WriterOutput::Blob(blob))
                    .map_err(|_| io::Error::other("the snapshot stream went away"))
            };
            let streamed = write_backend(
                MetaFirst::new(metas, emit),
                &state,
                assign_sub_revisions(pass()),
            );
            match streamed
                .map_err(|e| e.to_string())
                .and_then(|(sink, summary)| {
                    if summary.db.bytes != total {
                        return Err(format!(
                            "the second pass wrote {} bytes, the first {total}",
                            summary.db.bytes
                        ));
                    }
                    sink.finish().map_err(|e| e.to_string())
                }) {
                Ok(sha) => report(WriterOutput::Done(sha)),
                Err(e) => report(WriterOutput::Failed(e)),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_backend::snapshot_file::open_snapshot;

    fn version(revision: i64, key: &str, value: Option<&str>) -> KeyVersion {
        KeyVersion {
            key: Bytes::copy_from_slice(key.as_bytes()),
            mod_revision: revision,
            sub_revision: 0,
            create_revision: revision,
            version: 1,
            lease: 0,
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        }
    }

    /// The two-pass stream gives the same bytes as writing the file directly, and a
    /// sizing pass with zeros lays out the same pages.
    #[test]
    fn two_passes_stream_what_a_file_would_hold() {
        let versions: Vec<KeyVersion> = (2..3000)
            .map(|r| {
                let value = "v".repeat((r % 700) as usize);
                version(
                    r,
                    &format!("key-{r:05}"),
                    (r % 5 != 0).then_some(value.as_str()),
                )
            })
            .collect();
        let state = BackendState::default();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("direct.db");
        let direct = crate::etcd_backend::snapshot_file::write_snapshot_file(
            &path,
            &state,
            versions
                .iter()
                .cloned()
                .map(Ok::<_, std::convert::Infallible>),
        )
        .expect("write");

        let (tx, rx) = async_channel::bounded(16);
        let (out_tx, out_rx) = async_channel::bounded(16);
        let writer = spawn_writer(state, rx, out_tx).expect("thread");
        let feeder = std::thread::spawn(move || {
            for pass in 0..2 {
                for v in &versions {
                    let mut v = v.clone();
                    if pass == 0 {
                        v.key = zeros(v.key.len());
                        v.value = v.value.map(|x| zeros(x.len()));
                    }
                    tx.send_blocking(Some(v)).expect("send");
                }
                tx.send_blocking(None).expect("end of pass");
            }
        });
        let mut streamed = Vec::new();
        let mut total = 0;
        let sha = loop {
            match out_rx.recv_blocking().expect("output") {
                WriterOutput::Total(t) => total = t,
                WriterOutput::Blob(b) => streamed.extend_from_slice(&b),
                WriterOutput::Done(sha) => break sha,
                WriterOutput::Failed(e) => panic!("{e}"),
            }
        };
        feeder.join().expect("feeder");
        writer.join().expect("writer");
        assert_eq!(streamed.len() as u64, total);
        assert_eq!(sha, direct.sha256);
        let file = std::fs::read(&path).expect("read");
        assert_eq!(&file[..file.len() - 32], streamed.as_slice());
        streamed.extend_from_slice(&sha);
        let copy = dir.path().join("streamed.db");
        std::fs::write(&copy, &streamed).expect("write");
        assert!(open_snapshot(&copy, false).is_ok());
    }
}
