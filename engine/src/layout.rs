//! Where a member keeps its files: etcd's data-dir layout (`member/wal`, `member/snap`)
//! with rivet's page files inside `member/snap`. The server, the shards and the snapshot
//! code all build their paths here, so the layout is written down once.
//!
//! ```text
//! <data-dir>/member/wal/                       the WAL (or --wal-dir)
//! <data-dir>/member/snap/shard-<i>/            shard i's page file segments
//! <data-dir>/member/snap/incoming-<index>/shard-<i>/
//!                                              a raft snapshot at <index> being installed
//! ```

use std::path::{Path, PathBuf};

/// The WAL directory when `--wal-dir` is not given.
pub fn default_wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

/// The directory of the shards' page files and of snapshots being installed.
pub fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

/// Shard `shard`'s page file directory.
pub fn shard_dir(snap_dir: &Path, shard: usize) -> PathBuf {
    snap_dir.join(format!("shard-{shard}"))
}

/// Where a snapshot at `index` is staged before it replaces the shards' page files.
pub fn incoming_dir(snap_dir: &Path, index: u64) -> PathBuf {
    snap_dir.join(format!("{INCOMING_PREFIX}{index}"))
}

/// Where shard `shard` of a snapshot at `index` is staged.
pub fn staged_shard_dir(snap_dir: &Path, index: u64, shard: usize) -> PathBuf {
    incoming_dir(snap_dir, index).join(format!("shard-{shard}"))
}

/// The snapshot index of a directory named by [`incoming_dir`], or `None` for any other
/// name.
pub fn incoming_index(name: &str) -> Option<u64> {
    name.strip_prefix(INCOMING_PREFIX)?.parse().ok()
}

const INCOMING_PREFIX: &str = "incoming-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_dirs_name_their_index() {
        let snap = snap_dir(Path::new("/data"));
        assert_eq!(snap, Path::new("/data/member/snap"));
        let staged = staged_shard_dir(&snap, 42, 3);
        assert_eq!(staged, Path::new("/data/member/snap/incoming-42/shard-3"));
        let name = incoming_dir(&snap, 42);
        let name = name.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(incoming_index(name), Some(42));
        assert_eq!(incoming_index("shard-1"), None);
        assert_eq!(incoming_index("incoming-x"), None);
    }
}
