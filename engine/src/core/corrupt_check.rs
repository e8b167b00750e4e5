//! etcd 3.4's corruption checks (`etcdserver/corrupt.go`), on a shard core:
//!
//! - [`ShardCore::initial_corrupt_check`] (`--experimental-initial-corrupt-check`,
//!   etcd's `CheckInitialHashKV`): before the member serves clients, its HashKV at its
//!   revision is compared with every peer's at the same revision; a different hash with
//!   the same compaction revision refuses the start ("… found data inconsistency with
//!   peers"). Peers that do not answer, are behind (future revision) or compacted past
//!   the revision are skipped, with etcd's warnings.
//! - [`ShardCore::check_hash_kv`] (`--experimental-corrupt-check-time`, etcd's
//!   `checkHashKV`, run by the leader each interval): the leader's hash before and after
//!   a linearizable read, and every follower's at the leader's revision; each of etcd's
//!   cases raises the CORRUPT alarm through raft for the member at fault.
//! - [`ShardCore::raise_corrupt`]: the one place where this member raises CORRUPT for
//!   damaged bytes it read (a page record whose CRC fails while serving).
//!
//! The peers are asked over the peer transport (the raft core's [`crate::raft::PeerLink`]).

use rivet_api::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use tracing::{info, warn};

use super::ShardCore;
use crate::error::EtcdError;
use crate::messages::{PeerHash, PeerHashOutcome, RaftCommand};

/// The local hash of a check: hash, current revision, compaction revision.
struct LocalHash {
    hash: u32,
    revision: i64,
    compact_revision: i64,
}

impl ShardCore {
    fn member_hex(&self) -> String {
        format!("{:x}", self.shared.member_id)
    }

    async fn local_hash(&self) -> Result<LocalHash, EtcdError> {
        let response = self.hash_kv_local(0).await?;
        Ok(LocalHash {
            hash: response.hash,
            revision: response.header.map_or(0, |h| h.revision),
            compact_revision: response.compact_revision,
        })
    }

    /// Every peer's HashKV at `revision`.
    async fn peer_hashes(&self, revision: i64) -> Result<Vec<PeerHash>, EtcdError> {
        self.ask(|reply| RaftCommand::PeerHashKvs { revision, reply })
            .await
    }

    /// etcd's `CheckInitialHashKV`. `Err` holds the reason the member must not start.
    pub async fn initial_corrupt_check(&self) -> Result<(), String> {
        let me = self.member_hex();
        info!(local_member_id = %me, "starting initial corruption check");
        let local = self
            .local_hash()
            .await
            .map_err(|e| format!("{me} failed to fetch hash ({e})"))?;
        let peers = self
            .peer_hashes(local.revision)
            .await
            .map_err(|e| format!("{me} failed to fetch hash ({e})"))?;
        let mut mismatch = 0;
        for peer in &peers {
            let remote = format!("{:x}", peer.id);
            match &peer.outcome {
                PeerHashOutcome::Answered {
                    revision,
                    compact_revision,
                    hash,
                } => {
                    if *hash == local.hash {
                        continue;
                    }
                    let same_compaction = *compact_revision == local.compact_revision;
                    let message = if same_compaction {
                        mismatch += 1;
                        "found different hash values from remote peer"
                    } else {
                        "found different compact revision values from remote peer"
                    };
                    warn!(
                        local_member_id = %me,
                        local_member_revision = local.revision,
                        local_member_compact_revision = local.compact_revision,
                        local_member_hash = local.hash,
                        remote_peer_id = %remote,
                        remote_peer_endpoints = ?peer.peer_urls,
                        remote_peer_revision = revision,
                        remote_peer_compact_revision = compact_revision,
                        remote_peer_hash = hash,
                        "{message}"
                    );
                }
                PeerHashOutcome::FutureRevision => warn!(
                    local_member_id = %me,
                    local_member_revision = local.revision,
                    local_member_compact_revision = local.compact_revision,
                    local_member_hash = local.hash,
                    remote_peer_id = %remote,
                    remote_peer_endpoints = ?peer.peer_urls,
                    error = %EtcdError::FutureRevision,
                    "cannot fetch hash from slow remote peer"
                ),
                PeerHashOutcome::Compacted => warn!(
                    local_member_id = %me,
                    local_member_revision = local.revision,
                    local_member_compact_revision = local.compact_revision,
                    local_member_hash = local.hash,
                    remote_peer_id = %remote,
                    remote_peer_endpoints = ?peer.peer_urls,
                    error = %EtcdError::Compacted,
                    "cannot fetch hash from remote peer; local member is behind"
                ),
                PeerHashOutcome::Failed(error) => warn!(
                    local_member_id = %me,
                    requested_revision = local.revision,
                    remote_peer_id = %remote,
                    remote_peer_endpoints = ?peer.peer_urls,
                    %error,
                    "failed hash kv request"
                ),
            }
        }
        if mismatch > 0 {
            return Err(format!("{me} found data inconsistency with peers"));
        }
        info!(local_member_id = %me, "initial corruption checking passed; no corruption");
        Ok(())
    }

    /// Whether this member leads the cluster now.
    pub fn is_leader(&self) -> bool {
        self.shared.leader.load(std::sync::atomic::Ordering::SeqCst) == self.shared.member_id
    }

    /// etcd's `checkHashKV`, run by the leader: raises CORRUPT (once per pass) for the
    /// first member found at fault.
    pub async fn check_hash_kv(&self) -> Result<(), EtcdError> {
        let first = self.local_hash().await?;
        let peers = self.peer_hashes(first.revision).await?;
        // etcd's linearizableReadNotify between the two local hashes.
        self.read_index().await?;
        let second = self.local_hash().await?;
        let mut alarmed = None;
        if second.hash != first.hash
            && second.revision == first.revision
            && second.compact_revision == first.compact_revision
        {
            warn!(
                revision_1 = first.revision,
                compact_revision_1 = first.compact_revision,
                hash_1 = first.hash,
                revision_2 = second.revision,
                compact_revision_2 = second.compact_revision,
                hash_2 = second.hash,
                "found hash mismatch"
            );
            alarmed.get_or_insert(self.shared.member_id);
        }
        let mut checked = 0;
        for peer in &peers {
            let PeerHashOutcome::Answered {
                revision,
                compact_revision,
                hash,
            } = peer.outcome
            else {
                continue;
            };
            checked += 1;
            let follower = format!("{:x}", peer.id);
            if revision > second.revision {
                warn!(
                    leader_revision = second.revision,
                    follower_revision = revision,
                    follower_peer_id = %follower,
                    "revision from follower must be less than or equal to leader's"
                );
                alarmed.get_or_insert(peer.id);
            }
            if compact_revision > second.compact_revision {
                warn!(
                    leader_compact_revision = second.compact_revision,
                    follower_compact_revision = compact_revision,
                    follower_peer_id = %follower,
                    "compact revision from follower must be less than or equal to leader's"
                );
                alarmed.get_or_insert(peer.id);
            }
            if compact_revision == first.compact_revision && hash != first.hash {
                warn!(
                    leader_compact_revision = second.compact_revision,
                    leader_hash = first.hash,
                    follower_compact_revision = compact_revision,
                    follower_hash = hash,
                    follower_peer_id = %follower,
                    "same compact revision then hashes must match"
                );
                alarmed.get_or_insert(peer.id);
            }
        }
        info!(
            number_of_peers_checked = checked,
            "finished peer corruption check"
        );
        if let Some(member) = alarmed {
            self.activate_corrupt(member).await?;
        }
        Ok(())
    }

    /// Proposes the CORRUPT alarm for `member` (etcd's AlarmRequest ACTIVATE).
    async fn activate_corrupt(&self, member: u64) -> Result<(), EtcdError> {
        self.alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: member,
            alarm: AlarmType::Corrupt as i32,
        })
        .await
        .map(|_| ())
    }

    /// Raises CORRUPT for every damaged record this core's shard reports, until the
    /// shard is dropped. Runs as a task of its own on the core.
    pub async fn run_damage_alarm(self: std::rc::Rc<Self>) {
        let Some(reports) = self.damage.borrow_mut().take() else {
            return;
        };
        while let Ok(what) = reports.recv().await {
            self.raise_corrupt(&what).await;
        }
    }

    /// Raises CORRUPT for this member because it read damaged bytes (`what`), unless
    /// the alarm is already raised for it: the one policy for damaged page records while
    /// serving. The client that hit them got `etcdserver: corrupt cluster` already.
    pub async fn raise_corrupt(&self, what: &str) {
        let member = self.shared.member_id;
        let raised = self.alarms().await.is_ok_and(|alarms| {
            alarms
                .iter()
                .any(|a| a.member_id == member && a.alarm == AlarmType::Corrupt as i32)
        });
        if raised {
            return;
        }
        warn!(member = %self.member_hex(), damage = what, "raising the CORRUPT alarm: this member read damaged data");
        if let Err(e) = self.activate_corrupt(member).await {
            warn!("cannot raise the CORRUPT alarm: {e}");
        }
    }
}
