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
