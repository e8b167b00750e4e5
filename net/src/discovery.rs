//! Bootstrapping the initial cluster from DNS (`--discovery-srv`, `--discovery-srv-name`),
//! as etcd 3.4 does (`embed.Config.GetDNSClusterNames`, `pkg/srv.GetCluster`).
//!
//! etcd looks up `_etcd-server-ssl<suffix>._tcp.<domain>` (https peers) and
//! `_etcd-server<suffix>._tcp.<domain>` (http peers), where the suffix is
//! `-<--discovery-srv-name>` when given, and builds `--initial-cluster` from the records:
//! a record whose target and port resolve to one of this member's advertised peer URLs
//! gets this member's name, the others get the names `0`, `1`, … in record order; the URL
//! is `scheme://target:port` with the target's trailing dot removed. The results of both
//! lookups are combined; only when both fail does the member stop.
//!
//! The resolver is the system's (`/etc/resolv.conf`); tests point it at a DNS server of
//! their own on loopback with `RIVET_TEST_DNS_SERVER=ip:port`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::TokioAsyncResolver;

/// Test-only: the DNS server to ask instead of the system's.
const TEST_DNS_SERVER: &str = "RIVET_TEST_DNS_SERVER";

/// One SRV record, as looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// The target host, without the trailing dot.
    pub host: String,
    pub port: u16,
}

/// What `--initial-cluster` entries DNS gives, in etcd's `name=scheme://host:port` form.
pub async fn initial_cluster_from_srv(
    domain: &str,
    service_name: &str,
    member_name: &str,
    advertised_peer_urls: &[String],
) -> Result<Vec<String>, String> {
    let resolver = resolver()?;
    let suffix = if service_name.is_empty() {
        String::new()
    } else {
        format!("-{service_name}")
    };
    let own = resolve_urls(&resolver, advertised_peer_urls).await;
    let mut temp_name = 0usize;
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    for (service, scheme) in [
        (format!("etcd-server-ssl{suffix}"), "https"),
        (format!("etcd-server{suffix}"), "http"),
    ] {
        let query = format!("_{service}._tcp.{domain}");
        let targets = match lookup_srv(&resolver, &query).await {
            Ok(targets) => targets,
            Err(e) => {
                errors.push(format!("error querying DNS SRV records for _{service} {e}"));
                continue;
            }
        };
        let before = parts.len();
        let mut mismatch = None;
        for target in targets {
            let Some(address) = resolve_host(&resolver, &target.host, target.port).await else {
                continue;
            };
            let url_host = join_host_port(&target.host, target.port);
            let ours = own.iter().find(|(a, _)| *a == address).map(|(_, url)| url);
            let name = if ours.is_some() {
                member_name.to_string()
            } else {
                let name = temp_name.to_string();
                temp_name += 1;
                name
            };
            match ours {
                Some(url) if !url.starts_with(&format!("{scheme}://")) => {
                    mismatch = Some(format!(
                        "bootstrap at {scheme}://{url_host} from DNS for _{service} has scheme mismatch with expected peer {url}"
                    ));
                }
                _ => parts.push(format!("{name}={scheme}://{url_host}")),
            }
        }
        if parts.len() == before {
            errors.push(mismatch.unwrap_or_else(|| {
                format!("error querying DNS SRV records for _{service} (no usable record)")
            }));
        }
    }
    if errors.len() == 2 {
        return Err(format!(
            "error setting up initial cluster: srv: too many errors querying DNS SRV records ({:?}, {:?})",
            errors[0], errors[1]
        ));
    }
    Ok(parts)
}

fn resolver() -> Result<TokioAsyncResolver, String> {
    if let Ok(server) = std::env::var(TEST_DNS_SERVER) {
        let address: SocketAddr = server
            .parse()
            .map_err(|e| format!("{TEST_DNS_SERVER}={server}: {e}"))?;
        let servers = NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true);
        let mut options = ResolverOpts::default();
        options.attempts = 2;
        options.timeout = std::time::Duration::from_secs(2);
        return Ok(TokioAsyncResolver::tokio(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            options,
        ));
    }
    TokioAsyncResolver::tokio_from_system_conf()
        .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))
}

async fn lookup_srv(resolver: &TokioAsyncResolver, query: &str) -> Result<Vec<SrvTarget>, String> {
    // Fully qualified: no search domains are tried, as Go's resolver for SRV.
    let answer = resolver
        .srv_lookup(format!("{query}."))
        .await
        .map_err(|e| e.to_string())?;
    let mut records: Vec<_> = answer.iter().cloned().collect();
    // RFC 2782 order, as Go sorts them: priority, then weight (Go randomizes by weight;
    // rivet keeps the heavier first so that every member derives the same list).
    records.sort_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())));
    Ok(records
        .into_iter()
        .map(|r| SrvTarget {
            host: r.target().to_utf8().trim_end_matches('.').to_string(),
            port: r.port(),
        })
        .collect())
}

/// A host (name or IP literal) and port to a socket address through `resolver`.
async fn resolve_host(resolver: &TokioAsyncResolver, host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    match resolver.lookup_ip(format!("{host}.")).await {
        Ok(ips) => {
            let mut ips: Vec<IpAddr> = ips.iter().collect();
            ips.sort_by_key(|ip| !ip.is_ipv4());
            ips.first().map(|ip| SocketAddr::new(*ip, port))
        }
        Err(_) => (host, port).to_socket_addrs().ok()?.next(),
    }
}

/// This member's advertised peer URLs with the addresses they resolve to.
async fn resolve_urls(resolver: &TokioAsyncResolver, urls: &[String]) -> Vec<(SocketAddr, String)> {
    let mut out = Vec::new();
    for url in urls {
        let Some(rest) = url.split_once("://").map(|(_, r)| r.trim_end_matches('/')) else {
            continue;
        };
        let Some((host, port)) = rest.rsplit_once(':') else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if let Some(address) = resolve_host(resolver, host, port).await {
            out.push((address, url.clone()));
        }
    }
    out
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// etcd's v2 discovery protocol (`--discovery <url>`, etcd 3.4's
/// `etcdserver/api/v2discovery`): the discovery URL names a directory of a v2 keys API
/// (discovery.etcd.io or an etcd of the operator's); `<url>/_config/size` holds the
/// cluster size. Each member registers `<url>/<member ID>` = its `name=peer-urls` (create
/// only), then waits until `size` members registered; the first `size` by creation order
/// form `--initial-cluster`. A member that is not among them finds the cluster full.
pub mod v2 {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Method, Request, StatusCode};

    /// etcd's discovery errors, in its words.
    pub const ERR_INVALID_URL: &str = "discovery: invalid URL";
    pub const ERR_BAD_SIZE_KEY: &str = "discovery: size key is bad";
    pub const ERR_SIZE_NOT_FOUND: &str = "discovery: size key not found";
    pub const ERR_DUPLICATE_ID: &str = "discovery: found duplicate id";
    pub const ERR_DUPLICATE_NAME: &str = "discovery: found duplicate name";
    pub const ERR_FULL_CLUSTER: &str = "discovery: cluster is full";
    pub const ERR_TOO_MANY_RETRIES: &str = "discovery: too many retries";

    /// Attempts at a request that failed to reach the discovery service; etcd retries with
    /// an exponential backoff from 1 s, as here (capped at 30 s).
    const RETRIES: u32 = 6;
    const BACKOFF_START: Duration = Duration::from_millis(500);
    const BACKOFF_MAX: Duration = Duration::from_secs(30);
    /// Bytes of a discovery response rivet reads at most.
    const RESPONSE_BYTES_MAX: usize = 4 << 20;

    /// A parsed discovery URL.
    #[derive(Clone, Debug)]
    pub struct DiscoveryUrl {
        pub https: bool,
        pub host: String,
        pub port: u16,
        /// The cluster's directory, e.g. `/3e86b59982e49066c5d813af1c2e2579`.
        pub path: String,
    }

    impl DiscoveryUrl {
        pub fn parse(url: &str) -> Result<DiscoveryUrl, String> {
            let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
                (true, rest)
            } else if let Some(rest) = url.strip_prefix("http://") {
                (false, rest)
            } else {
                return Err(ERR_INVALID_URL.into());
            };
            let (authority, path) = match rest.find('/') {
                Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() || path.is_empty() {
                return Err(ERR_INVALID_URL.into());
            }
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                    match port.parse::<u16>() {
                        Ok(port) => (host, port),
                        Err(_) => return Err(ERR_INVALID_URL.into()),
                    }
                }
                _ => (authority, if https { 443 } else { 80 }),
            };
            Ok(DiscoveryUrl {
                https,
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
                path: path.to_string(),
            })
        }
    }

    /// One node of a v2 keys response.
    #[derive(serde::Deserialize, Debug, Clone)]
    struct Node {
        key: String,
        #[serde(default)]
        value: String,
        #[serde(default, rename = "createdIndex")]
        created_index: u64,
        #[serde(default, rename = "modifiedIndex")]
        modified_index: u64,
        #[serde(default)]
        nodes: Vec<Node>,
    }

    #[derive(serde::Deserialize, Debug)]
    struct KeysResponse {
        node: Node,
    }

    struct Answer {
        status: StatusCode,
        /// `X-Etcd-Index`.
        index: u64,
        body: Bytes,
    }

    /// Registers this member and waits for the cluster: answers `--initial-cluster`.
    /// `proxy` is `--discovery-proxy` (an HTTP proxy URL, or empty).
    pub async fn join_cluster(
        url: &str,
        proxy: &str,
        member_id: u64,
        config: &str,
    ) -> Result<String, String> {
        let durl = DiscoveryUrl::parse(url)?;
        let tls = if durl.https {
            Some(tls_connector()?)
        } else {
            None
        };
        let proxy = if proxy.is_empty() {
            None
        } else {
            let parsed = DiscoveryUrl::parse(&format!("{}/x", proxy.trim_end_matches('/')))
                .map_err(|_| format!("discovery: invalid proxy URL {proxy:?}"))?;
            Some((parsed.host, parsed.port))
        };
        let client = Client { durl, tls, proxy };
        // As etcd: a full cluster is found before registering, so a member that is too
        // many leaves no entry behind.
        client.check_cluster(member_id).await?;
        client.create_self(member_id, config).await?;
        let (mut nodes, size, mut index) = client.check_cluster(member_id).await?;
        while nodes.len() < size {
            let node = client.wait_next(index).await?;
            index = index.max(node.modified_index);
            if base(&node.key) != "_config" && !nodes.iter().any(|n| n.key == node.key) {
                nodes.push(node);
                nodes.sort_by_key(|n| n.created_index);
            }
        }
        nodes.truncate(size);
        let cluster: Vec<&str> = nodes.iter().map(|n| n.value.as_str()).collect();
        let mut names: Vec<&str> = cluster
            .iter()
            .flat_map(|entry| entry.split(','))
            .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.len() != size {
            return Err(ERR_DUPLICATE_NAME.into());
        }
        Ok(cluster.join(","))
    }

    fn base(key: &str) -> &str {
        key.rsplit('/').next().unwrap_or(key)
    }

    struct Client {
        durl: DiscoveryUrl,
        tls: Option<tokio_rustls::TlsConnector>,
        /// `--discovery-proxy`: host and port of an HTTP proxy.
        proxy: Option<(String, u16)>,
    }

    impl Client {
        async fn create_self(&self, member_id: u64, config: &str) -> Result<(), String> {
            let path = format!("{}/{member_id:x}?prevExist=false", self.durl.path);
            let body = format!("value={}", form_escape(config));
            let answer = self.request(Method::PUT, &path, Some(body)).await?;
            match answer.status {
                StatusCode::CREATED | StatusCode::OK => Ok(()),
                StatusCode::PRECONDITION_FAILED => Err(ERR_DUPLICATE_ID.into()),
                other => Err(format!("{ERR_TOO_MANY_RETRIES}: registering: {other}")),
            }
        }

        /// The registered members so far (oldest first), the cluster size, the index to
        /// wait from.
        async fn check_cluster(&self, member_id: u64) -> Result<(Vec<Node>, usize, u64), String> {
            let answer = self
                .request(
                    Method::GET,
                    &format!("{}/_config/size", self.durl.path),
                    None,
                )
                .await?;
            if answer.status == StatusCode::NOT_FOUND {
                return Err(ERR_SIZE_NOT_FOUND.into());
            }
            let size: usize = parse(&answer.body)?
                .node
                .value
                .parse()
                .map_err(|_| ERR_BAD_SIZE_KEY.to_string())?;
            if size == 0 {
                return Err(ERR_BAD_SIZE_KEY.into());
            }
            let answer = self.request(Method::GET, &self.durl.path, None).await?;
            if !answer.status.is_success() {
                return Err(format!("discovery: token not found ({})", answer.status));
            }
            let mut nodes: Vec<Node> = parse(&answer.body)?
                .node
                .nodes
                .into_iter()
                .filter(|n| base(&n.key) != "_config")
                .collect();
            nodes.sort_by_key(|n| n.created_index);
            let own = format!("{member_id:x}");
            if let Some(position) = nodes.iter().position(|n| base(&n.key) == own) {
                if position >= size {
                    return Err(ERR_FULL_CLUSTER.into());
                }
            } else if nodes.len() >= size {
                return Err(ERR_FULL_CLUSTER.into());
            }
            Ok((nodes, size, answer.index))
        }

        /// Waits for the next change in the cluster's directory after `index`.
        async fn wait_next(&self, index: u64) -> Result<Node, String> {
            let path = format!(
                "{}?wait=true&recursive=true&waitIndex={}",
                self.durl.path,
                index + 1
            );
            let answer = self.request(Method::GET, &path, None).await?;
            if !answer.status.is_success() {
                return Err(format!(
                    "discovery: watching the cluster: {}",
                    answer.status
                ));
            }
            Ok(parse(&answer.body)?.node)
        }

        /// One request, retried with backoff while the service cannot be reached.
        async fn request(
            &self,
            method: Method,
            path: &str,
            form: Option<String>,
        ) -> Result<Answer, String> {
            let mut backoff = BACKOFF_START;
            let mut last = String::new();
            for _ in 0..RETRIES {
                match self.request_once(method.clone(), path, form.clone()).await {
                    Ok(answer) if answer.status.is_server_error() => {
                        last = format!("{}", answer.status);
                    }
                    Ok(answer) => return Ok(answer),
                    Err(e) => last = e,
                }
                tracing::warn!(
                    error = %last,
                    "discovery: cannot reach {}:{}; retrying in {backoff:?}",
                    self.durl.host,
                    self.durl.port
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(format!("{ERR_TOO_MANY_RETRIES} ({last})"))
        }

        async fn request_once(
            &self,
            method: Method,
            path: &str,
            form: Option<String>,
        ) -> Result<Answer, String> {
            let host = if self.durl.port == if self.durl.https { 443 } else { 80 } {
                self.durl.host.clone()
            } else {
                format!("{}:{}", self.durl.host, self.durl.port)
            };
            let target = match &self.proxy {
                Some((proxy_host, proxy_port)) => (proxy_host.as_str(), *proxy_port),
                None => (self.durl.host.as_str(), self.durl.port),
            };
            let mut stream = tokio::net::TcpStream::connect(target)
                .await
                .map_err(|e| e.to_string())?;
            // Through a proxy, plain HTTP asks for the absolute URL; TLS tunnels first.
            let uri = match (&self.proxy, self.durl.https) {
                (Some(_), false) => format!("http://{host}{path}"),
                (Some(_), true) => {
                    tunnel(&mut stream, &self.durl.host, self.durl.port).await?;
                    path.to_string()
                }
                (None, _) => path.to_string(),
            };
            let mut request = Request::builder()
                .method(method)
                .uri(uri)
                .header(hyper::header::HOST, host);
            if form.is_some() {
                request = request.header(
                    hyper::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
            }
            let request = request
                .body(Full::new(Bytes::from(form.unwrap_or_default())))
                .map_err(|e| e.to_string())?;
            match &self.tls {
                Some(connector) => {
                    let name = rustls::pki_types::ServerName::try_from(self.durl.host.clone())
                        .map_err(|e| e.to_string())?;
                    let stream = connector
                        .connect(name, stream)
                        .await
                        .map_err(|e| e.to_string())?;
                    send(stream, request).await
                }
                None => send(stream, request).await,
            }
        }
    }

    async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Answer, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let index = response
            .headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limited = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX);
        let body = limited
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        driver.abort();
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    /// `CONNECT host:port` through an HTTP proxy: the proxy's status line must say 200.
    async fn tunnel(
        stream: &mut tokio::net::TcpStream,
        host: &str,
        port: u16,
    ) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Read the proxy's answer byte by byte up to the blank line, so that nothing of
        // the TLS stream after it is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                return Err("discovery: the proxy's answer to CONNECT is too long".into());
            }
            let byte = stream.read_u8().await.map_err(|e| e.to_string())?;
            head.push(byte);
        }
        let status_line = String::from_utf8_lossy(&head);
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(format!(
                "discovery: the proxy refused CONNECT {host}:{port}: {}",
                status_line.lines().next().unwrap_or("")
            ));
        }
        Ok(())
    }

    /// Decodes a v2 keys response (for the fuzz target): the node's key and value.
    pub fn decode_response(body: &[u8]) -> Result<(String, String, usize), String> {
        let response = parse(body)?;
        Ok((
            response.node.key,
            response.node.value,
            response.node.nodes.len(),
        ))
    }

    fn parse(body: &[u8]) -> Result<KeysResponse, String> {
        serde_json::from_slice(body).map_err(|e| format!("discovery: bad discovery endpoint ({e})"))
    }

    /// `application/x-www-form-urlencoded` escaping.
    fn form_escape(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for byte in value.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(byte as char)
                }
                b' ' => out.push('+'),
                other => out.push_str(&format!("%{other:02X}")),
            }
        }
        out
    }

    /// The system's CA bundle (the paths Go's crypto/x509 reads on Linux).
    fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
        const BUNDLES: &[&str] = &[
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/pki/tls/cacert.pem",
            "/etc/ssl/cert.pem",
        ];
        let roots = BUNDLES
            .iter()
            .find_map(|path| crate::tls::load_roots(path).ok())
            .ok_or_else(|| {
                "discovery: no system CA bundle to verify the discovery service".to_string()
            })?;
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn discovery_urls_parse_as_etcd_takes_them() {
            let d = DiscoveryUrl::parse("https://discovery.etcd.io/3e86b59982e4").unwrap();
            assert!(d.https);
            assert_eq!((d.host.as_str(), d.port), ("discovery.etcd.io", 443));
            assert_eq!(d.path, "/3e86b59982e4");
            let d = DiscoveryUrl::parse("http://127.0.0.1:4001/v2/keys/discovery/x/").unwrap();
            assert_eq!((d.host.as_str(), d.port), ("127.0.0.1", 4001));
            assert_eq!(d.path, "/v2/keys/discovery/x");
            assert!(DiscoveryUrl::parse("ftp://x/y").is_err());
            assert!(DiscoveryUrl::parse("http://host").is_err());
            assert_eq!(
                form_escape("a=http://x:1,b c"),
                "a%3Dhttp%3A%2F%2Fx%3A1%2Cb+c"
            );
        }
    }
}
