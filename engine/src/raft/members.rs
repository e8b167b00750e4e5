//! Membership on the raft core: changes proposed (after etcd's checks,
//! `crate::membership::check_change`) and applied, the transport's peer table kept in
//! step, this member's attributes published, and leadership handed over (MoveLeader, and
//! a leader's graceful stop).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::channel::oneshot;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry};
use raft::StateRole;
use rivet_api::rivetpb::{internal_request, ConfChangeContext, Member, MemberAttributes};

use super::RaftCore;
use crate::apply::MemberTableChange;
use crate::error::EtcdError;
use crate::limits;
use crate::membership::{check_change, ReconfigView};
use crate::messages::{MemberChange, MemberChangeResult};

/// A MoveLeader in progress: target, answer, and when to give up.
pub struct PendingMoveLeader {
    target: u64,
    reply: oneshot::Sender<Result<(), EtcdError>>,
    deadline: Instant,
}

impl RaftCore {
    /// Tells the transport who the peers are now, and the shard cores whether this
    /// member is a learner.
    pub(super) fn update_peers(&self) {
        let members = self.applier.members();
        let peers = members
            .members()
            .filter(|m| m.id != self.config.member_id)
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect();
        self.peers.set_peers(peers);
        let learner = members
            .get(self.config.member_id)
            .is_some_and(|m| m.is_learner);
        self.shared.is_learner.store(learner, Ordering::Release);
    }

    /// Once there is a leader, publishes this member's name and client URLs (etcd's
    /// "publish" step), so `member list` shows them.
    pub(super) fn maybe_publish_attributes(&mut self) {
        if self.attributes_proposed || self.node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let Some(member) = self.applier.members().get(self.config.member_id) else {
            return;
        };
        self.attributes_proposed = true;
        if member.name == self.config.name && member.client_urls == self.config.client_urls {
            return;
        }
        let attributes = internal_request::Request::MemberAttributes(MemberAttributes {
            id: self.config.member_id,
            name: self.config.name.clone(),
            client_urls: self.config.client_urls.clone(),
        });
        if let Err(e) = self.propose_internal(attributes) {
            tracing::debug!("could not publish member attributes yet: {e}");
            self.attributes_proposed = false;
        }
    }

    /// The leader's first client URL, when another member leads.
    pub(super) fn leader_client_url(&self) -> Option<String> {
        let leader = self.node.raft.leader_id;
        if leader == raft::INVALID_ID || leader == self.config.member_id {
            return None;
        }
        self.applier
            .members()
            .get(leader)
            .and_then(|m| m.client_urls.first().cloned())
    }

    /// What this member knows for etcd's membership checks.
    fn reconfig_view(&self) -> ReconfigView {
        let me = self.config.member_id;
        let leading = self.node.raft.state == StateRole::Leader;
        let progress = self.node.raft.prs();
        let now = self.clock.now();
        // A peer counts when its link has been up for RECONFIG_CONNECTED_FOR (etcd asks
        // its transport the same) and, on the leader, raft heard from it within the last
        // election timeout.
        let active: BTreeSet<u64> = self
            .applier
            .members()
            .members()
            .map(|m| m.id)
            .filter(|id| {
                if *id == me {
                    return true;
                }
                let heard = !leading || progress.get(*id).is_some_and(|p| p.recent_active);
                let settled = self.peers.connected_since(*id).is_some_and(|since| {
                    now.saturating_duration_since(since) >= limits::RECONFIG_CONNECTED_FOR
                });
                heard && settled
            })
            .collect();
        let matched: BTreeMap<u64, u64> = if leading {
            progress.iter().map(|(id, p)| (*id, p.matched)).collect()
        } else {
            BTreeMap::new()
        };
        ReconfigView {
            me,
            strict: self.config.strict_reconfig_check,
            is_leader: leading,
            active,
            matched,
        }
    }

    pub(super) fn propose_member_change(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        if self.node.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(EtcdError::NoLeader));
            return;
        }
        if let MemberChange::Promote { id } = change {
            if self.node.raft.state != StateRole::Leader {
                // Only the leader knows whether the learner is in sync: like etcd, a
                // follower hands the promotion to the leader's client port.
                match self.leader_client_url() {
                    Some(url) => self.forward.promote(url, id, reply),
                    None => {
                        let _ = reply.send(Err(EtcdError::NoLeader));
                    }
                }
                return;
            }
        }
        if let Err(e) = check_change(self.applier.members(), &change, &self.reconfig_view()) {
            let _ = reply.send(Err(e));
            return;
        }
        let id = self.waiters.next_id();
        let proposer = self.config.member_id;
        let (change_type, node_id, member) = match change {
            MemberChange::Update {
                id: member,
                peer_urls,
            } => {
                let request = rivet_api::rivetpb::InternalRequest {
                    caller: None,
                    member_id: proposer,
                    id,
                    request: Some(internal_request::Request::MemberUpdate(Member {
                        id: member,
                        peer_urls,
                        ..Default::default()
                    })),
                };
                let result = self.node.propose(Vec::new(), request.encode_to_vec());
                self.after_member_proposal(id, result, reply);
                return;
            }
            MemberChange::Add {
                peer_urls,
                is_learner,
            } => {
                // The ID a member computes for itself from its peer URLs and the token, as
                // for initial members, so that it can join with `existing` (rivet learns
                // nothing else from its peers before raft runs).
                let new_id = crate::identity::member_id(&peer_urls, &self.config.cluster_token);
                let members = self.applier.members();
                if members.contains(new_id) || members.is_removed(new_id) {
                    let _ = reply.send(Err(EtcdError::MemberExist));
                    return;
                }
                let member = Member {
                    id: new_id,
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                    is_learner,
                };
                let change_type = if is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                (change_type, new_id, Some(member))
            }
            MemberChange::Remove { id: member } => (ConfChangeType::RemoveNode, member, None),
            MemberChange::Promote { id: learner } => {
                let mut member = self
                    .applier
                    .members()
                    .get(learner)
                    .cloned()
                    .unwrap_or_default();
                member.is_learner = false;
                (ConfChangeType::AddNode, learner, Some(member))
            }
        };
        let context = ConfChangeContext {
            proposer,
            id,
            member,
        };
        let mut conf_change = ConfChange::default();
        conf_change.set_change_type(change_type);
        conf_change.node_id = node_id;
        conf_change.context = context.encode_to_vec().into();
        let result = self.node.propose_conf_change(Vec::new(), conf_change);
        self.after_member_proposal(id, result, reply);
    }

    fn after_member_proposal(
        &mut self,
        id: u64,
        result: raft::Result<()>,
        reply: oneshot::Sender<Result<MemberChangeResult, EtcdError>>,
    ) {
        match result {
            Ok(()) => self.waiters.wait_member(id, reply),
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(EtcdError::NoLeader));
            }
            Err(e) => {
                let _ = reply.send(Err(EtcdError::Internal(e.to_string())));
            }
        }
    }

    /// A committed configuration change: raft's configuration, the member table, the
    /// peer table; the proposer is answered; a removed member stops.
    ///
    /// A conf change that does not decode is refused (the caller stops the member): a
    /// peer's entries are checked before they reach raft ([`super::validate`]), so this
    /// one came from a damaged local log.
    pub(super) fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), String> {
        let mut conf_change = ConfChange::default();
        if let Err(e) = conf_change.merge_from_bytes(&entry.data) {
            return Err(format!(
                "the raft log holds an undecodable conf change at index {}: {e}",
                entry.index
            ));
        }
        let context = ConfChangeContext::decode(conf_change.context.as_ref()).map_err(|e| {
            format!(
                "the raft log holds a conf change with an undecodable context at index {}: {e}",
                entry.index
            )
        })?;
        match self.node.apply_conf_change(&conf_change) {
            Ok(conf_state) => {
                self.node.mut_store().wl().set_conf_state(conf_state);
            }
            Err(e) => {
                tracing::warn!("raft refused conf change at index {}: {e}", entry.index);
            }
        }
        let node_id = conf_change.node_id;
        let promoted = conf_change.get_change_type() == ConfChangeType::AddNode
            && self
                .applier
                .members()
                .get(node_id)
                .is_some_and(|m| m.is_learner);
        if promoted && self.node.raft.state == StateRole::Leader {
            crate::metrics::LEARNER_PROMOTE_SUCCESSES.inc();
        }
        let change = match conf_change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => MemberTableChange::Add {
                id: node_id,
                member: context.member.clone(),
            },
            ConfChangeType::RemoveNode => MemberTableChange::Remove { id: node_id },
        };
        let cluster_id = format!("{:x}", self.config.cluster_id);
        match (&change, promoted) {
            (MemberTableChange::Add { member, .. }, false) => tracing::info!(
                added_peer_id = %format!("{node_id:x}"),
                added_peer_peer_urls = ?member.as_ref().map(|m| m.peer_urls.clone()).unwrap_or_default(),
                cluster_id = %cluster_id,
                index = entry.index,
                "added member"
            ),
            (MemberTableChange::Add { .. }, true) => tracing::info!(
                promoted_member_id = %format!("{node_id:x}"),
                cluster_id = %cluster_id,
                index = entry.index,
                "promote member"
            ),
            (MemberTableChange::Remove { .. }, _) => tracing::info!(
                removed_remote_peer_id = %format!("{node_id:x}"),
                cluster_id = %cluster_id,
                index = entry.index,
                "removed member"
            ),
        }
        self.applier.apply_member_change(change);
        self.update_peers();
        if context.proposer == self.config.member_id {
            if let Some(reply) = self.waiters.take_member(context.id) {
                let members = self.applier.members();
                let member = members.get(node_id).map(crate::membership::to_api_member);
                let _ = reply.send(Ok(MemberChangeResult {
                    member,
                    members: members.to_api(),
                }));
            }
        }
        if conf_change.get_change_type() == ConfChangeType::RemoveNode
            && node_id == self.config.member_id
        {
            tracing::warn!("this member was removed from the cluster; stopping");
            self.stop.stopping = true;
            self.stop
                .reason
                .get_or_insert_with(|| "this member was removed from the cluster".into());
        }
        Ok(())
    }

    /// A graceful stop: a leader with peers first transfers leadership to the most
    /// up-to-date voter, so the cluster does not wait an election timeout for a new one.
    pub(super) fn begin_stop(&mut self) {
        let me = self.config.member_id;
        if self.node.raft.state != StateRole::Leader {
            self.stop.stopping = true;
            return;
        }
        let progress = self.node.raft.prs();
        let transferee = progress
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != me)
            .max_by_key(|id| progress.get(*id).map_or(0, |p| p.matched));
        match transferee {
            Some(target) => {
                tracing::info!(
                    target = format_args!("{target:x}"),
                    "stopping: transferring leadership first"
                );
                self.node.transfer_leader(target);
                self.stop.after_transfer = Some(self.clock.now() + self.election_timeout());
            }
            None => self.stop.stopping = true,
        }
    }

    pub(super) fn start_move_leader(
        &mut self,
        target: u64,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    ) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        if target == self.config.member_id {
            let _ = reply.send(Ok(()));
            return;
        }
        if !self.node.raft.prs().conf().voters().ids().contains(target) {
            let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
            return;
        }
        self.node.transfer_leader(target);
        self.move_leader = Some(PendingMoveLeader {
            target,
            reply,
            deadline: self.clock.now() + self.election_timeout() * 2,
        });
    }

    pub(super) fn check_move_leader(&mut self) {
        let Some(pending) = &self.move_leader else {
            return;
        };
        let done = self.node.raft.leader_id == pending.target;
        if done || self.clock.now() > pending.deadline {
            if let Some(pending) = self.move_leader.take() {
                let _ = pending.reply.send(if done {
                    Ok(())
                } else {
                    Err(EtcdError::Timeout)
                });
            }
        }
    }

    pub(super) fn election_timeout(&self) -> std::time::Duration {
        self.config.heartbeat_interval * self.config.election_ticks as u32
    }
}
