//! Raft snapshots of rivet's state, for followers that fell behind the leader's log and
//! for new members.
//!
//! A snapshot is the raft snapshot metadata (index, term, configuration) with a
//! [`SnapshotInfo`] in its `data` (revision, compaction, membership), plus a stream of page
//! records — every version every shard retains up to that revision — encoded exactly as in
//! the page files (`docs/format/page.md`), so the decoder is the page decoder, with its
//! checks and fuzz target. The stream is shard-agnostic: the receiver partitions it with
//! its own shard count.
//!
//! Installing is crash-safe: the receiver writes new page files into
//! `snap/incoming-<index>/shard-<i>/` (`crate::layout`) with a checkpoint at the snapshot's index, then
//! records the checkpoint marker in the WAL, then swaps the directories in. A restart after
//! the WAL marker finishes the swap ([`finish_install`]); one before it removes the
//! staged files.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use crate::keyspace::{shard_of, Head};
use crate::layout::{incoming_dir, incoming_index, shard_dir, staged_shard_dir};
use crate::page::{self, Checkpoint, PageFile, PageOptions, Record};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot data is damaged at byte {offset}: {reason}")]
    Damaged { offset: usize, reason: String },
    #[error("staging the snapshot in {dir}: {reason}")]
    Stage { dir: String, reason: String },
}

/// Walks the records of a snapshot stream, checking every record.
pub fn for_each_record(
    data: &[u8],
    mut each: impl FnMut(page::RecordView<'_>),
) -> Result<usize, SnapshotError> {
    let mut count = 0;
    for item in page::decode_records(data) {
        match item {
            Ok((_, Record::Key(view))) => {
                each(view);
                count += 1;
            }
            Ok((offset, Record::Checkpoint(_))) => {
                return Err(SnapshotError::Damaged {
                    offset,
                    reason: "a checkpoint record inside snapshot data".into(),
                })
            }
            Err(e) => {
                return Err(SnapshotError::Damaged {
                    offset: 0,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(count)
}

/// The newest live version of every key in a snapshot stream: the sequencer's state.
///
/// Also checks what the page decoder cannot: every record's revision is positive, a
/// put's key is not empty, and each key's versions come in increasing revision order (as
/// a shard exports them). The staged shards index these records when they open; a
/// snapshot that breaks these rules is refused here, before anything is written.
pub fn heads(data: &[u8]) -> Result<Vec<(Bytes, Head)>, SnapshotError> {
    // key → (newest revision seen, its head if that version is live)
    let mut heads: BTreeMap<Bytes, (i64, Option<Head>)> = BTreeMap::new();
    let mut problem = None;
    let records = for_each_record(data, |view| {
        if problem.is_some() {
            return;
        }
        let key = Bytes::copy_from_slice(view.key);
        if view.mod_revision <= 0 || (view.value.is_some() && key.is_empty()) {
            problem = Some(format!(
                "key {key:?} at revision {}: empty key or revision not positive",
                view.mod_revision
            ));
            return;
        }
        if let Some((newest, _)) = heads.get(&key) {
            if *newest >= view.mod_revision {
                problem = Some(format!(
                    "key {key:?}: revision {} after revision {newest}",
                    view.mod_revision
                ));
                return;
            }
        }
        let head = view.value.map(|value| Head {
            create_revision: view.create_revision,
            mod_revision: view.mod_revision,
            version: view.version,
            lease: view.lease,
            value: Bytes::copy_from_slice(value),
        });
        heads.insert(key, (view.mod_revision, head));
    })?;
    if let Some(reason) = problem {
        return Err(SnapshotError::Damaged {
            offset: 0,
            reason: format!("{reason} (of {records} records)"),
        });
    }
    Ok(heads
        .into_iter()
        .filter_map(|(key, (_, head))| head.map(|h| (key, h)))
        .collect())
}

/// Writes the snapshot's records into fresh page files, one per local shard, each with a
/// durable checkpoint at the snapshot's index.
pub fn stage(
    snap_dir: &Path,
    data: &[u8],
    shard_count: usize,
    checkpoint: &Checkpoint,
    options: PageOptions,
) -> Result<(), SnapshotError> {
    let incoming = incoming_dir(snap_dir, checkpoint.applied_index);
    let stage_error = |reason: String| SnapshotError::Stage {
        dir: incoming.display().to_string(),
        reason,
    };
    if incoming.exists() {
        std::fs::remove_dir_all(&incoming).map_err(|e| stage_error(e.to_string()))?;
    }
    let mut files = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let dir = staged_shard_dir(snap_dir, checkpoint.applied_index, shard);
        std::fs::create_dir_all(&dir).map_err(|e| stage_error(e.to_string()))?;
        let (file, _) =
            PageFile::open(&dir, options, 0, |_, _| {}).map_err(|e| stage_error(e.to_string()))?;
        files.push(file);
    }
    let mut failure = None;
    for_each_record(data, |view| {
        if failure.is_some() {
            return;
        }
        let appended = match files.get_mut(shard_of(view.key, shard_count)) {
            Some(file) => file.append(&view).map(|_| ()).map_err(|e| e.to_string()),
            None => Err(format!(
                "no page file for a key of shard count {shard_count}"
            )),
        };
        if let Err(e) = appended {
            failure = Some(e);
        }
    })?;
    if let Some(reason) = failure {
        return Err(stage_error(reason));
    }
    // etcd's `etcd_snap_db_fsync_duration_seconds`: making the received data durable.
    let syncing = std::time::Instant::now();
    for file in &mut files {
        file.checkpoint(checkpoint)
            .map_err(|e| stage_error(e.to_string()))?;
    }
    crate::metrics::SNAP_DB_FSYNC.observe(syncing.elapsed());
    Ok(())
}

/// Completes or discards a staged install found at start-up: staged files for the
/// checkpoint the WAL names are moved into place; any other staged files are removed.
pub fn finish_install(
    snap_dir: &Path,
    wal_checkpoint_index: u64,
    shard_count: usize,
) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(snap_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = incoming_index(&name) else {
            continue;
        };
        if index == wal_checkpoint_index {
            for shard in 0..shard_count {
                let staged = staged_shard_dir(snap_dir, index, shard);
                if staged.exists() {
                    swap_in(&staged, &shard_dir(snap_dir, shard))?;
                }
            }
            tracing::info!(
                index,
                "finished installing a snapshot staged before a restart"
            );
        }
        std::fs::remove_dir_all(entry.path())?;
    }
    Ok(())
}

/// Replaces `target` with `staged` (the old files go; a mapping of them stays valid until
/// it is dropped).
pub fn swap_in(staged: &Path, target: &Path) -> std::io::Result<()> {
    if target.exists() {
        std::fs::remove_dir_all(target)?;
    }
    std::fs::rename(staged, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::KeyRecord;

    fn record(out: &mut Vec<u8>, key: &str, revision: i64, value: Option<&str>) {
        page::encode_key_record(
            &KeyRecord {
                key: key.as_bytes(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
                value: value.map(str::as_bytes),
            },
            out,
        )
        .expect("encode");
    }

    #[test]
    fn heads_keep_the_newest_live_version() {
        let mut data = Vec::new();
        record(&mut data, "a", 2, Some("1"));
        record(&mut data, "b", 3, Some("x"));
        record(&mut data, "a", 4, Some("2"));
        record(&mut data, "b", 5, None);
        let heads = heads(&data).expect("heads");
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].0, Bytes::from_static(b"a"));
        assert_eq!(heads[0].1.value, Bytes::from_static(b"2"));
    }

    #[test]
    fn stage_then_open_gives_the_records() {
        let dir = tempfile::tempdir().expect("dir");
        let mut data = Vec::new();
        for i in 0..50 {
            record(&mut data, &format!("k{i}"), i + 2, Some("v"));
        }
        let checkpoint = Checkpoint {
            applied_index: 9,
            revision: 51,
            compact_revision: -1,
        };
        stage(dir.path(), &data, 3, &checkpoint, PageOptions::default()).expect("stage");
        finish_install(dir.path(), 9, 3).expect("finish");
        let mut seen = 0;
        for shard in 0..3 {
            let (_, found) = PageFile::open(
                &shard_dir(dir.path(), shard),
                PageOptions::default(),
                9,
                |_, _| seen += 1,
            )
            .expect("open staged shard");
            assert_eq!(found.map(|c| c.revision), Some(51));
        }
        assert_eq!(seen, 50);
        assert!(!dir.path().join("incoming-9").exists());
    }

    /// Records with valid CRCs that a shard's index could not take: refused before
    /// anything is staged (they would fail the shard's open after the swap).
    #[test]
    fn records_the_index_cannot_take_are_refused() {
        let mut empty_key = Vec::new();
        record(&mut empty_key, "", 2, Some("1"));
        let mut zero_revision = Vec::new();
        record(&mut zero_revision, "a", 0, Some("1"));
        let mut backwards = Vec::new();
        record(&mut backwards, "a", 4, Some("1"));
        record(&mut backwards, "a", 3, Some("2"));
        let mut repeated = Vec::new();
        record(&mut repeated, "a", 4, Some("1"));
        record(&mut repeated, "a", 4, None);
        for data in [empty_key, zero_revision, backwards, repeated] {
            assert!(
                matches!(heads(&data), Err(SnapshotError::Damaged { .. })),
                "{:?}",
                heads(&data)
            );
        }
    }

    #[test]
    fn damaged_data_is_refused() {
        let mut data = Vec::new();
        record(&mut data, "a", 2, Some("1"));
        data[10] ^= 0xff;
        assert!(heads(&data).is_err());
    }
}
