//! Feeds raw bytes to the peer transport's frame decoder, as a link or snapshot stream
//! would, cut into reads at sizes taken from the input. It must never panic, an
//! incomplete frame must consume nothing, and whatever it accepts must re-encode to
//! exactly the bytes it consumed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rivet_net::peer::frame::{decode_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so that frames split across reads are covered.
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    'reads: for read in input.chunks(step) {
        buffer.extend_from_slice(read);
        loop {
            let before = buffer.len();
            match decode_frame(&mut buffer) {
                Ok(Some(frame)) => {
                    consumed += before - buffer.len();
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buffer.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(_) => break 'reads,
            }
        }
    }
    let mut encoded = BytesMut::new();
    for frame in &frames {
        encode_frame(&mut encoded, frame);
    }
    assert_eq!(&encoded[..], &input[..consumed], "decoded frames re-encode to their bytes");
});
