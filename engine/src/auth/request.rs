//! Which permission each client request needs, as pure functions over the request and an
//! [`AuthState`] snapshot, so the applier (writes, at apply time) and the serving cores
//! (reads, watches, lease and maintenance calls) make the same checks.
//!
//! etcd 3.4 checks writes in its auth applier, against the store at the entry's index, with
//! the user and auth revision the proposing member put in the entry's header: a token that
//! was valid when proposed but whose revision is old at apply gets `revision of auth store
//! is old`. Reads are checked on the member that serves them (`doSerialize`), and checked
//! again after the read: if the auth revision moved meanwhile the answer is dropped for the
//! same error ([`check_unchanged_after_read`]).
//!
//! These follow the latest etcd 3.4 release, which fixed holes that 3.4.23 has: nested
//! txns and a txn's put `prev_kv` / lease are checked like top-level requests; Compact,
//! Status, MoveLeader and Alarm (but GET) need root; LeaseGrant, LeaseRevoke, MemberList
//! and Alarm GET need credentials; LeaseKeepAlive needs write on the lease's keys,
//! LeaseTimeToLive with keys and LeaseLeases need read on them. A watch is checked on the
//! range it asks for (3.4 checked a from-key watch as its first key only).

use bytes::Bytes;
use rivet_api::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::perms::Access;
use super::store::{AuthInfo, AuthState};
use crate::error::EtcdError;

/// The keys attached to a lease (empty for no lease, or a lease that does not exist).
/// Implemented by whatever knows the leases' keys at the point of the check.
pub trait LeaseKeys {
    fn keys_of(&self, lease: i64) -> Vec<Bytes>;
}

impl<F: Fn(i64) -> Vec<Bytes>> LeaseKeys for F {
    fn keys_of(&self, lease: i64) -> Vec<Bytes> {
        self(lease)
    }
}

/// No leases: for requests that cannot name one (Range, a read-only txn).
pub struct NoLeases;

impl LeaseKeys for NoLeases {
    fn keys_of(&self, _lease: i64) -> Vec<Bytes> {
        Vec::new()
    }
}

pub fn check_range(
    state: &AuthState,
    caller: &AuthInfo,
    request: &RangeRequest,
) -> Result<(), EtcdError> {
    state.check_range(caller, &request.key, &request.range_end, Access::Read)
}

/// etcd's `checkPutAuth`: write on the key; if the put attaches a lease, write on every
/// key already attached to it (whoever cannot revoke the lease may not extend it), unless
/// root; read on the key for `prev_kv`.
pub fn check_put(
    state: &AuthState,
    caller: &AuthInfo,
    request: &PutRequest,
    leases: &dyn LeaseKeys,
) -> Result<(), EtcdError> {
    state.check_range(caller, &request.key, &[], Access::Write)?;
    if request.lease != 0 {
        check_lease_keys_writable(state, caller, &leases.keys_of(request.lease))?;
    }
    if request.prev_kv {
        state.check_range(caller, &request.key, &[], Access::Read)?;
    }
    Ok(())
}

pub fn check_delete_range(
    state: &AuthState,
    caller: &AuthInfo,
    request: &DeleteRangeRequest,
) -> Result<(), EtcdError> {
    state.check_range(caller, &request.key, &request.range_end, Access::Write)?;
    if request.prev_kv {
        state.check_range(caller, &request.key, &request.range_end, Access::Read)?;
    }
    Ok(())
}

/// etcd's `checkTxnAuth`: read on every compare's range, then every operation of both
/// branches (whichever will run), nested txns included.
pub fn check_txn(
    state: &AuthState,
    caller: &AuthInfo,
    request: &TxnRequest,
    leases: &dyn LeaseKeys,
) -> Result<(), EtcdError> {
    if !state.is_enabled() {
        return Ok(());
    }
    for compare in &request.compare {
        state.check_range(caller, &compare.key, &compare.range_end, Access::Read)?;
    }
    check_ops(state, caller, &request.success, leases)?;
    check_ops(state, caller, &request.failure, leases)
}

fn check_ops(
    state: &AuthState,
    caller: &AuthInfo,
    ops: &[RequestOp],
    leases: &dyn LeaseKeys,
) -> Result<(), EtcdError> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(state, caller, r)?,
            Some(request_op::Request::RequestPut(r)) => check_put(state, caller, r, leases)?,
            Some(request_op::Request::RequestDeleteRange(r)) => {
                if r.prev_kv {
                    state.check_range(caller, &r.key, &r.range_end, Access::Read)?;
                }
                state.check_range(caller, &r.key, &r.range_end, Access::Write)?;
            }
            Some(request_op::Request::RequestTxn(r)) => check_txn(state, caller, r, leases)?,
            None => {}
        }
    }
    Ok(())
}

/// LeaseRevoke (at apply) and a put's lease: write on every key attached to the lease
/// (ETCD_LESSONS 23), etcd's `checkLeasePuts`: each key is checked as a put, so a token of
/// an old auth revision is refused even for root (the revision is checked before the
/// root role), and a lease without keys needs nothing. Expiry-driven revocation is
/// internal and never checked.
pub fn check_lease_keys_writable(
    state: &AuthState,
    caller: &AuthInfo,
    keys: &[Bytes],
) -> Result<(), EtcdError> {
    for key in keys {
        state.check_range(caller, key, &[], Access::Write)?;
    }
    Ok(())
}

/// LeaseTimeToLive with `keys` and LeaseLeases: read on every key attached (the keys of
/// all leases for LeaseLeases), unless root; credentials are required.
pub fn check_lease_keys_readable(
    state: &AuthState,
    caller: Option<&AuthInfo>,
    keys: &[Bytes],
) -> Result<(), EtcdError> {
    if !state.is_enabled() {
        return Ok(());
    }
    let caller = caller.ok_or(EtcdError::UserEmpty)?;
    if state.check_admin(caller).is_ok() {
        return Ok(());
    }
    for key in keys {
        state.check_range(caller, key, &[], Access::Read)?;
    }
    Ok(())
}

/// LeaseKeepAlive as later etcd 3.4 checks it (`checkLeaseRenew`).
pub fn check_lease_renew(
    state: &AuthState,
    caller: Option<&AuthInfo>,
    keys: &[Bytes],
) -> Result<(), EtcdError> {
    if !state.is_enabled() {
        return Ok(());
    }
    let caller = caller.ok_or(EtcdError::UserEmpty)?;
    // `checkLeaseRenew` asks `IsAdminPermitted` first (no revision check there).
    if state.check_admin(caller).is_ok() {
        return Ok(());
    }
    check_lease_keys_writable(state, caller, keys)
}

/// A watch create, checked on the core that serves the stream: read on its range, after
/// v3rpc's rewrite of an empty key to `"\0"` (the smallest key).
pub fn check_watch_create(
    state: &AuthState,
    caller: &AuthInfo,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), EtcdError> {
    let key: &[u8] = if key.is_empty() { b"\0" } else { key };
    state.check_range(caller, key, range_end, Access::Read)
}

/// The `cancel_reason` of a watch refused at create: the gRPC error text as Go prints it
/// (`rpc error: code = ... desc = ...`), for the four errors etcd distinguishes; any
/// other error is reported as permission denied.
pub fn watch_cancel_reason(error: &EtcdError) -> String {
    let error = match error {
        EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision | EtcdError::UserEmpty => {
            error.clone()
        }
        _ => EtcdError::PermissionDenied,
    };
    format!(
        "rpc error: code = {} desc = {}",
        go_code_name(error.code()),
        error
    )
}

fn go_code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::Unauthenticated => "Unauthenticated",
        tonic::Code::InvalidArgument => "InvalidArgument",
        _ => "Unknown",
    }
}

/// etcd's `doSerialize` tail: a read served under credentials whose auth revision is no
/// longer the member's is answered `revision of auth store is old`.
pub fn check_unchanged_after_read(
    state_after: &AuthState,
    caller: &AuthInfo,
) -> Result<(), EtcdError> {
    if caller.revision != 0 && caller.revision != state_after.revision() {
        return Err(EtcdError::AuthOldRevision);
    }
    Ok(())
}

/// The client RPCs whose check does not depend on keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Compact,
    LeaseGrant,
    LeaseRevoke,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberPromote,
    MemberList,
    AlarmGet,
    AlarmActivate,
    AlarmDeactivate,
    Status,
    Defragment,
    Hash,
    HashKv,
    Snapshot,
    MoveLeader,
}

/// What an RPC of [`Rpc`] requires before it runs (on the core that receives it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcAccess {
    /// Some credentials (etcd's `requireAuthInfo`).
    Credentials,
    /// A user with the root role (etcd's `IsAdminPermitted`).
    Root,
}

pub fn rpc_access(rpc: Rpc) -> RpcAccess {
    match rpc {
        Rpc::LeaseGrant | Rpc::LeaseRevoke | Rpc::MemberList | Rpc::AlarmGet => {
            RpcAccess::Credentials
        }
        Rpc::Compact
        | Rpc::MemberAdd
        | Rpc::MemberRemove
        | Rpc::MemberUpdate
        | Rpc::MemberPromote
        | Rpc::AlarmActivate
        | Rpc::AlarmDeactivate
        | Rpc::Status
        | Rpc::Defragment
        | Rpc::Hash
        | Rpc::HashKv
        | Rpc::Snapshot
        | Rpc::MoveLeader => RpcAccess::Root,
    }
}

/// The check of an [`Rpc`]; `caller` is `None` when the request carried no token and no
/// client certificate name.
pub fn check_rpc(state: &AuthState, caller: Option<&AuthInfo>, rpc: Rpc) -> Result<(), EtcdError> {
    match rpc_access(rpc) {
        RpcAccess::Credentials => state.require_credentials(caller),
        RpcAccess::Root => state.check_admin(caller.unwrap_or(&AuthInfo::default())),
    }
}
