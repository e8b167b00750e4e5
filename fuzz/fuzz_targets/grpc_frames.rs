//! Feeds raw bytes, as a client's gRPC request body would carry them, to the message
//! counter of the metrics (`net/src/grpc_metrics.rs`), cut into frames at sizes taken from
//! the input. It must never panic, and the count must not depend on where the frames cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_net::grpc_metrics::FrameCounter;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut cut = FrameCounter::default();
    let mut total = (0, 0);
    for frame in input.chunks(step) {
        let (messages, bytes) = cut.feed(frame);
        total = (total.0 + messages, total.1 + bytes);
    }
    let whole = FrameCounter::default().feed(input);
    assert_eq!(total, whole);
});
