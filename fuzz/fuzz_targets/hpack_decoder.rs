//! Feeds raw bytes to the client HTTP/2 server's HPACK decoder (`net/hpack/`, re-exported as `rivet_net::h2::hpack`) as
//! successive header blocks of one connection, cut at a size taken from the input. It must
//! never panic, and the dynamic table must stay within its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_net::h2::hpack::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut decoder = Decoder::new(4096);
    for block in input.chunks(step) {
        let _ = decoder.decode(block, |name, value| {
            let _ = (name.len(), value.len());
        });
        assert!(decoder.table_size() <= 4096);
    }
});
