//! Raft messages arrive from peers as protobuf bytes; decoding them, the snapshot info a
//! snapshot message carries, and the check of their entries before raft sees them
//! (`rivet_engine::raft::validate`) must not panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use protobuf::Message as _;

fuzz_target!(|data: &[u8]| {
    let mut message = raft::prelude::Message::default();
    if message.merge_from_bytes(data).is_ok() {
        let _ = rivet_api::rivetpb::SnapshotInfo::decode(message.get_snapshot().data.as_ref());
        let _ = rivet_engine::raft::validate::message_problem(&message);
    }
    let _ = rivet_api::rivetpb::CheckpointMarker::decode(data);
    let _ = rivet_api::rivetpb::WalMetadata::decode(data);
});
