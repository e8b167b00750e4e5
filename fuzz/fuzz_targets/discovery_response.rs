//! Feeds raw bytes, as a discovery service (`--discovery <url>`) would answer, to the
//! decoder of its v2 keys responses (`net/src/discovery.rs`). It must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rivet_net::discovery::v2::decode_response(data);
});
