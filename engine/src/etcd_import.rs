//! A rivet data dir written from etcd's backend (`rivetctl snapshot restore`): the key
//! versions of the `key` bucket go into fresh page files, one per shard, in revision
//! order, each file ending with a checkpoint at raft index 1; the WAL gets its metadata,
//! a checkpoint marker (the revision and compaction, the leases, alarms and the new
//! cluster's members, the raft configuration of its voters) and a hard state at term 1.
//! This is the state a fresh rivet member bootstraps from (`raft::boot`: a snapshot at
//! index 1, term 1, holding the initial voters), so the started member campaigns and
//! serves the snapshot's keys at its revision.
//!
//! Crash-safe: everything is written under `<data-dir>.restoring` (and
//! `<wal-dir>.restoring` for a separate WAL dir) and renamed into place at the end, the
//! WAL first; a restore that stops half-way leaves only the staging dirs, which the next
//! restore removes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState};
use rivet_api::rivetpb::{
    AuthStoreState, CheckpointMarker, LeaseRecord, Member, Membership, WalMetadata,
};
use rivet_wal::{Wal, WalOptions};

use crate::etcd_backend::schema::{AuthData, BackendState, KeyVersion};
use crate::keyspace::shard_of;
use crate::layout;
use crate::page::{Checkpoint, KeyRecord, PageFile, PageOptions};

/// The raft index and term the imported state sits at (rivet's bootstrap snapshot).
const IMPORT_INDEX: u64 = 1;
const IMPORT_TERM: u64 = 1;

/// Where the data dir goes and the cluster it starts.
#[derive(Clone, Debug)]
pub struct ImportTarget {
    pub data_dir: PathBuf,
    /// A WAL dir outside the data dir (`--wal-dir`), if any.
    pub wal_dir: Option<PathBuf>,
    pub shard_count: usize,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The new cluster (etcd's restore replaces the snapshot's members with it).
    pub members: Vec<Member>,
    pub page_options: PageOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("page file of shard {shard}: {reason}")]
    Page { shard: usize, reason: String },
    #[error("WAL in {path}: {reason}")]
    Wal { path: String, reason: String },
    #[error("key versions out of revision order: {got} after {previous}")]
    Order { previous: i64, got: i64 },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImportError {
    let path = path.display().to_string();
    move |source| ImportError::Io { what, path, source }
}

/// `path` with `.restoring` appended to its last component.
fn staging(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".restoring");
    path.with_file_name(name)
}

/// Where the imported state sits in raft's log, and what follows it.
#[derive(Clone, Debug, Default)]
pub struct ImportPoint {
    /// The raft index and term of the checkpoint.
    pub index: u64,
    pub term: u64,
    /// Entries after `index` (already in rivet's form), written after the marker.
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    /// Member IDs removed for good.
    pub removed: Vec<u64>,
    /// Files (name, bytes) written into the data dir before it moves into place.
    pub extra_files: Vec<(String, Vec<u8>)>,
}

impl ImportPoint {
    /// rivet's bootstrap point (a snapshot restore starts a new cluster there).
    pub fn bootstrap() -> ImportPoint {
        ImportPoint {
            index: IMPORT_INDEX,
            term: IMPORT_TERM,
            hard_state: HardState {
                term: IMPORT_TERM,
                commit: IMPORT_INDEX,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// etcd's auth buckets as rivet's replicated auth store (the records are the same
/// `authpb.User`/`authpb.Role` bytes; etcd's store starts at revision 1, disabled).
pub fn auth_store_state(auth: &AuthData) -> AuthStoreState {
    let mut users: Vec<_> = auth.users.iter().collect();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut roles: Vec<_> = auth.roles.iter().collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    AuthStoreState {
        enabled: auth.enabled.unwrap_or(false),
        revision: auth.revision.unwrap_or(1),
        users: users.into_iter().map(|u| u.value.clone()).collect(),
        roles: roles.into_iter().map(|r| r.value.clone()).collect(),
    }
}

/// Writes a data dir version by version; [`DataDirWriter::finish`] makes it whole.
pub struct DataDirWriter {
    target: ImportTarget,
    stage: PathBuf,
    files: Vec<PageFile>,
    last_revision: i64,
    versions: u64,
}

impl DataDirWriter {
    /// Starts a data dir in its staging dir (a leftover one is removed first).
    pub fn create(target: ImportTarget) -> Result<DataDirWriter, ImportError> {
        let stage = staging(&target.data_dir);
        if stage.exists() {
            fs::remove_dir_all(&stage).map_err(io_error("removing", &stage))?;
        }
        let snap_dir = layout::snap_dir(&stage);
        let mut files = Vec::with_capacity(target.shard_count);
        for shard in 0..target.shard_count.max(1) {
            let dir = layout::shard_dir(&snap_dir, shard);
            fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
            let (file, _) =
                PageFile::open(&dir, target.page_options, 0, |_, _| {}).map_err(|e| {
                    ImportError::Page {
                        shard,
                        reason: e.to_string(),
                    }
                })?;
            files.push(file);
        }
        Ok(DataDirWriter {
            target,
            stage,
            files,
            last_revision: 0,
            versions: 0,
        })
    }

    /// Adds the next version (in revision order, as etcd's `key` bucket holds them).
    pub fn add(&mut self, version: &KeyVersion) -> Result<(), ImportError> {
        if version.mod_revision < self.last_revision {
            return Err(ImportError::Order {
                previous: self.last_revision,
                got: version.mod_revision,
            });
        }
        self.last_revision = version.mod_revision;
        let shard = shard_of(&version.key, self.files.len());
        let record = KeyRecord {
            key: &version.key,
            create_revision: version.create_revision,
            mod_revision: version.mod_revision,
            version: version.version,
            lease: version.lease,
            value: version.value.as_deref(),
        };
        self.files[shard]
            .append(&record)
            .map_err(|e| ImportError::Page {
                shard,
                reason: e.to_string(),
            })?;
        self.versions += 1;
        Ok(())
    }

    /// Versions added so far.
    pub fn versions(&self) -> u64 {
        self.versions
    }

    /// Checkpoints every page file, writes the WAL and moves the data dir into place.
    /// `revision` is the store's revision (etcd's: the last one in the `key` bucket, or the
    /// compaction if that is later).
    pub fn finish(self, state: &BackendState, revision: i64) -> Result<(), ImportError> {
        self.finish_at(state, revision, ImportPoint::bootstrap())
    }

    /// [`DataDirWriter::finish`] with the checkpoint at `point` and its entries after it.
    pub fn finish_at(
        mut self,
        state: &BackendState,
        revision: i64,
        point: ImportPoint,
    ) -> Result<(), ImportError> {
        let revision = revision.max(1);
        let compact_revision = state
            .meta
            .compact_revision()
            .filter(|&c| c > 0)
            .unwrap_or(-1);
        let checkpoint = Checkpoint {
            applied_index: point.index,
            revision,
            compact_revision,
        };
        for (shard, file) in self.files.iter_mut().enumerate() {
            file.checkpoint(&checkpoint)
                .map_err(|e| ImportError::Page {
                    shard,
                    reason: e.to_string(),
                })?;
        }
        self.files.clear();

        let voters: Vec<u64> = self
            .target
            .members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect();
        let learners: Vec<u64> = self
            .target
            .members
            .iter()
            .filter(|m| m.is_learner)
            .map(|m| m.id)
            .collect();
        let conf_state = ConfState::from((voters, learners));
        let marker = CheckpointMarker {
            auth: Some(auth_store_state(&state.auth)),
            applied_index: point.index,
            term: point.term,
            revision,
            compact_revision,
            conf_state: conf_state
                .write_to_bytes()
                .map_err(|e| ImportError::Wal {
                    path: String::new(),
                    reason: e.to_string(),
                })?
                .into(),
            membership: Some(Membership {
                members: self.target.members.clone(),
                removed: point.removed.clone(),
            }),
            leases: state
                .leases
                .iter()
                .map(|lease| LeaseRecord {
                    id: lease.id,
                    ttl: lease.ttl,
                    remaining_ttl: lease.remaining_ttl,
                })
                .collect(),
            alarms: state.alarms.clone(),
        };
        let wal_stage = match &self.target.wal_dir {
            Some(dir) => staging(dir),
            None => layout::default_wal_dir(&self.stage),
        };
        if wal_stage.exists() {
            fs::remove_dir_all(&wal_stage).map_err(io_error("removing", &wal_stage))?;
        }
        if let Some(parent) = wal_stage.parent() {
            fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
        }
        let wal_error = |reason: String| ImportError::Wal {
            path: wal_stage.display().to_string(),
            reason,
        };
        let metadata = WalMetadata {
            member_id: self.target.member_id,
            cluster_id: self.target.cluster_id,
            shard_count: self.target.shard_count.max(1) as u32,
        };
        let mut wal = Wal::create(
            &wal_stage,
            &prost::Message::encode_to_vec(&metadata),
            WalOptions::default(),
        )
        .map_err(|e| wal_error(e.to_string()))?;
        let mut records = vec![crate::raft::log::marker_record(&marker)];
        records.extend(
            crate::raft::log::ready_records(&point.entries, Some(&point.hard_state))
                .map_err(&wal_error)?,
        );
        let records: Vec<_> = records.iter().map(|r| r.as_record()).collect();
        wal.append(&records).map_err(|e| wal_error(e.to_string()))?;
        drop(wal);

        for (name, bytes) in &point.extra_files {
            let path = self.stage.join(name);
            fs::write(&path, bytes).map_err(io_error("writing", &path))?;
        }
        if let Some(dir) = &self.target.wal_dir {
            fs::rename(&wal_stage, dir).map_err(io_error("moving the WAL to", dir))?;
        }
        let data_dir = &self.target.data_dir;
        if data_dir.exists() {
            // An empty dir (the restore refuses any other).
            fs::remove_dir(data_dir).map_err(io_error("replacing", data_dir))?;
        }
        fs::rename(&self.stage, data_dir).map_err(io_error("moving the data dir to", data_dir))?;
        if let Some(parent) = data_dir.parent() {
            if let Ok(dir) = fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}
