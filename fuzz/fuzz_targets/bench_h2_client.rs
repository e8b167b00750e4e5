//! Feeds raw bytes, as a server's side of an HTTP/2 connection, to rivet-bench's lean
//! client (`bench/src/h2c.rs`, `Conn::receive`), cut into reads at a size taken from the
//! input, with calls started before and between reads (bodies larger than the default
//! windows and frame size, so flow control runs too). It must answer every call or fail
//! the connection, never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rivet_bench::h2c::Conn;
use rivet_bench::lean::Method3;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1) * 7;
    let mut conn: Conn<u32> = Conn::new("127.0.0.1:2379", Some("token"));
    let mut started = 0u32;
    let mut buffer = Vec::new();
    for piece in input.chunks(step) {
        let method = match started % 3 {
            0 => Method3::Put,
            1 => Method3::Range,
            _ => Method3::Txn,
        };
        let body = if started % 4 == 3 {
            Bytes::from(vec![0u8; 70_000])
        } else {
            Bytes::from_static(&[0, 0, 0, 0, 0])
        };
        conn.start(started, method, body);
        started += 1;
        buffer.extend_from_slice(piece);
        match conn.receive(&buffer) {
            Ok(used) => {
                assert!(used <= buffer.len());
                buffer.drain(..used);
            }
            Err(_) => {
                assert_eq!(conn.in_flight(), 0);
                break;
            }
        }
        conn.completed.clear();
        conn.out.clear();
    }
});
