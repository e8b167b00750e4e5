//! `--auth-token jwt,pub-key=…,priv-key=…,sign-method=…,ttl=…`: etcd 3.4's JWT tokens
//! (`auth/jwt.go`, `auth/options.go`, golang-jwt v4), signed and checked with `ring`.
//!
//! A token is `base64url(header).base64url(claims).base64url(signature)` with the claims
//! `username`, `revision` (the auth revision when it was issued) and `exp` (Unix seconds,
//! issue time + `ttl`, default 5 minutes). A member checks a token by itself: the
//! signature, the algorithm (must be the configured one), `exp`/`nbf`/`iat` as golang-jwt
//! does, then the two claims. The revision in the token is what the permission checks
//! compare with the store's (`revision of auth store is old` after any auth change).
//!
//! Signing methods, as etcd's `jwtOptions.Key` accepts them: RS256/384/512 and
//! PS256/384/512 (RSA, 2048 bits or more: `ring` refuses smaller keys), ES256/ES384
//! (ECDSA P-256/P-384), HS256/384/512 (the `priv-key` file's bytes are the secret).
//! Not supported: ES512 (`ring` has no P-521; etcd has it) and, as in etcd, EdDSA and
//! `none`. Keys: PEM, private keys PKCS#1 or PKCS#8 (RSA), SEC1 or PKCS#8 (EC), public
//! keys as SubjectPublicKeyInfo or inside a certificate. With only `pub-key` the member
//! verifies tokens but cannot issue them (`auth: token signing attempted with
//! verify-only key`). As in etcd, when both keys are given the private key decides (etcd's
//! match test compares with `&&` and so never fires).

use std::collections::HashMap;
use std::fs;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};

use super::store::AuthInfo;
use crate::error::EtcdError;

/// golang-jwt's signing methods that etcd can be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignMethod {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    Hs256,
    Hs384,
    Hs512,
    EdDsa,
    None,
}

impl SignMethod {
    /// golang-jwt's `GetSigningMethod`.
    pub fn from_name(name: &str) -> Option<SignMethod> {
        Some(match name {
            "RS256" => SignMethod::Rs256,
            "RS384" => SignMethod::Rs384,
            "RS512" => SignMethod::Rs512,
            "PS256" => SignMethod::Ps256,
            "PS384" => SignMethod::Ps384,
            "PS512" => SignMethod::Ps512,
            "ES256" => SignMethod::Es256,
            "ES384" => SignMethod::Es384,
            "ES512" => SignMethod::Es512,
            "HS256" => SignMethod::Hs256,
            "HS384" => SignMethod::Hs384,
            "HS512" => SignMethod::Hs512,
            "EdDSA" => SignMethod::EdDsa,
            "none" => SignMethod::None,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SignMethod::Rs256 => "RS256",
            SignMethod::Rs384 => "RS384",
            SignMethod::Rs512 => "RS512",
            SignMethod::Ps256 => "PS256",
            SignMethod::Ps384 => "PS384",
            SignMethod::Ps512 => "PS512",
            SignMethod::Es256 => "ES256",
            SignMethod::Es384 => "ES384",
            SignMethod::Es512 => "ES512",
            SignMethod::Hs256 => "HS256",
            SignMethod::Hs384 => "HS384",
            SignMethod::Hs512 => "HS512",
            SignMethod::EdDsa => "EdDSA",
            SignMethod::None => "none",
        }
    }
}

/// Why a JWT configuration was refused. Texts are etcd's (golang-jwt's for key parsing).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("auth: invalid auth options")]
    InvalidAuthOptions,
    #[error("auth: missing key data")]
    MissingKey,
    #[error("invalid key: Key must be a PEM encoded PKCS1 or PKCS8 key")]
    KeyMustBePem,
    #[error("key is not a valid RSA private key")]
    NotRsaPrivateKey,
    #[error("key is not a valid RSA public key")]
    NotRsaPublicKey,
    #[error("key is not a valid ECDSA private key")]
    NotEcPrivateKey,
    #[error("key is not a valid ECDSA public key")]
    NotEcPublicKey,
    #[error("unsupported signing method: {0}")]
    Unsupported(String),
}

enum Signer {
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Hmac(hmac::Key),
}

enum Verifier {
    Public(UnparsedPublicKey<Vec<u8>>),
    Hmac(hmac::Key),
}

/// A configured JWT token provider: signs (unless verify-only) and checks tokens.
pub struct JwtProvider {
    method: SignMethod,
    signer: Option<Signer>,
    verifier: Verifier,
    /// Token lifetime in nanoseconds (Go duration; may be 0 or negative).
    ttl_nanos: i64,
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("method", &self.method)
            .field("verify_only", &self.signer.is_none())
            .field("ttl_nanos", &self.ttl_nanos)
            .finish()
    }
}

const TTL_DEFAULT_NANOS: i64 = 5 * 60 * 1_000_000_000;

impl JwtProvider {
    /// etcd's `newTokenProviderJWT` from the options of `--auth-token jwt,...`: `ttl`,
    /// `pub-key`, `priv-key` (file names), `sign-method` (required). Unknown options are
    /// ignored (etcd warns). Option and file errors are etcd's `invalid auth options`.
    pub fn from_options(options: &HashMap<String, String>) -> Result<JwtProvider, JwtError> {
        let option = |name: &str| options.get(name).map(String::as_str).unwrap_or("");
        let ttl_nanos = match option("ttl") {
            "" => TTL_DEFAULT_NANOS,
            text => parse_go_duration(text).ok_or(JwtError::InvalidAuthOptions)?,
        };
        let read = |name: &str| -> Result<Vec<u8>, JwtError> {
            match option(name) {
                "" => Ok(Vec::new()),
                file => fs::read(file).map_err(|_| JwtError::InvalidAuthOptions),
            }
        };
        let public = read("pub-key")?;
        let private = read("priv-key")?;
        let method =
            SignMethod::from_name(option("sign-method")).ok_or(JwtError::InvalidAuthOptions)?;
        JwtProvider::from_keys(method, &public, &private, ttl_nanos)
    }

    /// etcd's `jwtOptions.Key` on key bytes already read.
    pub fn from_keys(
        method: SignMethod,
        public_pem: &[u8],
        private: &[u8],
        ttl_nanos: i64,
    ) -> Result<JwtProvider, JwtError> {
        use SignMethod as M;
        let (signer, verifier) = match method {
            M::Rs256 | M::Rs384 | M::Rs512 | M::Ps256 | M::Ps384 | M::Ps512 => {
                rsa_keys(method, public_pem, private)?
            }
            M::Es256 | M::Es384 => ec_keys(method, public_pem, private)?,
            M::Hs256 | M::Hs384 | M::Hs512 => {
                if private.is_empty() {
                    return Err(JwtError::MissingKey);
                }
                let algorithm = match method {
                    M::Hs256 => hmac::HMAC_SHA256,
                    M::Hs384 => hmac::HMAC_SHA384,
                    _ => hmac::HMAC_SHA512,
                };
                let key = hmac::Key::new(algorithm, private);
                (Some(Signer::Hmac(key.clone())), Verifier::Hmac(key))
            }
            M::Es512 => {
                return Err(JwtError::Unsupported(
                    "ES512 (rivet's crypto library has no P-521 ECDSA)".into(),
                ))
            }
            M::EdDsa => return Err(JwtError::Unsupported("*jwt.SigningMethodEd25519".into())),
            M::None => return Err(JwtError::Unsupported("*jwt.signingMethodNone".into())),
        };
        Ok(JwtProvider {
            method,
            signer,
            verifier,
            ttl_nanos,
        })
    }

    pub fn method(&self) -> SignMethod {
        self.method
    }

    pub fn is_verify_only(&self) -> bool {
        self.signer.is_none()
    }

    /// etcd's `tokenJWT.assign`: a token for `username` at auth `revision`, expiring
    /// `ttl` after `now_unix_nanos`. CPU-heavy for RSA (about a millisecond): call it
    /// off the cores, like bcrypt.
    pub fn sign(
        &self,
        username: &str,
        revision: u64,
        now_unix_nanos: i128,
    ) -> Result<String, EtcdError> {
        let Some(signer) = &self.signer else {
            return Err(EtcdError::Plain(
                "auth: token signing attempted with verify-only key",
            ));
        };
        let exp = (now_unix_nanos + i128::from(self.ttl_nanos)).div_euclid(1_000_000_000);
        // Go marshals both maps with sorted keys.
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.method.name());
        let claims = serde_json::json!({
            "exp": exp as i64,
            "revision": revision,
            "username": username,
        });
        let mut token = URL_SAFE_NO_PAD.encode(header.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes()));
        let signature = match signer {
            Signer::Rsa(key, encoding) => {
                let mut signature = vec![0u8; key.public().modulus_len()];
                key.sign(
                    *encoding,
                    &SystemRandom::new(),
                    token.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| EtcdError::Internal("JWT signing failed".into()))?;
                signature
            }
            Signer::Ecdsa(key) => key
                .sign(&SystemRandom::new(), token.as_bytes())
                .map_err(|_| EtcdError::Internal("JWT signing failed".into()))?
                .as_ref()
                .to_vec(),
            Signer::Hmac(key) => hmac::sign(key, token.as_bytes()).as_ref().to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }

    /// etcd's `tokenJWT.info`: the user and auth revision of a valid token, `None`
    /// otherwise (the caller answers `invalid auth token`). Never panics on any input.
    pub fn verify(&self, token: &str, now_unix_seconds: i64) -> Option<AuthInfo> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.method.name() {
            return None;
        }
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let signed = &token.as_bytes()[..token.rfind('.')?];
        let verified = match &self.verifier {
            Verifier::Public(key) => key.verify(signed, &signature).is_ok(),
            Verifier::Hmac(key) => hmac::verify(key, signed, &signature).is_ok(),
        };
        if !verified || !claims_valid(&claims, now_unix_seconds) {
            return None;
        }
        let username = claims.get("username")?.as_str()?.to_string();
        let revision = claims.get("revision")?.as_f64()?;
        // Go converts the float64 claim with uint64(); out-of-range values are not
        // meaningful revisions, saturate them.
        Some(AuthInfo::new(username, revision as u64))
    }
}

/// One core's memory of JWTs it already checked, so that a client sending the same token
/// on every request pays the signature check once (RS256: ~0.1 ms, ES256: ~0.2 ms of CPU
/// per check; etcd checks every time). An entry is trusted until the token's `exp`;
/// the cache is emptied when full (tokens are short-lived, a refill is cheap).
#[derive(Debug, Default)]
pub struct VerifiedJwtCache {
    entries: HashMap<String, (AuthInfo, Option<i64>)>,
}

impl VerifiedJwtCache {
    pub fn new() -> VerifiedJwtCache {
        VerifiedJwtCache::default()
    }

    /// [`JwtProvider::verify`], remembered. `capacity` bounds the entries.
    pub fn verify(
        &mut self,
        provider: &JwtProvider,
        token: &str,
        now_unix_seconds: i64,
        capacity: usize,
    ) -> Option<AuthInfo> {
        if let Some((info, exp)) = self.entries.get(token) {
            if exp.is_none_or(|exp| now_unix_seconds < exp) {
                return Some(info.clone());
            }
            self.entries.remove(token);
            return None;
        }
        let info = provider.verify(token, now_unix_seconds)?;
        if self.entries.len() >= capacity {
            self.entries.clear();
        }
        let exp = token_exp(token);
        self.entries.insert(token.to_string(), (info.clone(), exp));
        Some(info)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The `exp` of a token already verified (seconds, truncated; 0 or absent: none).
fn token_exp(token: &str) -> Option<i64> {
    let claims = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp != 0.0).then_some(exp.trunc() as i64)
}

/// golang-jwt v4 `MapClaims.Valid`: `exp` (valid while now < exp), `iat` and `nbf`
/// (now >= them); each optional, 0 counting as absent, fractions truncated to seconds; a
/// present claim that is not a number makes the token invalid.
fn claims_valid(claims: &serde_json::Map<String, serde_json::Value>, now: i64) -> bool {
    let seconds = |name: &str| -> Result<Option<i64>, ()> {
        match claims.get(name) {
            None => Ok(None),
            Some(value) => {
                let number = value.as_f64().ok_or(())?;
                if number == 0.0 {
                    Ok(None)
                } else {
                    Ok(Some(number.trunc() as i64))
                }
            }
        }
    };
    let (Ok(exp), Ok(iat), Ok(nbf)) = (seconds("exp"), seconds("iat"), seconds("nbf")) else {
        return false;
    };
    exp.is_none_or(|exp| now < exp)
        && iat.is_none_or(|iat| now >= iat)
        && nbf.is_none_or(|nbf| now >= nbf)
}

fn rsa_keys(
    method: SignMethod,
    public_pem: &[u8],
    private_pem: &[u8],
) -> Result<(Option<Signer>, Verifier), JwtError> {
    use SignMethod as M;
    let (encoding, verification): (
        &'static dyn signature::RsaEncoding,
        &'static dyn signature::VerificationAlgorithm,
    ) = match method {
        M::Rs256 => (
            &signature::RSA_PKCS1_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        M::Rs384 => (
            &signature::RSA_PKCS1_SHA384,
            &signature::RSA_PKCS1_2048_8192_SHA384,
        ),
        M::Rs512 => (
            &signature::RSA_PKCS1_SHA512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
        ),
        M::Ps256 => (
            &signature::RSA_PSS_SHA256,
            &signature::RSA_PSS_2048_8192_SHA256,
        ),
        M::Ps384 => (
            &signature::RSA_PSS_SHA384,
            &signature::RSA_PSS_2048_8192_SHA384,
        ),
        _ => (
            &signature::RSA_PSS_SHA512,
            &signature::RSA_PSS_2048_8192_SHA512,
        ),
    };
    let private = if private_pem.is_empty() {
        None
    } else {
        let (_, der) = pem_block(private_pem).ok_or(JwtError::KeyMustBePem)?;
        let key = RsaKeyPair::from_der(&der)
            .or_else(|_| RsaKeyPair::from_pkcs8(&der))
            .map_err(|_| JwtError::NotRsaPrivateKey)?;
        Some(key)
    };
    let public = if public_pem.is_empty() {
        None
    } else {
        let (_, der) = pem_block(public_pem).ok_or(JwtError::KeyMustBePem)?;
        let key = public_key_of(&der)
            .filter(|info| info.algorithm == OID_RSA_ENCRYPTION)
            .map(|info| info.key)
            .ok_or(JwtError::NotRsaPublicKey)?;
        Some(key)
    };
    match (private, public) {
        (Some(private), _) => {
            let public = private.public().as_ref().to_vec();
            Ok((
                Some(Signer::Rsa(private, encoding)),
                Verifier::Public(UnparsedPublicKey::new(verification, public)),
            ))
        }
        (None, Some(public)) => Ok((
            None,
            Verifier::Public(UnparsedPublicKey::new(verification, public)),
        )),
        (None, None) => Err(JwtError::MissingKey),
    }
}

fn ec_keys(
    method: SignMethod,
    public_pem: &[u8],
    private_pem: &[u8],
) -> Result<(Option<Signer>, Verifier), JwtError> {
    let (signing, verification, curve): (
        &'static signature::EcdsaSigningAlgorithm,
        &'static dyn signature::VerificationAlgorithm,
        &[u8],
    ) = match method {
        SignMethod::Es256 => (
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED,
            OID_P256,
        ),
        _ => (
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED,
            OID_P384,
        ),
    };
    let private = if private_pem.is_empty() {
        None
    } else {
        let (_, der) = pem_block(private_pem).ok_or(JwtError::KeyMustBePem)?;
        let random = SystemRandom::new();
        let key = match sec1_private_key(&der) {
            Some((scalar, point)) => {
                EcdsaKeyPair::from_private_key_and_public_key(signing, &scalar, &point, &random)
            }
            None => EcdsaKeyPair::from_pkcs8(signing, &der, &random),
        }
        .map_err(|_| JwtError::NotEcPrivateKey)?;
        Some(key)
    };
    let public = if public_pem.is_empty() {
        None
    } else {
        let (_, der) = pem_block(public_pem).ok_or(JwtError::KeyMustBePem)?;
        let point = public_key_of(&der)
            .filter(|info| info.algorithm == OID_EC_PUBLIC_KEY && info.parameters == curve)
            .map(|info| info.key);
        Some(point.ok_or(JwtError::NotEcPublicKey)?)
    };
    match (private, public) {
        (Some(private), _) => {
            let public = private.public_key().as_ref().to_vec();
            Ok((
                Some(Signer::Ecdsa(private)),
                Verifier::Public(UnparsedPublicKey::new(verification, public)),
            ))
        }
        (None, Some(point)) => Ok((
            None,
            Verifier::Public(UnparsedPublicKey::new(verification, point)),
        )),
        (None, None) => Err(JwtError::MissingKey),
    }
}

// Key formats. A minimal DER reader: enough for SubjectPublicKeyInfo, certificates and
// SEC1 private keys. Every read is bounds-checked; bad input yields `None`.

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// The first PEM block (Go's `pem.Decode`): its label and decoded bytes.
pub fn pem_block(text: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(text).ok()?;
    let begin = text.find("-----BEGIN ")?;
    let after_begin = &text[begin + "-----BEGIN ".len()..];
    let label_end = after_begin.find("-----")?;
    let label = &after_begin[..label_end];
    let body = &after_begin[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let end = body.find(&end_marker)?;
    let body: String = body[..end]
        .lines()
        // Skip RFC 1421 headers ("Proc-Type: ..."); Go would reject encrypted keys later.
        .filter(|line| !line.contains(':'))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    Some((label.to_string(), der))
}

/// One DER element: tag and contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

const SEQUENCE: u8 = 0x30;
const OBJECT_ID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = der_element(input)?;
    (found == tag).then_some((contents, rest))
}

/// A public key read from a SubjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// The algorithm OID (RSA or EC).
    pub algorithm: &'static [u8],
    /// The parameters: the curve OID's contents for EC, empty for RSA.
    pub parameters: Vec<u8>,
    /// For RSA the PKCS#1 RSAPublicKey, for EC the point: what `ring` verifies with.
    pub key: Vec<u8>,
}

/// The public key of a SubjectPublicKeyInfo, or of the one inside a certificate (Go's
/// `ParsePKIXPublicKey`, then `ParseCertificate`).
pub fn public_key_of(der: &[u8]) -> Option<PublicKeyInfo> {
    spki(der).or_else(|| {
        // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
        // serial, signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }
        let (certificate, _) = expect(der, SEQUENCE)?;
        let (mut tbs, _) = expect(certificate, SEQUENCE)?;
        let (tag, _, rest) = der_element(tbs)?;
        if tag == 0xa0 {
            tbs = rest;
        }
        for _ in 0..5 {
            let (_, _, rest) = der_element(tbs)?;
            tbs = rest;
        }
        let (tag, contents, _) = der_element(tbs)?;
        if tag != SEQUENCE {
            return None;
        }
        let mut whole = vec![SEQUENCE];
        push_der_length(&mut whole, contents.len());
        whole.extend_from_slice(contents);
        spki(&whole)
    })
}

fn spki(der: &[u8]) -> Option<PublicKeyInfo> {
    let (info, rest) = expect(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (algorithm, info) = expect(info, SEQUENCE)?;
    let (bits, _) = expect(info, BIT_STRING)?;
    let (oid, parameters) = expect(algorithm, OBJECT_ID)?;
    let algorithm: &'static [u8] = if oid == OID_RSA_ENCRYPTION {
        OID_RSA_ENCRYPTION
    } else if oid == OID_EC_PUBLIC_KEY {
        OID_EC_PUBLIC_KEY
    } else {
        return None;
    };
    let parameters = match expect(parameters, OBJECT_ID) {
        Some((curve, _)) => curve.to_vec(),
        None => Vec::new(),
    };
    // The first byte of a BIT STRING counts unused bits; keys use whole bytes.
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    Some(PublicKeyInfo {
        algorithm,
        parameters,
        key: key.to_vec(),
    })
}

fn push_der_length(out: &mut Vec<u8>, length: usize) {
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A SEC1 `ECPrivateKey` (PEM "EC PRIVATE KEY"): the scalar and the public point.
fn sec1_private_key(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (key, _) = expect(der, SEQUENCE)?;
    let (version, key) = expect(key, INTEGER)?;
    if version != [1] {
        return None;
    }
    let (scalar, mut rest) = expect(key, OCTET_STRING)?;
    let mut point = None;
    while !rest.is_empty() {
        let (tag, contents, next) = der_element(rest)?;
        if tag == 0xa1 {
            let (bits, _) = expect(contents, BIT_STRING)?;
            let (&unused, bits) = bits.split_first()?;
            if unused != 0 {
                return None;
            }
            point = Some(bits.to_vec());
        }
        rest = next;
    }
    Some((scalar.to_vec(), point?))
}

/// Go's `time.ParseDuration`, in nanoseconds: `[-+]?(<number><unit>)+` with units `ns`,
/// `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`, or a bare `0`.
pub fn parse_go_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        rest = &rest[number_end..];
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        if fraction.contains('.') {
            return None;
        }
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut value = whole.checked_mul(scale)?;
        // The fraction, scaled and truncated as Go does.
        let mut place = scale;
        for digit in fraction.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            value = value.checked_add(u128::from(digit - b'0') * place)?;
        }
        total = total.checked_add(value)?;
        if total > i64::MAX as u128 + u128::from(negative) {
            return None;
        }
    }
    let total = i128::try_from(total).ok()?;
    let signed = if negative { -total } else { total };
    i64::try_from(signed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A token issued by real etcd 3.4.23 (`--auth-token jwt,...,sign-method=RS256,
    /// ttl=876000h`, user root at auth revision 3), and its public key.
    const ETCD_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjQ5NTAyMDY3MzUsInJldmlzaW9uIjozLCJ1c2VybmFtZSI6InJvb3QifQ.Aed89MnHwM1p8BaKR53ufXBr3syi7S-QEYqsjCd1zBrONr-cORZoaUz9OIQwx18FVQQkPEHU4PL4yF43gCXQRh7haEo-UVhQTIxcbkMBCXM7hMkd3nXnYFvKdgdHGP9xxKOotgFXR9r996fIdhGC1ldM6TCjz3YP8hVCjaium6kuv2wzUiJP4HjWbjd2aBETdnujWYQ7tYrmK8CZJkNLPLggESr5pl09OdF9a2QEPoYJjxv8WWnQFAy7xvOnjgnzkpBZZjqTMhCeRdwElqaKrwEFH7G0wqpV-bZ0PRPEpBErwm8oz_uqJMUMFSDVmLpbdPqCvGUmkzk8vkDYzk2W2Q";
    const ETCD_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtdxp7xqN0t8SoCYwiiJ9
KcD9b5hERK5m7w6SU9sZg4NAltaekNdVzrVSw9SdnpUwQnQih6k2wEWDwdENvylj
HeS/dmo4YF3zxAgQAcdEkOFavZSqUqjfeO4U6L+tdkm5VmVeTidGW6YRVOrlUinQ
r6yp7aWqqoUgjWwm5sjnjKls2C+P25AvJrQDadDavfB/QtiMzh89kxxpYq/nbrsQ
EqG9IvKAaFqtoTpt4KveGLuiyKm+ehb78NW+tyoYT6oE2KlRx+jqvRlf8DGxq7R9
eM9NB1nlQthBirJHJOXNnoO5QSOTxPspwLVa2wwUjMIMFsqvqBRFyaIdKfqB2V2K
aQIDAQAB
-----END PUBLIC KEY-----
";
    const ETCD_TOKEN_EXP: i64 = 4_950_206_735;

    #[test]
    fn etcd_tokens_verify_here() {
        let provider =
            JwtProvider::from_keys(SignMethod::Rs256, ETCD_PUBLIC_KEY.as_bytes(), b"", 0)
                .expect("public key");
        assert!(provider.is_verify_only());
        assert_eq!(
            provider.verify(ETCD_TOKEN, 1_800_000_000),
            Some(AuthInfo::new("root", 3))
        );
        // exp is exclusive, as in golang-jwt.
        assert!(provider.verify(ETCD_TOKEN, ETCD_TOKEN_EXP - 1).is_some());
        assert_eq!(provider.verify(ETCD_TOKEN, ETCD_TOKEN_EXP), None);
        // Another configured method refuses it.
        let rs384 = JwtProvider::from_keys(SignMethod::Rs384, ETCD_PUBLIC_KEY.as_bytes(), b"", 0)
            .expect("public key");
        assert_eq!(rs384.verify(ETCD_TOKEN, 1_800_000_000), None);
        // Tampered claims or signature.
        let mut parts: Vec<String> = ETCD_TOKEN.split('.').map(String::from).collect();
        let claims =
            URL_SAFE_NO_PAD.encode(br#"{"exp":4950206735,"revision":3,"username":"rooT"}"#);
        parts[1] = claims;
        assert_eq!(provider.verify(&parts.join("."), 1_800_000_000), None);
        assert_eq!(
            provider.verify(&format!("{ETCD_TOKEN}x"), 1_800_000_000),
            None
        );
        for garbage in ["", ".", "..", "a.b.c", "a.b.c.d", "\u{1F600}.x.y"] {
            assert_eq!(provider.verify(garbage, 0), None);
        }
        // Verify-only: no signing, with etcd's error.
        assert_eq!(
            provider.sign("root", 3, 0),
            Err(EtcdError::Plain(
                "auth: token signing attempted with verify-only key"
            ))
        );
    }

    fn openssl(args: &[&str]) {
        let status = Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    }

    struct Keys {
        private: PathBuf,
        public: PathBuf,
        certificate: PathBuf,
    }

    fn make_keys(dir: &Path, name: &str, generate: &[&str]) -> Keys {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let certificate = dir.join(format!("{name}.crt"));
        let mut args: Vec<&str> = generate.to_vec();
        let private_text = private.to_str().expect("utf-8 path");
        args.extend(["-out", private_text]);
        openssl(&args);
        openssl(&[
            "pkey",
            "-in",
            private_text,
            "-pubout",
            "-out",
            public.to_str().expect("path"),
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            private_text,
            "-subj",
            "/CN=jwt",
            "-days",
            "1",
            "-out",
            certificate.to_str().expect("path"),
        ]);
        Keys {
            private,
            public,
            certificate,
        }
    }

    fn provider(
        method: &str,
        public: Option<&Path>,
        private: Option<&Path>,
        ttl: &str,
    ) -> Result<JwtProvider, JwtError> {
        let mut options = HashMap::new();
        options.insert("sign-method".to_string(), method.to_string());
        if let Some(p) = public {
            options.insert("pub-key".to_string(), p.display().to_string());
        }
        if let Some(p) = private {
            options.insert("priv-key".to_string(), p.display().to_string());
        }
        if !ttl.is_empty() {
            options.insert("ttl".to_string(), ttl.to_string());
        }
        JwtProvider::from_options(&options)
    }

    #[test]
    fn every_supported_method_signs_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rsa_pkcs8 = make_keys(
            dir.path(),
            "rsa8",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        );
        let rsa_pkcs1 = make_keys(dir.path(), "rsa1", &["genrsa", "-traditional"]);
        let p256_sec1 = make_keys(
            dir.path(),
            "p256",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
        );
        let p384_pkcs8 = make_keys(
            dir.path(),
            "p384",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ],
        );
        let now_nanos: i128 = 1_700_000_000 * 1_000_000_000;
        let now = 1_700_000_000;
        let cases: Vec<(&str, &Keys)> = vec![
            ("RS256", &rsa_pkcs8),
            ("RS384", &rsa_pkcs1),
            ("RS512", &rsa_pkcs8),
            ("PS256", &rsa_pkcs8),
            ("PS384", &rsa_pkcs1),
            ("PS512", &rsa_pkcs8),
            ("ES256", &p256_sec1),
            ("ES384", &p384_pkcs8),
        ];
        for (method, keys) in cases {
            let signer = provider(method, Some(&keys.public), Some(&keys.private), "")
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            let token = signer.sign("alice", 42, now_nanos).expect("signs");
            assert_eq!(
                signer.verify(&token, now),
                Some(AuthInfo::new("alice", 42)),
                "{method}"
            );
            // Default TTL 5 minutes.
            assert!(signer.verify(&token, now + 299).is_some());
            assert!(signer.verify(&token, now + 300).is_none());
            // Verify-only members check it with the public key, or a certificate.
            for public in [&keys.public, &keys.certificate] {
                let verifier = provider(method, Some(public), None, "").expect("public key");
                assert_eq!(
                    verifier.verify(&token, now),
                    Some(AuthInfo::new("alice", 42)),
                    "{method}"
                );
            }
            // A token of another method is refused.
            let other = if method.starts_with("RS") {
                "PS256"
            } else {
                "RS256"
            };
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{other}","typ":"JWT"}}"#));
            let mut parts: Vec<&str> = token.split('.').collect();
            parts[0] = &header;
            assert_eq!(signer.verify(&parts.join("."), now), None);
        }
        // HMAC: the priv-key file's bytes are the secret.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret").expect("write");
        for method in ["HS256", "HS384", "HS512"] {
            let p = provider(method, None, Some(&secret), "1h").expect("hmac");
            let token = p.sign("bob", 7, now_nanos).expect("signs");
            assert_eq!(p.verify(&token, now + 3599), Some(AuthInfo::new("bob", 7)));
            assert_eq!(p.verify(&token, now + 3600), None);
        }
        // The claims as etcd writes them.
        let p = provider("HS256", None, Some(&secret), "10s").expect("hmac");
        let token = p.sign("bob", 7, now_nanos + 500_000_000).expect("signs");
        let claims = token.split('.').nth(1).expect("claims");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(claims).expect("base64"),
            br#"{"exp":1700000010,"revision":7,"username":"bob"}"#
        );
        let header = token.split('.').next().expect("header");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).expect("base64"),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
    }

    #[test]
    fn verified_tokens_are_cached_until_exp() {
        let provider =
            JwtProvider::from_keys(SignMethod::Rs256, ETCD_PUBLIC_KEY.as_bytes(), b"", 0)
                .expect("public key");
        let mut cache = VerifiedJwtCache::new();
        let root = Some(AuthInfo::new("root", 3));
        assert_eq!(cache.verify(&provider, ETCD_TOKEN, 1_800_000_000, 2), root);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.verify(&provider, ETCD_TOKEN, 1_800_000_001, 2), root);
        assert_eq!(cache.verify(&provider, ETCD_TOKEN, ETCD_TOKEN_EXP, 2), None);
        assert!(cache.is_empty());
        assert_eq!(cache.verify(&provider, "a.b.c", 0, 2), None);
        assert!(cache.is_empty(), "failures are not remembered");
    }

    #[test]
    fn claims_follow_golang_jwt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"s").expect("write");
        let p = provider("HS256", None, Some(&secret), "").expect("hmac");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s");
        let token = |claims: &str| {
            let mut t = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
            t.push('.');
            t.push_str(&URL_SAFE_NO_PAD.encode(claims));
            let signature = hmac::sign(&key, t.as_bytes());
            t.push('.');
            t.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
            t
        };
        let now = 1000;
        let user = Some(AuthInfo::new("u", 5));
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5}"#), now),
            user
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5,"exp":0}"#), now),
            user
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5,"exp":1000.9}"#), now),
            None
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5,"exp":"2000"}"#), now),
            None
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5,"nbf":1000}"#), now),
            user
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5,"nbf":1001}"#), now),
            None
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5,"iat":1001}"#), now),
            None
        );
        assert_eq!(
            p.verify(&token(r#"{"username":"u","revision":5.7}"#), now),
            user
        );
        assert_eq!(p.verify(&token(r#"{"username":"u"}"#), now), None);
        assert_eq!(
            p.verify(&token(r#"{"username":5,"revision":5}"#), now),
            None
        );
        assert_eq!(p.verify(&token(r#"{"revision":5}"#), now), None);
        assert_eq!(p.verify(&token(r#"[1,2]"#), now), None);
    }

    #[test]
    fn configuration_errors_are_etcds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rsa = make_keys(
            dir.path(),
            "rsa",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        );
        let missing = dir.path().join("missing");
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not a key").expect("write");
        assert_eq!(
            provider("", None, Some(&rsa.private), "").err(),
            Some(JwtError::InvalidAuthOptions)
        );
        assert_eq!(
            provider("RS257", None, Some(&rsa.private), "").err(),
            Some(JwtError::InvalidAuthOptions)
        );
        assert_eq!(
            provider("RS256", None, Some(&rsa.private), "5").err(),
            Some(JwtError::InvalidAuthOptions)
        );
        assert_eq!(
            provider("RS256", None, Some(&missing), "").err(),
            Some(JwtError::InvalidAuthOptions)
        );
        assert_eq!(
            provider("RS256", None, None, "").err(),
            Some(JwtError::MissingKey)
        );
        assert_eq!(
            provider("HS256", Some(&rsa.public), None, "").err(),
            Some(JwtError::MissingKey)
        );
        assert_eq!(
            provider("RS256", None, Some(&garbage), "").err(),
            Some(JwtError::KeyMustBePem)
        );
        assert_eq!(
            provider("ES256", None, Some(&rsa.private), "").err(),
            Some(JwtError::NotEcPrivateKey)
        );
        assert_eq!(
            provider("ES256", Some(&rsa.public), None, "").err(),
            Some(JwtError::NotEcPublicKey)
        );
        assert!(matches!(
            provider("ES512", None, Some(&rsa.private), ""),
            Err(JwtError::Unsupported(_))
        ));
        assert!(matches!(
            provider("EdDSA", None, Some(&rsa.private), ""),
            Err(JwtError::Unsupported(_))
        ));
        assert_eq!(JwtError::MissingKey.to_string(), "auth: missing key data");
        // Through --auth-token.
        let options = format!(
            "jwt,priv-key={},sign-method=RS256,ttl=1m,unknown=x",
            rsa.private.display()
        );
        assert!(matches!(
            super::super::TokenConfig::parse(&options, 0),
            Ok(super::super::TokenConfig::Jwt(_))
        ));
    }

    #[test]
    fn der_reader_never_panics_on_prefixes() {
        let pem = pem_block(ETCD_PUBLIC_KEY.as_bytes()).expect("pem");
        let (label, der) = pem;
        assert_eq!(label, "PUBLIC KEY");
        assert!(public_key_of(&der).is_some());
        for cut in 0..der.len() {
            let _ = public_key_of(&der[..cut]);
            let _ = sec1_private_key(&der[..cut]);
        }
        assert!(pem_block(b"-----BEGIN X-----\n!!!\n-----END X-----").is_none());
        assert!(pem_block(b"-----BEGIN X-----\nAAAA\n").is_none());
    }
}
