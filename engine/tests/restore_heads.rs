//! The heads a shard streams to the raft core at start, to rebuild the sequencer: in
//! chunks of at most `RESTORE_CHUNK_KEYS` keys, read one after the other from where the
//! last one ended, every live key exactly once, in key order, with its newest version;
//! deleted keys are left out. Checked on a shard reopened at a checkpoint, as a restart
//! opens it, with more keys than two chunks hold. The values are not streamed: a
//! sequencer restored from the heads and the shard's segments reads each one from its
//! page record, byte for byte.

use std::collections::BTreeMap;

use bytes::Bytes;
use rivet_engine::keyspace::{Head, Mutation};
use rivet_engine::limits::RESTORE_CHUNK_KEYS;
use rivet_engine::messages::{ApplyBatch, ApplyMessage, CheckpointRequest};
use rivet_engine::page::PageOptions;
use rivet_engine::sequencer::{Sequencer, StoredHead};
use rivet_engine::shard::Shard;

const OPTIONS: PageOptions = PageOptions {
    segment_bytes: 1 << 20,
};

#[test]
fn heads_stream_every_live_key_once_in_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut shard = Shard::open(dir.path(), 0, 0, OPTIONS).expect("open");
    let mut heads: BTreeMap<Bytes, Head> = BTreeMap::new();
    let mut revision = 1;
    let mut index = 0;
    let keys = 2 * RESTORE_CHUNK_KEYS + 1000;
    // Keys written in an order unrelated to key order, 100 per revision; then a second
    // version of every third key and a delete of every seventh.
    let key_of = |n: usize| Bytes::from(format!("k{:06}", (n * 7919) % keys));
    let mut batches = Vec::new();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(100) {
        revision += 1;
        index += 1;
        let mutations = chunk
            .iter()
            .map(|&n| {
                let head = Head {
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease: 0,
                    value: Bytes::from(format!("v{n}")),
                };
                heads.insert(key_of(n), head.clone());
                Mutation::Put {
                    key: key_of(n),
                    head,
                }
            })
            .collect();
        batches.push(ApplyBatch {
            index,
            revision,
            mutations,
            ..Default::default()
        });
    }
    revision += 1;
    index += 1;
    let mut mutations = Vec::new();
    for n in 0..keys {
        let key = key_of(n);
        if n % 7 == 0 {
            heads.remove(&key);
            mutations.push(Mutation::Delete { key, revision });
        } else if n % 3 == 0 {
            let old = heads[&key].clone();
            let head = Head {
                create_revision: old.create_revision,
                mod_revision: revision,
                version: 2,
                lease: 0,
                value: Bytes::from(format!("second {n}")),
            };
            heads.insert(key.clone(), head.clone());
            mutations.push(Mutation::Put { key, head });
        }
    }
    batches.push(ApplyBatch {
        index,
        revision,
        mutations,
        ..Default::default()
    });
    for batch in batches {
        shard.handle_apply(ApplyMessage::Batch(batch));
    }
    shard.handle_apply(ApplyMessage::Checkpoint(CheckpointRequest {
        index,
        term: 1,
        revision,
        compact_revision: -1,
        seal: false,
    }));
    shard.handle_apply(ApplyMessage::CheckpointRecorded { index });
    drop(shard);

    let shard = Shard::open(dir.path(), 0, index, OPTIONS).expect("reopen");
    let segments = shard.segment_views().expect("segments");
    let mut streamed: Vec<(Bytes, StoredHead)> = Vec::new();
    let mut chunks = 0;
    let mut after: Option<Bytes> = None;
    loop {
        let chunk = shard.heads_after(after.as_deref()).expect("heads");
        assert!(chunk.len() <= RESTORE_CHUNK_KEYS, "{} keys", chunk.len());
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        chunks += 1;
        streamed.extend(chunk);
    }
    assert_eq!(chunks, heads.len().div_ceil(RESTORE_CHUNK_KEYS));
    assert_eq!(streamed.len(), heads.len());
    for ((key, head), (want_key, want)) in streamed.iter().zip(&heads) {
        assert_eq!(key, want_key);
        assert_eq!(
            (head.create_revision, head.mod_revision, head.version),
            (want.create_revision, want.mod_revision, want.version),
            "key {key:?}"
        );
    }
    // The sequencer rebuilt from them, with the values left in the page file; the shard
    // closed and its files gone (its mappings keep the records).
    let mut sequencer = Sequencer::restore(revision, -1);
    sequencer.restore_segments(0, segments);
    for (key, head) in streamed {
        sequencer.restore_stored_key(0, key, head);
    }
    sequencer.release_unused_segments();
    drop(shard);
    drop(dir);
    let restored: BTreeMap<Bytes, Head> = sequencer
        .heads()
        .map(|(key, head)| (key.clone(), head))
        .collect();
    assert_eq!(restored, heads);
}
