//! Feeds raw bytes, as a client sends them after the HTTP/2 preface, to the client
//! HTTP/2 server's connection state machine (`net/src/h2/proto.rs`), cut into reads at a
//! size taken from the input, and answers every request as the server would (headers,
//! DATA, trailers) so the send side and flow control run too. It must never panic: a
//! malformed frame is a GOAWAY or an RST_STREAM.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rivet_net::h2::proto::{Event, Proto, Trailers};

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1) * 7;
    let mut proto = Proto::new(8);
    let mut buffer = BytesMut::new();
    for chunk in input.chunks(step) {
        buffer.extend_from_slice(chunk);
        if proto.receive(&mut buffer).is_err() {
            break;
        }
        for event in std::mem::take(&mut proto.events) {
            match event {
                Event::Request { id, .. } => {
                    proto.send_grpc_headers(id);
                    proto.send_data(id, Bytes::from(vec![1u8; 70_000]), false);
                    proto.send_trailers(id, Trailers::GrpcOk);
                }
                Event::Data { id, end_stream } => {
                    if end_stream {
                        let _ = proto.take_inbound(id);
                    }
                }
                Event::Reset { .. } | Event::PingAck => {}
            }
        }
        proto.out.clear();
    }
    proto.close_all();
});
