//! rivet's own HTTP/2 server for client connections (gRPC, and any HTTP over HTTP/2).
//!
//! hyper's HTTP/2 server (the `h2` crate) with tonic's codec took about a third of a
//! put's server CPU at 100 connections / 1000 clients (issue 16: h2 23.5%, http 6.4%,
//! tonic 5.3%, hyper 2.5%), so client connections that speak HTTP/2 are served here:
//!
//! - [`proto`]: the connection state machine without I/O (frames, HPACK in [`hpack`],
//!   flow control, stream states);
//! - [`serve`]: one task per connection reads the socket, hands requests out and writes
//!   everything ready in one write per turn;
//! - the hot unary KV calls (Range, Put, DeleteRange, Txn) go straight to
//!   [`KvService`] with the message decoded here ([`fast`]); every other request goes
//!   to the [`ClientService`] tower service (tonic's routes, the gateway, `/health`…)
//!   with a request body fed from the stream's DATA frames.
//!
//! HTTP/1.1 connections still go to hyper (`crate::server` looks at the first bytes).

pub use rivet_hpack as hpack;
pub mod proto;

mod fast;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use http_body::Frame;
use http_body_util::BodyExt;
use send_wrapper::SendWrapper;
use std::collections::HashMap;
use tower::Service;

use rivet_engine::limits;

use crate::http::ClientService;
use crate::services::KvService;
use crate::tls::ClientIdentity;
use proto::{Event, Head, Proto, Trailers};

/// What every client connection of one listener shares.
pub struct Server {
    pub kv: KvService,
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval` / `--grpc-keepalive-timeout` (zero: off).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// The error of a request body whose stream the client reset.
#[derive(Debug, thiserror::Error)]
#[error("the client reset the stream")]
pub struct StreamReset;

/// A request's body: the stream's DATA frames, credited back to the client as read.
pub struct RecvBody {
    conn: SendWrapper<Rc<RefCell<Proto>>>,
    id: u32,
    /// DATA read before the request went to the service.
    prefix: Option<Bytes>,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let id = self.id;
        match self.conn.borrow_mut().poll_body(id, cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(()))) => Poll::Ready(Some(Err(StreamReset))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.conn.borrow().body_ended(self.id)
    }
}

/// A request of a fast-path method waiting for its whole message.
struct Waiting {
    method: fast::Method,
    head: Head,
}

/// Spawns a stream's task on the current task queue; it stops when the stream goes.
fn spawn_stream(
    conn: &Rc<RefCell<Proto>>,
    id: u32,
    task: impl std::future::Future<Output = ()> + 'static,
) {
    let (task, abort) = futures::future::abortable(task);
    conn.borrow_mut().set_abort(id, abort);
    let queue = glommio::executor().current_task_queue();
    match glommio::spawn_local_into(task, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => {
            tracing::error!("cannot spawn a stream task: {e}");
            conn.borrow_mut().reset(id, proto::INTERNAL_ERROR);
        }
    }
}

/// Polls a response from the tower service and sends it.
async fn respond(conn: Rc<RefCell<Proto>>, id: u32, future: crate::http::ResponseFuture) {
    let response = match future.await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, mut body) = response.into_parts();
    let end = http_body::Body::is_end_stream(&body);
    conn.borrow_mut()
        .send_headers(id, parts.status.as_u16(), &parts.headers, end);
    if end {
        return;
    }
    loop {
        if poll_fn(|cx| conn.borrow_mut().poll_capacity(id, cx))
            .await
            .is_err()
        {
            return;
        }
        match body.frame().await {
            None => {
                conn.borrow_mut().send_data(id, Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => conn.borrow_mut().send_data(id, data, false),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        conn.borrow_mut().send_trailers(id, Trailers::Map(trailers));
                        return;
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!("response body failed: {e}");
                conn.borrow_mut().reset(id, proto::INTERNAL_ERROR);
                return;
            }
        }
    }
}

struct Connection {
    conn: Rc<RefCell<Proto>>,
    server: Rc<Server>,
    service: ClientService,
    identity: Option<ClientIdentity>,
    waiting: HashMap<u32, Waiting>,
}

impl Connection {
    /// A request to the tower service; `prefix`: DATA already taken from the stream.
    fn general(&mut self, id: u32, head: Head, prefix: Option<Bytes>) {
        let body = RecvBody {
            conn: SendWrapper::new(Rc::clone(&self.conn)),
            id,
            prefix,
        };
        let Some(mut request) = head.into_request(body) else {
            self.conn.borrow_mut().reset(id, proto::PROTOCOL_ERROR);
            return;
        };
        if let Some(identity) = &self.identity {
            request.extensions_mut().insert(identity.clone());
        }
        let future = self.service.call(request);
        spawn_stream(&self.conn, id, respond(Rc::clone(&self.conn), id, future));
    }

    /// A fast-path request whose message has all arrived.
    fn fast(&mut self, id: u32, waiting: Waiting, body: Bytes) {
        match fast::decode(waiting.method, &body) {
            Some(request) => {
                let task = fast::call(
                    Rc::clone(&self.conn),
                    Rc::clone(&self.server),
                    id,
                    waiting.head,
                    request,
                    body.len() - 5,
                    self.identity.clone(),
                );
                spawn_stream(&self.conn, id, task);
            }
            // Anything unusual (compression, a bad message, several messages) gets
            // tonic's own answer.
            None => self.general(id, waiting.head, Some(body)),
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Request {
                id,
                head,
                end_stream,
            } => {
                let learner = self
                    .service
                    .core
                    .shared
                    .is_learner
                    .load(std::sync::atomic::Ordering::Acquire);
                match fast::method(&head).filter(|m| !learner || *m == fast::Method::Range) {
                    Some(method) if !end_stream => {
                        self.waiting.insert(id, Waiting { method, head });
                    }
                    _ => self.general(id, head, None),
                }
            }
            Event::Data { id, end_stream } => {
                if !self.waiting.contains_key(&id) {
                    return;
                }
                if end_stream {
                    let waiting = self.waiting.remove(&id).expect("checked above");
                    let body = self.conn.borrow_mut().take_inbound(id).unwrap_or_default();
                    self.fast(id, waiting, body);
                } else if self.conn.borrow().inbound_bytes(id) > limits::H2_FAST_BYTES_MAX {
                    let waiting = self.waiting.remove(&id).expect("checked above");
                    self.general(id, waiting.head, None);
                }
            }
            Event::Reset { id } => {
                self.waiting.remove(&id);
            }
            Event::PingAck => {}
        }
    }
}

/// Serves one client connection whose HTTP/2 preface has been read.
pub async fn serve<S>(
    mut socket: S,
    server: Rc<Server>,
    service: ClientService,
    identity: Option<ClientIdentity>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = Rc::new(RefCell::new(Proto::new(server.max_concurrent_streams)));
    let keepalive = (!server.keepalive_interval.is_zero() && !server.keepalive_timeout.is_zero())
        .then_some((server.keepalive_interval, server.keepalive_timeout));
    let mut connection = Connection {
        conn: Rc::clone(&conn),
        server,
        service,
        identity,
        waiting: HashMap::new(),
    };
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut writing = BytesMut::new();
    let mut flushed = true;
    let mut closing = false;
    let mut timer = keepalive.map(|(interval, _)| Box::pin(glommio::timer::Timer::new(interval)));
    let mut read_since_timer = false;
    let mut ping_outstanding = false;
    poll_fn(|cx| loop {
        let mut progress = false;
        if !closing {
            match Pin::new(&mut socket).poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    read_since_timer = true;
                    input.extend_from_slice(&scratch[..n]);
                    if conn.borrow_mut().receive(&mut input).is_err() {
                        closing = true;
                    }
                }
                Poll::Pending => {}
            }
        }
        loop {
            let events = std::mem::take(&mut conn.borrow_mut().events);
            if events.is_empty() {
                break;
            }
            for event in events {
                if let Event::PingAck = event {
                    ping_outstanding = false;
                }
                connection.event(event);
            }
        }
        if let (Some(sleep), Some((interval, timeout))) = (timer.as_mut(), keepalive) {
            if std::future::Future::poll(sleep.as_mut(), cx).is_ready() {
                progress = true;
                if ping_outstanding && !read_since_timer {
                    tracing::debug!("client connection: no keepalive ping ack, closing");
                    conn.borrow_mut().goaway(proto::ENHANCE_YOUR_CALM);
                    closing = true;
                    *sleep = Box::pin(glommio::timer::Timer::new(Duration::from_secs(3600)));
                } else if !read_since_timer {
                    conn.borrow_mut().ping(*b"rivetkal");
                    ping_outstanding = true;
                    *sleep = Box::pin(glommio::timer::Timer::new(timeout));
                } else {
                    ping_outstanding = false;
                    *sleep = Box::pin(glommio::timer::Timer::new(interval));
                }
                read_since_timer = false;
            }
        }
        {
            let mut proto = conn.borrow_mut();
            if !closing && proto.peer_goaway && proto.stream_count() == 0 {
                closing = true;
            }
            if writing.is_empty() && !proto.out.is_empty() {
                writing = proto.out.split();
                proto.out_drained();
            }
            if proto
                .conn_waker
                .as_ref()
                .is_none_or(|w| !w.will_wake(cx.waker()))
            {
                proto.conn_waker = Some(cx.waker().clone());
            }
        }
        while !writing.is_empty() {
            match Pin::new(&mut socket).poll_write(cx, &writing) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    let _ = writing.split_to(n);
                    flushed = false;
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        if writing.is_empty() && !flushed {
            match Pin::new(&mut socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => flushed = true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        if closing && writing.is_empty() && flushed && conn.borrow().out.is_empty() {
            return Poll::Ready(());
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await;
    conn.borrow_mut().close_all();
    let _ = futures_lite::AsyncWriteExt::close(&mut socket).await;
}
