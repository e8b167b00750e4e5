//! Runtime membership against real etcd 3.4: one script of `etcdctl` member, move-leader
//! and endpoint commands runs against a 3-member etcd cluster and a 3-member rivet
//! cluster started with the same flags, and the two transcripts must be equal once
//! member IDs, ports and durations (different in every cluster) are masked.
//!
//! The scripts cover etcd's refusals (unknown member, duplicate peer URL, promoting a
//! voter or a learner that is not in sync, a second learner, a bad leader transferee,
//! `--strict-reconfig-check` with a member down) and the learner's life: added, started,
//! caught up, refusing what a learner refuses, promoted through a follower.
//!
//! Without `etcd` on PATH the tests fail (CI installs it); they never skip.

mod common;

use std::time::Duration;

use common::cluster::{wait_until, Cluster, Member};
use common::{etcdctl, free_port, Etcd};

/// etcdctl's own timeout for one command: long enough for an election, short enough
/// that a refused request fails fast.
const COMMAND_TIMEOUT: &str = "5s";

/// etcd (and rivet, like it) counts a peer for `--strict-reconfig-check` only once its
/// connection has been up for five seconds; scripts start changing membership after
/// that. A precondition of the script, not a timing assertion.
const CONNECTIONS_SETTLE: Duration = Duration::from_secs(6);

/// Replaces what differs between any two clusters: hex member and cluster IDs, ports,
/// durations; drops clientv3's retry warnings (JSON log lines).
fn normalize(text: &str) -> String {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("{\"level\""))
        .map(mask_line)
        .collect();
    for line in &mut lines {
        // `member add` prints the cluster in the order of member IDs.
        if let Some(list) = line
            .strip_prefix("ETCD_INITIAL_CLUSTER=\"")
            .and_then(|l| l.strip_suffix('"'))
        {
            let mut items: Vec<&str> = list.split(',').collect();
            items.sort_unstable();
            *line = format!("ETCD_INITIAL_CLUSTER=\"{}\"", items.join(","));
        }
        if let Some(at) = line.find(" took ") {
            line.truncate(at + " took".len());
        }
    }
    lines.join("\n")
}

fn mask_line(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_hexdigit() && (i == 0 || !chars[i - 1].is_ascii_alphanumeric()) {
            let run = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            let end = i + run;
            let bounded = end == chars.len() || !chars[end].is_ascii_alphanumeric();
            let after_port = out.ends_with("127.0.0.1:");
            if after_port && chars[i..end].iter().all(char::is_ascii_digit) {
                out.push_str("<port>");
                i = end;
                continue;
            }
            if bounded && run >= 8 && chars[i..end].iter().any(|c| c.is_ascii_alphabetic()) {
                out.push_str("<id>");
                i = end;
                continue;
            }
            if bounded && run >= 10 {
                out.push_str("<id>");
                i = end;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    // `%16x` pads short IDs with spaces.
    out.split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a command's output enters a transcript.
#[derive(Clone, Copy)]
enum Shape {
    /// As printed (masked).
    Text,
    /// A set of lines (member lists: ordered by member ID, which differs).
    Set,
    /// Only the exit status: the output holds sizes and raft indexes, which differ; the
    /// script records the facts it checks in them.
    ExitOnly,
}

/// The transcript of a script: each command with its exit status and normalized output.
struct Transcript {
    lines: Vec<String>,
}

impl Transcript {
    fn new() -> Transcript {
        Transcript { lines: Vec::new() }
    }

    /// Runs etcdctl at `endpoint` and records its exit status and what it printed
    /// (stdout, then stderr) as `shape` says; returns stdout as printed.
    fn run(&mut self, step: &str, endpoint: &str, args: &[&str], shape: Shape) -> String {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--command-timeout", COMMAND_TIMEOUT]);
        let output = etcdctl(endpoint, &full, None);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let mut out = normalize(&stdout);
        match shape {
            Shape::Text => {}
            Shape::Set => {
                let mut lines: Vec<&str> = out.lines().collect();
                lines.sort_unstable();
                out = lines.join("\n");
            }
            Shape::ExitOnly => out = "(not compared)".into(),
        }
        let entry = format!(
            "## {step}\n$ etcdctl {}\nexit: {}\n{out}\n{}",
            mask_line(&args.join(" ")),
            if output.status.success() {
                "ok"
            } else {
                "failed"
            },
            normalize(&stderr)
        );
        // Shown when the test fails: what ran before the failure, unmasked.
        println!("{entry}\n(raw: {stdout}{stderr})");
        self.lines.push(entry);
        stdout
    }

    fn note(&mut self, what: String) {
        println!("{what}");
        self.lines.push(what);
    }
}

fn assert_same(etcd: &Transcript, rivet: &Transcript) {
    for (e, r) in etcd.lines.iter().zip(&rivet.lines) {
        assert_eq!(
            e,
            r,
            "rivet and etcd differ\n--- etcd:\n{e}\n--- rivet:\n{r}\n\nfull etcd transcript:\n{}",
            etcd.lines.join("\n")
        );
    }
    assert_eq!(etcd.lines.len(), rivet.lines.len());
}

fn require_etcd() {
    assert!(
        Etcd::available(),
        "this test needs etcd 3.4 on PATH (apt-get install etcd-server, as CI does)"
    );
}

fn member_id(endpoint: &str, name: &str) -> String {
    Cluster::member_id(endpoint, name)
}

/// A member of `cluster` that does not lead it.
fn follower(cluster: &Cluster, leader: usize) -> usize {
    (0..cluster.members.len())
        .find(|i| *i != leader && cluster.members[*i].child.is_some())
        .expect("a follower")
}

fn unused_peer_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Who leads a script's cluster, and a follower, once connections settled.
struct Roles {
    leader: usize,
    at_leader: String,
    other: usize,
    at_follower: String,
}

impl Roles {
    fn settled(cluster: &Cluster) -> Roles {
        std::thread::sleep(CONNECTIONS_SETTLE);
        let leader = cluster.wait_for_leader(None);
        let other = follower(cluster, leader);
        Roles {
            leader,
            at_leader: cluster.members[leader].endpoint(),
            other,
            at_follower: cluster.members[other].endpoint(),
        }
    }
}

/// Refusals, a learner that never starts, move-leader, and strict reconfiguration with a
/// member down.
fn refusals_script(cluster: &mut Cluster) -> Transcript {
    let mut t = Transcript::new();
    let Roles {
        leader,
        at_leader,
        other,
        at_follower,
    } = Roles::settled(cluster);
    let voter_id = member_id(&at_leader, &cluster.members[other].name);
    let voter_peer = cluster.members[other].peer_url();

    t.run("list", &at_follower, &["member", "list"], Shape::Set);
    t.run(
        "remove unknown",
        &at_follower,
        &["member", "remove", "1234abcd"],
        Shape::Text,
    );
    t.run(
        "update unknown",
        &at_leader,
        &[
            "member",
            "update",
            "1234abcd",
            "--peer-urls",
            &unused_peer_url(),
        ],
        Shape::Text,
    );
    t.run(
        "add with a peer URL in use",
        &at_follower,
        &["member", "add", "dup", "--peer-urls", &voter_peer],
        Shape::Text,
    );
    t.run(
        "update to a peer URL in use",
        &at_leader,
        &[
            "member",
            "update",
            &voter_id,
            "--peer-urls",
            &cluster.members[leader].peer_url(),
        ],
        Shape::Text,
    );
    t.run(
        "promote a voter",
        &at_leader,
        &["member", "promote", &voter_id],
        Shape::Text,
    );
    let learner_url = unused_peer_url();
    t.run(
        "add a learner",
        &at_follower,
        &[
            "member",
            "add",
            "l1",
            "--learner",
            "--peer-urls",
            &learner_url,
        ],
        Shape::Text,
    );
    t.run(
        "list with the learner",
        &at_leader,
        &["member", "list"],
        Shape::Set,
    );
    let learner_id = member_id(&at_leader, "");
    t.run(
        "promote the learner that never started",
        &at_leader,
        &["member", "promote", &learner_id],
        Shape::Text,
    );
    t.run(
        "promote it through a follower",
        &at_follower,
        &["member", "promote", &learner_id],
        Shape::Text,
    );
    t.run(
        "a second learner",
        &at_leader,
        &[
            "member",
            "add",
            "l2",
            "--learner",
            "--peer-urls",
            &unused_peer_url(),
        ],
        Shape::Text,
    );
    t.run(
        "move leadership to the learner",
        &cluster.endpoints().join(","),
        &["move-leader", &learner_id],
        Shape::Text,
    );
    t.run(
        "remove the learner",
        &at_follower,
        &["member", "remove", &learner_id],
        Shape::Text,
    );
    t.run(
        "move leadership to a non-member",
        &cluster.endpoints().join(","),
        &["move-leader", "1234abcd"],
        Shape::Text,
    );
    t.run(
        "move leadership without the leader's endpoint",
        &at_follower,
        &["move-leader", &voter_id],
        Shape::Text,
    );
    t.run(
        "move leadership to a follower",
        &cluster.endpoints().join(","),
        &["move-leader", &voter_id],
        Shape::Text,
    );
    let new_leader = cluster.wait_for_leader(Some(leader));
    t.note(format!(
        "leader moved to the target: {}",
        new_leader == other
    ));

    // The same member leads in both clusters from here on (m0; not recorded), so that
    // the same member goes down.
    if new_leader != 0 {
        let m0 = member_id(&cluster.members[new_leader].endpoint(), "m0");
        common::etcdctl_ok(&cluster.endpoints().join(","), &["move-leader", &m0]);
        wait_until("m0 leads", Duration::from_secs(30), || {
            cluster.leader() == Some(0)
        });
    }

    // --strict-reconfig-check with one member down: the leader refuses a voter (it is
    // not connected to every voter) and the removal of a live voter (the live voters
    // left would not be a quorum), and allows the removal of the member that is down.
    let (leader, down, live) = (0, 1, 2);
    let at_leader = cluster.members[leader].endpoint();
    let down_id = member_id(&at_leader, &cluster.members[down].name);
    let live_id = member_id(&at_leader, &cluster.members[live].name);
    cluster.members[down].kill9();
    // Long enough for both to see the member gone (etcd: its TCP connection closes;
    // rivet: a leader's election timeout without an answer); not a timing assertion.
    std::thread::sleep(Duration::from_secs(3));
    t.run(
        "add a voter with a member down",
        &at_leader,
        &["member", "add", "v1", "--peer-urls", &unused_peer_url()],
        Shape::Text,
    );
    t.run(
        "remove a live voter with a member down",
        &at_leader,
        &["member", "remove", &live_id],
        Shape::Text,
    );
    t.run(
        "remove the member that is down",
        &at_leader,
        &["member", "remove", &down_id],
        Shape::Text,
    );
    t.run(
        "list after removal",
        &at_leader,
        &["member", "list"],
        Shape::Set,
    );
    t.run(
        "health of the cluster",
        &at_leader,
        &["endpoint", "health", "--cluster"],
        Shape::Set,
    );
    let status = t.run(
        "status of the cluster",
        &at_leader,
        &["endpoint", "status", "--cluster", "-w", "json"],
        Shape::ExitOnly,
    );
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    let leaders = status
        .as_array()
        .expect("array")
        .iter()
        .filter(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .count();
    t.note(format!(
        "endpoints: {}, leaders among them: {leaders}",
        status.as_array().map_or(0, Vec::len)
    ));
    t
}

/// Runs `script` against a 3-member etcd 3.4, then a 3-member rivet, and compares.
fn compare_with_etcd(script: fn(&mut Cluster) -> Transcript) {
    require_etcd();
    let mut etcd = Cluster::start_etcd(3, &[]);
    let etcd_transcript = script(&mut etcd);
    drop(etcd);
    let mut rivet = Cluster::start(3, &[]);
    let rivet_transcript = script(&mut rivet);
    assert_same(&etcd_transcript, &rivet_transcript);
}

#[test]
fn membership_refusals_match_etcd() {
    compare_with_etcd(refusals_script);
}

/// A learner joins an existing cluster, catches up, serves serializable reads, refuses
/// writes and linearizable reads, and is promoted through a follower.
fn learner_script(cluster: &mut Cluster) -> Transcript {
    let mut t = Transcript::new();
    let Roles {
        at_leader,
        at_follower,
        ..
    } = Roles::settled(cluster);
    for i in 0..200 {
        assert!(common::cluster::put_ok(
            &cluster.members[i % 3].endpoint(),
            &format!("key{i:03}"),
            &format!("value{i}"),
        ));
    }
    let learner: Member = cluster.new_member("m3");
    t.run(
        "add a learner",
        &at_follower,
        &[
            "member",
            "add",
            "m3",
            "--learner",
            "--peer-urls",
            &learner.peer_url(),
        ],
        Shape::Text,
    );
    let at_learner = learner.endpoint();
    cluster.join(learner, &[]);
    wait_until(
        "the learner serves the data",
        Duration::from_secs(60),
        || {
            etcdctl(
                &at_learner,
                &["get", "key199", "--print-value-only", "--consistency", "s"],
                None,
            )
            .stdout
                == b"value199\n"
        },
    );
    t.run("list", &at_leader, &["member", "list"], Shape::Set);
    t.run(
        "serializable read on the learner",
        &at_learner,
        &["get", "key000", "--consistency", "s"],
        Shape::Text,
    );
    t.run(
        "put on the learner",
        &at_learner,
        &["put", "key000", "other"],
        Shape::Text,
    );
    t.run(
        "linearizable read on the learner",
        &at_learner,
        &["get", "key000"],
        Shape::Text,
    );
    t.run(
        "member list on the learner",
        &at_learner,
        &["member", "list"],
        Shape::Text,
    );
    let status = t.run(
        "status of the learner",
        &at_learner,
        &["endpoint", "status", "-w", "json"],
        Shape::ExitOnly,
    );
    let status: serde_json::Value = serde_json::from_str(&status).expect("status json");
    t.note(format!(
        "the learner says it is one: {}",
        status[0]["Status"]["is_learner"]
    ));
    let learner_id = member_id(&at_leader, "m3");
    t.run(
        "promote through a follower",
        &at_follower,
        &["member", "promote", &learner_id],
        Shape::Text,
    );
    wait_until(
        "the promoted member takes writes",
        Duration::from_secs(30),
        || common::cluster::put_ok(&at_learner, "promoted", "yes"),
    );
    t.run(
        "list after promotion",
        &at_leader,
        &["member", "list"],
        Shape::Set,
    );
    t.run(
        "linearizable read on the promoted member",
        &at_learner,
        &["get", "promoted", "--print-value-only"],
        Shape::Text,
    );
    cluster.wait_converged();
    t
}

#[test]
fn a_learner_joins_refuses_what_etcd_refuses_and_is_promoted() {
    compare_with_etcd(learner_script);
}

#[test]
fn normalize_masks_what_differs_between_clusters() {
    assert_eq!(
        normalize("Member  8e9e05c52164694d added to cluster cdf818194e3a8c32"),
        "Member <id> added to cluster <id>"
    );
    assert_eq!(
        normalize(
            "http://127.0.0.1:40123 is healthy: successfully committed proposal: took = 1.2ms"
        ),
        "http://127.0.0.1:<port> is healthy: successfully committed proposal: took"
    );
    assert_eq!(
        normalize("ETCD_INITIAL_CLUSTER=\"m1=http://127.0.0.1:5,m0=http://127.0.0.1:7\""),
        "ETCD_INITIAL_CLUSTER=\"m0=http://127.0.0.1:<port>,m1=http://127.0.0.1:<port>\""
    );
    assert_eq!(normalize("key000\nvalue0"), "key000\nvalue0");
}
