//! What the entry path costs per put today (issue 17 item 3: zero-copy entries, "or, if
//! measurement shows prost is as cheap on this path, say so with the numbers"): the
//! proposal's encoding of the internal request, every member's decoding of it (prost,
//! copying key and value out of the entry), and the hand-over of key and value to the
//! sequencer, in nanoseconds and heap allocations per entry.
//!
//! A measurement, not a check: it asserts nothing about time and is ignored by default.
//! Run it in release mode:
//!
//! ```text
//! cargo test --release -p rivet-engine --test entry_cost -- --ignored --nocapture
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use prost::Message as _;
use rivet_api::etcdserverpb::PutRequest;
use rivet_api::rivetpb::{
    decode_internal_request, internal_request, internal_request_envelope, InternalRequest,
    InternalRequestEnvelope,
};
use rivet_engine::sequencer::Sequencer;

/// The system allocator, counting allocations (this test binary only).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// rivet-bench's put: a 256-byte value under one of `KEYS` keys, from a client.
const VALUE_BYTES: usize = 256;
const KEYS: usize = 10_000;
const ENTRIES: usize = 200_000;

fn put_entry(i: usize) -> InternalRequest {
    InternalRequest {
        member_id: 0x8e9e_05c5_2164_694d,
        id: 1_000_000 + i as u64,
        request: Some(internal_request::Request::Put(PutRequest {
            key: Bytes::from(format!("key/{:08}", i % KEYS)),
            value: Bytes::from(vec![b'v'; VALUE_BYTES]),
            ..Default::default()
        })),
        caller: None,
    }
}

struct Cost {
    ns: f64,
    allocations: f64,
    bytes: f64,
}

fn measure<T>(inputs: &[T], mut step: impl FnMut(&T)) -> Cost {
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let started = Instant::now();
    for input in inputs {
        step(input);
    }
    let elapsed = started.elapsed();
    let n = inputs.len() as f64;
    Cost {
        ns: elapsed.as_nanos() as f64 / n,
        allocations: (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / n,
        bytes: (ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes) as f64 / n,
    }
}

fn report(what: &str, cost: &Cost) {
    println!(
        "{what:<58} {:>8.0} ns {:>6.2} allocs {:>7.0} bytes per entry",
        cost.ns, cost.allocations, cost.bytes
    );
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn entry_path_cost_per_put() {
    let requests: Vec<InternalRequest> = (0..ENTRIES).map(put_entry).collect();
    let entries: Vec<Vec<u8>> = requests.iter().map(|r| r.encode_to_vec()).collect();
    let decoded: Vec<InternalRequest> = entries
        .iter()
        .map(|e| decode_internal_request(e).expect("decode"))
        .collect();
    println!(
        "entry: {} bytes (key {} bytes, value {VALUE_BYTES} bytes), {ENTRIES} entries over {KEYS} keys",
        entries[0].len(),
        format!("key/{:08}", 0).len()
    );
    // What `WriteTxn::put` keeps of the request: the key three times (undo, index,
    // mutation) and the value once (the head); `Bytes` clones, the first of which
    // promotes a `Bytes` made from a `Vec` to a shared one (one allocation).
    let hand_over = |put: &PutRequest| {
        black_box((put.key.clone(), put.key.clone(), put.key.clone()));
        black_box(put.value.clone());
    };

    for round in 0..3 {
        println!("round {round}");
        // Fresh entries each round, as raft hands them over (made outside the timing).
        let owned: Vec<Bytes> = entries.iter().map(|e| Bytes::from(e.clone())).collect();
        // The leader's proposal (raft/ready.rs `propose`).
        report(
            "encode InternalRequest (proposal, leader only)",
            &measure(&requests, |r| {
                black_box(r.encode_to_vec());
            }),
        );
        // Every member's apply today: `decode_internal_request` from the entry's `&[u8]`
        // (prost copies key and value out of it), then the hand-over to the sequencer.
        report(
            "today: decode_internal_request(&[u8]) + hand-over",
            &measure(&entries, |e| {
                let request = decode_internal_request(e).expect("decode");
                if let Some(internal_request::Request::Put(put)) = &request.request {
                    hand_over(put);
                }
                black_box(request);
            }),
        );
        // The same with the entry moved into a `Bytes`: prost then slices key and value
        // out of it (no copy), as a zero-copy format would.
        report(
            "prost zero-copy: Envelope::decode(Bytes) + hand-over",
            &measure(&owned, |e| {
                let envelope = InternalRequestEnvelope::decode(e.clone()).expect("decode");
                if let Some(internal_request_envelope::Request::Put(put)) = &envelope.request {
                    hand_over(put);
                }
                black_box(envelope);
            }),
        );
        // For scale: the sequencer's whole put (index, revision, lease, mutation).
        let mut sequencer = Sequencer::new();
        report(
            "Sequencer::apply_put (for scale, not entry decoding)",
            &measure(&decoded, |r| {
                if let Some(internal_request::Request::Put(put)) = &r.request {
                    black_box(sequencer.apply_put(put));
                }
            }),
        );
    }
}
