//! The peer transport on loopback: members exchange raft messages (opaque bytes here) and
//! snapshots over QUIC. Every test runs on a current-thread runtime, as the raft core
//! does, and is bounded in time; none asserts a timing.
//!
//! Raft tolerates lost messages and the transport may lose some while links come up (two
//! members dialing each other at once keep one of the two connections), so the helpers
//! resend until everything arrived, as raft would.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use rivet_net::peer::frame::HashKvAnswer;
use rivet_net::peer::hash_kv::HashKvError;
use rivet_net::peer::limits::PEER_QUEUE_MESSAGES_MAX;
use rivet_net::peer::{Incoming, PeerConfig, PeerError, PeerTransport, SendError, SnapshotError};
use tokio::sync::mpsc;

/// Bound of every test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    // RUST_LOG=rivet_net=debug shows the transport's log when a test fails.
    let _already_set = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

struct Member {
    id: u64,
    transport: PeerTransport,
    incoming: mpsc::Receiver<Incoming>,
}

impl Member {
    async fn start(id: u64, cluster_id: u64) -> Member {
        Member::start_at(id, cluster_id, loopback(), Vec::new()).await
    }

    async fn start_at(
        id: u64,
        cluster_id: u64,
        listen: SocketAddr,
        peers: Vec<(u64, SocketAddr)>,
    ) -> Member {
        let (transport, incoming) =
            PeerTransport::start(PeerConfig::new(id, cluster_id, listen, peers))
                .await
                .expect("start the peer transport");
        Member {
            id,
            transport,
            incoming,
        }
    }

    /// Starts a member on `listen` again after it stopped. The old transport's socket
    /// closes once its tasks have wound down, which takes a few turns of the runtime in
    /// the same process (a real restart is a new process and frees it at once).
    async fn restart_at(
        id: u64,
        cluster_id: u64,
        listen: SocketAddr,
        peers: Vec<(u64, SocketAddr)>,
    ) -> Member {
        for _attempt in 0..100 {
            let config = PeerConfig::new(id, cluster_id, listen, peers.clone());
            match PeerTransport::start(config).await {
                Ok((transport, incoming)) => {
                    return Member {
                        id,
                        transport,
                        incoming,
                    }
                }
                Err(PeerError::Bind { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("restart the peer transport: {error}"),
            }
        }
        panic!("{listen} stayed in use");
    }

    fn address(&self) -> SocketAddr {
        self.transport.local_addr().expect("local address")
    }
}

/// Makes every member a peer of every other.
fn mesh(members: &[&Member]) {
    for member in members {
        for other in members {
            if member.id != other.id {
                member
                    .transport
                    .add_peer(other.id, other.address())
                    .expect("add peer");
            }
        }
    }
}

/// Waits until `condition` holds, checking every few milliseconds.
async fn eventually(what: &str, condition: impl FnMut() -> bool) {
    common::eventually(what, TEST_TIMEOUT / 2, condition).await
}

fn payload(from: u64, to: u64, index: usize) -> Bytes {
    Bytes::from(format!("message {index} from {from} to {to}"))
}

/// Sends `count` messages from `sender` to `receiver`, resending the missing ones until
/// all arrived. Returns how many were received from anyone else meanwhile (ignored).
async fn deliver_all(sender: &Member, receiver: &mut Member, count: usize) {
    let expected: BTreeSet<Bytes> = (0..count)
        .map(|index| payload(sender.id, receiver.id, index))
        .collect();
    let mut received = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT / 2;
    while received != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} messages from {} reached {}",
            received.len(),
            sender.id,
            receiver.id
        );
        for message in expected.difference(&received) {
            // Refusals (unreachable while the link comes up) are retried like losses.
            let _refused_then_retried = sender.transport.send(receiver.id, message.clone());
        }
        let round = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(round);
        loop {
            tokio::select! {
                () = &mut round => break,
                incoming = receiver.incoming.recv() => match incoming.expect("transport running") {
                    Incoming::Message { from, bytes } if from == sender.id => {
                        assert!(expected.contains(&bytes), "unexpected message {bytes:?}");
                        received.insert(bytes);
                        if received == expected {
                            break;
                        }
                    }
                    _ => {}
                },
            }
        }
    }
}

#[tokio::test]
async fn two_members_exchange_messages_both_ways() {
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let mut b = Member::start(2, 7).await;
        mesh(&[&a, &b]);
        deliver_all(&a, &mut b, 100).await;
        deliver_all(&b, &mut a, 100).await;
        let (a_stats, b_stats) = (a.transport.stats(), b.transport.stats());
        assert!(a_stats.messages_received >= 100 && b_stats.messages_received >= 100);
        assert!(a.transport.is_connected(2) && b.transport.is_connected(1));
        a.transport.shutdown().await;
        b.transport.shutdown().await;
    })
    .await;
}

/// Both members dial each other at once when they learn each other, so each ends up
/// with two connections and both keep the same one. Messages written on the other one
/// meanwhile must still arrive: raft resends appends, but not a follower's forwarded
/// proposals. Every message is sent once; none may be lost.
#[tokio::test]
async fn messages_sent_while_duplicate_connections_settle_all_arrive() {
    bounded(async {
        for round in 0..4u64 {
            let mut a = Member::start(10 + 2 * round, 7).await;
            let mut b = Member::start(11 + 2 * round, 7).await;
            mesh(&[&a, &b]);
            let mut expected = [BTreeSet::new(), BTreeSet::new()];
            for index in 0..400 {
                for (slot, (sender, receiver)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
                    let message = payload(sender.id, receiver.id, index);
                    // A refusal (unreachable while the first dial fails) is not a loss.
                    if sender.transport.send(receiver.id, message.clone()).is_ok() {
                        expected[slot].insert(message);
                    }
                }
                if index % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let (a_id, b_id) = (a.id, b.id);
            for (slot, (sender_id, receiver)) in
                [(a_id, &mut b), (b_id, &mut a)].into_iter().enumerate()
            {
                let mut received = BTreeSet::new();
                let deadline = tokio::time::Instant::now() + TEST_TIMEOUT / 4;
                while received.len() < expected[slot].len() {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, receiver.incoming.recv()).await {
                        Ok(Some(Incoming::Message { from, bytes })) if from == sender_id => {
                            received.insert(bytes);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                assert_eq!(
                    received.len(),
                    expected[slot].len(),
                    "round {round}: messages from {sender_id} lost ({} of {} arrived)",
                    received.len(),
                    expected[slot].len()
                );
            }
            a.transport.shutdown().await;
            b.transport.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn three_members_exchange_messages_both_ways() {
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let mut b = Member::start(2, 7).await;
        let mut c = Member::start(3, 7).await;
        mesh(&[&a, &b, &c]);
        deliver_all(&a, &mut b, 50).await;
        deliver_all(&a, &mut c, 50).await;
        deliver_all(&b, &mut a, 50).await;
        deliver_all(&b, &mut c, 50).await;
        deliver_all(&c, &mut a, 50).await;
        deliver_all(&c, &mut b, 50).await;
        // One link per pair in the end, whoever dialed first.
        for member in [&a, &b, &c] {
            let stats = member.transport.stats();
            assert_eq!(stats.peers.len(), 2);
            assert!(stats.peers.iter().all(|peer| peer.connected), "{stats:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_member_learns_a_peer_that_dials_it() {
    bounded(async {
        // B does not know A (say, it has not applied the change that added A yet), A knows
        // B: A's connection teaches B where A is, so B can answer.
        let mut a = Member::start(1, 7).await;
        let mut b = Member::start(2, 7).await;
        a.transport.add_peer(2, b.address()).expect("add peer");
        deliver_all(&a, &mut b, 10).await;
        deliver_all(&b, &mut a, 10).await;
        // A removed member is refused.
        b.transport.remove_peer(1);
        assert_eq!(
            b.transport.send(1, Bytes::from_static(b"x")),
            Err(SendError::UnknownPeer(1))
        );
        eventually("B refused A after removing it", || {
            b.transport.stats().connections_refused > 0
        })
        .await;
        assert!(!b.transport.is_connected(1));
    })
    .await;
}

#[tokio::test]
async fn messages_flow_again_after_a_peer_restarts() {
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let b = Member::start(2, 7).await;
        let b_address = b.address();
        mesh(&[&a, &b]);
        eventually("the link is up", || a.transport.is_connected(2)).await;

        // A clean stop: B closes its link, A notices at once.
        b.transport.shutdown().await;
        drop(b);
        eventually("A saw the link go down", || !a.transport.is_connected(2)).await;
        let mut b = Member::restart_at(2, 7, b_address, vec![(1, a.address())]).await;
        deliver_all(&a, &mut b, 20).await;
        deliver_all(&b, &mut a, 20).await;
        assert!(a.transport.stats().links_established >= 2);
    })
    .await;
}

#[tokio::test]
async fn messages_flow_again_after_a_peer_crashes_and_restarts() {
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let a_address = a.address();

        // B runs on its own thread and runtime, which is dropped abruptly: no goodbye
        // reaches A, whose link to the dead process stays up until B comes back.
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let (crash_sender, crash_receiver) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let b = runtime.block_on(Member::start_at(2, 7, loopback(), vec![(1, a_address)]));
            address_sender.send(b.address()).expect("send address");
            // Run B's tasks until told to crash.
            runtime.block_on(async {
                tokio::task::spawn_blocking(move || crash_receiver.recv())
                    .await
                    .expect("join")
                    .expect("crash signal");
            });
            drop(runtime);
            drop(b);
        });
        let b_address = tokio::task::spawn_blocking(move || address_receiver.recv())
            .await
            .expect("join")
            .expect("B's address");
        a.transport.add_peer(2, b_address).expect("add peer");
        eventually("the link is up", || a.transport.is_connected(2)).await;
        crash_sender.send(()).expect("crash B");
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join")
            .expect("B's thread");

        // The new incarnation of B dials A; A replaces the dead link with it.
        let mut b = Member::restart_at(2, 7, b_address, vec![(1, a_address)]).await;
        deliver_all(&b, &mut a, 20).await;
        deliver_all(&a, &mut b, 20).await;
        assert!(a.transport.stats().links_established >= 2);
    })
    .await;
}

/// Collects what is logged, for tests that check a warning.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

impl io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_peer_of_another_cluster_is_refused() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    // The runtime of a #[tokio::test] runs every task on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(async {
        let a = Member::start(1, 7).await;
        let mut b = Member::start(2, 8).await;
        mesh(&[&a, &b]);
        for index in 0..10 {
            let _queued_or_refused = a.transport.send(2, payload(1, 2, index));
        }
        eventually("both sides refused a connection", || {
            a.transport.stats().dial_failures >= 2 && b.transport.stats().dial_failures >= 2
        })
        .await;
        assert!(
            log.text().contains("cluster ID mismatch"),
            "log: {}",
            log.text()
        );
        for member in [&a, &b] {
            let stats = member.transport.stats();
            assert_eq!(stats.links_established, 0, "{stats:?}");
            assert_eq!(stats.messages_received, 0, "{stats:?}");
        }
        assert!(b.incoming.try_recv().is_err(), "B received a message");
        assert!(matches!(
            a.transport.send(2, payload(1, 2, 0)),
            Err(SendError::Unreachable(2))
        ));
    })
    .await;
}

#[tokio::test]
async fn a_blocked_peer_is_isolated_until_unblocked() {
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let mut b = Member::start(2, 7).await;
        let mut c = Member::start(3, 7).await;
        mesh(&[&a, &b, &c]);
        deliver_all(&a, &mut b, 5).await;
        deliver_all(&c, &mut a, 5).await;

        // Isolate A (the leader, say) from both others, on A's side only.
        a.transport.set_blocked(&[2, 3]);
        for index in 0..10 {
            assert_eq!(a.transport.send(2, payload(1, 2, index)), Ok(()));
        }
        assert_eq!(a.transport.stats().dropped_blocked, 10);
        for index in 0..10 {
            b.transport.send(1, payload(2, 1, index)).expect("queued");
        }
        eventually("A dropped what B sent", || {
            a.transport.stats().dropped_blocked >= 20
        })
        .await;
        assert!(
            a.incoming.try_recv().is_err(),
            "A received through the block"
        );
        let snapshot = a
            .transport
            .send_snapshot(3, Bytes::from_static(b"meta"), futures::stream::empty())
            .await;
        assert!(
            matches!(snapshot, Err(SnapshotError::Blocked(3))),
            "{snapshot:?}"
        );
        // B and C still talk.
        deliver_all(&b, &mut c, 5).await;

        // Healing is immediate: the links stayed up.
        a.transport.set_blocked(&[]);
        deliver_all(&a, &mut b, 5).await;
        deliver_all(&b, &mut a, 5).await;
        deliver_all(&c, &mut a, 5).await;
    })
    .await;
}

/// Deterministic snapshot data: chunk `index` of `chunk_bytes`.
fn snapshot_chunk(index: usize, chunk_bytes: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
    let mut data = Vec::with_capacity(chunk_bytes);
    while data.len() < chunk_bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(chunk_bytes);
    Bytes::from(data)
}

#[tokio::test]
async fn a_50_mb_snapshot_arrives_intact_while_messages_flow() {
    const CHUNK_BYTES: usize = 1 << 20;
    const CHUNKS: usize = 50;
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let mut b = Member::start(2, 7).await;
        mesh(&[&a, &b]);
        deliver_all(&a, &mut b, 1).await;

        let expected_crc = (0..CHUNKS).fold(0u32, |crc, index| {
            crc32c::crc32c_append(crc, &snapshot_chunk(index, CHUNK_BYTES))
        });
        let data = futures::stream::iter(0..CHUNKS)
            .map(|index| Ok::<_, io::Error>(snapshot_chunk(index, CHUNK_BYTES)));
        let mut sending =
            a.transport
                .send_snapshot(2, Bytes::from_static(b"snapshot metadata"), data);

        let mut snapshot = loop {
            match b.incoming.recv().await.expect("transport running") {
                Incoming::Snapshot {
                    from,
                    metadata,
                    data,
                } => {
                    assert_eq!(from, 1);
                    assert_eq!(&metadata[..], b"snapshot metadata");
                    break data;
                }
                Incoming::Message { .. } | Incoming::HashKv { .. } => {}
                Incoming::RemovedFromCluster { by } => panic!("unexpectedly removed by {by:x}"),
            }
        };
        // Read 5 MB, then stop reading: flow control holds the rest of the snapshot at
        // the sender (at most the receive buffers' ~33 MB beyond what was read).
        let mut received = 0usize;
        let mut crc = 0u32;
        while received < 5 * CHUNK_BYTES {
            let chunk = snapshot
                .next_chunk()
                .await
                .expect("snapshot chunk")
                .expect("more data");
            crc = crc32c::crc32c_append(crc, &chunk);
            received += chunk.len();
        }
        // Messages overtake the stalled snapshot, both ways.
        for _ in 0..10 {
            deliver_all(&a, &mut b, 3).await;
            deliver_all(&b, &mut a, 3).await;
        }
        assert!(
            (&mut sending).now_or_never().is_none(),
            "the snapshot finished although its receiver stalled"
        );
        while let Some(chunk) = snapshot.next_chunk().await.expect("snapshot chunk") {
            crc = crc32c::crc32c_append(crc, &chunk);
            received += chunk.len();
        }
        assert_eq!(received, CHUNKS * CHUNK_BYTES);
        assert_eq!(crc, expected_crc);
        let sent = sending.await.expect("snapshot sent");
        assert_eq!(sent.bytes, (CHUNKS * CHUNK_BYTES) as u64);
        assert_eq!(a.transport.stats().snapshots_sent, 1);
        eventually("B counted the snapshot", || {
            b.transport.stats().snapshots_received == 1
        })
        .await;
    })
    .await;
}

/// A HashKV request travels on a stream of its own, both ways (whichever member
/// dialed), and comes back as the owner answered it; an owner that drops the request
/// answers "unavailable"; an unknown peer is an error at once.
#[tokio::test]
async fn hash_kv_requests_are_answered_over_the_link() {
    bounded(async {
        let mut a = Member::start(1, 7).await;
        let mut b = Member::start(2, 7).await;
        mesh(&[&a, &b]);
        deliver_all(&a, &mut b, 1).await;
        let answer = HashKvAnswer::Answered {
            member_id: 2,
            revision: 42,
            compact_revision: 7,
            hash: 0xdead_beef,
        };
        let asked = a.transport.hash_kv(2, 40);
        loop {
            match b.incoming.recv().await.expect("transport running") {
                Incoming::HashKv {
                    from,
                    revision,
                    reply,
                } => {
                    assert_eq!((from, revision), (1, 40));
                    reply.send(answer).expect("the asker waits");
                    break;
                }
                _ => continue,
            }
        }
        let got = asked.await.expect("answered").expect("no transport error");
        assert_eq!(got, answer);

        let asked = b.transport.hash_kv(1, 0);
        loop {
            if let Incoming::HashKv { reply, .. } = a.incoming.recv().await.expect("running") {
                drop(reply);
                break;
            }
        }
        let got = asked.await.expect("answered").expect("no transport error");
        assert_eq!(got, HashKvAnswer::Unavailable);

        let unknown = a.transport.hash_kv(9, 0).await.expect("answered");
        assert!(
            matches!(unknown, Err(HashKvError::UnknownPeer(9))),
            "{unknown:?}"
        );
        a.transport.shutdown().await;
        b.transport.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_snapshot_to_an_unknown_or_unreachable_peer_fails() {
    bounded(async {
        let a = Member::start(1, 7).await;
        let result = a
            .transport
            .send_snapshot(9, Bytes::new(), futures::stream::empty())
            .await;
        assert!(
            matches!(result, Err(SnapshotError::UnknownPeer(9))),
            "{result:?}"
        );
        // A peer that exists but has no link.
        let silent = std::net::UdpSocket::bind(loopback()).expect("bind");
        a.transport
            .add_peer(2, silent.local_addr().expect("address"))
            .expect("add peer");
        let result = a
            .transport
            .send_snapshot(2, Bytes::new(), futures::stream::empty())
            .await;
        assert!(
            matches!(result, Err(SnapshotError::Unreachable(2))),
            "{result:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_drops_and_reports() {
    bounded(async {
        let a = Member::start(1, 7).await;
        // A peer that never answers: a UDP socket nobody reads.
        let silent = std::net::UdpSocket::bind(loopback()).expect("bind");
        a.transport
            .add_peer(2, silent.local_addr().expect("address"))
            .expect("add peer");
        // No await in between: the dial cannot have failed yet, so messages queue.
        let results: Vec<_> = (0..PEER_QUEUE_MESSAGES_MAX + 10)
            .map(|index| a.transport.send(2, payload(1, 2, index)))
            .collect();
        assert!(results[..PEER_QUEUE_MESSAGES_MAX]
            .iter()
            .all(|result| result.is_ok()));
        assert!(results[PEER_QUEUE_MESSAGES_MAX..]
            .iter()
            .all(|result| *result == Err(SendError::QueueFull(2))));
        assert_eq!(a.transport.stats().dropped_queue_full, 10);
        assert_eq!(
            a.transport.send(2, Bytes::from(vec![0; 33 << 20])),
            Err(SendError::TooLarge { bytes: 33 << 20 })
        );
        assert_eq!(
            a.transport.send(3, Bytes::new()),
            Err(SendError::UnknownPeer(3))
        );

        // Once the dial fails, the queue is emptied and sends are refused at once.
        eventually("the dial failed", || a.transport.stats().dial_failures >= 1).await;
        assert_eq!(
            a.transport.send(2, payload(1, 2, 0)),
            Err(SendError::Unreachable(2))
        );
        let stats = a.transport.stats();
        assert_eq!(
            stats.dropped_unreachable,
            PEER_QUEUE_MESSAGES_MAX as u64 + 1
        );
        assert_eq!(stats.peers[0].queued_messages, 0);
        assert!(stats.peers[0].unreachable);
    })
    .await;
}
