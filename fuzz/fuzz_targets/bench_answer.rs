//! Feeds raw bytes, as a server's answer body would carry them, to rivet-bench's lean
//! gRPC client's answer check (`bench/src/lean.rs`, `decode`): the gRPC frame header,
//! then the message decoded as a put, range or txn answer (the first byte picks which).
//! It must answer Ok or an error for every input, never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rivet_bench::lean::{decode, Method3};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, frame)) = data.split_first() else {
        return;
    };
    let method = match pick % 3 {
        0 => Method3::Put,
        1 => Method3::Range,
        _ => Method3::Txn,
    };
    let _ = decode(method, Bytes::copy_from_slice(frame));
});
