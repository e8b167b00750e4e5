//! The auth store is in checkpoints and snapshots (`rivetpb.AuthStoreState`, users and
//! roles as `authpb.User`/`authpb.Role` bytes) and its requests in raft entries
//! (`rivetpb.AuthRequest`). Whatever the bytes, decoding must not panic, a decoded store
//! must encode back to a store that decodes equal, and applying any request to it must not
//! panic (a panic on apply would stop every replica at once).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rivet_api::rivetpb::AuthRequest;
use rivet_engine::auth::perms::Access;
use rivet_engine::auth::{AuthInfo, AuthState, AuthStore};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(state) = AuthState::decode(data) else {
            return;
        };
        let again = AuthState::decode(&state.encode()).expect("re-decodes");
        assert_eq!(again, state);
        for user in state.users() {
            let name = String::from_utf8_lossy(&user.user.name).into_owned();
            let caller = AuthInfo::new(name, state.revision());
            let _ = state.check_range(&caller, b"a", b"\0", Access::Read);
            let _ = state.check_range(&caller, b"", b"", Access::Write);
        }
    } else {
        let Ok(request) = AuthRequest::decode(data) else {
            return;
        };
        let mut store = AuthStore::new();
        store.user_add("root", bytes::Bytes::new(), None).expect("root");
        store.user_grant_role("root", "root").expect("root role");
        store.auth_enable().expect("enable");
        let _ = store.apply(&request, 1);
        let state = store.snapshot();
        let again = AuthState::decode(&state.encode()).expect("re-decodes");
        assert_eq!(&again, state.as_ref());
    }
});
