//! The Range semantics of etcd 3.4 (`etcdserver/apply.go` `Range` over `mvcc` `rangeKeys`),
//! split so that the same rules serve the sequencer (one in-memory view) and the shards
//! (several partial views merged):
//!
//! 1. [`resolve_revision`]: which revision to read, or the mvcc error.
//! 2. [`fetch_limit`]: how many key-values the store must produce.
//! 3. [`finish_range`]: filters, sort, limit and `more` applied after the fetch.

use bytes::Bytes;
use rivet_api::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    RangeRequest, RangeResponse, ResponseHeader,
};
use rivet_api::mvccpb::KeyValue;

use crate::error::EtcdError;

/// The revision a range reads at, given the store's current and compacted revisions
/// (mvcc `rangeKeys`): `requested <= 0` reads the current revision; a future revision and
/// one below the compaction are errors. `compact_revision` is -1 before any compaction.
pub fn resolve_revision(
    requested: i64,
    current_revision: i64,
    compact_revision: i64,
) -> Result<i64, EtcdError> {
    if requested > current_revision {
        return Err(EtcdError::FutureRevision);
    }
    let revision = if requested <= 0 {
        current_revision
    } else {
        requested
    };
    if revision < compact_revision {
        return Err(EtcdError::Compacted);
    }
    Ok(revision)
}

/// How many key-values to fetch from the store (0 = all), as etcd decides it: sorting and
/// revision filters need everything; otherwise one more than the limit, to learn `more`.
pub fn fetch_limit(request: &RangeRequest) -> usize {
    if request.sort_order != SortOrder::None as i32
        || request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0
    {
        return 0;
    }
    if request.limit > 0 {
        request.limit as usize + 1
    } else {
        0
    }
}

/// Whether the store must produce values (sorting by value needs them even for keys_only).
pub fn needs_values(request: &RangeRequest) -> bool {
    !request.keys_only || request.sort_target == SortTarget::Value as i32
}

/// Applies etcd's post-fetch rules to the fetched key-values (in ascending key order) and
/// builds the response. `count` is the number of keys in the range at the read revision,
/// before filters, as etcd reports it. `current_revision` goes in the header.
pub fn finish_range(
    request: &RangeRequest,
    mut kvs: Vec<KeyValue>,
    count: i64,
    current_revision: i64,
) -> RangeResponse {
    if request.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= request.max_mod_revision);
    }
    if request.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= request.min_mod_revision);
    }
    if request.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= request.max_create_revision);
    }
    if request.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= request.min_create_revision);
    }
    let mut order = request.sort_order;
    if request.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        // The store returns keys ascending, so only non-key targets need a default sort.
        order = SortOrder::Ascend as i32;
    }
    if order == SortOrder::Ascend as i32 || order == SortOrder::Descend as i32 {
        let target = request.sort_target;
        let compare = |a: &KeyValue, b: &KeyValue| -> std::cmp::Ordering {
            if target == SortTarget::Version as i32 {
                a.version.cmp(&b.version)
            } else if target == SortTarget::Create as i32 {
                a.create_revision.cmp(&b.create_revision)
            } else if target == SortTarget::Mod as i32 {
                a.mod_revision.cmp(&b.mod_revision)
            } else if target == SortTarget::Value as i32 {
                a.value.cmp(&b.value)
            } else {
                a.key.cmp(&b.key)
            }
        };
        // Stable sorts. Go's sort.Sort is an insertion sort (so stable) up to 12
        // elements; for larger results etcd's order among equal sort keys is that of
        // Go's pdqsort, which we do not reproduce (docs/ARCHITECTURE.md).
        if order == SortOrder::Ascend as i32 {
            kvs.sort_by(compare);
        } else {
            kvs.sort_by(|a, b| compare(b, a));
        }
    }
    let mut more = false;
    if request.limit > 0 && kvs.len() > request.limit as usize {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision: current_revision,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    }
}

/// Merges per-shard results, each ascending by key, into one ascending list, keeping at
/// most `limit` entries (0 = all). Shards own disjoint keys, so there are no ties.
pub fn merge_sorted(parts: Vec<Vec<KeyValue>>, limit: usize) -> Vec<KeyValue> {
    let total: usize = parts.iter().map(Vec::len).sum();
    let keep = if limit == 0 { total } else { total.min(limit) };
    let mut iters: Vec<std::iter::Peekable<std::vec::IntoIter<KeyValue>>> = parts
        .into_iter()
        .map(|p| p.into_iter().peekable())
        .collect();
    let mut merged = Vec::with_capacity(keep);
    while merged.len() < keep {
        let mut pick: Option<(usize, Bytes)> = None;
        for (i, it) in iters.iter_mut().enumerate() {
            let Some(candidate) = it.peek() else {
                continue;
            };
            if pick.as_ref().is_none_or(|(_, best)| candidate.key < *best) {
                pick = Some((i, candidate.key.clone()));
            }
        }
        let Some((i, _)) = pick else { break };
        if let Some(kv) = iters[i].next() {
            merged.push(kv);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, version: i64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version,
            ..Default::default()
        }
    }

    #[test]
    fn revision_rules_follow_mvcc() {
        assert_eq!(resolve_revision(0, 10, -1), Ok(10));
        assert_eq!(resolve_revision(11, 10, -1), Err(EtcdError::FutureRevision));
        assert_eq!(resolve_revision(4, 10, 5), Err(EtcdError::Compacted));
        assert_eq!(resolve_revision(5, 10, 5), Ok(5));
    }

    #[test]
    fn merge_keeps_key_order_and_limit() {
        let merged = merge_sorted(
            vec![vec![kv("a", 1), kv("d", 1)], vec![kv("b", 1), kv("c", 1)]],
            3,
        );
        let keys: Vec<_> = merged.iter().map(|k| k.key.clone()).collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
    }

    #[test]
    fn limit_sets_more_and_sort_by_version_is_stable() {
        let request = RangeRequest {
            limit: 2,
            sort_target: SortTarget::Version as i32,
            sort_order: SortOrder::Descend as i32,
            ..Default::default()
        };
        let response = finish_range(&request, vec![kv("a", 1), kv("b", 2), kv("c", 1)], 3, 9);
        let keys: Vec<_> = response.kvs.iter().map(|k| k.key.clone()).collect();
        assert_eq!(keys, vec!["b", "a"]);
        assert!(response.more);
        assert_eq!(response.count, 3);
    }
}
