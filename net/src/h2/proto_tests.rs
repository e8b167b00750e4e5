//! The connection state machine driven with frames a client would send.

use super::*;

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame_header(&mut out, payload.len(), kind, flags, id);
    out.extend_from_slice(payload);
    out.to_vec()
}

/// A request's header block: POST `path`, gRPC content type.
fn request_block(path: &str) -> Vec<u8> {
    let mut block = BytesMut::new();
    block.extend_from_slice(&[0x83, 0x86]); // :method POST, :scheme http
    block.put_u8(0x04); // :path, literal without indexing
    block.put_u8(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.put_u8(0x0f);
    block.put_u8(31 - 15); // content-type
    block.put_u8(16);
    block.extend_from_slice(b"application/grpc");
    block.to_vec()
}

/// Frames written to the client, as (type, flags, stream, payload).
fn frames(out: &mut BytesMut) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while out.len() >= 9 {
        let length = ((out[0] as usize) << 16) | ((out[1] as usize) << 8) | out[2] as usize;
        let (kind, flags) = (out[3], out[4]);
        let id = u32::from_be_bytes([out[5], out[6], out[7], out[8]]);
        out.advance(9);
        frames.push((kind, flags, id, out.split_to(length).to_vec()));
    }
    frames
}

fn connected() -> Proto {
    let mut proto = Proto::new(100);
    let mut input = BytesMut::from(&frame(SETTINGS, 0, 0, &[])[..]);
    proto.receive(&mut input).unwrap();
    proto.out.clear();
    proto
}

#[test]
fn settings_are_acknowledged_and_ping_answered() {
    let mut proto = Proto::new(100);
    let mut ours = frames(&mut proto.out);
    assert_eq!(ours.remove(0).0, SETTINGS);
    assert_eq!(ours.remove(0).0, WINDOW_UPDATE);
    let mut input = BytesMut::new();
    input.extend_from_slice(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0x10, 0]));
    input.extend_from_slice(&frame(PING, 0, 0, b"12345678"));
    proto.receive(&mut input).unwrap();
    let answer = frames(&mut proto.out);
    assert_eq!(answer[0], (SETTINGS, FLAG_ACK, 0, vec![]));
    assert_eq!(answer[1], (PING, FLAG_ACK, 0, b"12345678".to_vec()));
}

#[test]
fn first_frame_must_be_settings() {
    let mut proto = Proto::new(100);
    proto.out.clear();
    let mut input = BytesMut::from(&frame(PING, 0, 0, b"12345678")[..]);
    assert_eq!(
        proto.receive(&mut input),
        Err(ConnectionError(PROTOCOL_ERROR))
    );
    assert_eq!(frames(&mut proto.out)[0].0, GOAWAY);
}

#[test]
fn request_then_response_with_flow_control() {
    let mut proto = connected();
    let mut input = BytesMut::new();
    input.extend_from_slice(&frame(
        HEADERS,
        FLAG_END_HEADERS,
        1,
        &request_block("/etcdserverpb.KV/Put"),
    ));
    input.extend_from_slice(&frame(DATA, FLAG_END_STREAM, 1, b"hello"));
    proto.receive(&mut input).unwrap();
    let events = std::mem::take(&mut proto.events);
    assert!(matches!(
        &events[0],
        Event::Request { id: 1, head, end_stream: false } if head.path == "/etcdserverpb.KV/Put"
    ));
    assert!(matches!(
        events[1],
        Event::Data {
            id: 1,
            end_stream: true
        }
    ));
    assert_eq!(proto.take_inbound(1).unwrap(), &b"hello"[..]);

    // The client's window is 65535: a 100000-byte body waits for WINDOW_UPDATE.
    proto.send_grpc_headers(1);
    proto.send_data(1, Bytes::from(vec![7u8; 100_000]), false);
    proto.send_trailers(1, Trailers::GrpcOk);
    let sent = frames(&mut proto.out);
    assert_eq!(sent[0].0, HEADERS);
    let data: usize = sent.iter().filter(|f| f.0 == DATA).map(|f| f.3.len()).sum();
    assert_eq!(data, 65_535);
    assert!(sent.iter().all(|f| f.3.len() <= MAX_FRAME_SIZE));
    assert!(proto.is_open(1));

    let mut input = BytesMut::new();
    input.extend_from_slice(&frame(WINDOW_UPDATE, 0, 1, &100_000u32.to_be_bytes()));
    input.extend_from_slice(&frame(WINDOW_UPDATE, 0, 0, &100_000u32.to_be_bytes()));
    proto.receive(&mut input).unwrap();
    let sent = frames(&mut proto.out);
    let data: usize = sent.iter().filter(|f| f.0 == DATA).map(|f| f.3.len()).sum();
    assert_eq!(data, 100_000 - 65_535);
    let last = sent.last().unwrap();
    assert_eq!(
        (last.0, last.1 & FLAG_END_STREAM),
        (HEADERS, FLAG_END_STREAM)
    );
    assert!(!proto.is_open(1));
}

#[test]
fn too_much_data_is_a_flow_control_error() {
    let mut proto = connected();
    let mut input = BytesMut::from(&frame(HEADERS, FLAG_END_HEADERS, 1, &request_block("/x"))[..]);
    proto.receive(&mut input).unwrap();
    // H2_STREAM_WINDOW bytes are allowed; one more frame is not.
    let chunk = vec![0u8; MAX_FRAME_SIZE];
    let mut input = BytesMut::new();
    for _ in 0..(H2_STREAM_WINDOW as usize / MAX_FRAME_SIZE) {
        input.extend_from_slice(&frame(DATA, 0, 1, &chunk));
    }
    input.extend_from_slice(&frame(DATA, 0, 1, &chunk));
    proto.out.clear();
    proto.receive(&mut input).unwrap();
    let sent = frames(&mut proto.out);
    assert!(sent
        .iter()
        .any(|f| f.0 == RST_STREAM && f.2 == 1 && f.3 == FLOW_CONTROL_ERROR.to_be_bytes()));
    assert!(!proto.is_open(1));
}

#[test]
fn streams_over_the_limit_are_refused() {
    let mut proto = Proto::new(1);
    let mut input = BytesMut::from(&frame(SETTINGS, 0, 0, &[])[..]);
    input.extend_from_slice(&frame(HEADERS, FLAG_END_HEADERS, 1, &request_block("/a")));
    input.extend_from_slice(&frame(HEADERS, FLAG_END_HEADERS, 3, &request_block("/b")));
    proto.receive(&mut input).unwrap();
    let sent = frames(&mut proto.out);
    assert!(sent
        .iter()
        .any(|f| f.0 == RST_STREAM && f.2 == 3 && f.3 == REFUSED_STREAM.to_be_bytes()));
    assert!(proto.is_open(1));
}

#[test]
fn continuation_frames_complete_a_block() {
    let mut proto = connected();
    let block = request_block("/etcdserverpb.KV/Range");
    let (a, b) = block.split_at(5);
    let mut input = BytesMut::new();
    input.extend_from_slice(&frame(HEADERS, FLAG_END_STREAM, 1, a));
    input.extend_from_slice(&frame(CONTINUATION, FLAG_END_HEADERS, 1, b));
    proto.receive(&mut input).unwrap();
    assert!(matches!(
        &proto.events[0],
        Event::Request {
            id: 1,
            end_stream: true,
            ..
        }
    ));
    // Another frame in the middle of a block is a connection error.
    let mut proto = connected();
    let mut input = BytesMut::new();
    input.extend_from_slice(&frame(HEADERS, 0, 1, a));
    input.extend_from_slice(&frame(PING, 0, 0, b"12345678"));
    assert_eq!(
        proto.receive(&mut input),
        Err(ConnectionError(PROTOCOL_ERROR))
    );
}

#[test]
fn reset_by_the_client_ends_the_stream() {
    let mut proto = connected();
    let mut input = BytesMut::from(&frame(HEADERS, FLAG_END_HEADERS, 1, &request_block("/x"))[..]);
    input.extend_from_slice(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()));
    proto.receive(&mut input).unwrap();
    assert!(matches!(proto.events.last(), Some(Event::Reset { id: 1 })));
    assert!(!proto.is_open(1));
}

#[test]
fn url_authority_becomes_host_and_port() {
    let head = request_head(vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), b"http://127.0.0.1:2379".to_vec()),
        (b":path".to_vec(), b"/etcdserverpb.KV/Range".to_vec()),
    ])
    .unwrap();
    assert_eq!(head.authority.as_deref(), Some("127.0.0.1:2379"));
    assert!(head.into_request(()).is_some());
    // Uppercase names and connection headers are malformed (RFC 9113 §8.2).
    assert!(request_head(vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":path".to_vec(), b"/".to_vec()),
        (b"Upper".to_vec(), b"x".to_vec()),
    ])
    .is_none());
    assert!(request_head(vec![
        (b":method".to_vec(), b"GET".to_vec()),
        (b":path".to_vec(), b"/".to_vec()),
        (b"connection".to_vec(), b"close".to_vec()),
    ])
    .is_none());
}
