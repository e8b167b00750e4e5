//! The client port serves gRPC and plain HTTP like etcd: everything with a gRPC content
//! type goes to the tonic routes, `/v3/…` to the JSON gateway (`crate::gateway`), and
//! `/health`, `/version` and `/metrics` answer here.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use rivet_engine::core::ShardCore;
use rivet_engine::error::EtcdError;
use tonic::body::Body;
use tonic::Status;
use tower::Service;

use crate::gateway::GatewayConfig;
use crate::grpc_metrics::{Counted, Direction};
use crate::services::{ETCD_CLUSTER_VERSION, ETCD_VERSION};

pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `/health`, as etcd 3.4's `checkHealth`: unhealthy while any alarm is active (NOSPACE,
/// CORRUPT, …), else when the member has no leader, else when a linearizable read fails.
/// Healthy answers 200 `{"health":"true"}`; unhealthy answers as Go's `http.Error` does:
/// 503, the body with a newline, `X-Content-Type-Options: nosniff`.
pub(crate) async fn health(core: Rc<ShardCore>) -> Response<Body> {
    let healthy = match core.alarms().await {
        Ok(alarms) if alarms.is_empty() => {
            core.shared.leader.load(Ordering::Acquire) != 0 && core.read_index().await.is_ok()
        }
        Ok(alarms) => {
            for alarm in &alarms {
                tracing::warn!(
                    member = format_args!("{:x}", alarm.member_id),
                    alarm = alarm.alarm,
                    "/health error due to an alarm"
                );
            }
            false
        }
        Err(_) => false,
    };
    if healthy {
        rivet_engine::metrics::HEALTH_SUCCESS.inc();
    } else {
        rivet_engine::metrics::HEALTH_FAILURES.inc();
    }
    if healthy {
        return text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "{\"health\":\"true\"}".into(),
        );
    }
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        "{\"health\":\"false\"}\n".into(),
    );
    response.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `/metrics`: Prometheus text format with etcd's metric names; sizes read now.
pub(crate) async fn metrics(core: Rc<ShardCore>) -> Response<Body> {
    use rivet_engine::metrics;
    metrics::SCRAPES_IN_FLIGHT.add(1);
    let sizes = core.db_sizes().await;
    let keys = core.raft_status().await.map_or(0, |s| s.keys);
    let body = metrics::render(&metrics::Gauges {
        db_size_bytes: sizes.used_bytes,
        db_size_in_use_bytes: sizes.live_bytes,
        keys,
        member_id: core.shared.member_id,
        is_learner: core.shared.is_learner.load(Ordering::Acquire),
        revision: core.shared.applied_revision(),
        compact_revision: core.compact_revision(),
        server_version: ETCD_VERSION,
        cluster_version: ETCD_API_VERSION,
    });
    metrics::SCRAPES_IN_FLIGHT.add(-1);
    metrics::SCRAPES.inc();
    text(StatusCode::OK, "text/plain; version=0.0.4", body)
}

/// The cluster version as etcd's metrics label it (major.minor).
const ETCD_API_VERSION: &str = "3.4";

fn not_found() -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n".into(),
    )
}

fn version() -> Response<Body> {
    text(
        StatusCode::OK,
        "application/json",
        format!("{{\"etcdserver\":\"{ETCD_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"),
    )
}

/// `/rivet/test/faults?drop=0.2&delay_ms=100&duplicate=0.1&deaf_to=<hex id>,<hex id>`:
/// the test-only fault switch's settings (absent: off).
fn parse_faults(query: &str) -> Result<rivet_engine::raft::faults::TestFaults, String> {
    let mut faults = rivet_engine::raft::faults::TestFaults::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let share = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| (0.0..=1.0).contains(s))
                .ok_or_else(|| format!("{name}={v}: a share from 0 to 1"))
        };
        match name {
            "drop" => faults.drop = share(value)?,
            "duplicate" => faults.duplicate = share(value)?,
            "delay_ms" => {
                let ms = value
                    .parse::<u64>()
                    .map_err(|_| format!("delay_ms={value}: milliseconds"))?;
                faults.delay = std::time::Duration::from_millis(ms);
            }
            "deaf_to" => {
                for id in value.split(',').filter(|v| !v.is_empty()) {
                    let id = u64::from_str_radix(id, 16)
                        .map_err(|_| format!("deaf_to={value}: hex member IDs"))?;
                    faults.deaf_to.insert(id);
                }
            }
            other => return Err(format!("unknown fault {other:?}")),
        }
    }
    Ok(faults)
}

fn test_faults_enabled() -> bool {
    std::env::var("RIVET_TEST_FAULTS").is_ok_and(|v| v == "1")
}

/// The gRPC methods a learner serves, as in etcd 3.4: Status, and Range (which itself
/// refuses linearizable reads). Every other method, streams included, is refused with
/// "rpc not supported for learner" so that clients move on to a voting member.
fn served_by_learner(path: &str) -> bool {
    matches!(
        path,
        "/etcdserverpb.Maintenance/Status" | "/etcdserverpb.KV/Range"
    )
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A request larger than the receive limit (`--max-request-bytes` + 512 KiB) is refused
/// by tonic's decoder with OutOfRange "Error, decoded message length too large: found N
/// bytes, the limit is: M bytes"; grpc-go, so etcd, answers ResourceExhausted "grpc:
/// received message larger than max (N vs. M)". Clients match on etcd's, so the
/// trailers-only answer is rewritten to it.
fn go_receive_limit_status(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some("11") {
        return response;
    }
    let Some(message) = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
    else {
        return response;
    };
    if let Some(go) = go_receive_limit_message(&message) {
        if let Ok(value) = HeaderValue::from_str(&go) {
            headers.insert("grpc-status", HeaderValue::from_static("8"));
            headers.insert("grpc-message", value);
        }
    }
    response
}

/// grpc-go's text for tonic's "message too large" decode error, if `message` is one.
fn go_receive_limit_message(message: &str) -> Option<String> {
    const TONIC: &str = "Error, decoded message length too large: found ";
    let (found, limit) = message
        .strip_prefix(TONIC)?
        .split_once(" bytes, the limit is: ")?;
    let limit = limit.trim_end_matches(" bytes");
    Some(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

/// The status a stream ends with when reading the client's next message failed, as
/// grpc-go (so etcd) words it: [`go_receive_limit_status`] for streams.
pub fn go_stream_status(status: Status) -> Status {
    match go_receive_limit_message(status.message()) {
        Some(go) => Status::new(tonic::Code::ResourceExhausted, go),
        None => status,
    }
}

/// gRPC's percent-decoding of `grpc-message` (only `%XX` escapes).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Routes one request of a client connection.
#[derive(Clone)]
pub struct ClientService {
    pub grpc: tonic::service::Routes,
    pub core: send_wrapper::SendWrapper<Rc<ShardCore>>,
    pub gateway: GatewayConfig,
    /// `--cors`, `--host-whitelist`, `--enable-pprof`.
    pub http: std::sync::Arc<crate::access::HttpSettings>,
    /// Whether the connection is TLS (etcd's access controller skips the Host check).
    pub secure: bool,
}

pub(crate) type ResponseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>>>>;

impl ClientService {
    /// One gRPC call, from the wire or from the JSON gateway: learners refuse what etcd's
    /// learners refuse, and the call is counted in the `grpc_server_*` metrics.
    pub fn call_grpc<B>(&self, request: Request<B>) -> ResponseFuture
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        let mut grpc = self.grpc.clone();
        let method = rivet_engine::metrics::grpc_method(request.uri().path());
        if let Some(method) = method {
            rivet_engine::metrics::grpc_started(method);
            if rivet_engine::metrics::GRPC_METHODS[method].2 == "unary" {
                rivet_engine::metrics::CLIENT_REQUESTS_UNARY.inc();
            } else {
                rivet_engine::metrics::CLIENT_REQUESTS_STREAM.inc();
            }
        }
        let request = request.map(|body| Counted::new(body, method, Direction::Received));
        let refused = self.core.shared.is_learner.load(Ordering::Acquire)
            && !served_by_learner(request.uri().path());
        let started = std::time::Instant::now();
        Box::pin(async move {
            let response = if refused {
                Ok(Status::from(EtcdError::NotSupportedForLearner).into_http())
            } else {
                grpc.call(request).await.map(go_receive_limit_status)
            };
            // `--metrics extensive`: a unary RPC is handled when its response is ready
            // (streams run on past this point and are not timed).
            if let Some(method) = method {
                if rivet_engine::metrics::GRPC_METHODS[method].2 == "unary" {
                    rivet_engine::metrics::grpc_handling(method, started.elapsed());
                }
            }
            if let (Some(method), Ok(response)) = (method, &response) {
                // Errors travel in the headers (trailers-only responses); a response
                // without `grpc-status` there went on and is counted as OK.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                rivet_engine::metrics::grpc_handled(method, code);
            }
            match method {
                Some(_) => response.map(|response| {
                    response.map(|body| Body::new(Counted::new(body, method, Direction::Sent)))
                }),
                None => response,
            }
        })
    }
}

/// Requests from hyper (HTTP/1.1) and from rivet's HTTP/2 server (`crate::h2`).
impl<B> Service<Request<B>> for ClientService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_grpc(&request) {
            return self.call_grpc(request);
        }
        let settings = std::sync::Arc::clone(&self.http);
        // etcd's access controller wraps its whole HTTP mux, the gateway included: the
        // Host check, CORS and OPTIONS (plain HTTP only).
        let origin = match crate::access::check(&settings, &request, self.secure) {
            crate::access::Decision::Answer(response) => {
                return Box::pin(async move { Ok(response) })
            }
            crate::access::Decision::Route(origin) => origin,
        };
        if self.gateway.enabled && crate::gateway::handles(request.uri().path()) {
            let (client, config) = (self.clone(), self.gateway);
            return Box::pin(async move {
                let request = request.map(Body::new);
                let mut response = crate::gateway::serve(client, config, request).await;
                crate::access::add_cors(&mut response, origin);
                Ok(response)
            });
        }
        let core = Rc::clone(&self.core);
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        Box::pin(async move {
            let mut response = match path.as_str() {
                "/health" => health(core).await,
                "/version" => version(),
                "/metrics" => metrics(core).await,
                // Test-only fault switch, off unless RIVET_TEST_FAULTS=1: isolate this
                // member from its peers (etcd's tests isolate the leader the same way).
                "/rivet/test/faults" if test_faults_enabled() => match parse_faults(&query) {
                    Ok(faults) => match core.faults_for_tests(faults).await {
                        Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
                        Err(e) => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain; charset=utf-8",
                            format!("{e}\n"),
                        ),
                    },
                    Err(e) => text(
                        StatusCode::BAD_REQUEST,
                        "text/plain; charset=utf-8",
                        format!("{e}\n"),
                    ),
                },
                "/rivet/test/isolate" | "/rivet/test/heal" if test_faults_enabled() => {
                    let isolate = path == "/rivet/test/isolate";
                    match core.isolate_for_tests(isolate).await {
                        Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
                        Err(e) => text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain; charset=utf-8",
                            e.to_string(),
                        ),
                    }
                }
                // Test-only, off unless RIVET_TEST_FAULTS=1: panic the shard core that
                // serves this request, as a bug would (net/tests/crash.rs).
                "/rivet/test/panic" if test_faults_enabled() => {
                    tracing::warn!(
                        shard = core.id,
                        "test fault switch: panicking this shard core"
                    );
                    panic!(
                        "test fault switch: /rivet/test/panic on shard core {}",
                        core.id
                    );
                }
                _ if settings.enable_pprof && path.starts_with("/debug/pprof/") => {
                    match crate::pprof::route(&path, &query).await {
                        Some(response) => response,
                        None => not_found(),
                    }
                }
                _ => not_found(),
            };
            crate::access::add_cors(&mut response, origin);
            Ok(response)
        })
    }
}
