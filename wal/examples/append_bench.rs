//! Measures `Wal::append` (one write + one fdatasync per call) for batches of 1 and
//! 64 entries, next to a plain pwrite + fdatasync loop on the same disk for reference, and
//! counts heap allocations per append (steady state should be zero).
//!
//! `cargo run --release -p rivet-wal --example append_bench [DIR] [APPENDS]`
//! DIR defaults to a temporary directory (under $TMPDIR); put it on the disk you care about.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rivet_wal::{Record, RecordKind, Wal, WalOptions};

/// Counts allocations so the benchmark can show that appends do not allocate.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const ENTRY_BYTES: usize = 256;

fn report(label: &str, appends: u64, records_per_append: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "{label:<34} {:>9.0} appends/s {:>8.1} µs/append {:>10.0} records/s",
        appends as f64 / seconds,
        seconds * 1e6 / appends as f64,
        (appends * records_per_append) as f64 / seconds,
    );
}

/// Refills `records` with the next batch: `batch` entries and a hard state.
fn fill<'a>(
    records: &mut Vec<Record<'a>>,
    batch: u64,
    index: &mut u64,
    payload: &'a [u8],
    hard_state: &'a [u8],
) {
    records.clear();
    for _ in 0..batch {
        *index += 1;
        records.push(Record {
            kind: RecordKind::Entry,
            index: *index,
            payload,
        });
    }
    records.push(Record {
        kind: RecordKind::HardState,
        index: 0,
        payload: hard_state,
    });
}

fn bench_wal(dir: &Path, batch: u64, appends: u64) {
    let wal_dir = dir.join(format!("wal-batch-{batch}"));
    let mut wal = Wal::create(&wal_dir, b"bench", WalOptions::default()).expect("create");
    let payload = vec![0x5a_u8; ENTRY_BYTES];
    let hard_state = [7_u8; 24];
    let mut records: Vec<Record<'_>> = Vec::with_capacity(batch as usize + 1);
    let mut index = 0;
    // Warm up: buffers reach their steady capacity.
    for _ in 0..20 {
        fill(&mut records, batch, &mut index, &payload, &hard_state);
        wal.append(&records).expect("append");
    }
    let fsyncs_before = wal.fsync_count();
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..appends {
        fill(&mut records, batch, &mut index, &payload, &hard_state);
        wal.append(&records).expect("append");
    }
    let elapsed = started.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let stats = wal.stats();
    report(
        &format!("wal append, batch {batch} entries + hs"),
        appends,
        batch,
        elapsed,
    );
    println!(
        "    fdatasyncs {} for {appends} appends, segments created {}, heap allocations {allocations} ({:.3}/append)",
        wal.fsync_count() - fsyncs_before,
        stats.segments_created,
        allocations as f64 / appends as f64
    );
}

/// How the baseline's file is prepared.
#[derive(Clone, Copy, Debug)]
enum Baseline {
    /// fallocate: unwritten extents, as the WAL's segments (each first write into a block
    /// converts the extent, which fdatasync must journal).
    Fallocated,
    /// Zeros written and synced beforehand: fdatasync only flushes data.
    Prezeroed,
}

fn bench_pwrite_fdatasync(dir: &Path, bytes: usize, appends: u64, baseline: Baseline) {
    let path = dir.join("baseline");
    let _ = std::fs::remove_file(&path);
    let file = std::fs::File::create(&path).expect("create baseline");
    let len = bytes as u64 * appends;
    match baseline {
        Baseline::Fallocated => {
            // SAFETY: fallocate on a file we own.
            let result = unsafe {
                libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, len as i64)
            };
            assert_eq!(result, 0, "fallocate: {}", std::io::Error::last_os_error());
        }
        Baseline::Prezeroed => file.write_all_at(&vec![0; len as usize], 0).expect("zero"),
    }
    file.sync_all().expect("sync");
    let buf = vec![0x5a_u8; bytes];
    let started = Instant::now();
    let mut offset = 0;
    for _ in 0..appends {
        file.write_all_at(&buf, offset).expect("pwrite");
        file.sync_data().expect("fdatasync");
        offset += bytes as u64;
    }
    report(
        &format!("pwrite+fdatasync {bytes} B, {baseline:?}"),
        appends,
        1,
        started.elapsed(),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let temporary;
    let dir = match args.next() {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            temporary = tempfile::tempdir().expect("tempdir");
            temporary.path().to_path_buf()
        }
    };
    let appends: u64 = args
        .next()
        .map_or(2000, |n| n.parse().expect("APPENDS is a number"));
    std::fs::create_dir_all(&dir).expect("create dir");
    println!(
        "dir {}, {appends} appends each, {ENTRY_BYTES}-byte entries",
        dir.display()
    );
    for (batch, bytes) in [(1, ENTRY_BYTES + 64), (64, 64 * (ENTRY_BYTES + 24) + 64)] {
        bench_wal(&dir, batch, appends);
        bench_pwrite_fdatasync(&dir, bytes, appends, Baseline::Fallocated);
        bench_pwrite_fdatasync(&dir, bytes, appends, Baseline::Prezeroed);
    }
}
