//! Feeds raw bytes, as a gateway request body would bring them, to the JSON gateway's
//! reader (`net/src/gateway/json.rs`): Go's decoder cut into reads at sizes taken from the
//! input, then jsonpb's rules and pbjson for a few request types. It must never panic; a
//! value it returns must be valid JSON by its own scanner, and reading the body in one
//! piece must give the same values as reading it in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_api::etcdserverpb::{LeaseKeepAliveRequest, RangeRequest, TxnRequest, WatchRequest};
use rivet_net::gateway::json::{check_valid, read_message, Decoder, Next};

fn values(input: &[u8], step: usize) -> Vec<Next> {
    let mut decoder = Decoder::default();
    let mut found = Vec::new();
    let mut chunks = input.chunks(step.max(1)).peekable();
    loop {
        let ended = chunks.peek().is_none();
        match decoder.next_value(ended) {
            Next::More => match chunks.next() {
                Some(chunk) => decoder.feed(chunk),
                None => unreachable!("the decoder asked for more after the end"),
            },
            Next::Value(text) => {
                assert!(check_valid(&text).is_ok(), "{text:?} is not one value");
                found.push(Next::Value(text));
            }
            other => {
                found.push(other);
                return found;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let found = values(input, usize::from(step));
    assert_eq!(found, values(input, input.len().max(1)));
    for value in &found {
        if let Next::Value(text) = value {
            let _ = read_message::<RangeRequest>("etcdserverpb.RangeRequest", text);
            let _ = read_message::<TxnRequest>("etcdserverpb.TxnRequest", text);
            let _ = read_message::<WatchRequest>("etcdserverpb.WatchRequest", text);
            let _ =
                read_message::<LeaseKeepAliveRequest>("etcdserverpb.LeaseKeepAliveRequest", text);
        }
    }
});
