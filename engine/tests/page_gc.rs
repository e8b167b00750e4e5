//! Garbage collection of a shard's page file against a reference shard that never
//! collects: the same seeded stream of puts, deletes, multi-key revisions, compactions
//! and checkpoints goes to both; the collected one also runs background passes and
//! defragmentations, interrupted at random steps, and is dropped and reopened (a crash:
//! reopened at the last checkpoint recorded in the "WAL", the batches after it applied
//! again). After every operation both must answer the same ranges at every readable
//! revision and the same history; after a defragmentation the written bytes must come
//! down to the live ones. Segments are 4 KiB so that every path runs constantly.
//!
//! A second test takes a directory through each crash point of a rewrite (new segment
//! written, manifest written under its temporary name, manifest committed, old segment
//! deleted) by copying the files at each point, and checks that every copy opens to the
//! same state and is left without garbage.

use std::path::Path;

use bytes::Bytes;
use rivet_engine::keyspace::{Head, Mutation, RangeEnd};
use rivet_engine::messages::{ApplyBatch, ApplyMessage, CheckpointRequest, RangePart};
use rivet_engine::page::PageOptions;
use rivet_engine::shard::{GcMode, Shard};

const TINY: PageOptions = PageOptions {
    segment_bytes: 4096,
};

/// xorshift64: seeded, so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the sequencer would send: heads per key, the revision, the compaction.
#[derive(Default)]
struct Model {
    revision: i64,
    compact_revision: i64,
    heads: std::collections::BTreeMap<Bytes, Head>,
    index: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            compact_revision: -1,
            ..Model::default()
        }
    }

    /// One revision changing `keys` (puts, or deletes of live keys).
    fn write(&mut self, rng: &mut Rng, keys: &[Bytes]) -> ApplyBatch {
        self.index += 1;
        let revision = self.revision + 1;
        let mut mutations = Vec::new();
        for key in keys {
            if rng.below(4) == 0 && self.heads.contains_key(key) {
                self.heads.remove(key);
                mutations.push(Mutation::Delete {
                    key: key.clone(),
                    revision,
                });
                continue;
            }
            let value_bytes = match rng.below(10) {
                0 => 0,
                1 => 3000,
                _ => rng.below(200) as usize,
            };
            let value = Bytes::from(vec![b'a' + (revision % 26) as u8; value_bytes]);
            let head = match self.heads.get(key) {
                Some(old) => Head {
                    create_revision: old.create_revision,
                    mod_revision: revision,
                    version: old.version + 1,
                    lease: 0,
                    value,
                },
                None => Head {
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease: 0,
                    value,
                },
            };
            self.heads.insert(key.clone(), head.clone());
            mutations.push(Mutation::Put {
                key: key.clone(),
                head,
            });
        }
        if !mutations.is_empty() {
            self.revision = revision;
        }
        ApplyBatch {
            index: self.index,
            revision: self.revision,
            mutations,
            compaction: None,
            ..Default::default()
        }
    }

    fn compact(&mut self, rng: &mut Rng) -> Option<ApplyBatch> {
        let low = self.compact_revision.max(1);
        if self.revision <= low {
            return None;
        }
        let revision = low + 1 + rng.below((self.revision - low) as u64) as i64;
        self.compact_revision = revision;
        self.index += 1;
        Some(ApplyBatch {
            index: self.index,
            revision: self.revision,
            mutations: Vec::new(),
            compaction: Some(revision),
            ..Default::default()
        })
    }

    fn checkpoint(&self, seal: bool) -> CheckpointRequest {
        CheckpointRequest {
            index: self.index,
            term: 1,
            revision: self.revision,
            compact_revision: self.compact_revision,
            seal,
        }
    }
}

fn batch_copy(batch: &ApplyBatch) -> ApplyBatch {
    ApplyBatch {
        index: batch.index,
        revision: batch.revision,
        mutations: batch.mutations.clone(),
        compaction: batch.compaction,
        ..Default::default()
    }
}

/// What a shard answers: every key at every readable revision, and the history.
fn observe(shard: &Shard, model: &Model) -> Vec<String> {
    let mut seen = Vec::new();
    let low = model.compact_revision.max(1);
    // The lowest and the newest readable revisions, and a spread in between.
    let span = model.revision - low;
    let mut revisions: Vec<i64> = (0..6).map(|i| low + span * i / 5).collect();
    revisions.dedup();
    for revision in revisions {
        let part = RangePart {
            key: Bytes::from_static(b"\0"),
            end: RangeEnd::FromKey,
            revision,
            limit: 0,
            count_only: false,
            with_values: true,
        };
        let result = shard.range(&part).expect("range");
        for kv in result.kvs {
            seen.push(format!(
                "@{revision} {:?} c{} m{} v{} {}",
                kv.key,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.value.len()
            ));
        }
    }
    let events = shard
        .history(b"\0", &RangeEnd::FromKey, low, model.revision, true)
        .expect("history")
        .expect("readable records");
    for event in events {
        let kv = event.kv.unwrap_or_default();
        seen.push(format!(
            "event {} {:?} m{} prev {:?}",
            event.r#type,
            kv.key,
            kv.mod_revision,
            event.prev_kv.map(|p| p.mod_revision)
        ));
    }
    seen
}

/// Runs a garbage collection pass synchronously; `crash_after` steps, it stops (the
/// caller then drops the shard). Answers whether it ran to the end, and how many
/// segments it rewrote.
fn gc_pass(
    shard: &mut Shard,
    mode: GcMode,
    budget: usize,
    crash_after: Option<usize>,
) -> (bool, usize) {
    let mut rewritten = 0;
    let mut steps = 0;
    let mut tick = || {
        steps += 1;
        crash_after.is_some_and(|limit| steps > limit)
    };
    if mode == GcMode::Defragment {
        shard.gc_reseal().expect("reseal");
    }
    for key in shard.gc_candidates(mode) {
        if !shard.gc_begin(key).expect("begin") {
            return (true, rewritten);
        }
        loop {
            if tick() {
                return (false, rewritten);
            }
            match shard.gc_step(budget, mode).expect("step") {
                None => return (true, rewritten),
                Some(progress) if progress.done => break,
                Some(_) => {}
            }
        }
        if tick() {
            return (false, rewritten);
        }
        shard.gc_finish().expect("finish");
        rewritten += 1;
        loop {
            if tick() {
                return (false, rewritten);
            }
            if shard.gc_switch_step(budget) {
                break;
            }
        }
    }
    (true, rewritten)
}

struct Member {
    dir: tempfile::TempDir,
    shard: Option<Shard>,
    /// Every batch applied, for the replay after a crash (the WAL's entries).
    log: Vec<ApplyBatch>,
    /// The last checkpoint recorded in the WAL.
    recorded: u64,
    /// A checkpoint written by the shard but not yet recorded.
    pending: Option<u64>,
}

impl Member {
    fn new() -> Member {
        let dir = tempfile::tempdir().expect("dir");
        let shard = Shard::open(dir.path(), 0, 0, TINY).expect("open");
        Member {
            dir,
            shard: Some(shard),
            log: Vec::new(),
            recorded: 0,
            pending: None,
        }
    }

    fn shard(&mut self) -> &mut Shard {
        self.shard.as_mut().expect("open")
    }

    fn apply(&mut self, batch: &ApplyBatch) {
        self.log.push(batch_copy(batch));
        self.shard()
            .handle_apply(ApplyMessage::Batch(batch_copy(batch)));
    }

    fn checkpoint(&mut self, request: CheckpointRequest) {
        if request.index <= self.recorded || Some(request.index) <= self.pending {
            return;
        }
        self.shard().handle_apply(ApplyMessage::Checkpoint(request));
        self.pending = Some(request.index);
    }

    fn record(&mut self) {
        if let Some(index) = self.pending.take() {
            self.recorded = index;
            self.shard()
                .handle_apply(ApplyMessage::CheckpointRecorded { index });
        }
    }

    /// A crash: the shard goes; it is reopened at the recorded checkpoint and the log
    /// after it is applied again.
    fn crash(&mut self) {
        self.shard = None;
        self.pending = None;
        let mut shard = Shard::open(self.dir.path(), 0, self.recorded, TINY).expect("reopen");
        for batch in self.log.iter().filter(|b| b.index > self.recorded) {
            shard.handle_apply(ApplyMessage::Batch(batch_copy(batch)));
        }
        self.shard = Some(shard);
        assert_no_garbage(self.dir.path());
    }
}

/// No file a garbage collection left behind: every relocated segment is named by the
/// manifest, no chain segment of a slot the manifest took over, no temporary manifest.
fn assert_no_garbage(dir: &Path) {
    let manifest = rivet_engine::page::manifest::read_manifest(dir).expect("manifest");
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert_ne!(name, "manifest.tmp", "a temporary manifest was left");
        let Some(stem) = name.strip_suffix(".page") else {
            continue;
        };
        match stem.split_once(".r") {
            Some((slot, generation)) => {
                let slot: u32 = slot.parse().expect("slot");
                let generation: u8 = generation.parse().expect("generation");
                assert_eq!(
                    manifest.state(slot),
                    Some(rivet_engine::page::SlotState::Relocated { generation }),
                    "{name} is not the manifest's segment for its slot"
                );
            }
            None => {
                let slot: u32 = stem.parse().expect("slot");
                assert!(
                    !manifest.replaces_chain(slot),
                    "{name}: the manifest replaced this chain segment"
                );
            }
        }
    }
}

#[test]
fn garbage_collection_and_crashes_change_no_answer() {
    for seed in 1..=8u64 {
        run_model(seed);
    }
}

fn run_model(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut model = Model::new();
    let mut reference = Member::new();
    let mut collected = Member::new();
    let keys: Vec<Bytes> = (0..24)
        .map(|i| Bytes::from(format!("key-{i:02}")))
        .collect();
    let mut defragmented = 0;
    let mut rewritten = 0;
    let mut crashes_in_gc = 0;
    for step in 0..500 {
        match rng.below(100) {
            0..=59 => {
                let count = 1 + rng.below(4) as usize;
                let chosen: Vec<Bytes> = (0..count)
                    .map(|_| keys[rng.below(keys.len() as u64) as usize].clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let batch = model.write(&mut rng, &chosen);
                reference.apply(&batch);
                collected.apply(&batch);
            }
            60..=66 => {
                if let Some(batch) = model.compact(&mut rng) {
                    reference.apply(&batch);
                    collected.apply(&batch);
                }
            }
            67..=76 => {
                let seal = rng.below(3) == 0;
                reference.checkpoint(model.checkpoint(seal));
                collected.checkpoint(model.checkpoint(seal));
                if rng.below(4) != 0 {
                    reference.record();
                    collected.record();
                }
            }
            77..=88 => {
                let mode = if rng.below(3) == 0 {
                    GcMode::Defragment
                } else {
                    GcMode::Background
                };
                let crash_after = (rng.below(3) == 0).then(|| rng.below(12) as usize);
                let budget = 1 + rng.below(8) as usize;
                let (completed, count) = gc_pass(collected.shard(), mode, budget, crash_after);
                rewritten += count;
                if !completed {
                    crashes_in_gc += 1;
                    collected.crash();
                } else if mode == GcMode::Defragment {
                    defragmented += 1;
                }
            }
            89..=94 => collected.crash(),
            _ => {
                // A full defragmentation after a compaction and a sealing checkpoint:
                // what is written comes down to the live bytes.
                if let Some(batch) = model.compact(&mut rng) {
                    reference.apply(&batch);
                    collected.apply(&batch);
                }
                model.index += 1;
                let batch = ApplyBatch {
                    index: model.index,
                    revision: model.revision,
                    mutations: Vec::new(),
                    compaction: None,
                    ..Default::default()
                };
                reference.apply(&batch);
                collected.apply(&batch);
                reference.checkpoint(model.checkpoint(true));
                collected.checkpoint(model.checkpoint(true));
                reference.record();
                collected.record();
                let (completed, count) = gc_pass(collected.shard(), GcMode::Defragment, 64, None);
                assert!(completed);
                rewritten += count;
                let sizes = collected.shard().sizes();
                let segments = collected.shard().page().segment_count() as u64;
                // Left: live records, segment headers, the checkpoint record.
                let overhead = segments * 32 + 40 + 8;
                assert!(
                    sizes.used_bytes <= sizes.live_bytes + overhead,
                    "seed {seed} step {step}: after a defragmentation {sizes:?} in {segments} segments"
                );
                defragmented += 1;
            }
        }
        assert_eq!(
            reference.shard().revision(),
            model.revision,
            "seed {seed} step {step}: the reference shard's revision"
        );
        assert_eq!(
            collected.shard().revision(),
            model.revision,
            "seed {seed} step {step}: the collected shard's revision (applied index {} of {})",
            collected.shard().applied_index(),
            model.index
        );
        let expected = observe(reference.shard(), &model);
        let got = observe(collected.shard(), &model);
        if expected != got {
            let first = expected
                .iter()
                .zip(&got)
                .position(|(a, b)| a != b)
                .unwrap_or(expected.len().min(got.len()));
            panic!(
                "seed {seed} step {step}: answers differ at line {first}:\n  reference: {:?}\n  collected: {:?}",
                expected.get(first),
                got.get(first)
            );
        }
    }
    // Both must also agree after a final crash of the collected member.
    collected.crash();
    assert_eq!(
        observe(reference.shard(), &model),
        observe(collected.shard(), &model),
        "seed {seed}: after the last restart"
    );
    assert!(defragmented > 0, "seed {seed} never defragmented");
    assert!(
        rewritten > 10,
        "seed {seed}: only {rewritten} segments rewritten"
    );
    assert!(
        crashes_in_gc > 0,
        "seed {seed}: no crash inside garbage collection"
    );
}

/// Copies every file of `from` into a fresh directory.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("dir");
    for entry in std::fs::read_dir(from).expect("dir").flatten() {
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
    }
    to
}

#[test]
fn every_crash_point_of_a_rewrite_opens_to_the_same_state() {
    let mut rng = Rng(7);
    let mut model = Model::new();
    let mut member = Member::new();
    let keys: Vec<Bytes> = (0..12).map(|i| Bytes::from(format!("k{i}"))).collect();
    for _ in 0..200 {
        let chosen = vec![keys[rng.below(keys.len() as u64) as usize].clone()];
        let batch = model.write(&mut rng, &chosen);
        member.apply(&batch);
    }
    let batch = model.compact(&mut rng).expect("compaction");
    member.apply(&batch);
    model.index += 1;
    let empty = ApplyBatch {
        index: model.index,
        revision: model.revision,
        mutations: Vec::new(),
        compaction: None,
        ..Default::default()
    };
    member.apply(&empty);
    member.checkpoint(model.checkpoint(true));
    member.record();
    let expected = observe(member.shard(), &model);

    let candidates = member.shard().gc_candidates(GcMode::Defragment);
    assert!(candidates.len() > 3, "{candidates:?}");
    let mut states = Vec::new();
    let dir = member.dir.path().to_path_buf();
    for key in candidates {
        let shard = member.shard.as_mut().expect("open");
        assert!(shard.gc_begin(key).expect("begin"));
        while !shard
            .gc_step(16, GcMode::Defragment)
            .expect("step")
            .expect("runs")
            .done
        {}
        // Before the commit: the new segment is complete, the manifest names the old one
        // (crash point `gc-copied`; `gc-manifest-written` adds the temporary manifest).
        let before = copy_dir(&dir);
        shard.gc_finish().expect("finish");
        // After the commit the old segment file is gone (`gc-deleted`); `gc-committed`
        // is that state with the old file still present.
        let committed = copy_dir(&dir);
        for entry in std::fs::read_dir(before.path()).expect("dir").flatten() {
            let target = committed.path().join(entry.file_name());
            if !target.exists() && entry.file_name() != "manifest" {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
        let copied = copy_dir(before.path());
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".r") && !copied.path().join(&name).exists() {
                std::fs::copy(entry.path(), copied.path().join(&name)).expect("copy");
            }
        }
        let manifest_written = copy_dir(copied.path());
        std::fs::copy(
            dir.join("manifest"),
            manifest_written.path().join("manifest.tmp"),
        )
        .expect("copy");
        states.push(copied);
        states.push(manifest_written);
        states.push(committed);
        while !shard.gc_switch_step(16) {}
        states.push(copy_dir(&dir));
    }
    assert_eq!(observe(member.shard(), &model), expected);
    let sizes = member.shard().sizes();
    let segments = member.shard().page().segment_count() as u64;
    assert!(
        sizes.used_bytes <= sizes.live_bytes + segments * 32 + 48,
        "{sizes:?} in {segments} segments"
    );
    for state in &states {
        let shard =
            Shard::open(state.path(), 0, member.recorded, TINY).expect("open a crash state");
        assert_eq!(observe(&shard, &model), expected, "{:?}", state.path());
        assert_no_garbage(state.path());
    }
}
