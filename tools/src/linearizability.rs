//! Linearizability checker for key-value histories recorded against rivet
//! (or etcd) by a test client.
//!
//! # Model
//!
//! Every key is an independent register holding `Option<String>` (absent
//! until first written). Three operations:
//!
//! * `Put(key, value)`: sets the value.
//! * `Get(key) -> Option<value>`: reads it.
//! * `Cas(key, expected, new) -> bool`: an etcd txn comparing the value (or
//!   `create_revision == 0` when `expected` is `None`) and putting `new` on
//!   success.
//!
//! A history is a list of [`Event`]s: the operation, its outcome, and the
//! invoke and completion times (monotonic nanoseconds of the test process).
//! An operation that failed indeterminately (timeout, lost connection, killed
//! leader) has outcome [`Outcome::Unknown`]: a write may have taken effect at
//! any instant after its invocation, or never, so its completion time is
//! treated as +infinity and it may be dropped; a read that failed tells us
//! nothing and is ignored.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoisation, as in porcupine:
//!
//! * P-compositionality: a history is linearizable iff each key's
//!   sub-history is, so keys are checked one at a time (smallest first).
//! * The key's call and return entries are sorted by time into a doubly
//!   linked list. The search walks the list from the head: a call entry
//!   whose operation is legal in the current state is linearized (both its
//!   entries are lifted out of the list and pushed on a stack) and the walk
//!   restarts at the head; reaching a return entry means the operation that
//!   returns there cannot be placed, so the last choice is undone and the
//!   walk resumes just after it.
//! * Memoisation: every (set of linearized operations, register state)
//!   reached is remembered (a bitset with an incremental Zobrist hash);
//!   reaching it again is a dead end.
//! * Reads are forced moves: a read-only operation (a `Get`, or a `Cas` that
//!   failed) that is legal in the current state and callable now is
//!   linearized immediately without branching — any linearization that
//!   places it later stays valid with it moved here, as it changes no state.
//!   When such a forced step is undone, the state before it is dead too.
//! * Indeterminate writes only ever linearize when they change the state
//!   (a no-op can always be "never"), are never required (the search
//!   succeeds once every determinate operation is placed), and are dropped
//!   up front when nothing could observe them: no `Get` returns their value,
//!   no `Cas` expects it, and no failed `Cas` might linearize after them.
//!   Values that no operation reads or compares against are merged into one
//!   "unseen" value. An indeterminate write is tried only while some unlinearized operation
//!   needs its value, or right before a failed CAS that it lets fail.
//!   Indeterminate writes of the unseen value are interchangeable, so only
//!   the earliest-invoked unused one is tried.
//!
//! When a key is not linearizable the explanation is shrunk to a small set
//! of conflicting events: first the shortest failing prefix (by invoke time)
//! is found by bisection, then delta debugging relaxes whatever events it
//! can — a relaxed read is removed, a relaxed write becomes indeterminate
//! (so shrinking never fabricates "read a value nobody wrote") — and
//! finally the writes that no remaining event could observe are dropped. The
//! result is printed in the [text format](to_text), so it can be replayed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Unconditional write.
    Put { key: String, value: String },
    /// Read.
    Get { key: String },
    /// Compare-and-set: put `new` iff the value is `expected` (`None`: the
    /// key is absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

impl Op {
    /// The key the operation is on.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Cas { key, .. } => key,
        }
    }
}

/// What the client saw when the operation completed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The put succeeded.
    Put,
    /// The get returned this value (`None`: key absent).
    Get(Option<String>),
    /// Whether the compare succeeded (and the put happened).
    Cas(bool),
    /// Indeterminate failure: the operation may or may not have taken
    /// effect, at any point after it was invoked.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// The client (process, connection) that issued the operation.
    pub client: u64,
    pub op: Op,
    pub outcome: Outcome,
    /// When the operation was invoked (monotonic ns).
    pub invoke_ns: u64,
    /// When the response arrived (monotonic ns); ignored for
    /// [`Outcome::Unknown`], which completes at +infinity.
    pub complete_ns: u64,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// `key`'s sub-history has none. `explanation` lists a small set of the
    /// key's events that already admit no linearization, as a comment line
    /// followed by the events in the text format (so
    /// `from_text(&explanation)` replays it).
    NotLinearizable { key: String, explanation: String },
    /// The search on `key` ran out of budget before reaching a verdict.
    Timeout { key: String },
}

/// Checks that every event's outcome matches its operation and that
/// determinate events do not complete before they are invoked.
pub fn validate(history: &[Event]) -> Result<(), String> {
    for (i, e) in history.iter().enumerate() {
        let ok = matches!(
            (&e.op, &e.outcome),
            (_, Outcome::Unknown)
                | (Op::Put { .. }, Outcome::Put)
                | (Op::Get { .. }, Outcome::Get(_))
                | (Op::Cas { .. }, Outcome::Cas(_))
        );
        if !ok {
            return Err(format!(
                "event {i}: outcome {:?} does not match operation {:?}",
                e.outcome, e.op
            ));
        }
        if e.outcome != Outcome::Unknown && e.complete_ns < e.invoke_ns {
            return Err(format!("event {i}: completes before it is invoked: {e}"));
        }
    }
    Ok(())
}

/// Decides whether `history` is linearizable with respect to the key-value
/// register model (see the [module docs](self)).
///
/// The search is bounded by `budget` overall; when a key is found not to be
/// linearizable, shrinking its explanation gets at most another `budget`
/// (stopping early just leaves the explanation larger).
///
/// # Panics
///
/// If the history is malformed (see [`validate`]).
pub fn check(history: &[Event], budget: Duration) -> Verdict {
    if let Err(e) = validate(history) {
        panic!("malformed history: {e}");
    }
    let deadline = Instant::now() + budget;
    let mut by_key: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in history {
        if matches!((&e.op, &e.outcome), (Op::Get { .. }, Outcome::Unknown)) {
            continue; // a failed read constrains nothing
        }
        by_key.entry(e.op.key()).or_default().push(e);
    }
    let mut keys: Vec<(&str, Vec<&Event>)> = by_key.into_iter().collect();
    keys.sort_by(|a, b| a.1.len().cmp(&b.1.len()).then(a.0.cmp(b.0)));
    for (key, events) in keys {
        let plain: Vec<(&Event, bool)> = events.iter().map(|&e| (e, false)).collect();
        let started = Instant::now();
        match search(&prune(compile(&plain)), deadline) {
            Search::Linearizable => {}
            Search::Timeout => {
                return Verdict::Timeout {
                    key: key.to_string(),
                }
            }
            Search::NotLinearizable => {
                return Verdict::NotLinearizable {
                    key: key.to_string(),
                    explanation: explain(key, &events, started.elapsed(), budget),
                }
            }
        }
    }
    Verdict::Linearizable
}

// ---------------------------------------------------------------------------
// Per-key compiled form.

/// A register state or value: [`ABSENT`], [`UNSEEN`], or one of the key's
/// interned values.
type Val = u32;
/// The key does not exist.
const ABSENT: Val = 0;
/// Any value that no operation reads or compares against.
const UNSEEN: Val = 1;
const FIRST_SEEN: Val = 2;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Write(Val),
    Read(Val),
    CasOk(Val, Val),
    CasFail(Val),
    /// Indeterminate put.
    MaybeWrite(Val),
    /// Indeterminate compare-and-set.
    MaybeCas(Val, Val),
}

#[derive(Clone, Copy, Debug)]
struct COp {
    kind: Kind,
    invoke: u64,
    /// `u64::MAX` for indeterminate operations (they have no return entry).
    complete: u64,
    /// Index into the slice given to `compile`.
    event: usize,
}

impl COp {
    fn determinate(&self) -> bool {
        !matches!(self.kind, Kind::MaybeWrite(_) | Kind::MaybeCas(..))
    }

    /// The value the register must hold for the operation to linearize.
    fn needs(&self) -> Option<Val> {
        match self.kind {
            Kind::Read(v) | Kind::CasOk(v, _) | Kind::MaybeCas(v, _) => Some(v),
            _ => None,
        }
    }

    fn max_val(&self) -> Val {
        match self.kind {
            Kind::Write(v) | Kind::Read(v) | Kind::CasFail(v) | Kind::MaybeWrite(v) => v,
            Kind::CasOk(a, b) | Kind::MaybeCas(a, b) => a.max(b),
        }
    }

    fn read_only(&self) -> bool {
        matches!(self.kind, Kind::Read(_) | Kind::CasFail(_))
    }

    /// The state after applying the operation to `state`, or `None` if it
    /// cannot linearize there (or, for indeterminate operations, would be a
    /// no-op, which is never needed).
    #[inline]
    fn step(&self, state: Val) -> Option<Val> {
        match self.kind {
            Kind::Write(v) => Some(v),
            Kind::Read(v) => (state == v).then_some(state),
            Kind::CasOk(e, n) => (state == e).then_some(n),
            Kind::CasFail(e) => (state != e).then_some(state),
            Kind::MaybeWrite(v) => (state != v).then_some(v),
            Kind::MaybeCas(e, n) => (state == e && n != e).then_some(n),
        }
    }
}

/// Compiles one key's events; `true` alongside an event relaxes it (a read
/// is dropped, a write becomes indeterminate). Indeterminate reads are
/// dropped. Values no operation reads or compares against are all mapped to
/// [`UNSEEN`]: they are indistinguishable to the model.
fn compile<'a>(events: &[(&'a Event, bool)]) -> Vec<COp> {
    let kept = |&(e, relax): &(&'a Event, bool)| {
        let unknown = relax || e.outcome == Outcome::Unknown;
        let read_only = matches!(
            (&e.op, &e.outcome),
            (Op::Get { .. }, _) | (Op::Cas { .. }, Outcome::Cas(false))
        );
        (!(unknown && read_only)).then_some((e, unknown))
    };
    // The values operations compare against.
    let mut interned: HashMap<&'a str, Val> = HashMap::new();
    for (e, _) in events.iter().filter_map(kept) {
        let seen = match (&e.op, &e.outcome) {
            (Op::Get { .. }, Outcome::Get(Some(v))) => v,
            (
                Op::Cas {
                    expected: Some(v), ..
                },
                _,
            ) => v,
            _ => continue,
        };
        let next = interned.len() as Val + FIRST_SEEN;
        interned.entry(seen).or_insert(next);
    }
    let val = |s: Option<&str>| -> Val {
        s.map_or(ABSENT, |s| interned.get(s).copied().unwrap_or(UNSEEN))
    };
    let mut ops = Vec::with_capacity(events.len());
    for (i, pair) in events.iter().enumerate() {
        let Some((e, unknown)) = kept(pair) else {
            continue;
        };
        let kind = match (&e.op, &e.outcome) {
            (Op::Get { .. }, Outcome::Get(v)) => Kind::Read(val(v.as_deref())),
            (Op::Put { value, .. }, _) if unknown => Kind::MaybeWrite(val(Some(value))),
            (Op::Put { value, .. }, _) => Kind::Write(val(Some(value))),
            (Op::Cas { expected, new, .. }, outcome) => {
                let ev = val(expected.as_deref());
                match outcome {
                    _ if unknown => Kind::MaybeCas(ev, val(Some(new))),
                    Outcome::Cas(true) => Kind::CasOk(ev, val(Some(new))),
                    _ => Kind::CasFail(ev),
                }
            }
            (Op::Get { .. }, _) => unreachable!("validated"),
        };
        ops.push(COp {
            kind,
            invoke: e.invoke_ns,
            complete: if unknown { u64::MAX } else { e.complete_ns },
            event: i,
        });
    }
    ops
}

/// Drops indeterminate writes that can make no difference, so that they
/// can always be taken never to have happened: a CAS expecting a value the
/// register never holds, and writes whose value no (kept) operation needs
/// when no failed CAS that the write could help might linearize after it.
fn prune(mut ops: Vec<COp>) -> Vec<COp> {
    loop {
        let mut writable = HashSet::from([ABSENT]);
        let mut observed = HashSet::new();
        for o in &ops {
            match o.kind {
                Kind::Write(v) | Kind::MaybeWrite(v) => {
                    writable.insert(v);
                }
                Kind::CasOk(e, v) | Kind::MaybeCas(e, v) => {
                    writable.insert(v);
                    observed.insert(e);
                }
                Kind::Read(v) => {
                    observed.insert(v);
                }
                Kind::CasFail(_) => {}
            }
        }
        // Failed CASes that could need a write to fail: the register may
        // hold the value they expect.
        let last_cas_fail = ops
            .iter()
            .filter(|o| matches!(o.kind, Kind::CasFail(e) if writable.contains(&e)))
            .map(|o| o.complete)
            .max();
        let before = ops.len();
        ops.retain(|o| match o.kind {
            Kind::MaybeCas(e, _) if !writable.contains(&e) => false,
            Kind::MaybeWrite(v) | Kind::MaybeCas(_, v) => {
                observed.contains(&v) || last_cas_fail.is_some_and(|t| t >= o.invoke)
            }
            _ => true,
        });
        if ops.len() == before {
            return ops;
        }
    }
}

// ---------------------------------------------------------------------------
// The search.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Linearizable,
    NotLinearizable,
    Timeout,
}

/// The search gives up (as on a timeout) after visiting this many states.
const MAX_STATES: usize = 1 << 24;

/// Hash keys are already well mixed.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix128(z: u64) -> u128 {
    (u128::from(mix(z.wrapping_mul(2))) << 64) | u128::from(mix(z.wrapping_mul(2) + 1))
}

const HEAD: u32 = 0;
const TAIL: u32 = 1;
const NONE: u32 = u32::MAX;

/// The entry list: sentinels `HEAD` and `TAIL`, then one node per entry.
struct List {
    next: Vec<u32>,
    prev: Vec<u32>,
    /// The operation of each node (`NONE` for sentinels).
    op: Vec<u32>,
    is_call: Vec<bool>,
    call: Vec<u32>,
    ret: Vec<u32>,
}

impl List {
    fn new(ops: &[COp]) -> List {
        let mut entries: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            // Calls sort before returns at equal times: touching intervals
            // count as concurrent.
            entries.push((o.invoke, false, i as u32));
            if o.determinate() {
                entries.push((o.complete, true, i as u32));
            }
        }
        entries.sort_unstable();
        let nodes = entries.len() + 2;
        let mut l = List {
            next: vec![TAIL; nodes],
            prev: vec![HEAD; nodes],
            op: vec![NONE; nodes],
            is_call: vec![false; nodes],
            call: vec![NONE; ops.len()],
            ret: vec![NONE; ops.len()],
        };
        let mut last = HEAD;
        for (j, &(_, is_ret, i)) in entries.iter().enumerate() {
            let id = j as u32 + 2;
            l.op[id as usize] = i;
            l.is_call[id as usize] = !is_ret;
            if is_ret {
                l.ret[i as usize] = id;
            } else {
                l.call[i as usize] = id;
            }
            l.next[last as usize] = id;
            l.prev[id as usize] = last;
            last = id;
        }
        l.next[last as usize] = TAIL;
        l.prev[TAIL as usize] = last;
        l
    }

    #[inline]
    fn unlink(&mut self, x: u32) {
        let (p, n) = (self.prev[x as usize], self.next[x as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
    }

    #[inline]
    fn relink(&mut self, x: u32) {
        let (p, n) = (self.prev[x as usize], self.next[x as usize]);
        self.next[p as usize] = x;
        self.prev[n as usize] = x;
    }

    fn lift(&mut self, op: u32) {
        self.unlink(self.call[op as usize]);
        let r = self.ret[op as usize];
        if r != NONE {
            self.unlink(r);
        }
    }

    /// Undoes `lift`; lifts must be undone in reverse order.
    fn unlift(&mut self, op: u32) {
        let r = self.ret[op as usize];
        if r != NONE {
            self.relink(r);
        }
        self.relink(self.call[op as usize]);
    }

    /// The operations that may linearize next: those called before the
    /// first pending return.
    fn callable(&self) -> impl Iterator<Item = u32> + '_ {
        let mut node = self.next[HEAD as usize];
        std::iter::from_fn(move || {
            if !self.is_call[node as usize] {
                return None;
            }
            let op = self.op[node as usize];
            node = self.next[node as usize];
            Some(op)
        })
    }
}

struct Frame {
    op: u32,
    before: Val,
    /// Taken without alternatives: undoing it fails the state before it.
    forced: bool,
}

struct Searcher<'a> {
    ops: &'a [COp],
    list: List,
    /// 128-bit Zobrist keys of the operations; the linearized set is
    /// represented by the XOR of its members' keys only (a collision would
    /// need ~2^64 states).
    zobrist: Vec<u128>,
    set_hash: u128,
    state: Val,
    visited: HashSet<u128, BuildHasherDefault<PassThrough>>,
    stack: Vec<Frame>,
    /// Determinate operations not linearized yet.
    remaining: usize,
    /// Indeterminate puts of the unseen value, by invoke order (else NONE),
    /// and how many of them are linearized: they are interchangeable, so
    /// only the next one in that order is ever a candidate.
    unseen_rank: Vec<u32>,
    unseen_used: u32,
    /// Per value, unlinearized operations needing the register to hold it.
    observers_left: Vec<u32>,
    /// Per value, unlinearized failed CASes expecting it.
    cas_fail_left: Vec<u32>,
}

impl<'a> Searcher<'a> {
    fn new(ops: &'a [COp]) -> Searcher<'a> {
        let mut unseen: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i].kind, Kind::MaybeWrite(UNSEEN)))
            .collect();
        unseen.sort_by_key(|&i| (ops[i].invoke, i));
        let mut unseen_rank = vec![NONE; ops.len()];
        for (rank, &i) in unseen.iter().enumerate() {
            unseen_rank[i] = rank as u32;
        }
        let vals = ops.iter().map(COp::max_val).max().unwrap_or(0) as usize + 1;
        let mut observers_left = vec![0u32; vals];
        let mut cas_fail_left = vec![0u32; vals];
        for o in ops {
            if let Some(v) = o.needs() {
                observers_left[v as usize] += 1;
            }
            if let Kind::CasFail(v) = o.kind {
                cas_fail_left[v as usize] += 1;
            }
        }
        Searcher {
            ops,
            list: List::new(ops),
            zobrist: (0..ops.len() as u64).map(mix128).collect(),
            set_hash: 0,
            state: ABSENT,
            visited: HashSet::default(),
            stack: Vec::new(),
            remaining: ops.iter().filter(|o| o.determinate()).count(),
            unseen_rank,
            unseen_used: 0,
            observers_left,
            cas_fail_left,
        }
    }

    /// A value no unlinearized operation can tell from the unseen one.
    fn dead(&self, v: Val) -> bool {
        v == UNSEEN || (self.observers_left[v as usize] == 0 && self.cas_fail_left[v as usize] == 0)
    }

    fn fingerprint(set_hash: u128, state: Val) -> u128 {
        set_hash ^ mix128(u64::from(state) | 1 << 40)
    }

    fn count(&mut self, op: u32, delta: i32) {
        let o = &self.ops[op as usize];
        if let Some(v) = o.needs() {
            self.observers_left[v as usize] =
                self.observers_left[v as usize].wrapping_add_signed(delta);
        }
        if let Kind::CasFail(v) = o.kind {
            self.cas_fail_left[v as usize] =
                self.cas_fail_left[v as usize].wrapping_add_signed(delta);
        }
    }

    /// Linearizes `op`, reaching `after`; false (and no change) if that
    /// state was visited before.
    fn push(&mut self, op: u32, after: Val, forced: bool) -> bool {
        let set_hash = self.set_hash ^ self.zobrist[op as usize];
        self.count(op, -1);
        let after = if self.dead(after) { UNSEEN } else { after };
        if !self.visited.insert(Self::fingerprint(set_hash, after)) {
            self.count(op, 1);
            return false;
        }
        self.stack.push(Frame {
            op,
            before: self.state,
            forced,
        });
        self.list.lift(op);
        self.set_hash = set_hash;
        self.state = after;
        if self.ops[op as usize].determinate() {
            self.remaining -= 1;
        }
        if self.unseen_rank[op as usize] != NONE {
            self.unseen_used += 1;
        }
        true
    }

    fn pop(&mut self) -> Option<Frame> {
        let f = self.stack.pop()?;
        self.list.unlift(f.op);
        self.count(f.op, 1);
        self.set_hash ^= self.zobrist[f.op as usize];
        self.state = f.before;
        if self.ops[f.op as usize].determinate() {
            self.remaining += 1;
        }
        if self.unseen_rank[f.op as usize] != NONE {
            self.unseen_used -= 1;
        }
        Some(f)
    }

    /// Whether a callable failed CAS expects the current state.
    fn cas_fail_waiting(&self) -> bool {
        self.list
            .callable()
            .any(|j| matches!(self.ops[j as usize].kind, Kind::CasFail(e) if e == self.state))
    }

    /// Whether `op` (callable) is worth trying in the current state.
    fn candidate(&self, op: u32) -> bool {
        let o = &self.ops[op as usize];
        match o.kind {
            Kind::MaybeWrite(v) | Kind::MaybeCas(_, v) => {
                let rank = self.unseen_rank[op as usize];
                (rank == NONE || rank == self.unseen_used)
                    && (self.observers_left[v as usize] > 0 || self.cas_fail_waiting())
            }
            // Puts of dead values are interchangeable but for their
            // deadlines: take the earliest due.
            Kind::Write(v) if self.dead(v) => !self.list.callable().any(|j| {
                let other = &self.ops[j as usize];
                matches!(other.kind, Kind::Write(w) if self.dead(w))
                    && (other.complete, j) < (o.complete, op)
            }),
            _ => true,
        }
    }

    /// Takes a callable read-only operation legal in the current state, if
    /// any, as a forced move. `Some(false)` if that move leads to a visited
    /// (so failed) state, which fails the current one too.
    fn force_read(&mut self) -> Option<bool> {
        let op = self.list.callable().find(|&j| {
            let o = &self.ops[j as usize];
            o.read_only() && o.step(self.state).is_some()
        })?;
        Some(self.push(op, self.state, true))
    }

    fn run(&mut self, deadline: Instant) -> Search {
        if self.remaining == 0 {
            return Search::Linearizable;
        }
        self.visited
            .insert(Self::fingerprint(self.set_hash, self.state));
        let mut cur = TAIL;
        let mut fresh = true;
        let mut iterations = 0u64;
        loop {
            if iterations.is_multiple_of(1024)
                && (Instant::now() >= deadline || self.visited.len() > MAX_STATES)
            {
                return Search::Timeout;
            }
            iterations += 1;

            if fresh {
                // A new state.
                fresh = false;
                match self.force_read() {
                    Some(true) => {
                        if self.remaining == 0 {
                            return Search::Linearizable;
                        }
                        fresh = true;
                        continue;
                    }
                    Some(false) => cur = TAIL,
                    None => cur = self.list.next[HEAD as usize],
                }
            }

            if !self.list.is_call[cur as usize] {
                // A return entry (or the end): the operation returning here
                // cannot be placed. Undo the last choice (and the forced
                // moves stacked on it) and try the next candidate after it.
                loop {
                    let Some(f) = self.pop() else {
                        return Search::NotLinearizable;
                    };
                    if !f.forced {
                        cur = self.list.next[self.list.call[f.op as usize] as usize];
                        break;
                    }
                }
                continue;
            }

            let op = self.list.op[cur as usize];
            if self.candidate(op) {
                if let Some(after) = self.ops[op as usize].step(self.state) {
                    if self.push(op, after, false) {
                        if self.remaining == 0 {
                            return Search::Linearizable;
                        }
                        fresh = true;
                        continue;
                    }
                }
            }
            cur = self.list.next[cur as usize];
        }
    }
}

fn search(ops: &[COp], deadline: Instant) -> Search {
    Searcher::new(ops).run(deadline)
}

// ---------------------------------------------------------------------------
// Explanations.

fn is_write(e: &Event) -> bool {
    matches!(
        (&e.op, &e.outcome),
        (Op::Put { .. }, _) | (Op::Cas { .. }, Outcome::Cas(true) | Outcome::Unknown)
    )
}

/// Shrinks a key's non-linearizable sub-history (which took `took` to
/// search) to a small conflicting set of its events, within `budget`, and
/// renders it.
fn explain(key: &str, events: &[&Event], took: Duration, budget: Duration) -> String {
    let deadline = Instant::now() + budget;
    // Relaxing events can make the search much harder (many concurrent
    // indeterminate writes); give up on such candidates rather than spend
    // the whole budget on one.
    let probe_limit = took * 10 + Duration::from_millis(20);
    let mut events: Vec<&Event> = events.to_vec();
    events.sort_by_key(|e| e.invoke_ns);
    let n = events.len();
    // Only determinate events can be relaxed; indeterminate writes stay as
    // they are and are dropped at the end if nothing observes them.
    let relaxable: Vec<bool> = events
        .iter()
        .map(|e| e.outcome != Outcome::Unknown)
        .collect();
    let build = |strict: &[bool]| -> Vec<(&Event, bool)> {
        events
            .iter()
            .zip(strict)
            .zip(&relaxable)
            .map(|((&e, &s), &r)| (e, r && !s))
            .collect()
    };
    let fails = |strict: &[bool]| {
        let ops = prune(compile(&build(strict)));
        search(&ops, deadline.min(Instant::now() + probe_limit)) == Search::NotLinearizable
    };

    // The shortest failing prefix: keeping more events strict only adds
    // constraints, so failure is monotone in the prefix length.
    let prefix = |k: usize| -> Vec<bool> { (0..n).map(|j| j < k).collect() };
    let (mut lo, mut hi) = (0, n);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fails(&prefix(mid)) {
            hi = mid;
        } else {
            lo = mid;
        }
    }

    // Delta debugging (complements only) over the strict events.
    let mut kept: Vec<usize> = (0..hi).filter(|&j| relaxable[j]).collect();
    let strict_of = |kept: &[usize]| -> Vec<bool> {
        let mut s = vec![false; n];
        for &j in kept {
            s[j] = true;
        }
        s
    };
    let mut granularity = 2usize;
    while !kept.is_empty() && Instant::now() < deadline {
        granularity = granularity.min(kept.len());
        let chunk = kept.len().div_ceil(granularity);
        let mut reduced = false;
        for start in (0..kept.len()).step_by(chunk) {
            let candidate: Vec<usize> = kept[..start]
                .iter()
                .chain(&kept[(start + chunk).min(kept.len())..])
                .copied()
                .collect();
            if fails(&strict_of(&candidate)) {
                kept = candidate;
                granularity = granularity.saturating_sub(1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if granularity >= kept.len() {
                break;
            }
            granularity = (granularity * 2).min(kept.len());
        }
    }
    let shrunk = Instant::now() < deadline;

    // Show the strict events plus the writes something still observes,
    // with their original outcomes (only more constrained, so still
    // failing). Fall back to every write should that not hold.
    let strict = strict_of(&kept);
    let relevant: Vec<usize> = prune(compile(&build(&strict)))
        .iter()
        .map(|o| o.event)
        .collect();
    let confirm = |shown: &[usize]| {
        let sub: Vec<(&Event, bool)> = shown.iter().map(|&j| (events[j], false)).collect();
        search(&prune(compile(&sub)), deadline) == Search::NotLinearizable
    };
    let mut shown = relevant;
    if !confirm(&shown) {
        shown = (0..n)
            .filter(|&j| strict[j] || is_write(events[j]))
            .collect();
    }

    let mut out = format!(
        "# key {}: these {} of its {} events admit no linearization{}\n",
        quote(key),
        shown.len(),
        n,
        if shrunk {
            ""
        } else {
            " (shrinking ran out of time)"
        }
    );
    for &j in &shown {
        out.push_str(&events[j].to_string());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// Text format.

/// Renders a history, one event per line:
///
/// ```text
/// <client> <invoke_ns> <complete_ns> put <key> <value> -> ok|?
/// <client> <invoke_ns> <complete_ns> get <key> -> <value>|nil|?
/// <client> <invoke_ns> <complete_ns> cas <key> <expected>|nil <new> -> true|false|?
/// ```
///
/// Keys and values are double-quoted with Rust-style escapes (`\"`, `\\`,
/// `\n`, `\r`, `\t`, `\0`, `\u{..}`); `nil` is an absent value and `?` an
/// indeterminate outcome. [`from_text`] also skips blank lines and `#`
/// comments.
pub fn to_text(history: &[Event]) -> String {
    let mut out = String::new();
    for e in history {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    out
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ",
            self.client, self.invoke_ns, self.complete_ns
        )?;
        let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "nil".to_string(), quote);
        match &self.op {
            Op::Put { key, value } => write!(f, "put {} {}", quote(key), quote(value))?,
            Op::Get { key } => write!(f, "get {}", quote(key))?,
            Op::Cas { key, expected, new } => {
                write!(f, "cas {} {} {}", quote(key), opt(expected), quote(new))?
            }
        }
        match &self.outcome {
            Outcome::Put => write!(f, " -> ok"),
            Outcome::Get(v) => write!(f, " -> {}", opt(v)),
            Outcome::Cas(b) => write!(f, " -> {b}"),
            Outcome::Unknown => write!(f, " -> ?"),
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A line of a history text that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses the format written by [`to_text`]. The result passes
/// [`validate`].
pub fn from_text(text: &str) -> Result<Vec<Event>, ParseError> {
    let mut history = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let event = parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?;
        validate(std::slice::from_ref(&event)).map_err(|message| ParseError {
            line: i + 1,
            message: message.trim_start_matches("event 0: ").to_string(),
        })?;
        history.push(event);
    }
    Ok(history)
}

#[derive(Debug)]
enum Token<'a> {
    Word(&'a str),
    Str(String),
}

fn tokenize(line: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start();
        let Some(first) = rest.chars().next() else {
            return Ok(tokens);
        };
        if first != '"' {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            tokens.push(Token::Word(&rest[..end]));
            rest = &rest[end..];
            continue;
        }
        let mut s = String::new();
        let mut chars = rest[1..].char_indices();
        let end = loop {
            let Some((j, c)) = chars.next() else {
                return Err("unterminated string".into());
            };
            match c {
                '"' => break j + 2,
                '\\' => {
                    let esc = chars.next().map(|(_, c)| c);
                    s.push(match esc {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        Some('0') => '\0',
                        Some('u') => {
                            if chars.next().map(|(_, c)| c) != Some('{') {
                                return Err("expected { after \\u".into());
                            }
                            let mut hex = String::new();
                            loop {
                                match chars.next() {
                                    Some((_, '}')) => break,
                                    Some((_, c)) if hex.len() < 6 => hex.push(c),
                                    _ => return Err("bad \\u{..} escape".into()),
                                }
                            }
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| format!("bad \\u{{{hex}}} escape"))?
                        }
                        other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
                    });
                }
                c => s.push(c),
            }
        };
        tokens.push(Token::Str(s));
        rest = &rest[end..];
        if rest.starts_with(|c: char| !c.is_whitespace()) {
            return Err("expected whitespace after a string".into());
        }
    }
}

fn parse_line(line: &str) -> Result<Event, String> {
    let tokens = tokenize(line)?;
    let mut it = tokens.into_iter();
    let mut word = |what: &str| -> Result<String, String> {
        match it.next() {
            Some(Token::Word(w)) => Ok(w.to_string()),
            Some(Token::Str(s)) => Err(format!("expected {what}, found string {}", quote(&s))),
            None => Err(format!("expected {what}, found end of line")),
        }
    };
    let number = |w: String, what: &str| -> Result<u64, String> {
        w.parse()
            .map_err(|_| format!("expected {what} (an integer), found {w:?}"))
    };
    let client = number(word("client")?, "client")?;
    let invoke_ns = number(word("invoke_ns")?, "invoke_ns")?;
    let complete_ns = number(word("complete_ns")?, "complete_ns")?;
    let verb = word("put, get or cas")?;
    let mut string = |what: &str, nil_ok: bool| -> Result<Option<String>, String> {
        match it.next() {
            Some(Token::Str(s)) => Ok(Some(s)),
            Some(Token::Word("nil")) if nil_ok => Ok(None),
            Some(Token::Word(w)) => Err(format!("expected {what}, found {w:?}")),
            None => Err(format!("expected {what}, found end of line")),
        }
    };
    let quoted = "a quoted string";
    let op = match verb.as_str() {
        "put" => Op::Put {
            key: string(quoted, false)?.unwrap_or_default(),
            value: string(quoted, false)?.unwrap_or_default(),
        },
        "get" => Op::Get {
            key: string(quoted, false)?.unwrap_or_default(),
        },
        "cas" => Op::Cas {
            key: string(quoted, false)?.unwrap_or_default(),
            expected: string("a quoted string or nil", true)?,
            new: string(quoted, false)?.unwrap_or_default(),
        },
        other => return Err(format!("expected put, get or cas, found {other:?}")),
    };
    match it.next() {
        Some(Token::Word("->")) => {}
        other => return Err(format!("expected ->, found {other:?}")),
    }
    let outcome = match (&op, it.next()) {
        (_, Some(Token::Word("?"))) => Outcome::Unknown,
        (Op::Put { .. }, Some(Token::Word("ok"))) => Outcome::Put,
        (Op::Get { .. }, Some(Token::Word("nil"))) => Outcome::Get(None),
        (Op::Get { .. }, Some(Token::Str(s))) => Outcome::Get(Some(s)),
        (Op::Cas { .. }, Some(Token::Word("true"))) => Outcome::Cas(true),
        (Op::Cas { .. }, Some(Token::Word("false"))) => Outcome::Cas(false),
        (_, other) => return Err(format!("bad outcome for {verb}: {other:?}")),
    };
    if let Some(extra) = it.next() {
        return Err(format!("trailing {extra:?}"));
    }
    Ok(Event {
        client,
        op,
        outcome,
        invoke_ns,
        complete_ns,
    })
}
