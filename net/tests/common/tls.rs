//! Certificates made by the test itself (rcgen), written as PEM files that both rivet
//! and etcd read: a CA with server, client, revoked-client and wrong-host-client
//! certificates and a CRL revoking one of them, and a second CA with its own client and
//! server certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};

/// A certificate and its key as files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn cert(&self) -> String {
        self.cert.display().to_string()
    }

    pub fn key(&self) -> String {
        self.key.display().to_string()
    }
}

/// Every file the TLS tests use.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA everything trusted is signed by.
    pub ca: PathBuf,
    /// Server and peer certificate: IP 127.0.0.1 and DNS localhost, server and client
    /// auth.
    pub server: Pair,
    /// Another server/peer certificate of the same CA (a renewed one).
    pub server_renewed: Pair,
    /// Client certificate, CN `root`, SANs localhost and 127.0.0.1.
    pub client: Pair,
    /// Client certificate of the CA that the CRL revokes.
    pub revoked: Pair,
    /// Client certificate of the CA whose only SAN is `wrong.invalid`.
    pub wrong_host: Pair,
    /// The CRL of the CA, revoking [`Pki::revoked`].
    pub crl: PathBuf,
    /// A second CA, trusted by nobody.
    pub other_ca: PathBuf,
    /// Client certificate (CN `root`) of the second CA.
    pub other_client: Pair,
    /// Server/peer certificate (127.0.0.1) of the second CA.
    pub other_server: Pair,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(common_name: &str, names: &[&str], server: bool, serial: u8) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serial_number = Some(SerialNumber::from(vec![0x10, serial]));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write PEM");
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);

        let ca_key = KeyPair::generate().expect("key");
        let ca_template = ca_params("rivet test CA");
        let ca_cert = ca_template.self_signed(&ca_key).expect("ca");
        write(&path("ca.pem"), &ca_cert.pem());
        let ca = Issuer::new(ca_template, ca_key);

        let other_key = KeyPair::generate().expect("key");
        let other_params = ca_params("another CA");
        let other_cert = other_params.self_signed(&other_key).expect("ca");
        write(&path("other-ca.pem"), &other_cert.pem());
        let other = Issuer::new(other_params, other_key);

        let leaf = |name: &str, issuer: &Issuer<'_, KeyPair>, params: CertificateParams| {
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, issuer).expect("sign");
            let pair = Pair {
                cert: path(&format!("{name}.pem")),
                key: path(&format!("{name}-key.pem")),
            };
            write(&pair.cert, &cert.pem());
            write(&pair.key, &key.serialize_pem());
            pair
        };
        let server = leaf(
            "server",
            &ca,
            leaf_params("server", &["127.0.0.1", "localhost"], true, 1),
        );
        let server_renewed = leaf(
            "server-renewed",
            &ca,
            leaf_params("server", &["127.0.0.1", "localhost"], true, 2),
        );
        let client = leaf(
            "client",
            &ca,
            leaf_params("root", &["localhost", "127.0.0.1"], false, 3),
        );
        let revoked = leaf(
            "revoked",
            &ca,
            leaf_params("revoked", &["localhost", "127.0.0.1"], false, 4),
        );
        let wrong_host = leaf(
            "wrong-host",
            &ca,
            leaf_params("wrong", &["wrong.invalid"], false, 5),
        );
        let other_client = leaf(
            "other-client",
            &other,
            leaf_params("root", &["localhost", "127.0.0.1"], false, 6),
        );
        let other_server = leaf(
            "other-server",
            &other,
            leaf_params("server", &["127.0.0.1", "localhost"], true, 7),
        );

        let now = time::OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(vec![0x10, 4]),
                revocation_time: now - time::Duration::hours(1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca)
        .expect("crl");
        write(&path("crl.pem"), &crl.pem().expect("crl pem"));

        Pki {
            ca: path("ca.pem"),
            crl: path("crl.pem"),
            other_ca: path("other-ca.pem"),
            server,
            server_renewed,
            client,
            revoked,
            wrong_host,
            other_client,
            other_server,
            dir,
        }
    }

    pub fn ca(&self) -> String {
        self.ca.display().to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcdctl's flags for a client holding `pair` (and trusting the CA).
    pub fn etcdctl_flags(&self, pair: Option<&Pair>) -> Vec<String> {
        let mut flags = vec!["--cacert".to_string(), self.ca()];
        if let Some(pair) = pair {
            flags.extend([
                "--cert".to_string(),
                pair.cert(),
                "--key".into(),
                pair.key(),
            ]);
        }
        flags
    }
}

/// An HTTP/1.1 GET over TLS (rustls) to `127.0.0.1:port`, trusting the CA and presenting
/// `pair` if given: the status line and the body, or the error that ended it.
pub fn https_get(pki: &Pki, port: u16, path: &str, pair: Option<&Pair>) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match pair {
        Some(pair) => {
            let chain = CertificateDer::pem_file_iter(&pair.cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // Go's server closes without close_notify; what arrived is the answer.
        Err(e) if !response.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    if text.is_empty() {
        return Err("the server closed the connection without an answer".into());
    }
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok(format!("{status}\n{body}"))
}
