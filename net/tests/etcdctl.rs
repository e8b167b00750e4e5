//! etcdctl 3.4 against rivet, compared with the same commands against a real etcd 3.4
//! started by the test. Both stores start empty and see the same commands in the same
//! order, so revisions match; member and cluster IDs and raft terms differ and are masked.

mod common;

use common::{etcdctl, seen, Etcd, Rivet, Seen};

/// One etcd and one rivet, fed the same commands.
struct Pair {
    etcd: Etcd,
    rivet: Rivet,
}

impl Pair {
    fn start() -> Pair {
        Pair {
            etcd: Etcd::start(&[]),
            rivet: Rivet::start(&[]),
        }
    }

    /// Runs `args` on both; panics unless rivet's output equals etcd's. Returns it.
    fn same_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Seen {
        let etcd = seen(etcdctl(&self.etcd.endpoint(), args, stdin));
        let rivet = seen(etcdctl(&self.rivet.endpoint(), args, stdin));
        assert_eq!(
            rivet, etcd,
            "etcdctl {args:?} (stdin {stdin:?}): rivet (left) differs from etcd (right)"
        );
        etcd
    }

    fn same(&self, args: &[&str]) -> Seen {
        self.same_with_stdin(args, None)
    }

    /// Like [`Pair::same`], and the command must succeed.
    fn same_ok(&self, args: &[&str]) -> String {
        let seen = self.same(args);
        assert!(seen.success, "etcdctl {args:?} failed on both: {seen:?}");
        seen.stdout
    }
}

/// Keys whose create, mod, version and value orders all differ from the key order.
fn load(pair: &Pair) {
    for (key, value) in [
        ("b", "v3"),
        ("a", "v2"),
        ("c", "v1"),
        ("a", "v9"),
        ("d", "v0"),
        ("b", "v5"),
        ("b", "v4"),
        ("foo/1", "x"),
        ("foo/2", "y"),
        ("foo3", "z"),
        ("fop", "w"),
        ("e", "v7"),
    ] {
        assert_eq!(pair.same_ok(&["put", key, value]), "OK\n");
    }
}

#[test]
fn put_and_get_match_etcd() {
    let pair = Pair::start();
    assert_eq!(pair.same_ok(&["put", "a", "1"]), "OK\n");
    assert_eq!(pair.same_ok(&["put", "a", "2", "--prev-kv"]), "OK\na\n1\n");
    pair.same_ok(&["put", "a", "3", "--prev-kv", "-w", "json"]);
    pair.same_ok(&["put", "new", "n", "--prev-kv"]);
    pair.same_ok(&["put", "a", "--ignore-value"]);
    pair.same_ok(&["put", "a", "4", "--ignore-lease", "-w", "json"]);
    pair.same_ok(&["del", "a"]);
    pair.same_ok(&["del", "new"]);
    for refused in [
        &["put", "missing", "--ignore-value"][..],
        &["put", "", "v"],
        &["get", ""],
        &["del", ""],
    ] {
        assert!(!pair.same(refused).success, "{refused:?}");
    }
    pair.same_ok(&["get", "c", "a"]);
    pair.same_ok(&["del", "c", "a"]);
    pair.same_ok(&["put", "empty", ""]);
    pair.same_ok(&["put", "empty", "again", "--prev-kv", "-w", "fields"]);
    pair.same_ok(&["put", "empty", "", "--prev-kv"]);
    load(&pair);

    for args in [
        &["get", "a"][..],
        &["get", "a", "-w", "json"],
        &["get", "missing"],
        &["get", "missing", "-w", "json"],
        &["get", "a", "e"],
        &["get", "--prefix", "foo"],
        &["get", "--prefix", "foo", "-w", "json"],
        &["get", "--prefix", "foo/"],
        &["get", "--prefix", ""],
        &["get", "--from-key", "c"],
        &["get", "--from-key", ""],
        &["get", "--from-key", "c", "-w", "json"],
        &["get", "--prefix", "", "--limit", "3"],
        &["get", "--prefix", "", "--limit", "3", "-w", "json"],
        &["get", "--from-key", "b", "--limit", "2", "-w", "json"],
        &["get", "a", "--rev", "4"],
        &["get", "a", "--rev", "6", "-w", "json"],
        &["get", "--prefix", "", "--rev", "10"],
        &["get", "b", "--rev", "1"],
        &["get", "--prefix", "", "--keys-only"],
        &["get", "--prefix", "foo", "--keys-only", "-w", "json"],
        &["get", "--prefix", "", "--print-value-only"],
        &["get", "a", "--print-value-only"],
        &["get", "--prefix", "", "--consistency", "s"],
        &["get", "--prefix", "", "--consistency", "l"],
        &["get", "a", "--consistency", "s", "-w", "json"],
        &["get", "--prefix", "", "--order", "DESCEND"],
        &["get", "--prefix", "", "--order", "ASCEND", "--limit", "4"],
        &["get", "--prefix", "", "--limit", "2", "--rev", "8"],
        &["get", "--prefix", "f", "-w", "fields"],
        &["get", "empty", "-w", "fields"],
        &["get", "--prefix", "nothing-here", "-w", "json"],
    ] {
        pair.same_ok(args);
    }
    for target in ["KEY", "CREATE", "MODIFY", "VALUE", "VERSION"] {
        for order in ["ASCEND", "DESCEND"] {
            let sorted = ["get", "--prefix", "", "--sort-by", target, "--order", order];
            pair.same_ok(&sorted);
            let limited = [&sorted[..], &["--limit", "3"]].concat();
            pair.same_ok(&limited);
            let keys_only = [&sorted[..], &["--keys-only", "-w", "json"]].concat();
            pair.same_ok(&keys_only);
        }
        pair.same_ok(&["get", "--from-key", "b", "--sort-by", target]);
    }
    // The comparisons above are not vacuous: one of them spelled out.
    let by_modify = pair.same_ok(&[
        "get",
        "--prefix",
        "",
        "--sort-by",
        "MODIFY",
        "--order",
        "DESCEND",
        "--keys-only",
    ]);
    let keys: Vec<&str> = by_modify.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        keys,
        ["e", "fop", "foo3", "foo/2", "foo/1", "b", "d", "a", "c", "empty"]
    );
    // Sorting by value with --keys-only still sorts by the (unsent) values.
    pair.same_ok(&[
        "get",
        "--prefix",
        "",
        "--sort-by",
        "VALUE",
        "--order",
        "DESCEND",
        "--keys-only",
    ]);
}

#[test]
fn del_matches_etcd() {
    let pair = Pair::start();
    load(&pair);
    assert_eq!(pair.same_ok(&["del", "missing"]), "0\n");
    assert_eq!(pair.same_ok(&["del", "a"]), "1\n");
    pair.same_ok(&["del", "b", "--prev-kv"]);
    pair.same_ok(&["del", "--prefix", "foo/"]);
    pair.same_ok(&["del", "c", "--prev-kv", "-w", "json"]);
    pair.same_ok(&["get", "--prefix", ""]);
    pair.same_ok(&["del", "--from-key", "e", "--prev-kv"]);
    pair.same_ok(&["get", "--prefix", "", "-w", "json"]);
    pair.same_ok(&["put", "x", "1"]);
    pair.same_ok(&["put", "y", "2"]);
    pair.same_ok(&["del", "--prefix", "", "--prev-kv", "-w", "json"]);
    pair.same_ok(&["get", "--from-key", ""]);
    // History stays readable after deletes.
    pair.same_ok(&["get", "--prefix", "", "--rev", "13", "-w", "json"]);
}

#[test]
fn interactive_txn_matches_etcd() {
    let pair = Pair::start();
    load(&pair);
    let succeeding = "value(\"a\") = \"v9\"\nmod(\"b\") > \"0\"\n\nput x 1\nget a\n\nput y 2\n\n";
    let failing = "value(\"a\") = \"nope\"\n\nput x 1\n\nput y 2\nget --prefix foo\ndel c\n\n";
    for txn in [
        succeeding,
        failing,
        "create(\"a\") = \"3\"\nversion(\"b\") = \"3\"\n\ndel --prefix foo/\nget b\n\n\n",
        "version(\"b\") < \"2\"\n\n\nput z 9\n\n",
        "value(\"d\") != \"v0\"\n\nput d v00\n\nget d\n\n",
        "mod(\"missing\") = \"0\"\n\nput missing m\n\n\n",
        "\nget e\n\n\n",
        "value(\"missing\") = \"\"\n\nput m1 1\n\nput m2 2\n\n",
        "create(\"missing\") = \"0\"\n\nput m3 1\n\nput m4 2\n\n",
        "mod(\"d\") < \"1000\"\nvalue(\"d\") > \"a\"\nvalue(\"d\") < \"zz\"\n\nget d\n\n\n",
        "version(\"d\") > \"0\"\n\nput d dd --prev-kv\ndel --prefix m --prev-kv\n\n\n",
        "version(\"d\") > \"0\"\n\nget --prefix \"\" --limit 1 --sort-by MODIFY --order DESCEND\nget d --rev 2\n\n\n",
    ] {
        let plain = pair.same_with_stdin(&["txn"], Some(txn));
        assert!(plain.success, "txn {txn:?}: {plain:?}");
        if txn == succeeding {
            assert!(
                plain.stdout.starts_with("SUCCESS\n\nOK\n\na\nv9\n"),
                "{plain:?}"
            );
        }
        if txn == failing {
            assert!(
                plain.stdout.starts_with("FAILURE\n\nOK\n\nfoo/1\n"),
                "{plain:?}"
            );
        }
        let interactive = pair.same_with_stdin(&["txn", "-i"], Some(txn));
        assert!(interactive.success, "txn -i {txn:?}: {interactive:?}");
        assert!(interactive.stdout.starts_with("compares:\n"));
        pair.same_with_stdin(&["txn", "-w", "json"], Some(txn));
    }
    pair.same_ok(&["get", "--prefix", "", "-w", "json"]);
    // Errors: the same key twice, a revision in the future.
    for txn in [
        "version(\"d\") > \"0\"\n\nput d x\nput d y\n\n\n",
        "version(\"d\") > \"0\"\n\nput d x\ndel d\n\n\n",
        "version(\"d\") > \"0\"\n\nget d --rev 100\n\n\n",
    ] {
        let refused = pair.same_with_stdin(&["txn"], Some(txn));
        assert!(!refused.success, "txn {txn:?}: {refused:?}");
    }
    pair.same_ok(&["get", "--prefix", "", "-w", "json"]);
}

#[test]
fn compaction_matches_etcd() {
    let pair = Pair::start();
    load(&pair);
    assert_eq!(pair.same_ok(&["compaction", "5"]), "compacted revision 5\n");
    let below = pair.same(&["get", "a", "--rev", "4"]);
    assert!(!below.success);
    assert_eq!(
        below.stderr,
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    pair.same_ok(&["get", "a", "--rev", "5"]);
    pair.same_ok(&["get", "--prefix", "", "--rev", "6"]);
    assert_eq!(
        pair.same_ok(&["compaction", "--physical", "8"]),
        "compacted revision 8\n"
    );
    let below = pair.same(&["get", "--prefix", "", "--rev", "7", "-w", "json"]);
    assert!(!below.success);
    pair.same_ok(&["get", "b", "--rev", "8"]);
    // Compacting again at or below the compacted revision, or past the current one.
    let again = pair.same(&["compaction", "8"]);
    assert!(!again.success);
    assert_eq!(
        again.stderr,
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
    pair.same(&["compaction", "3"]);
    let future = pair.same(&["compaction", "100"]);
    assert!(!future.success);
    assert_eq!(
        future.stderr,
        "Error: etcdserver: mvcc: required revision is a future revision\n"
    );
    pair.same(&["get", "a", "--rev", "100"]);
}

/// `endpoint status`: the same fields, one line per endpoint.
fn status_fields(line: &str) -> Vec<String> {
    line.trim_end_matches('\n')
        .split(", ")
        .map(|f| f.trim_end_matches(',').to_string())
        .collect()
}

/// The shape of a JSON value: object keys and value kinds, recursively.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Number(_) => Value::String("number".into()),
        Value::String(_) => Value::String("string".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Null => Value::Null,
    }
}

#[test]
fn endpoint_status_and_health_match_etcd() {
    let pair = Pair::start();
    pair.same_ok(&["put", "a", "1"]);
    let etcd_status = common::etcdctl_ok(&pair.etcd.endpoint(), &["endpoint", "status"]);
    let rivet_status = common::etcdctl_ok(&pair.rivet.endpoint(), &["endpoint", "status"]);
    let etcd_fields = status_fields(&etcd_status);
    let fields = status_fields(&rivet_status);
    // endpoint, ID, version, DB size, is leader, is learner, raft term, raft index,
    // raft applied index, errors.
    assert_eq!(
        fields.len(),
        etcd_fields.len(),
        "{rivet_status:?} vs {etcd_status:?}"
    );
    assert_eq!(fields[0], pair.rivet.endpoint());
    // The harness gives each member a peer URL of its own, so the ID is derived from it
    // (with etcd's default flags it is etcd's 8e9e05c52164694d: a unit test checks that).
    let members = common::etcdctl_ok(&pair.rivet.endpoint(), &["member", "list"]);
    let member_id = members
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert_eq!(fields[1], member_id, "the ID in member list");
    assert_eq!(fields[2], "3.4.23");
    assert!(fields[3].ends_with(" B") || fields[3].ends_with("kB") || fields[3].ends_with("MB"));
    assert_eq!(&fields[4..6], ["true", "false"]);
    let term: u64 = fields[6].parse().expect("raft term");
    let index: u64 = fields[7].parse().expect("raft index");
    let applied: u64 = fields[8].parse().expect("raft applied index");
    assert!(
        term >= 1 && index >= 2 && applied == index,
        "{rivet_status}"
    );
    assert_eq!(fields[9], "", "no errors");

    let etcd_json: serde_json::Value = serde_json::from_str(&common::etcdctl_ok(
        &pair.etcd.endpoint(),
        &["endpoint", "status", "-w", "json"],
    ))
    .expect("etcd's JSON");
    let rivet_json: serde_json::Value = serde_json::from_str(&common::etcdctl_ok(
        &pair.rivet.endpoint(),
        &["endpoint", "status", "-w", "json"],
    ))
    .expect("rivet's JSON");
    assert_eq!(shape(&rivet_json), shape(&etcd_json), "{rivet_json}");
    let status = &rivet_json[0]["Status"];
    assert_eq!(rivet_json[0]["Endpoint"], pair.rivet.endpoint());
    assert_eq!(status["version"], "3.4.23");
    assert_eq!(status["header"]["revision"], 2);
    assert_eq!(status["leader"], status["header"]["member_id"]);
    assert_eq!(status["raftIndex"], status["raftAppliedIndex"]);
    assert!(status["dbSize"].as_u64().expect("dbSize") > 0);

    // `endpoint health` reports on stderr in 3.4; "took" differs.
    let health = etcdctl(&pair.rivet.endpoint(), &["endpoint", "health"], None);
    assert!(health.status.success());
    let text = String::from_utf8_lossy(&health.stderr);
    let expected_prefix = format!(
        "{} is healthy: successfully committed proposal: took = ",
        pair.rivet.endpoint()
    );
    assert!(text.starts_with(&expected_prefix), "{text}");
    let etcd_health = etcdctl(&pair.etcd.endpoint(), &["endpoint", "health"], None);
    assert_eq!(
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&etcd_health.stdout)
    );
    let json: serde_json::Value = serde_json::from_str(&common::etcdctl_ok(
        &pair.rivet.endpoint(),
        &["endpoint", "health", "-w", "json"],
    ))
    .expect("health JSON");
    let etcd_json: serde_json::Value = serde_json::from_str(&common::etcdctl_ok(
        &pair.etcd.endpoint(),
        &["endpoint", "health", "-w", "json"],
    ))
    .expect("etcd's health JSON");
    assert_eq!(shape(&json), shape(&etcd_json));
    assert_eq!(json[0]["endpoint"], pair.rivet.endpoint());
    assert_eq!(json[0]["health"], true);
}
