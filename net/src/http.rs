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
use crate::services::{ETCD_CLUSTER_VERSION, ETCD_VERSION};

pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `/health`: healthy when the member has a leader and a linearizable read succeeds.
pub(crate) async fn health(core: Rc<ShardCore>) -> Response<Body> {
    let has_leader = core.shared.leader.load(Ordering::Acquire) != 0;
    let healthy = has_leader && core.read_index().await.is_ok();
    let body = format!("{{\"health\":\"{healthy}\"}}");
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "text/plain; charset=utf-8", body)
}

/// `/metrics`: Prometheus text format with etcd's metric names; sizes read now.
pub(crate) async fn metrics(core: Rc<ShardCore>) -> Response<Body> {
    let sizes = core.db_sizes().await;
    let keys = core.raft_status().await.map_or(0, |s| s.keys);
    let body = rivet_engine::metrics::render(&rivet_engine::metrics::Gauges {
        db_size_bytes: sizes.used_bytes,
        db_size_in_use_bytes: sizes.live_bytes,
        keys,
    });
    text(StatusCode::OK, "text/plain; version=0.0.4", body)
}

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

type ResponseFuture =
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
        }
        let refused = self.core.shared.is_learner.load(Ordering::Acquire)
            && !served_by_learner(request.uri().path());
        let started = std::time::Instant::now();
        Box::pin(async move {
            let response = if refused {
                Ok(Status::from(EtcdError::NotSupportedForLearner).into_http())
            } else {
                grpc.call(request).await
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
            response
        })
    }
}

impl Service<Request<hyper::body::Incoming>> for ClientService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
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
