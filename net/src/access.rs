//! etcd's access controller for plain HTTP requests on the client port (`/health`,
//! `/version`, `/metrics`, `/debug/pprof/...`): `--host-whitelist` (a request whose Host
//! is not listed is refused with 421, against DNS rebinding, CVE-2018-5702) and `--cors`
//! (which origins get CORS headers; `OPTIONS` is answered at once). gRPC requests do not
//! pass here, as in etcd, where cmux hands them to the gRPC server directly.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;

/// The client port's HTTP settings from the flags, shared by every shard core.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `--cors`: allowed origins; empty or `*` allows all.
    pub cors: Vec<String>,
    /// `--host-whitelist`: allowed hosts; empty or `*` allows all.
    pub host_whitelist: Vec<String>,
    /// `--enable-pprof`: serve `/debug/pprof/`.
    pub enable_pprof: bool,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            cors: vec!["*".into()],
            host_whitelist: vec!["*".into()],
            enable_pprof: false,
        }
    }
}

fn allows(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == "*" || v == value)
}

/// Go's `httputil.GetHostname`: the Host without its port.
fn hostname<B>(request: &Request<B>) -> String {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    crate::config::goflag::host_of(&host).unwrap_or(host)
}

fn plain(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// etcd's `errCVE20185702` text.
fn unrecognized_host(host: &str) -> String {
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n\
         \x20 - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    )
}

/// What the access controller decided for a request before routing it.
pub enum Decision {
    /// Route it; then add the CORS headers for this origin (`None`: no CORS headers).
    Route(Option<HeaderValue>),
    /// Answer this at once (a refused host, or an `OPTIONS` request).
    Answer(Response<Body>),
}

/// etcd's `accessController.ServeHTTP` before the mux: the Host check (plain HTTP
/// only; a TLS connection skips it) and `OPTIONS`.
pub fn check<B>(settings: &HttpSettings, request: &Request<B>, secure: bool) -> Decision {
    if !secure {
        let host = hostname(request);
        if !allows(&settings.host_whitelist, &host) {
            if crate::logging::is_zap() {
                tracing::warn!(
                    host = host.as_str(),
                    "rejecting HTTP request to prevent DNS rebinding attacks"
                );
            } else {
                tracing::warn!(
                    "rejecting HTTP request from {host:?} to prevent DNS rebinding attacks"
                );
            }
            return Decision::Answer(plain(
                StatusCode::MISDIRECTED_REQUEST,
                unrecognized_host(&host),
            ));
        }
    }
    // etcd's `OriginAllowed("*")`: no list or a `*` in it answers every origin with `*`.
    let origin = if settings.cors.is_empty() || settings.cors.iter().any(|c| c == "*") {
        Some(HeaderValue::from_static("*"))
    } else {
        request
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| allows(&settings.cors, o)))
            .cloned()
    };
    if request.method() == http::Method::OPTIONS {
        let mut response = Response::new(Body::empty());
        add_cors(&mut response, origin);
        return Decision::Answer(response);
    }
    Decision::Route(origin)
}

/// etcd's `addCORSHeader`.
pub fn add_cors(response: &mut Response<Body>, origin: Option<HeaderValue>) {
    let Some(origin) = origin else { return };
    let headers = response.headers_mut();
    headers.insert(
        "Access-Control-Allow-Methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert("Access-Control-Allow-Origin", origin);
    headers.insert(
        "Access-Control-Allow-Headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}
