//! rivet started on a data dir etcd 3.4 wrote: etcd's backend (`member/snap/db`) and the
//! WAL entries after its consistent index become rivet's own files, in `<data-dir>/rivet`
//! beside etcd's, which stay untouched (the operator can start etcd on them again).
//!
//! The import:
//! - the backend's key versions go into fresh page files, its leases, members (and
//!   removed IDs), alarms and auth store into a checkpoint marker at the backend's
//!   consistent index (with the term etcd's log has for that index) —
//!   [`crate::etcd_import::DataDirWriter`], shared with `rivetctl snapshot restore`;
//! - etcd's WAL ([`crate::etcd_wal`]) gives the entries after that index, each kept at
//!   its etcd index and term, its payload translated to what rivet proposes
//!   ([`translate_entry`]), and etcd's hard state (term, vote, commit): rivet's start
//!   replays the committed ones through its applier, exactly as after its own
//!   checkpoints; members imported from one etcd cluster hold the same log;
//! - the WAL's member and cluster IDs become rivet's (written in [`IDENTITY_FILE`] too,
//!   which marks a finished import).
//!
//! Crash-safe: everything is written under `<data-dir>/rivet.restoring` and renamed to
//! `<data-dir>/rivet` at the end; a start finding only the staging dir imports again.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};
use rivet_api::etcdserverpb as pb;
use rivet_api::rivetpb::{
    auth_request, internal_request, AuthCaller, AuthRequest, ConfChangeContext, InternalRequest,
    MemberAttributes, UserAddHashed, UserChangePasswordHashed,
};

use crate::etcd_backend::bbolt::FileSource;
use crate::etcd_backend::schema::{parse_member, Backend};
use crate::etcd_import::{DataDirWriter, ImportError, ImportPoint, ImportTarget};
use crate::etcd_wal;
use crate::page::PageOptions;

/// rivet's files inside an etcd data dir.
pub const RIVET_DIR: &str = "rivet";
/// Written last into [`RIVET_DIR`]: the member and cluster IDs taken from etcd's WAL.
pub const IDENTITY_FILE: &str = "imported-from-etcd";

/// Whether `data_dir` is a data dir etcd wrote (its backend file exists).
pub fn is_etcd_data_dir(data_dir: &Path) -> bool {
    etcd_backend_path(data_dir).is_file()
}

pub fn etcd_backend_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("db")
}

/// Where rivet keeps its own files in an etcd data dir.
pub fn rivet_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(RIVET_DIR)
}

/// The member and cluster IDs of a finished import, if `rivet_dir` holds one.
pub fn imported_identity(rivet_dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(rivet_dir.join(IDENTITY_FILE)).ok()?;
    let mut member = None;
    let mut cluster = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("member_id=") {
            member = u64::from_str_radix(v.trim(), 16).ok();
        } else if let Some(v) = line.strip_prefix("cluster_id=") {
            cluster = u64::from_str_radix(v.trim(), 16).ok();
        }
    }
    Some((member?, cluster?))
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The backend's consistent index and the term there.
    pub consistent_index: u64,
    pub term: u64,
    /// The revision the backend holds (its last, or its compaction if later).
    pub revision: i64,
    pub versions: u64,
    /// WAL entries after the consistent index, and how many of them are committed.
    pub entries: u64,
    pub committed: u64,
    /// Entries kept as empty entries: v2 store requests and reads (none of them changes
    /// what rivet serves).
    pub skipped: u64,
    pub torn_tail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirImportError {
    #[error("etcd backend {path}: {reason}")]
    Backend { path: String, reason: String },
    #[error(transparent)]
    Wal(#[from] etcd_wal::EtcdWalError),
    #[error("etcd WAL in {0} has no metadata record (member and cluster IDs)")]
    NoMetadata(String),
    #[error("etcd's backend has consistent index {index}, but its WAL {reason}")]
    Gap { index: u64, reason: String },
    #[error("entry {index}: {reason}")]
    Entry { index: u64, reason: String },
    #[error(transparent)]
    Write(#[from] ImportError),
}

/// Imports the etcd data dir `data_dir` (its WAL in `etcd_wal_dir`) into
/// [`rivet_dir`]`(data_dir)`, with `shard_count` shards.
pub fn import(
    data_dir: &Path,
    etcd_wal_dir: &Path,
    shard_count: usize,
    page_options: PageOptions,
) -> Result<ImportSummary, DataDirImportError> {
    let db_path = etcd_backend_path(data_dir);
    let backend_error = |reason: String| DataDirImportError::Backend {
        path: db_path.display().to_string(),
        reason,
    };
    let source = FileSource::open(&db_path).map_err(|e| backend_error(e.to_string()))?;
    let backend = Backend::open(source).map_err(|e| backend_error(e.to_string()))?;
    let state = backend.state().map_err(|e| backend_error(e.to_string()))?;
    let consistent_index = state.meta.consistent_index;

    let log = etcd_wal::read_dir(etcd_wal_dir, consistent_index)?;
    let metadata = log
        .metadata
        .clone()
        .ok_or_else(|| DataDirImportError::NoMetadata(etcd_wal_dir.display().to_string()))?;
    if consistent_index == 0 {
        return Err(DataDirImportError::Gap {
            index: 0,
            reason: "starts before the backend applied anything (start etcd once more and \
                     stop it after a second)"
                .into(),
        });
    }
    let first = log.entries.first().map(|e| e.index);
    if let Some(first) = first {
        if first != consistent_index + 1 {
            return Err(DataDirImportError::Gap {
                index: consistent_index,
                reason: format!("continues only at index {first}"),
            });
        }
    }
    let term = match log.term_at_after {
        Some(term) => term,
        // The entry at the consistent index is in a WAL file etcd already released: the
        // next entry's term (or the hard state's) is the closest the log knows.
        None => log
            .entries
            .first()
            .map(|e| e.term)
            .unwrap_or(log.hard_state.term),
    };
    let last_index = log.entries.last().map_or(consistent_index, |e| e.index);
    let mut hard_state = log.hard_state.clone();
    hard_state.commit = hard_state.commit.clamp(consistent_index, last_index);
    hard_state.term = hard_state.term.max(term);

    let mut summary = ImportSummary {
        member_id: metadata.node_id,
        cluster_id: metadata.cluster_id,
        consistent_index,
        term,
        entries: log.entries.len() as u64,
        committed: hard_state.commit - consistent_index,
        torn_tail: log.torn_tail.clone(),
        ..Default::default()
    };
    let mut entries = Vec::with_capacity(log.entries.len());
    for entry in &log.entries {
        let (translated, skipped) =
            translate_entry(entry).map_err(|reason| DataDirImportError::Entry {
                index: entry.index,
                reason,
            })?;
        summary.skipped += u64::from(skipped);
        entries.push(translated);
    }

    let rivet = rivet_dir(data_dir);
    let target = ImportTarget {
        data_dir: rivet.clone(),
        wal_dir: None,
        shard_count: shard_count.max(1),
        member_id: metadata.node_id,
        cluster_id: metadata.cluster_id,
        members: state.members.clone(),
        page_options,
    };
    let mut writer = DataDirWriter::create(target)?;
    let mut revision = 0;
    for version in backend
        .key_versions()
        .map_err(|e| backend_error(e.to_string()))?
    {
        let version = version.map_err(|e| backend_error(e.to_string()))?;
        revision = version.mod_revision;
        writer.add(&version)?;
    }
    summary.versions = writer.versions();
    let compacted = state.meta.compact_revision().unwrap_or(0);
    summary.revision = revision.max(compacted);
    crate::crash::point("etcd-import-before-finish");
    let identity = format!(
        "member_id={:x}\ncluster_id={:x}\nconsistent_index={}\n",
        metadata.node_id, metadata.cluster_id, consistent_index
    );
    writer.finish_at(
        &state,
        summary.revision,
        ImportPoint {
            index: consistent_index,
            term,
            entries,
            hard_state,
            removed: state.removed_members.clone(),
            extra_files: vec![(IDENTITY_FILE.to_string(), identity.into_bytes())],
        },
    )?;
    Ok(summary)
}

// ---- etcd's entries as rivet's -----------------------------------------------------

/// etcd's `raftpb.ConfChange` (its change types differ from raft-rs's).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdConfChange {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int32, tag = "2")]
    pub change_type: i32,
    #[prost(uint64, tag = "3")]
    pub node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub context: Vec<u8>,
}

const ETCD_ADD_NODE: i32 = 0;
const ETCD_REMOVE_NODE: i32 = 1;
const ETCD_UPDATE_NODE: i32 = 2;
const ETCD_ADD_LEARNER_NODE: i32 = 3;

/// `etcdserverpb.RequestHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdRequestHeader {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub username: String,
    #[prost(uint64, tag = "3")]
    pub auth_revision: u64,
}

/// `etcdserverpb.InternalAuthenticateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdAuthenticate {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub password: String,
    #[prost(string, tag = "3")]
    pub simple_token: String,
}

/// etcd 3.4's `etcdserverpb.Request` (the v2 store's request), the fields rivet reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdV2Request {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(string, tag = "4")]
    pub val: String,
}

/// etcd 3.4's `etcdserverpb.InternalRaftRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EtcdInternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    pub header: Option<EtcdRequestHeader>,
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub v2: Option<EtcdV2Request>,
    #[prost(message, optional, tag = "3")]
    pub range: Option<pb::RangeRequest>,
    #[prost(message, optional, tag = "4")]
    pub put: Option<pb::PutRequest>,
    #[prost(message, optional, tag = "5")]
    pub delete_range: Option<pb::DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    pub txn: Option<pb::TxnRequest>,
    #[prost(message, optional, tag = "7")]
    pub compaction: Option<pb::CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    pub lease_grant: Option<pb::LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    pub lease_revoke: Option<pb::LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    pub alarm: Option<pb::AlarmRequest>,
    #[prost(message, optional, tag = "11")]
    pub lease_checkpoint: Option<pb::LeaseCheckpointRequest>,
    #[prost(message, optional, tag = "1000")]
    pub auth_enable: Option<pb::AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    pub auth_disable: Option<pb::AuthDisableRequest>,
    #[prost(message, optional, tag = "1012")]
    pub authenticate: Option<EtcdAuthenticate>,
    #[prost(message, optional, tag = "1100")]
    pub auth_user_add: Option<pb::AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    pub auth_user_delete: Option<pb::AuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1102")]
    pub auth_user_get: Option<pb::AuthUserGetRequest>,
    #[prost(message, optional, tag = "1103")]
    pub auth_user_change_password: Option<pb::AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    pub auth_user_grant_role: Option<pb::AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    pub auth_user_revoke_role: Option<pb::AuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1106")]
    pub auth_user_list: Option<pb::AuthUserListRequest>,
    #[prost(message, optional, tag = "1107")]
    pub auth_role_list: Option<pb::AuthRoleListRequest>,
    #[prost(message, optional, tag = "1200")]
    pub auth_role_add: Option<pb::AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    pub auth_role_delete: Option<pb::AuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1202")]
    pub auth_role_get: Option<pb::AuthRoleGetRequest>,
    #[prost(message, optional, tag = "1203")]
    pub auth_role_grant_permission: Option<pb::AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    pub auth_role_revoke_permission: Option<pb::AuthRoleRevokePermissionRequest>,
}

/// etcd's entry at the same index and term, its payload as rivet proposes it. The
/// bool says the entry became an empty one (a v2 store request, a read, an
/// Authenticate: nothing rivet serves changes). Errors name entries etcd could not
/// have written.
pub fn translate_entry(entry: &Entry) -> Result<(Entry, bool), String> {
    let mut out = Entry {
        index: entry.index,
        term: entry.term,
        ..Default::default()
    };
    out.set_entry_type(EntryType::EntryNormal);
    match entry.get_entry_type() {
        EntryType::EntryNormal if entry.data.is_empty() => Ok((out, false)),
        EntryType::EntryNormal => match translate_request(&entry.data)? {
            Some(request) => {
                out.data = request.encode_to_vec().into();
                Ok((out, false))
            }
            None => Ok((out, true)),
        },
        EntryType::EntryConfChange => {
            let change = EtcdConfChange::decode(entry.data.as_ref())
                .map_err(|e| format!("undecodable conf change: {e}"))?;
            let member = if change.context.is_empty() {
                None
            } else {
                Some(parse_member(&change.context)?)
            };
            let change_type = match change.change_type {
                ETCD_ADD_NODE => ConfChangeType::AddNode,
                ETCD_ADD_LEARNER_NODE => ConfChangeType::AddLearnerNode,
                ETCD_REMOVE_NODE => ConfChangeType::RemoveNode,
                ETCD_UPDATE_NODE => {
                    // rivet updates peer URLs with an ordinary entry.
                    let member = member.ok_or("an update conf change without a member")?;
                    let request = InternalRequest {
                        request: Some(internal_request::Request::MemberUpdate(member)),
                        ..Default::default()
                    };
                    out.data = request.encode_to_vec().into();
                    return Ok((out, false));
                }
                other => return Err(format!("unknown conf change type {other}")),
            };
            let mut conf_change = ConfChange::default();
            conf_change.set_change_type(change_type);
            conf_change.node_id = change.node_id;
            conf_change.context = ConfChangeContext {
                proposer: 0,
                id: 0,
                member,
            }
            .encode_to_vec()
            .into();
            out.set_entry_type(EntryType::EntryConfChange);
            out.data = conf_change
                .write_to_bytes()
                .map_err(|e| e.to_string())?
                .into();
            Ok((out, false))
        }
        EntryType::EntryConfChangeV2 => Err("etcd 3.4 writes no ConfChangeV2".into()),
    }
}

/// etcd's apply: an `InternalRaftRequest`, else (etcd's "backward compatible" path) a
/// v2 `Request`. `None`: nothing rivet keeps.
fn translate_request(data: &[u8]) -> Result<Option<InternalRequest>, String> {
    use internal_request::Request as R;
    let request = match EtcdInternalRaftRequest::decode(data) {
        Ok(r) => r,
        Err(_) => {
            let v2 = EtcdV2Request::decode(data)
                .map_err(|e| format!("neither an InternalRaftRequest nor a Request: {e}"))?;
            return Ok(translate_v2(&v2));
        }
    };
    let caller = request
        .header
        .as_ref()
        .filter(|h| !h.username.is_empty() || h.auth_revision != 0)
        .map(|h| AuthCaller {
            username: h.username.clone(),
            auth_revision: h.auth_revision,
        });
    let auth = |request: auth_request::Request| {
        Some(InternalRequest {
            request: Some(R::Auth(AuthRequest {
                caller: caller.clone(),
                request: Some(request),
            })),
            ..Default::default()
        })
    };
    let plain = |request: R| {
        Some(InternalRequest {
            request: Some(request),
            caller: caller.clone(),
            ..Default::default()
        })
    };
    use auth_request::Request as A;
    let translated = if let Some(r) = request.put {
        plain(R::Put(r))
    } else if let Some(r) = request.delete_range {
        plain(R::DeleteRange(r))
    } else if let Some(r) = request.txn {
        plain(R::Txn(r))
    } else if let Some(r) = request.compaction {
        plain(R::Compaction(r))
    } else if let Some(r) = request.lease_grant {
        plain(R::LeaseGrant(r))
    } else if let Some(r) = request.lease_revoke {
        plain(R::LeaseRevoke(r))
    } else if let Some(r) = request.lease_checkpoint {
        plain(R::LeaseCheckpoint(r))
    } else if let Some(r) = request.alarm {
        plain(R::Alarm(r))
    } else if let Some(r) = request.auth_enable {
        auth(A::AuthEnable(r))
    } else if let Some(r) = request.auth_disable {
        auth(A::AuthDisable(r))
    } else if let Some(r) = request.auth_user_add {
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let hashed = if no_password {
            Some(Default::default())
        } else {
            // etcd 3.4 hashes when it applies; a password bcrypt refuses failed there.
            crate::auth::password::hash_password(
                r.password.as_bytes(),
                crate::auth::password::BCRYPT_COST_DEFAULT,
            )
            .ok()
        };
        match hashed {
            Some(hashed_password) => auth(A::UserAdd(UserAddHashed {
                name: r.name,
                hashed_password,
                options: r.options,
            })),
            None => None,
        }
    } else if let Some(r) = request.auth_user_change_password {
        match crate::auth::password::hash_password(
            r.password.as_bytes(),
            crate::auth::password::BCRYPT_COST_DEFAULT,
        ) {
            Ok(hashed) => auth(A::UserChangePassword(UserChangePasswordHashed {
                name: r.name,
                hashed_password: hashed,
            })),
            Err(_) => None,
        }
    } else if let Some(r) = request.auth_user_delete {
        auth(A::UserDelete(r))
    } else if let Some(r) = request.auth_user_grant_role {
        auth(A::UserGrantRole(r))
    } else if let Some(r) = request.auth_user_revoke_role {
        auth(A::UserRevokeRole(r))
    } else if let Some(r) = request.auth_role_add {
        auth(A::RoleAdd(r))
    } else if let Some(r) = request.auth_role_delete {
        auth(A::RoleDelete(r))
    } else if let Some(r) = request.auth_role_grant_permission {
        auth(A::RoleGrantPermission(r))
    } else if let Some(r) = request.auth_role_revoke_permission {
        auth(A::RoleRevokePermission(r))
    } else if let Some(v2) = &request.v2 {
        translate_v2(v2)
    } else if request.range.is_some()
        || request.authenticate.is_some()
        || request.auth_user_get.is_some()
        || request.auth_user_list.is_some()
        || request.auth_role_get.is_some()
        || request.auth_role_list.is_some()
    {
        // Reads, and Authenticate: tokens do not outlive the process that issued them.
        None
    } else {
        // Nothing rivet knows decoded: etcd's backward-compatible v2 request.
        match EtcdV2Request::decode(data) {
            Ok(v2) if !v2.method.is_empty() => translate_v2(&v2),
            _ => return Err("an InternalRaftRequest with no request".into()),
        }
    };
    Ok(translated)
}

/// A v2 request: only a member publishing its attributes matters to rivet
/// (`PUT /0/members/<id>/attributes`); the v2 store and the cluster version do not.
fn translate_v2(request: &EtcdV2Request) -> Option<InternalRequest> {
    if request.method != "PUT" {
        return None;
    }
    let id = request
        .path
        .strip_prefix("/0/members/")?
        .strip_suffix("/attributes")?;
    let id = u64::from_str_radix(id, 16).ok()?;
    #[derive(serde::Deserialize)]
    struct Attributes {
        #[serde(default)]
        name: String,
        #[serde(rename = "clientURLs", default)]
        client_urls: Option<Vec<String>>,
    }
    let attributes: Attributes = serde_json::from_str(&request.val).ok()?;
    Some(InternalRequest {
        request: Some(internal_request::Request::MemberAttributes(
            MemberAttributes {
                id,
                name: attributes.name,
                client_urls: attributes.client_urls.unwrap_or_default(),
            },
        )),
        ..Default::default()
    })
}

/// Not used outside tests yet: a member in etcd's JSON, for building conf changes.
#[cfg(test)]
fn member_context(member: &rivet_api::rivetpb::Member) -> Vec<u8> {
    crate::etcd_backend::schema::member_json(member).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(index: u64, data: Vec<u8>) -> Entry {
        Entry {
            index,
            term: 2,
            data: data.into(),
            ..Default::default()
        }
    }

    #[test]
    fn puts_and_v2_publishes_translate() {
        let put = EtcdInternalRaftRequest {
            id: 7,
            put: Some(pb::PutRequest {
                key: b"a".to_vec().into(),
                value: b"1".to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (entry, skipped) = translate_entry(&normal(5, put.encode_to_vec())).expect("put");
        assert!(!skipped);
        assert_eq!((entry.index, entry.term), (5, 2));
        let request = InternalRequest::decode(entry.data.as_ref()).expect("decodes");
        assert!(matches!(
            request.request,
            Some(internal_request::Request::Put(_))
        ));

        let publish = EtcdV2Request {
            id: 9,
            method: "PUT".into(),
            path: "/0/members/8e9e05c52164694d/attributes".into(),
            val: r#"{"name":"default","clientURLs":["http://localhost:2379"]}"#.into(),
        };
        let (entry, skipped) =
            translate_entry(&normal(6, publish.encode_to_vec())).expect("publish");
        assert!(!skipped);
        let request = InternalRequest::decode(entry.data.as_ref()).expect("decodes");
        match request.request {
            Some(internal_request::Request::MemberAttributes(a)) => {
                assert_eq!(a.id, 0x8e9e05c52164694d);
                assert_eq!(a.name, "default");
            }
            other => panic!("{other:?}"),
        }
        let version = EtcdV2Request {
            id: 10,
            method: "PUT".into(),
            path: "/0/version".into(),
            val: "3.4.0".into(),
        };
        let (entry, skipped) = translate_entry(&normal(7, version.encode_to_vec())).expect("v2");
        assert!(skipped);
        assert!(entry.data.is_empty());
    }

    #[test]
    fn conf_changes_translate() {
        let member = rivet_api::rivetpb::Member {
            id: 0x1234,
            name: String::new(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: Vec::new(),
            is_learner: true,
        };
        let change = EtcdConfChange {
            id: 1,
            change_type: ETCD_ADD_LEARNER_NODE,
            node_id: 0x1234,
            context: member_context(&member),
        };
        let mut entry = normal(3, change.encode_to_vec());
        entry.set_entry_type(EntryType::EntryConfChange);
        let (out, _) = translate_entry(&entry).expect("conf change");
        assert_eq!(out.get_entry_type(), EntryType::EntryConfChange);
        let mut cc = ConfChange::default();
        cc.merge_from_bytes(&out.data).expect("decodes");
        assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
        let context = ConfChangeContext::decode(cc.context.as_ref()).expect("context");
        assert_eq!(context.member, Some(member));
        assert!(crate::raft::validate::entry_problem(&out).is_none());
    }
}
