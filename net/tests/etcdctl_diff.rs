//! etcdctl's `watch`, `watch -i`, `lease`, `lock` and `elect` commands against rivet and
//! a real etcd 3.4 started by the test: the same commands on both, outputs compared with
//! only what legitimately differs masked (lease IDs, member and cluster IDs, remaining
//! TTLs). Each scenario runs twice: against one member of each, and against a 3-member
//! cluster of each with etcdctl given all three endpoints.
//!
//! Without `etcd` on PATH the tests fail (CI installs it); they never skip.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::etcdctl::{mask_ids, mask_ids_and_term, run, EtcdctlProcess as Running};
use common::{require_etcd_34, Etcd, Rivet};

/// Whether every etcd member in `endpoints` (comma-separated) has no watcher still
/// catching up (etcd's own gauge): what etcd's watchers print next comes from writes yet
/// to happen.
fn etcd_watchers_synced(endpoints: &str) -> bool {
    endpoints.split(',').all(|endpoint| {
        common::watch::metric(endpoint, "etcd_debugging_mvcc_slow_watcher_total") == Some(0.0)
    })
}

/// Waits (at most 20 s) until `done`; panics with `what` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    common::cluster::wait_until(what, Duration::from_secs(20), &mut done);
}

/// Replaces every lowercase hex run after `prefix` with `<lease>`.
fn mask_hex_after(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let after = at + prefix.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let hex = rest
            .bytes()
            .take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            .count();
        if hex > 0 {
            out.push_str("<lease>");
            rest = &rest[hex..];
        }
    }
    out.push_str(rest);
    out
}

/// The servers an etcdctl scenario compares: one etcd and one rivet member, or a
/// 3-member cluster of each (etcdctl then gets all three endpoints and spreads its
/// requests over them).
enum Servers {
    Members(Etcd, Rivet),
    Clusters(Cluster, Cluster),
}

impl Servers {
    fn members() -> Servers {
        require_etcd_34();
        Servers::Members(Etcd::start(&[]), Rivet::start(&[]))
    }

    fn clusters() -> Servers {
        require_etcd_34();
        Servers::Clusters(Cluster::start_etcd(3, &[]), Cluster::start(3, &[]))
    }

    /// etcd's endpoints, then rivet's.
    fn endpoints(&self) -> (String, String) {
        match self {
            Servers::Members(etcd, rivet) => (etcd.endpoint(), rivet.endpoint()),
            Servers::Clusters(etcd, rivet) => {
                (etcd.endpoints().join(","), rivet.endpoints().join(","))
            }
        }
    }
}

/// Masks what may differ in the output of `endpoints`: the IDs, and for a cluster
/// (several endpoints: the `_on_clusters` variants) the raft term, which depends on how
/// many elections the cluster's start took (CI once saw etcd's three members at term 3
/// and rivet's at 2).
fn mask(endpoints: &str, text: &str) -> String {
    if endpoints.contains(',') {
        mask_ids_and_term(text)
    } else {
        mask_ids(text)
    }
}

/// Runs `args` on both; panics unless the outputs are equal. Returns etcd's.
fn both_same(etcd: &str, rivet: &str, args: &[&str]) -> (bool, String, String) {
    let e = run(etcd, args);
    let r = run(rivet, args);
    assert_eq!(
        (r.0, mask(rivet, &r.1), &r.2),
        (e.0, mask(etcd, &e.1), &e.2),
        "etcdctl {args:?}: rivet (left) differs from etcd"
    );
    e
}

/// Output of a watcher that saw `ready` puts before the compared part: what follows
/// the last `ready` value (the number of readiness rounds each watcher saw differs).
fn after_ready(text: &str) -> String {
    match text.rfind("ready\n") {
        Some(at) => text[at + "ready\n".len()..].to_string(),
        None => text.to_string(),
    }
}

#[test]
fn etcdctl_watch_matches_etcd() {
    etcdctl_watch_scenario(&Servers::members());
}

#[test]
fn etcdctl_watch_matches_etcd_on_clusters() {
    etcdctl_watch_scenario(&Servers::clusters());
}

fn etcdctl_watch_scenario(servers: &Servers) {
    let (e, r) = servers.endpoints();
    // History: replayed by the watchers with --rev.
    for args in [
        &["put", "foo", "1"][..],
        &["put", "foo/a", "1"],
        &["put", "bar", "1"],
        &["put", "foo", "2"],
        &["del", "foo/a"],
    ] {
        both_same(&e, &r, args);
    }
    let specs: Vec<Vec<&str>> = vec![
        vec!["watch", "foo"],
        vec!["watch", "--prefix", "foo", "--prev-kv"],
        vec!["watch", "foo", "--rev", "2"],
        vec!["watch", "--prefix", "", "--rev", "1", "-w", "json"],
        vec!["watch", "--prefix", "foo", "--rev", "3", "--prev-kv"],
        vec!["watch", "bar", "foo/z"],
    ];
    let start = |endpoint: &str| -> Vec<Running> {
        specs
            .iter()
            .map(|args| Running::spawn(endpoint, args, false))
            .collect()
    };
    let (etcd_watchers, rivet_watchers) = (start(&e), start(&r));
    // The --rev watchers print the history first; the next write must not join that
    // catch-up (etcd batches what an unsynced watcher has not seen yet): wait until etcd
    // has synced them and both printed the same history.
    let pairs = || specs.iter().zip(etcd_watchers.iter().zip(&rivet_watchers));
    wait_until("the --rev watchers printed their history on both", || {
        etcd_watchers_synced(&e)
            && pairs().all(|(spec, (etcd_w, rivet_w))| {
                !spec.contains(&"--rev")
                    || (etcd_w.stdout().contains('1')
                        && mask(&e, &etcd_w.stdout()) == mask(&r, &rivet_w.stdout()))
            })
    });
    // Readiness: puts of foo=ready on both in lockstep (so revisions stay equal) until
    // the plain watchers of both have seen one (a watcher not registered yet misses a
    // put; the next round catches it).
    let ready = |w: &[Running]| w[0].stdout().contains("ready") && w[1].stdout().contains("ready");
    let mut rounds = 0;
    loop {
        both_same(&e, &r, &["put", "foo", "ready"]);
        rounds += 1;
        let seen = etcd_watchers[0].wait_until_within(Duration::from_secs(1), |_| {
            ready(&etcd_watchers) && ready(&rivet_watchers)
        });
        if seen {
            break;
        }
        assert!(rounds < 50, "the watchers never saw a put");
    }
    for args in [
        &["put", "foo", "3"][..],
        &["put", "foo/b", "x"],
        &["put", "bar", "2"],
        &["put", "bar/1", "2"],
        &["del", "--prefix", "foo/"],
        &["del", "foo", "--prev-kv"],
        &["put", "foo", "4"],
    ] {
        both_same(&e, &r, args);
    }
    let txn = "\n\nput foo/c c\nput bar b\ndel foo\nput foo/a a\n\n";
    let e_txn = common::etcdctl(&e, &["txn"], Some(txn));
    let r_txn = common::etcdctl(&r, &["txn"], Some(txn));
    assert_eq!(r_txn.stdout, e_txn.stdout, "txn");
    // A last put every watcher sees (each range holds "foo"): once every watcher printed
    // it, it printed everything before it.
    both_same(&e, &r, &["put", "foo", "last"]);
    wait_until("every watcher printed the last put", || {
        etcd_watchers
            .iter()
            .chain(&rivet_watchers)
            // (the JSON watcher prints values in base64)
            .all(|w| w.stdout().contains("last") || w.stdout().contains("bGFzdA=="))
    });
    let mut events = 0;
    for ((spec, etcd_w), rivet_w) in specs.iter().zip(etcd_watchers).zip(rivet_watchers) {
        let (_, etcd_out, etcd_err) = etcd_w.finish();
        let (_, rivet_out, rivet_err) = rivet_w.finish();
        let plain = spec.iter().all(|a| *a != "--rev");
        let norm = |t: &str| mask(&r, &if plain { after_ready(t) } else { t.to_string() });
        assert_eq!(
            (norm(&rivet_out), rivet_err),
            (norm(&etcd_out), etcd_err),
            "etcdctl {spec:?}: rivet (left) differs from etcd"
        );
        events += etcd_out.matches("PUT").count() + etcd_out.matches("DELETE").count();
    }
    assert!(events > 20, "the watchers saw events: {events}");

    // A watch from a compacted revision: etcdctl reports the cancel and exits.
    both_same(&e, &r, &["compaction", "4"]);
    let compacted = both_same(&e, &r, &["watch", "foo", "--rev", "2"]);
    assert!(compacted.2.contains("compacted"), "{compacted:?}");
}

#[test]
fn etcdctl_interactive_watch_matches_etcd() {
    etcdctl_interactive_watch_scenario(&Servers::members());
}

#[test]
fn etcdctl_interactive_watch_matches_etcd_on_clusters() {
    etcdctl_interactive_watch_scenario(&Servers::clusters());
}

fn etcdctl_interactive_watch_scenario(servers: &Servers) {
    let (e, r) = servers.endpoints();
    let mut etcd_w = Running::spawn(&e, &["watch", "-i"], true);
    let mut rivet_w = Running::spawn(&r, &["watch", "-i"], true);
    for w in [&mut etcd_w, &mut rivet_w] {
        w.input("watch foo\n");
        w.input("watch --prefix bar --prev-kv\n");
    }
    // Readiness, in lockstep as above, for both watchers; then every write is awaited on
    // both before the next, since the two watchers print from goroutines of their own.
    let ready = |w: &Running| w.stdout().matches("ready").count() >= 3;
    let mut rounds = 0;
    loop {
        both_same(&e, &r, &["put", "foo", "ready"]);
        both_same(&e, &r, &["put", "bar", "ready"]);
        rounds += 1;
        if etcd_w.wait_until_within(Duration::from_secs(1), |_| {
            ready(&etcd_w) && ready(&rivet_w)
        }) {
            break;
        }
        assert!(rounds < 50, "the watchers never saw a put");
    }
    // Marks for the start of the compared part: once both watchers printed them (the bar
    // watcher prints the previous value "ready" too), every readiness event is out.
    both_same(&e, &r, &["put", "foo", "mark"]);
    both_same(&e, &r, &["put", "bar", "mark"]);
    let marked = |w: &Running| w.stdout().matches("mark").count() >= 2;
    wait_until("both watchers printed the marks", || {
        marked(&etcd_w) && marked(&rivet_w)
    });
    let before = (etcd_w.stdout().len(), rivet_w.stdout().len());
    // Each write, and whether the watchers print something for it.
    for (args, prints) in [
        (&["put", "foo", "1"][..], true),
        (&["put", "bar/x", "1"], true),
        (&["put", "bar", "2"], true),
        (&["put", "other", "1"], false),
        (&["del", "--prefix", "bar"], true),
        (&["del", "foo"], true),
        (&["put", "foo", "3"], true),
    ] {
        let printed = (etcd_w.stdout().len(), rivet_w.stdout().len());
        both_same(&e, &r, args);
        wait_until(&format!("both watchers printed {args:?} alike"), || {
            let (etcd_out, rivet_out) = (etcd_w.stdout(), rivet_w.stdout());
            (!prints || (etcd_out.len() > printed.0 && rivet_out.len() > printed.1))
                && etcd_out[before.0..] == rivet_out[before.1..]
        });
    }
    let (_, etcd_out, etcd_err) = etcd_w.finish();
    let (_, rivet_out, rivet_err) = rivet_w.finish();
    assert_eq!(
        (&rivet_out[before.1..], rivet_err),
        (&etcd_out[before.0..], etcd_err),
        "watch -i: rivet (left) differs from etcd"
    );
    assert!(
        etcd_out[before.0..].matches("DELETE").count() >= 3,
        "{etcd_out}"
    );
}

/// One side of the etcdctl lease test: its endpoint and the lease IDs it granted (hex).
struct CtlSide {
    endpoint: String,
    leases: Vec<String>,
}

impl CtlSide {
    /// Runs `args` with `{L1}`, `{L2}`, … replaced by this side's lease IDs; the output
    /// with the IDs replaced back, remaining TTLs masked, and listed IDs and attached
    /// keys sorted (etcd lists both in Go map order).
    fn run(&mut self, args: &[&str]) -> (bool, String, String) {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                let mut a = a.to_string();
                for (i, id) in self.leases.iter().enumerate() {
                    a = a.replace(&format!("{{L{}}}", i + 1), id);
                }
                a
            })
            .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, mut out, mut err) = run(&self.endpoint, &refs);
        if let Some(rest) = out.strip_prefix("lease ") {
            if let Some((id, tail)) = rest.split_once(' ') {
                if refs.get(1) == Some(&"grant") && tail.starts_with("granted") {
                    self.leases.push(id.to_string());
                }
            }
        }
        for (i, id) in self.leases.iter().enumerate() {
            out = out.replace(id.as_str(), &format!("{{L{}}}", i + 1));
            err = err.replace(id.as_str(), &format!("{{L{}}}", i + 1));
        }
        out = mask(&self.endpoint, &mask_remaining(&out));
        if out.starts_with("found ") {
            let mut lines: Vec<&str> = out.lines().collect();
            lines[1..].sort_unstable();
            out = lines.iter().map(|l| format!("{l}\n")).collect();
        }
        if let Some(at) = out.find("attached keys([") {
            let start = at + "attached keys([".len();
            if let Some(len) = out[start..].find(']') {
                let mut keys: Vec<&str> = out[start..start + len].split(' ').collect();
                keys.sort_unstable();
                out = format!("{}{}{}", &out[..start], keys.join(" "), &out[start + len..]);
            }
        }
        (ok, out, err)
    }
}

/// `remaining(59s)` → `remaining(Ns)`: the servers' lease clocks started apart.
fn mask_remaining(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("remaining(") {
        let after = at + "remaining(".len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        out.push('N');
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn etcdctl_lease_matches_etcd() {
    etcdctl_lease_scenario(&Servers::members());
}

#[test]
fn etcdctl_lease_matches_etcd_on_clusters() {
    etcdctl_lease_scenario(&Servers::clusters());
}

fn etcdctl_lease_scenario(servers: &Servers) {
    let (etcd, rivet) = servers.endpoints();
    let mut e = CtlSide {
        endpoint: etcd,
        leases: Vec::new(),
    };
    let mut r = CtlSide {
        endpoint: rivet,
        leases: Vec::new(),
    };
    let mut same = |args: &[&str]| {
        let etcd_answer = e.run(args);
        let rivet_answer = r.run(args);
        assert_eq!(
            rivet_answer, etcd_answer,
            "etcdctl {args:?}: rivet (left) differs from etcd"
        );
        println!("{args:?}: {etcd_answer:?}");
        etcd_answer
    };
    assert!(same(&["lease", "grant", "60"])
        .1
        .contains("{L1} granted with TTL(60s)"));
    same(&["lease", "grant", "30"]);
    same(&["lease", "list"]);
    same(&["put", "k1", "v", "--lease={L1}"]);
    same(&["put", "k2", "v", "--lease", "{L1}"]);
    same(&["put", "k3", "v", "--lease={L2}"]);
    assert!(!same(&["put", "k4", "v", "--lease=1234abcd"]).0);
    same(&["get", "--prefix", "k"]);
    same(&["lease", "timetolive", "{L1}"]);
    same(&["lease", "timetolive", "{L1}", "--keys"]);
    same(&["lease", "timetolive", "{L2}", "--keys"]);
    same(&["lease", "timetolive", "1234abcd"]);
    same(&["lease", "keep-alive", "--once", "{L1}"]);
    same(&["lease", "keep-alive", "--once", "1234abcd"]);
    same(&["lease", "revoke", "{L1}"]);
    same(&["get", "--prefix", "k"]);
    assert!(!same(&["lease", "revoke", "{L1}"]).0);
    same(&["lease", "timetolive", "{L1}"]);
    same(&["lease", "list"]);
    same(&["lease", "revoke", "{L2}"]);
    same(&["get", "--prefix", "k", "-w", "json"]);
    // Below etcd's minimum TTL (1.5 election timeouts, rounded up: 2 s with the default
    // timings, 1 s with the test clusters' 500 ms): raised to it, as etcd does.
    // Revoked at once, so that no comparison races its expiry.
    let minimum = if matches!(servers, Servers::Members(..)) {
        "2s"
    } else {
        "1s"
    };
    assert!(same(&["lease", "grant", "1"])
        .1
        .contains(&format!("{{L3}} granted with TTL({minimum})")));
    same(&["lease", "revoke", "{L3}"]);
}

/// `etcdctl lock`: the holder prints its key (the lease in hex, masked); a second
/// `lock` waits while the first holds it and gets it when the first is stopped (SIGTERM:
/// etcdctl unlocks and revokes its session); `lock NAME command` runs the command.
/// How many keys `endpoint` holds under `prefix` (a lock's or an election's waiters).
fn keys_under(endpoint: &str, prefix: &str) -> usize {
    let (ok, out, _) = run(endpoint, &["get", "--prefix", prefix, "--keys-only"]);
    if !ok {
        return 0;
    }
    out.lines().filter(|l| !l.is_empty()).count()
}

fn lock_scenario(endpoint: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let first = Running::spawn(endpoint, &["lock", "mylock"], false);
    assert!(
        first.wait_for("\n"),
        "{endpoint}: the first lock never printed its key"
    );
    let second = Running::spawn(endpoint, &["lock", "mylock"], false);
    // Whatever it printed while the first held the lock is compared (it must be nothing,
    // on both), once it waits: its own key is under the lock's prefix.
    wait_until("the second locker waits", || {
        keys_under(endpoint, "mylock/") == 2
    });
    seen.push(format!("second while held: {:?}", second.stdout()));
    let (ok, out, err) = first.finish();
    seen.push(format!(
        "first: {ok} {:?} {err:?}",
        mask_hex_after(&out, "mylock/")
    ));
    assert!(
        second.wait_for("\n"),
        "{endpoint}: the second lock never got it"
    );
    let (ok, out, err) = second.finish();
    seen.push(format!(
        "second: {ok} {:?} {err:?}",
        mask_hex_after(&out, "mylock/")
    ));
    let (ok, out, err) = run(endpoint, &["lock", "other", "echo", "acquired"]);
    seen.push(format!("with a command: {ok} {out:?} {err:?}"));
    seen
}

#[test]
fn etcdctl_lock_matches_etcd() {
    etcdctl_lock(&Servers::members());
}

#[test]
fn etcdctl_lock_matches_etcd_on_clusters() {
    etcdctl_lock(&Servers::clusters());
}

/// Runs `scenario` against etcd, then rivet; panics unless they saw the same. Returns
/// what etcd's side saw.
fn same_on_both(servers: &Servers, what: &str, scenario: fn(&str) -> Vec<String>) -> Vec<String> {
    let (etcd, rivet) = servers.endpoints();
    let etcd_seen = scenario(&etcd);
    let rivet_seen = scenario(&rivet);
    println!("{etcd_seen:#?}");
    assert_eq!(
        rivet_seen, etcd_seen,
        "etcdctl {what}: rivet (left) differs from etcd"
    );
    etcd_seen
}

fn etcdctl_lock(servers: &Servers) {
    let etcd_seen = same_on_both(servers, "lock", lock_scenario);
    assert!(etcd_seen[1].contains("mylock/<lease>\\n"), "{etcd_seen:?}");
    assert!(etcd_seen[2].contains("mylock/<lease>\\n"), "{etcd_seen:?}");
}

/// `etcdctl elect`: an observer (`elect -l`), a leader, a second candidate that waits
/// until the leader resigns (SIGTERM), then leads.
fn elect_scenario(endpoint: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let observer = Running::spawn(endpoint, &["elect", "-l", "myelection"], false);
    let first = Running::spawn(endpoint, &["elect", "myelection", "p1"], false);
    assert!(
        first.wait_for("p1\n"),
        "{endpoint}: the first candidate never led"
    );
    assert!(
        observer.wait_for("p1\n"),
        "{endpoint}: the observer never saw p1"
    );
    let second = Running::spawn(endpoint, &["elect", "myelection", "p2"], false);
    wait_until("the second candidate campaigns", || {
        keys_under(endpoint, "myelection/") == 2
    });
    seen.push(format!("second while first leads: {:?}", second.stdout()));
    let (ok, out, err) = first.finish();
    seen.push(format!(
        "first: {ok} {:?} {err:?}",
        mask_hex_after(&out, "myelection/")
    ));
    assert!(second.wait_for("p2\n"), "{endpoint}: the second never led");
    assert!(
        observer.wait_for("p2\n"),
        "{endpoint}: the observer never saw p2"
    );
    let (ok, out, err) = second.finish();
    seen.push(format!(
        "second: {ok} {:?} {err:?}",
        mask_hex_after(&out, "myelection/")
    ));
    let (ok, out, err) = observer.finish();
    seen.push(format!(
        "observer: {ok} {:?} {err:?}",
        mask_hex_after(&out, "myelection/")
    ));
    seen
}

#[test]
fn etcdctl_elect_matches_etcd() {
    etcdctl_elect(&Servers::members());
}

#[test]
fn etcdctl_elect_matches_etcd_on_clusters() {
    etcdctl_elect(&Servers::clusters());
}

fn etcdctl_elect(servers: &Servers) {
    let etcd_seen = same_on_both(servers, "elect", elect_scenario);
    assert!(
        etcd_seen[3].contains("p1") && etcd_seen[3].contains("p2"),
        "{etcd_seen:?}"
    );
}
