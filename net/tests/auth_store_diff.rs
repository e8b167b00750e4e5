//! Differential check of the auth store (`rivet_engine::auth`) against real etcd 3.4: one
//! script of auth administration runs through `etcdctl` against etcd and through the
//! store's `apply`; every step must give the same error (gRPC code and message) or the
//! same answer (roles, users, permissions), and leave the same auth revision (etcd's
//! `etcd_debugging_auth_revision` metric). Also: JWTs cross both ways between etcd and
//! `JwtProvider`.
//!
//! This checks the store below the wiring; `net/tests/auth.rs` runs etcdctl against the
//! Auth service a rivet member serves.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use rivet_api::authpb::{permission, Permission, UserAddOptions};
use rivet_api::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest,
};
use rivet_api::rivetpb::{
    auth_request::Request, AuthRequest, UserAddHashed, UserChangePasswordHashed,
};
use rivet_engine::auth::password::hash_password;
use rivet_engine::auth::{
    AuthApplyError, AuthInfo, AuthResponse, AuthStore, JwtProvider, SignMethod,
};
use serde_json::Value;

use common::{etcdctl, http_get, http_post, Etcd};
use rivet_engine::error::EtcdError;

/// What one step gave: an error (gRPC code name when etcdctl showed it, and message), or
/// the answer's fields that matter.
#[derive(Debug, PartialEq)]
enum Outcome {
    Error(String),
    Ok(Value),
}

fn etcd_auth_revision(endpoint: &str) -> u64 {
    let metrics = http_get(endpoint, "/metrics").expect("metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("etcd_debugging_auth_revision "))
        .and_then(|v| v.trim().parse().ok())
        .expect("etcd_debugging_auth_revision")
}

fn etcd_outcome(output: &std::process::Output) -> Outcome {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        // Some commands (auth enable/disable) print text even with `-w json`.
        let mut json: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| Value::Object(serde_json::Map::new()));
        if let Value::Object(map) = &mut json {
            map.remove("header");
        }
        return Outcome::Ok(json);
    }
    // clientv3's retry interceptor logs the status with its code; etcdctl then prints
    // "Error: <message>".
    if let Some(at) = stderr.find("rpc error: code = ") {
        let rest = &stderr[at + "rpc error: code = ".len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        return Outcome::Error(rest[..end].to_string());
    }
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error: "))
        .unwrap_or(&stderr);
    Outcome::Error(line.trim().to_string())
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::InvalidArgument => "InvalidArgument",
        C::FailedPrecondition => "FailedPrecondition",
        C::PermissionDenied => "PermissionDenied",
        C::Unauthenticated => "Unauthenticated",
        C::NotFound => "NotFound",
        _ => "Unknown",
    }
}

fn permission_json(p: &Permission) -> Value {
    let mut map = serde_json::Map::new();
    if p.perm_type != 0 {
        map.insert("permType".into(), p.perm_type.into());
    }
    if !p.key.is_empty() {
        map.insert("key".into(), STANDARD.encode(&p.key).into());
    }
    if !p.range_end.is_empty() {
        map.insert("range_end".into(), STANDARD.encode(&p.range_end).into());
    }
    Value::Object(map)
}

/// Our answer in the shape of etcdctl's `-w json` output (Go's JSON of the response,
/// empty fields left out, header removed).
fn our_outcome(result: Result<AuthResponse, AuthApplyError>) -> Outcome {
    let response = match result {
        Err(AuthApplyError::Etcd(e)) => {
            return Outcome::Error(format!("{} desc = {e}", code_name(e.code())))
        }
        Err(other) => panic!("unexpected {other:?}"),
        Ok(response) => response,
    };
    let mut map = serde_json::Map::new();
    match response {
        AuthResponse::UserGet(r) if !r.roles.is_empty() => {
            map.insert("roles".into(), r.roles.into());
        }
        AuthResponse::UserList(r) if !r.users.is_empty() => {
            map.insert("users".into(), r.users.into());
        }
        AuthResponse::RoleList(r) if !r.roles.is_empty() => {
            map.insert("roles".into(), r.roles.into());
        }
        AuthResponse::RoleGet(r) if !r.perm.is_empty() => {
            map.insert(
                "perm".into(),
                Value::Array(r.perm.iter().map(permission_json).collect()),
            );
        }
        _ => {}
    }
    Outcome::Ok(Value::Object(map))
}

fn perm(kind: permission::Type, key: &[u8], end: &[u8]) -> Permission {
    Permission {
        perm_type: kind as i32,
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(end),
    }
}

/// One step: the etcdctl arguments, the request our store applies, and who runs it.
struct Step {
    user: Option<(&'static str, &'static str)>,
    args: Vec<&'static str>,
    stdin: Option<&'static str>,
    request: Request,
}

fn step(args: &[&'static str], request: Request) -> Step {
    Step {
        user: None,
        args: args.to_vec(),
        stdin: None,
        request,
    }
}

fn as_user(user: &'static str, password: &'static str, mut s: Step) -> Step {
    s.user = Some((user, password));
    s
}

fn hashed(name: &str, password: &str) -> Request {
    Request::UserAdd(UserAddHashed {
        name: name.into(),
        hashed_password: hash_password(password.as_bytes(), 4).expect("hash"),
        options: None,
    })
}

fn script() -> Vec<Step> {
    use permission::Type::{Read, Readwrite, Write};
    let role_add = |n: &str| Request::RoleAdd(AuthRoleAddRequest { name: n.into() });
    let grant_role = |u: &str, r: &str| {
        Request::UserGrantRole(AuthUserGrantRoleRequest {
            user: u.into(),
            role: r.into(),
        })
    };
    let revoke_role = |u: &str, r: &str| {
        Request::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: u.into(),
            role: r.into(),
        })
    };
    let grant = |r: &str, p: Permission| {
        Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: r.into(),
            perm: Some(p),
        })
    };
    let revoke = |r: &str, k: &[u8], e: &[u8]| {
        Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: r.into(),
            key: Bytes::copy_from_slice(k),
            range_end: Bytes::copy_from_slice(e),
        })
    };
    let role_get = |r: &str| Request::RoleGet(AuthRoleGetRequest { role: r.into() });
    let user_get = |u: &str| Request::UserGet(AuthUserGetRequest { name: u.into() });
    let enable = || Request::AuthEnable(AuthEnableRequest {});
    vec![
        step(&["role", "add", "r1"], role_add("r1")),
        step(&["role", "add", "r1"], role_add("r1")),
        step(&["role", "add", ""], role_add("")),
        step(&["role", "add", "r2"], role_add("r2")),
        step(&["user", "add", "alice:pw"], hashed("alice", "pw")),
        step(&["user", "add", "alice:pw"], hashed("alice", "pw")),
        step(
            &["user", "add", "", "--new-user-password=pw"],
            hashed("", "pw"),
        ),
        step(
            &["user", "add", "robot", "--no-password"],
            Request::UserAdd(UserAddHashed {
                name: "robot".into(),
                hashed_password: Bytes::new(),
                options: Some(UserAddOptions { no_password: true }),
            }),
        ),
        step(
            &["role", "grant-permission", "r1", "read", "foo"],
            grant("r1", perm(Read, b"foo", b"")),
        ),
        step(
            &[
                "role",
                "grant-permission",
                "--prefix",
                "r1",
                "readwrite",
                "dir/",
            ],
            grant("r1", perm(Readwrite, b"dir/", b"dir0")),
        ),
        step(
            &["role", "grant-permission", "--from-key", "r1", "write", "z"],
            grant("r1", perm(Write, b"z", b"\0")),
        ),
        step(
            &["role", "grant-permission", "--prefix", "r1", "read", ""],
            grant("r1", perm(Read, b"\0", b"\0")),
        ),
        // Same key and range: the type is updated.
        step(
            &["role", "grant-permission", "r1", "write", "foo"],
            grant("r1", perm(Write, b"foo", b"")),
        ),
        step(
            &["role", "grant-permission", "r1", "read", "a", "c"],
            grant("r1", perm(Read, b"a", b"c")),
        ),
        step(
            &["role", "grant-permission", "nope", "read", "a"],
            grant("nope", perm(Read, b"a", b"")),
        ),
        step(&["role", "get", "r1"], role_get("r1")),
        step(&["role", "get", "nope"], role_get("nope")),
        step(&["role", "list"], Request::RoleList(AuthRoleListRequest {})),
        step(
            &["user", "grant-role", "alice", "r1"],
            grant_role("alice", "r1"),
        ),
        step(
            &["user", "grant-role", "alice", "r1"],
            grant_role("alice", "r1"),
        ),
        step(
            &["user", "grant-role", "alice", "r2"],
            grant_role("alice", "r2"),
        ),
        step(
            &["user", "grant-role", "alice", "nope"],
            grant_role("alice", "nope"),
        ),
        step(
            &["user", "grant-role", "ghost", "r1"],
            grant_role("ghost", "r1"),
        ),
        step(&["user", "get", "alice"], user_get("alice")),
        step(&["user", "get", "ghost"], user_get("ghost")),
        step(&["user", "list"], Request::UserList(AuthUserListRequest {})),
        step(
            &["role", "revoke-permission", "r1", "foo"],
            revoke("r1", b"foo", b""),
        ),
        step(
            &["role", "revoke-permission", "r1", "foo"],
            revoke("r1", b"foo", b""),
        ),
        step(
            &["role", "revoke-permission", "r1", "a", "c"],
            revoke("r1", b"a", b"c"),
        ),
        step(
            &["role", "revoke-permission", "nope", "a"],
            revoke("nope", b"a", b""),
        ),
        step(
            &["user", "revoke-role", "alice", "r2"],
            revoke_role("alice", "r2"),
        ),
        step(
            &["user", "revoke-role", "alice", "r2"],
            revoke_role("alice", "r2"),
        ),
        step(
            &["user", "revoke-role", "ghost", "r2"],
            revoke_role("ghost", "r2"),
        ),
        step(
            &["role", "delete", "nope"],
            Request::RoleDelete(AuthRoleDeleteRequest {
                role: "nope".into(),
            }),
        ),
        // r2 is granted to alice again, then deleted: revoked from her too.
        step(
            &["user", "grant-role", "alice", "r2"],
            grant_role("alice", "r2"),
        ),
        step(
            &["role", "delete", "r2"],
            Request::RoleDelete(AuthRoleDeleteRequest { role: "r2".into() }),
        ),
        step(&["user", "get", "alice"], user_get("alice")),
        step(&["auth", "enable"], enable()),
        step(&["user", "add", "root:rootpw"], hashed("root", "rootpw")),
        step(&["auth", "enable"], enable()),
        // The root role need not exist to be granted.
        step(
            &["user", "grant-role", "root", "root"],
            grant_role("root", "root"),
        ),
        step(&["role", "get", "root"], role_get("root")),
        step(&["auth", "enable"], enable()),
        as_user("root", "rootpw", step(&["auth", "enable"], enable())),
        as_user(
            "root",
            "rootpw",
            step(
                &["user", "delete", "root"],
                Request::UserDelete(AuthUserDeleteRequest {
                    name: "root".into(),
                }),
            ),
        ),
        as_user(
            "root",
            "rootpw",
            step(
                &["user", "revoke-role", "root", "root"],
                revoke_role("root", "root"),
            ),
        ),
        as_user(
            "root",
            "rootpw",
            step(
                &["role", "delete", "root"],
                Request::RoleDelete(AuthRoleDeleteRequest {
                    role: "root".into(),
                }),
            ),
        ),
        as_user(
            "root",
            "rootpw",
            step(&["user", "list"], Request::UserList(AuthUserListRequest {})),
        ),
        // alice is no root: admin requests are denied, her own user and roles readable.
        as_user(
            "alice",
            "pw",
            step(&["user", "list"], Request::UserList(AuthUserListRequest {})),
        ),
        as_user("alice", "pw", step(&["role", "add", "r3"], role_add("r3"))),
        as_user(
            "alice",
            "pw",
            step(&["user", "get", "alice"], user_get("alice")),
        ),
        as_user(
            "alice",
            "pw",
            step(&["user", "get", "root"], user_get("root")),
        ),
        as_user("alice", "pw", step(&["role", "get", "r1"], role_get("r1"))),
        as_user(
            "alice",
            "pw",
            step(&["role", "get", "root"], role_get("root")),
        ),
        as_user(
            "alice",
            "pw",
            step(
                &["auth", "disable"],
                Request::AuthDisable(AuthDisableRequest {}),
            ),
        ),
        {
            let mut s = as_user(
                "root",
                "rootpw",
                step(
                    &["user", "passwd", "alice", "--interactive=false"],
                    Request::UserChangePassword(UserChangePasswordHashed {
                        name: "alice".into(),
                        hashed_password: hash_password(b"pw2", 4).expect("hash"),
                    }),
                ),
            );
            s.stdin = Some("pw2\n");
            s
        },
        as_user(
            "alice",
            "pw2",
            step(&["user", "get", "alice"], user_get("alice")),
        ),
        as_user(
            "root",
            "rootpw",
            step(
                &["user", "delete", "robot"],
                Request::UserDelete(AuthUserDeleteRequest {
                    name: "robot".into(),
                }),
            ),
        ),
        as_user(
            "root",
            "rootpw",
            step(
                &["auth", "disable"],
                Request::AuthDisable(AuthDisableRequest {}),
            ),
        ),
        step(
            &["auth", "disable"],
            Request::AuthDisable(AuthDisableRequest {}),
        ),
        step(&["user", "list"], Request::UserList(AuthUserListRequest {})),
        step(
            &["user", "delete", "root"],
            Request::UserDelete(AuthUserDeleteRequest {
                name: "root".into(),
            }),
        ),
    ]
}

#[test]
fn auth_admin_script_matches_etcd() {
    if !Etcd::available() {
        eprintln!("etcd not installed: skipped");
        return;
    }
    let etcd = Etcd::start(&[]);
    let endpoint = etcd.endpoint();
    let mut store = AuthStore::new();
    assert_eq!(etcd_auth_revision(&endpoint), store.state().revision());
    for (i, s) in script().into_iter().enumerate() {
        let mut args: Vec<String> = vec!["-w".into(), "json".into()];
        if let Some((user, password)) = s.user {
            args.push(format!("--user={user}:{password}"));
        }
        args.extend(s.args.iter().map(|a| a.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let theirs = etcd_outcome(&etcdctl(&endpoint, &arg_refs, s.stdin));
        let caller = match s.user {
            Some((user, _)) => AuthInfo::new(user, store.state().revision()),
            None => AuthInfo::default(),
        };
        let request = AuthRequest {
            caller: Some(caller.to_caller()),
            request: Some(s.request),
        };
        let mut result = store.apply(&request, 1000 + i as u64).result;
        // etcdctl's `auth enable` adds the root role and grants it to root when the
        // server answers "root user does not have root role", then tries again.
        if s.args == ["auth", "enable"]
            && result == Err(AuthApplyError::Etcd(EtcdError::RootRoleNotExist))
        {
            let mut follow = |request: Request| {
                store.apply(
                    &AuthRequest {
                        caller: Some(caller.to_caller()),
                        request: Some(request),
                    },
                    1000 + i as u64,
                )
            };
            follow(Request::RoleAdd(AuthRoleAddRequest {
                name: "root".into(),
            }));
            follow(Request::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }));
            result = follow(Request::AuthEnable(AuthEnableRequest {})).result;
        }
        let ours = our_outcome(result);
        assert_eq!(ours, theirs, "step {i}: etcdctl {:?}", s.args);
        assert_eq!(
            store.state().revision(),
            etcd_auth_revision(&endpoint),
            "auth revision after step {i}: etcdctl {:?}",
            s.args
        );
    }
}

/// Known, deliberate difference: etcd 3.4.23 stores a permission whose range end is
/// before its key (later 3.4 releases refuse it, as rivet does).
#[test]
fn inverted_permission_range_is_refused_unlike_3_4_23() {
    if !Etcd::available() {
        return;
    }
    let etcd = Etcd::start(&[]);
    let endpoint = etcd.endpoint();
    assert!(etcdctl(&endpoint, &["role", "add", "r"], None)
        .status
        .success());
    let theirs = etcdctl(
        &endpoint,
        &["role", "grant-permission", "r", "read", "b", "a"],
        None,
    );
    assert!(theirs.status.success(), "etcd 3.4.23 accepts it");
    let mut store = AuthStore::new();
    store.role_add("r").expect("role");
    assert_eq!(
        store.role_grant_permission("r", Some(&perm(permission::Type::Read, b"b", b"a"))),
        Err(EtcdError::InvalidAuthMgmt)
    );
}

/// JWTs cross both ways: a token signed here is accepted by etcd (its JSON gateway takes
/// the token in `Authorization`), and etcd's token verifies here.
#[test]
fn jwt_tokens_cross_with_etcd() {
    if !Etcd::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("jwt.key");
    let public = dir.path().join("jwt.pub");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().expect("path"),
    ]);
    run(&[
        "pkey",
        "-in",
        key.to_str().expect("path"),
        "-pubout",
        "-out",
        public.to_str().expect("path"),
    ]);
    let option = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        public.display(),
        key.display()
    );
    let etcd = Etcd::start(&["--auth-token", &option]);
    let endpoint = etcd.endpoint();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        assert!(etcdctl(&endpoint, args, None).status.success(), "{args:?}");
    }
    let revision = etcd_auth_revision(&endpoint);
    let provider = JwtProvider::from_keys(
        SignMethod::Rs256,
        &std::fs::read(&public).expect("pub"),
        &std::fs::read(&key).expect("key"),
        600_000_000_000,
    )
    .expect("provider");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let ours = provider
        .sign("root", revision, now.as_nanos() as i128)
        .expect("sign");
    let range = r#"{"key":"Zm9v"}"#;
    let answer = http_post(
        &endpoint,
        "/v3/kv/range",
        range,
        &[("Authorization", &ours)],
    )
    .expect("post");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "etcd refused our token: {answer}"
    );
    let answer = http_post(
        &endpoint,
        "/v3/kv/range",
        range,
        &[("Authorization", "x.y.z")],
    )
    .expect("post");
    assert!(answer.contains("invalid auth token"), "{answer}");

    let answer = http_post(
        &endpoint,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
        &[],
    )
    .expect("post");
    let body = &answer[answer.find("\r\n\r\n").expect("body") + 4..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c.is_whitespace());
    let json: Value =
        serde_json::from_str(&body[..body.rfind('}').expect("json") + 1]).expect("json");
    let theirs = json["token"].as_str().expect("token");
    assert_eq!(
        provider.verify(theirs, now.as_secs() as i64),
        Some(AuthInfo::new("root", revision))
    );
}
