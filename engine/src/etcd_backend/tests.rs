//! Writer → reader round trips (proptest, small pages so that trees grow several levels
//! and values overflow with few entries), damaged files, and etcd's schema.

use std::collections::BTreeMap;
use std::io::Cursor as IoCursor;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use rivet_api::etcdserverpb::AlarmMember;
use rivet_api::rivetpb::Member;

use super::bbolt::format::{
    read_u64, write_u64, BRANCH_CHILD_OFFSET, PAGE_FLAGS_OFFSET, PAGE_FLAG_BRANCH,
    PAGE_HEADER_BYTES, PAGE_ID_OFFSET,
};
use super::bbolt::{BucketRef, BucketValue, Damage, Db, DbWriter, MetaError, ReadError, Source};
use super::schema::{
    status, write_backend, AuthData, AuthRecord, Backend, BackendMeta, BackendState, EncodeError,
    KeyVersion, Lease,
};

/// A bucket's contents for the tests: plain entries and nested buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tree {
    entries: BTreeMap<Vec<u8>, Item>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Value(Vec<u8>),
    Bucket(Tree),
}

fn write_tree<W: std::io::Write + std::io::Seek>(db: &mut DbWriter<W>, tree: &Tree) -> BucketValue {
    let mut builder = db.bucket();
    for (key, item) in &tree.entries {
        match item {
            Item::Value(value) => builder.put(db, key, value).expect("put"),
            Item::Bucket(child) => {
                let value = write_tree(db, child);
                builder.put_bucket(db, key, &value).expect("put bucket");
            }
        }
    }
    builder.finish(db).expect("finish")
}

fn write_db(root: &Tree, page_size: usize) -> Vec<u8> {
    let mut db = DbWriter::new(IoCursor::new(Vec::new()), page_size).expect("writer");
    let mut builder = db.bucket();
    for (key, item) in &root.entries {
        let Item::Bucket(child) = item else {
            panic!("top-level entries are buckets")
        };
        let value = write_tree(&mut db, child);
        builder
            .put_bucket(&mut db, key, &value)
            .expect("put bucket");
    }
    let (out, summary) = db.finish(builder).expect("finish");
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, summary.bytes);
    bytes
}

fn read_tree<S: Source>(db: &Db<S>, bucket: &BucketRef) -> Result<Tree, ReadError> {
    let mut tree = Tree::default();
    for entry in db.cursor(bucket) {
        let entry = entry?;
        let item = if entry.is_bucket {
            let (child, _) = BucketRef::from_value(&entry.value, entry.page)?;
            Item::Bucket(read_tree(db, &child)?)
        } else {
            Item::Value(entry.value.to_vec())
        };
        tree.entries.insert(entry.key.to_vec(), item);
    }
    Ok(tree)
}

/// Reads everything a reader can read, for damaged files: must return, never panic.
fn read_everything(bytes: &[u8]) -> Result<Tree, ReadError> {
    let db = Db::open(bytes)?;
    let _ = db.check();
    let _ = status(&db);
    if let Ok(backend) = Backend::open(bytes) {
        let _ = backend.state();
        if let Ok(versions) = backend.key_versions() {
            for version in versions {
                if version.is_err() {
                    break;
                }
            }
        }
    }
    read_tree(&db, &db.root())
}

fn tree_strategy() -> impl Strategy<Value = Tree> {
    let value = prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => proptest::collection::vec(any::<u8>(), 1000..5000),
    ];
    let key = proptest::collection::vec(any::<u8>(), 1..40);
    let leaf = proptest::collection::btree_map(key.clone(), value.prop_map(Item::Value), 0..250)
        .prop_map(|entries| Tree { entries });
    leaf.prop_recursive(2, 8, 3, move |inner| {
        (
            proptest::collection::btree_map(
                key.clone(),
                proptest::collection::vec(any::<u8>(), 0..100).prop_map(Item::Value),
                0..200,
            ),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 1..10),
                inner,
                0..3,
            ),
        )
            .prop_map(|(mut entries, buckets)| {
                for (name, child) in buckets {
                    entries.insert(name, Item::Bucket(child));
                }
                Tree { entries }
            })
    })
}

fn root_strategy() -> impl Strategy<Value = Tree> {
    proptest::collection::btree_map(
        proptest::collection::vec(any::<u8>(), 1..12),
        tree_strategy(),
        0..5,
    )
    .prop_map(|buckets| Tree {
        entries: buckets
            .into_iter()
            .map(|(name, tree)| (name, Item::Bucket(tree)))
            .collect(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn written_trees_read_back(root in root_strategy(), page_size in prop_oneof![Just(1024usize), Just(4096)]) {
        let bytes = write_db(&root, page_size);
        let db = Db::open(bytes.as_slice()).expect("open");
        prop_assert_eq!(db.check().expect("check"), Vec::<String>::new());
        let read = read_tree(&db, &db.root()).expect("read");
        prop_assert_eq!(&read, &root);
        for name in root.entries.keys() {
            prop_assert!(db.bucket(&db.root(), name).expect("lookup").is_some());
        }
        prop_assert!(db.bucket(&db.root(), b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").expect("lookup").is_none());
    }

    #[test]
    fn damaged_files_give_errors_not_panics(
        root in root_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = write_db(&root, 1024);
        for (at, xor) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = read_everything(&bytes);
    }
}

fn sample_root() -> Tree {
    let mut big = Tree::default();
    for i in 0..2000u32 {
        big.entries.insert(
            format!("key-{i:06}").into_bytes(),
            Item::Value(vec![b'v'; (i % 50) as usize]),
        );
    }
    big.entries
        .insert(b"large".to_vec(), Item::Value(vec![7u8; 10_000]));
    let mut small = Tree::default();
    small
        .entries
        .insert(b"a".to_vec(), Item::Value(b"1".to_vec()));
    let mut root = Tree::default();
    root.entries.insert(b"big".to_vec(), Item::Bucket(big));
    root.entries.insert(b"small".to_vec(), Item::Bucket(small));
    root.entries
        .insert(b"empty".to_vec(), Item::Bucket(Tree::default()));
    root
}

/// Small enough to damage every byte of it in turn: a two-level tree, an overflow
/// value, a nested bucket, an inline bucket.
fn small_sample_root() -> Tree {
    let mut big = Tree::default();
    for i in 0..150u32 {
        big.entries.insert(
            format!("key-{i:04}").into_bytes(),
            Item::Value(vec![b'v'; (i % 20) as usize]),
        );
    }
    big.entries
        .insert(b"large".to_vec(), Item::Value(vec![7u8; 3000]));
    let mut small = Tree::default();
    small
        .entries
        .insert(b"a".to_vec(), Item::Value(b"1".to_vec()));
    big.entries
        .insert(b"nested".to_vec(), Item::Bucket(small.clone()));
    let mut root = Tree::default();
    root.entries.insert(b"big".to_vec(), Item::Bucket(big));
    root.entries.insert(b"small".to_vec(), Item::Bucket(small));
    root
}

#[test]
fn every_single_byte_flip_and_cut_is_survived() {
    let root = small_sample_root();
    let bytes = write_db(&root, 1024);
    assert_eq!(read_everything(&bytes).expect("intact"), root);
    // The bbolt layer only (the schema layers on top are damaged by the proptest).
    let read = |bytes: &[u8]| -> Result<Tree, ReadError> {
        let db = Db::open(bytes)?;
        let _ = db.check();
        read_tree(&db, &db.root())
    };
    let mut errors = 0;
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        if read(&damaged).is_err() {
            errors += 1;
        }
    }
    // Values, padding and unused bytes may change unnoticed; most header and element
    // bytes may not.
    assert!(
        errors > 200,
        "only {errors} of {} flips were noticed",
        bytes.len()
    );
    for cut in (0..bytes.len()).step_by(7) {
        assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn small_buckets_are_inline_as_bbolt_writes_them() {
    let bytes = write_db(&sample_root(), 4096);
    let db = Db::open(bytes.as_slice()).expect("open");
    assert!(matches!(
        db.bucket(&db.root(), b"small").expect("lookup"),
        Some(BucketRef::Inline { .. })
    ));
    assert!(matches!(
        db.bucket(&db.root(), b"empty").expect("lookup"),
        Some(BucketRef::Inline { .. })
    ));
    assert!(matches!(
        db.bucket(&db.root(), b"big").expect("lookup"),
        Some(BucketRef::Tree { .. })
    ));
    // Both metas, as a bbolt snapshot writes them: txid 2 and 1.
    assert_eq!(db.meta().txid, 2);
}

#[test]
fn metas_fall_back_and_fail_as_bbolt() {
    let bytes = write_db(&sample_root(), 4096);
    // Meta 0's checksum broken: meta 1 (txid 1) is used.
    let mut damaged = bytes.clone();
    damaged[16 + 40] ^= 1;
    let db = Db::open(damaged.as_slice()).expect("meta 1");
    assert_eq!(db.meta().txid, 1);
    assert_eq!(read_tree(&db, &db.root()).expect("read"), sample_root());
    // Both magics broken.
    let mut damaged = bytes.clone();
    damaged[16] ^= 1;
    damaged[4096 + 16] ^= 1;
    match Db::open(damaged.as_slice()) {
        Err(ReadError::NoValidMeta { meta0, meta1 }) => {
            assert_eq!((meta0, meta1), (MetaError::Invalid, MetaError::Invalid));
        }
        other => panic!("expected invalid metas, got {other:?}"),
    }
    assert!(matches!(
        Db::open(&bytes[..5000]),
        Err(ReadError::FileTooSmall { .. })
    ));
}

#[test]
fn a_cycle_is_damage_not_a_hang() {
    let bytes = write_db(&sample_root(), 1024);
    let db = Db::open(bytes.as_slice()).expect("open");
    let Some(BucketRef::Tree { root }) = db.bucket(&db.root(), b"big").expect("lookup") else {
        panic!("big is a tree");
    };
    let page = root as usize * 1024;
    assert_eq!(
        u16::from_le_bytes([
            bytes[page + PAGE_FLAGS_OFFSET],
            bytes[page + PAGE_FLAGS_OFFSET + 1]
        ]),
        PAGE_FLAG_BRANCH
    );
    // Point the root's second child at the root itself.
    let mut damaged = bytes.clone();
    write_u64(
        &mut damaged[page..],
        PAGE_HEADER_BYTES + 16 + BRANCH_CHILD_OFFSET,
        root,
    );
    let db = Db::open(damaged.as_slice()).expect("open");
    let bucket = BucketRef::Tree { root };
    let failure = db.cursor(&bucket).find_map(Result::err).expect("an error");
    assert!(matches!(
        failure,
        ReadError::Damaged {
            damage: Damage::Cycle,
            ..
        }
    ));
    assert!(db
        .check()
        .expect("check")
        .iter()
        .any(|p| p.contains("multiple references")));
    // A page that names another page.
    let mut damaged = bytes;
    let id = read_u64(&damaged[page..], PAGE_ID_OFFSET).expect("id");
    write_u64(&mut damaged[page..], PAGE_ID_OFFSET, id + 1);
    let db = Db::open(damaged.as_slice()).expect("open");
    assert!(matches!(
        db.cursor(&bucket).find_map(Result::err),
        Some(ReadError::Damaged {
            damage: Damage::WrongId { .. },
            ..
        })
    ));
}

#[test]
fn writer_refuses_unsorted_and_empty_keys() {
    let mut db = DbWriter::new(IoCursor::new(Vec::new()), 4096).expect("writer");
    let mut bucket = db.bucket();
    bucket.put(&mut db, b"b", b"").expect("first");
    assert!(bucket.put(&mut db, b"a", b"").is_err());
    assert!(bucket.put(&mut db, b"b", b"").is_err());
    assert!(bucket.put(&mut db, b"", b"").is_err());
}

// ---- etcd's schema -----------------------------------------------------------------

/// A history as etcd's mvcc would store it: revisions from 2, each with one to three
/// changes to distinct keys (sub-revisions 0, 1, …), deletes only of live keys.
fn history_strategy() -> impl Strategy<Value = Vec<KeyVersion>> {
    proptest::collection::vec(
        proptest::collection::vec(
            (
                0usize..12,
                any::<bool>(),
                0usize..3,
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            1..4,
        ),
        0..120,
    )
    .prop_map(|revisions| {
        let leases = [0i64, 0x1234, 0x7fff_0000_0000_0001];
        let mut live: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
        let mut versions = Vec::new();
        let mut revision = 1;
        for changes in revisions {
            revision += 1;
            let mut touched = Vec::new();
            let mut sub = 0;
            for (key, delete, lease, value) in changes {
                if touched.contains(&key) {
                    continue;
                }
                touched.push(key);
                let name = Bytes::from(format!("key/{key}"));
                if delete && live.contains_key(&key) {
                    live.remove(&key);
                    versions.push(KeyVersion {
                        key: name,
                        mod_revision: revision,
                        sub_revision: sub,
                        create_revision: 0,
                        version: 0,
                        lease: 0,
                        value: None,
                    });
                } else {
                    let (create, version) = live.get(&key).copied().unwrap_or((revision, 0));
                    live.insert(key, (create, version + 1));
                    versions.push(KeyVersion {
                        key: name,
                        mod_revision: revision,
                        sub_revision: sub,
                        create_revision: create,
                        version: version + 1,
                        lease: leases[lease],
                        value: Some(Bytes::from(value)),
                    });
                }
                sub += 1;
            }
        }
        versions
    })
}

fn state_strategy() -> impl Strategy<Value = BackendState> {
    let text = "[a-z0-9<>&\"\\\\ \\u{2028}\\n\\x01é]{0,12}";
    let member = (
        1u64..,
        text,
        proptest::collection::vec(text, 0..3),
        proptest::collection::vec(text, 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, name, peer_urls, client_urls, is_learner)| Member {
            id,
            name,
            peer_urls,
            client_urls,
            is_learner,
        });
    let record = |user: bool| {
        ("[a-z]{1,8}", proptest::collection::vec("[a-z]{1,5}", 0..3)).prop_map(
            move |(name, roles)| {
                let value = if user {
                    rivet_api::authpb::User {
                        name: Bytes::from(name.clone()),
                        password: Bytes::from_static(b"$2a$10$hash"),
                        roles,
                        options: None,
                    }
                    .encode_to_vec()
                } else {
                    rivet_api::authpb::Role {
                        name: Bytes::from(name.clone()),
                        key_permission: vec![rivet_api::authpb::Permission {
                            perm_type: 2,
                            key: Bytes::from_static(b"a"),
                            range_end: Bytes::from_static(b"b"),
                        }],
                    }
                    .encode_to_vec()
                };
                AuthRecord {
                    name: Bytes::from(name),
                    value: Bytes::from(value),
                }
            },
        )
    };
    (
        (
            any::<u64>(),
            proptest::option::of(1i64..1000),
            proptest::option::of(1i64..1000),
            proptest::option::of("3\\.[0-9]\\.0"),
        ),
        proptest::collection::btree_map(1i64..i64::MAX, (1i64..100_000, 0i64..100_000), 0..20),
        proptest::collection::btree_map(1u64.., member, 0..5),
        proptest::collection::btree_set(1u64.., 0..4),
        proptest::collection::btree_set((1u64.., 1i32..3), 0..3),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<u64>()),
            proptest::collection::btree_map("[a-z]{1,8}", record(true), 0..4),
            proptest::collection::btree_map("[a-z]{1,8}", record(false), 0..4),
        ),
    )
        .prop_map(
            |(
                (consistent_index, a, b, cluster_version),
                leases,
                members,
                removed,
                alarms,
                (enabled, auth_revision, users, roles),
            )| {
                let mut members: Vec<Member> = members
                    .into_iter()
                    .map(|(id, mut m)| {
                        m.id = id;
                        m
                    })
                    .collect();
                members.sort_by_key(|m| format!("{:x}", m.id));
                let mut removed: Vec<u64> = removed.into_iter().collect();
                removed.sort_by_key(|id| format!("{id:x}"));
                let mut alarms: Vec<AlarmMember> = alarms
                    .into_iter()
                    .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                    .collect();
                alarms.sort_by_key(|a| a.encode_to_vec());
                BackendState {
                    meta: BackendMeta {
                        consistent_index,
                        scheduled_compact_revision: a.max(b),
                        finished_compact_revision: a.min(b),
                        cluster_version,
                    },
                    leases: leases
                        .into_iter()
                        .map(|(id, (ttl, remaining_ttl))| Lease {
                            id,
                            ttl,
                            remaining_ttl,
                        })
                        .collect(),
                    members,
                    removed_members: removed,
                    alarms,
                    auth: AuthData {
                        enabled,
                        revision: auth_revision,
                        users: by_name(users.into_values()),
                        roles: by_name(roles.into_values()),
                    },
                }
            },
        )
}

/// Records sorted and unique by name, as the bucket holds them.
fn by_name(records: impl Iterator<Item = AuthRecord>) -> Vec<AuthRecord> {
    let unique: BTreeMap<Bytes, AuthRecord> = records.map(|r| (r.name.clone(), r)).collect();
    unique.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn backends_round_trip(state in state_strategy(), history in history_strategy()) {
        let (out, summary) = write_backend(
            IoCursor::new(Vec::new()),
            &state,
            history.iter().cloned().map(Ok::<_, EncodeError>),
        )
        .expect("write");
        let bytes = out.into_inner();
        prop_assert_eq!(summary.key_versions, history.len() as u64);
        let backend = Backend::open(bytes.as_slice()).expect("open");
        prop_assert_eq!(backend.db().check().expect("check"), Vec::<String>::new());
        prop_assert_eq!(backend.state().expect("state"), state);
        let read: Vec<KeyVersion> = backend.key_versions().expect("versions").collect::<Result<_, _>>().expect("decode");
        prop_assert_eq!(read, history);
        prop_assert_eq!(backend.status().expect("status"), summary.status);
    }
}

#[test]
fn key_versions_out_of_order_are_refused() {
    let version = |revision, sub| KeyVersion {
        key: Bytes::from_static(b"k"),
        mod_revision: revision,
        sub_revision: sub,
        create_revision: revision,
        version: 1,
        lease: 0,
        value: Some(Bytes::new()),
    };
    for bad in [
        vec![version(3, 0), version(2, 0)],
        vec![version(3, 1), version(3, 0)],
        vec![version(3, 0), version(3, 0)],
        vec![version(0, 0)],
    ] {
        let result = write_backend(
            IoCursor::new(Vec::new()),
            &BackendState::default(),
            bad.into_iter().map(Ok::<_, EncodeError>),
        );
        assert!(result.is_err());
    }
}

#[test]
fn a_failed_snapshot_write_leaves_no_file() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("out.db");
    let versions = (2..1000i64).map(|revision| {
        if revision == 500 {
            return Err(std::io::Error::other("shard went away"));
        }
        Ok(KeyVersion {
            key: Bytes::from(format!("k{revision}")),
            mod_revision: revision,
            sub_revision: 0,
            create_revision: revision,
            version: 1,
            lease: 0,
            value: Some(Bytes::from_static(b"v")),
        })
    });
    let failure =
        super::snapshot_file::write_snapshot_file(&path, &BackendState::default(), versions)
            .expect_err("the source failed");
    assert!(failure.to_string().contains("shard went away"), "{failure}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}
