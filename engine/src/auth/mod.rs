//! Authentication and role-based access control, as etcd 3.4 has them: users with bcrypt
//! passwords, roles with key-range permissions, the `root` user and role, simple and JWT
//! tokens, and the permission each request needs.
//!
//! # What lives where
//!
//! ```text
//!  raft core (owner)                                   every serving core
//!  ┌────────────────────────────────┐  Arc<AuthState>   ┌─────────────────────────────────┐
//!  │ AuthStore: users, roles,       │ ────────────────► │ current Arc<AuthState> snapshot │
//!  │ enabled, auth revision;        │  (after each auth │  (permission checks, passwords' │
//!  │ apply() of committed requests, │   change, in the  │   hashes, UserGet/RoleGet/...)  │
//!  │ checkpoint/snapshot encoding   │   apply stream)   │                                 │
//!  │                                │  TokenUpdate      │ SimpleTokenTable (entries shared│
//!  │ auth applier: checks writes    │ ────────────────► │  by all cores, atomic deadline) │
//!  │ (Put, DeleteRange, Txn,        │                   │ JwtProvider (shared, immutable) │
//!  │ LeaseRevoke) at apply          │                   │ PasswordPool handle             │
//!  └────────────────────────────────┘                   └─────────────────────────────────┘
//!                                                          PasswordPool threads: bcrypt
//! ```
//!
//! - **Replicated** (changed only through raft, in checkpoints and snapshots): the
//!   [`AuthState`] — users (name, bcrypt hash, sorted roles, `no_password`), roles and
//!   their permissions, the enabled flag, the auth revision. [`AuthStore::apply`] is
//!   deterministic: no clock, no randomness, no hashing (hashes are made before proposing).
//! - **Per member, in memory**: simple tokens (every member assigns the token when it
//!   applies Authenticate; TTL on the member's clock), the JWT keys, the bcrypt pool.
//! - **On each serving core**: the newest `Arc<AuthState>` it was sent and its own
//!   [`SimpleTokenTable`]. A request's token is resolved there ([`resolve_credentials`]),
//!   reads, watches and lease/maintenance calls are checked there ([`request`]), writes
//!   carry the caller (`rivetpb.AuthCaller`: user and the token's auth revision, etcd's
//!   request header) through raft and are checked by the applier against the store at that
//!   entry. No request needs a round trip to the raft core for its token.
//!
//! # Flow of Authenticate (etcd's, with the slow parts off the cores)
//!
//! 1. Serving core: linearizable read barrier (etcd does one), then
//!    [`PasswordCheck::start`] on its snapshot and [`PasswordPool::verify`] (bcrypt).
//! 2. Propose `AuthRequest::authenticate { name, simple_token_prefix (simple tokens only,
//!    [`token::simple_token_prefix`]), checked_revision }` — no password in the log.
//! 3. Apply: auth on, user exists and has a password, store still at `checked_revision`
//!    (else [`AuthApplyError::StalePasswordCheck`]: go back to 1, as etcd retries).
//!    Simple: the token `prefix.index` is assigned on every member ([`TokenEvent`]).
//! 4. Answer the simple token, or sign a JWT from the applied user and revision
//!    ([`JwtProvider::sign`], on the pool: RSA signing costs about a millisecond).

pub mod jwt;
pub mod password;
pub mod perms;
pub mod request;
pub mod store;
pub mod token;

use std::time::Instant;

pub use jwt::{JwtError, JwtProvider, SignMethod, VerifiedJwtCache};
pub use password::{PasswordCheck, PasswordPool};
pub use perms::{Access, KeySet, RangePermissions};
pub use store::{
    AuthApplied, AuthApplyError, AuthDecodeError, AuthInfo, AuthResponse, AuthState, AuthStore,
    Authenticated, TokenEvent, UserEntry, ROOT_ROLE, ROOT_USER,
};
pub use token::{SimpleTokenTable, TokenConfig, TokenConfigError, TokenUpdate};

use crate::error::EtcdError;

/// etcd's `AuthInfoFromCtx` followed by `AuthInfoFromTLS`: who a request is from.
///
/// - Auth off: nobody (`Ok(None)`), whatever the request carries.
/// - A token (gRPC metadata `token`, or the gateway's `authorization` header): its user,
///   or `invalid auth token`. A simple token's revision is the snapshot's (etcd passes the
///   store's current revision); a JWT's is the one it was issued at. The caller must have
///   waited until its core applied the token's index ([`token::simple_token_index`]).
/// - No token, but a verified client certificate (with `--client-cert-auth`): its Common
///   Name, at the snapshot's revision (ETCD_LESSONS 29; a password login wins because the
///   client then sends a token). etcd ignores the name on requests proxied by its gateway.
/// - Neither: nobody.
pub fn resolve_credentials(
    state: &AuthState,
    config: &TokenConfig,
    simple_tokens: &SimpleTokenTable,
    token: Option<&str>,
    certificate_common_name: Option<&str>,
    now: Instant,
    now_unix_seconds: i64,
) -> Result<Option<AuthInfo>, EtcdError> {
    if !state.is_enabled() {
        return Ok(None);
    }
    if let Some(token) = token {
        let found = match config {
            TokenConfig::Simple { .. } => simple_tokens
                .lookup(token, now)
                .map(|user| AuthInfo::new(user, state.revision())),
            TokenConfig::Jwt(provider) => provider.verify(token, now_unix_seconds),
            TokenConfig::None => None,
        };
        return found.map(Some).ok_or(EtcdError::InvalidAuthToken);
    }
    Ok(certificate_common_name.map(|name| AuthInfo::new(name, state.revision())))
}

#[cfg(test)]
mod tests;
