//! The test-only network fault switch of a member (`RIVET_TEST_FAULTS=1`, set over HTTP
//! by `/rivet/test/faults`): beyond cutting a member off ([`RaftCore::isolate_for_tests`]),
//! its raft messages can be dropped, delayed (and so reordered) and duplicated on the way
//! out, and it can be deaf to chosen peers while they still hear it (an asymmetric
//! partition). Proposals forwarded to the leader are never duplicated: raft, like etcd,
//! relies on the transport delivering a proposal at most once (a duplicate would apply
//! twice).
//!
//! Off (the default), it costs one branch per message.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use raft::prelude::{Message as RaftMessage, MessageType};

/// What the switch is set to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TestFaults {
    /// The share of outgoing messages dropped (0 to 1).
    pub drop: f64,
    /// Each outgoing message waits a random time up to this long (released on the next
    /// tick after it: delays are as coarse as the heartbeat interval).
    pub delay: Duration,
    /// The share of outgoing messages (but proposals) sent twice.
    pub duplicate: f64,
    /// Peers whose messages this member ignores; they still receive its messages.
    pub deaf_to: BTreeSet<u64>,
}

impl TestFaults {
    pub fn is_off(&self) -> bool {
        *self == TestFaults::default()
    }
}

/// What to do with one outgoing message.
pub enum Fate {
    Send,
    Drop,
    /// Send now and once more.
    Duplicate,
    /// Hold until then.
    Delay(Instant),
}

/// The switch and its own random numbers (xorshift, seeded per start).
pub struct Faults {
    pub set: TestFaults,
    state: u64,
    /// Held messages, by release time.
    pub delayed: Vec<(Instant, u64, RaftMessage)>,
}

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults {
            set: TestFaults::default(),
            state: seed | 1,
            delayed: Vec::new(),
        }
    }

    fn next(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fate(&mut self, message: &RaftMessage, now: Instant) -> Fate {
        if self.set.is_off() {
            return Fate::Send;
        }
        if self.set.drop > 0.0 && self.next() < self.set.drop {
            return Fate::Drop;
        }
        if !self.set.delay.is_zero() {
            let wait = self.set.delay.mul_f64(self.next());
            return Fate::Delay(now + wait);
        }
        if self.set.duplicate > 0.0
            && message.get_msg_type() != MessageType::MsgPropose
            && self.next() < self.set.duplicate
        {
            return Fate::Duplicate;
        }
        Fate::Send
    }

    /// Whether a message from `from` is heard.
    pub fn hears(&self, from: u64) -> bool {
        !self.set.deaf_to.contains(&from)
    }

    /// The held messages whose time came.
    pub fn due(&mut self, now: Instant) -> Vec<(u64, RaftMessage)> {
        let (due, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.delayed = held;
        due.into_iter().map(|(_, to, m)| (to, m)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_msg_type(kind);
        m
    }

    #[test]
    fn the_switch_drops_delays_and_duplicates_but_never_a_proposal() {
        let now = Instant::now();
        let mut faults = Faults::new(7);
        assert!(matches!(
            faults.fate(&message(MessageType::MsgAppend), now),
            Fate::Send
        ));
        faults.set.drop = 1.0;
        assert!(matches!(
            faults.fate(&message(MessageType::MsgAppend), now),
            Fate::Drop
        ));
        faults.set = TestFaults {
            duplicate: 1.0,
            ..TestFaults::default()
        };
        assert!(matches!(
            faults.fate(&message(MessageType::MsgHeartbeat), now),
            Fate::Duplicate
        ));
        assert!(matches!(
            faults.fate(&message(MessageType::MsgPropose), now),
            Fate::Send
        ));
        faults.set = TestFaults {
            delay: Duration::from_millis(100),
            ..TestFaults::default()
        };
        let Fate::Delay(until) = faults.fate(&message(MessageType::MsgAppend), now) else {
            panic!("not delayed");
        };
        assert!(until <= now + Duration::from_millis(100));
        faults
            .delayed
            .push((until, 2, message(MessageType::MsgAppend)));
        assert_eq!(faults.due(now + Duration::from_millis(101)).len(), 1);
        assert!(faults.delayed.is_empty());
        faults.set = TestFaults::default();
        faults.set.deaf_to.insert(3);
        assert!(!faults.hears(3) && faults.hears(2));
    }
}
