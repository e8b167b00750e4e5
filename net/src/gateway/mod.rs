//! The gRPC-JSON gateway: etcd 3.4's HTTP/JSON API on the client port, under `/v3/` and
//! `/v3beta/` (rewritten to `/v3/`, as etcd 3.4 does; `/v3alpha/` is gone in 3.4).
//!
//! Each route is etcd 3.4's (grpc-gateway v1's generated table, `POST` only). A request's
//! JSON is read with the rules and error messages of etcd's gateway ([`json`]), becomes
//! the proto message (pbjson, generated from the protos), and is handed to the same gRPC
//! services the client port serves, in process, on the core that accepted the connection:
//! the call goes through [`ClientService::call_grpc`] with a tonic client over an
//! in-process channel, so the learner check, the `grpc_server_*` metrics, request limits
//! and the `token` metadata (from the `Authorization` header) are exactly the gRPC path's.
//! Answers are written as etcd's gateway writes them: proto3 JSON with the protos' field
//! names, errors as `{"error":…,"message":…,"code":…}` with grpc-gateway's HTTP status,
//! and streams (watch, lease keep-alive, snapshot, election observe) as newline-separated
//! `{"result":…}` objects on a chunked response, each sent as soon as it is produced.

pub mod json;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use rivet_api::etcdserverpb as pb;
use rivet_api::{v3electionpb, v3lockpb};
use rivet_engine::limits;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::http::ClientService;
use json::{Decoder, Next};

/// The gateway's settings on a client listener.
#[derive(Clone, Copy, Debug)]
pub struct GatewayConfig {
    /// etcd's `--enable-grpc-gateway` (on by default).
    pub enabled: bool,
    /// The largest JSON body of one request: a larger one could only carry a request
    /// above `--max-request-bytes`.
    pub request_bytes_max: usize,
}

impl GatewayConfig {
    pub fn new(max_request_bytes: usize) -> GatewayConfig {
        GatewayConfig {
            enabled: true,
            request_bytes_max: max_request_bytes
                .saturating_mul(limits::GATEWAY_REQUEST_EXPANSION)
                .saturating_add(limits::GATEWAY_REQUEST_OVERHEAD_BYTES),
        }
    }
}

/// Whether `path` belongs to the gateway.
pub fn handles(path: &str) -> bool {
    path == "/v3" || path.starts_with("/v3/") || path.starts_with("/v3beta/")
}

/// etcd's message for a request the server refuses as too large (`ErrRequestTooLarge`).
const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";

/// The in-process channel a tonic client uses to reach the client port's gRPC services.
#[derive(Clone)]
struct Channel(ClientService);

impl tower::Service<Request<Body>> for Channel {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        self.0.call_grpc(request)
    }
}

/// One gateway request on its way to a service.
struct Call {
    channel: Channel,
    body: Body,
    /// gRPC metadata from the HTTP headers (`Authorization` → `token`).
    metadata: MetadataMap,
    request_bytes_max: usize,
}

/// The gRPC metadata etcd's gateway passes on: `Authorization` (etcd reads the token from
/// `token` or `authorization`), and `Grpc-Metadata-*` headers without the prefix.
fn metadata_from(headers: &http::HeaderMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (name, value) in headers {
        let Ok(value) = MetadataValue::try_from(value.as_bytes()) else {
            continue;
        };
        if name == header::AUTHORIZATION {
            metadata.insert("token", value.clone());
            metadata.insert("authorization", value);
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            if let Ok(key) = MetadataKey::from_bytes(key.as_bytes()) {
                metadata.append(key, value);
            }
        }
    }
    metadata
}

/// Go's `http.StatusText`.
fn status_text(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("")
}

/// grpc-gateway v1's `HTTPStatusFromCode`, as in etcd 3.4 (FailedPrecondition is 412).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_string(text: &str) -> String {
    String::from_utf8(json::go_escape(
        serde_json::to_vec(text).unwrap_or_else(|_| b"\"\"".to_vec()),
    ))
    .unwrap_or_default()
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn full(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    response(
        status,
        content_type,
        Body::new(Full::new(Bytes::from(body))),
    )
}

/// Go's `http.Error`: the status text, `text/plain`, `nosniff`.
fn plain_error(status: StatusCode) -> Response<Body> {
    let mut response = full(
        status,
        "text/plain; charset=utf-8",
        format!("{}\n", status_text(status)).into_bytes(),
    );
    response.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// grpc-gateway's error body: `{"error":…,"message":…,"code":…}` (empty fields left out,
/// as jsonpb writes them).
fn error_response(code: Code, message: &str) -> Response<Body> {
    let mut body = String::from("{");
    if !message.is_empty() {
        let text = json_string(message);
        body.push_str(&format!("\"error\":{text},\"message\":{text}"));
    }
    if code != Code::Ok {
        if body.len() > 1 {
            body.push(',');
        }
        body.push_str(&format!("\"code\":{}", code as i32));
    }
    body.push('}');
    full(http_status(code), "application/json", body.into_bytes())
}

fn status_response(status: &Status) -> Response<Body> {
    error_response(status.code(), status.message())
}

/// The last object of a stream that failed: grpc-gateway's `StreamError`.
fn stream_error_chunk(status: &Status) -> Bytes {
    let code = status.code();
    let http = http_status(code);
    let mut body = String::from("{\"error\":{");
    let mut fields = Vec::new();
    if code != Code::Ok {
        fields.push(format!("\"grpc_code\":{}", code as i32));
    }
    fields.push(format!("\"http_code\":{}", http.as_u16()));
    if !status.message().is_empty() {
        fields.push(format!("\"message\":{}", json_string(status.message())));
    }
    fields.push(format!(
        "\"http_status\":{}",
        json_string(status_text(http))
    ));
    body.push_str(&fields.join(","));
    body.push_str("}}");
    Bytes::from(body)
}

fn result_chunk<T: Serialize>(message: &T) -> Bytes {
    let mut chunk = b"{\"result\":".to_vec();
    chunk.extend_from_slice(&json::write_message(message));
    chunk.extend_from_slice(b"}\n");
    Bytes::from(chunk)
}

/// The response metadata as grpc-gateway forwards it: `Grpc-Metadata-<Key>` headers.
fn forward_metadata(response: &mut Response<Body>, metadata: &MetadataMap) {
    for entry in metadata.iter() {
        let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry else {
            continue;
        };
        if key.as_str().starts_with("grpc-") {
            continue;
        }
        let name = format!("Grpc-Metadata-{}", canonical_header(key.as_str()));
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_encoded_bytes()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
}

/// Go's `CanonicalMIMEHeaderKey` (`content-type` → `Content-Type`).
fn canonical_header(key: &str) -> String {
    let mut upper = true;
    key.chars()
        .map(|c| {
            let c = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            c
        })
        .collect()
}

/// The request body as successive JSON values.
struct BodyReader {
    body: Body,
    decoder: Decoder,
    ended: bool,
    bytes_max: usize,
}

impl BodyReader {
    fn new(body: Body, bytes_max: usize) -> BodyReader {
        BodyReader {
            body,
            decoder: Decoder::default(),
            ended: false,
            bytes_max,
        }
    }

    /// The next JSON value: `Ok(None)` when the body ended first, `Err` with the message
    /// Go's decoder gives for bad JSON (or a body read error).
    async fn next_value(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            match self.decoder.next_value(self.ended) {
                Next::Value(text) => return Ok(Some(text)),
                Next::End => return Ok(None),
                Next::Error(error) => return Err(error),
                Next::More => {}
            }
            if self.decoder.buffered() > self.bytes_max {
                return Err(REQUEST_TOO_LARGE.to_string());
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.decoder.feed(data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => self.ended = true,
            }
        }
    }

    /// The next request message, read as etcd's gateway reads it.
    async fn next<T: DeserializeOwned>(&mut self, proto_name: &str) -> Result<Option<T>, String> {
        match self.next_value().await? {
            Some(text) => json::read_message(proto_name, &text).map(Some),
            None => Ok(None),
        }
    }
}

/// A unary call: one JSON request (an empty body is the empty message), one JSON answer.
async fn unary<Req, Resp>(call: Call, path: &'static str, proto_name: &str) -> Response<Body>
where
    Req: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    Resp: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let mut reader = BodyReader::new(call.body, call.request_bytes_max);
    let message = match reader.next_value().await {
        Ok(Some(text)) => match json::read_message::<Req>(proto_name, &text) {
            Ok(message) => message,
            Err(e) => return error_response(Code::InvalidArgument, &e),
        },
        Ok(None) => Req::default(),
        Err(e) => return error_response(Code::InvalidArgument, &e),
    };
    let channel = call.channel;
    let request = {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = call.metadata;
        request
    };
    let mut grpc = Call::grpc_for(channel);
    let result = grpc
        .unary(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::<Req, Resp>::default(),
        )
        .await;
    match result {
        Ok(answer) => {
            let mut response = full(
                StatusCode::OK,
                "application/json",
                json::write_message(answer.get_ref()),
            );
            forward_metadata(&mut response, answer.metadata());
            response
        }
        Err(status) => status_response(&status),
    }
}

impl Call {
    fn grpc_for(channel: Channel) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Answers a response stream as grpc-gateway's `ForwardResponseStream`: the status line
/// waits for the first message (an error before it sets the status), then every message
/// is one `{"result":…}` line, sent at once; an error ends the stream with an error object.
async fn forward_stream<Resp>(
    answer: Result<tonic::Response<tonic::Streaming<Resp>>, Status>,
) -> Response<Body>
where
    Resp: Serialize + Send + 'static,
{
    let (metadata, mut stream) = match answer {
        Ok(answer) => {
            let metadata = answer.metadata().clone();
            (Some(metadata), answer.into_inner())
        }
        Err(status) => {
            return response(
                http_status(status.code()),
                "application/json",
                Body::new(Full::new(stream_error_chunk(&status))),
            )
        }
    };
    let first = match stream.message().await {
        Ok(Some(message)) => result_chunk(&message),
        Ok(None) => {
            let mut response = response(StatusCode::OK, "application/json", Body::empty());
            if let Some(metadata) = &metadata {
                forward_metadata(&mut response, metadata);
            }
            return response;
        }
        Err(status) => {
            return response(
                http_status(status.code()),
                "application/json",
                Body::new(Full::new(stream_error_chunk(&status))),
            )
        }
    };
    let rest = futures::stream::unfold(Some(stream), |stream| async move {
        let mut stream = stream?;
        match stream.message().await {
            Ok(Some(message)) => Some((result_chunk(&message), Some(stream))),
            Ok(None) => None,
            Err(status) => Some((stream_error_chunk(&status), None)),
        }
    });
    let chunks = futures::stream::once(async move { first })
        .chain(rest)
        .map(|chunk| Ok::<_, Status>(Frame::data(chunk)));
    let mut response = response(
        StatusCode::OK,
        "application/json",
        Body::new(StreamBody::new(chunks)),
    );
    if let Some(metadata) = &metadata {
        forward_metadata(&mut response, metadata);
    }
    response
}

/// A bidirectional stream (watch, lease keep-alive): the body is a stream of JSON
/// requests. As in etcd's gateway, a bad first request answers an error (Unknown, 500);
/// a bad later one, or the end of the body, only ends the requests: the responses go on.
async fn bidi<Req, Resp>(call: Call, path: &'static str, proto_name: &'static str) -> Response<Body>
where
    Req: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    Resp: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let mut reader = BodyReader::new(call.body, call.request_bytes_max);
    let first = match reader.next::<Req>(proto_name).await {
        Ok(first) => first,
        Err(e) => return error_response(Code::Unknown, &e),
    };
    let (mut requests, outbound) = mpsc::channel::<Req>(limits::GATEWAY_STREAM_REQUEST_QUEUE);
    if let Some(first) = first {
        // The channel is new and has room.
        let _ = requests.try_send(first);
        glommio::spawn_local(async move {
            while let Ok(Some(request)) = reader.next::<Req>(proto_name).await {
                if requests.send(request).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    let request = {
        let mut request = tonic::Request::new(outbound);
        *request.metadata_mut() = call.metadata;
        request
    };
    let mut grpc = Call::grpc_for(call.channel);
    let answer = grpc
        .streaming(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::<Req, Resp>::default(),
        )
        .await;
    forward_stream(answer).await
}

/// A response stream (snapshot, election observe): one JSON request, streamed answers.
async fn server_stream<Req, Resp>(
    call: Call,
    path: &'static str,
    proto_name: &str,
) -> Response<Body>
where
    Req: prost::Message + DeserializeOwned + Default + Send + Sync + 'static,
    Resp: prost::Message + Serialize + Default + Send + Sync + 'static,
{
    let mut reader = BodyReader::new(call.body, call.request_bytes_max);
    let message = match reader.next::<Req>(proto_name).await {
        Ok(message) => message.unwrap_or_default(),
        Err(e) => return error_response(Code::InvalidArgument, &e),
    };
    let request = {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = call.metadata;
        request
    };
    let mut grpc = Call::grpc_for(call.channel);
    let answer = grpc
        .server_streaming(
            request,
            PathAndQuery::from_static(path),
            ProstCodec::<Req, Resp>::default(),
        )
        .await;
    forward_stream(answer).await
}

macro_rules! routes {
    ($( $http:literal => $shape:ident $grpc:literal $proto:literal ($req:ty, $resp:ty); )*) => {
        /// Every gateway path of etcd 3.4 (all `POST`).
        pub const PATHS: &[&str] = &[$($http),*];

        async fn dispatch(path: &str, call: Call) -> Response<Body> {
            match path {
                $( $http => $shape::<$req, $resp>(call, $grpc, $proto).await, )*
                _ => plain_error(StatusCode::NOT_FOUND),
            }
        }
    };
}

// etcd 3.4's route table (grpc-gateway's generated `*.pb.gw.go`). `/v3/maintenance/hash`
// is declared for both Hash and HashKV there; the first registered, Hash, answers.
routes! {
    "/v3/kv/range" => unary "/etcdserverpb.KV/Range" "etcdserverpb.RangeRequest" (pb::RangeRequest, pb::RangeResponse);
    "/v3/kv/put" => unary "/etcdserverpb.KV/Put" "etcdserverpb.PutRequest" (pb::PutRequest, pb::PutResponse);
    "/v3/kv/deleterange" => unary "/etcdserverpb.KV/DeleteRange" "etcdserverpb.DeleteRangeRequest" (pb::DeleteRangeRequest, pb::DeleteRangeResponse);
    "/v3/kv/txn" => unary "/etcdserverpb.KV/Txn" "etcdserverpb.TxnRequest" (pb::TxnRequest, pb::TxnResponse);
    "/v3/kv/compaction" => unary "/etcdserverpb.KV/Compact" "etcdserverpb.CompactionRequest" (pb::CompactionRequest, pb::CompactionResponse);
    "/v3/watch" => bidi "/etcdserverpb.Watch/Watch" "etcdserverpb.WatchRequest" (pb::WatchRequest, pb::WatchResponse);
    "/v3/lease/grant" => unary "/etcdserverpb.Lease/LeaseGrant" "etcdserverpb.LeaseGrantRequest" (pb::LeaseGrantRequest, pb::LeaseGrantResponse);
    "/v3/lease/revoke" => unary "/etcdserverpb.Lease/LeaseRevoke" "etcdserverpb.LeaseRevokeRequest" (pb::LeaseRevokeRequest, pb::LeaseRevokeResponse);
    "/v3/kv/lease/revoke" => unary "/etcdserverpb.Lease/LeaseRevoke" "etcdserverpb.LeaseRevokeRequest" (pb::LeaseRevokeRequest, pb::LeaseRevokeResponse);
    "/v3/lease/keepalive" => bidi "/etcdserverpb.Lease/LeaseKeepAlive" "etcdserverpb.LeaseKeepAliveRequest" (pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse);
    "/v3/lease/timetolive" => unary "/etcdserverpb.Lease/LeaseTimeToLive" "etcdserverpb.LeaseTimeToLiveRequest" (pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse);
    "/v3/kv/lease/timetolive" => unary "/etcdserverpb.Lease/LeaseTimeToLive" "etcdserverpb.LeaseTimeToLiveRequest" (pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse);
    "/v3/lease/leases" => unary "/etcdserverpb.Lease/LeaseLeases" "etcdserverpb.LeaseLeasesRequest" (pb::LeaseLeasesRequest, pb::LeaseLeasesResponse);
    "/v3/kv/lease/leases" => unary "/etcdserverpb.Lease/LeaseLeases" "etcdserverpb.LeaseLeasesRequest" (pb::LeaseLeasesRequest, pb::LeaseLeasesResponse);
    "/v3/cluster/member/add" => unary "/etcdserverpb.Cluster/MemberAdd" "etcdserverpb.MemberAddRequest" (pb::MemberAddRequest, pb::MemberAddResponse);
    "/v3/cluster/member/remove" => unary "/etcdserverpb.Cluster/MemberRemove" "etcdserverpb.MemberRemoveRequest" (pb::MemberRemoveRequest, pb::MemberRemoveResponse);
    "/v3/cluster/member/update" => unary "/etcdserverpb.Cluster/MemberUpdate" "etcdserverpb.MemberUpdateRequest" (pb::MemberUpdateRequest, pb::MemberUpdateResponse);
    "/v3/cluster/member/list" => unary "/etcdserverpb.Cluster/MemberList" "etcdserverpb.MemberListRequest" (pb::MemberListRequest, pb::MemberListResponse);
    "/v3/cluster/member/promote" => unary "/etcdserverpb.Cluster/MemberPromote" "etcdserverpb.MemberPromoteRequest" (pb::MemberPromoteRequest, pb::MemberPromoteResponse);
    "/v3/maintenance/alarm" => unary "/etcdserverpb.Maintenance/Alarm" "etcdserverpb.AlarmRequest" (pb::AlarmRequest, pb::AlarmResponse);
    "/v3/maintenance/status" => unary "/etcdserverpb.Maintenance/Status" "etcdserverpb.StatusRequest" (pb::StatusRequest, pb::StatusResponse);
    "/v3/maintenance/defragment" => unary "/etcdserverpb.Maintenance/Defragment" "etcdserverpb.DefragmentRequest" (pb::DefragmentRequest, pb::DefragmentResponse);
    "/v3/maintenance/hash" => unary "/etcdserverpb.Maintenance/Hash" "etcdserverpb.HashRequest" (pb::HashRequest, pb::HashResponse);
    "/v3/maintenance/snapshot" => server_stream "/etcdserverpb.Maintenance/Snapshot" "etcdserverpb.SnapshotRequest" (pb::SnapshotRequest, pb::SnapshotResponse);
    "/v3/maintenance/transfer-leadership" => unary "/etcdserverpb.Maintenance/MoveLeader" "etcdserverpb.MoveLeaderRequest" (pb::MoveLeaderRequest, pb::MoveLeaderResponse);
    "/v3/auth/enable" => unary "/etcdserverpb.Auth/AuthEnable" "etcdserverpb.AuthEnableRequest" (pb::AuthEnableRequest, pb::AuthEnableResponse);
    "/v3/auth/disable" => unary "/etcdserverpb.Auth/AuthDisable" "etcdserverpb.AuthDisableRequest" (pb::AuthDisableRequest, pb::AuthDisableResponse);
    "/v3/auth/authenticate" => unary "/etcdserverpb.Auth/Authenticate" "etcdserverpb.AuthenticateRequest" (pb::AuthenticateRequest, pb::AuthenticateResponse);
    "/v3/auth/user/add" => unary "/etcdserverpb.Auth/UserAdd" "etcdserverpb.AuthUserAddRequest" (pb::AuthUserAddRequest, pb::AuthUserAddResponse);
    "/v3/auth/user/get" => unary "/etcdserverpb.Auth/UserGet" "etcdserverpb.AuthUserGetRequest" (pb::AuthUserGetRequest, pb::AuthUserGetResponse);
    "/v3/auth/user/list" => unary "/etcdserverpb.Auth/UserList" "etcdserverpb.AuthUserListRequest" (pb::AuthUserListRequest, pb::AuthUserListResponse);
    "/v3/auth/user/delete" => unary "/etcdserverpb.Auth/UserDelete" "etcdserverpb.AuthUserDeleteRequest" (pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse);
    "/v3/auth/user/changepw" => unary "/etcdserverpb.Auth/UserChangePassword" "etcdserverpb.AuthUserChangePasswordRequest" (pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse);
    "/v3/auth/user/grant" => unary "/etcdserverpb.Auth/UserGrantRole" "etcdserverpb.AuthUserGrantRoleRequest" (pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse);
    "/v3/auth/user/revoke" => unary "/etcdserverpb.Auth/UserRevokeRole" "etcdserverpb.AuthUserRevokeRoleRequest" (pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse);
    "/v3/auth/role/add" => unary "/etcdserverpb.Auth/RoleAdd" "etcdserverpb.AuthRoleAddRequest" (pb::AuthRoleAddRequest, pb::AuthRoleAddResponse);
    "/v3/auth/role/get" => unary "/etcdserverpb.Auth/RoleGet" "etcdserverpb.AuthRoleGetRequest" (pb::AuthRoleGetRequest, pb::AuthRoleGetResponse);
    "/v3/auth/role/list" => unary "/etcdserverpb.Auth/RoleList" "etcdserverpb.AuthRoleListRequest" (pb::AuthRoleListRequest, pb::AuthRoleListResponse);
    "/v3/auth/role/delete" => unary "/etcdserverpb.Auth/RoleDelete" "etcdserverpb.AuthRoleDeleteRequest" (pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse);
    "/v3/auth/role/grant" => unary "/etcdserverpb.Auth/RoleGrantPermission" "etcdserverpb.AuthRoleGrantPermissionRequest" (pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse);
    "/v3/auth/role/revoke" => unary "/etcdserverpb.Auth/RoleRevokePermission" "etcdserverpb.AuthRoleRevokePermissionRequest" (pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse);
    "/v3/lock/lock" => unary "/v3lockpb.Lock/Lock" "v3lockpb.LockRequest" (v3lockpb::LockRequest, v3lockpb::LockResponse);
    "/v3/lock/unlock" => unary "/v3lockpb.Lock/Unlock" "v3lockpb.UnlockRequest" (v3lockpb::UnlockRequest, v3lockpb::UnlockResponse);
    "/v3/election/campaign" => unary "/v3electionpb.Election/Campaign" "v3electionpb.CampaignRequest" (v3electionpb::CampaignRequest, v3electionpb::CampaignResponse);
    "/v3/election/proclaim" => unary "/v3electionpb.Election/Proclaim" "v3electionpb.ProclaimRequest" (v3electionpb::ProclaimRequest, v3electionpb::ProclaimResponse);
    "/v3/election/leader" => unary "/v3electionpb.Election/Leader" "v3electionpb.LeaderRequest" (v3electionpb::LeaderRequest, v3electionpb::LeaderResponse);
    "/v3/election/observe" => server_stream "/v3electionpb.Election/Observe" "v3electionpb.LeaderRequest" (v3electionpb::LeaderRequest, v3electionpb::LeaderResponse);
    "/v3/election/resign" => unary "/v3electionpb.Election/Resign" "v3electionpb.ResignRequest" (v3electionpb::ResignRequest, v3electionpb::ResignResponse);
}

/// Serves one gateway request (`handles(path)` was true).
pub async fn serve(
    client: ClientService,
    config: GatewayConfig,
    request: Request<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let raw_path = parts.uri.path();
    if raw_path == "/v3" {
        // Go's ServeMux sends a subtree's root without its slash to the slash.
        let mut redirect = response(StatusCode::MOVED_PERMANENTLY, "", Body::empty());
        redirect.headers_mut().remove(header::CONTENT_TYPE);
        redirect
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/v3/"));
        return redirect;
    }
    // etcd 3.4 serves `/v3beta/` as `/v3/`.
    let path = match raw_path.strip_prefix("/v3beta/") {
        Some(rest) => format!("/v3/{rest}"),
        None => raw_path.to_string(),
    };
    if !PATHS.contains(&path.as_str()) {
        return plain_error(StatusCode::NOT_FOUND);
    }
    if parts.method != Method::POST {
        return plain_error(StatusCode::METHOD_NOT_ALLOWED);
    }
    let call = Call {
        channel: Channel(client),
        body,
        metadata: metadata_from(&parts.headers),
        request_bytes_max: config.request_bytes_max,
    };
    dispatch(&path, call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_grpc_gateways() {
        let status = Status::new(
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        );
        assert_eq!(http_status(status.code()), StatusCode::PRECONDITION_FAILED);
        assert_eq!(
            stream_error_chunk(&Status::new(Code::Unknown, "auth: user name is empty")),
            Bytes::from_static(
                br#"{"error":{"grpc_code":2,"http_code":500,"message":"auth: user name is empty","http_status":"Internal Server Error"}}"#
            )
        );
        assert_eq!(canonical_header("content-type"), "Content-Type");
        assert!(handles("/v3/kv/range") && handles("/v3beta/kv/put") && handles("/v3"));
        assert!(!handles("/v3alpha/kv/range") && !handles("/v3beta") && !handles("/health"));
    }
}
