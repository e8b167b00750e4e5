//! Tests for the linearizability checker: hand-written histories with known
//! verdicts, the text format, property tests against a sequential model,
//! and a performance sanity check.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rivet_tools::linearizability::{
    check, from_text, to_text, validate, Event, Op, Outcome, Verdict,
};

const BUDGET: Duration = Duration::from_secs(10);
/// Completion time written for indeterminate events (ignored).
const NEVER: u64 = u64::MAX;

fn put(client: u64, key: &str, value: &str, invoke_ns: u64, complete_ns: u64) -> Event {
    Event {
        client,
        op: Op::Put {
            key: key.into(),
            value: value.into(),
        },
        outcome: Outcome::Put,
        invoke_ns,
        complete_ns,
    }
}

fn get(client: u64, key: &str, seen: Option<&str>, invoke_ns: u64, complete_ns: u64) -> Event {
    Event {
        client,
        op: Op::Get { key: key.into() },
        outcome: Outcome::Get(seen.map(String::from)),
        invoke_ns,
        complete_ns,
    }
}

#[allow(clippy::too_many_arguments)]
fn cas(
    client: u64,
    key: &str,
    expected: Option<&str>,
    new: &str,
    ok: bool,
    invoke_ns: u64,
    complete_ns: u64,
) -> Event {
    Event {
        client,
        op: Op::Cas {
            key: key.into(),
            expected: expected.map(String::from),
            new: new.into(),
        },
        outcome: Outcome::Cas(ok),
        invoke_ns,
        complete_ns,
    }
}

/// The event, failed indeterminately.
fn unknown(mut e: Event) -> Event {
    e.outcome = Outcome::Unknown;
    e.complete_ns = NEVER;
    e
}

fn assert_linearizable(history: &[Event]) {
    let verdict = check(history, BUDGET);
    assert_eq!(
        verdict,
        Verdict::Linearizable,
        "history:\n{}",
        to_text(history)
    );
}

/// Asserts a violation on `key` and checks the explanation: it parses, is a
/// subset of the history, and is itself not linearizable. Returns it.
fn assert_violation(history: &[Event], key: &str) -> Vec<Event> {
    match check(history, BUDGET) {
        Verdict::NotLinearizable {
            key: k,
            explanation,
        } => {
            assert_eq!(k, key, "{explanation}");
            assert!(explanation.starts_with("# key "), "{explanation}");
            let shown = from_text(&explanation).expect("explanation parses");
            assert!(!shown.is_empty(), "{explanation}");
            for e in &shown {
                assert!(history.contains(e), "{e} not in history");
                assert_eq!(e.op.key(), key);
            }
            assert!(
                matches!(check(&shown, BUDGET), Verdict::NotLinearizable { .. }),
                "explanation is linearizable:\n{explanation}"
            );
            shown
        }
        other => panic!("expected a violation, got {other:?}\n{}", to_text(history)),
    }
}

// ---------------------------------------------------------------------------
// Linearizable histories.

#[test]
fn empty_history() {
    assert_linearizable(&[]);
}

#[test]
fn sequential() {
    assert_linearizable(&[
        get(1, "k", None, 0, 10),
        put(1, "k", "a", 20, 30),
        get(2, "k", Some("a"), 40, 50),
        put(2, "k", "b", 60, 70),
        get(1, "k", Some("b"), 80, 90),
        cas(1, "k", Some("b"), "c", true, 100, 110),
        get(3, "k", Some("c"), 120, 130),
    ]);
}

#[test]
fn concurrent_puts_read_sees_either() {
    let puts = [put(1, "k", "a", 0, 100), put(2, "k", "b", 10, 110)];
    for seen in ["a", "b"] {
        // A read after both completed sees the one ordered last.
        let mut h = puts.to_vec();
        h.push(get(3, "k", Some(seen), 120, 130));
        assert_linearizable(&h);
        // A read concurrent with both may see either, or nothing yet.
        let mut h = puts.to_vec();
        h.push(get(3, "k", Some(seen), 50, 60));
        assert_linearizable(&h);
    }
    let mut h = puts.to_vec();
    h.push(get(3, "k", None, 50, 60));
    assert_linearizable(&h);
}

#[test]
fn concurrent_reads_during_a_put_see_old_then_new() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 100),
        get(2, "k", Some("a"), 30, 40),
        get(3, "k", Some("b"), 50, 60),
        get(2, "k", Some("b"), 70, 80),
    ]);
}

#[test]
fn touching_intervals_are_concurrent() {
    // The put completes at the instant the read is invoked: either order.
    assert_linearizable(&[put(1, "k", "a", 0, 10), get(2, "k", None, 10, 20)]);
}

#[test]
fn cas_chains() {
    assert_linearizable(&[
        cas(1, "k", None, "0", true, 0, 10),
        cas(2, "k", None, "x", false, 20, 30),
        cas(1, "k", Some("0"), "1", true, 40, 50),
        cas(2, "k", Some("1"), "2", true, 60, 70),
        cas(3, "k", Some("0"), "3", false, 80, 90),
        get(1, "k", Some("2"), 100, 110),
    ]);
    // Concurrent CASes whose order is only implied by their results.
    assert_linearizable(&[
        put(1, "k", "1", 0, 10),
        cas(4, "k", Some("3"), "4", true, 20, 100),
        cas(3, "k", Some("2"), "3", true, 20, 100),
        cas(2, "k", Some("1"), "2", true, 20, 100),
        cas(5, "k", Some("1"), "x", false, 20, 100),
        get(1, "k", Some("4"), 110, 120),
    ]);
}

#[test]
fn indeterminate_write_took_effect() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 30)),
        get(3, "k", Some("b"), 1_000, 1_010),
    ]);
    // ... possibly long after the client gave up on it.
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 30)),
        put(1, "k", "c", 40, 50),
        get(3, "k", Some("c"), 60, 70),
        get(3, "k", Some("b"), 80, 90),
    ]);
    // An indeterminate CAS that succeeded.
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("a"), "b", true, 20, 30)),
        get(3, "k", Some("b"), 1_000, 1_010),
    ]);
}

#[test]
fn indeterminate_write_did_not_take_effect() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 30)),
        get(3, "k", Some("a"), 1_000, 1_010),
        get(3, "k", Some("a"), 2_000, 2_010),
    ]);
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(cas(2, "k", Some("a"), "b", true, 20, 30)),
        cas(3, "k", Some("a"), "c", true, 40, 50),
        get(3, "k", Some("c"), 60, 70),
    ]);
}

#[test]
fn reads_after_indeterminate_write_old_then_new() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 30)),
        get(3, "k", Some("a"), 100, 110),
        get(3, "k", Some("b"), 200, 210),
        get(1, "k", Some("b"), 300, 310),
    ]);
}

#[test]
fn failed_reads_are_ignored() {
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(get(2, "k", Some("nonsense"), 20, 30)),
        get(3, "k", Some("a"), 40, 50),
    ]);
}

#[test]
fn failed_cas_explained_by_indeterminate_write() {
    // The CAS could only fail if the indeterminate put happened before it,
    // and a later put hides it.
    assert_linearizable(&[
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 30)),
        cas(3, "k", Some("a"), "c", false, 40, 50),
        put(1, "k", "d", 60, 70),
        get(3, "k", Some("d"), 80, 90),
    ]);
}

#[test]
fn interchangeable_indeterminate_writes() {
    // Many indeterminate writes nothing reads; failed CASes keep them
    // relevant. Each failed CAS needs one of them after the put before it.
    let mut h = Vec::new();
    for i in 0..30u64 {
        h.push(unknown(put(9, "k", &format!("lost{i}"), i, NEVER)));
    }
    for i in 0..30u64 {
        let t = 1_000 + i * 100;
        h.push(put(1, "k", "a", t, t + 10));
        h.push(cas(2, "k", Some("a"), "z", false, t + 20, t + 30));
    }
    assert_linearizable(&h);
    // One failed CAS too many: not enough lost writes to explain them.
    h.push(put(1, "k", "a", 10_000, 10_010));
    h.push(cas(2, "k", Some("a"), "z", false, 10_020, 10_030));
    assert_violation(&h, "k");
}

#[test]
fn keys_are_independent() {
    assert_linearizable(&[
        put(1, "a", "1", 0, 10),
        put(1, "b", "1", 20, 30),
        get(2, "a", Some("1"), 40, 50),
        get(2, "b", Some("1"), 40, 50),
        get(2, "c", None, 40, 50),
    ]);
}

// ---------------------------------------------------------------------------
// Violations.

#[test]
fn stale_read_after_completed_write() {
    let h = [
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 30),
        get(2, "k", Some("c"), 35, 38),
        put(2, "k", "c", 32, 39),
        get(3, "k", Some("a"), 40, 50),
    ];
    let shown = assert_violation(&h, "k");
    // The minimal conflict: a, then b, then a read of a.
    assert_eq!(shown, vec![h[0].clone(), h[1].clone(), h[4].clone()]);

    // Reading "absent" after a completed write.
    let h = [put(1, "k", "a", 0, 10), get(2, "k", None, 20, 30)];
    assert_eq!(assert_violation(&h, "k"), h.to_vec());
}

#[test]
fn reads_in_real_time_order_see_new_then_old() {
    let h = [
        put(1, "k", "a", 0, 10),
        put(1, "k", "b", 20, 1_000),
        get(2, "k", Some("b"), 30, 40),
        get(3, "k", Some("a"), 50, 60),
    ];
    assert_eq!(assert_violation(&h, "k").len(), 4);
}

#[test]
fn reads_after_indeterminate_write_new_then_old() {
    let h = [
        put(1, "k", "a", 0, 10),
        unknown(put(2, "k", "b", 20, 30)),
        get(3, "k", Some("b"), 100, 110),
        get(3, "k", Some("a"), 200, 210),
    ];
    assert_eq!(assert_violation(&h, "k").len(), 4);
}

#[test]
fn read_of_value_never_written() {
    let h = [
        put(1, "k", "a", 0, 10),
        get(2, "k", Some("a"), 20, 30),
        get(2, "k", Some("zzz"), 40, 50),
    ];
    assert_eq!(assert_violation(&h, "k"), vec![h[2].clone()]);
}

#[test]
fn cas_succeeded_on_value_no_write_produced() {
    let h = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", Some("z"), "b", true, 20, 30),
    ];
    let shown = assert_violation(&h, "k");
    assert!(shown.contains(&h[1]));
    // Nor on an absent key once it has been written.
    let h = [
        put(1, "k", "a", 0, 10),
        cas(2, "k", None, "b", true, 20, 30),
    ];
    assert_violation(&h, "k");
}

#[test]
fn lost_update() {
    let h = [
        put(1, "k", "0", 0, 10),
        cas(2, "k", Some("0"), "1", true, 20, 100),
        cas(3, "k", Some("0"), "2", true, 30, 90),
    ];
    assert_eq!(assert_violation(&h, "k").len(), 3);
}

#[test]
fn violation_reported_on_the_bad_key() {
    let mut h = Vec::new();
    for i in 0..50u64 {
        h.push(put(1, "good", &i.to_string(), i * 100, i * 100 + 10));
        h.push(get(
            2,
            "good",
            Some(&i.to_string()),
            i * 100 + 20,
            i * 100 + 30,
        ));
    }
    h.push(put(1, "bad", "a", 0, 10));
    h.push(get(2, "bad", None, 20, 30));
    assert_violation(&h, "bad");
}

#[test]
fn explanation_shrinks_a_long_history() {
    let mut h = Vec::new();
    for i in 0..500u64 {
        let t = i * 100;
        h.push(put(i % 4, "k", &format!("v{i}"), t, t + 150));
        if i > 0 {
            h.push(get(4, "k", Some(&format!("v{}", i - 1)), t + 60, t + 70));
        }
    }
    // A stale read in the middle.
    h.push(get(5, "k", Some("v100"), 300_060, 300_070));
    // E.g. a read of v100, a later write and read of v498, the stale read.
    let shown = assert_violation(&h, "k");
    assert!(shown.len() <= 5, "{}", to_text(&shown));
}

#[test]
fn timeout() {
    let mut h = Vec::new();
    for i in 0..100u64 {
        h.push(put(1, "k", &i.to_string(), i * 10, i * 10 + 5));
    }
    assert_eq!(
        check(&h, Duration::ZERO),
        Verdict::Timeout { key: "k".into() }
    );
}

#[test]
#[should_panic(expected = "malformed history")]
fn malformed_history_panics() {
    let mut e = put(1, "k", "a", 0, 10);
    e.outcome = Outcome::Cas(true);
    check(&[e], BUDGET);
}

// ---------------------------------------------------------------------------
// Text format.

#[test]
fn text_round_trip() {
    let h = vec![
        put(1, "k", "a", 0, 10),
        get(2, "k", None, 5, 15),
        get(
            2,
            "k with \"quotes\" and \\",
            Some("line\nbreak\ttab\0nul\u{7}bell"),
            5,
            15,
        ),
        cas(3, "ключ", None, "新", true, 20, 30),
        cas(3, "", Some(""), "nil", false, 20, 30),
        unknown(put(u64::MAX, "k", "b", 40, 50)),
        unknown(get(4, "k", None, 40, 50)),
        unknown(cas(4, "k", Some("a"), "c", true, 60, 70)),
    ];
    let text = to_text(&h);
    assert_eq!(text.lines().count(), h.len());
    assert_eq!(from_text(&text).unwrap(), h);
    assert!(text.starts_with("1 0 10 put \"k\" \"a\" -> ok\n2 5 15 get \"k\" -> nil\n"));
    // Comments and blank lines are skipped.
    let commented = format!("# a comment\n\n{text}   \n");
    assert_eq!(from_text(&commented).unwrap(), h);
}

#[test]
fn text_parse_errors() {
    let cases = [
        ("1 0 10 put \"k\" \"a\" -> ok\nx 0 10 get \"k\" -> nil", 2),
        ("1 0 10 put \"k\" \"a\" -> true", 1),
        ("1 0 10 get \"k\" -> ok", 1),
        ("1 0 10 get k -> nil", 1),
        ("1 0 10 get \"k -> nil", 1),
        ("1 0 10 get \"k\" nil", 1),
        ("1 0 10 get \"k\" -> nil extra", 1),
        ("1 0 10 del \"k\" -> ok", 1),
        ("1 0 10 put \"k\" nil -> ok", 1),
        ("1 0 10 get \"\\q\" -> nil", 1),
        ("1 0 10 get \"k\"\"j\" -> nil", 1),
        ("\n\n1 20 10 get \"k\" -> nil", 3),
    ];
    for (text, line) in cases {
        let err = from_text(text).expect_err(text);
        assert_eq!(err.line, line, "{text}: {err}");
    }
    // An indeterminate event may "complete" before it was invoked.
    assert!(from_text("1 20 10 get \"k\" -> ?").is_ok());
}

// ---------------------------------------------------------------------------
// Property tests: sequential executions of a real model, made concurrent.

#[derive(Debug, Clone)]
struct Step {
    kind: u8,
    key: u8,
    choice: u8,
    widen_before: u64,
    widen_after: u64,
    fate: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (0..3u8, 0..3u8, any::<u8>(), 0..500u64, 0..500u64, 0..20u8).prop_map(
        |(kind, key, choice, widen_before, widen_after, fate)| Step {
            kind,
            key,
            choice,
            widen_before,
            widen_after,
            fate,
        },
    )
}

/// Runs the steps one at a time (step `i` takes effect at `100 i + 50`)
/// against a map, records what a client would have seen, then widens every
/// interval around its linearization point. Fates: 0 = the operation failed
/// indeterminately after taking effect, 1 = failed before taking effect.
fn execute(steps: &[Step]) -> Vec<Event> {
    execute_with(steps, None)
}

/// [`execute`], but with values drawn from `domain` letters when given
/// (so values repeat).
fn execute_with(steps: &[Step], domain: Option<u8>) -> Vec<Event> {
    let mut store: HashMap<String, String> = HashMap::new();
    let mut written: HashMap<String, Vec<String>> = HashMap::new();
    let mut history = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let key = format!("k{}", s.key);
        let value = match domain {
            None => format!("v{i}"),
            Some(d) => char::from(b'a' + s.choice % d).to_string(),
        };
        let current = store.get(&key).cloned();
        let op = match s.kind {
            0 => Op::Put {
                key: key.clone(),
                value: value.clone(),
            },
            1 => Op::Get { key: key.clone() },
            _ => {
                let options = written.get(&key).map_or(&[][..], |v| &v[..]);
                let pick = usize::from(s.choice / 8) % (options.len() + 1);
                Op::Cas {
                    key: key.clone(),
                    expected: options.get(pick).cloned(),
                    new: value.clone(),
                }
            }
        };
        let takes_effect = s.fate != 1;
        let outcome = match &op {
            Op::Put { .. } => {
                if takes_effect {
                    store.insert(key.clone(), value.clone());
                }
                Outcome::Put
            }
            Op::Get { .. } => Outcome::Get(current),
            Op::Cas { expected, .. } => {
                let ok = *expected == current;
                if ok && takes_effect {
                    store.insert(key.clone(), value.clone());
                }
                Outcome::Cas(ok)
            }
        };
        if matches!(op, Op::Put { .. } | Op::Cas { .. }) && takes_effect {
            written.entry(key).or_default().push(value);
        }
        let at = 100 * i as u64 + 50;
        history.push(Event {
            client: i as u64 % 4,
            op,
            outcome: if s.fate <= 1 {
                Outcome::Unknown
            } else {
                outcome
            },
            invoke_ns: (at + 1_000).saturating_sub(s.widen_before),
            complete_ns: at + 1_000 + s.widen_after,
        });
    }
    history
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_executions_are_linearizable(steps in prop::collection::vec(step(), 0..80)) {
        let history = execute(&steps);
        prop_assert!(validate(&history).is_ok());
        prop_assert_eq!(check(&history, BUDGET), Verdict::Linearizable, "{}", to_text(&history));
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(
        steps in prop::collection::vec(step(), 1..80),
        which in any::<prop::sample::Index>(),
    ) {
        let mut history = execute(&steps);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, Outcome::Get(_)))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[which.index(reads.len())];
        history[i].outcome = Outcome::Get(Some("never-written".into()));
        let key = history[i].op.key().to_string();
        let shown = assert_violation(&history, &key);
        prop_assert_eq!(shown, vec![history[i].clone()]);
    }

    #[test]
    fn text_round_trips(steps in prop::collection::vec(step(), 0..40), client in any::<u64>(), key in ".*", value in ".*") {
        let mut history = execute(&steps);
        history.push(put(client, &key, &value, 0, 1));
        history.push(cas(client, &value, Some(&key), &key, false, 0, 1));
        prop_assert_eq!(from_text(&to_text(&history)).unwrap(), history);
    }
}

// ---------------------------------------------------------------------------
// Performance sanity.

/// Simulates `clients` clients each issuing `ops` operations back to back
/// against a linearizable store of `keys` keys: every operation takes effect
/// at a random instant within its interval. A fraction `unknown` of them fail
/// indeterminately (and take effect or not).
fn simulate(seed: u64, clients: u64, ops: usize, keys: u64, unknown: f64) -> Vec<Event> {
    simulate_with(seed, clients, ops, keys, unknown, 200_000, 50_000)
}

/// [`simulate`] with operations taking up to `max_latency` ns and clients
/// pausing up to `max_pause` ns between them.
pub fn simulate_with(
    seed: u64,
    clients: u64,
    ops: usize,
    keys: u64,
    unknown: f64,
    max_latency: u64,
    max_pause: u64,
) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    struct Pending {
        at: u64,
        event: Event,
        takes_effect: bool,
        cas_succeeds: bool,
    }
    let mut pending = Vec::new();
    for client in 0..clients {
        let mut t = rng.random_range(0..1_000u64);
        for n in 0..ops {
            let invoke = t;
            let complete = invoke + rng.random_range(1_000..max_latency);
            let key = format!("key{}", rng.random_range(0..keys));
            let value = format!("c{client}-{n}");
            let op = match rng.random_range(0..10) {
                0..4 => Op::Put { key, value },
                4..8 => Op::Get { key },
                _ => Op::Cas {
                    key,
                    expected: None, // decided when it takes effect
                    new: value,
                },
            };
            pending.push(Pending {
                at: rng.random_range(invoke..=complete),
                event: Event {
                    client,
                    op,
                    outcome: Outcome::Unknown,
                    invoke_ns: invoke,
                    complete_ns: complete,
                },
                takes_effect: rng.random_bool(0.5),
                cas_succeeds: rng.random_bool(0.5),
            });
            t = complete + rng.random_range(0..=max_pause);
        }
    }
    pending.sort_by_key(|p| p.at);
    let mut store: HashMap<String, String> = HashMap::new();
    let mut history = Vec::new();
    for p in pending {
        let mut e = p.event;
        let failed = rng.random_bool(unknown);
        let applies = !failed || p.takes_effect;
        let key = e.op.key().to_string();
        let current = store.get(&key).cloned();
        e.outcome = match &mut e.op {
            Op::Put { value, .. } => {
                if applies {
                    store.insert(key, value.clone());
                }
                Outcome::Put
            }
            Op::Get { .. } => Outcome::Get(current),
            Op::Cas { expected, new, .. } => {
                *expected = if p.cas_succeeds {
                    current.clone()
                } else {
                    Some(format!("not-{}", current.as_deref().unwrap_or("absent")))
                };
                if applies && p.cas_succeeds {
                    store.insert(key, new.clone());
                }
                Outcome::Cas(p.cas_succeeds)
            }
        };
        if failed {
            e.outcome = Outcome::Unknown;
        }
        history.push(e);
    }
    history.sort_by_key(|e| e.invoke_ns);
    history
}

#[test]
fn five_clients_two_thousand_ops_five_keys() {
    let history = simulate(1, 5, 2_000, 5, 0.0);
    assert_eq!(history.len(), 10_000);
    let start = Instant::now();
    assert_eq!(
        check(&history, Duration::from_secs(60)),
        Verdict::Linearizable
    );
    eprintln!("10,000 ops on 5 keys checked in {:?}", start.elapsed());

    // The same with 1% indeterminate failures.
    let history = simulate(2, 5, 2_000, 5, 0.01);
    let start = Instant::now();
    assert_eq!(
        check(&history, Duration::from_secs(60)),
        Verdict::Linearizable
    );
    eprintln!(
        "10,000 ops on 5 keys, 1% indeterminate, checked in {:?}",
        start.elapsed()
    );
}

#[test]
fn violation_in_a_big_history() {
    let mut history = simulate(3, 5, 2_000, 5, 0.01);
    // Make one late read stale: it returns a value overwritten long before.
    let reads: Vec<usize> = (0..history.len())
        .filter(|&i| matches!(history[i].outcome, Outcome::Get(Some(_))))
        .collect();
    let (early, late) = (reads[100], reads[reads.len() - 100]);
    let key = history[late].op.key().to_string();
    let stale = (0..early)
        .rev()
        .find_map(|i| match (&history[i].op, &history[i].outcome) {
            (Op::Put { key: k, value }, Outcome::Put) if *k == key => Some(value.clone()),
            _ => None,
        })
        .unwrap();
    history[late].outcome = Outcome::Get(Some(stale));
    let start = Instant::now();
    let shown = assert_violation(&history, &key);
    eprintln!(
        "violation found and shrunk to {} events in {:?}",
        shown.len(),
        start.elapsed()
    );
    assert!(shown.len() <= 10, "{}", to_text(&shown));
}

// ---------------------------------------------------------------------------
// Agreement with an exhaustive search on small random histories (values
// repeat, outcomes are arbitrary, so most are not linearizable).

/// Tries every order of every subset of the indeterminate writes (an
/// indeterminate CAS whose comparison fails is a no-op).
fn brute_force(history: &[Event]) -> bool {
    let events: Vec<&Event> = history
        .iter()
        .filter(|e| !matches!((&e.op, &e.outcome), (Op::Get { .. }, Outcome::Unknown)))
        .collect();
    fn complete(e: &Event) -> u64 {
        if e.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            e.complete_ns
        }
    }
    type Failed = std::collections::HashSet<(Vec<bool>, Vec<(String, String)>)>;
    fn go(
        events: &[&Event],
        used: &mut Vec<bool>,
        state: &mut HashMap<String, String>,
        failed: &mut Failed,
    ) -> bool {
        let required_left =
            (0..events.len()).any(|i| !used[i] && events[i].outcome != Outcome::Unknown);
        if !required_left {
            return true;
        }
        let mut sorted: Vec<(String, String)> = state.clone().into_iter().collect();
        sorted.sort();
        let memo = (used.clone(), sorted);
        if failed.contains(&memo) {
            return false;
        }
        for i in 0..events.len() {
            if used[i] {
                continue;
            }
            // Every unused determinate event must not have completed before
            // this one was invoked.
            let blocked = (0..events.len()).any(|j| {
                !used[j]
                    && j != i
                    && events[j].outcome != Outcome::Unknown
                    && complete(events[j]) < events[i].invoke_ns
            });
            if blocked {
                continue;
            }
            let e = events[i];
            let key = e.op.key().to_string();
            let current = state.get(&key).cloned();
            let next = match (&e.op, &e.outcome) {
                (Op::Put { value, .. }, _) => Some(Some(value.clone())),
                (Op::Get { .. }, Outcome::Get(v)) => (*v == current).then_some(current.clone()),
                (Op::Cas { expected, new, .. }, Outcome::Cas(ok)) => {
                    let matches = *expected == current;
                    match (ok, matches) {
                        (true, true) => Some(Some(new.clone())),
                        (false, false) => Some(current.clone()),
                        _ => None,
                    }
                }
                (Op::Cas { expected, new, .. }, _) => Some(if *expected == current {
                    Some(new.clone())
                } else {
                    current.clone()
                }),
                _ => unreachable!(),
            };
            let Some(next) = next else { continue };
            used[i] = true;
            match &next {
                Some(v) => state.insert(key.clone(), v.clone()),
                None => state.remove(&key),
            };
            let ok = go(events, used, state, failed);
            match current {
                Some(v) => state.insert(key, v),
                None => state.remove(&key),
            };
            used[i] = false;
            if ok {
                return true;
            }
        }
        failed.insert(memo);
        false
    }
    go(
        &events,
        &mut vec![false; events.len()],
        &mut HashMap::new(),
        &mut Failed::new(),
    )
}

fn small_event(keys: u8, span: u64) -> impl Strategy<Value = Event> {
    // Some written values are never read or compared against.
    let seen = prop::option::of(prop::sample::select(vec!["a", "b", "c"]));
    let written = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    (
        0..keys,
        0..3u8,
        seen.clone(),
        written,
        seen,
        any::<bool>(),
        0..5u8,
        0..span,
        0..15u64,
    )
        .prop_map(|(key, kind, expected, new, seen, ok, fate, invoke, len)| {
            let key = if key == 0 { "x" } else { "y" };
            let e = match kind {
                0 => put(0, key, new, invoke, invoke + len),
                1 => get(0, key, seen, invoke, invoke + len),
                _ => cas(0, key, expected, new, ok, invoke, invoke + len),
            };
            if fate == 0 {
                unknown(e)
            } else {
                e
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn near_linearizable_agrees_with_brute_force(
        steps in prop::collection::vec(step(), 0..14),
        domain in 2..6u8,
        mutation in prop::option::of((any::<prop::sample::Index>(), small_event(1, 1))),
    ) {
        let mut history = execute_with(&steps, Some(domain));
        if let (Some((which, replacement)), false) = (mutation, history.is_empty()) {
            // Another outcome (the replacement's, if it fits the operation).
            let i = which.index(history.len());
            let e = &mut history[i];
            e.outcome = match (&e.op, replacement.outcome) {
                (Op::Get { .. }, o @ Outcome::Get(_)) | (Op::Cas { .. }, o @ Outcome::Cas(_)) => o,
                (_, Outcome::Unknown) => Outcome::Unknown,
                (Op::Cas { .. }, _) => Outcome::Cas(e.outcome != Outcome::Cas(true)),
                (Op::Get { .. }, _) => Outcome::Get(Some("a".into())),
                (Op::Put { .. }, _) => Outcome::Put,
            };
        }
        let expected = brute_force(&history);
        let verdict = check(&history, BUDGET);
        prop_assert_eq!(verdict == Verdict::Linearizable, expected, "{}", to_text(&history));
    }

    #[test]
    fn agrees_with_brute_force(
        history in prop_oneof![
            prop::collection::vec(small_event(2, 30), 0..9),
            prop::collection::vec(small_event(1, 60), 8..16),
        ]
    ) {
        let expected = brute_force(&history);
        match check(&history, BUDGET) {
            Verdict::Linearizable => prop_assert!(expected, "{}", to_text(&history)),
            Verdict::NotLinearizable { key, explanation } => {
                prop_assert!(!expected, "{}", to_text(&history));
                // The explanation is a non-linearizable sub-history.
                let shown = from_text(&explanation).unwrap();
                prop_assert!(shown.iter().all(|e| history.contains(e) && e.op.key() == key));
                prop_assert!(!brute_force(&shown), "{}\n{}", to_text(&history), explanation);
            }
            Verdict::Timeout { .. } => prop_assert!(false, "timeout"),
        }
    }
}
