//! What a simulated member's raft core sees of the world: a clock the simulation moves,
//! a peer link whose messages the simulation carries (or loses), and a forwarder the
//! simulation never needs.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use rivet_engine::error::EtcdError;
use rivet_engine::messages::{LeaseTtl, MemberChangeResult};
use rivet_engine::raft::{Clock, LeaderForward, PeerLink};

/// Simulated time: nanoseconds since the start of the run, shared by every member.
#[derive(Clone)]
pub struct SimClock {
    pub base: Instant,
    pub now_ns: Rc<Cell<u64>>,
}

impl SimClock {
    pub fn at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.at(self.now_ns.get())
    }
}

/// Something a member's raft core handed its peer link.
pub enum Outgoing {
    Message {
        to: u64,
        bytes: Bytes,
    },
    Snapshot {
        to: u64,
        message: Bytes,
        data: Bytes,
    },
}

/// Who can reach whom right now, as the simulation set it.
#[derive(Default)]
pub struct Reachability {
    /// Members that cannot reach `me` or be reached by it: `(me, them)`.
    pub cut: BTreeSet<(u64, u64)>,
}

pub struct SimPeerLink {
    pub me: u64,
    pub outbox: Rc<RefCell<Vec<Outgoing>>>,
    pub reachability: Rc<RefCell<Reachability>>,
    pub clock: SimClock,
}

impl PeerLink for SimPeerLink {
    fn send(&self, to: u64, message: Bytes) -> bool {
        // A link that is cut is down: the transport would answer "unreachable" at once.
        if self.reachability.borrow().cut.contains(&(self.me, to)) {
            return false;
        }
        self.outbox
            .borrow_mut()
            .push(Outgoing::Message { to, bytes: message });
        true
    }

    fn set_peers(&self, _peers: Vec<(u64, Vec<String>)>) {}

    fn send_snapshot(&self, to: u64, message: Bytes, data: Bytes) {
        self.outbox
            .borrow_mut()
            .push(Outgoing::Snapshot { to, message, data });
    }

    fn set_blocked(&self, _peers: &[u64]) {}

    fn connected_since(&self, to: u64) -> Option<Instant> {
        if self.reachability.borrow().cut.contains(&(self.me, to)) {
            None
        } else {
            Some(self.clock.base)
        }
    }
}

/// The simulation sends no lease TTL or promote request, the two requests a follower
/// forwards to the leader's client port.
pub struct NoForwarding;

impl LeaderForward for NoForwarding {
    fn lease_time_to_live(
        &self,
        _url: String,
        _id: i64,
        _keys: bool,
        _local: LeaseTtl,
        _reply: oneshot::Sender<LeaseTtl>,
    ) {
        unreachable!("the simulation sends no LeaseTimeToLive");
    }

    fn promote(
        &self,
        _url: String,
        _id: u64,
        _reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        unreachable!("the simulation sends no MemberPromote");
    }
}
