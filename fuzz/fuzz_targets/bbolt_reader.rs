//! Fuzzes the bbolt reader and etcd's schema on top of it: arbitrary bytes as an etcd
//! backend file. Opening, checking, walking every bucket (nested ones too), decoding
//! etcd's buckets and computing the snapshot status must never panic or loop; damage is
//! an error.
//!
//! The first input byte picks a mode: odd bytes fix up both meta checksums first (so
//! that libFuzzer gets past them to the pages), even bytes leave the file as it is. The
//! rest is the file. Seeds: `fuzz/seeds/bbolt_reader/` (an etcd 3.4 snapshot and a file
//! rivet's writer made, each behind a mode byte).
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run bbolt_reader fuzz/seeds/bbolt_reader`

#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_engine::etcd_backend::bbolt::format::{
    fnv1a_64, read_u32, write_u64, META_BYTES, META_CHECKSUM_OFFSET, META_OFFSET,
    META_PAGE_SIZE_OFFSET,
};
use rivet_engine::etcd_backend::bbolt::{BucketRef, Db};
use rivet_engine::etcd_backend::schema::{status, Backend};

fn fix_checksum(file: &mut [u8], page: usize) {
    let start = page + META_OFFSET;
    // The whole meta must be there, checksum field included.
    if file.len() < start + META_BYTES {
        return;
    }
    let Some(meta) = file.get(start..start + META_CHECKSUM_OFFSET) else {
        return;
    };
    let sum = fnv1a_64(meta);
    if let Some(meta) = file.get_mut(start..) {
        write_u64(meta, META_CHECKSUM_OFFSET, sum);
    }
}

fn walk(db: &Db<&[u8]>, bucket: &BucketRef, depth: usize) {
    for entry in db.cursor(bucket) {
        let Ok(entry) = entry else { return };
        assert!(entry.key.len() <= db.size() as usize);
        if entry.is_bucket && depth < 8 {
            if let Ok((child, _)) = BucketRef::from_value(&entry.value, entry.page) {
                walk(db, &child, depth + 1);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 == 1 {
        let page_size = read_u32(&file, META_OFFSET + META_PAGE_SIZE_OFFSET)
            .filter(|size| size.is_power_of_two() && (1024..=65536).contains(size))
            .unwrap_or(4096) as usize;
        fix_checksum(&mut file, 0);
        fix_checksum(&mut file, page_size);
    }
    let file = file.as_slice();
    if let Ok(db) = Db::open(file) {
        let _ = db.check();
        let _ = status(&db);
        walk(&db, &db.root(), 0);
    }
    if let Ok(backend) = Backend::open(file) {
        let _ = backend.state();
        if let Ok(versions) = backend.key_versions() {
            for version in versions {
                if version.is_err() {
                    break;
                }
            }
        }
    }
});
