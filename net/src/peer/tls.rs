//! TLS 1.3 for peer connections: a self-signed certificate generated at start, and a
//! client verifier that accepts any certificate.
//!
//! **Not yet secure.** The handshake still proves that the server holds the key of the
//! certificate it presents (signatures are verified), and the traffic is encrypted, but
//! nothing checks *whose* certificate it is: anyone who can reach the peer port can
//! complete a handshake. What keeps clusters apart today is the cluster ID in the HELLO.
//! etcd's peer flags (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
//! `--peer-client-cert-auth`, `--peer-cert-allowed-cn`, `--peer-auto-tls`) replace this
//! with real verification later.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The ALPN protocol of rivet peer links; a TLS client speaking anything else is refused
/// during the handshake.
pub const ALPN: &[u8] = b"rivet-peer/1";

/// The name the dialer asks for; the certificate is issued for it. Not verified (above).
pub const SERVER_NAME: &str = "rivet-peer";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS configuration of both sides of a peer connection.
pub struct TlsConfigs {
    pub server: Arc<QuicServerConfig>,
    pub client: Arc<QuicClientConfig>,
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
}

/// Generates a self-signed certificate and builds the TLS 1.3 configurations.
pub fn self_signed() -> Result<TlsConfigs, TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let certificate: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    // Peer links are long-lived; resumption and early data buy nothing and 0-RTT data
    // could be replayed.
    server.max_early_data_size = 0;

    let provider = provider();
    let verifier = Arc::new(AcceptAnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(TlsConfigs {
        server: Arc::new(QuicServerConfig::try_from(server)?),
        client: Arc::new(QuicClientConfig::try_from(client)?),
    })
}

/// Accepts any server certificate, but still checks the handshake signature against the
/// certificate's key. See the module documentation: this goes when peer certificate flags
/// arrive.
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
