//! What the listeners need beyond a socket: which of them speak TLS and with what (etcd
//! 3.4's rules for `--cert-file`, `--auto-tls`, the peer flags and https URLs), the TLS
//! handshake of an accepted client connection, and the metrics listener
//! (`--listen-metrics-urls`: `/metrics` and `/health` only, as etcd serves them there).

use std::convert::Infallible;
use std::path::Path;
use std::rc::Rc;

use anyhow::anyhow;
use glommio::net::{TcpListener, TcpStream};
use hyper_util::server::conn::auto;
use rivet_engine::core::ShardCore;

use crate::config::{Flags, ListenUrl};
use crate::glommio_hyper::{GlommioExecutor, GlommioIo};
use crate::tls::{self_signed_files, url_host, ClientIdentity, ServerTls, TlsInfo};

/// The client TLS settings every shard core builds its listeners' TLS from (each core
/// builds its own rustls configuration, so that no session cache is shared between
/// cores).
#[derive(Clone, Debug, Default)]
pub struct ClientTlsPlan {
    /// `None`: no certificate (plain http listeners only).
    pub info: Option<TlsInfo>,
    pub cipher_suites: String,
}

/// The TLS of one core's https client listeners and https metrics listeners.
pub struct CoreTls {
    pub client: Option<Rc<ServerTls>>,
    /// etcd checks client certificate SANs on its metrics listener (`transport.NewListener`).
    pub metrics: Option<Rc<ServerTls>>,
}

impl ClientTlsPlan {
    pub fn build(&self) -> Result<CoreTls, crate::tls::TlsError> {
        let Some(info) = &self.info else {
            return Ok(CoreTls {
                client: None,
                metrics: None,
            });
        };
        Ok(CoreTls {
            client: Some(Rc::new(ServerTls::new(info, &self.cipher_suites, false)?)),
            metrics: Some(Rc::new(ServerTls::new(info, &self.cipher_suites, true)?)),
        })
    }
}

/// The client TLS settings from the flags, checked as etcd checks them at start: an
/// https client URL needs a certificate (or `--auto-tls`), `--auto-tls` yields to given
/// files, and certificates on http-only URLs are ignored with a warning.
pub fn client_tls(
    flags: &Flags,
    data_dir: &Path,
    client_urls: &[ListenUrl],
    metrics_urls: &[ListenUrl],
) -> anyhow::Result<ClientTlsPlan> {
    let mut info = TlsInfo {
        cert_file: flags.cert_file.clone(),
        key_file: flags.key_file.clone(),
        trusted_ca_file: flags.trusted_ca_file.clone(),
        client_cert_auth: flags.client_cert_auth,
        crl_file: flags.client_crl_file.clone(),
        allowed_hostname: flags.client_cert_allowed_hostname.clone(),
        ..TlsInfo::default()
    };
    if flags.auto_tls {
        if info.is_empty() {
            let hosts: Vec<String> = client_urls.iter().map(|u| url_host(&u.url)).collect();
            let generated = self_signed_files(
                &data_dir.join("fixtures").join("client"),
                &hosts,
                flags.self_signed_cert_validity,
                false,
            )?;
            info.cert_file = generated.cert_file;
            info.key_file = generated.key_file;
            info.self_signed = true;
        } else {
            tracing::warn!("ignoring client auto TLS since certs given");
        }
    }
    for url in client_urls {
        if url.secure && info.is_empty() {
            return Err(anyhow!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                url.url
            ));
        }
        if !url.secure && !info.is_empty() && !info.self_signed {
            tracing::warn!(
                "The scheme of client url {} is HTTP while peer key/cert files are presented. Ignored key/cert files.",
                url.url
            );
        }
        if !url.secure && info.client_cert_auth {
            tracing::warn!(
                "The scheme of client url {} is HTTP while client cert auth (--client-cert-auth) is enabled. Ignored client cert auth for this url.",
                url.url
            );
        }
    }
    for url in metrics_urls {
        if url.secure && info.is_empty() {
            return Err(anyhow!(
                "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                url.address
            ));
        }
    }
    if info.is_empty() {
        return Ok(ClientTlsPlan {
            info: None,
            cipher_suites: flags.cipher_suites.join(","),
        });
    }
    tracing::info!("ClientTLS: {info}");
    let plan = ClientTlsPlan {
        info: Some(info),
        cipher_suites: flags.cipher_suites.join(","),
    };
    // Every file is read and every rule checked now, so that a mistake stops the start.
    plan.build()?;
    Ok(plan)
}

/// The peer transport's TLS from the flags, checked as etcd checks them: an https peer
/// URL needs a certificate (or `--peer-auto-tls`), `--peer-auto-tls` yields to given
/// files. Without any, links use a generated certificate and peers are not
/// authenticated.
pub fn peer_tls(flags: &Flags, data_dir: &Path) -> anyhow::Result<crate::peer::tls::PeerTls> {
    let mut info = TlsInfo {
        cert_file: flags.peer_cert_file.clone(),
        key_file: flags.peer_key_file.clone(),
        trusted_ca_file: flags.peer_trusted_ca_file.clone(),
        client_cert_auth: flags.peer_client_cert_auth,
        crl_file: flags.peer_crl_file.clone(),
        allowed_cn: flags.peer_cert_allowed_cn.clone(),
        allowed_hostname: flags.peer_cert_allowed_hostname.clone(),
        self_signed: false,
    };
    let peer_urls = crate::config::url_list(&flags.listen_peer_urls);
    if flags.peer_auto_tls {
        if info.is_empty() {
            let hosts: Vec<String> = peer_urls.iter().map(|u| url_host(u)).collect();
            let generated = self_signed_files(
                &data_dir.join("fixtures").join("peer"),
                &hosts,
                flags.self_signed_cert_validity,
                true,
            )?;
            info.cert_file = generated.cert_file;
            info.key_file = generated.key_file;
            info.self_signed = true;
        } else {
            tracing::warn!("ignoring peer auto TLS since certs given");
        }
    }
    for url in &peer_urls {
        if url.starts_with("https://") && info.is_empty() {
            return Err(anyhow!(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {url} with HTTPS scheme"
            ));
        }
    }
    if info.is_empty() {
        return Ok(crate::peer::tls::PeerTls::Generated);
    }
    tracing::info!("PeerTLS: {info}");
    let tls = crate::peer::tls::PeerTls::Files(info);
    // Read every file now, so that a mistake stops the start.
    crate::peer::tls::configs(&tls)?;
    Ok(tls)
}

/// etcd's start-up lines for a client listener.
pub fn log_serving(listen: &ListenUrl) {
    tracing::info!("ready to serve client requests");
    if listen.secure {
        tracing::info!("serving client requests on {}", listen.address);
    } else {
        tracing::info!(
            "serving insecure client requests on {}, this is strongly discouraged!",
            listen.address
        );
    }
}

/// The TLS of a listener: its core's, if the URL is https.
pub fn tls_for(listen: &ListenUrl, tls: &Option<Rc<ServerTls>>) -> Option<Rc<ServerTls>> {
    if listen.secure {
        tls.clone()
    } else {
        None
    }
}

/// Completes the TLS handshake of an accepted client connection within
/// [`rivet_engine::limits::TLS_HANDSHAKE_TIMEOUT`]; a refused or failed one is logged
/// with etcd's wording and closed.
pub async fn handshake(
    tls: &ServerTls,
    stream: TcpStream,
) -> Option<(
    futures_rustls::server::TlsStream<TcpStream>,
    Option<ClientIdentity>,
)> {
    let remote = stream.peer_addr().ok()?;
    let timeout = async {
        glommio::timer::sleep(rivet_engine::limits::TLS_HANDSHAKE_TIMEOUT).await;
        Err(format!(
            "TLS handshake timed out after {:?}",
            rivet_engine::limits::TLS_HANDSHAKE_TIMEOUT
        ))
    };
    match futures_lite::future::or(tls.accept(stream, remote), timeout).await {
        Ok(accepted) => Some(accepted),
        Err(error) => {
            tracing::info!("rejected connection from \"{remote}\" (error \"{error}\")");
            None
        }
    }
}

/// Serves `/metrics` and `/health` (and 404 for anything else) on a metrics listener.
pub async fn metrics_accept_loop(
    listener: TcpListener,
    core: Rc<ShardCore>,
    tls: Option<Rc<ServerTls>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let core = Rc::clone(&core);
        let tls = tls.clone();
        let connection = async move {
            match tls {
                None => serve_metrics(GlommioIo::new(stream), core).await,
                Some(tls) => {
                    if let Some((stream, _identity)) = handshake(&tls, stream).await {
                        serve_metrics(GlommioIo::new(stream), core).await;
                    }
                }
            }
        };
        let queue = glommio::executor().current_task_queue();
        match glommio::spawn_local_into(connection, queue) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!("cannot spawn a metrics connection: {e}"),
        }
    }
}

async fn serve_metrics<S>(io: GlommioIo<S>, core: Rc<ShardCore>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let core = Rc::clone(&core);
            async move {
                let response = match request.uri().path() {
                    "/metrics" => crate::http::metrics(core).await,
                    "/health" => crate::http::health(core).await,
                    _ => crate::http::text(
                        http::StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "404 page not found\n".into(),
                    ),
                };
                Ok::<_, Infallible>(response)
            }
        });
    if let Err(e) = auto::Builder::new(GlommioExecutor)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!("metrics connection ended: {e}");
    }
}
