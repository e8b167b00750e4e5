//! Tokens arrive in every request's metadata, and JWT keys come from files: checking a
//! token, reading a simple token's index, parsing `--auth-token` and key files must never
//! panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet_engine::auth::jwt::{pem_block, public_key_of, JwtProvider, SignMethod};
use rivet_engine::auth::token::{decompose_token_options, parse_go_duration, simple_token_index};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = simple_token_index(&text);
    let _ = parse_go_duration(&text);
    let _ = decompose_token_options(&text);
    let _ = public_key_of(data);
    let _ = pem_block(data);
    for method in [SignMethod::Rs256, SignMethod::Es256, SignMethod::Es384] {
        let _ = JwtProvider::from_keys(method, data, b"", 0);
        let _ = JwtProvider::from_keys(method, b"", data, 0);
    }
    let provider =
        JwtProvider::from_keys(SignMethod::Hs256, b"", b"fuzz secret", 60_000_000_000)
            .expect("hmac provider");
    let _ = provider.verify(&text, 1_700_000_000);
    if let Ok(token) = provider.sign(&text, 3, 1_700_000_000_000_000_000) {
        assert!(provider.verify(&token, 1_700_000_000).is_some());
    }
});
