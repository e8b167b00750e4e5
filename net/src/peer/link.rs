//! A running link: installing a connection as a peer's link, the writer that batches
//! queued messages onto the link stream, the reader that hands frames to the owner, and
//! the send window that follows the round-trip time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use tracing::{debug, info};

use super::frame::{self, decode_frame, Frame, FrameError};
use super::limits::*;
use super::snapshot::accept_snapshots;
use super::table::{Link, Peer};
use super::{add, close_code, ignore_closed, lock, Incoming, Shared, LINK_STREAM_PRIORITY};

/// Makes `link` the peer's link unless the current one wins over it, and starts it.
///
/// The connection that loses is *retired*, not closed at once: the other member may
/// already have written messages on it (it is that member's link until it sees the
/// other connection too), and closing it would drop them in flight — raft resends an
/// append, but a follower's forwarded proposals are lost, and their clients wait for
/// the request timeout. A retired link's writer stops taking messages (they go to the
/// winner), finishes its stream, and the link closes once the peer finished its side
/// too (the peer retires the same connection by the same rule) or after
/// [`LINK_RETIRE_DRAIN`]; its reader delivers everything until then.
pub(super) fn install(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    link: Link,
    send: SendStream,
    recv: RecvStream,
    buffer: BytesMut,
) {
    let installed = {
        let mut current = lock(&peer.link);
        if peer.stopped.load(Relaxed) {
            link.connection
                .close(VarInt::from_u32(close_code::SHUTDOWN), b"peer stopped");
            return;
        }
        match current.as_ref() {
            Some(existing) if !link.replaces(existing, shared.member_id, peer.id) => {
                debug!(peer = %format_args!("{:x}", peer.id), "keeping the existing link, retiring the duplicate connection");
                link.retired.send_replace(true);
                false
            }
            existing => {
                if let Some(existing) = existing {
                    existing.retired.send_replace(true);
                }
                *current = Some(link.clone());
                peer.unreachable.store(false, Relaxed);
                true
            }
        }
    };
    if installed {
        add(&shared.counters.links_established, 1);
        ignore_closed(send.set_priority(LINK_STREAM_PRIORITY));
        info!(
            peer = %format_args!("{:x}", peer.id),
            remote = %link.connection.remote_address(),
            dialed_by = %format_args!("{:x}", link.dialed_by),
            "peer link up"
        );
    }
    shared.runtime.spawn(run_link(
        shared.clone(),
        peer.clone(),
        link,
        send,
        recv,
        buffer,
    ));
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    #[error("{0}")]
    Stream(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("unexpected frame on the link stream")]
    UnexpectedFrame,
    #[error("transport shut down")]
    Closing,
    #[error("retired: the other connection to the peer is its link")]
    Retired,
}

/// Runs one link until it fails or is replaced: writes queued messages, reads incoming
/// ones, accepts snapshot streams.
pub(super) async fn run_link(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    link: Link,
    send: SendStream,
    recv: RecvStream,
    buffer: BytesMut,
) {
    let mut closing = shared.closing.subscribe();
    let connection = link.connection.clone();
    peer.metrics.active.set(1);
    // The peer finished its side of the link stream (it retired this link).
    let peer_finished = tokio::sync::Notify::new();
    let error = tokio::select! {
        Err(error) = write_link(&shared, &peer, send, &link.retired, &peer_finished) => error,
        Err(error) = read_link(&shared, &peer, recv, buffer, &link.retired, &peer_finished) => error,
        Err(error) = accept_snapshots(&shared, &peer, &connection) => error,
        Err(error) = super::hash_kv::accept_requests(&shared, &peer, &connection) => error,
        Err(error) = follow_rtt(&connection, shared.send_window_bytes_min, &peer) => error,
        _ = closing.wait_for(|closing| *closing) => LinkError::Closing,
    };
    connection.close(VarInt::from_u32(close_code::LINK_FAILED), b"link failed");
    // A link that is no longer the peer's link was replaced by a duplicate or a newer one.
    let replaced = {
        let mut current = lock(&peer.link);
        let is_current = current
            .as_ref()
            .is_some_and(|current| current.connection.stable_id() == connection.stable_id());
        if is_current {
            *current = None;
        }
        !is_current && !peer.stopped.load(Relaxed)
    };
    peer.wake_dialer.notify_one();
    if !replaced {
        peer.metrics.active.set(0);
        peer.metrics.disconnects.inc();
    }
    if replaced {
        debug!(peer = %format_args!("{:x}", peer.id), %error, "duplicate peer connection closed");
    } else {
        info!(peer = %format_args!("{:x}", peer.id), %error, "peer link down");
    }
}

/// Sizes the link's send window to its minimum round-trip time, now and then, and
/// samples the round-trip time for `etcd_network_peer_round_trip_time_seconds` (etcd
/// probes its peers for it; QUIC measures it on every acknowledged packet).
pub(super) async fn follow_rtt(
    connection: &Connection,
    window_bytes_min: u64,
    peer: &Peer,
) -> Result<(), LinkError> {
    loop {
        tokio::time::sleep(SEND_WINDOW_UPDATE_INTERVAL).await;
        connection.set_send_window(send_window_bytes(connection.min_rtt(), window_bytes_min));
        peer.metrics.round_trip.0.observe(connection.rtt());
    }
}

/// The send window for a path whose minimum round-trip time is `min_rtt`.
pub(super) fn send_window_bytes(min_rtt: Duration, window_bytes_min: u64) -> u64 {
    let bytes = u128::from(SEND_WINDOW_BYTES_PER_SECOND) * min_rtt.as_nanos() / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX).clamp(
        window_bytes_min,
        SEND_WINDOW_BYTES_MAX.max(window_bytes_min),
    )
}

/// Writes the peer's queued messages to the link stream, batching what is queued. Once
/// the link is retired it takes no more messages: it finishes its stream and ends the
/// link when the peer has received all of it and finished its own (so nothing written
/// on either side is lost), then [`LINK_RETIRE_GRACE`] later for the peer to read what
/// it received; or after [`LINK_RETIRE_DRAIN`] at most.
pub(super) async fn write_link(
    shared: &Shared,
    peer: &Peer,
    mut send: SendStream,
    retired: &tokio::sync::watch::Sender<bool>,
    peer_finished: &tokio::sync::Notify,
) -> Result<(), LinkError> {
    let mut retired = retired.subscribe();
    let retire = |mut send: SendStream| async move {
        ignore_closed(send.finish());
        let drained = async {
            let _ = send.stopped().await;
            peer_finished.notified().await;
            tokio::time::sleep(LINK_RETIRE_GRACE).await;
        };
        let _ = tokio::time::timeout(LINK_RETIRE_DRAIN, drained).await;
        Err(LinkError::Retired)
    };
    let mut queue = tokio::select! {
        biased;
        () = retirement(&mut retired) => return retire(send).await,
        queue = peer.queue_receiver.clone().lock_owned() => queue,
    };
    let mut staging = BytesMut::with_capacity(64 * 1024);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            () = retirement(&mut retired) => {
                // The winner's writer takes the queue from here.
                drop(queue);
                return retire(send).await;
            }
            first = queue.recv() => first,
        };
        let Some(first) = first else {
            // Every sender is gone: the peer was dropped.
            return Err(LinkError::Closing);
        };
        let mut messages = 0u64;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            messages += 1;
            bytes += message.len();
            peer.queued_bytes.fetch_sub(message.len(), Relaxed);
            if message.len() <= BATCH_COPY_BYTES_MAX {
                frame::encode_message(&mut staging, &message);
            } else {
                frame::encode_message_header(&mut staging, message.len());
                chunks.push(staging.split().freeze());
                chunks.push(message);
            }
            if (messages as usize) < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
                next = queue.try_recv().ok();
            }
        }
        if !staging.is_empty() {
            chunks.push(staging.split().freeze());
        }
        if peer.blocked.load(Relaxed) {
            add(&shared.counters.dropped_blocked, messages);
            chunks.clear();
            continue;
        }
        send.write_all_chunks(&mut chunks).await?;
        chunks.clear();
        peer.metrics.sent_bytes.add(bytes as u64);
        add(&shared.counters.messages_sent, messages);
        add(&shared.counters.message_bytes_sent, bytes as u64);
    }
}

/// Returns once the link is retired (at once if it is).
async fn retirement(retired: &mut tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone with the link: nothing to wait for any more.
    let _ = retired.wait_for(|retired| *retired).await;
}

/// Reads message frames from the link stream and hands them to the owner. The peer
/// finishes the stream only when it retires the link: this link is retired too then,
/// and ends once its own writer finished.
pub(super) async fn read_link(
    shared: &Shared,
    peer: &Peer,
    mut recv: RecvStream,
    mut buffer: BytesMut,
    retired: &tokio::sync::watch::Sender<bool>,
    peer_finished: &tokio::sync::Notify,
) -> Result<(), LinkError> {
    let mut chunks: [Bytes; 32] = Default::default();
    loop {
        while let Some(frame) = decode_frame(&mut buffer)? {
            let Frame::Message(bytes) = frame else {
                return Err(LinkError::UnexpectedFrame);
            };
            if peer.blocked.load(Relaxed) {
                add(&shared.counters.dropped_blocked, 1);
                continue;
            }
            add(&shared.counters.messages_received, 1);
            peer.metrics.received_bytes.add(bytes.len() as u64);
            let message = Incoming::Message {
                from: peer.id,
                bytes,
            };
            if shared.incoming.send(message).await.is_err() {
                // The owner dropped its receiver: nothing can be delivered any more.
                shared.close();
                return Err(LinkError::Closing);
            }
        }
        match recv.read_chunks(&mut chunks).await? {
            Some(count) => {
                for chunk in &mut chunks[..count] {
                    buffer.extend_from_slice(chunk);
                    *chunk = Bytes::new();
                }
            }
            None => {
                // The peer retired this link (first, or after us): everything it wrote
                // was read. Ours follows; its writer ends the link.
                retired.send_replace(true);
                peer_finished.notify_one();
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_follows_the_round_trip_time() {
        let floor = SEND_WINDOW_BYTES_MIN;
        assert_eq!(send_window_bytes(Duration::from_micros(30), floor), floor);
        assert_eq!(
            send_window_bytes(Duration::from_millis(10), floor),
            10_000_000
        );
        assert_eq!(
            send_window_bytes(Duration::from_secs(3), floor),
            SEND_WINDOW_BYTES_MAX
        );
    }
}
