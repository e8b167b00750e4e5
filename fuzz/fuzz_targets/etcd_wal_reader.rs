//! Fuzzes the etcd 3.4 WAL reader (`rivet_engine::etcd_wal`) and the translation of
//! etcd's entries into rivet's: arbitrary bytes as one etcd WAL file. Decoding must
//! never panic or loop; damage is an error, a torn tail is cut.
//!
//! The first input byte picks the index the entries are kept after (the backend's
//! consistent index); the rest is the file. Frames and CRCs stop random bytes early, so
//! the seed is a real file: `fuzz/seeds/etcd_wal_reader/` holds a WAL etcd 3.4.23 wrote
//! (one member: its bootstrap, puts, a lease, a delete; cut after its last record)
//! behind the byte 10.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run etcd_wal_reader fuzz/seeds/etcd_wal_reader`

#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_engine::etcd_datadir::translate_entry;
use rivet_engine::etcd_wal::decode_bytes;

fuzz_target!(|data: &[u8]| {
    let Some((&after, file)) = data.split_first() else {
        return;
    };
    if let Ok(log) = decode_bytes(file, u64::from(after)) {
        for entry in &log.entries {
            assert!(entry.index > u64::from(after));
            let _ = translate_entry(entry);
        }
    }
});
