//! TLS 1.3 for peer connections (QUIC always encrypts), in one of two modes:
//!
//! - **Generated** (no peer certificate flags, as before): a self-signed certificate
//!   generated at start and a dialer that accepts any certificate. The traffic is
//!   encrypted and the handshake still proves the server holds the key of its
//!   certificate, but nothing checks *whose* certificate it is: the peers are not
//!   authenticated, and the transport says so when it starts. What keeps clusters apart
//!   then is the cluster ID in the HELLO.
//! - **Files** (etcd's `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
//!   `--peer-client-cert-auth`, `--peer-crl-file`, `--peer-cert-allowed-cn`,
//!   `--peer-cert-allowed-hostname`, or `--peer-auto-tls`'s generated files): both sides
//!   present the member's certificate. With a trusted CA, the accepting side requires the
//!   dialer's certificate to chain to it (etcd's `RequireAndVerifyClientCert` when a CA
//!   file or `--peer-client-cert-auth` is given), checks the CRL in the handshake, the
//!   allowed CN or hostname, and afterwards etcd's SAN check (a certificate with IP or
//!   DNS SANs must name the address the connection comes from); the dialing side checks
//!   the server's certificate against the CA, the CRL and the rule, for the IP address it
//!   dials. A refused peer is logged with its address and the reason.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::tls::{
    load_certificates, load_crl, load_key, load_roots, rule_error, CertificateRule,
    RuleClientVerifier, TlsInfo,
};

/// The ALPN protocol of rivet peer links; a TLS client speaking anything else is refused
/// during the handshake.
pub const ALPN: &[u8] = b"rivet-peer/1";

/// The name a dialer asks for in the generated mode; the generated certificate is issued
/// for it. Not verified (above).
pub const SERVER_NAME: &str = "rivet-peer";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How peer connections are secured.
#[derive(Clone, Debug, Default)]
pub enum PeerTls {
    /// A certificate generated at start; nothing verified.
    #[default]
    Generated,
    /// The member's certificate files and the rules for its peers' certificates.
    Files(TlsInfo),
}

/// TLS configuration of both sides of a peer connection.
pub struct TlsConfigs {
    pub server: Arc<QuicServerConfig>,
    pub client: Arc<QuicClientConfig>,
    /// Peers' certificates are verified (a trusted CA is configured).
    pub authenticates: bool,
    /// etcd's SAN check of an accepted peer's certificate against its address.
    pub check_san: bool,
    /// Dial by the peer's IP address as the server name (its certificate is checked for
    /// it); otherwise by [`SERVER_NAME`].
    pub dial_by_address: bool,
}

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the self-signed peer certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("configuring TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("configuring QUIC TLS: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("peer TLS: {0}")]
    Files(#[from] crate::tls::TlsError),
    #[error("peer TLS: building the certificate verifier: {0}")]
    Verifier(String),
}

/// The TLS configurations for `tls`.
pub fn configs(tls: &PeerTls) -> Result<TlsConfigs, TlsError> {
    match tls {
        PeerTls::Generated => self_signed(),
        PeerTls::Files(info) => from_files(info),
    }
}

/// Generates a self-signed certificate and builds the TLS 1.3 configurations.
pub fn self_signed() -> Result<TlsConfigs, TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let certificate: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)?;

    let provider = provider();
    let verifier = Arc::new(AcceptAnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    finish(server, client, false, false, false)
}

/// Builds both sides from the member's certificate files and its peer rules.
fn from_files(info: &TlsInfo) -> Result<TlsConfigs, TlsError> {
    let certificates = load_certificates(&info.cert_file)?;
    let key = load_key(&info.key_file)?;
    let rule = info.rule()?;
    let crls = if info.crl_file.is_empty() {
        Vec::new()
    } else {
        vec![load_crl(&info.crl_file)?]
    };
    let roots = if info.trusted_ca_file.is_empty() {
        None
    } else {
        Some(load_roots(&info.trusted_ca_file)?)
    };
    if info.client_cert_auth && roots.is_none() {
        return Err(crate::tls::TlsError::Config(
            "--peer-client-cert-auth needs --peer-trusted-ca-file: rivet has no system CA pool to verify peer certificates against".into(),
        )
        .into());
    }

    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let server = match &roots {
        Some(roots) => builder.with_client_cert_verifier(Arc::new(
            RuleClientVerifier::new(roots.clone(), crls.clone(), rule.clone(), provider())
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
        )),
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certificates.clone(), key.clone_key())?;

    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous();
    let builder = match roots.clone() {
        Some(roots) => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_custom_certificate_verifier(Arc::new(RuleServerVerifier { inner, rule }))
        }
        // A self-signed (auto TLS) certificate cannot be verified: etcd skips the check
        // too (`InsecureSkipVerify`); without a CA rivet has nothing to verify against.
        None => builder.with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        })),
    };
    let client = builder.with_client_auth_cert(certificates, key)?;
    let authenticates = roots.is_some();
    finish(server, client, authenticates, authenticates, authenticates)
}

fn finish(
    mut server: rustls::ServerConfig,
    mut client: rustls::ClientConfig,
    authenticates: bool,
    check_san: bool,
    dial_by_address: bool,
) -> Result<TlsConfigs, TlsError> {
    server.alpn_protocols = vec![ALPN.to_vec()];
    // Peer links are long-lived; resumption and early data buy nothing and 0-RTT data
    // could be replayed.
    server.max_early_data_size = 0;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsConfigs {
        server: Arc::new(QuicServerConfig::try_from(server)?),
        client: Arc::new(QuicClientConfig::try_from(client)?),
        authenticates,
        check_san,
        dial_by_address,
    })
}

/// Verifies a server's certificate with webpki (CA, CRLs, the dialed name), then the
/// allowed CN or hostname: etcd applies `VerifyPeerCertificate` on both sides.
#[derive(Debug)]
struct RuleServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    rule: Option<CertificateRule>,
}

impl ServerCertVerifier for RuleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(rule) = &self.rule {
            rule.check(end_entity).map_err(rule_error)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate, but still checks the handshake signature against the
/// certificate's key. Used when there is no CA to verify against (see the module
/// documentation).
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
