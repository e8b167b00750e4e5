//! `rivetctl snapshot …`: etcd snapshot files, read and checked as etcdctl 3.4 does.
//!
//! * [`status_output`]: `snapshot status` — hash, revision, total keys and total size,
//!   computed and printed exactly as etcdctl computes and prints them.
//! * [`restore`]: `snapshot restore` — checks the flags as etcdctl does, decodes the
//!   snapshot into rivet-side structures ([`rivet_engine::etcd_backend::schema`]) and
//!   validates it, streaming the key versions to a sink; [`restore_data_dir`] is that
//!   sink writing a rivet data dir ([`rivet_engine::etcd_import`]).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use rivet_engine::etcd_backend::schema::{BackendState, DecodeError, KeyVersion, Status};
use rivet_engine::etcd_backend::snapshot_file::{open_snapshot, SnapshotOpenError};

// ---- status ----------------------------------------------------------------------

/// etcdctl's `-w` formats for `snapshot status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOut {
    Simple,
    Table,
    Json,
    Fields,
}

/// Why a `-w` value is refused, with etcdctl's message (it exits with code 4,
/// `ExitBadFeature`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteOutError {
    #[error("protobuf not supported as output format")]
    Protobuf,
    #[error("unsupported output format")]
    Unsupported,
}

impl WriteOut {
    pub fn parse(value: &str) -> Result<WriteOut, WriteOutError> {
        match value {
            "simple" => Ok(WriteOut::Simple),
            "table" => Ok(WriteOut::Table),
            "json" => Ok(WriteOut::Json),
            "fields" => Ok(WriteOut::Fields),
            "protobuf" => Err(WriteOutError::Protobuf),
            _ => Err(WriteOutError::Unsupported),
        }
    }
}

/// What etcdctl prints for a snapshot's status, newline included.
pub fn status_output(status: &Status, format: WriteOut) -> String {
    let row = [
        format!("{:x}", status.hash),
        status.revision.to_string(),
        status.total_keys.to_string(),
        humanize_bytes(status.total_size),
    ];
    match format {
        WriteOut::Simple => format!("{}\n", row.join(", ")),
        WriteOut::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            status.hash, status.revision, status.total_keys, status.total_size
        ),
        WriteOut::Fields => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            status.hash, status.revision, status.total_keys, status.total_size
        ),
        WriteOut::Table => table(&["hash", "revision", "total keys", "total size"], &row),
    }
}

/// etcdctl's table (olekukonko/tablewriter as etcdctl sets it up): headers upper-cased
/// and centred, cells right-aligned, one space of padding.
fn table(headers: &[&str], row: &[String]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, c)| h.chars().count().max(c.chars().count()))
        .collect();
    let border: String = widths.iter().fold("+".to_string(), |mut line, width| {
        line.push_str(&"-".repeat(width + 2));
        line.push('+');
        line
    });
    let mut out = String::new();
    out.push_str(&border);
    out.push('\n');
    out.push('|');
    for (header, width) in headers.iter().zip(&widths) {
        let gap = width - header.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            header,
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&border);
    out.push('\n');
    out.push('|');
    for (cell, width) in row.iter().zip(&widths) {
        out.push_str(&format!(" {cell:>width$} |"));
    }
    out.push('\n');
    out.push_str(&border);
    out.push('\n');
    out
}

/// go-humanize's `Bytes`: SI units (1000), one decimal below 10, none from 10 up, and
/// Go's `%.Nf` rounding (round half to even on the exact binary value, as Rust's).
pub fn humanize_bytes(bytes: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let value = bytes as f64;
    let exponent = (value.ln() / 1000f64.ln()).floor();
    let suffix = SIZES
        .get(exponent as usize)
        .copied()
        .unwrap_or(SIZES[SIZES.len() - 1]);
    let scaled = (value / 1000f64.powf(exponent) * 10.0 + 0.5).floor() / 10.0;
    if scaled < 10.0 {
        format!("{scaled:.1} {suffix}")
    } else {
        format!("{scaled:.0} {suffix}")
    }
}

// ---- restore ---------------------------------------------------------------------

/// `snapshot restore`'s flags (etcdctl 3.4's names and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    pub snapshot: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            snapshot: PathBuf::new(),
            data_dir: None,
            wal_dir: None,
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: "http://localhost:2380".into(),
            skip_hash_check: false,
        }
    }
}

/// The member table a restore starts the new cluster with: `--initial-cluster` parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster {
    /// Name → peer URLs, in `--initial-cluster` order of first appearance.
    pub members: Vec<(String, Vec<String>)>,
}

/// A refused restore. Messages are etcdctl's where etcdctl has one.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Flags(String),
    /// etcdctl 3.4 refuses any existing data dir, even an empty one.
    #[error("data-dir {0:?} exists")]
    DataDirNotEmpty(String),
    #[error("wal-dir {0:?} exists")]
    WalDirExists(String),
    #[error(transparent)]
    Open(#[from] SnapshotOpenError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
    #[error("the key version sink failed: {0}")]
    Sink(String),
}

/// What a validated snapshot holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestoreSummary {
    pub data_dir: PathBuf,
    pub wal_dir: PathBuf,
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub state: BackendState,
    /// Versions in the `key` bucket: puts and tombstones.
    pub puts: u64,
    pub tombstones: u64,
    /// The store's revision after the restore, as etcd computes it on start: the last
    /// revision in the `key` bucket, or the compaction revision if that is higher.
    pub revision: i64,
    /// Keys attached to a lease the lease bucket lacks (etcd logs a warning and keeps
    /// the key with its lease ID).
    pub keys_with_missing_lease: u64,
    /// Whether the SHA-256 trailer was checked.
    pub hash_checked: bool,
}

/// Parses `--initial-cluster` (`name=url,name=url`) as etcd's `types.NewURLsMap`.
pub fn parse_initial_cluster(value: &str) -> Result<InitialCluster, RestoreError> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for pair in value.split(',').filter(|p| !p.is_empty()) {
        let Some((name, url)) = pair.split_once('=') else {
            return Err(RestoreError::Flags(format!(
                "parse error: {pair:?} is not a name=url pair"
            )));
        };
        check_url(url)?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(InitialCluster { members })
}

fn check_url(url: &str) -> Result<(), RestoreError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("unix://"))
        .or_else(|| url.strip_prefix("unixs://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('/') => Ok(()),
        Some(_) => Err(RestoreError::Flags(format!(
            "URL must not contain a path: {url}"
        ))),
        None => Err(RestoreError::Flags(format!(
            "URL scheme must be http, https, unix, or unixs: {url}"
        ))),
    }
}

/// `rivetctl snapshot restore` up to the data dir: checks the flags as etcdctl does
/// (`--name` in `--initial-cluster` with exactly `--initial-advertise-peer-urls`, no
/// data dir yet), opens the snapshot (trailer checked unless `--skip-hash-check`),
/// decodes and validates everything, and hands every key version, in revision order, to
/// `sink`. Memory: the small buckets plus one page per tree level; the key versions are
/// never all held.
pub fn restore(
    options: &RestoreOptions,
    mut sink: impl FnMut(KeyVersion) -> Result<(), String>,
) -> Result<RestoreSummary, RestoreError> {
    let cluster = parse_initial_cluster(&options.initial_cluster)?;
    let advertised: Vec<String> = options
        .initial_advertise_peer_urls
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    for url in &advertised {
        check_url(url)?;
    }
    let mine = cluster
        .members
        .iter()
        .find(|(name, _)| *name == options.name);
    match mine {
        None => {
            return Err(RestoreError::Flags(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                options.name
            )))
        }
        Some((_, urls)) => {
            let mut listed = urls.clone();
            let mut given = advertised.clone();
            listed.sort();
            given.sort();
            if listed != given {
                return Err(RestoreError::Flags(format!(
                    "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (\"{}\"(resolved from {:?}) != \"{}\"(resolved from {:?}))",
                    options.name,
                    urls.join(","),
                    advertised.join(","),
                    given.join(","),
                    given,
                    listed.join(","),
                    listed
                )));
            }
        }
    }
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", options.name)));
    if data_dir.exists() {
        return Err(RestoreError::DataDirNotEmpty(
            data_dir.display().to_string(),
        ));
    }
    let wal_dir = match &options.wal_dir {
        Some(dir) if dir.exists() => {
            return Err(RestoreError::WalDirExists(dir.display().to_string()))
        }
        Some(dir) => dir.clone(),
        None => data_dir.join("member").join("wal"),
    };

    let opened = open_snapshot(&options.snapshot, options.skip_hash_check)?;
    let backend = &opened.backend;
    let state = backend.state()?;
    let leases: HashSet<i64> = state.leases.iter().map(|l| l.id).collect();
    let mut summary = RestoreSummary {
        data_dir,
        wal_dir,
        initial_cluster: cluster.members,
        hash_checked: opened.hash_checked,
        ..RestoreSummary::default()
    };
    for version in backend.key_versions()? {
        let version = version?;
        check_version(&version)?;
        if version.value.is_some() {
            summary.puts += 1;
            if version.lease != 0 && !leases.contains(&version.lease) {
                summary.keys_with_missing_lease += 1;
            }
        } else {
            summary.tombstones += 1;
        }
        summary.revision = version.mod_revision;
        sink(version).map_err(RestoreError::Sink)?;
    }
    let compacted = state.meta.compact_revision().unwrap_or(0);
    summary.revision = summary.revision.max(compacted);
    if let (Some(finished), Some(scheduled)) = (
        state.meta.finished_compact_revision,
        state.meta.scheduled_compact_revision,
    ) {
        if finished > scheduled {
            return Err(RestoreError::Invalid(format!(
                "finished compaction {finished} is past the scheduled one {scheduled}"
            )));
        }
    }
    let mut member_ids = BTreeMap::new();
    for member in &state.members {
        if member_ids.insert(member.id, ()).is_some() {
            return Err(RestoreError::Invalid(format!(
                "member {:x} listed twice",
                member.id
            )));
        }
    }
    summary.state = state;
    Ok(summary)
}

/// `snapshot restore`: validates the snapshot as [`restore`] does and writes a rivet data
/// dir with `shard_count` shards from it (the new cluster of `--initial-cluster`, with
/// etcd's member and cluster IDs, so that rivet started with the same flags takes it).
pub fn restore_data_dir(
    options: &RestoreOptions,
    shard_count: usize,
) -> Result<RestoreSummary, RestoreError> {
    use rivet_engine::etcd_import::{DataDirWriter, ImportTarget};
    use rivet_engine::identity;
    // The flags and the data dir are checked before anything is written.
    let cluster = parse_initial_cluster(&options.initial_cluster)?;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", options.name)));
    let token = &options.initial_cluster_token;
    let members: Vec<rivet_api::rivetpb::Member> = cluster
        .members
        .iter()
        .map(|(name, urls)| rivet_api::rivetpb::Member {
            id: identity::member_id(urls, token),
            name: name.clone(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect();
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let member_id = members
        .iter()
        .find(|m| m.name == options.name)
        .map_or(0, |m| m.id);
    let target = ImportTarget {
        data_dir: data_dir.clone(),
        wal_dir: options.wal_dir.clone(),
        shard_count: shard_count.max(1),
        member_id,
        cluster_id: identity::cluster_id(&ids),
        members,
        page_options: rivet_engine::page::PageOptions::default(),
    };
    // restore() checks the flags and the dir, then opens the snapshot, then streams the
    // versions: the staging dir is made at the first version (or at the end).
    let mut writer: Option<DataDirWriter> = None;
    let summary = restore(options, |version| {
        let w = match &mut writer {
            Some(w) => w,
            None => {
                writer.insert(DataDirWriter::create(target.clone()).map_err(|e| e.to_string())?)
            }
        };
        w.add(&version).map_err(|e| e.to_string())
    })?;
    let writer = match writer {
        Some(w) => w,
        None => DataDirWriter::create(target).map_err(|e| RestoreError::Sink(e.to_string()))?,
    };
    writer
        .finish(&summary.state, summary.revision)
        .map_err(|e| RestoreError::Sink(e.to_string()))?;
    Ok(summary)
}

/// Checks one version on its own (a per-key history check would need every key in
/// memory): a put was created at or before it, versions count from 1, and a version of
/// 1 is the creation.
fn check_version(version: &KeyVersion) -> Result<(), RestoreError> {
    if version.value.is_none() {
        return Ok(());
    }
    let fail = |why: &str| {
        Err(RestoreError::Invalid(format!(
            "key {:?} at revision {}: {why} (create revision {}, version {})",
            String::from_utf8_lossy(&version.key),
            version.mod_revision,
            version.create_revision,
            version.version
        )))
    };
    if version.create_revision < 1 || version.create_revision > version.mod_revision {
        return fail("create revision outside 1..=mod revision");
    }
    if version.version < 1 {
        return fail("version below 1");
    }
    if (version.version == 1) != (version.create_revision == version.mod_revision) {
        return fail("version 1 must be the creation and only it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_matches_go_humanize() {
        // Values checked against etcdctl's output and go-humanize's rules.
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(10), "10 B");
        assert_eq!(humanize_bytes(999), "999 B");
        assert_eq!(humanize_bytes(1000), "1.0 kB");
        assert_eq!(humanize_bytes(8192), "8.2 kB");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(24576), "25 kB");
        assert_eq!(humanize_bytes(1_048_576), "1.0 MB");
        assert_eq!(humanize_bytes(300_000_000), "300 MB");
    }

    #[test]
    fn table_is_etcdctls() {
        let status = Status {
            hash: 0xbd70_aa08,
            revision: 15,
            total_keys: 22,
            total_size: 20480,
        };
        assert_eq!(
            status_output(&status, WriteOut::Table),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | bd70aa08 |       15 |         22 |      20 kB |\n\
             +----------+----------+------------+------------+\n"
        );
        assert_eq!(
            status_output(&status, WriteOut::Simple),
            "bd70aa08, 15, 22, 20 kB\n"
        );
        assert_eq!(
            status_output(&status, WriteOut::Json),
            "{\"hash\":3178277384,\"revision\":15,\"totalKey\":22,\"totalSize\":20480}\n"
        );
    }

    #[test]
    fn initial_cluster_parses() {
        let cluster = parse_initial_cluster("a=http://h:1,b=http://h:2,a=http://h:3").expect("ok");
        assert_eq!(
            cluster.members,
            vec![
                (
                    "a".to_string(),
                    vec!["http://h:1".to_string(), "http://h:3".to_string()]
                ),
                ("b".to_string(), vec!["http://h:2".to_string()])
            ]
        );
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=ftp://x").is_err());
    }
}
