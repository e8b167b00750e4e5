//! The peer table: every known member with its message queue and its current link, the
//! removed members whose connections are refused, and the rule that picks one connection
//! when two members dial each other at once ([`Link::replaces`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quinn::{Connection, VarInt};
use tokio::sync::{mpsc, Notify};
use tracing::info;

use super::handshake::run_dialer;
use super::limits::*;
use super::{add, close_code, lock, Counters, SendError, Shared};

#[derive(Default)]
pub(super) struct PeerTable {
    pub(super) peers: HashMap<u64, Arc<Peer>>,
    /// Oldest first, at most [`REMOVED_MEMBERS_MAX`].
    pub(super) removed: VecDeque<u64>,
    pub(super) blocked: HashSet<u64>,
}

pub(super) struct Peer {
    pub(super) id: u64,
    pub(super) address: Mutex<SocketAddr>,
    pub(super) queue: mpsc::Sender<Bytes>,
    /// Held by the writer of the current link; the next link's writer takes it over.
    pub(super) queue_receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    pub(super) queued_bytes: AtomicUsize,
    pub(super) blocked: AtomicBool,
    /// The last dial failed and no link came up since.
    pub(super) unreachable: AtomicBool,
    /// Removed or shut down: the dialer exits, no link is installed any more.
    pub(super) stopped: AtomicBool,
    pub(super) link: Mutex<Option<Link>>,
    /// Wakes the dialer when the link goes down or the peer stops.
    pub(super) wake_dialer: Notify,
    /// etcd's `etcd_network_*` metrics of this peer.
    pub(super) metrics: Arc<rivet_engine::metrics::PeerMetrics>,
}

/// The connection currently used with a peer.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: Connection,
    /// Member ID of the side that dialed.
    pub(super) dialed_by: u64,
    pub(super) remote_incarnation: u64,
    pub(super) established_at: Instant,
    /// Set when the link is no longer the peer's link (see [`super::link::install`]): its
    /// writer stops taking messages, finishes its stream and waits for the peer's.
    pub(super) retired: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Link {
    /// Whether this new connection should replace `existing`. Both members evaluate the
    /// same rule on the same facts, so they keep the same connection: a new incarnation
    /// of the peer wins (the existing connection is to a process that is gone); a redial
    /// by the same side wins (that side gave the old one up); otherwise the connection
    /// dialed by the lower member ID wins.
    pub(super) fn replaces(&self, existing: &Link, local_id: u64, peer_id: u64) -> bool {
        connection_replaces(
            (self.dialed_by, self.remote_incarnation),
            (existing.dialed_by, existing.remote_incarnation),
            local_id,
            peer_id,
        )
    }
}

/// [`Link::replaces`] on plain values: `(dialed_by, remote_incarnation)` of the new and
/// the existing connection.
pub(super) fn connection_replaces(
    new: (u64, u64),
    existing: (u64, u64),
    local_id: u64,
    peer_id: u64,
) -> bool {
    let (new_dialed_by, new_incarnation) = new;
    let (existing_dialed_by, existing_incarnation) = existing;
    new_incarnation != existing_incarnation
        || new_dialed_by == existing_dialed_by
        || new_dialed_by == local_id.min(peer_id)
}

impl Shared {
    pub(super) fn peer(&self, id: u64) -> Option<Arc<Peer>> {
        lock(&self.table).peers.get(&id).cloned()
    }

    /// Adds a peer to `table` and starts its dialer. The caller checked the limits.
    pub(super) fn insert_peer(
        self: &Arc<Self>,
        table: &mut PeerTable,
        id: u64,
        address: SocketAddr,
    ) -> Arc<Peer> {
        let (queue, queue_receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let peer = Arc::new(Peer {
            id,
            address: Mutex::new(address),
            queue,
            queue_receiver: Arc::new(tokio::sync::Mutex::new(queue_receiver)),
            queued_bytes: AtomicUsize::new(0),
            blocked: AtomicBool::new(table.blocked.contains(&id)),
            unreachable: AtomicBool::new(false),
            stopped: AtomicBool::new(*self.closing.borrow()),
            link: Mutex::new(None),
            wake_dialer: Notify::new(),
            metrics: rivet_engine::metrics::peer(id),
        });
        table.peers.insert(id, peer.clone());
        self.runtime.spawn(run_dialer(self.clone(), peer.clone()));
        peer
    }

    /// The peer an incoming connection from member `from` belongs to, learning it if it
    /// is new. Refuses removed members and more than [`PEERS_MAX`] peers.
    pub(super) fn peer_for_incoming(
        self: &Arc<Self>,
        from: u64,
        remote: SocketAddr,
    ) -> Result<Arc<Peer>, (u32, &'static str)> {
        let mut table = lock(&self.table);
        if let Some(peer) = table.peers.get(&from) {
            return Ok(peer.clone());
        }
        if table.removed.contains(&from) {
            return Err((close_code::MEMBER_REMOVED, "member removed"));
        }
        if table.peers.len() >= PEERS_MAX {
            return Err((close_code::TOO_MANY_PEERS, "too many peers"));
        }
        info!(
            peer = %format_args!("{from:x}"),
            address = %remote,
            "learned a peer from its incoming connection"
        );
        Ok(self.insert_peer(&mut table, from, remote))
    }
}

impl Peer {
    pub(super) fn enqueue(&self, message: Bytes, counters: &Counters) -> Result<(), SendError> {
        let bytes = message.len();
        if bytes > MESSAGE_BYTES_MAX {
            return Err(SendError::TooLarge { bytes });
        }
        if self.blocked.load(Relaxed) {
            // A partition loses messages silently; so does the fault switch.
            add(&counters.dropped_blocked, 1);
            return Ok(());
        }
        if self.unreachable.load(Relaxed) {
            add(&counters.dropped_unreachable, 1);
            return Err(SendError::Unreachable(self.id));
        }
        let queued = self.queued_bytes.fetch_add(bytes, Relaxed);
        if queued + bytes > PEER_QUEUE_BYTES_MAX || self.queue.try_send(message).is_err() {
            self.queued_bytes.fetch_sub(bytes, Relaxed);
            add(&counters.dropped_queue_full, 1);
            self.metrics.sent_failures.inc();
            return Err(SendError::QueueFull(self.id));
        }
        Ok(())
    }

    /// Marks the peer unreachable after a failed dial and drops what is queued for it:
    /// raft will resend, and stale messages would only delay fresh ones.
    pub(super) fn mark_unreachable(&self, counters: &Counters) {
        {
            // Under the link lock, as `install` clears the flag under it: a dial that
            // lost to a link that came up meanwhile must not mark the peer unreachable.
            let link = lock(&self.link);
            if link.is_some() {
                return;
            }
            self.unreachable.store(true, Relaxed);
        }
        if let Ok(mut queue) = self.queue_receiver.try_lock() {
            let mut dropped = 0;
            while let Ok(message) = queue.try_recv() {
                self.queued_bytes.fetch_sub(message.len(), Relaxed);
                dropped += 1;
            }
            add(&counters.dropped_unreachable, dropped);
        }
    }

    pub(super) fn current_link(&self) -> Option<Link> {
        lock(&self.link).clone()
    }

    pub(super) fn stop(&self, code: u32, reason: &'static str) {
        self.stopped.store(true, Relaxed);
        let link = lock(&self.link).take();
        if let Some(link) = link {
            link.connection
                .close(VarInt::from_u32(code), reason.as_bytes());
        }
        self.wake_dialer.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn both_sides_keep_the_same_connection() {
        // Members 1 and 2 dial each other at once: c1 dialed by 1, c2 dialed by 2. In
        // whichever order each side sees them, both keep c1.
        let (c1, c2) = ((1, 0), (2, 0));
        for (local, peer) in [(1, 2), (2, 1)] {
            // Seen from `local`, the remote incarnation is the same for both.
            assert!(
                connection_replaces(c1, c2, local, peer),
                "c1 replaces c2 at {local}"
            );
            assert!(
                !connection_replaces(c2, c1, local, peer),
                "c2 does not replace c1 at {local}"
            );
        }
        // A connection from a restarted peer replaces whatever was there.
        assert!(connection_replaces((2, 7), (1, 6), 1, 2));
    }
}
