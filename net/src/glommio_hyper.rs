//! hyper on glommio: an I/O adapter for glommio's `TcpStream` (or a TLS stream over it)
//! and an executor that
//! queues the tasks hyper spawns into the current task queue (`DESIGN.md` §3: glommio's
//! `spawn_local` would run them at once, which costs about a third of the throughput).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use bytes::Buf;

use crate::authority::AuthorityFilter;

/// hyper's `Read`/`Write` over a glommio socket, or over a TLS stream on one (any
/// futures-io stream). What the client sends passes through an [`AuthorityFilter`] (Go
/// clients' URL authorities) until the connection shows it is not HTTP/2 with prior
/// knowledge.
pub struct GlommioIo<S = TcpStream> {
    socket: S,
    filter: Option<AuthorityFilter>,
}

impl<S> GlommioIo<S> {
    pub fn new(socket: S) -> GlommioIo<S> {
        GlommioIo {
            socket,
            filter: Some(AuthorityFilter::new()),
        }
    }

    /// A connection whose first bytes were read already (to tell HTTP/2 from HTTP/1.1):
    /// hyper reads them first.
    pub fn with_prefix(socket: S, prefix: &[u8]) -> GlommioIo<S> {
        let mut io = GlommioIo::new(socket);
        if let Some(filter) = io.filter.as_mut() {
            filter.feed(prefix);
        }
        io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> hyper::rt::Read for GlommioIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // SAFETY: the bytes are initialized (zeroed) before they are handed out as `u8`s,
        // and `advance` is called with exactly the number of bytes written to them.
        let slice = unsafe {
            let uninit: &mut [MaybeUninit<u8>] = buf.as_mut();
            for byte in uninit.iter_mut() {
                byte.write(0);
            }
            &mut *(uninit as *mut [MaybeUninit<u8>] as *mut [u8])
        };
        loop {
            let Some(filter) = this.filter.as_mut() else {
                return match Pin::new(&mut this.socket).poll_read(cx, slice) {
                    Poll::Ready(Ok(n)) => {
                        // SAFETY: `n` bytes were just written by the read.
                        unsafe { buf.advance(n) };
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                };
            };
            let ready = filter.output();
            if !ready.is_empty() {
                let n = ready.len().min(slice.len());
                slice[..n].copy_from_slice(&ready[..n]);
                ready.advance(n);
                // SAFETY: `n` bytes were just written.
                unsafe { buf.advance(n) };
                return Poll::Ready(Ok(()));
            }
            if filter.is_passthrough() {
                this.filter = None;
                continue;
            }
            // The read goes into hyper's own buffer, then through the filter, which
            // hands the bytes back on the next turn of the loop.
            match Pin::new(&mut this.socket).poll_read(cx, slice) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => filter.feed(&slice[..n]),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> hyper::rt::Write for GlommioIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_close(cx)
    }
}

/// Spawns hyper's tasks (one per HTTP/2 stream) on the current glommio task queue.
#[derive(Clone, Copy, Debug)]
pub struct GlommioExecutor;

impl<F> hyper::rt::Executor<F> for GlommioExecutor
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, future: F) {
        let queue = glommio::executor().current_task_queue();
        match glommio::spawn_local_into(future, queue) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!("cannot spawn a connection task: {e}"),
        }
    }
}

/// hyper's timer on glommio (HTTP/2 keep-alive pings, `--grpc-keepalive-interval` and
/// `--grpc-keepalive-timeout`). glommio's timers are not `Send`; hyper polls them on the
/// connection's own task, which never leaves this core, so `SendWrapper` is sound.
#[derive(Clone, Copy, Debug)]
pub struct GlommioTimer;

struct GlommioSleep(send_wrapper::SendWrapper<Pin<Box<glommio::timer::Timer>>>);

impl Future for GlommioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for GlommioSleep {}

impl hyper::rt::Timer for GlommioTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(GlommioSleep(send_wrapper::SendWrapper::new(Box::pin(
            glommio::timer::Timer::new(duration),
        ))))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(std::time::Instant::now()))
    }
}
