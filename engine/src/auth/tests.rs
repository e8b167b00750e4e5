//! The auth store's behaviour, request by request, with etcd 3.4's errors and revisions.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rivet_api::authpb::{permission, Permission, Role, User, UserAddOptions};
use rivet_api::etcdserverpb::{
    compare, request_op, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest,
    AuthRoleDeleteRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, Compare,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use rivet_api::rivetpb::{
    auth_request, AuthRequest, AuthStoreState, AuthenticateInternal, UserAddHashed,
    UserChangePasswordHashed,
};

use super::request::{self, NoLeases, Rpc};
use super::*;
use crate::error::EtcdError;

const HASH: &[u8] = b"$2a$04$abcdefghijklmnopqrstuu5qJ0t1JDv3eP7SPbO1rGr6VhzQJHtIW";

fn root() -> AuthInfo {
    AuthInfo::new("root", 0)
}

fn req(caller: &AuthInfo, request: auth_request::Request) -> AuthRequest {
    AuthRequest {
        caller: Some(caller.to_caller()),
        request: Some(request),
    }
}

fn user_add(name: &str) -> auth_request::Request {
    auth_request::Request::UserAdd(UserAddHashed {
        name: name.into(),
        hashed_password: Bytes::from_static(HASH),
        options: None,
    })
}

fn role_add(name: &str) -> auth_request::Request {
    auth_request::Request::RoleAdd(AuthRoleAddRequest { name: name.into() })
}

fn grant_role(user: &str, role: &str) -> auth_request::Request {
    auth_request::Request::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn perm(kind: permission::Type, key: &str, end: &str) -> Permission {
    Permission {
        perm_type: kind as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::copy_from_slice(end.as_bytes()),
    }
}

fn grant_perm(role: &str, p: Permission) -> auth_request::Request {
    auth_request::Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(p),
    })
}

fn enable() -> auth_request::Request {
    auth_request::Request::AuthEnable(AuthEnableRequest {})
}

/// Applies as `caller`; answers the error, if any.
fn run(
    store: &mut AuthStore,
    caller: &AuthInfo,
    request: auth_request::Request,
) -> Option<EtcdError> {
    match store.apply(&req(caller, request), 100).result {
        Ok(_) => None,
        Err(AuthApplyError::Etcd(e)) => Some(e),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

fn ok(store: &mut AuthStore, caller: &AuthInfo, request: auth_request::Request) {
    if let Some(error) = run(store, caller, request) {
        panic!("refused: {error}");
    }
}

/// root (with the root role) and auth on.
fn enabled_store() -> AuthStore {
    let mut store = AuthStore::new();
    let nobody = AuthInfo::default();
    ok(&mut store, &nobody, user_add("root"));
    ok(&mut store, &nobody, grant_role("root", "root"));
    ok(&mut store, &nobody, enable());
    store
}

#[test]
fn new_store_is_off_at_revision_one() {
    let store = AuthStore::new();
    assert!(!store.state().is_enabled());
    assert_eq!(store.state().revision(), 1);
}

#[test]
fn enable_needs_root_user_with_root_role() {
    let mut store = AuthStore::new();
    let nobody = AuthInfo::default();
    assert_eq!(
        run(&mut store, &nobody, enable()),
        Some(EtcdError::RootUserNotExist)
    );
    assert_eq!(
        EtcdError::RootUserNotExist.to_string(),
        "etcdserver: root user does not exist"
    );
    ok(&mut store, &nobody, user_add("root"));
    assert_eq!(
        run(&mut store, &nobody, enable()),
        Some(EtcdError::RootRoleNotExist)
    );
    // The root role need not exist to be granted.
    ok(&mut store, &nobody, grant_role("root", "root"));
    let before = store.state().revision();
    ok(&mut store, &nobody, enable());
    assert!(store.state().is_enabled());
    assert_eq!(
        store.state().revision(),
        before,
        "AuthEnable keeps the revision"
    );
    // Enabling again is fine, even without credentials: etcd answers success.
    assert_eq!(
        run(&mut store, &nobody, enable()),
        Some(EtcdError::UserEmpty)
    );
    ok(&mut store, &root(), enable());
}

#[test]
fn revisions_bump_as_etcd() {
    let mut store = AuthStore::new();
    let nobody = AuthInfo::default();
    let mut expect = 1;
    let mut step = |store: &mut AuthStore, r: auth_request::Request, bumps: bool| {
        let _ = run(store, &nobody, r);
        if bumps {
            expect += 1;
        }
        assert_eq!(store.state().revision(), expect);
    };
    step(&mut store, user_add("alice"), true);
    step(&mut store, user_add("alice"), false); // exists
    step(&mut store, role_add("r"), true);
    step(&mut store, role_add("r"), false);
    step(&mut store, grant_role("alice", "r"), true);
    step(&mut store, grant_role("alice", "r"), false); // already granted
    step(
        &mut store,
        grant_perm("r", perm(permission::Type::Read, "a", "b")),
        true,
    );
    // Same key and range: only the type changes, still a new revision.
    step(
        &mut store,
        grant_perm("r", perm(permission::Type::Write, "a", "b")),
        true,
    );
    step(
        &mut store,
        auth_request::Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "r".into(),
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"b"),
        }),
        true,
    );
    step(
        &mut store,
        auth_request::Request::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "r".into(),
        }),
        true,
    );
    step(
        &mut store,
        auth_request::Request::UserChangePassword(UserChangePasswordHashed {
            name: "alice".into(),
            hashed_password: Bytes::from_static(HASH),
        }),
        true,
    );
    step(
        &mut store,
        auth_request::Request::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }),
        true,
    );
    step(
        &mut store,
        auth_request::Request::UserDelete(AuthUserDeleteRequest {
            name: "alice".into(),
        }),
        true,
    );
    // Reads never bump.
    step(
        &mut store,
        auth_request::Request::UserList(AuthUserListRequest {}),
        false,
    );
    step(
        &mut store,
        auth_request::Request::RoleList(AuthRoleListRequest {}),
        false,
    );
    step(
        &mut store,
        auth_request::Request::AuthStatus(AuthStatusRequest {}),
        false,
    );
    // Disable bumps only when it was on.
    step(
        &mut store,
        auth_request::Request::AuthDisable(AuthDisableRequest {}),
        false,
    );
    step(&mut store, user_add("root"), true);
    step(&mut store, grant_role("root", "root"), true);
    step(&mut store, enable(), false);
    let r = req(
        &root(),
        auth_request::Request::AuthDisable(AuthDisableRequest {}),
    );
    let applied = store.apply(&r, 9);
    assert!(applied.result.is_ok());
    assert_eq!(applied.token_events, vec![TokenEvent::InvalidateAll]);
    assert_eq!(store.state().revision(), expect + 1);
}

#[test]
fn user_errors() {
    let mut store = AuthStore::new();
    let nobody = AuthInfo::default();
    assert_eq!(
        run(&mut store, &nobody, user_add("")),
        Some(EtcdError::UserEmpty)
    );
    ok(&mut store, &nobody, user_add("alice"));
    assert_eq!(
        run(&mut store, &nobody, user_add("alice")),
        Some(EtcdError::UserAlreadyExist)
    );
    assert_eq!(
        EtcdError::UserAlreadyExist.to_string(),
        "etcdserver: user name already exists"
    );
    assert_eq!(
        run(&mut store, &nobody, grant_role("bob", "r")),
        Some(EtcdError::UserNotFound)
    );
    assert_eq!(
        run(&mut store, &nobody, grant_role("alice", "r")),
        Some(EtcdError::RoleNotFound)
    );
    assert_eq!(
        run(
            &mut store,
            &nobody,
            auth_request::Request::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "r".into()
            })
        ),
        Some(EtcdError::RoleNotGranted)
    );
    assert_eq!(
        run(
            &mut store,
            &nobody,
            auth_request::Request::UserDelete(AuthUserDeleteRequest { name: "bob".into() })
        ),
        Some(EtcdError::UserNotFound)
    );
    assert_eq!(
        run(
            &mut store,
            &nobody,
            auth_request::Request::UserChangePassword(UserChangePasswordHashed {
                name: "bob".into(),
                hashed_password: Bytes::new()
            })
        ),
        Some(EtcdError::UserNotFound)
    );
    assert_eq!(
        run(
            &mut store,
            &nobody,
            auth_request::Request::UserGet(AuthUserGetRequest { name: "bob".into() })
        ),
        Some(EtcdError::UserNotFound)
    );
}

#[test]
fn root_is_protected_while_enabled() {
    let mut store = enabled_store();
    let r = root();
    assert_eq!(
        run(
            &mut store,
            &r,
            auth_request::Request::UserDelete(AuthUserDeleteRequest {
                name: "root".into()
            })
        ),
        Some(EtcdError::InvalidAuthMgmt)
    );
    assert_eq!(
        run(
            &mut store,
            &r,
            auth_request::Request::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into()
            })
        ),
        Some(EtcdError::InvalidAuthMgmt)
    );
    ok(&mut store, &r, role_add("root"));
    assert_eq!(
        run(
            &mut store,
            &r,
            auth_request::Request::RoleDelete(AuthRoleDeleteRequest {
                role: "root".into()
            })
        ),
        Some(EtcdError::InvalidAuthMgmt)
    );
    assert_eq!(
        EtcdError::InvalidAuthMgmt.to_string(),
        "etcdserver: invalid auth management"
    );
    // Once disabled, all three are allowed.
    ok(
        &mut store,
        &r,
        auth_request::Request::AuthDisable(AuthDisableRequest {}),
    );
    ok(
        &mut store,
        &r,
        auth_request::Request::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        }),
    );
    ok(
        &mut store,
        &r,
        auth_request::Request::RoleDelete(AuthRoleDeleteRequest {
            role: "root".into(),
        }),
    );
    ok(
        &mut store,
        &r,
        auth_request::Request::UserDelete(AuthUserDeleteRequest {
            name: "root".into(),
        }),
    );
}

#[test]
fn admin_requests_need_root() {
    let mut store = enabled_store();
    let r = root();
    ok(&mut store, &r, user_add("alice"));
    ok(&mut store, &r, role_add("reader"));
    ok(&mut store, &r, grant_role("alice", "reader"));
    let alice = AuthInfo::new("alice", store.state().revision());
    let nobody = AuthInfo::default();
    let ghost = AuthInfo::new("ghost", store.state().revision());
    for request in [
        user_add("bob"),
        role_add("x"),
        auth_request::Request::UserList(AuthUserListRequest {}),
        auth_request::Request::RoleList(AuthRoleListRequest {}),
        auth_request::Request::AuthDisable(AuthDisableRequest {}),
        auth_request::Request::AuthStatus(AuthStatusRequest {}),
        grant_perm("reader", perm(permission::Type::Read, "a", "")),
    ] {
        assert_eq!(
            run(&mut store, &alice, request.clone()),
            Some(EtcdError::PermissionDenied)
        );
        assert_eq!(
            run(&mut store, &nobody, request.clone()),
            Some(EtcdError::UserEmpty)
        );
        assert_eq!(
            run(&mut store, &ghost, request),
            Some(EtcdError::UserNotFound)
        );
    }
    // ETCD_LESSONS 28: one's own user and roles are readable.
    ok(
        &mut store,
        &alice,
        auth_request::Request::UserGet(AuthUserGetRequest {
            name: "alice".into(),
        }),
    );
    ok(
        &mut store,
        &alice,
        auth_request::Request::RoleGet(AuthRoleGetRequest {
            role: "reader".into(),
        }),
    );
    assert_eq!(
        run(
            &mut store,
            &alice,
            auth_request::Request::UserGet(AuthUserGetRequest {
                name: "root".into()
            })
        ),
        Some(EtcdError::PermissionDenied)
    );
    assert_eq!(
        run(
            &mut store,
            &alice,
            auth_request::Request::RoleGet(AuthRoleGetRequest {
                role: "root".into()
            })
        ),
        Some(EtcdError::PermissionDenied)
    );
    // Own user that does not exist any more: not found, like etcd.
    let deleted = AuthInfo::new("carol", 1);
    assert_eq!(
        run(
            &mut store,
            &deleted,
            auth_request::Request::UserGet(AuthUserGetRequest {
                name: "carol".into()
            })
        ),
        Some(EtcdError::UserNotFound)
    );
}

#[test]
fn role_errors_and_lists() {
    let mut store = AuthStore::new();
    let n = AuthInfo::default();
    assert_eq!(
        run(&mut store, &n, role_add("")),
        Some(EtcdError::RoleEmpty)
    );
    ok(&mut store, &n, role_add("b"));
    ok(&mut store, &n, role_add("a"));
    assert_eq!(
        run(&mut store, &n, role_add("a")),
        Some(EtcdError::RoleAlreadyExist)
    );
    assert_eq!(
        run(
            &mut store,
            &n,
            grant_perm("zz", perm(permission::Type::Read, "k", ""))
        ),
        Some(EtcdError::RoleNotFound)
    );
    assert_eq!(
        run(
            &mut store,
            &n,
            auth_request::Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "a".into(),
                perm: None
            })
        ),
        Some(EtcdError::PermissionNotGiven)
    );
    assert_eq!(
        run(
            &mut store,
            &n,
            auth_request::Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "a".into(),
                key: Bytes::from_static(b"k"),
                range_end: Bytes::new(),
            })
        ),
        Some(EtcdError::PermissionNotGranted)
    );
    assert_eq!(
        run(
            &mut store,
            &n,
            auth_request::Request::RoleGet(AuthRoleGetRequest { role: "zz".into() })
        ),
        Some(EtcdError::RoleNotFound)
    );
    ok(&mut store, &n, user_add("u2"));
    ok(&mut store, &n, user_add("u1"));
    let state = store.snapshot();
    assert_eq!(state.role_list(&n).expect("list").roles, vec!["a", "b"]);
    assert_eq!(state.user_list(&n).expect("list").users, vec!["u1", "u2"]);
}

#[test]
fn permission_ranges_are_validated() {
    let mut store = AuthStore::new();
    let n = AuthInfo::default();
    ok(&mut store, &n, role_add("r"));
    for (key, end) in [("", ""), ("", "a"), ("b", "a"), ("b", "b")] {
        assert_eq!(
            run(
                &mut store,
                &n,
                grant_perm("r", perm(permission::Type::Read, key, end))
            ),
            Some(EtcdError::InvalidAuthMgmt),
            "{key:?} {end:?}"
        );
    }
    // The whole key space from an empty key (ETCD_LESSONS 27), stored as etcdctl sends it.
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Read, "", "\0")),
    );
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Read, "a", "\0")),
    );
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Read, "a", "b")),
    );
    let perms = store.snapshot().role_get(&n, "r").expect("role").perm;
    assert_eq!(
        perms,
        vec![
            perm(permission::Type::Read, "\0", "\0"),
            perm(permission::Type::Read, "a", "\0"),
            perm(permission::Type::Read, "a", "b"),
        ]
    );
}

#[test]
fn permission_merging_follows_etcd() {
    let mut store = AuthStore::new();
    let n = AuthInfo::default();
    ok(&mut store, &n, role_add("r"));
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Read, "c", "")),
    );
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Read, "a", "")),
    );
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Read, "a", "b")),
    );
    // Same key and end as an existing one: the type is updated in place.
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Readwrite, "c", "")),
    );
    // etcd only looks at the first permission with this key: ("a", "") differs from
    // ("a", "b"), so ("a", "b") is appended again (a duplicate, as in etcd).
    ok(
        &mut store,
        &n,
        grant_perm("r", perm(permission::Type::Write, "a", "b")),
    );
    let perms = store.snapshot().role_get(&n, "r").expect("role").perm;
    assert_eq!(
        perms,
        vec![
            perm(permission::Type::Read, "a", ""),
            perm(permission::Type::Read, "a", "b"),
            perm(permission::Type::Write, "a", "b"),
            perm(permission::Type::Readwrite, "c", ""),
        ]
    );
    // Revoking removes every permission with that key and end.
    ok(
        &mut store,
        &n,
        auth_request::Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "r".into(),
            key: Bytes::from_static(b"a"),
            range_end: Bytes::from_static(b"b"),
        }),
    );
    assert_eq!(
        store.snapshot().role_get(&n, "r").expect("role").perm.len(),
        2
    );
}

#[test]
fn user_options_and_stored_bytes() {
    let mut store = AuthStore::new();
    let n = AuthInfo::default();
    ok(&mut store, &n, user_add("alice"));
    ok(
        &mut store,
        &n,
        auth_request::Request::UserAdd(UserAddHashed {
            name: "robot".into(),
            hashed_password: Bytes::from_static(HASH),
            options: Some(UserAddOptions { no_password: true }),
        }),
    );
    let state = store.snapshot();
    let alice = state.user("alice").expect("alice");
    assert!(!alice.no_password());
    assert_eq!(alice.password_hash(), HASH);
    let robot = state.user("robot").expect("robot");
    assert!(robot.no_password());
    assert!(
        robot.password_hash().is_empty(),
        "no-password users keep no hash"
    );
    // The bytes etcd's authUsers bucket holds for a user added by etcdctl: name,
    // password, then an empty options message (etcd always stores options).
    let bytes = alice.user.encode_to_vec();
    let mut expected = vec![0x0a, 5];
    expected.extend_from_slice(b"alice");
    expected.extend_from_slice(&[0x12, HASH.len() as u8]);
    expected.extend_from_slice(HASH);
    expected.extend_from_slice(&[0x22, 0]);
    assert_eq!(bytes, expected);
}

#[test]
fn role_delete_revokes_it_from_users() {
    let mut store = AuthStore::new();
    let n = AuthInfo::default();
    ok(&mut store, &n, user_add("u"));
    ok(&mut store, &n, role_add("a"));
    ok(&mut store, &n, role_add("b"));
    ok(&mut store, &n, grant_role("u", "b"));
    ok(&mut store, &n, grant_role("u", "a"));
    assert_eq!(
        store.state().user("u").expect("u").user.roles,
        vec!["a", "b"]
    );
    ok(
        &mut store,
        &n,
        auth_request::Request::RoleDelete(AuthRoleDeleteRequest { role: "a".into() }),
    );
    assert_eq!(store.state().user("u").expect("u").user.roles, vec!["b"]);
}

#[test]
fn authenticate_apply() {
    let mut store = AuthStore::new();
    let n = AuthInfo::default();
    let authenticate = |name: &str, checked: u64| {
        auth_request::Request::Authenticate(AuthenticateInternal {
            name: name.into(),
            simple_token_prefix: "abcdefghijklmnop".into(),
            checked_revision: checked,
        })
    };
    assert_eq!(
        run(&mut store, &n, authenticate("root", 0)),
        Some(EtcdError::AuthNotEnabled)
    );
    let mut store = enabled_store();
    ok(
        &mut store,
        &root(),
        auth_request::Request::UserAdd(UserAddHashed {
            name: "robot".into(),
            hashed_password: Bytes::new(),
            options: Some(UserAddOptions { no_password: true }),
        }),
    );
    assert_eq!(
        run(&mut store, &n, authenticate("ghost", 0)),
        Some(EtcdError::AuthFailed)
    );
    assert_eq!(
        run(&mut store, &n, authenticate("robot", 0)),
        Some(EtcdError::AuthFailed)
    );
    let revision = store.state().revision();
    let applied = store.apply(&req(&n, authenticate("root", revision - 1)), 77);
    assert_eq!(applied.result, Err(AuthApplyError::StalePasswordCheck));
    assert!(applied.token_events.is_empty());
    let applied = store.apply(&req(&n, authenticate("root", revision)), 77);
    let Ok(AuthResponse::Authenticate(done)) = applied.result else {
        panic!("{:?}", applied.result);
    };
    assert_eq!(done.username, "root");
    assert_eq!(done.revision, revision);
    assert_eq!(done.simple_token.as_deref(), Some("abcdefghijklmnop.77"));
    assert_eq!(
        applied.token_events,
        vec![TokenEvent::Assigned {
            token: "abcdefghijklmnop.77".into(),
            username: "root".into()
        }]
    );
    // A JWT member proposes no prefix: no token event, the answering member signs.
    let applied = store.apply(
        &req(
            &n,
            auth_request::Request::Authenticate(AuthenticateInternal {
                name: "root".into(),
                simple_token_prefix: String::new(),
                checked_revision: revision,
            }),
        ),
        78,
    );
    assert!(applied.token_events.is_empty());
    assert!(matches!(
        applied.result,
        Ok(AuthResponse::Authenticate(Authenticated {
            simple_token: None,
            ..
        }))
    ));
    // Deleting a user, or changing its password, drops its tokens.
    ok(&mut store, &root(), user_add("alice"));
    let applied = store.apply(
        &req(
            &root(),
            auth_request::Request::UserChangePassword(UserChangePasswordHashed {
                name: "alice".into(),
                hashed_password: Bytes::from_static(HASH),
            }),
        ),
        80,
    );
    assert_eq!(
        applied.token_events,
        vec![TokenEvent::InvalidateUser("alice".into())]
    );
}

#[test]
fn permission_checks() {
    let mut store = enabled_store();
    let r = root();
    ok(&mut store, &r, user_add("alice"));
    ok(&mut store, &r, role_add("reader"));
    ok(
        &mut store,
        &r,
        grant_perm("reader", perm(permission::Type::Read, "foo", "fop")),
    );
    ok(
        &mut store,
        &r,
        grant_perm("reader", perm(permission::Type::Write, "w", "")),
    );
    ok(&mut store, &r, grant_role("alice", "reader"));
    let state = store.snapshot();
    let rev = state.revision();
    let alice = AuthInfo::new("alice", rev);
    assert_eq!(
        state.check_range(&alice, b"foo1", b"", Access::Read),
        Ok(())
    );
    assert_eq!(
        state.check_range(&alice, b"foo", b"fop", Access::Read),
        Ok(())
    );
    assert_eq!(
        state.check_range(&alice, b"foo", b"\0", Access::Read),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(
        state.check_range(&alice, b"foo1", b"", Access::Write),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(state.check_range(&alice, b"w", b"", Access::Write), Ok(()));
    // Old token revision, no credentials, unknown user, root.
    let old = AuthInfo::new("alice", rev - 1);
    assert_eq!(
        state.check_range(&old, b"foo1", b"", Access::Read),
        Err(EtcdError::AuthOldRevision)
    );
    assert_eq!(
        state.check_range(&AuthInfo::default(), b"foo1", b"", Access::Read),
        Err(EtcdError::UserEmpty)
    );
    assert_eq!(
        state.check_range(&AuthInfo::new("ghost", rev), b"foo1", b"", Access::Read),
        Err(EtcdError::PermissionDenied)
    );
    let root_now = AuthInfo::new("root", rev);
    assert_eq!(
        state.check_range(&root_now, b"\0", b"\0", Access::Write),
        Ok(())
    );
    // A newer revision than this member's (a JWT from a member further ahead) passes
    // the check, then fails the after-read check.
    let newer = AuthInfo::new("alice", rev + 1);
    assert_eq!(
        state.check_range(&newer, b"foo1", b"", Access::Read),
        Ok(())
    );
    assert_eq!(
        request::check_unchanged_after_read(&state, &newer),
        Err(EtcdError::AuthOldRevision)
    );
    assert_eq!(request::check_unchanged_after_read(&state, &alice), Ok(()));

    // Permissions follow role changes: revoking the role bumps the revision, and the
    // user's permissions are rebuilt.
    ok(
        &mut store,
        &r,
        auth_request::Request::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "reader".into(),
        }),
    );
    let state = store.snapshot();
    let alice = AuthInfo::new("alice", state.revision());
    assert_eq!(
        state.check_range(&alice, b"foo1", b"", Access::Read),
        Err(EtcdError::PermissionDenied)
    );
    // Granting a permission to a role a user holds updates that user.
    ok(&mut store, &r, grant_role("alice", "reader"));
    ok(
        &mut store,
        &r,
        grant_perm("reader", perm(permission::Type::Read, "\0", "\0")),
    );
    let state = store.snapshot();
    let alice = AuthInfo::new("alice", state.revision());
    assert_eq!(
        state.check_range(&alice, b"\0", b"\0", Access::Read),
        Ok(())
    );
    // Auth off: everything is allowed.
    ok(
        &mut store,
        &r,
        auth_request::Request::AuthDisable(AuthDisableRequest {}),
    );
    let state = store.snapshot();
    assert_eq!(
        state.check_range(&AuthInfo::default(), b"x", b"", Access::Write),
        Ok(())
    );
}

#[test]
fn snapshots_are_unchanged_by_later_applies() {
    let mut store = enabled_store();
    let before = store.snapshot();
    ok(&mut store, &root(), user_add("alice"));
    assert!(before.user("alice").is_none());
    assert!(store.state().user("alice").is_some());
}

fn request_checks_store() -> (AuthStore, AuthInfo) {
    let mut store = enabled_store();
    let r = root();
    ok(&mut store, &r, user_add("u"));
    ok(&mut store, &r, role_add("rw"));
    ok(
        &mut store,
        &r,
        grant_perm("rw", perm(permission::Type::Readwrite, "a", "m")),
    );
    ok(
        &mut store,
        &r,
        grant_perm("rw", perm(permission::Type::Write, "w", "x")),
    );
    ok(&mut store, &r, grant_role("u", "rw"));
    let rev = store.state().revision();
    (store, AuthInfo::new("u", rev))
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    }
}

#[test]
fn request_level_checks() {
    let (store, u) = request_checks_store();
    let state = store.snapshot();
    let denied = Err(EtcdError::PermissionDenied);
    let range = |k: &str, e: &str| RangeRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        range_end: Bytes::copy_from_slice(e.as_bytes()),
        ..Default::default()
    };
    assert_eq!(request::check_range(&state, &u, &range("a", "b")), Ok(()));
    assert_eq!(request::check_range(&state, &u, &range("w", "")), denied);
    assert_eq!(
        request::check_put(&state, &u, &put("wa"), &NoLeases),
        Ok(())
    );
    // prev_kv needs read too.
    let mut p = put("wa");
    p.prev_kv = true;
    assert_eq!(request::check_put(&state, &u, &p, &NoLeases), denied);
    // A lease with a key the user may not write cannot be attached.
    let mut p = put("b");
    p.lease = 5;
    let leases = |id: i64| {
        if id == 5 {
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"z")]
        } else {
            vec![]
        }
    };
    assert_eq!(request::check_put(&state, &u, &p, &leases), denied);
    p.lease = 6;
    assert_eq!(request::check_put(&state, &u, &p, &leases), Ok(()));
    let root_now = AuthInfo::new("root", state.revision());
    p.lease = 5;
    assert_eq!(request::check_put(&state, &root_now, &p, &leases), Ok(()));
    // Delete with prev_kv.
    let mut d = DeleteRangeRequest {
        key: Bytes::from_static(b"w"),
        range_end: Bytes::from_static(b"wz"),
        ..Default::default()
    };
    assert_eq!(request::check_delete_range(&state, &u, &d), Ok(()));
    d.prev_kv = true;
    assert_eq!(request::check_delete_range(&state, &u, &d), denied);
    // Lease revoke: write on every attached key.
    assert_eq!(
        request::check_lease_keys_writable(&state, &u, &[Bytes::from_static(b"b")]),
        Ok(())
    );
    assert_eq!(
        request::check_lease_keys_writable(
            &state,
            &u,
            &[Bytes::from_static(b"b"), Bytes::from_static(b"z")]
        ),
        denied
    );
    assert_eq!(
        request::check_lease_keys_readable(&state, Some(&u), &[Bytes::from_static(b"wa")]),
        denied
    );
    assert_eq!(
        request::check_lease_keys_readable(&state, None, &[]),
        Err(EtcdError::UserEmpty)
    );
    // Watch: the whole range; an empty key is "\0".
    assert_eq!(request::check_watch_create(&state, &u, b"a", b"b"), Ok(()));
    assert_eq!(request::check_watch_create(&state, &u, b"a", b"\0"), denied);
    assert_eq!(request::check_watch_create(&state, &u, b"", b"\0"), denied);
    assert_eq!(
        request::check_watch_create(&state, &root_now, b"", b"\0"),
        Ok(())
    );
    assert_eq!(
        request::watch_cancel_reason(&EtcdError::PermissionDenied),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    assert_eq!(
        request::watch_cancel_reason(&EtcdError::InvalidAuthToken),
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
    );
    assert_eq!(
        request::watch_cancel_reason(&EtcdError::AuthOldRevision),
        "rpc error: code = InvalidArgument desc = etcdserver: revision of auth store is old"
    );
    assert_eq!(
        request::watch_cancel_reason(&EtcdError::RoleNotFound),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
}

#[test]
fn txn_checks_every_compare_and_op_nested() {
    let (store, u) = request_checks_store();
    let state = store.snapshot();
    let op_put = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(put(k))),
    };
    let op_range = |k: &str| RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ..Default::default()
        })),
    };
    let compare_on = |k: &str| Compare {
        key: Bytes::copy_from_slice(k.as_bytes()),
        target: compare::CompareTarget::Version as i32,
        ..Default::default()
    };
    let ok_txn = TxnRequest {
        compare: vec![compare_on("b")],
        success: vec![op_put("c"), op_range("d")],
        failure: vec![op_put("wa")],
    };
    assert_eq!(request::check_txn(&state, &u, &ok_txn, &NoLeases), Ok(()));
    // A compare on a key the user may not read.
    let mut t = ok_txn.clone();
    t.compare.push(compare_on("wa"));
    assert_eq!(
        request::check_txn(&state, &u, &t, &NoLeases),
        Err(EtcdError::PermissionDenied)
    );
    // The failure branch is checked although the success branch may be the one to run.
    let mut t = ok_txn.clone();
    t.failure.push(op_range("wa"));
    assert_eq!(
        request::check_txn(&state, &u, &t, &NoLeases),
        Err(EtcdError::PermissionDenied)
    );
    // Nested txns are checked (3.4.23 did not).
    let mut t = ok_txn.clone();
    t.success.push(RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![],
            success: vec![op_put("zz")],
            failure: vec![],
        })),
    });
    assert_eq!(
        request::check_txn(&state, &u, &t, &NoLeases),
        Err(EtcdError::PermissionDenied)
    );
}

#[test]
fn rpc_checks() {
    let (store, u) = request_checks_store();
    let state = store.snapshot();
    let root_now = AuthInfo::new("root", state.revision());
    for rpc in [
        Rpc::Compact,
        Rpc::Defragment,
        Rpc::Snapshot,
        Rpc::MoveLeader,
        Rpc::Status,
        Rpc::MemberAdd,
        Rpc::AlarmDeactivate,
        Rpc::Hash,
        Rpc::HashKv,
    ] {
        assert_eq!(
            request::check_rpc(&state, Some(&u), rpc),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            request::check_rpc(&state, None, rpc),
            Err(EtcdError::UserEmpty)
        );
        assert_eq!(request::check_rpc(&state, Some(&root_now), rpc), Ok(()));
    }
    for rpc in [
        Rpc::LeaseGrant,
        Rpc::LeaseRevoke,
        Rpc::MemberList,
        Rpc::AlarmGet,
    ] {
        assert_eq!(request::check_rpc(&state, Some(&u), rpc), Ok(()));
        assert_eq!(
            request::check_rpc(&state, None, rpc),
            Err(EtcdError::UserEmpty)
        );
    }
    let off = AuthStore::new().snapshot();
    assert_eq!(request::check_rpc(&off, None, Rpc::Compact), Ok(()));
}

#[test]
fn credentials_resolution() {
    let (mut store, _) = request_checks_store();
    let now = Instant::now();
    let mut table = SimpleTokenTable::new();
    let applied = store.apply(
        &req(
            &AuthInfo::default(),
            auth_request::Request::Authenticate(AuthenticateInternal {
                name: "u".into(),
                simple_token_prefix: "ABCDEFGHIJKLMNOP".into(),
                checked_revision: 0,
            }),
        ),
        12,
    );
    for event in applied.token_events {
        table.apply(&TokenUpdate::from_event(
            event,
            Duration::from_secs(300),
            now,
        ));
    }
    let state = store.snapshot();
    let simple = TokenConfig::Simple {
        ttl: Duration::from_secs(300),
    };
    let resolve = |token: Option<&str>, cn: Option<&str>| {
        resolve_credentials(&state, &simple, &table, token, cn, now, 0)
    };
    assert_eq!(
        resolve(Some("ABCDEFGHIJKLMNOP.12"), None),
        Ok(Some(AuthInfo::new("u", state.revision())))
    );
    assert_eq!(
        resolve(Some("nope.12"), None),
        Err(EtcdError::InvalidAuthToken)
    );
    // A token wins over the certificate name.
    assert_eq!(
        resolve(Some("ABCDEFGHIJKLMNOP.12"), Some("cn-user")),
        Ok(Some(AuthInfo::new("u", state.revision())))
    );
    assert_eq!(
        resolve(None, Some("cn-user")),
        Ok(Some(AuthInfo::new("cn-user", state.revision())))
    );
    assert_eq!(resolve(None, None), Ok(None));
    // Auth off: tokens are ignored.
    let off = AuthStore::new().snapshot();
    assert_eq!(
        resolve_credentials(&off, &simple, &table, Some("garbage"), None, now, 0),
        Ok(None)
    );
    // The nop provider (`--auth-token ''`) accepts nothing.
    assert_eq!(
        resolve_credentials(
            &state,
            &TokenConfig::None,
            &table,
            Some("x.1"),
            None,
            now,
            0
        ),
        Err(EtcdError::InvalidAuthToken)
    );
}

#[test]
fn encode_decode_round_trip() {
    let (mut store, _) = request_checks_store();
    ok(
        &mut store,
        &root(),
        auth_request::Request::UserAdd(UserAddHashed {
            name: "robot".into(),
            hashed_password: Bytes::new(),
            options: Some(UserAddOptions { no_password: true }),
        }),
    );
    let state = store.snapshot();
    let bytes = state.encode();
    let decoded = AuthState::decode(&bytes).expect("decodes");
    assert_eq!(&decoded, state.as_ref());
    assert_eq!(decoded.encode(), bytes);
    // The store goes on the same way after a restore.
    let mut restored = AuthStore::from_state(decoded);
    ok(&mut restored, &root(), role_add("new"));
    ok(&mut store, &root(), role_add("new"));
    assert_eq!(restored.state(), store.state());
}

#[test]
fn decode_refuses_bad_bytes() {
    assert!(AuthState::decode(&[0xff, 0xff, 0xff]).is_err());
    let good = AuthStore::new().snapshot().encode();
    assert!(good.is_empty() || AuthState::decode(&good).is_ok());
    // Revision 0 is impossible.
    let zero = AuthStoreState {
        enabled: false,
        revision: 0,
        users: vec![],
        roles: vec![],
    };
    assert!(AuthState::decode(&zero.encode_to_vec()).is_err());
    let user = |name: &[u8]| {
        Bytes::from(
            User {
                name: Bytes::copy_from_slice(name),
                password: Bytes::new(),
                roles: vec!["b".into(), "a".into(), "a".into()],
                options: None,
            }
            .encode_to_vec(),
        )
    };
    let with_users = |users: Vec<Bytes>| AuthStoreState {
        enabled: true,
        revision: 3,
        users,
        roles: vec![Bytes::from(
            Role {
                name: Bytes::from_static(b"a"),
                key_permission: vec![],
            }
            .encode_to_vec(),
        )],
    };
    assert!(AuthState::decode(&with_users(vec![user(b"")]).encode_to_vec()).is_err());
    assert!(AuthState::decode(&with_users(vec![user(&[0xff])]).encode_to_vec()).is_err());
    assert!(AuthState::decode(&with_users(vec![user(b"x"), user(b"x")]).encode_to_vec()).is_err());
    assert!(AuthState::decode(
        &with_users(vec![Bytes::from_static(&[0x0a, 0x09])]).encode_to_vec()
    )
    .is_err());
    // Roles are normalized sorted and unique, as etcd keeps them.
    let state = AuthState::decode(&with_users(vec![user(b"x")]).encode_to_vec()).expect("ok");
    assert_eq!(state.user("x").expect("x").user.roles, vec!["a", "b"]);
}

/// Thousands of roles and permissions: checks stay binary searches, and a role change
/// rebuilds only its holders.
#[test]
fn many_roles_and_permissions() {
    let mut store = enabled_store();
    let r = root();
    ok(&mut store, &r, user_add("big"));
    for i in 0..2000 {
        let role = format!("role{i}");
        ok(&mut store, &r, role_add(&role));
        let key = format!("k{i:05}");
        let end = format!("k{i:05}z");
        ok(
            &mut store,
            &r,
            grant_perm(&role, perm(permission::Type::Read, &key, &end)),
        );
        if i % 2 == 0 {
            ok(&mut store, &r, grant_role("big", &role));
        }
    }
    let state = store.snapshot();
    let big = AuthInfo::new("big", state.revision());
    let started = Instant::now();
    for i in 0..2000 {
        let key = format!("k{i:05}a");
        let expected = if i % 2 == 0 {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        };
        assert_eq!(
            state.check_range(&big, key.as_bytes(), b"", Access::Read),
            expected
        );
    }
    // Not a timing assertion: printed for the record.
    println!("2000 checks over 1000 roles: {:?}", started.elapsed());
    assert_eq!(
        state
            .user("big")
            .expect("big")
            .permissions
            .read
            .intervals()
            .len(),
        1000
    );
}

/// etcd's `checkLeasePuts` (LeaseRevoke at apply) checks each attached key as a put, the
/// auth revision before the root role: a stale token is refused even for root when the
/// lease has keys. A renewal (`checkLeaseRenew`) lets root through first.
#[test]
fn lease_revoke_checks_the_revision_before_the_root_role() {
    let (store, _) = request_checks_store();
    let state = store.snapshot();
    let revision = state.revision();
    let stale_root = AuthInfo::new("root", revision - 1);
    let keys = [Bytes::from_static(b"b")];
    assert_eq!(
        request::check_lease_keys_writable(&state, &stale_root, &keys),
        Err(EtcdError::AuthOldRevision)
    );
    assert_eq!(
        request::check_lease_keys_writable(&state, &stale_root, &[]),
        Ok(())
    );
    assert_eq!(
        request::check_lease_renew(&state, Some(&stale_root), &keys),
        Ok(())
    );
    let root = AuthInfo::new("root", revision);
    assert_eq!(
        request::check_lease_keys_writable(&state, &root, &keys),
        Ok(())
    );
}
