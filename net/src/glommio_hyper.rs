//! hyper on glommio (HTTP/1.1 only: `/health`, `/metrics`, the JSON gateway): an I/O
//! adapter for glommio's `TcpStream` (or a TLS stream over it) and an executor that
//! queues the tasks hyper spawns into the current task queue (`DESIGN.md` §3: glommio's
//! `spawn_local` would run them at once, which costs about a third of the throughput).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// hyper's `Read`/`Write` over a glommio socket, or over a TLS stream on one (any
/// futures-io stream). Client connections reach hyper only when they do not open with
/// the HTTP/2 preface (HTTP/1.1: `/health`, `/metrics`, the JSON gateway); HTTP/2 goes
/// to rivet's own server (`crate::h2`).
pub struct GlommioIo<S = TcpStream> {
    socket: S,
    /// Bytes read before hyper took the connection, handed to it first.
    prefix: Vec<u8>,
}

impl<S> GlommioIo<S> {
    pub fn new(socket: S) -> GlommioIo<S> {
        GlommioIo {
            socket,
            prefix: Vec::new(),
        }
    }

    /// A connection whose first bytes were read already (to tell HTTP/2 from HTTP/1.1):
    /// hyper reads them first.
    pub fn with_prefix(socket: S, prefix: &[u8]) -> GlommioIo<S> {
        GlommioIo {
            socket,
            prefix: prefix.to_vec(),
        }
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
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(slice.len());
            slice[..n].copy_from_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            // SAFETY: `n` bytes were just written.
            unsafe { buf.advance(n) };
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.socket).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: `n` bytes were just written by the read.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
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
