//! Auth on a serving core: the newest auth store snapshot this core applied, its simple
//! token table, the token configuration and the bcrypt pool; who a request is from
//! (its token or client certificate name) and the Auth service's requests.
//!
//! The snapshot and the token updates come with the apply batches (`run_apply`), so a core
//! that applied index `i` checks requests against the store at `i`: a request that waited
//! for its own write, or for the index a simple token names, sees the store that write or
//! token left. Nothing here asks the raft core, but for Auth requests themselves, which go
//! through raft as etcd's do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rivet_api::rivetpb::{
    auth_request, internal_request, AuthRequest, AuthenticateInternal, UserAddHashed,
    UserChangePasswordHashed,
};

use super::ShardCore;
use crate::auth::token::{simple_token_index, simple_token_prefix, SIMPLE_TOKEN_TTL_DEFAULT};
use crate::auth::{
    resolve_credentials, AuthInfo, AuthResponse, AuthState, PasswordCheck, PasswordPool,
    SimpleTokenTable, TokenConfig,
};
use crate::error::EtcdError;
use crate::messages::ApplyBatch;
use crate::sequencer::Applied;

/// Authenticate retries when the store moved between the password check and the apply
/// (etcd retries without a bound; each try is a bcrypt and a raft round).
const AUTHENTICATE_TRIES_MAX: usize = 8;

/// One core's auth view.
pub struct CoreAuth {
    pub state: Arc<AuthState>,
    pub tokens: SimpleTokenTable,
    pub config: TokenConfig,
    /// Hashes and checks passwords off the cores; `None` on cores built without one
    /// (tests of other parts): Auth requests that need it answer `Internal`.
    pub passwords: Option<PasswordPool>,
}

impl Default for CoreAuth {
    fn default() -> CoreAuth {
        CoreAuth {
            state: Arc::new(AuthState::default()),
            tokens: SimpleTokenTable::new(),
            config: TokenConfig::Simple {
                ttl: SIMPLE_TOKEN_TTL_DEFAULT,
            },
            passwords: None,
        }
    }
}

/// An Auth service request as a client sent it (passwords in clear; they never leave
/// this member).
pub enum AuthCall {
    Authenticate {
        name: String,
        password: String,
    },
    UserAdd {
        name: String,
        password: String,
        options: Option<rivet_api::authpb::UserAddOptions>,
    },
    UserChangePassword {
        name: String,
        password: String,
    },
    /// Every other request: it goes through raft as it is.
    Other(auth_request::Request),
}

/// What Authenticate answers.
pub struct AuthenticateAnswer {
    pub token: String,
}

impl ShardCore {
    /// Sets this core's auth view at start: the store of the checkpoint the member
    /// starts from, `--auth-token`, and the bcrypt pool.
    pub fn configure_auth(&self, state: Arc<AuthState>, config: TokenConfig, pool: PasswordPool) {
        let mut auth = self.auth.borrow_mut();
        auth.state = state;
        auth.config = config;
        auth.passwords = Some(pool);
    }

    /// The auth store this core applied last.
    pub fn auth_state(&self) -> Arc<AuthState> {
        Arc::clone(&self.auth.borrow().state)
    }

    pub fn auth_enabled(&self) -> bool {
        self.auth.borrow().state.is_enabled()
    }

    /// Takes the auth store and token updates out of an apply batch before the shard
    /// applies it.
    pub(super) fn apply_auth_updates(&self, batch: &mut ApplyBatch) {
        if batch.auth.is_none() && batch.tokens.is_empty() {
            return;
        }
        let mut auth = self.auth.borrow_mut();
        if let Some(state) = batch.auth.take() {
            auth.state = state;
        }
        if !batch.tokens.is_empty() {
            for update in batch.tokens.drain(..) {
                auth.tokens.apply(&update);
            }
            // Tokens are assigned only here; dropping the dead ones at the same time
            // bounds the table by the tokens of the last TTL.
            auth.tokens.sweep(Instant::now());
        }
    }

    /// etcd's `AuthInfoFromCtx` + `AuthInfoFromTLS`: who a request is from, `None`
    /// without credentials (or with only a certificate while auth is off). A simple token
    /// names the raft index that assigned it: this core first waits until every shard
    /// applied it (etcd's index waiter). As in etcd, a token is looked up even while auth
    /// is off: a simple token is then always `invalid auth token` (AuthDisable dropped
    /// them all), a valid JWT names its user.
    pub async fn caller(
        &self,
        token: Option<&str>,
        common_name: Option<&str>,
    ) -> Result<Option<AuthInfo>, EtcdError> {
        let enabled = self.auth_enabled();
        if !enabled && token.is_none() {
            return Ok(None);
        }
        if let Some(token) = token {
            let simple = matches!(self.auth.borrow().config, TokenConfig::Simple { .. });
            if simple {
                match simple_token_index(token) {
                    Some(index) => self.wait_applied(index).await,
                    None => return Err(EtcdError::InvalidAuthToken),
                }
            }
        }
        let auth = self.auth.borrow();
        let now_unix_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if let (false, Some(token)) = (enabled, token) {
            let found = match &auth.config {
                TokenConfig::Simple { .. } => auth
                    .tokens
                    .lookup(token, Instant::now())
                    .map(|user| AuthInfo::new(user, auth.state.revision())),
                TokenConfig::Jwt(provider) => provider.verify(token, now_unix_seconds),
                TokenConfig::None => None,
            };
            return found.map(Some).ok_or(EtcdError::InvalidAuthToken);
        }
        resolve_credentials(
            &auth.state,
            &auth.config,
            &auth.tokens,
            token,
            common_name,
            Instant::now(),
            now_unix_seconds,
        )
    }

    /// Serves one Auth service request: passwords hashed or checked on the bcrypt pool,
    /// then the request through raft, applied by the auth applier with `caller`'s rights.
    /// Answers the response without its header.
    pub async fn auth_call(
        &self,
        call: AuthCall,
        caller: Option<AuthInfo>,
    ) -> Result<AuthResponse, EtcdError> {
        let request = match call {
            AuthCall::Authenticate { name, password } => {
                return self.authenticate(name, password).await;
            }
            AuthCall::UserAdd {
                name,
                password,
                options,
            } => {
                let no_password = options.as_ref().is_some_and(|o| o.no_password);
                // etcd refuses an empty name before hashing anything.
                let hashed_password = if no_password || name.is_empty() {
                    Default::default()
                } else {
                    self.password_pool()?.hash(password)?.await?
                };
                auth_request::Request::UserAdd(UserAddHashed {
                    name,
                    hashed_password,
                    options,
                })
            }
            AuthCall::UserChangePassword { name, password } => {
                let hashed_password = self.password_pool()?.hash(password)?.await?;
                auth_request::Request::UserChangePassword(UserChangePasswordHashed {
                    name,
                    hashed_password,
                })
            }
            AuthCall::Other(request) => request,
        };
        match self.propose_auth(request, caller).await? {
            Applied::Auth(response) => Ok(*response),
            other => Err(super::unexpected(other)),
        }
    }

    fn password_pool(&self) -> Result<PasswordPool, EtcdError> {
        self.auth
            .borrow()
            .passwords
            .clone()
            .ok_or_else(|| EtcdError::Internal("no password pool on this core".into()))
    }

    async fn propose_auth(
        &self,
        request: auth_request::Request,
        caller: Option<AuthInfo>,
    ) -> Result<Applied, EtcdError> {
        let request = internal_request::Request::Auth(AuthRequest {
            caller: caller.map(|c| c.to_caller()),
            request: Some(request),
        });
        Ok(self.propose(request).await?.applied)
    }

    /// etcd's Authenticate: a linearizable read barrier, the password checked against
    /// this core's store on the bcrypt pool, then the request through raft; again if the
    /// store moved meanwhile. A simple token is assigned at apply on every member; a JWT
    /// is signed here, on the pool (RSA signing is slow).
    async fn authenticate(
        &self,
        name: String,
        password: String,
    ) -> Result<AuthResponse, EtcdError> {
        let pool = self.password_pool()?;
        for _ in 0..AUTHENTICATE_TRIES_MAX {
            self.read_index().await?;
            let check = PasswordCheck::start(&self.auth_state(), &name)?;
            let checked_revision = pool.verify(check, password.clone())?.await?;
            let simple = matches!(self.auth.borrow().config, TokenConfig::Simple { .. });
            let prefix = if simple {
                simple_token_prefix()
            } else {
                String::new()
            };
            let request = auth_request::Request::Authenticate(AuthenticateInternal {
                name: name.clone(),
                simple_token_prefix: prefix,
                checked_revision,
            });
            let authenticated = match self.propose_auth(request, None).await? {
                Applied::AuthStalePasswordCheck => continue,
                Applied::Auth(response) => match *response {
                    AuthResponse::Authenticate(authenticated) => authenticated,
                    other => {
                        return Err(EtcdError::Internal(format!(
                            "unexpected authenticate result {other:?}"
                        )))
                    }
                },
                other => return Err(super::unexpected(other)),
            };
            let config = self.auth.borrow().config.clone();
            let token = match config {
                TokenConfig::Simple { .. } => authenticated
                    .simple_token
                    .clone()
                    .ok_or_else(|| EtcdError::Internal("no simple token assigned".into()))?,
                TokenConfig::Jwt(provider) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128);
                    let username = authenticated.username.clone();
                    let revision = authenticated.revision;
                    pool.run(move || provider.sign(&username, revision, now))?
                        .await?
                }
                // etcd's nop provider: Authenticate fails after the apply.
                TokenConfig::None => return Err(EtcdError::AuthFailed),
            };
            return Ok(AuthResponse::Authenticate(crate::auth::Authenticated {
                simple_token: Some(token),
                ..authenticated
            }));
        }
        Err(EtcdError::Timeout)
    }
}

/// How long a simple token lives, as `--auth-token-ttl` sets it (0: etcd's default).
pub fn simple_token_ttl(seconds: u64) -> Duration {
    if seconds == 0 {
        SIMPLE_TOKEN_TTL_DEFAULT
    } else {
        Duration::from_secs(seconds)
    }
}
