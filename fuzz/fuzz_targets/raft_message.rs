//! Raft messages arrive from peers as protobuf bytes; decoding them, and the snapshot
//! info a snapshot message carries, must not panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use protobuf::Message as _;

fuzz_target!(|data: &[u8]| {
    let mut message = raft::prelude::Message::default();
    if message.merge_from_bytes(data).is_ok() {
        let _ = rivet_api::rivetpb::SnapshotInfo::decode(message.get_snapshot().data.as_ref());
    }
    let _ = rivet_api::rivetpb::CheckpointMarker::decode(data);
    let _ = rivet_api::rivetpb::WalMetadata::decode(data);
});
