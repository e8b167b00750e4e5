//! Feeds raw bytes, as a client connection would send them, to the `:authority` filter
//! (`net/src/authority.rs`), cut into reads at sizes taken from the input, after the
//! HTTP/2 preface. It must never panic and never hold more than it was given; a header
//! block it rewrites must still parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_net::authority::{rewrite_authority, AuthorityFilter};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut filter = AuthorityFilter::new();
    filter.feed(PREFACE);
    let mut given = PREFACE.len();
    let mut taken = 0;
    for read in input.chunks(step) {
        filter.feed(read);
        given += read.len();
        taken += filter.output().split().len();
    }
    // Rewrites only shrink URL authorities... unless a Huffman-coded value grows when
    // written raw, so bound the output loosely: it comes from the input.
    assert!(taken <= given * 2 + 64, "{taken} bytes out of {given}");
    // The header-block rewriter alone, on the whole input: a rewritten block parses
    // again and has nothing left to rewrite.
    if let Some(block) = rewrite_authority(input) {
        assert_eq!(rewrite_authority(&block), None);
    }
});
