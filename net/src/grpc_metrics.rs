//! Counting gRPC messages and their bytes as they cross a client connection, for
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and etcd's
//! `etcd_network_client_grpc_{received,sent}_bytes_total` (payload bytes, as etcd counts
//! the size of each message).
//!
//! A body wrapper reads gRPC's framing (a flag byte, a 4-byte big-endian length, the
//! message) as the frames go by; it looks at no message's content and copies nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

/// Which way the messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Received,
    Sent,
}

/// Where the framing reader stands in the stream of length-prefixed messages.
#[derive(Default, Debug)]
pub struct FrameCounter {
    header: [u8; 5],
    header_filled: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl FrameCounter {
    /// Reads `data`; answers the messages whose header it completed and their lengths.
    pub fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut messages, mut bytes) = (0, 0);
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                continue;
            }
            let take = (5 - self.header_filled).min(data.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&data[..take]);
            self.header_filled += take;
            data = &data[take..];
            if self.header_filled == 5 {
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                messages += 1;
                bytes += length as u64;
                self.header_filled = 0;
                self.remaining = length;
            }
        }
        (messages, bytes)
    }
}

pin_project_lite::pin_project! {
    /// A body whose gRPC messages are counted for `method` (an index of
    /// `rivet_engine::metrics::GRPC_METHODS`; `None`: a path that is not one of them).
    pub struct Counted<B> {
        #[pin]
        inner: B,
        method: Option<usize>,
        direction: Direction,
        frames: FrameCounter,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, method: Option<usize>, direction: Direction) -> Counted<B> {
        Counted {
            inner,
            method,
            direction,
            frames: FrameCounter::default(),
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(method)) = (&polled, *this.method) {
            if let Some(data) = frame.data_ref() {
                let (messages, bytes) = this.frames.feed(data.chunk());
                if messages > 0 {
                    match this.direction {
                        Direction::Received => {
                            rivet_engine::metrics::grpc_received(method, messages, bytes)
                        }
                        Direction::Sent => {
                            rivet_engine::metrics::grpc_sent(method, messages, bytes)
                        }
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: usize) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(length as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, length));
        out
    }

    #[test]
    fn messages_split_anywhere_are_counted_once() {
        let mut stream = message(3);
        stream.extend(message(0));
        stream.extend(message(300));
        for cut in 0..stream.len() {
            let mut counter = FrameCounter::default();
            let (a, b) = stream.split_at(cut);
            let (m1, b1) = counter.feed(a);
            let (m2, b2) = counter.feed(b);
            assert_eq!((m1 + m2, b1 + b2), (3, 303), "cut at {cut}");
        }
        let mut counter = FrameCounter::default();
        let counted = stream.iter().fold((0, 0), |(m, b), byte| {
            let (dm, db) = counter.feed(std::slice::from_ref(byte));
            (m + dm, b + db)
        });
        assert_eq!(counted, (3, 303));
    }
}
