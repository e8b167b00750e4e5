//! The leader's lease clock. The lease table itself is replicated state (the sequencer);
//! *when* a lease expires is decided only by the leader, with a monotonic clock
//! (ETCD_LESSONS 22), and enters the log as a revoke. Followers keep no deadlines.
//!
//! On promotion every deadline is restarted from the remaining TTL the last leader
//! checkpointed (or the full TTL), extended by an election timeout, and spread so that no
//! more than [`LEASE_REVOKES_PER_SECOND`] leases expire in any second (lesson 9): a new
//! leader never revokes a storm of leases at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rivet_api::etcdserverpb::LeaseCheckpoint;

use crate::limits::LEASE_REVOKES_PER_SECOND;
use crate::sequencer::LeaseEntry;

#[derive(Default)]
pub struct Lessor {
    primary: bool,
    deadlines: HashMap<i64, Instant>,
    /// Expired leases whose revoke is proposed but not applied yet.
    revoking: HashSet<i64>,
}

fn seconds(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

impl Lessor {
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// This member became leader: restart every lease's clock.
    pub fn promote(&mut self, leases: &BTreeMap<i64, LeaseEntry>, now: Instant, extend: Duration) {
        self.primary = true;
        self.revoking.clear();
        let mut deadlines: Vec<(Instant, i64)> = leases
            .iter()
            .map(|(id, lease)| {
                let remaining = if lease.remaining_ttl > 0 {
                    lease.remaining_ttl
                } else {
                    lease.ttl
                };
                (now + extend + seconds(remaining), *id)
            })
            .collect();
        deadlines.sort();
        if let Some((first, _)) = deadlines.first().copied() {
            for (i, (deadline, _)) in deadlines.iter_mut().enumerate() {
                let spread = Duration::from_secs_f64(i as f64 / LEASE_REVOKES_PER_SECOND as f64);
                *deadline = (*deadline).max(first + spread);
            }
        }
        self.deadlines = deadlines.into_iter().map(|(d, id)| (id, d)).collect();
    }

    /// This member is no longer leader: it keeps no deadlines.
    pub fn demote(&mut self) {
        self.primary = false;
        self.deadlines.clear();
        self.revoking.clear();
    }

    pub fn granted(&mut self, id: i64, ttl: i64, now: Instant) {
        if self.primary {
            self.deadlines.insert(id, now + seconds(ttl));
        }
    }

    pub fn revoked(&mut self, id: i64) {
        self.deadlines.remove(&id);
        self.revoking.remove(&id);
    }

    /// A keep-alive: the lease lives another TTL. False if this member does not hold it.
    pub fn renew(&mut self, id: i64, ttl: i64, now: Instant) -> bool {
        if !self.primary || self.revoking.contains(&id) {
            return false;
        }
        match self.deadlines.get_mut(&id) {
            Some(deadline) => {
                *deadline = now + seconds(ttl);
                crate::metrics::LEASE_RENEWED.inc();
                true
            }
            None => false,
        }
    }

    pub fn remaining(&self, id: i64, now: Instant) -> Option<Duration> {
        self.deadlines
            .get(&id)
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Up to `max` leases past their deadline, earliest first; they are marked so they are
    /// proposed for revoking once.
    pub fn expired(&mut self, now: Instant, max: usize) -> Vec<i64> {
        if !self.primary {
            return Vec::new();
        }
        let mut due: Vec<(Instant, i64)> = self
            .deadlines
            .iter()
            .filter(|(id, deadline)| **deadline <= now && !self.revoking.contains(id))
            .map(|(id, deadline)| (*deadline, *id))
            .collect();
        due.sort();
        due.truncate(max);
        let ids: Vec<i64> = due.into_iter().map(|(_, id)| id).collect();
        self.revoking.extend(ids.iter().copied());
        ids
    }

    /// A proposal to revoke an expired lease was lost (leadership moved, or raft dropped
    /// it): it may be proposed again.
    pub fn retry(&mut self, id: i64) {
        self.revoking.remove(&id);
    }

    /// The remaining TTL of every lease, for a checkpoint entry.
    pub fn checkpoints(&self, now: Instant) -> Vec<LeaseCheckpoint> {
        let mut checkpoints: Vec<LeaseCheckpoint> = self
            .deadlines
            .iter()
            .map(|(id, deadline)| LeaseCheckpoint {
                id: *id,
                remaining_ttl: deadline.saturating_duration_since(now).as_secs().max(1) as i64,
            })
            .collect();
        checkpoints.sort_by_key(|c| c.id);
        checkpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl: i64) -> LeaseEntry {
        LeaseEntry {
            ttl,
            ..Default::default()
        }
    }

    #[test]
    fn promotion_spreads_leases_that_would_expire_together() {
        let leases: BTreeMap<i64, LeaseEntry> = (1..=5000).map(|id| (id, lease(10))).collect();
        let now = Instant::now();
        let mut lessor = Lessor::default();
        lessor.promote(&leases, now, Duration::from_secs(1));
        let mut deadlines: Vec<Instant> = lessor.deadlines.values().copied().collect();
        deadlines.sort();
        // No one-second window holds more than the revoke rate.
        for (i, start) in deadlines.iter().enumerate() {
            let in_window = deadlines[i..]
                .iter()
                .take_while(|d| d.duration_since(*start) < Duration::from_secs(1))
                .count();
            assert!(
                in_window <= LEASE_REVOKES_PER_SECOND,
                "{in_window} leases expire within one second"
            );
        }
        // And none earlier than TTL plus the extension.
        assert!(deadlines[0] >= now + Duration::from_secs(11));
    }

    #[test]
    fn checkpointed_remaining_ttl_wins_over_the_full_ttl() {
        let mut leases = BTreeMap::new();
        leases.insert(
            7,
            LeaseEntry {
                ttl: 100,
                remaining_ttl: 5,
                ..Default::default()
            },
        );
        let now = Instant::now();
        let mut lessor = Lessor::default();
        lessor.promote(&leases, now, Duration::ZERO);
        assert_eq!(lessor.remaining(7, now), Some(Duration::from_secs(5)));
    }

    #[test]
    fn expired_leases_are_proposed_once_and_followers_keep_no_clock() {
        let now = Instant::now();
        let mut lessor = Lessor::default();
        lessor.granted(1, 5, now);
        assert_eq!(
            lessor.remaining(1, now),
            None,
            "a follower keeps no deadlines"
        );
        lessor.promote(&BTreeMap::new(), now, Duration::ZERO);
        lessor.granted(1, 5, now);
        let later = now + Duration::from_secs(6);
        assert_eq!(lessor.expired(later, 10), vec![1]);
        assert!(lessor.expired(later, 10).is_empty());
        assert!(
            !lessor.renew(1, 5, later),
            "a lease being revoked is not renewed"
        );
        lessor.revoked(1);
        assert_eq!(lessor.remaining(1, later), None);
    }
}
