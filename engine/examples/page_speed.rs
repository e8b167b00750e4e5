//! Page file speed: append, random read (with CRC check), checkpoint, and reopen with
//! the index rebuilt from the records — the restart path.
//!
//! `cargo run --release -p rivet-engine --example page_speed [RECORDS] [VALUE_BYTES] [DIR]`
//!
//! A benchmark, not a test: the numbers depend on the machine and its page cache.

use std::time::Instant;

use rivet_engine::mvcc::KeyIndex;
use rivet_engine::page::{Checkpoint, KeyRecord, PageFile, PageOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let value_bytes: usize = args.next().and_then(|arg| arg.parse().ok()).unwrap_or(100);
    let parent = args
        .next()
        .unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let dir = tempfile::tempdir_in(parent).expect("tempdir");
    let options = PageOptions::default();
    let value = vec![0x5A_u8; value_bytes];
    let keys: Vec<Vec<u8>> = (0..count)
        .map(|index| format!("/registry/pods/ns-{:02}/pod-{index:07}", index % 100).into_bytes())
        .collect();

    let (mut page_file, _) = PageFile::open(dir.path(), options, 0, |_, _| {}).expect("open");
    let timer = Instant::now();
    let mut ptrs = Vec::with_capacity(count);
    for (index, key) in keys.iter().enumerate() {
        let revision = i64::try_from(index).unwrap_or(0) + 1;
        let record = KeyRecord {
            key,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
            value: Some(&value),
        };
        ptrs.push(page_file.append(&record).expect("append"));
    }
    let append = timer.elapsed();
    let bytes = page_file.size_bytes();

    let timer = Instant::now();
    let checkpoint = Checkpoint {
        applied_index: 1,
        revision: i64::try_from(count).unwrap_or(0),
        compact_revision: 0,
    };
    page_file.checkpoint(&checkpoint).expect("checkpoint");
    let sync = timer.elapsed();

    // Random reads, in a deterministic order.
    let mut order: Vec<usize> = (0..count).collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for index in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(
            index,
            usize::try_from(state % (index as u64 + 1)).unwrap_or(0),
        );
    }
    let timer = Instant::now();
    let mut checksum = 0_usize;
    for index in &order {
        let view = page_file.read(ptrs[*index]).expect("read");
        checksum = checksum.wrapping_add(view.value.map_or(0, <[u8]>::len));
    }
    let read = timer.elapsed();
    assert_eq!(checksum, count * value_bytes);
    drop(page_file);

    let timer = Instant::now();
    let mut index = KeyIndex::new();
    let (_page_file, found) = PageFile::open(dir.path(), options, 1, |ptr, view| {
        index.put(view.key, view.mod_revision, ptr);
    })
    .expect("reopen");
    let reopen = timer.elapsed();
    assert_eq!(found, Some(checkpoint));
    assert_eq!(index.key_count(), count);

    let per = |elapsed: std::time::Duration| elapsed.as_nanos() as f64 / count as f64;
    let record_bytes = 48 + keys[0].len() + value_bytes;
    println!(
        "{count} records of ~{record_bytes} bytes ({value_bytes}-byte values), {:.0} MiB of segments",
        bytes as f64 / 1048576.0
    );
    println!(
        "append: {:.0} ns/record ({:.0} MB/s)",
        per(append),
        (count * record_bytes) as f64 / append.as_secs_f64() / 1e6
    );
    println!(
        "checkpoint (sync everything): {:.0} ms",
        sync.as_secs_f64() * 1e3
    );
    println!("random read incl. CRC check: {:.0} ns/record", per(read));
    println!(
        "reopen + rebuild index: {:.0} ms ({:.0} ns/record)",
        reopen.as_secs_f64() * 1e3,
        per(reopen)
    );
}
