//! Raft entries carry `rivetpb.InternalRequest`s. Whatever bytes an entry holds, decoding
//! it, checking it the way a proposing member does, and applying what passes to the
//! sequencer must not panic (a panic on apply would stop every replica at once).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rivet_api::rivetpb::{internal_request::Request, InternalRequest};
use rivet_engine::check;
use rivet_engine::sequencer::Sequencer;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = InternalRequest::decode(data) else {
        return;
    };
    let mut sequencer = Sequencer::new();
    match &request.request {
        Some(Request::Put(put)) => {
            if check::check_put(put).is_ok() {
                let _ = sequencer.apply_put(put);
            }
        }
        Some(Request::DeleteRange(delete)) => {
            if check::check_delete(delete).is_ok() {
                let _ = sequencer.apply_delete(delete);
            }
        }
        Some(Request::Txn(txn)) => {
            if check::check_txn(txn, 128).is_ok() {
                let _ = sequencer.apply_txn(txn);
            }
        }
        Some(Request::Compaction(compaction)) => {
            let _ = sequencer.apply_compaction(compaction);
        }
        Some(Request::LeaseGrant(grant)) => {
            let _ = sequencer.apply_lease_grant(grant, 2);
        }
        Some(Request::LeaseRevoke(revoke)) => {
            let _ = sequencer.apply_lease_revoke(revoke);
        }
        Some(Request::Auth(auth)) => {
            let _ = rivet_engine::auth::AuthStore::new().apply(auth, 1);
        }
        _ => {}
    }
});
