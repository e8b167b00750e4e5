//! `Maintenance.Snapshot` on the core that took the request: it takes the point from the
//! raft core, merges the shards' versions by (revision, shard) for the two passes of the
//! writer thread, and forwards the blobs it writes (`crate::etcd_snapshot`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::oneshot;

use super::ShardCore;
use crate::error::EtcdError;
use crate::etcd_backend::schema::KeyVersion;
use crate::etcd_snapshot::{spawn_writer, SnapshotChunk, WriterOutput};
use crate::limits;
use crate::messages::{RaftCommand, ShardRequest};

/// One message of the stream: a blob and the bytes still to come after it (etcd's
/// `SnapshotResponse`); the last one is the SHA-256 with 0 remaining.
#[derive(Clone, Debug)]
pub struct SnapshotBlob {
    pub blob: Bytes,
    pub remaining_bytes: u64,
}

/// Yields to the executor once (the shard's apply task runs meanwhile).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// How many times a chunk request waits for the shard to see its pin (each wait lets the
/// apply task run; the pin is a few queued messages away at most).
const PIN_WAIT_YIELDS: usize = 1_000_000;

/// Unpins every shard when the stream ends, however it ends.
struct PinGuard<'a> {
    core: &'a ShardCore,
    id: u64,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        for shard in 0..self.core.shard_count {
            if shard == self.core.id {
                if let Ok(mut own) = self.core.shard.try_borrow_mut() {
                    own.snapshot_end(self.id);
                }
            } else if self.core.peers[shard]
                .try_send(ShardRequest::SnapshotEnd { id: self.id })
                .is_err()
            {
                tracing::warn!(
                    shard,
                    "snapshot {}: cannot unpin now; the shard drops the pin when idle",
                    self.id
                );
            }
        }
    }
}

/// A shard's side of the merge: its buffered versions.
struct Feed {
    buffer: VecDeque<KeyVersion>,
    done: bool,
}

impl ShardCore {
    /// Serves a chunk request for this core's shard, once the shard has seen the pin.
    pub(super) async fn local_snapshot_chunk(
        &self,
        id: u64,
        restart: bool,
        sizes_only: bool,
    ) -> Result<SnapshotChunk, EtcdError> {
        for _ in 0..PIN_WAIT_YIELDS {
            {
                let mut shard = self.shard.borrow_mut();
                if shard.has_snapshot(id) {
                    return shard.snapshot_chunk(id, restart, sizes_only);
                }
            }
            YieldOnce(false).await;
        }
        Err(EtcdError::Internal(format!(
            "snapshot {id}: shard {} never saw its pin",
            self.id
        )))
    }

    async fn snapshot_chunk(
        &self,
        shard: usize,
        id: u64,
        restart: bool,
        sizes_only: bool,
    ) -> Result<SnapshotChunk, EtcdError> {
        if shard == self.id {
            return self.local_snapshot_chunk(id, restart, sizes_only).await;
        }
        let answer = self
            .ask_shard(shard, |reply| ShardRequest::SnapshotChunk {
                id,
                restart,
                sizes_only,
                reply,
            })
            .await?;
        answer.await.map_err(|_| EtcdError::Stopped)?
    }

    /// Streams a snapshot into `out`; a failure is sent as the last item.
    pub async fn stream_snapshot(
        &self,
        out: async_channel::Sender<Result<SnapshotBlob, EtcdError>>,
    ) {
        let started = std::time::Instant::now();
        match self.stream_snapshot_inner(&out).await {
            // etcd's `etcd_disk_backend_snapshot_duration_seconds`.
            Ok(()) => crate::metrics::BACKEND_SNAPSHOT.observe(started.elapsed()),
            Err(error) => {
                tracing::warn!("snapshot stream failed: {error}");
                let _ = out.send(Err(error)).await;
            }
        }
    }

    async fn stream_snapshot_inner(
        &self,
        out: &async_channel::Sender<Result<SnapshotBlob, EtcdError>>,
    ) -> Result<(), EtcdError> {
        let started = std::time::Instant::now();
        let point = self
            .ask(|reply: oneshot::Sender<_>| RaftCommand::SnapshotBegin { reply })
            .await??;
        let _guard = PinGuard {
            core: self,
            id: point.id,
        };
        tracing::info!(
            index = point.index,
            revision = point.revision,
            "sending database snapshot to client"
        );
        let (versions_tx, versions_rx) = async_channel::bounded(limits::SNAPSHOT_QUEUE);
        let (output_tx, output_rx) = async_channel::bounded(limits::SNAPSHOT_QUEUE);
        let writer = spawn_writer(point.state.clone(), versions_rx, output_tx)
            .map_err(|e| EtcdError::Internal(format!("cannot start the snapshot writer: {e}")))?;
        let id = point.id;
        let feed = async move {
            for sizes_only in [true, false] {
                let mut feeds: Vec<Feed> = (0..self.shard_count)
                    .map(|_| Feed {
                        buffer: VecDeque::new(),
                        done: false,
                    })
                    .collect();
                let mut restart = vec![!sizes_only; self.shard_count];
                loop {
                    for (shard, feed) in feeds.iter_mut().enumerate() {
                        if feed.buffer.is_empty() && !feed.done {
                            let chunk = self
                                .snapshot_chunk(shard, id, restart[shard], sizes_only)
                                .await?;
                            restart[shard] = false;
                            feed.buffer.extend(chunk.versions);
                            feed.done = chunk.done;
                        }
                    }
                    // The smallest revision; among equals the lowest shard.
                    let next = feeds
                        .iter()
                        .enumerate()
                        .filter_map(|(shard, feed)| {
                            feed.buffer.front().map(|v| (v.mod_revision, shard))
                        })
                        .min();
                    let Some((_, shard)) = next else { break };
                    let Some(version) = feeds[shard].buffer.pop_front() else {
                        break;
                    };
                    versions_tx
                        .send(Some(version))
                        .await
                        .map_err(|_| EtcdError::Stopped)?;
                }
                versions_tx
                    .send(None)
                    .await
                    .map_err(|_| EtcdError::Stopped)?;
            }
            Ok::<(), EtcdError>(())
        };
        let forward = async move {
            let mut total = None;
            let mut sent = 0u64;
            loop {
                let message = output_rx
                    .recv()
                    .await
                    .map_err(|_| EtcdError::Internal("the snapshot writer stopped".into()))?;
                match message {
                    WriterOutput::Total(bytes) => total = Some(bytes),
                    WriterOutput::Blob(blob) => {
                        sent += blob.len() as u64;
                        let remaining_bytes = total.unwrap_or(sent).saturating_sub(sent);
                        out.send(Ok(SnapshotBlob {
                            blob,
                            remaining_bytes,
                        }))
                        .await
                        .map_err(|_| EtcdError::Stopped)?;
                        crate::crash::point("snapshot-streaming");
                    }
                    WriterOutput::Done(sha) => {
                        out.send(Ok(SnapshotBlob {
                            blob: Bytes::copy_from_slice(&sha),
                            remaining_bytes: 0,
                        }))
                        .await
                        .map_err(|_| EtcdError::Stopped)?;
                        return Ok::<u64, EtcdError>(sent);
                    }
                    WriterOutput::Failed(error) => {
                        return Err(EtcdError::Internal(format!(
                            "writing the snapshot: {error}"
                        )))
                    }
                }
            }
        };
        let (fed, forwarded) = futures::future::join(feed, forward).await;
        let _ = writer.join();
        let sent = forwarded?;
        fed?;
        tracing::info!(
            bytes = sent,
            took = ?started.elapsed(),
            revision = point.revision,
            "sent database snapshot to client"
        );
        Ok(())
    }
}
