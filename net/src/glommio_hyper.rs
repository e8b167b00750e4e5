//! hyper on glommio: an I/O adapter for glommio's `TcpStream` and an executor that
//! queues the tasks hyper spawns into the current task queue (`DESIGN.md` §3: glommio's
//! `spawn_local` would run them at once, which costs about a third of the throughput).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// hyper's `Read`/`Write` over a glommio socket.
pub struct GlommioIo(pub TcpStream);

impl hyper::rt::Read for GlommioIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the bytes are initialized (zeroed) before they are handed out as `u8`s,
        // and `advance` is called with exactly the number of bytes the read wrote.
        let slice = unsafe {
            let uninit: &mut [MaybeUninit<u8>] = buf.as_mut();
            for byte in uninit.iter_mut() {
                byte.write(0);
            }
            &mut *(uninit as *mut [MaybeUninit<u8>] as *mut [u8])
        };
        match Pin::new(&mut self.0).poll_read(cx, slice) {
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

impl hyper::rt::Write for GlommioIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
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
