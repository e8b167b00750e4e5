//! The errors a client can see, with etcd 3.4's gRPC codes and messages.
//!
//! Clients (etcdctl, clientv3, the `etcd-client` crate) match on these exact strings, so
//! they are interface facts, not prose. Every variant maps to one `tonic::Status`.

use tonic::{Code, Status};

/// An error answered to a client request. `Clone` because one apply result may be handed
/// to several waiters (a proposal and its retries).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A txn nested deeper than [`crate::limits::TXN_NESTED_MESSAGES_MAX`]. etcd 3.4 has no such
    /// limit and no such error; over gRPC such a txn already fails to decode, only the
    /// JSON gateway can bring one this far.
    #[error("etcdserver: txn request nested too deeply")]
    TxnTooDeep,
    /// A Range with an unknown sort target: etcd 3.4 panics on it (`sort.Sort` of a nil
    /// sorter); this is etcd 3.5's answer (`ErrGRPCInvalidSortOption`).
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// etcd's `ErrCorrupt`: a keyspace or lease request applied while the CORRUPT
    /// alarm is raised.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    // Auth (etcd's `auth` package errors as `v3rpc/util.go` maps them).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: {0}")]
    Internal(String),
    /// The answer of another member this request was handed to, passed on as it came.
    #[error("{1}")]
    Forwarded(Code, String),
    /// An error whose text carries no `etcdserver:` prefix (etcd's `concurrency` errors
    /// from the election service), answered with code Unknown like etcd does.
    #[error("{0}")]
    Plain(&'static str),
}

impl EtcdError {
    /// The gRPC code etcd 3.4 answers with (`etcdserver/api/v3rpc/rpctypes/error.go`).
    pub fn code(&self) -> Code {
        match self {
            EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::TxnTooDeep
            | EtcdError::InvalidSortOption
            | EtcdError::RequestTooLarge => Code::InvalidArgument,
            EtcdError::Compacted | EtcdError::FutureRevision => Code::OutOfRange,
            EtcdError::MemberBadUrls => Code::InvalidArgument,
            EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::MemberExist
            | EtcdError::PeerUrlExist
            | EtcdError::MemberNotEnoughStarted
            | EtcdError::MemberNotLearner
            | EtcdError::LearnerNotReady
            | EtcdError::TooManyLearners
            | EtcdError::NotLeader
            | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
            EtcdError::Unhealthy | EtcdError::LeaderChanged | EtcdError::NotSupportedForLearner => {
                Code::Unavailable
            }
            EtcdError::NoSpace => Code::ResourceExhausted,
            EtcdError::Corrupt => Code::DataLoss,
            EtcdError::LeaseNotFound => Code::NotFound,
            EtcdError::LeaseExist => Code::FailedPrecondition,
            EtcdError::LeaseTtlTooLarge => Code::OutOfRange,
            EtcdError::NoLeader | EtcdError::Timeout | EtcdError::Stopped => Code::Unavailable,
            EtcdError::TooManyRequests => Code::ResourceExhausted,
            EtcdError::RootUserNotExist
            | EtcdError::RootRoleNotExist
            | EtcdError::UserAlreadyExist
            | EtcdError::UserNotFound
            | EtcdError::RoleAlreadyExist
            | EtcdError::RoleNotFound
            | EtcdError::RoleNotGranted
            | EtcdError::PermissionNotGranted
            | EtcdError::AuthNotEnabled => Code::FailedPrecondition,
            EtcdError::UserEmpty
            | EtcdError::RoleEmpty
            | EtcdError::AuthFailed
            | EtcdError::PermissionNotGiven
            | EtcdError::InvalidAuthMgmt
            | EtcdError::AuthOldRevision => Code::InvalidArgument,
            EtcdError::PermissionDenied => Code::PermissionDenied,
            EtcdError::InvalidAuthToken => Code::Unauthenticated,
            EtcdError::Internal(_) | EtcdError::Plain(_) => Code::Unknown,
            EtcdError::Forwarded(code, _) => *code,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(error: EtcdError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}
