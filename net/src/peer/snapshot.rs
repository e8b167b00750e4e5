//! Snapshot streams: each snapshot goes on a unidirectional QUIC stream of its own
//! (SNAPSHOT_BEGIN with the metadata, chunks, SNAPSHOT_END with length and crc32c), so it
//! never delays the messages on the link stream.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::frame::{self, decode_frame, Frame, FrameError, SnapshotEnd};
use super::limits::*;
use super::link::LinkError;
use super::table::Peer;
use super::{add, ignore_closed, stream_code, Incoming, Shared, SNAPSHOT_STREAM_PRIORITY};

/// The data of an incoming snapshot, chunk by chunk, bounded
/// ([`limits::SNAPSHOT_CHUNKS_QUEUED_MAX`] chunks are buffered; then the sender waits).
pub struct SnapshotReceiver {
    pieces: mpsc::Receiver<SnapshotPiece>,
    complete: bool,
}

pub(super) enum SnapshotPiece {
    Data(Bytes),
    Complete,
    Failed(SnapshotError),
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SnapshotReceiver")
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

impl SnapshotReceiver {
    /// The next chunk; `Ok(None)` once all data arrived and its length and checksum
    /// matched what the sender announced. Any error means the snapshot is incomplete and
    /// must be discarded.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SnapshotError> {
        if self.complete {
            return Ok(None);
        }
        match self.pieces.recv().await {
            Some(SnapshotPiece::Data(chunk)) => Ok(Some(chunk)),
            Some(SnapshotPiece::Complete) => {
                self.complete = true;
                Ok(None)
            }
            Some(SnapshotPiece::Failed(error)) => Err(error),
            None => Err(SnapshotError::Aborted),
        }
    }

    /// Reads the whole snapshot into memory; fails if it exceeds `bytes_max`.
    pub async fn read_to_end(mut self, bytes_max: usize) -> Result<Bytes, SnapshotError> {
        let mut data = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            if data.len() + chunk.len() > bytes_max {
                return Err(SnapshotError::TooLarge { bytes_max });
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data.freeze())
    }
}

/// Why a snapshot was not sent or not received completely.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no peer with member ID {0:x}")]
    UnknownPeer(u64),
    #[error("peer {0:x} is unreachable: no link")]
    Unreachable(u64),
    #[error("traffic with peer {0:x} is blocked")]
    Blocked(u64),
    #[error(
        "snapshot metadata of {bytes} bytes exceeds the limit of {SNAPSHOT_METADATA_BYTES_MAX}"
    )]
    MetadataTooLarge { bytes: usize },
    #[error("snapshot larger than {bytes_max} bytes")]
    TooLarge { bytes_max: usize },
    #[error("snapshot link failed: {0}")]
    Link(String),
    #[error("reading the snapshot to send: {0}")]
    Source(io::Error),
    #[error("the receiver stopped the snapshot stream with code {0}")]
    Stopped(u64),
    #[error("snapshot data does not match its end frame: received {bytes} bytes with crc32c {crc32c:08x}, the sender announced {expected_bytes} bytes with crc32c {expected_crc32c:08x}")]
    Checksum {
        bytes: u64,
        crc32c: u32,
        expected_bytes: u64,
        expected_crc32c: u32,
    },
    #[error("snapshot stream: {0}")]
    Protocol(#[from] FrameError),
    #[error("snapshot stream ended before its end frame")]
    Truncated,
    #[error("snapshot stream {0}")]
    UnexpectedFrame(&'static str),
    #[error("the snapshot was abandoned (transport shut down)")]
    Aborted,
}

/// A completed snapshot send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSent {
    /// Data bytes sent (without metadata and framing).
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Completion of [`PeerTransport::send_snapshot`]: resolves once the receiver's QUIC stack
/// acknowledged all the data, or with the error that ended the send. The send proceeds
/// whether or not this is polled.
pub struct SnapshotSending {
    pub(super) result: oneshot::Receiver<Result<SnapshotSent, SnapshotError>>,
}

impl Future for SnapshotSending {
    type Output = Result<SnapshotSent, SnapshotError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result)
            .poll(context)
            .map(|result| result.unwrap_or(Err(SnapshotError::Aborted)))
    }
}

/// Accepts the snapshot streams the peer opens on this link.
pub(super) async fn accept_snapshots(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    connection: &Connection,
) -> Result<(), LinkError> {
    loop {
        let recv = connection.accept_uni().await?;
        shared
            .runtime
            .spawn(receive_snapshot(shared.clone(), peer.clone(), recv));
    }
}

/// Reads the next frame of a snapshot stream; `Ok(None)` at its clean end.
pub(super) async fn read_snapshot_frame(
    recv: &mut RecvStream,
    buffer: &mut BytesMut,
    chunks: &mut [Bytes],
) -> Result<Option<Frame>, SnapshotError> {
    loop {
        if let Some(frame) = decode_frame(buffer)? {
            return Ok(Some(frame));
        }
        match recv
            .read_chunks(chunks)
            .await
            .map_err(|error| SnapshotError::Link(error.to_string()))?
        {
            Some(count) => {
                for chunk in &mut chunks[..count] {
                    buffer.extend_from_slice(chunk);
                    *chunk = Bytes::new();
                }
            }
            None if buffer.is_empty() => return Ok(None),
            None => return Err(SnapshotError::Truncated),
        }
    }
}

/// Receives one snapshot stream and passes its chunks to the owner.
pub(super) async fn receive_snapshot(shared: Arc<Shared>, peer: Arc<Peer>, mut recv: RecvStream) {
    let mut buffer = BytesMut::new();
    let mut chunks: [Bytes; 32] = Default::default();
    let metadata = match read_snapshot_frame(&mut recv, &mut buffer, &mut chunks).await {
        Ok(Some(Frame::SnapshotBegin(metadata))) => metadata,
        Ok(_) => {
            warn!(peer = %format_args!("{:x}", peer.id), "snapshot stream does not start with SNAPSHOT_BEGIN");
            ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            add(&shared.counters.snapshots_receive_failed, 1);
            return;
        }
        Err(error) => {
            warn!(peer = %format_args!("{:x}", peer.id), %error, "snapshot stream failed before its metadata");
            ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            add(&shared.counters.snapshots_receive_failed, 1);
            return;
        }
    };
    if peer.blocked.load(Relaxed) {
        ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_NOT_WANTED)));
        return;
    }
    let (pieces, receiver) = mpsc::channel(SNAPSHOT_CHUNKS_QUEUED_MAX);
    let announcement = Incoming::Snapshot {
        from: peer.id,
        metadata,
        data: SnapshotReceiver {
            pieces: receiver,
            complete: false,
        },
    };
    if shared.incoming.send(announcement).await.is_err() {
        ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_NOT_WANTED)));
        return;
    }
    let mut crc32c = 0u32;
    let mut bytes = 0u64;
    let outcome = loop {
        match read_snapshot_frame(&mut recv, &mut buffer, &mut chunks).await {
            Ok(Some(Frame::SnapshotChunk(chunk))) => {
                if peer.blocked.load(Relaxed) {
                    break Err(SnapshotError::Blocked(peer.id));
                }
                crc32c = crc32c::crc32c_append(crc32c, &chunk);
                bytes += chunk.len() as u64;
                if pieces.send(SnapshotPiece::Data(chunk)).await.is_err() {
                    // The owner dropped the receiver: it does not want this snapshot.
                    ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_NOT_WANTED)));
                    add(&shared.counters.snapshots_receive_failed, 1);
                    return;
                }
                // A chunk is up to a megabyte of copying and checksumming: let the link
                // tasks on this thread (heartbeats) run between chunks.
                tokio::task::yield_now().await;
            }
            Ok(Some(Frame::SnapshotEnd(SnapshotEnd {
                data_bytes,
                crc32c: expected_crc32c,
            }))) => {
                if data_bytes != bytes || expected_crc32c != crc32c {
                    break Err(SnapshotError::Checksum {
                        bytes,
                        crc32c,
                        expected_bytes: data_bytes,
                        expected_crc32c,
                    });
                }
                break match read_snapshot_frame(&mut recv, &mut buffer, &mut chunks).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err(SnapshotError::UnexpectedFrame(
                        "continues after SNAPSHOT_END",
                    )),
                    Err(error) => Err(error),
                };
            }
            Ok(Some(_)) => {
                break Err(SnapshotError::UnexpectedFrame(
                    "carries a frame other than SNAPSHOT_CHUNK",
                ))
            }
            Ok(None) => break Err(SnapshotError::Truncated),
            Err(error) => break Err(error),
        }
    };
    match outcome {
        Ok(()) => {
            add(&shared.counters.snapshots_received, 1);
            debug!(peer = %format_args!("{:x}", peer.id), bytes, "snapshot received");
            // If the owner dropped the receiver, nobody is left to tell.
            let _receiver_gone = pieces.send(SnapshotPiece::Complete).await;
        }
        Err(error) => {
            add(&shared.counters.snapshots_receive_failed, 1);
            warn!(peer = %format_args!("{:x}", peer.id), %error, "receiving a snapshot failed");
            ignore_closed(recv.stop(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            let _receiver_gone = pieces.send(SnapshotPiece::Failed(error)).await;
        }
    }
}

/// Sends one snapshot on a new stream of the peer's link.
pub(super) async fn send_snapshot<S>(
    shared: &Shared,
    to: u64,
    metadata: Bytes,
    data: S,
) -> Result<SnapshotSent, SnapshotError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let started = Instant::now();
    if metadata.len() > SNAPSHOT_METADATA_BYTES_MAX {
        return Err(SnapshotError::MetadataTooLarge {
            bytes: metadata.len(),
        });
    }
    let peer = shared.peer(to).ok_or(SnapshotError::UnknownPeer(to))?;
    if peer.blocked.load(Relaxed) {
        return Err(SnapshotError::Blocked(to));
    }
    let link = peer.current_link().ok_or(SnapshotError::Unreachable(to))?;
    let mut send = link
        .connection
        .open_uni()
        .await
        .map_err(|error| SnapshotError::Link(error.to_string()))?;
    ignore_closed(send.set_priority(SNAPSHOT_STREAM_PRIORITY));
    let result = write_snapshot(&peer, &mut send, &metadata, data).await;
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(error) => {
            ignore_closed(send.reset(VarInt::from_u32(stream_code::SNAPSHOT_ABORTED)));
            return Err(error);
        }
    };
    match send.stopped().await {
        Ok(None) => Ok(SnapshotSent {
            bytes,
            elapsed: started.elapsed(),
        }),
        Ok(Some(code)) => Err(SnapshotError::Stopped(code.into_inner())),
        Err(error) => Err(SnapshotError::Link(error.to_string())),
    }
}

/// Writes a snapshot's frames; returns the data bytes written.
pub(super) async fn write_snapshot<S>(
    peer: &Peer,
    send: &mut SendStream,
    metadata: &[u8],
    data: S,
) -> Result<u64, SnapshotError>
where
    S: Stream<Item = io::Result<Bytes>>,
{
    let write_error = |error: quinn::WriteError| match error {
        quinn::WriteError::Stopped(code) => SnapshotError::Stopped(code.into_inner()),
        error => SnapshotError::Link(error.to_string()),
    };
    let mut header = BytesMut::new();
    frame::encode_snapshot_begin(&mut header, metadata);
    send.write_all_chunks(&mut [header.split().freeze()])
        .await
        .map_err(write_error)?;
    let mut data = pin!(data);
    let mut crc32c = 0u32;
    let mut bytes = 0u64;
    while let Some(chunk) = data.next().await {
        let mut chunk = chunk.map_err(SnapshotError::Source)?;
        while !chunk.is_empty() {
            if peer.blocked.load(Relaxed) {
                return Err(SnapshotError::Blocked(peer.id));
            }
            let piece = chunk.split_to(chunk.len().min(SNAPSHOT_CHUNK_BYTES_MAX));
            crc32c = crc32c::crc32c_append(crc32c, &piece);
            bytes += piece.len() as u64;
            frame::encode_snapshot_chunk_header(&mut header, piece.len());
            send.write_all_chunks(&mut [header.split().freeze(), piece])
                .await
                .map_err(write_error)?;
        }
    }
    frame::encode_snapshot_end(
        &mut header,
        &SnapshotEnd {
            data_bytes: bytes,
            crc32c,
        },
    );
    send.write_all_chunks(&mut [header.split().freeze()])
        .await
        .map_err(write_error)?;
    send.finish()
        .map_err(|error| SnapshotError::Link(error.to_string()))?;
    Ok(bytes)
}
