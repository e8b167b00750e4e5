//! etcd 3.4's buckets on top of bbolt (`docs/format/bbolt.md`, "etcd's buckets"), in
//! both directions, on rivet-side structures:
//!
//! - [`write_backend`] writes a database from rivet's state: key versions stream in
//!   revision order (millions of them, never all in memory), the rest (leases, members,
//!   alarms, auth records — small, and held in memory by rivet anyway) comes as a
//!   [`BackendState`].
//! - [`Backend`] reads an etcd database (a snapshot or a member's `member/snap/db`): the
//!   same [`BackendState`], and the key versions as a streaming iterator.
//!
//! Every value is written exactly as etcd 3.4 writes it (protobuf field order, Go's JSON
//! for members), so a file rivet writes hashes like one etcd would write with the same
//! contents.

use std::error::Error as StdError;
use std::io::{Seek, Write};

use bytes::Bytes;
use prost::Message;
use rivet_api::etcdserverpb::AlarmMember;
use rivet_api::leasepb;
use rivet_api::mvccpb::KeyValue;
use rivet_api::rivetpb::Member;

use super::bbolt::{
    BucketBuilder, BucketRef, Cursor, Db, DbSummary, DbWriter, Entry, ReadError, Source, WriteError,
};

// ---- Bucket and key names (etcd 3.4: mvcc/kvstore.go, lease/lessor.go,
// etcdserver/api/membership/store.go, auth/store.go, etcdserver/api/v3alarm) -----------

pub const BUCKET_ALARM: &[u8] = b"alarm";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";
pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_META: &[u8] = b"meta";

/// Every bucket etcd 3.4 creates, in name order (the order of the root bucket, which is
/// the order etcdctl hashes them in).
pub const BUCKETS: [&[u8]; 10] = [
    BUCKET_ALARM,
    BUCKET_AUTH,
    BUCKET_AUTH_ROLES,
    BUCKET_AUTH_USERS,
    BUCKET_CLUSTER,
    BUCKET_KEY,
    BUCKET_LEASE,
    BUCKET_MEMBERS,
    BUCKET_MEMBERS_REMOVED,
    BUCKET_META,
];

pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const META_FINISHED_COMPACT_REVISION: &[u8] = b"finishedCompactRev";
pub const META_SCHEDULED_COMPACT_REVISION: &[u8] = b"scheduledCompactRev";
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
pub const AUTH_REVISION: &[u8] = b"authRevision";
/// The value of every `members_removed` entry.
pub const MEMBER_REMOVED_VALUE: &[u8] = b"removed";

// ---- Revision keys of the `key` bucket ---------------------------------------------

/// `main` (8 bytes, big-endian), `_`, `sub` (8 bytes, big-endian).
pub const REVISION_MAIN_OFFSET: usize = 0;
pub const REVISION_MAIN_SIZE: usize = 8;
pub const REVISION_SEPARATOR_OFFSET: usize = REVISION_MAIN_OFFSET + REVISION_MAIN_SIZE;
pub const REVISION_SEPARATOR: u8 = b'_';
pub const REVISION_SUB_OFFSET: usize = REVISION_SEPARATOR_OFFSET + 1;
pub const REVISION_SUB_SIZE: usize = 8;
pub const REVISION_BYTES: usize = REVISION_SUB_OFFSET + REVISION_SUB_SIZE;
/// A tombstone's revision key has this mark after the revision.
pub const TOMBSTONE_MARK: u8 = b't';
pub const TOMBSTONE_REVISION_BYTES: usize = REVISION_BYTES + 1;
const _: () = assert!(REVISION_BYTES == 17);

/// etcd's `revToBytes`: the key of a put.
pub fn revision_key(main: i64, sub: i64) -> [u8; REVISION_BYTES] {
    let mut key = [0u8; REVISION_BYTES];
    key[REVISION_MAIN_OFFSET..REVISION_SEPARATOR_OFFSET].copy_from_slice(&main.to_be_bytes());
    key[REVISION_SEPARATOR_OFFSET] = REVISION_SEPARATOR;
    key[REVISION_SUB_OFFSET..REVISION_BYTES].copy_from_slice(&sub.to_be_bytes());
    key
}

/// The key of a tombstone: the revision key and the mark.
pub fn tombstone_revision_key(main: i64, sub: i64) -> [u8; TOMBSTONE_REVISION_BYTES] {
    let mut key = [TOMBSTONE_MARK; TOMBSTONE_REVISION_BYTES];
    key[..REVISION_BYTES].copy_from_slice(&revision_key(main, sub));
    key
}

/// Parses a `key` bucket key: (main, sub, tombstone).
pub fn parse_revision_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        REVISION_BYTES => false,
        TOMBSTONE_REVISION_BYTES if key.get(REVISION_BYTES) == Some(&TOMBSTONE_MARK) => true,
        _ => return None,
    };
    if key.get(REVISION_SEPARATOR_OFFSET) != Some(&REVISION_SEPARATOR) {
        return None;
    }
    let main = i64::from_be_bytes(key.get(..REVISION_SEPARATOR_OFFSET)?.try_into().ok()?);
    let sub = i64::from_be_bytes(
        key.get(REVISION_SUB_OFFSET..REVISION_BYTES)?
            .try_into()
            .ok()?,
    );
    Some((main, sub, tombstone))
}

// ---- rivet-side structures ---------------------------------------------------------

/// One version of a key: a put, or a tombstone (`value` = `None`; etcd stores only the
/// key for it, so create revision, version and lease are 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersion {
    pub key: Bytes,
    /// The revision that wrote this version (etcd's `main`).
    pub mod_revision: i64,
    /// Its place among the changes of that revision (etcd's `sub`: 0, 1, … in apply
    /// order). See [`assign_sub_revisions`] for sources that do not keep it.
    pub sub_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Option<Bytes>,
}

/// A lease as etcd persists it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Remaining TTL last checkpointed (0: none).
    pub remaining_ttl: i64,
}

/// The `meta` and `cluster` buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendMeta {
    /// The raft index the backend has applied (0 when absent).
    pub consistent_index: u64,
    pub scheduled_compact_revision: Option<i64>,
    pub finished_compact_revision: Option<i64>,
    /// `clusterVersion`, e.g. "3.4.0".
    pub cluster_version: Option<String>,
}

impl BackendMeta {
    /// The newest compaction the backend records, scheduled or finished (etcd restores
    /// the scheduled one and finishes it at start), if any.
    pub fn compact_revision(&self) -> Option<i64> {
        self.scheduled_compact_revision
            .into_iter()
            .chain(self.finished_compact_revision)
            .max()
    }
}

/// One auth record, kept opaque for now: the key and the protobuf bytes etcd stores
/// (`authpb.User` or `authpb.Role`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRecord {
    pub name: Bytes,
    pub value: Bytes,
}

/// The `auth`, `authUsers` and `authRoles` buckets. A fresh etcd store has
/// `revision: Some(1)` and no `enabled` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthData {
    pub enabled: Option<bool>,
    pub revision: Option<u64>,
    pub users: Vec<AuthRecord>,
    pub roles: Vec<AuthRecord>,
}

/// Everything of a backend except the key versions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendState {
    pub meta: BackendMeta,
    pub leases: Vec<Lease>,
    pub members: Vec<Member>,
    pub removed_members: Vec<u64>,
    pub alarms: Vec<AlarmMember>,
    pub auth: AuthData,
}

/// What etcdctl's `snapshot status` reports, computed the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C of every top-level bucket's name, keys and values.
    pub hash: u32,
    /// `main` of the last revision key of the `key` bucket.
    pub revision: i64,
    /// Entries of all top-level buckets.
    pub total_keys: u64,
    /// Pages in use × page size.
    pub total_size: u64,
}

/// Sets each version's `sub_revision` to its place among the versions of its
/// `mod_revision` (0, 1, … in arrival order), for sources that keep no sub-revision
/// (rivet's shards: a merge of the shards' versions in revision order, each shard's in
/// apply order).
pub fn assign_sub_revisions<I, E>(versions: I) -> impl Iterator<Item = Result<KeyVersion, E>>
where
    I: IntoIterator<Item = Result<KeyVersion, E>>,
{
    let mut current = None;
    let mut next_sub = 0i64;
    versions.into_iter().map(move |item| {
        item.map(|mut version| {
            if current != Some(version.mod_revision) {
                current = Some(version.mod_revision);
                next_sub = 0;
            }
            version.sub_revision = next_sub;
            next_sub += 1;
            version
        })
    })
}

// ---- Encoding values as etcd does ----------------------------------------------------

/// The `mvccpb.KeyValue` etcd stores for a version.
pub fn key_value_bytes(version: &KeyVersion, out: &mut Vec<u8>) {
    out.clear();
    let kv = match &version.value {
        Some(value) => KeyValue {
            key: version.key.clone(),
            create_revision: version.create_revision,
            mod_revision: version.mod_revision,
            version: version.version,
            value: value.clone(),
            lease: version.lease,
        },
        None => KeyValue {
            key: version.key.clone(),
            ..KeyValue::default()
        },
    };
    // Encoding into a Vec cannot fail: it grows.
    let _ = kv.encode(out);
}

/// A member's key: its ID in lowercase hex without padding (etcd's `types.ID.String`).
pub fn member_key(id: u64) -> String {
    format!("{id:x}")
}

/// A member as etcd 3.4's `json.Marshal(membership.Member)` writes it: `id`,
/// `peerURLs`, `isLearner` (omitted when false), `name` and `clientURLs` (omitted when
/// empty), in that order, with Go's string escaping.
pub fn member_json(member: &Member) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"id\":");
    out.push_str(&member.id.to_string());
    out.push_str(",\"peerURLs\":");
    go_json_strings(&member.peer_urls, &mut out);
    if member.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    if !member.name.is_empty() {
        out.push_str(",\"name\":");
        go_json_string(&member.name, &mut out);
    }
    if !member.client_urls.is_empty() {
        out.push_str(",\"clientURLs\":");
        go_json_strings(&member.client_urls, &mut out);
    }
    out.push('}');
    out
}

fn go_json_strings(values: &[String], out: &mut String) {
    out.push('[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(value, out);
    }
    out.push(']');
}

/// Go's `encoding/json` string escaping (Go 1.19, which etcd 3.4.23 is built with): HTML
/// characters and U+2028/U+2029 as `\u` escapes, `\b` and `\f` as `\u0008`/`\u000c`.
fn go_json_string(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(serde::Deserialize)]
struct MemberJson {
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Option<Vec<String>>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
    #[serde(default)]
    name: String,
    #[serde(rename = "clientURLs", default)]
    client_urls: Option<Vec<String>>,
}

pub fn parse_member(value: &[u8]) -> Result<Member, String> {
    let json: MemberJson = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    Ok(Member {
        id: json.id,
        name: json.name,
        peer_urls: json.peer_urls.unwrap_or_default(),
        client_urls: json.client_urls.unwrap_or_default(),
        is_learner: json.is_learner,
    })
}

// ---- Writing ---------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("reading the key versions to write: {0}")]
    Source(Box<dyn StdError + Send + Sync>),
    #[error(
        "key version with revision {revision}/{sub} (revisions start at 1, sub-revisions at 0)"
    )]
    InvalidRevision { revision: i64, sub: i64 },
    #[error("key versions must come in revision order: {next:?} after {previous:?}")]
    RevisionOrder {
        previous: (i64, i64),
        next: (i64, i64),
    },
    #[error("key version at revision {revision} has an empty key")]
    EmptyKey { revision: i64 },
}

/// What [`write_backend`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    pub db: DbSummary,
    /// What `etcdctl snapshot status` reports for the file.
    pub status: Status,
    /// Key versions written to the `key` bucket.
    pub key_versions: u64,
}

/// A bucket being written, hashed as etcdctl's status hashes it.
struct HashedBucket {
    builder: BucketBuilder,
}

struct StatusHasher {
    crc: u32,
    total_keys: u64,
}

impl StatusHasher {
    fn bucket_name(&mut self, name: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, name);
    }

    fn entry(&mut self, key: &[u8], value: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, key);
        self.crc = crc32c::crc32c_append(self.crc, value);
        self.total_keys += 1;
    }
}

impl HashedBucket {
    fn put<W: Write + Seek>(
        &mut self,
        db: &mut DbWriter<W>,
        hasher: &mut StatusHasher,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), WriteError> {
        self.builder.put(db, key, value)?;
        hasher.entry(key, value);
        Ok(())
    }
}

/// Writes etcd's backend database to `out` (from its start): the state's buckets and
/// the key versions, which must come in revision order (`mod_revision`, then
/// `sub_revision`) and are written as they arrive. Returns `out` positioned at the end
/// of the database and what `etcdctl snapshot status` will say about it.
pub fn write_backend<W, I, E>(
    out: W,
    state: &BackendState,
    key_versions: I,
) -> Result<(W, WriteSummary), EncodeError>
where
    W: Write + Seek,
    I: IntoIterator<Item = Result<KeyVersion, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut db = DbWriter::new(out, super::bbolt::format::PAGE_SIZE_DEFAULT)?;
    let mut hasher = StatusHasher {
        crc: 0,
        total_keys: 0,
    };
    let mut root = db.bucket();
    let mut revision = 0;
    let mut written_versions = 0;
    let mut key_versions = Some(key_versions);
    // Buckets in name order, so that the status hash is computed as they are written.
    for name in BUCKETS {
        hasher.bucket_name(name);
        let mut bucket = HashedBucket {
            builder: db.bucket(),
        };
        let sorted = |mut entries: Vec<(Vec<u8>, Vec<u8>)>| {
            entries.sort();
            entries.dedup_by(|a, b| a.0 == b.0);
            entries
        };
        let entries: Vec<(Vec<u8>, Vec<u8>)> = match name {
            BUCKET_ALARM => sorted(
                state
                    .alarms
                    .iter()
                    .map(|alarm| (alarm.encode_to_vec(), Vec::new()))
                    .collect(),
            ),
            BUCKET_AUTH => {
                let mut entries = Vec::new();
                if let Some(enabled) = state.auth.enabled {
                    entries.push((AUTH_ENABLED.to_vec(), vec![u8::from(enabled)]));
                }
                if let Some(auth_revision) = state.auth.revision {
                    entries.push((AUTH_REVISION.to_vec(), auth_revision.to_be_bytes().to_vec()));
                }
                entries
            }
            BUCKET_AUTH_ROLES => sorted(auth_entries(&state.auth.roles)),
            BUCKET_AUTH_USERS => sorted(auth_entries(&state.auth.users)),
            BUCKET_CLUSTER => state
                .meta
                .cluster_version
                .iter()
                .map(|v| (CLUSTER_VERSION.to_vec(), v.as_bytes().to_vec()))
                .collect(),
            BUCKET_KEY => {
                let versions = key_versions.take().into_iter().flatten();
                let (count, last) =
                    write_key_versions(&mut db, &mut hasher, &mut bucket, versions)?;
                written_versions = count;
                revision = last;
                Vec::new()
            }
            BUCKET_LEASE => sorted(
                state
                    .leases
                    .iter()
                    .map(|lease| {
                        let record = leasepb::Lease {
                            id: lease.id,
                            ttl: lease.ttl,
                            remaining_ttl: lease.remaining_ttl,
                        };
                        (lease.id.to_be_bytes().to_vec(), record.encode_to_vec())
                    })
                    .collect(),
            ),
            BUCKET_MEMBERS => sorted(
                state
                    .members
                    .iter()
                    .map(|m| (member_key(m.id).into_bytes(), member_json(m).into_bytes()))
                    .collect(),
            ),
            BUCKET_MEMBERS_REMOVED => sorted(
                state
                    .removed_members
                    .iter()
                    .map(|id| (member_key(*id).into_bytes(), MEMBER_REMOVED_VALUE.to_vec()))
                    .collect(),
            ),
            _ => {
                let mut entries = vec![(
                    META_CONSISTENT_INDEX.to_vec(),
                    state.meta.consistent_index.to_be_bytes().to_vec(),
                )];
                if let Some(finished) = state.meta.finished_compact_revision {
                    entries.push((
                        META_FINISHED_COMPACT_REVISION.to_vec(),
                        revision_key(finished, 0).to_vec(),
                    ));
                }
                if let Some(scheduled) = state.meta.scheduled_compact_revision {
                    entries.push((
                        META_SCHEDULED_COMPACT_REVISION.to_vec(),
                        revision_key(scheduled, 0).to_vec(),
                    ));
                }
                entries
            }
        };
        for (key, value) in &entries {
            bucket.put(&mut db, &mut hasher, key, value)?;
        }
        let value = bucket.builder.finish(&mut db)?;
        root.put_bucket(&mut db, name, &value)?;
    }
    let (out, summary) = db.finish(root)?;
    Ok((
        out,
        WriteSummary {
            db: summary,
            status: Status {
                hash: hasher.crc,
                revision,
                total_keys: hasher.total_keys,
                total_size: summary.bytes,
            },
            key_versions: written_versions,
        },
    ))
}

fn auth_entries(records: &[AuthRecord]) -> Vec<(Vec<u8>, Vec<u8>)> {
    records
        .iter()
        .map(|r| (r.name.to_vec(), r.value.to_vec()))
        .collect()
}

/// Streams the key versions into the `key` bucket; returns how many and the last
/// revision.
fn write_key_versions<W, I, E>(
    db: &mut DbWriter<W>,
    hasher: &mut StatusHasher,
    bucket: &mut HashedBucket,
    versions: I,
) -> Result<(u64, i64), EncodeError>
where
    W: Write + Seek,
    I: IntoIterator<Item = Result<KeyVersion, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut previous: Option<(i64, i64)> = None;
    let mut count = 0;
    let mut value = Vec::new();
    for item in versions {
        let version = item.map_err(|e| EncodeError::Source(e.into()))?;
        let position = (version.mod_revision, version.sub_revision);
        if version.mod_revision < 1 || version.sub_revision < 0 {
            return Err(EncodeError::InvalidRevision {
                revision: version.mod_revision,
                sub: version.sub_revision,
            });
        }
        if let Some(previous) = previous {
            if position <= previous {
                return Err(EncodeError::RevisionOrder {
                    previous,
                    next: position,
                });
            }
        }
        if version.key.is_empty() {
            return Err(EncodeError::EmptyKey {
                revision: version.mod_revision,
            });
        }
        previous = Some(position);
        let (put_key, tombstone_key);
        let key: &[u8] = if version.value.is_some() {
            put_key = revision_key(version.mod_revision, version.sub_revision);
            &put_key
        } else {
            tombstone_key = tombstone_revision_key(version.mod_revision, version.sub_revision);
            &tombstone_key
        };
        key_value_bytes(&version, &mut value);
        bucket.put(db, hasher, key, &value)?;
        count += 1;
    }
    Ok((count, previous.map_or(0, |p| p.0)))
}

// ---- Reading ---------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the database has no {} bucket", String::from_utf8_lossy(.0))]
    MissingBucket(&'static [u8]),
    #[error("bucket {} entry {}: {reason}", String::from_utf8_lossy(.bucket), hex(.key))]
    BadEntry {
        bucket: &'static [u8],
        key: Bytes,
        reason: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bad(bucket: &'static [u8], entry: &Entry, reason: impl Into<String>) -> DecodeError {
    DecodeError::BadEntry {
        bucket,
        key: entry.key.clone(),
        reason: reason.into(),
    }
}

/// An etcd backend database opened for reading.
pub struct Backend<S> {
    db: Db<S>,
}

impl<S: Source> Backend<S> {
    /// Opens the database; it must have etcd's `key` and `meta` buckets (the others
    /// count as empty when absent).
    pub fn open(source: S) -> Result<Backend<S>, DecodeError> {
        let backend = Backend {
            db: Db::open(source)?,
        };
        for required in [BUCKET_KEY, BUCKET_META] {
            if backend.bucket(required)?.is_none() {
                return Err(DecodeError::MissingBucket(required));
            }
        }
        Ok(backend)
    }

    pub fn db(&self) -> &Db<S> {
        &self.db
    }

    fn bucket(&self, name: &'static [u8]) -> Result<Option<BucketRef>, DecodeError> {
        Ok(self.db.bucket(&self.db.root(), name)?)
    }

    /// Every plain entry of a top-level bucket (none when the bucket is absent; a nested
    /// bucket inside it is damage: etcd has none).
    fn entries(
        &self,
        name: &'static [u8],
    ) -> Result<impl Iterator<Item = Result<Entry, DecodeError>> + '_, DecodeError> {
        let cursor = self.bucket(name)?.map(|bucket| self.db.cursor(&bucket));
        Ok(cursor.into_iter().flatten().map(move |entry| {
            let entry = entry?;
            if entry.is_bucket {
                return Err(bad(name, &entry, "a nested bucket"));
            }
            Ok(entry)
        }))
    }

    pub fn meta(&self) -> Result<BackendMeta, DecodeError> {
        let mut meta = BackendMeta::default();
        for entry in self.entries(BUCKET_META)? {
            let entry = entry?;
            let compact_revision = |entry: &Entry| match parse_revision_key(&entry.value) {
                Some((main, _, false)) => Ok(main),
                _ => Err(bad(BUCKET_META, entry, "not a revision")),
            };
            match entry.key.as_ref() {
                META_CONSISTENT_INDEX => {
                    let bytes: [u8; 8] = entry
                        .value
                        .as_ref()
                        .try_into()
                        .map_err(|_| bad(BUCKET_META, &entry, "not 8 bytes"))?;
                    meta.consistent_index = u64::from_be_bytes(bytes);
                }
                META_SCHEDULED_COMPACT_REVISION => {
                    meta.scheduled_compact_revision = Some(compact_revision(&entry)?);
                }
                META_FINISHED_COMPACT_REVISION => {
                    meta.finished_compact_revision = Some(compact_revision(&entry)?);
                }
                // Later etcd versions add keys (term, confState): not ours to judge.
                _ => {}
            }
        }
        for entry in self.entries(BUCKET_CLUSTER)? {
            let entry = entry?;
            if entry.key.as_ref() == CLUSTER_VERSION {
                let version = std::str::from_utf8(&entry.value)
                    .map_err(|_| bad(BUCKET_CLUSTER, &entry, "not UTF-8"))?;
                meta.cluster_version = Some(version.to_string());
            }
        }
        Ok(meta)
    }

    pub fn leases(&self) -> Result<Vec<Lease>, DecodeError> {
        let mut leases = Vec::new();
        for entry in self.entries(BUCKET_LEASE)? {
            let entry = entry?;
            let id_bytes: [u8; 8] = entry
                .key
                .as_ref()
                .try_into()
                .map_err(|_| bad(BUCKET_LEASE, &entry, "key is not an 8-byte lease ID"))?;
            let record = leasepb::Lease::decode(entry.value.clone())
                .map_err(|e| bad(BUCKET_LEASE, &entry, e.to_string()))?;
            if record.id != i64::from_be_bytes(id_bytes) {
                return Err(bad(
                    BUCKET_LEASE,
                    &entry,
                    format!("holds lease {:x}", record.id),
                ));
            }
            leases.push(Lease {
                id: record.id,
                ttl: record.ttl,
                remaining_ttl: record.remaining_ttl,
            });
        }
        Ok(leases)
    }

    /// The members and the IDs of removed members.
    pub fn members(&self) -> Result<(Vec<Member>, Vec<u64>), DecodeError> {
        let mut members = Vec::new();
        for entry in self.entries(BUCKET_MEMBERS)? {
            let entry = entry?;
            let member = parse_member(&entry.value).map_err(|e| bad(BUCKET_MEMBERS, &entry, e))?;
            if member_key(member.id).as_bytes() != entry.key.as_ref() {
                return Err(bad(
                    BUCKET_MEMBERS,
                    &entry,
                    format!("holds member {:x}", member.id),
                ));
            }
            members.push(member);
        }
        let mut removed = Vec::new();
        for entry in self.entries(BUCKET_MEMBERS_REMOVED)? {
            let entry = entry?;
            let id = std::str::from_utf8(&entry.key)
                .ok()
                .and_then(|key| u64::from_str_radix(key, 16).ok())
                .ok_or_else(|| bad(BUCKET_MEMBERS_REMOVED, &entry, "key is not a hex member ID"))?;
            removed.push(id);
        }
        Ok((members, removed))
    }

    pub fn alarms(&self) -> Result<Vec<AlarmMember>, DecodeError> {
        let mut alarms = Vec::new();
        for entry in self.entries(BUCKET_ALARM)? {
            let entry = entry?;
            let alarm = AlarmMember::decode(entry.key.clone())
                .map_err(|e| bad(BUCKET_ALARM, &entry, e.to_string()))?;
            alarms.push(alarm);
        }
        Ok(alarms)
    }

    pub fn auth(&self) -> Result<AuthData, DecodeError> {
        let mut auth = AuthData::default();
        for entry in self.entries(BUCKET_AUTH)? {
            let entry = entry?;
            match entry.key.as_ref() {
                AUTH_ENABLED => {
                    auth.enabled = Some(entry.value.first() == Some(&1));
                }
                AUTH_REVISION => {
                    let bytes: [u8; 8] = entry
                        .value
                        .as_ref()
                        .try_into()
                        .map_err(|_| bad(BUCKET_AUTH, &entry, "not 8 bytes"))?;
                    auth.revision = Some(u64::from_be_bytes(bytes));
                }
                _ => {}
            }
        }
        for entry in self.entries(BUCKET_AUTH_USERS)? {
            let entry = entry?;
            rivet_api::authpb::User::decode(entry.value.clone())
                .map_err(|e| bad(BUCKET_AUTH_USERS, &entry, e.to_string()))?;
            auth.users.push(AuthRecord {
                name: entry.key,
                value: entry.value,
            });
        }
        for entry in self.entries(BUCKET_AUTH_ROLES)? {
            let entry = entry?;
            rivet_api::authpb::Role::decode(entry.value.clone())
                .map_err(|e| bad(BUCKET_AUTH_ROLES, &entry, e.to_string()))?;
            auth.roles.push(AuthRecord {
                name: entry.key,
                value: entry.value,
            });
        }
        Ok(auth)
    }

    /// Everything but the key versions.
    pub fn state(&self) -> Result<BackendState, DecodeError> {
        let (members, removed_members) = self.members()?;
        Ok(BackendState {
            meta: self.meta()?,
            leases: self.leases()?,
            members,
            removed_members,
            alarms: self.alarms()?,
            auth: self.auth()?,
        })
    }

    /// The key versions in revision order, read page by page.
    pub fn key_versions(&self) -> Result<KeyVersions<'_, S>, DecodeError> {
        let bucket = self
            .bucket(BUCKET_KEY)?
            .ok_or(DecodeError::MissingBucket(BUCKET_KEY))?;
        Ok(KeyVersions {
            cursor: self.db.cursor(&bucket),
        })
    }

    /// What `etcdctl snapshot status` reports: bbolt's consistency check first (its
    /// problems are returned as `Err(Inconsistent)`), then the hash over every top-level
    /// bucket.
    pub fn status(&self) -> Result<Status, StatusError> {
        status(&self.db)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Read(#[from] ReadError),
    /// bbolt's check found problems (etcdctl's message).
    #[error("snapshot file integrity check failed. {} errors found.\n{}", .0.len(), .0.join("\n"))]
    Inconsistent(Vec<String>),
    /// A top-level entry that is not a bucket (etcdctl's message).
    #[error("cannot get hash of bucket {}", String::from_utf8_lossy(.0))]
    NotABucket(Bytes),
    #[error("key bucket entry {} is not a revision", hex(.0))]
    NotARevision(Bytes),
}

/// etcdctl's `snapshot status` on any bbolt database (it needs no etcd bucket).
pub fn status<S: Source>(db: &Db<S>) -> Result<Status, StatusError> {
    let problems = db.check()?;
    if !problems.is_empty() {
        return Err(StatusError::Inconsistent(problems));
    }
    let mut hasher = StatusHasher {
        crc: 0,
        total_keys: 0,
    };
    let mut revision = 0;
    for top in db.cursor(&db.root()) {
        let top = top?;
        if !top.is_bucket {
            return Err(StatusError::NotABucket(top.key));
        }
        let (bucket, _) = BucketRef::from_value(&top.value, top.page)?;
        hasher.bucket_name(&top.key);
        let is_key_bucket = top.key.as_ref() == BUCKET_KEY;
        for entry in db.cursor(&bucket) {
            let entry = entry?;
            // bbolt's ForEach gives a nested bucket's value as nil.
            let value: &[u8] = if entry.is_bucket { &[] } else { &entry.value };
            hasher.entry(&entry.key, value);
            if is_key_bucket {
                let main = entry
                    .key
                    .get(..REVISION_MAIN_SIZE)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .filter(|_| entry.key.len() >= REVISION_BYTES)
                    .ok_or_else(|| StatusError::NotARevision(entry.key.clone()))?;
                revision = i64::from_be_bytes(main);
            }
        }
    }
    Ok(Status {
        hash: hasher.crc,
        revision,
        total_keys: hasher.total_keys,
        total_size: db.size(),
    })
}

/// The `key` bucket as [`KeyVersion`]s, checked: revision keys well formed, values that
/// decode, a put's `mod_revision` equal to its revision.
pub struct KeyVersions<'a, S> {
    cursor: Cursor<'a, S>,
}

impl<S: Source> Iterator for KeyVersions<'_, S> {
    type Item = Result<KeyVersion, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = match self.cursor.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e.into())),
        };
        Some(decode_key_version(&entry))
    }
}

fn decode_key_version(entry: &Entry) -> Result<KeyVersion, DecodeError> {
    if entry.is_bucket {
        return Err(bad(BUCKET_KEY, entry, "a nested bucket"));
    }
    let (main, sub, tombstone) = parse_revision_key(&entry.key)
        .ok_or_else(|| bad(BUCKET_KEY, entry, "not a revision key"))?;
    let kv =
        KeyValue::decode(entry.value.clone()).map_err(|e| bad(BUCKET_KEY, entry, e.to_string()))?;
    if kv.key.is_empty() {
        return Err(bad(BUCKET_KEY, entry, "empty key"));
    }
    if tombstone {
        return Ok(KeyVersion {
            key: kv.key,
            mod_revision: main,
            sub_revision: sub,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: None,
        });
    }
    if kv.mod_revision != main {
        return Err(bad(
            BUCKET_KEY,
            entry,
            format!("holds mod_revision {}", kv.mod_revision),
        ));
    }
    Ok(KeyVersion {
        key: kv.key,
        mod_revision: main,
        sub_revision: sub,
        create_revision: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
        value: Some(kv.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip() {
        let key = revision_key(0x0102, 3);
        assert_eq!(&key, b"\0\0\0\0\0\0\x01\x02_\0\0\0\0\0\0\0\x03");
        assert_eq!(parse_revision_key(&key), Some((0x0102, 3, false)));
        let tombstone = tombstone_revision_key(0x0102, 3);
        assert_eq!(parse_revision_key(&tombstone), Some((0x0102, 3, true)));
        assert_eq!(parse_revision_key(b"short"), None);
    }

    #[test]
    fn member_json_is_gos() {
        let member = Member {
            id: 13_668_033_151_171_901_709,
            name: "default".into(),
            peer_urls: vec!["http://127.0.0.1:23801".into()],
            client_urls: vec!["http://a<b>&c".into()],
            is_learner: false,
        };
        assert_eq!(
            member_json(&member),
            "{\"id\":13668033151171901709,\"peerURLs\":[\"http://127.0.0.1:23801\"],\
             \"name\":\"default\",\"clientURLs\":[\"http://a\\u003cb\\u003e\\u0026c\"]}"
        );
        let back = parse_member(member_json(&member).as_bytes()).expect("parse");
        assert_eq!(back, member);
        let learner = Member {
            id: 1,
            peer_urls: vec!["u".into()],
            is_learner: true,
            ..Member::default()
        };
        assert_eq!(
            member_json(&learner),
            "{\"id\":1,\"peerURLs\":[\"u\"],\"isLearner\":true}"
        );
    }

    #[test]
    fn sub_revisions_count_within_a_revision() {
        let version = |revision| KeyVersion {
            key: Bytes::from_static(b"k"),
            mod_revision: revision,
            sub_revision: 99,
            create_revision: revision,
            version: 1,
            lease: 0,
            value: Some(Bytes::new()),
        };
        let subs: Vec<(i64, i64)> =
            assign_sub_revisions([2, 3, 3, 3, 5].map(|r| Ok::<_, EncodeError>(version(r))))
                .map(|v| v.map(|v| (v.mod_revision, v.sub_revision)).expect("ok"))
                .collect();
        assert_eq!(subs, vec![(2, 0), (3, 0), (3, 1), (3, 2), (5, 0)]);
    }
}
