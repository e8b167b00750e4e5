//! Maintenance and Cluster on a shard core: raft status, alarms, HashKV, sizes, the member
//! table and leadership, and the test-only fault switch.

use rivet_api::etcdserverpb::{alarm_request::AlarmAction, AlarmMember, AlarmRequest};
use rivet_api::etcdserverpb::{AlarmResponse, HashKvResponse, Member};
use rivet_api::rivetpb::internal_request;

use super::ShardCore;
use crate::error::EtcdError;
use crate::messages::{
    MemberChange, MemberChangeResult, PageSizes, RaftCommand, RaftStatus, ShardRequest,
};
use crate::range::resolve_revision;

impl ShardCore {
    pub async fn raft_status(&self) -> Result<RaftStatus, EtcdError> {
        self.ask(|reply| RaftCommand::Status { reply }).await
    }

    /// Maintenance.Alarm: GET answers the active alarms; ACTIVATE and DEACTIVATE go
    /// through raft.
    pub async fn alarm(&self, request: AlarmRequest) -> Result<AlarmResponse, EtcdError> {
        if request.action == AlarmAction::Get as i32 {
            let alarms = self.alarms().await?;
            return Ok(AlarmResponse {
                header: Some(self.current_header()),
                alarms,
            });
        }
        let mut response: AlarmResponse = self
            .write(internal_request::Request::Alarm(request))
            .await?;
        response.header = Some(self.current_header());
        Ok(response)
    }

    pub async fn alarms(&self) -> Result<Vec<AlarmMember>, EtcdError> {
        self.ask(|reply| RaftCommand::AlarmList { reply }).await
    }

    /// Maintenance.HashKV: the hash of every version up to `revision` (0: the newest),
    /// read on a linearizable view, and the compaction revision.
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, EtcdError> {
        let point = self.read_index().await?;
        let started = std::time::Instant::now();
        let response = self.hash_kv_at(revision, point.revision).await?;
        crate::metrics::MVCC_HASH_REV.observe(started.elapsed());
        Ok(response)
    }

    /// etcd's `HashByRev` on this member's own state, without asking the leader: what
    /// the corruption checks compare and what a peer's HashKV request gets (etcd's
    /// peer handler reads its own store too). The header's revision is the revision
    /// every shard has applied.
    pub async fn hash_kv_local(&self, revision: i64) -> Result<HashKvResponse, EtcdError> {
        self.hash_kv_at(revision, self.shared.applied_revision())
            .await
    }

    async fn hash_kv_at(&self, revision: i64, current: i64) -> Result<HashKvResponse, EtcdError> {
        let compact = self.shard.borrow().compact_revision();
        // etcd's HashByRev refuses the compaction revision itself too (`rev <=
        // compactRev`), unlike a range at it.
        if revision > 0 && revision <= compact {
            return Err(EtcdError::Compacted);
        }
        let at = resolve_revision(revision, current, compact)?;
        let mut hash = self.shard.borrow().hash_kv(at)?;
        for id in 0..self.shard_count {
            if id == self.id {
                continue;
            }
            let answer = self
                .ask_shard(id, |reply| ShardRequest::HashKv {
                    revision: at,
                    reply,
                })
                .await?;
            hash = hash.wrapping_add(answer.await.map_err(|_| EtcdError::Stopped)??);
        }
        Ok(HashKvResponse {
            header: Some(self.header(current)),
            hash,
            compact_revision: compact,
        })
    }

    /// The compaction revision (for the metrics endpoint).
    pub fn compact_revision(&self) -> i64 {
        self.shard.borrow().compact_revision()
    }

    /// Sum of every shard's page file size, read from the files now.
    pub async fn db_size_bytes(&self) -> u64 {
        self.db_sizes().await.used_bytes
    }

    /// Every shard's page file sizes, summed: `dbSize` and `dbSizeInUse`.
    pub async fn db_sizes(&self) -> PageSizes {
        let mut total = self.shard.borrow().sizes();
        for id in 0..self.shard_count {
            if id == self.id {
                continue;
            }
            if let Ok(answer) = self
                .ask_shard(id, |reply| ShardRequest::SizeBytes { reply })
                .await
            {
                total = total + answer.await.unwrap_or_default();
            }
        }
        total
    }

    pub async fn isolate_for_tests(&self, isolate: bool) -> Result<(), EtcdError> {
        self.raft
            .send(RaftCommand::IsolateForTests { isolate })
            .await
            .map_err(|_| EtcdError::Stopped)
    }

    pub async fn faults_for_tests(
        &self,
        faults: crate::raft::faults::TestFaults,
    ) -> Result<(), EtcdError> {
        self.raft
            .send(RaftCommand::FaultsForTests { faults })
            .await
            .map_err(|_| EtcdError::Stopped)
    }

    pub async fn member_list(&self) -> Result<Vec<Member>, EtcdError> {
        self.ask(|reply| RaftCommand::MemberList { reply }).await
    }

    pub async fn member_change(
        &self,
        change: MemberChange,
    ) -> Result<MemberChangeResult, EtcdError> {
        self.ask(|reply| RaftCommand::MemberChange { change, reply })
            .await?
    }

    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        self.ask(|reply| RaftCommand::MoveLeader { target, reply })
            .await?
    }
}
