//! Snapshot files as etcd's tools handle them: the database followed by the SHA-256 of
//! it (what `Maintenance.Snapshot` streams and `etcdctl snapshot save` stores).
//!
//! - [`write_snapshot_file`]: the database from rivet's state, then the trailer.
//! - [`open_snapshot`]: checks a snapshot as `etcdctl snapshot restore` does (trailer
//!   present and matching unless `skip_hash_check`) and opens it for decoding.
//! - [`file_status`]: `etcdctl snapshot status` on a file.

use std::error::Error as StdError;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::bbolt::{Db, FileSource, ReadError};
use super::schema::{
    status, write_backend, Backend, BackendState, DecodeError, EncodeError, KeyVersion, Status,
    StatusError, WriteSummary,
};

/// The SHA-256 trailer after the database.
pub const TRAILER_BYTES: u64 = 32;
/// etcdctl takes a file as having a trailer when its length is 32 more than a multiple
/// of 512 (a bbolt file is whole pages, a multiple of 512).
pub const TRAILER_ALIGNMENT: u64 = 512;

/// Whether a file of `len` bytes ends with a trailer, by etcdctl's rule.
pub fn has_trailer(len: u64) -> bool {
    len % TRAILER_ALIGNMENT == TRAILER_BYTES
}

/// Buffer for hashing and copying files.
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// SHA-256 of the first `len` bytes of `file`.
pub fn sha256_prefix(file: &mut File, len: u64) -> io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut remaining = len;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    while remaining > 0 {
        let want = usize::try_from(remaining.min(buffer.len() as u64)).unwrap_or(buffer.len());
        let chunk = buffer.get_mut(..want).unwrap_or_default();
        file.read_exact(chunk)?;
        hasher.update(&*chunk);
        remaining -= want as u64;
    }
    Ok(hasher.finalize().into())
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotWriteError {
    #[error("writing snapshot {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("writing snapshot {path}: {source}")]
    Encode { path: String, source: EncodeError },
}

/// What [`write_snapshot_file`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub backend: WriteSummary,
    /// The trailer: SHA-256 of the database bytes.
    pub sha256: [u8; 32],
    /// The file's length, trailer included.
    pub file_bytes: u64,
}

/// Writes a snapshot file: the backend database (streamed from `key_versions`, see
/// [`write_backend`]), then its SHA-256, then fsync. The file is written under
/// `path` + `.part` and renamed into place when complete, as `etcdctl snapshot save`
/// does, so a crash never leaves a partial file under `path`.
pub fn write_snapshot_file<I, E>(
    path: &Path,
    state: &BackendState,
    key_versions: I,
) -> Result<SnapshotSummary, SnapshotWriteError>
where
    I: IntoIterator<Item = Result<KeyVersion, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut part_name = path.as_os_str().to_owned();
    part_name.push(".part");
    let part = Path::new(&part_name);
    let written = write_snapshot_part(path, part, state, key_versions);
    if written.is_err() {
        // As etcdctl does with its .part file; the error says what went wrong.
        let _ = std::fs::remove_file(part);
    }
    written
}

fn write_snapshot_part<I, E>(
    path: &Path,
    part: &Path,
    state: &BackendState,
    key_versions: I,
) -> Result<SnapshotSummary, SnapshotWriteError>
where
    I: IntoIterator<Item = Result<KeyVersion, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let shown = path.display().to_string();
    let io_error = |source| SnapshotWriteError::Io {
        path: shown.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(part)
        .map_err(io_error)?;
    let (writer, backend) =
        write_backend(BufWriter::new(file), state, key_versions).map_err(|source| {
            SnapshotWriteError::Encode {
                path: shown.clone(),
                source,
            }
        })?;
    let mut file = writer.into_inner().map_err(|e| io_error(e.into_error()))?;
    let sha256 = sha256_prefix(&mut file, backend.db.bytes).map_err(io_error)?;
    file.seek(SeekFrom::Start(backend.db.bytes))
        .map_err(io_error)?;
    file.write_all(&sha256).map_err(io_error)?;
    file.set_len(backend.db.bytes + TRAILER_BYTES)
        .map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(part, path).map_err(io_error)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error)?;
    }
    Ok(SnapshotSummary {
        backend,
        sha256,
        file_bytes: backend.db.bytes + TRAILER_BYTES,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotOpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// etcdctl's message for a file without a trailer.
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    /// etcdctl's message for a trailer that does not match (Go's `%v` of byte slices).
    #[error("expected sha256 {}, got {}", go_bytes(.expected), go_bytes(.actual))]
    HashMismatch {
        expected: [u8; 32],
        actual: [u8; 32],
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Go's `fmt` `%v` of a byte slice: `[1 2 3]`.
fn go_bytes(bytes: &[u8]) -> String {
    let items: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("[{}]", items.join(" "))
}

/// A snapshot file checked and opened for decoding.
pub struct OpenedSnapshot {
    pub backend: Backend<FileSource>,
    /// Whether the file had a trailer (and, unless skipped, it matched).
    pub had_trailer: bool,
    /// Whether the trailer was checked.
    pub hash_checked: bool,
}

/// Opens a snapshot file (or a copied `member/snap/db`) as `etcdctl snapshot restore`
/// reads it: a trailer (by etcdctl's length rule) is checked unless `skip_hash_check`;
/// a file without one is refused unless `skip_hash_check`. The database is the file
/// without its trailer.
pub fn open_snapshot(
    path: &Path,
    skip_hash_check: bool,
) -> Result<OpenedSnapshot, SnapshotOpenError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let had_trailer = has_trailer(len);
    if !had_trailer && !skip_hash_check {
        return Err(SnapshotOpenError::MissingHash);
    }
    let db_len = if had_trailer {
        len - TRAILER_BYTES
    } else {
        len
    };
    let mut hash_checked = false;
    if had_trailer && !skip_hash_check {
        let mut expected = [0u8; 32];
        file.seek(SeekFrom::Start(db_len))?;
        file.read_exact(&mut expected)?;
        let actual = sha256_prefix(&mut file, db_len)?;
        if actual != expected {
            return Err(SnapshotOpenError::HashMismatch { expected, actual });
        }
        hash_checked = true;
    }
    let source = FileSource::open(path)?.limited(db_len);
    Ok(OpenedSnapshot {
        backend: Backend::open(source)?,
        had_trailer,
        hash_checked,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum FileStatusError {
    /// etcdctl's `os.Stat` failure, e.g. "stat x.db: no such file or directory".
    #[error("stat {path}: {reason}")]
    Stat { path: String, reason: String },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// `etcdctl snapshot status` on a file: bbolt opens the whole file (a trailer lies
/// beyond the database's pages and is ignored), checks it, hashes it.
pub fn file_status(path: &Path) -> Result<Status, FileStatusError> {
    let stat_error = |e: io::Error| FileStatusError::Stat {
        path: path.display().to_string(),
        reason: go_io_reason(&e),
    };
    std::fs::metadata(path).map_err(stat_error)?;
    let db = Db::open(FileSource::open(path).map_err(stat_error)?)?;
    Ok(status(&db)?)
}

/// The reason text Go prints for common I/O errors (it uses the C library's strings in
/// lower case, without Rust's " (os error N)").
fn go_io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let text = error.to_string();
            match text.find(" (os error") {
                Some(cut) => text.get(..cut).unwrap_or(&text).to_lowercase(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_rule_is_etcdctls() {
        assert!(has_trailer(4096 * 5 + 32));
        assert!(!has_trailer(4096 * 5));
        assert!(has_trailer(512 + 32));
    }

    #[test]
    fn go_byte_slices() {
        assert_eq!(go_bytes(&[1, 22, 255]), "[1 22 255]");
    }
}
