//! The Auth service (etcd 3.4's, every RPC). Each request goes through raft as etcd's do,
//! carrying the caller its token (or client certificate) names; the auth applier makes
//! the admin checks and answers etcd's errors. Passwords are hashed (UserAdd,
//! UserChangePassword) and checked (Authenticate) on the bcrypt pool before proposing:
//! only the hash travels (`engine/src/core/auth.rs`).

use rivet_api::etcdserverpb::{
    auth_server::Auth, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse,
};
use rivet_api::rivetpb::auth_request::Request as R;
use rivet_engine::auth::AuthResponse;
use rivet_engine::core::auth::AuthCall;
use rivet_engine::error::EtcdError;
use tonic::{Request, Response, Status};

use crate::services::CoreHandle;

pub struct AuthService(pub CoreHandle);

impl AuthService {
    /// Runs one Auth request as its caller and answers `pick`'s response with this
    /// member's header (etcd's `newHeader`: the current KV revision).
    async fn call<T, M>(
        &self,
        request: Request<M>,
        to_call: impl FnOnce(M) -> AuthCall,
        pick: impl FnOnce(AuthResponse) -> Option<T>,
        header: impl FnOnce(&mut T) -> &mut Option<rivet_api::etcdserverpb::ResponseHeader>,
    ) -> Result<Response<T>, Status> {
        // Authenticate is the one request etcd serves without looking at a token.
        let credentials = self.0.credentials(&request);
        let call = to_call(request.into_inner());
        let credentials = match call {
            AuthCall::Authenticate { .. } => Default::default(),
            _ => credentials,
        };
        self.0
            .run_as(credentials, |core, caller| async move {
                let response = core.auth_call(call, caller).await?;
                let mut response = pick(response)
                    .ok_or_else(|| EtcdError::Internal("unexpected auth response kind".into()))?;
                *header(&mut response) = Some(core.current_header());
                Ok(response)
            })
            .await
    }
}

/// The service: the RPCs that go through raft as the client sent them, and the ones
/// written out after them (`async_trait` must see the expanded methods, so the whole
/// impl is generated here).
macro_rules! auth_service {
    ($(($method:ident, $request:ty, $response:ty, $variant:ident)),* ; $($custom:tt)*) => {
        #[tonic::async_trait]
        impl Auth for AuthService {
            $(
                async fn $method(
                    &self,
                    request: Request<$request>,
                ) -> Result<Response<$response>, Status> {
                    self.call(
                        request,
                        |r| AuthCall::Other(R::$variant(r)),
                        |response| match response {
                            AuthResponse::$variant(r) => Some(r),
                            _ => None,
                        },
                        |r: &mut $response| &mut r.header,
                    )
                    .await
                }
            )*
            $($custom)*
        }
    };
}

auth_service! {
    (auth_enable, AuthEnableRequest, AuthEnableResponse, AuthEnable),
    (auth_disable, AuthDisableRequest, AuthDisableResponse, AuthDisable),
    (auth_status, AuthStatusRequest, AuthStatusResponse, AuthStatus),
    (user_get, AuthUserGetRequest, AuthUserGetResponse, UserGet),
    (user_list, AuthUserListRequest, AuthUserListResponse, UserList),
    (user_delete, AuthUserDeleteRequest, AuthUserDeleteResponse, UserDelete),
    (user_grant_role, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, UserGrantRole),
    (user_revoke_role, AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, UserRevokeRole),
    (role_add, AuthRoleAddRequest, AuthRoleAddResponse, RoleAdd),
    (role_get, AuthRoleGetRequest, AuthRoleGetResponse, RoleGet),
    (role_list, AuthRoleListRequest, AuthRoleListResponse, RoleList),
    (role_delete, AuthRoleDeleteRequest, AuthRoleDeleteResponse, RoleDelete),
    (
        role_grant_permission,
        AuthRoleGrantPermissionRequest,
        AuthRoleGrantPermissionResponse,
        RoleGrantPermission
    ),
    (
        role_revoke_permission,
        AuthRoleRevokePermissionRequest,
        AuthRoleRevokePermissionResponse,
        RoleRevokePermission
    );

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.call(
            request,
            |r| AuthCall::Authenticate {
                name: r.name,
                password: r.password,
            },
            |response| match response {
                AuthResponse::Authenticate(done) => Some(AuthenticateResponse {
                    header: None,
                    token: done.simple_token.unwrap_or_default(),
                }),
                _ => None,
            },
            |r| &mut r.header,
        )
        .await
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.call(
            request,
            |r| AuthCall::UserAdd {
                name: r.name,
                password: r.password,
                options: r.options,
            },
            |response| match response {
                AuthResponse::UserAdd(r) => Some(r),
                _ => None,
            },
            |r| &mut r.header,
        )
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.call(
            request,
            |r| AuthCall::UserChangePassword {
                name: r.name,
                password: r.password,
            },
            |response| match response {
                AuthResponse::UserChangePassword(r) => Some(r),
                _ => None,
            },
            |r| &mut r.header,
        )
        .await
    }
}
