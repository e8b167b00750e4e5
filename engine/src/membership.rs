//! The replicated member table: who is in the cluster, their peer and client URLs, who is
//! a learner, and which IDs were removed (a removed ID never comes back). Changed only by
//! applied raft entries, so every member holds the same table at the same index.
//!
//! Beside it, [`check_change`]: etcd 3.4's checks before a membership change, as a pure
//! function of the table and of what the member that received the request knows
//! ([`ReconfigView`]).

use std::collections::{BTreeMap, BTreeSet};

use rivet_api::etcdserverpb;
use rivet_api::rivetpb::{Member, MemberAttributes, Membership};

use crate::error::EtcdError;
use crate::limits;
use crate::messages::MemberChange;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberTable {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

impl MemberTable {
    pub fn from_members(members: Vec<Member>) -> MemberTable {
        MemberTable {
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            removed: BTreeSet::new(),
        }
    }

    pub fn from_proto(membership: &Membership) -> MemberTable {
        MemberTable {
            members: membership
                .members
                .iter()
                .map(|m| (m.id, m.clone()))
                .collect(),
            removed: membership.removed.iter().copied().collect(),
        }
    }

    pub fn to_proto(&self) -> Membership {
        Membership {
            members: self.members.values().cloned().collect(),
            removed: self.removed.iter().copied().collect(),
        }
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn learner_count(&self) -> usize {
        self.members.values().filter(|m| m.is_learner).count()
    }

    /// Whether any member already uses one of these peer URLs.
    pub fn peer_url_in_use(&self, urls: &[String], except: Option<u64>) -> bool {
        self.members
            .values()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    pub fn add(&mut self, member: Member) {
        self.members.insert(member.id, member);
    }

    pub fn remove(&mut self, id: u64) {
        self.members.remove(&id);
        self.removed.insert(id);
    }

    pub fn promote(&mut self, id: u64) {
        if let Some(member) = self.members.get_mut(&id) {
            member.is_learner = false;
        }
    }

    pub fn update_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) {
        if let Some(member) = self.members.get_mut(&id) {
            member.peer_urls = peer_urls;
        }
    }

    pub fn set_attributes(&mut self, attributes: &MemberAttributes) {
        if let Some(member) = self.members.get_mut(&attributes.id) {
            member.name = attributes.name.clone();
            member.client_urls = attributes.client_urls.clone();
        }
    }

    /// The members in the form of etcd's Cluster API.
    pub fn to_api(&self) -> Vec<etcdserverpb::Member> {
        self.members.values().map(to_api_member).collect()
    }
}

pub fn to_api_member(m: &Member) -> etcdserverpb::Member {
    etcdserverpb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// What the member that received a membership change knows besides the member table.
#[derive(Clone, Debug, Default)]
pub struct ReconfigView {
    /// This member's ID.
    pub me: u64,
    /// `--strict-reconfig-check`.
    pub strict: bool,
    pub is_leader: bool,
    /// The members this member can count on for a change: itself, and peers whose link
    /// has been up for [`limits::RECONFIG_CONNECTED_FOR`] (etcd asks its transport the
    /// same) and, on the leader, that raft heard from within the last election timeout.
    pub active: BTreeSet<u64>,
    /// On the leader: how far each member's log matches the leader's (raft progress).
    pub matched: BTreeMap<u64, u64>,
}

/// etcd 3.4's checks before a membership change (`mayAddMember`, `mayRemoveMember`,
/// `mayPromoteMember`, `ValidateConfigurationChange`). With `--strict-reconfig-check` a
/// change may not leave fewer started voters than a quorum, nor be made while this member
/// is cut off from voters it would need. "Started" is etcd's: the member has published its
/// name.
pub fn check_change(
    members: &MemberTable,
    change: &MemberChange,
    view: &ReconfigView,
) -> Result<(), EtcdError> {
    let strict = view.strict;
    let voters: Vec<u64> = members
        .members()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let started = |id: &u64| members.get(*id).is_some_and(|m| !m.name.is_empty());
    let active = |id: &u64| *id == view.me || view.active.contains(id);
    match change {
        MemberChange::Add {
            peer_urls,
            is_learner,
        } => {
            let bad = peer_urls.is_empty()
                || peer_urls
                    .iter()
                    .any(|u| !u.starts_with("http://") && !u.starts_with("https://"));
            if bad {
                return Err(EtcdError::MemberBadUrls);
            }
            if strict {
                if !*is_learner {
                    // The cluster with the new member, which has not started yet.
                    let size = voters.len() + 1;
                    let started = voters.iter().filter(|id| started(id)).count();
                    // etcd lets a single started member take a second one (restoring a
                    // cluster from one member's data).
                    let restoring = started == 1 && size == 2;
                    if !restoring && started < size / 2 + 1 {
                        return Err(EtcdError::MemberNotEnoughStarted);
                    }
                }
                if !voters.iter().all(active) {
                    return Err(EtcdError::Unhealthy);
                }
            }
            if members.peer_url_in_use(peer_urls, None) {
                return Err(EtcdError::PeerUrlExist);
            }
            if *is_learner && members.learner_count() >= limits::LEARNERS_MAX {
                return Err(EtcdError::TooManyLearners);
            }
        }
        MemberChange::Remove { id } => {
            let learner = members.get(*id).is_some_and(|m| m.is_learner);
            if strict && !learner {
                let remaining: Vec<u64> = voters.iter().copied().filter(|v| v != id).collect();
                let started = remaining.iter().filter(|v| started(v)).count();
                if started < remaining.len() / 2 + 1 {
                    return Err(EtcdError::MemberNotEnoughStarted);
                }
                // A member that is down is not part of the active quorum: removing it is
                // safe. Otherwise the active voters but it must be a quorum of the voters
                // that remain.
                let down = *id != view.me && !active(id);
                if !down {
                    let live = voters.iter().filter(|v| active(v)).count();
                    let quorum_left = 1 + voters.len().saturating_sub(1) / 2;
                    if live.saturating_sub(1) < quorum_left {
                        return Err(EtcdError::Unhealthy);
                    }
                }
            }
            if !members.contains(*id) {
                return Err(EtcdError::MemberNotFound);
            }
        }
        MemberChange::Update { id, peer_urls } => {
            if !members.contains(*id) {
                return Err(EtcdError::MemberNotFound);
            }
            if members.peer_url_in_use(peer_urls, Some(*id)) {
                return Err(EtcdError::PeerUrlExist);
            }
        }
        MemberChange::Promote { id } => {
            let Some(member) = members.get(*id) else {
                return Err(EtcdError::MemberNotFound);
            };
            if !view.is_leader {
                // etcd decides promotions on the leader, which alone knows how far the
                // learner's log has come.
                return Err(EtcdError::NotLeader);
            }
            // A learner is promoted only once its log holds 90% of the leader's.
            let leader_match = view.matched.get(&view.me).copied().unwrap_or(0);
            if let Some(matched) = view.matched.get(id) {
                if matched * 100 < leader_match * limits::LEARNER_READY_PERCENT {
                    return Err(EtcdError::LearnerNotReady);
                }
            }
            if strict {
                // The learner counts as a started voter of the cluster to be.
                let size = voters.len() + 1;
                let started = voters.iter().filter(|v| started(v)).count() + 1;
                if started < size / 2 + 1 {
                    return Err(EtcdError::MemberNotEnoughStarted);
                }
            }
            if !member.is_learner {
                return Err(EtcdError::MemberNotLearner);
            }
        }
    }
    Ok(())
}

/// Parses etcd's `--initial-cluster` (`name=url,name=url2,other=url3`): a name may appear
/// several times, once per peer URL.
pub fn parse_initial_cluster(value: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(format!(
                "invalid --initial-cluster entry {part:?}: expected name=url"
            ));
        };
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, started: bool, is_learner: bool) -> Member {
        Member {
            id,
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            peer_urls: vec![format!("http://10.0.0.{id}:2380")],
            client_urls: Vec::new(),
            is_learner,
        }
    }

    fn view(me: u64, active: &[u64]) -> ReconfigView {
        ReconfigView {
            me,
            strict: true,
            is_leader: true,
            active: active.iter().copied().collect(),
            matched: BTreeMap::new(),
        }
    }

    fn add(is_learner: bool) -> MemberChange {
        MemberChange::Add {
            peer_urls: vec!["http://10.0.0.9:2380".into()],
            is_learner,
        }
    }

    #[test]
    fn adding_a_voter_needs_a_quorum_of_started_voters_and_every_link() {
        // Three voters, one never started: 2 started of a cluster of 4 is no quorum.
        let table = MemberTable::from_members(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, false, false),
        ]);
        let all = view(1, &[1, 2, 3]);
        assert_eq!(
            check_change(&table, &add(false), &all),
            Err(EtcdError::MemberNotEnoughStarted)
        );
        // A learner does not count toward the quorum, so it may be added...
        assert_eq!(check_change(&table, &add(true), &all), Ok(()));
        // ...unless a voter's link is down.
        assert_eq!(
            check_change(&table, &add(true), &view(1, &[1, 2])),
            Err(EtcdError::Unhealthy)
        );
        // Without --strict-reconfig-check, only the table's own rules apply.
        let loose = ReconfigView {
            strict: false,
            ..view(1, &[])
        };
        assert_eq!(check_change(&table, &add(false), &loose), Ok(()));
        let taken = MemberChange::Add {
            peer_urls: vec!["http://10.0.0.2:2380".into()],
            is_learner: false,
        };
        assert_eq!(
            check_change(&table, &taken, &loose),
            Err(EtcdError::PeerUrlExist)
        );
    }

    #[test]
    fn a_single_started_member_may_take_a_second() {
        let table = MemberTable::from_members(vec![member(1, true, false)]);
        assert_eq!(check_change(&table, &add(false), &view(1, &[1])), Ok(()));
    }

    #[test]
    fn removing_a_live_voter_keeps_a_quorum_of_active_voters() {
        let table = MemberTable::from_members(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, true, false),
        ]);
        // 3 is down: removing it is always safe.
        let remove_3 = MemberChange::Remove { id: 3 };
        assert_eq!(check_change(&table, &remove_3, &view(1, &[1, 2])), Ok(()));
        // 3 is down and 2 is live: removing 2 leaves 1 active of the 2 that remain.
        let remove_2 = MemberChange::Remove { id: 2 };
        assert_eq!(
            check_change(&table, &remove_2, &view(1, &[1, 2])),
            Err(EtcdError::Unhealthy)
        );
        assert_eq!(
            check_change(&table, &remove_2, &view(1, &[1, 2, 3])),
            Ok(())
        );
        assert_eq!(
            check_change(
                &table,
                &MemberChange::Remove { id: 9 },
                &view(1, &[1, 2, 3])
            ),
            Err(EtcdError::MemberNotFound)
        );
    }

    #[test]
    fn a_learner_is_promoted_by_the_leader_once_it_caught_up() {
        let table = MemberTable::from_members(vec![
            member(1, true, false),
            member(2, true, false),
            member(3, false, true),
        ]);
        let promote = MemberChange::Promote { id: 3 };
        let mut leader = view(1, &[1, 2, 3]);
        leader.matched = [(1, 100), (2, 100), (3, 50)].into_iter().collect();
        assert_eq!(
            check_change(&table, &promote, &leader),
            Err(EtcdError::LearnerNotReady)
        );
        leader.matched.insert(3, 95);
        assert_eq!(check_change(&table, &promote, &leader), Ok(()));
        let follower = ReconfigView {
            is_leader: false,
            ..leader
        };
        assert_eq!(
            check_change(&table, &promote, &follower),
            Err(EtcdError::NotLeader)
        );
        assert_eq!(
            check_change(
                &table,
                &MemberChange::Promote { id: 2 },
                &view(1, &[1, 2, 3])
            ),
            Err(EtcdError::MemberNotLearner)
        );
    }

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let parsed = parse_initial_cluster("a=http://1:2380,b=http://2:2380,a=http://3:2380")
            .expect("parse");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].1, vec!["http://1:2380", "http://3:2380"]);
        assert!(parse_initial_cluster("nonsense").is_err());
    }

    #[test]
    fn removed_ids_are_remembered() {
        let mut table = MemberTable::from_members(vec![Member {
            id: 7,
            ..Default::default()
        }]);
        table.remove(7);
        assert!(!table.contains(7));
        assert!(table.is_removed(7));
        let round_trip = MemberTable::from_proto(&table.to_proto());
        assert_eq!(round_trip, table);
    }
}
