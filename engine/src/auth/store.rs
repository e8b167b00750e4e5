//! The auth store: users, roles, the enabled flag and the auth revision, changed only by
//! applying committed requests (deterministic on every replica), and read through
//! immutable snapshots that any core may hold.
//!
//! [`AuthState`] is the whole state plus, per user, the merged permission intervals. The
//! owner ([`AuthStore`], on the raft core) keeps it in an `Arc` and changes it copy-on-write:
//! a snapshot handed to a serving core stays valid and unchanged, and the next change
//! clones only the maps of `Arc`s (users and roles themselves are shared).
//!
//! What follows etcd 3.4's `auth/store.go` and `etcdserver/apply_auth.go`, case by case:
//!
//! | request | errors (in this order) | bumps the auth revision |
//! |---|---|---|
//! | AuthEnable | root user missing, root user without root role (none if already on) | no |
//! | AuthDisable | — | yes, if it was on |
//! | UserAdd | empty name, name exists | yes |
//! | UserDelete | `root` while enabled (invalid auth management), not found | yes |
//! | UserChangePassword | not found | yes |
//! | UserGrantRole | user not found, role not found (`root` need not exist) | yes, unless already granted |
//! | UserRevokeRole | `root` from `root` while enabled, user not found, not granted | yes |
//! | RoleAdd | empty name, name exists | yes |
//! | RoleDelete | `root` while enabled, not found | yes (also revokes it from every user) |
//! | RoleGrantPermission | no permission, invalid range, role not found | yes (also when only the type changes) |
//! | RoleRevokePermission | role not found, not granted | yes |
//!
//! A new store starts at auth revision 1 (etcd commits revision 1 when it creates the
//! buckets). Before any of these, the auth applier refuses every admin request but
//! UserGet/RoleGet of a caller that is not root (`etcdserver: permission denied`, or
//! `user name is empty` without credentials); UserGet of one's own user and RoleGet of one
//! of one's roles are allowed (ETCD_LESSONS 28).
//!
//! Departures, each deliberate:
//! - Passwords are hashed by the member that receives UserAdd/UserChangePassword and the
//!   hash is replicated (as etcd 3.5 does): etcd 3.4 hashes on apply, so every member
//!   stores a different salt and the raft log holds the password in clear.
//! - RoleGrantPermission validates the range as later 3.4 releases do
//!   (`isValidPermissionRange`; 3.4.23 stores anything), except that the empty key with
//!   range end `"\0"` — the whole key space in a prefix/from-key grant, ETCD_LESSONS 27 —
//!   is stored as etcdctl sends it, key `"\0"`, instead of being refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use rivet_api::authpb::{Permission, Role, User, UserAddOptions};
use rivet_api::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionResponse, AuthRoleListResponse,
    AuthRoleRevokePermissionResponse, AuthStatusResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGetResponse,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleResponse,
};
use rivet_api::rivetpb::{auth_request, AuthCaller, AuthRequest, AuthStoreState};

use super::perms::{Access, RangePermissions};
use crate::error::EtcdError;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// Who sent a request: the user its token (or client certificate) named and the auth
/// revision the token carried. `Default` is "no credentials" (etcd's empty `AuthInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

impl AuthInfo {
    pub fn new(username: impl Into<String>, revision: u64) -> AuthInfo {
        AuthInfo {
            username: username.into(),
            revision,
        }
    }

    pub fn from_caller(caller: Option<&AuthCaller>) -> AuthInfo {
        caller
            .map(|c| AuthInfo::new(c.username.clone(), c.auth_revision))
            .unwrap_or_default()
    }

    pub fn to_caller(&self) -> AuthCaller {
        AuthCaller {
            username: self.username.clone(),
            auth_revision: self.revision,
        }
    }
}

/// One user as stored (the `authpb.User` etcd keeps) and its merged permissions.
#[derive(Clone, Debug, PartialEq)]
pub struct UserEntry {
    pub user: User,
    pub has_root_role: bool,
    pub permissions: RangePermissions,
}

impl UserEntry {
    fn new(user: User, roles: &BTreeMap<String, Arc<Role>>) -> UserEntry {
        let permissions = RangePermissions::merge(
            user.roles
                .iter()
                .filter_map(|name| roles.get(name))
                .flat_map(|role| role.key_permission.iter()),
        );
        let has_root_role = user.roles.iter().any(|r| r == ROOT_ROLE);
        UserEntry {
            user,
            has_root_role,
            permissions,
        }
    }

    pub fn no_password(&self) -> bool {
        self.user.options.as_ref().is_some_and(|o| o.no_password)
    }

    pub fn password_hash(&self) -> &[u8] {
        &self.user.password
    }
}

/// The replicated auth state at one applied index. Immutable once shared.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, Arc<UserEntry>>,
    roles: BTreeMap<String, Arc<Role>>,
}

impl Default for AuthState {
    fn default() -> AuthState {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// The answer of an applied auth request (headers are left for the caller to fill).
#[derive(Clone, Debug, PartialEq)]
pub enum AuthResponse {
    AuthEnable(AuthEnableResponse),
    AuthDisable(AuthDisableResponse),
    AuthStatus(AuthStatusResponse),
    Authenticate(Authenticated),
    UserAdd(AuthUserAddResponse),
    UserGet(AuthUserGetResponse),
    UserList(AuthUserListResponse),
    UserDelete(AuthUserDeleteResponse),
    UserChangePassword(AuthUserChangePasswordResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleGet(AuthRoleGetResponse),
    RoleList(AuthRoleListResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// An applied Authenticate: who, at which auth revision, and (simple tokens) the token
/// every member now knows. A JWT is signed by the member that answers, off the raft core,
/// from `username` and `revision` (etcd signs with the revision at apply time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub username: String,
    pub revision: u64,
    pub simple_token: Option<String>,
}

/// What the token tables of every core must learn from an applied request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenEvent {
    /// A simple token was assigned (Authenticate with a prefix).
    Assigned { token: String, username: String },
    /// UserDelete and UserChangePassword drop the user's simple tokens.
    InvalidateUser(String),
    /// AuthDisable drops every token.
    InvalidateAll,
}

/// The result of applying one auth request.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthApplied {
    pub result: Result<AuthResponse, AuthApplyError>,
    /// Token table changes, in order; empty when nothing changed.
    pub token_events: Vec<TokenEvent>,
}

/// Why an auth request was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthApplyError {
    /// The client's error.
    Etcd(EtcdError),
    /// Authenticate: the store changed since the proposer checked the password; the
    /// proposer must check again and re-propose (etcd's retry loop in `Authenticate`).
    StalePasswordCheck,
}

impl From<EtcdError> for AuthApplyError {
    fn from(error: EtcdError) -> AuthApplyError {
        AuthApplyError::Etcd(error)
    }
}

impl AuthState {
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&Arc<UserEntry>> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Arc<Role>> {
        self.roles.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &Arc<UserEntry>> {
        self.users.values()
    }

    pub fn roles(&self) -> impl Iterator<Item = &Arc<Role>> {
        self.roles.values()
    }

    /// etcd's `HasRole`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.user.roles.iter().any(|r| r == role))
    }

    /// etcd's `IsAdminPermitted`: with auth on, the caller must be a user with the root
    /// role. The token's revision is not checked here (as in etcd).
    pub fn check_admin(&self, caller: &AuthInfo) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if caller.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        match self.users.get(&caller.username) {
            None => Err(EtcdError::UserNotFound),
            Some(user) if !user.has_root_role => Err(EtcdError::PermissionDenied),
            Some(_) => Ok(()),
        }
    }

    /// etcd's `isOpPermitted` (`IsRangePermitted` with [`Access::Read`], `IsPutPermitted`
    /// and `IsDeleteRangePermitted` with [`Access::Write`]): an empty `range_end` is the
    /// single key, `"\0"` everything from `key` on.
    pub fn check_range(
        &self,
        caller: &AuthInfo,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        // Only an empty AuthInfo has revision 0: no credentials were given.
        if caller.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if caller.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&caller.username) else {
            return Err(EtcdError::PermissionDenied);
        };
        if user.has_root_role || user.permissions.permits(key, range_end, access) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `requireAuthInfo`: with auth on, some credentials must have been given.
    pub fn require_credentials(&self, caller: Option<&AuthInfo>) -> Result<(), EtcdError> {
        if self.enabled && caller.is_none() {
            return Err(EtcdError::UserEmpty);
        }
        Ok(())
    }

    // Read-side requests. etcd 3.4 sends them through raft; they only read, so a core may
    // also answer them from its snapshot after a linearizable read barrier.

    pub fn auth_status(&self) -> AuthStatusResponse {
        AuthStatusResponse {
            header: None,
            enabled: self.enabled,
            auth_revision: self.revision,
        }
    }

    /// UserGet as the auth applier answers it: root, or the user itself.
    pub fn user_get(
        &self,
        caller: &AuthInfo,
        name: &str,
    ) -> Result<AuthUserGetResponse, EtcdError> {
        if let Err(error) = self.check_admin(caller) {
            if name != caller.username {
                return Err(error);
            }
        }
        let user = self.users.get(name).ok_or(EtcdError::UserNotFound)?;
        Ok(AuthUserGetResponse {
            header: None,
            roles: user.user.roles.clone(),
        })
    }

    pub fn user_list(&self, caller: &AuthInfo) -> Result<AuthUserListResponse, EtcdError> {
        self.check_admin(caller)?;
        Ok(AuthUserListResponse {
            header: None,
            users: self.users.keys().cloned().collect(),
        })
    }

    /// RoleGet as the auth applier answers it: root, or a user holding that role.
    pub fn role_get(
        &self,
        caller: &AuthInfo,
        name: &str,
    ) -> Result<AuthRoleGetResponse, EtcdError> {
        if let Err(error) = self.check_admin(caller) {
            if !self.has_role(&caller.username, name) {
                return Err(error);
            }
        }
        let role = self.roles.get(name).ok_or(EtcdError::RoleNotFound)?;
        Ok(AuthRoleGetResponse {
            header: None,
            perm: role.key_permission.clone(),
        })
    }

    pub fn role_list(&self, caller: &AuthInfo) -> Result<AuthRoleListResponse, EtcdError> {
        self.check_admin(caller)?;
        Ok(AuthRoleListResponse {
            header: None,
            roles: self.roles.keys().cloned().collect(),
        })
    }

    // Serialization.

    /// The whole store as a checkpoint or snapshot keeps it.
    pub fn to_proto(&self) -> AuthStoreState {
        AuthStoreState {
            enabled: self.enabled,
            revision: self.revision,
            users: self
                .users
                .values()
                .map(|u| Bytes::from(u.user.encode_to_vec()))
                .collect(),
            roles: self
                .roles
                .values()
                .map(|r| Bytes::from(r.encode_to_vec()))
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Decodes what [`AuthState::encode`] wrote. Bad bytes are an error, never a panic:
    /// an undecodable record, a name that is not UTF-8, empty or given twice, or
    /// revision 0 (a store always has revision >= 1).
    pub fn decode(bytes: &[u8]) -> Result<AuthState, AuthDecodeError> {
        let state = AuthStoreState::decode(bytes).map_err(|e| AuthDecodeError(e.to_string()))?;
        AuthState::from_proto(state)
    }

    pub fn from_proto(state: AuthStoreState) -> Result<AuthState, AuthDecodeError> {
        if state.revision == 0 {
            return Err(AuthDecodeError("auth revision 0".into()));
        }
        let mut roles = BTreeMap::new();
        for bytes in &state.roles {
            let role = Role::decode(bytes.as_ref()).map_err(|e| AuthDecodeError(e.to_string()))?;
            let name = name_of(&role.name, "role")?;
            if roles.insert(name.clone(), Arc::new(role)).is_some() {
                return Err(AuthDecodeError(format!("role {name:?} given twice")));
            }
        }
        let mut users = BTreeMap::new();
        for bytes in &state.users {
            let mut user =
                User::decode(bytes.as_ref()).map_err(|e| AuthDecodeError(e.to_string()))?;
            let name = name_of(&user.name, "user")?;
            // etcd keeps a user's roles sorted and unique (UserGrantRole); hold to it.
            user.roles.sort();
            user.roles.dedup();
            let entry = UserEntry::new(user, &roles);
            if users.insert(name.clone(), Arc::new(entry)).is_some() {
                return Err(AuthDecodeError(format!("user {name:?} given twice")));
            }
        }
        Ok(AuthState {
            enabled: state.enabled,
            revision: state.revision,
            users,
            roles,
        })
    }
}

fn name_of(name: &[u8], what: &str) -> Result<String, AuthDecodeError> {
    if name.is_empty() {
        return Err(AuthDecodeError(format!("{what} with an empty name")));
    }
    String::from_utf8(name.to_vec())
        .map_err(|_| AuthDecodeError(format!("{what} name {name:?} is not UTF-8")))
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad auth store record: {0}")]
pub struct AuthDecodeError(pub String);

/// The owner of the replicated auth state (the raft core's applier).
#[derive(Clone, Debug, Default)]
pub struct AuthStore {
    state: Arc<AuthState>,
}

impl AuthStore {
    pub fn new() -> AuthStore {
        AuthStore::default()
    }

    pub fn from_state(state: AuthState) -> AuthStore {
        AuthStore {
            state: Arc::new(state),
        }
    }

    /// The current state, to hand to other cores: cheap, and never changes afterwards.
    pub fn snapshot(&self) -> Arc<AuthState> {
        Arc::clone(&self.state)
    }

    pub fn state(&self) -> &AuthState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut AuthState {
        Arc::make_mut(&mut self.state)
    }

    fn bump(&mut self) {
        self.state_mut().revision += 1;
    }

    /// Applies one committed auth request at raft index `index`, as etcd's auth applier
    /// and `applierV3backend` do: the admin check of the caller first, then the request.
    /// A refused request changes nothing.
    pub fn apply(&mut self, request: &AuthRequest, index: u64) -> AuthApplied {
        let caller = AuthInfo::from_caller(request.caller.as_ref());
        let mut token_events = Vec::new();
        let result = match &request.request {
            None => Err(AuthApplyError::Etcd(EtcdError::Internal(
                "empty auth request".into(),
            ))),
            Some(request) => self.apply_one(&caller, request, index, &mut token_events),
        };
        if result.is_err() {
            token_events.clear();
        }
        AuthApplied {
            result,
            token_events,
        }
    }

    fn apply_one(
        &mut self,
        caller: &AuthInfo,
        request: &auth_request::Request,
        index: u64,
        token_events: &mut Vec<TokenEvent>,
    ) -> Result<AuthResponse, AuthApplyError> {
        use auth_request::Request as R;
        if needs_admin(request) {
            self.state.check_admin(caller)?;
        }
        Ok(match request {
            R::AuthEnable(_) => {
                self.auth_enable()?;
                AuthResponse::AuthEnable(AuthEnableResponse::default())
            }
            R::AuthDisable(_) => {
                if self.auth_disable() {
                    token_events.push(TokenEvent::InvalidateAll);
                }
                AuthResponse::AuthDisable(AuthDisableResponse::default())
            }
            R::AuthStatus(_) => AuthResponse::AuthStatus(self.state.auth_status()),
            R::Authenticate(r) => {
                let done = self.authenticate(&r.name, r.checked_revision)?;
                let simple_token = (!r.simple_token_prefix.is_empty())
                    .then(|| simple_token(&r.simple_token_prefix, index));
                if let Some(token) = &simple_token {
                    token_events.push(TokenEvent::Assigned {
                        token: token.clone(),
                        username: r.name.clone(),
                    });
                }
                AuthResponse::Authenticate(Authenticated {
                    simple_token,
                    ..done
                })
            }
            R::UserAdd(r) => {
                self.user_add(&r.name, r.hashed_password.clone(), r.options)?;
                AuthResponse::UserAdd(AuthUserAddResponse::default())
            }
            R::UserGet(r) => AuthResponse::UserGet(self.state.user_get(caller, &r.name)?),
            R::UserList(_) => AuthResponse::UserList(self.state.user_list(caller)?),
            R::UserDelete(r) => {
                self.user_delete(&r.name)?;
                token_events.push(TokenEvent::InvalidateUser(r.name.clone()));
                AuthResponse::UserDelete(AuthUserDeleteResponse::default())
            }
            R::UserChangePassword(r) => {
                self.user_change_password(&r.name, r.hashed_password.clone())?;
                token_events.push(TokenEvent::InvalidateUser(r.name.clone()));
                AuthResponse::UserChangePassword(AuthUserChangePasswordResponse::default())
            }
            R::UserGrantRole(r) => {
                self.user_grant_role(&r.user, &r.role)?;
                AuthResponse::UserGrantRole(AuthUserGrantRoleResponse::default())
            }
            R::UserRevokeRole(r) => {
                self.user_revoke_role(&r.name, &r.role)?;
                AuthResponse::UserRevokeRole(AuthUserRevokeRoleResponse::default())
            }
            R::RoleAdd(r) => {
                self.role_add(&r.name)?;
                AuthResponse::RoleAdd(AuthRoleAddResponse::default())
            }
            R::RoleGet(r) => AuthResponse::RoleGet(self.state.role_get(caller, &r.role)?),
            R::RoleList(_) => AuthResponse::RoleList(self.state.role_list(caller)?),
            R::RoleDelete(r) => {
                self.role_delete(&r.role)?;
                AuthResponse::RoleDelete(AuthRoleDeleteResponse::default())
            }
            R::RoleGrantPermission(r) => {
                self.role_grant_permission(&r.name, r.perm.as_ref())?;
                AuthResponse::RoleGrantPermission(AuthRoleGrantPermissionResponse::default())
            }
            R::RoleRevokePermission(r) => {
                self.role_revoke_permission(&r.role, &r.key, &r.range_end)?;
                AuthResponse::RoleRevokePermission(AuthRoleRevokePermissionResponse::default())
            }
        })
    }

    // The operations themselves, without the caller's admin check.

    pub fn auth_enable(&mut self) -> Result<(), EtcdError> {
        if self.state.enabled {
            return Ok(());
        }
        let root = self
            .state
            .users
            .get(ROOT_USER)
            .ok_or(EtcdError::RootUserNotExist)?;
        if !root.has_root_role {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.state_mut().enabled = true;
        Ok(())
    }

    /// Returns whether auth was on (and so is now turned off).
    pub fn auth_disable(&mut self) -> bool {
        if !self.state.enabled {
            return false;
        }
        self.state_mut().enabled = false;
        self.bump();
        true
    }

    /// The apply side of Authenticate (the password was checked by the proposer).
    pub fn authenticate(
        &self,
        name: &str,
        checked_revision: u64,
    ) -> Result<Authenticated, AuthApplyError> {
        if !self.state.enabled {
            return Err(EtcdError::AuthNotEnabled.into());
        }
        let user = self.state.users.get(name).ok_or(EtcdError::AuthFailed)?;
        if user.no_password() {
            return Err(EtcdError::AuthFailed.into());
        }
        if checked_revision != 0 && checked_revision != self.state.revision {
            return Err(AuthApplyError::StalePasswordCheck);
        }
        Ok(Authenticated {
            username: name.to_string(),
            revision: self.state.revision,
            simple_token: None,
        })
    }

    pub fn user_add(
        &mut self,
        name: &str,
        hashed_password: Bytes,
        options: Option<UserAddOptions>,
    ) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if self.state.users.contains_key(name) {
            return Err(EtcdError::UserAlreadyExist);
        }
        let options = options.unwrap_or_default();
        let password = if options.no_password {
            Bytes::new()
        } else {
            hashed_password
        };
        let user = User {
            name: Bytes::copy_from_slice(name.as_bytes()),
            password,
            roles: Vec::new(),
            options: Some(options),
        };
        let entry = UserEntry::new(user, &self.state.roles);
        self.state_mut()
            .users
            .insert(name.to_string(), Arc::new(entry));
        self.bump();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.state.enabled && name == ROOT_USER {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        if self.state_mut().users.remove(name).is_none() {
            return Err(EtcdError::UserNotFound);
        }
        self.bump();
        Ok(())
    }

    pub fn user_change_password(
        &mut self,
        name: &str,
        hashed_password: Bytes,
    ) -> Result<(), EtcdError> {
        let entry = self.state.users.get(name).ok_or(EtcdError::UserNotFound)?;
        let mut entry = UserEntry::clone(entry);
        entry.user.password = hashed_password;
        self.state_mut()
            .users
            .insert(name.to_string(), Arc::new(entry));
        self.bump();
        Ok(())
    }

    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        let entry = self.state.users.get(name).ok_or(EtcdError::UserNotFound)?;
        if role != ROOT_ROLE && !self.state.roles.contains_key(role) {
            return Err(EtcdError::RoleNotFound);
        }
        let Err(at) = entry.user.roles.binary_search_by(|r| r.as_str().cmp(role)) else {
            // Already granted: etcd logs it and answers success without a new revision.
            return Ok(());
        };
        let mut user = entry.user.clone();
        user.roles.insert(at, role.to_string());
        let entry = UserEntry::new(user, &self.state.roles);
        self.state_mut()
            .users
            .insert(name.to_string(), Arc::new(entry));
        self.bump();
        Ok(())
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), EtcdError> {
        if self.state.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let entry = self.state.users.get(name).ok_or(EtcdError::UserNotFound)?;
        let mut user = entry.user.clone();
        user.roles.retain(|r| r != role);
        if user.roles.len() == entry.user.roles.len() {
            return Err(EtcdError::RoleNotGranted);
        }
        let entry = UserEntry::new(user, &self.state.roles);
        self.state_mut()
            .users
            .insert(name.to_string(), Arc::new(entry));
        self.bump();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty);
        }
        if self.state.roles.contains_key(name) {
            return Err(EtcdError::RoleAlreadyExist);
        }
        let role = Role {
            name: Bytes::copy_from_slice(name.as_bytes()),
            key_permission: Vec::new(),
        };
        self.state_mut()
            .roles
            .insert(name.to_string(), Arc::new(role));
        self.bump();
        Ok(())
    }

    pub fn role_delete(&mut self, name: &str) -> Result<(), EtcdError> {
        if self.state.enabled && name == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        if !self.state.roles.contains_key(name) {
            return Err(EtcdError::RoleNotFound);
        }
        let state = self.state_mut();
        state.roles.remove(name);
        let holders: Vec<String> = state
            .users
            .iter()
            .filter(|(_, u)| u.user.roles.iter().any(|r| r == name))
            .map(|(n, _)| n.clone())
            .collect();
        for holder in holders {
            if let Some(entry) = state.users.get(&holder) {
                let mut user = entry.user.clone();
                user.roles.retain(|r| r != name);
                let entry = UserEntry::new(user, &state.roles);
                state.users.insert(holder, Arc::new(entry));
            }
        }
        self.bump();
        Ok(())
    }

    pub fn role_grant_permission(
        &mut self,
        name: &str,
        permission: Option<&Permission>,
    ) -> Result<(), EtcdError> {
        let permission = permission.ok_or(EtcdError::PermissionNotGiven)?;
        let mut permission = permission.clone();
        // ETCD_LESSONS 27: the empty key of a prefix/from-key grant is the whole key
        // space; store it the way etcdctl sends it.
        if permission.key.is_empty() && permission.range_end.as_ref() == [0] {
            permission.key = Bytes::from_static(b"\0");
        }
        if !is_valid_permission_range(&permission.key, &permission.range_end) {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let role = self.state.roles.get(name).ok_or(EtcdError::RoleNotFound)?;
        let mut role = Role::clone(role);
        // etcd: binary search for the first permission whose key is >= the new key; if
        // that one has the same key and range end, only its type changes; otherwise the
        // new permission is appended and the list sorted by key (Go's insertion sort:
        // stable for the short lists roles hold; we keep it stable for all lengths).
        let at = role
            .key_permission
            .partition_point(|p| p.key.as_ref() < permission.key.as_ref());
        match role.key_permission.get_mut(at) {
            Some(existing)
                if existing.key == permission.key && existing.range_end == permission.range_end =>
            {
                existing.perm_type = permission.perm_type;
            }
            _ => {
                role.key_permission.push(permission);
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.put_role(role);
        self.bump();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        let role = self.state.roles.get(name).ok_or(EtcdError::RoleNotFound)?;
        let mut role = Role::clone(role);
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| p.key.as_ref() != key || p.range_end.as_ref() != range_end);
        if role.key_permission.len() == before {
            return Err(EtcdError::PermissionNotGranted);
        }
        self.put_role(role);
        self.bump();
        Ok(())
    }

    /// Stores a changed role and rebuilds the permissions of the users holding it (only
    /// those: a change costs the permissions of the users it concerns, not all users').
    fn put_role(&mut self, role: Role) {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        let state = self.state_mut();
        state.roles.insert(name.clone(), Arc::new(role));
        let holders: Vec<String> = state
            .users
            .iter()
            .filter(|(_, u)| u.user.roles.contains(&name))
            .map(|(n, _)| n.clone())
            .collect();
        for holder in holders {
            if let Some(entry) = state.users.get(&holder) {
                let entry = UserEntry::new(entry.user.clone(), &state.roles);
                state.users.insert(holder, Arc::new(entry));
            }
        }
    }
}

/// etcd's `needAdminPermission`: every auth request but Authenticate, UserGet and
/// RoleGet (those two have their own rule).
pub fn needs_admin(request: &auth_request::Request) -> bool {
    use auth_request::Request as R;
    !matches!(request, R::Authenticate(_) | R::UserGet(_) | R::RoleGet(_))
}

/// Later etcd 3.4's `isValidPermissionRange`: a non-empty key, and a range end that is
/// empty (one key), after the key, or `"\0"` (open-ended).
pub fn is_valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    range_end.is_empty() || key < range_end || range_end == [0]
}

/// The token a simple-token Authenticate applied at `index` assigns.
pub fn simple_token(prefix: &str, index: u64) -> String {
    format!("{prefix}.{index}")
}
