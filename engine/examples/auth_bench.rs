//! CPU cost of the auth hot spots: a permission check with many roles, bcrypt at etcd's
//! default cost, JWT signing and checking. `cargo run --release -p rivet-engine --example
//! auth_bench` (needs `openssl` on PATH for the RSA and EC keys).

use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use rivet_api::authpb::{permission, Permission};
use rivet_engine::auth::jwt::{JwtProvider, SignMethod};
use rivet_engine::auth::password::{hash_password, verify_password};
use rivet_engine::auth::perms::Access;
use rivet_engine::auth::{AuthInfo, AuthStore};

fn per_op(label: &str, iterations: u32, mut f: impl FnMut(u32)) {
    let started = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    let each = started.elapsed() / iterations;
    println!("{label}: {each:?} per operation ({iterations} runs)");
}

fn main() {
    let mut store = AuthStore::new();
    store.user_add("root", Bytes::new(), None).expect("root");
    store.user_grant_role("root", "root").expect("root role");
    store.user_add("big", Bytes::new(), None).expect("user");
    let started = Instant::now();
    for i in 0..5000 {
        let role = format!("role{i}");
        store.role_add(&role).expect("role");
        for j in 0..2 {
            let permission = Permission {
                perm_type: permission::Type::Readwrite as i32,
                key: Bytes::from(format!("k{i:05}/{j}/")),
                range_end: Bytes::from(format!("k{i:05}/{j}0")),
            };
            store
                .role_grant_permission(&role, Some(&permission))
                .expect("grant");
        }
        if i % 5 == 0 {
            store.user_grant_role("big", &role).expect("grant role");
        }
    }
    store.auth_enable().expect("enable");
    println!(
        "5000 roles x 2 permissions, 1000 granted to one user: built in {:?}",
        started.elapsed()
    );
    let state = store.snapshot();
    let big = AuthInfo::new("big", state.revision());
    let keys: Vec<Vec<u8>> = (0..5000)
        .map(|i| format!("k{i:05}/1/x").into_bytes())
        .collect();
    per_op("check_range (single key, 2000 intervals)", 1_000_000, |i| {
        let key = &keys[(i as usize * 7919) % keys.len()];
        let _ = std::hint::black_box(state.check_range(&big, key, b"", Access::Write));
    });
    per_op("check_range (prefix range)", 1_000_000, |i| {
        let n = (i as usize * 7919) % 5000;
        let key = format!("k{n:05}/0/");
        let end = format!("k{n:05}/00");
        let _ = std::hint::black_box(state.check_range(
            &big,
            key.as_bytes(),
            end.as_bytes(),
            Access::Read,
        ));
    });
    per_op(
        "role change (grant a permission to a role the user holds)",
        200,
        |i| {
            let permission = Permission {
                perm_type: permission::Type::Read as i32,
                key: Bytes::from(format!("extra{i}")),
                range_end: Bytes::new(),
            };
            store
                .role_grant_permission("role0", Some(&permission))
                .expect("grant");
            // A core still holds the previous snapshot, so the change copies the maps.
            std::hint::black_box(store.snapshot());
        },
    );

    let hash = hash_password(b"password", 10).expect("hash");
    per_op("bcrypt hash, cost 10", 5, |_| {
        let _ = std::hint::black_box(hash_password(b"password", 10));
    });
    per_op("bcrypt check, cost 10", 5, |_| {
        std::hint::black_box(verify_password(b"password", &hash));
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("rsa.key");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("openssl");
    assert!(status.success());
    let ec = dir.path().join("ec.key");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&ec)
        .status()
        .expect("openssl");
    assert!(status.success());
    let now = 1_700_000_000i128 * 1_000_000_000;
    for (method, file) in [(SignMethod::Rs256, &key), (SignMethod::Es256, &ec)] {
        let provider = JwtProvider::from_keys(
            method,
            b"",
            &std::fs::read(file).expect("key"),
            300_000_000_000,
        )
        .expect("provider");
        let token = provider.sign("user", 3, now).expect("sign");
        per_op(&format!("JWT {} sign", method.name()), 200, |_| {
            let _ = std::hint::black_box(provider.sign("user", 3, now));
        });
        per_op(&format!("JWT {} verify", method.name()), 2000, |_| {
            std::hint::black_box(provider.verify(&token, 1_700_000_000));
        });
    }
    let hmac =
        JwtProvider::from_keys(SignMethod::Hs256, b"", b"secret", 300_000_000_000).expect("hmac");
    let token = hmac.sign("user", 3, now).expect("sign");
    per_op("JWT HS256 verify", 20000, |_| {
        std::hint::black_box(hmac.verify(&token, 1_700_000_000));
    });
}
