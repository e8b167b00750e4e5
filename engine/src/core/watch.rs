//! What watch streams read from the shards: the recent changes of every shard (the fast
//! path) and one range's history from the indexes (the catch-up path), merged by
//! revision.

use bytes::Bytes;
use rivet_api::mvccpb::Event;

use super::ShardCore;
use crate::error::EtcdError;
use crate::keyspace::{CompactedAt, RangeEnd};
use crate::messages::ShardRequest;
use crate::shard::WatchEvents;

impl ShardCore {
    /// Watch: every change in `[from, to]` on every shard from the recent logs, ordered
    /// by revision (within a revision, in apply order per shard), or `None` when some
    /// shard's log does not reach back to `from`.
    /// A record that cannot be read answers its error.
    pub async fn watch_recent(&self, from: i64, to: i64, prev_kv: bool) -> Option<WatchEvents> {
        let mut parts = Vec::with_capacity(self.shard_count);
        let mut pending = Vec::new();
        for id in 0..self.shard_count {
            if id == self.id {
                continue;
            }
            let request = |reply| ShardRequest::WatchRecent {
                from,
                to,
                prev_kv,
                reply,
            };
            pending.push(self.ask_shard(id, request).await.ok()?);
        }
        let local = self.shard.borrow().recent_changes(from, to, prev_kv)?;
        match local {
            Ok(events) => parts.push(events),
            Err(e) => return Some(Err(e)),
        }
        for answer in pending {
            match answer.await.ok()? {
                Some(Ok(events)) => parts.push(events),
                Some(Err(e)) => return Some(Err(e)),
                None => return None,
            }
        }
        Some(Ok(merge_by_revision(parts)))
    }

    /// Watch catch-up: one range's changes in `[from, to]` from the shards' indexes.
    pub async fn watch_history(
        &self,
        key: &Bytes,
        end: &RangeEnd,
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Result<WatchEvents, CompactedAt> {
        let shards = self.shards_of(key, end);
        let mut parts = Vec::with_capacity(shards.len());
        let mut pending = Vec::new();
        for &id in &shards {
            if id == self.id {
                continue;
            }
            let request = |reply| ShardRequest::WatchHistory {
                key: key.clone(),
                end: end.clone(),
                from,
                to,
                prev_kv,
                reply,
            };
            match self.ask_shard(id, request).await {
                Ok(answer) => pending.push(answer),
                Err(_) => return Ok(Err(EtcdError::Stopped)),
            }
        }
        if shards.contains(&self.id) {
            match self.shard.borrow().history(key, end, from, to, prev_kv)? {
                Ok(events) => parts.push(events),
                Err(e) => return Ok(Err(e)),
            }
        }
        for answer in pending {
            match answer.await {
                Ok(Ok(Ok(events))) => parts.push(events),
                Ok(Ok(Err(e))) => return Ok(Err(e)),
                Ok(Err(compacted)) => return Err(compacted),
                Err(_) => return Ok(Err(EtcdError::Stopped)),
            }
        }
        Ok(Ok(merge_by_revision(parts)))
    }
}

fn event_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Merges per-shard event lists (each ordered by revision) into one, by revision; a
/// stable merge, so each shard's order within a revision is kept.
fn merge_by_revision(parts: Vec<Vec<Event>>) -> Vec<Event> {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut all: Vec<Event> = parts.into_iter().flatten().collect();
    all.sort_by_key(event_revision);
    all
}
