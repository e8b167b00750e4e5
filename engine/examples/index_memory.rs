//! Heap cost of the KeyIndex: inserts 1,000,000 keys, then one extra version of each,
//! and reports bytes per key and per version, measured by a counting global allocator.
//!
//! `cargo run --release -p rivet-engine --example index_memory [KEYS]`
//!
//! Three figures per step:
//! - requested: bytes the index asked the allocator for (what the data structure costs);
//! - usable: `malloc_usable_size` of those blocks (glibc rounds small requests up to
//!   multiples of 16, minimum 24);
//! - RSS: the process's resident memory (adds glibc's 8-byte chunk headers and
//!   fragmentation; the closest to what an operator sees).
//!
//! Key bytes themselves are payload, not overhead: the "overhead per key" subtracts them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use rivet_engine::keyspace::RangeEnd;
use rivet_engine::mvcc::KeyIndex;
use rivet_engine::page::PagePtr;

struct Counting;

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static USABLE: AtomicIsize = AtomicIsize::new(0);

fn usable(ptr: *mut u8) -> isize {
    // SAFETY: `ptr` is a live block from the System allocator (glibc malloc).
    let bytes = unsafe { libc::malloc_usable_size(ptr.cast()) };
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

fn size(layout: Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: forwards to System and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            REQUESTED.fetch_add(size(layout), Ordering::Relaxed);
            USABLE.fetch_add(usable(ptr), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            REQUESTED.fetch_add(size(layout), Ordering::Relaxed);
            USABLE.fetch_add(usable(ptr), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(size(layout), Ordering::Relaxed);
        USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_usable = usable(ptr);
        // SAFETY: forwarded.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            let new_size = isize::try_from(new_size).unwrap_or(isize::MAX);
            REQUESTED.fetch_add(new_size - size(layout), Ordering::Relaxed);
            USABLE.fetch_add(usable(new) - old_usable, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Usage {
    requested: isize,
    usable: isize,
    rss: isize,
}

fn rss_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn usage() -> Usage {
    Usage {
        requested: REQUESTED.load(Ordering::Relaxed),
        usable: USABLE.load(Ordering::Relaxed),
        rss: rss_bytes(),
    }
}

fn per(delta: isize, count: usize) -> f64 {
    delta as f64 / count as f64
}

fn report(label: &str, before: Usage, after: Usage, count: usize, payload: usize) {
    let payload = isize::try_from(payload).unwrap_or(0);
    println!(
        "{label:<44} requested {:6.1} B   usable {:6.1} B   RSS {:6.1} B",
        per(after.requested - before.requested - payload, count),
        per(after.usable - before.usable - payload, count),
        per(after.rss - before.rss - payload, count),
    );
}

fn ptr_of(index: usize, version: u32) -> PagePtr {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    PagePtr::new(index / 100_000 + version * 64, (index % 100_000) * 64)
}

/// A deterministic shuffle (xorshift), so runs are comparable.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for index in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let other = usize::try_from(state % (index as u64 + 1)).unwrap_or(0);
        items.swap(index, other);
    }
}

fn run(label: &str, keys: &[Vec<u8>]) {
    let count = keys.len();
    let key_bytes: usize = keys.iter().map(Vec::len).sum();
    let mut index = KeyIndex::new();
    let start = usage();
    let timer = Instant::now();
    for (position, key) in keys.iter().enumerate() {
        let revision = i64::try_from(position).unwrap_or(0) + 1;
        index.put(key, revision, ptr_of(position, 0));
    }
    let put_new = timer.elapsed();
    let one_version = usage();
    let timer = Instant::now();
    let base = i64::try_from(count).unwrap_or(0);
    for (position, key) in keys.iter().enumerate() {
        let revision = base + i64::try_from(position).unwrap_or(0) + 1;
        index.put(key, revision, ptr_of(position, 1));
    }
    let put_version = timer.elapsed();
    let two_versions = usage();
    let timer = Instant::now();
    let mut found = 0_usize;
    for key in keys {
        found += usize::from(index.get(key, base).is_some());
    }
    let get = timer.elapsed();
    assert_eq!(found, count);
    let timer = Instant::now();
    let scanned = index.count(b"\0", &RangeEnd::FromKey, base);
    let scan = timer.elapsed();
    assert_eq!(scanned, count);

    println!(
        "== {label}: {count} keys, {:.1} key bytes on average",
        per(isize::try_from(key_bytes).unwrap_or(0), count)
    );
    report(
        "overhead per key (1 version, key bytes excluded)",
        start,
        one_version,
        count,
        key_bytes,
    );
    report("per extra version", one_version, two_versions, count, 0);
    let nanos = |elapsed: std::time::Duration| elapsed.as_nanos() as f64 / count as f64;
    println!(
        "time per op: put new key {:.0} ns, put 2nd version {:.0} ns, get {:.0} ns, range scan {:.1} ns/key",
        nanos(put_new),
        nanos(put_version),
        nanos(get),
        nanos(scan)
    );
    assert_eq!(index.version_count(), 2 * count);
    let timer = Instant::now();
    index.compact(base + 1);
    println!(
        "compact (drops ~1 version per key): {:.0} ms",
        timer.elapsed().as_secs_f64() * 1e3
    );
    drop(index);
}

/// For comparison: the obvious layout, `BTreeMap<Box<[u8]>, Vec<(i64, PagePtr)>>`.
fn run_baseline(keys: &[Vec<u8>]) {
    let count = keys.len();
    let key_bytes: usize = keys.iter().map(Vec::len).sum();
    let mut map: std::collections::BTreeMap<Box<[u8]>, Vec<(i64, PagePtr)>> =
        std::collections::BTreeMap::new();
    let start = usage();
    for (position, key) in keys.iter().enumerate() {
        let revision = i64::try_from(position).unwrap_or(0) + 1;
        map.entry(key.as_slice().into())
            .or_default()
            .push((revision, ptr_of(position, 0)));
    }
    let one_version = usage();
    let timer = Instant::now();
    let mut found = 0_usize;
    for key in keys {
        found += usize::from(map.contains_key(key.as_slice()));
    }
    let get = timer.elapsed();
    assert_eq!(found, count);
    println!("== baseline BTreeMap<Box<[u8]>, Vec<(i64, PagePtr)>>, same keys");
    report(
        "overhead per key (1 version, key bytes excluded)",
        start,
        one_version,
        count,
        key_bytes,
    );
    println!(
        "time per op: get {:.0} ns",
        get.as_nanos() as f64 / count as f64
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let Some(order) = args.next() else {
        // One process per measurement, so that RSS starts from the same point each time.
        let exe = std::env::current_exe().expect("current_exe");
        for order in [
            "ascending",
            "random",
            "baseline-ascending",
            "baseline-random",
        ] {
            let status = std::process::Command::new(&exe)
                .arg(count.to_string())
                .arg(order)
                .status()
                .expect("spawn");
            assert!(status.success(), "{order}: {status}");
        }
        return;
    };
    let mut keys: Vec<Vec<u8>> = (0..count)
        .map(|index| format!("/registry/pods/ns-{:02}/pod-{index:07}", index % 100).into_bytes())
        .collect();
    keys.sort_unstable();
    if order.ends_with("random") {
        shuffle(&mut keys);
    }
    match order.as_str() {
        "ascending" => run("keys inserted in ascending order", &keys),
        "random" => run("keys inserted in random order", &keys),
        "baseline-ascending" | "baseline-random" => {
            println!("({order})");
            run_baseline(&keys);
        }
        other => {
            panic!("unknown order {other}: ascending, random, baseline-ascending, baseline-random")
        }
    }
}
