//! The hot unary KV calls without tonic's codec and body machinery: the message is
//! decoded here, [`KvService`](crate::services::KvService) called directly, the answer
//! encoded into the connection's buffer. Errors are tonic's own (`Status::into_http`);
//! the `grpc_server_*` and `etcd_network_client_grpc_*` metrics count as for the general
//! path (`crate::http::ClientService::call_grpc`).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use rivet_api::etcdserverpb::kv_server::Kv;
use rivet_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use rivet_engine::metrics;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::proto::{Head, Proto, Trailers};
use super::Server;
use crate::tls::ClientIdentity;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
}

pub enum Request {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

/// The fast-path method of a request, if it is one: a gRPC call (uncompressed) to one
/// of the four KV methods.
pub fn method(head: &Head) -> Option<Method> {
    if head.method != http::Method::POST {
        return None;
    }
    let method = match head.path.as_str() {
        "/etcdserverpb.KV/Range" => Method::Range,
        "/etcdserverpb.KV/Put" => Method::Put,
        "/etcdserverpb.KV/DeleteRange" => Method::DeleteRange,
        "/etcdserverpb.KV/Txn" => Method::Txn,
        _ => return None,
    };
    let grpc = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/grpc" || v == "application/grpc+proto");
    let identity = head
        .headers
        .get("grpc-encoding")
        .is_none_or(|v| v == "identity");
    (grpc && identity).then_some(method)
}

/// The request message of a body that holds exactly one uncompressed message; `None`
/// for anything else (the general path answers it as tonic does).
pub fn decode(method: Method, body: &[u8]) -> Option<Request> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if length != body.len() - 5 {
        return None;
    }
    let message = &body[5..];
    Some(match method {
        Method::Range => Request::Range(RangeRequest::decode(message).ok()?),
        Method::Put => Request::Put(PutRequest::decode(message).ok()?),
        Method::DeleteRange => Request::DeleteRange(DeleteRangeRequest::decode(message).ok()?),
        Method::Txn => Request::Txn(TxnRequest::decode(message).ok()?),
    })
}

fn framed<M: Message>(message: M) -> Bytes {
    let length = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + length);
    out.put_u8(0);
    out.put_u32(length as u32);
    // Encoding into a buffer with room for the whole message cannot fail.
    let _ = message.encode(&mut out);
    out.freeze()
}

fn request<T>(head: Head, message: T, identity: Option<ClientIdentity>) -> tonic::Request<T> {
    let mut extensions = http::Extensions::new();
    if let Some(identity) = identity {
        extensions.insert(identity);
    }
    tonic::Request::from_parts(MetadataMap::from_headers(head.headers), extensions, message)
}

/// Runs one call and sends its answer on stream `id`.
pub async fn call(
    conn: Rc<RefCell<Proto>>,
    server: Rc<Server>,
    id: u32,
    head: Head,
    message: Request,
    message_bytes: usize,
    identity: Option<ClientIdentity>,
) {
    let index = metrics::grpc_method(&head.path);
    if let Some(index) = index {
        metrics::grpc_started(index);
        metrics::CLIENT_REQUESTS_UNARY.inc();
        metrics::grpc_received(index, 1, message_bytes as u64);
    }
    let started = std::time::Instant::now();
    let kv = &server.kv;
    let answer: Result<Bytes, Status> = match message {
        Request::Range(m) => kv
            .range(request(head, m, identity))
            .await
            .map(|r| framed(r.into_inner())),
        Request::Put(m) => kv
            .put(request(head, m, identity))
            .await
            .map(|r| framed(r.into_inner())),
        Request::DeleteRange(m) => kv
            .delete_range(request(head, m, identity))
            .await
            .map(|r| framed(r.into_inner())),
        Request::Txn(m) => kv
            .txn(request(head, m, identity))
            .await
            .map(|r| framed(r.into_inner())),
    };
    let code = match &answer {
        Ok(_) => 0,
        Err(status) => status.code() as usize,
    };
    if let Some(index) = index {
        metrics::grpc_handling(index, started.elapsed());
        metrics::grpc_handled(index, code);
    }
    let mut conn = conn.borrow_mut();
    match answer {
        Ok(data) => {
            if let Some(index) = index {
                metrics::grpc_sent(index, 1, (data.len() - 5) as u64);
            }
            conn.send_grpc_headers(id);
            conn.send_data(id, data, false);
            conn.send_trailers(id, Trailers::GrpcOk);
        }
        Err(status) => {
            // Trailers-only, as tonic answers an error.
            let response = status.into_http::<tonic::body::Body>();
            conn.send_headers(id, response.status().as_u16(), response.headers(), true);
        }
    }
}
