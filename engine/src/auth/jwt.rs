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
use super::token::parse_go_duration;
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
