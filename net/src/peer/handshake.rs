//! Making links: the dialer that keeps one up to each peer (with backoff), the acceptor,
//! and the HELLO exchange that checks cluster and member IDs on both sides.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::{ConnectionError, RecvStream, VarInt};
use tracing::{debug, warn};

use super::frame::{self, decode_frame, Frame, FrameError, Hello};
use super::limits::*;
use super::link::install;
use super::table::{Link, Peer};
use super::{add, close_code, lock, tls, Incoming, Shared};

/// Exponential backoff with jitter for redialing one peer.
pub(super) struct Backoff {
    next: Duration,
    random: u64,
}

impl Backoff {
    fn new(seed: u64) -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
            random: seed | 1,
        }
    }

    /// The wait before the next dial: the current step ±25 %, then the step doubles.
    fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter only needs to keep members from dialing in lockstep.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let quarter = step / 4;
        let jitter_nanos = self.random % (2 * quarter.as_nanos() as u64 + 1);
        step - quarter + Duration::from_nanos(jitter_nanos)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// Keeps a link to `peer` up: dials whenever there is none, backing off after failures.
pub(super) async fn run_dialer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let mut backoff = Backoff::new(shared.incarnation ^ peer.id);
    let mut delay: Option<Duration> = None;
    let mut failures_in_a_row: u32 = 0;
    loop {
        if peer.stopped.load(Relaxed) {
            return;
        }
        if let Some(link) = peer.current_link() {
            peer.wake_dialer.notified().await;
            // A link that died young does not reset the backoff: a peer that accepts and
            // then drops us must not cause a dial loop.
            if link.established_at.elapsed() >= LINK_HEALTHY_AFTER {
                backoff.reset();
                delay = None;
            } else {
                delay = Some(backoff.next_delay());
            }
            continue;
        }
        if let Some(wait) = delay.take() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = peer.wake_dialer.notified() => {}
            }
            continue;
        }
        match dial(&shared, &peer).await {
            Ok(()) => failures_in_a_row = 0,
            Err(error) if error.is_duplicate() => {
                // Both members dialed at once and the peer kept the other connection,
                // which is about to become the link here too. Not a failure.
                debug!(peer = %format_args!("{:x}", peer.id), "dial lost to a simultaneous dial");
                delay = Some(backoff.next_delay());
            }
            Err(error) => {
                if error.is_removed() {
                    warn!(peer = %format_args!("{:x}", peer.id), "this member was removed from the cluster");
                    let _ = shared
                        .incoming
                        .send(Incoming::RemovedFromCluster { by: peer.id })
                        .await;
                }
                failures_in_a_row += 1;
                add(&shared.counters.dial_failures, 1);
                peer.mark_unreachable(&shared.counters);
                let address = *lock(&peer.address);
                // The first failure and then ever more rarely: a peer that is down for a
                // long time must not flood the log.
                if error.is_refusal() || failures_in_a_row.is_power_of_two() {
                    warn!(
                        peer = %format_args!("{:x}", peer.id),
                        %address,
                        failures_in_a_row,
                        %error,
                        "cannot reach peer"
                    );
                } else {
                    debug!(peer = %format_args!("{:x}", peer.id), %address, %error, "cannot reach peer");
                }
                delay = Some(backoff.next_delay());
            }
        }
    }
}

/// Why a dial or an accepted connection did not become a link.
#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("timed out after {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    #[error("{0}")]
    Stream(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the stream ended before the HELLO")]
    NoHello,
    #[error("expected a HELLO, got another frame")]
    NotHello,
    #[error("{0}")]
    Refused(String),
}

impl HandshakeError {
    /// The peer closed our connection because it keeps another one with us.
    fn is_duplicate(&self) -> bool {
        matches!(self, HandshakeError::Connection(ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::DUPLICATE))
    }

    /// The peer refused us because we were removed from the cluster.
    fn is_removed(&self) -> bool {
        matches!(self, HandshakeError::Connection(ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(close_code::MEMBER_REMOVED))
    }

    /// The TLS handshake failed over a certificate (ours refused by the peer, or theirs
    /// by us): a configuration or an intruder, never a passing network fault.
    pub(super) fn is_certificate_failure(&self) -> bool {
        let is_crypto = |code: u64| (0x100..0x200).contains(&code);
        match self {
            HandshakeError::Connection(ConnectionError::TransportError(error)) => {
                is_crypto(u64::from(error.code))
            }
            HandshakeError::Connection(ConnectionError::ConnectionClosed(close)) => {
                is_crypto(u64::from(close.error_code))
            }
            _ => false,
        }
    }

    /// The peer answered but refused us (e.g. another cluster): always worth a warning.
    fn is_refusal(&self) -> bool {
        if self.is_certificate_failure() {
            return true;
        }
        match self {
            HandshakeError::Refused(_) => true,
            HandshakeError::Connection(ConnectionError::ApplicationClosed(close)) => {
                close.error_code != VarInt::from_u32(close_code::DUPLICATE)
            }
            _ => false,
        }
    }
}

/// Dials `peer`, exchanges HELLOs and installs the connection as the peer's link (unless
/// a link that wins over it came up meanwhile).
pub(super) async fn dial(shared: &Arc<Shared>, peer: &Arc<Peer>) -> Result<(), HandshakeError> {
    let address = *lock(&peer.address);
    let handshake = async {
        // With certificates to verify, the server's must be valid for the address we dial.
        let server_name = if shared.dial_by_address {
            address.ip().to_string()
        } else {
            tls::SERVER_NAME.to_string()
        };
        let connection = shared.endpoint.connect(address, &server_name)?.await?;
        let result = async {
            let (mut send, mut recv) = connection.open_bi().await?;
            let mut buffer = BytesMut::new();
            frame::encode_hello(&mut buffer, &shared.hello_to(peer.id));
            send.write_all(&buffer).await?;
            buffer.clear();
            let hello = read_hello(&mut recv, &mut buffer).await?;
            Ok::<_, HandshakeError>((send, recv, buffer, hello))
        }
        .await;
        match result {
            Ok(parts) => Ok((connection, parts)),
            Err(error) => {
                connection.close(VarInt::from_u32(close_code::PROTOCOL), b"handshake failed");
                Err(error)
            }
        }
    };
    let (connection, (send, recv, buffer, hello)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HandshakeError::Timeout)??;
    // A joining member (cluster ID 0) learns the cluster's ID from the first answer.
    let _ = shared.cluster_id.compare_exchange(
        0,
        hello.cluster_id,
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
    );
    if hello.cluster_id != shared.cluster_id() {
        warn!(
            peer = %format_args!("{:x}", peer.id),
            %address,
            local_cluster_id = %format_args!("{:x}", shared.cluster_id()),
            remote_cluster_id = %format_args!("{:x}", hello.cluster_id),
            "cluster ID mismatch"
        );
        connection.close(
            VarInt::from_u32(close_code::CLUSTER_ID_MISMATCH),
            b"cluster ID mismatch",
        );
        return Err(HandshakeError::Refused("cluster ID mismatch".into()));
    }
    if hello.from != peer.id || hello.to != shared.member_id {
        connection.close(
            VarInt::from_u32(close_code::MEMBER_ID_MISMATCH),
            b"member ID mismatch",
        );
        return Err(HandshakeError::Refused(format!(
            "member ID mismatch: {address} answered as member {:x} (to {:x}), expected member {:x}",
            hello.from, hello.to, peer.id
        )));
    }
    install(
        shared,
        peer,
        Link {
            connection,
            dialed_by: shared.member_id,
            remote_incarnation: hello.incarnation,
            established_at: Instant::now(),
            retired: Arc::new(tokio::sync::watch::Sender::new(false)),
        },
        send,
        recv,
        buffer,
    );
    Ok(())
}

/// Reads the HELLO that opens a link stream. Bytes after it stay in `buffer`.
pub(super) async fn read_hello(
    recv: &mut RecvStream,
    buffer: &mut BytesMut,
) -> Result<Hello, HandshakeError> {
    loop {
        match decode_frame(buffer)? {
            Some(Frame::Hello(hello)) => return Ok(hello),
            Some(_) => return Err(HandshakeError::NotHello),
            None => {}
        }
        match recv
            .read_chunk(frame::FRAME_HEADER_BYTES + frame::HELLO_BYTES, true)
            .await?
        {
            Some(chunk) => buffer.extend_from_slice(&chunk.bytes),
            None => return Err(HandshakeError::NoHello),
        }
    }
}

/// Accepts incoming connections until the transport closes.
pub(super) async fn run_acceptor(shared: Arc<Shared>) {
    let mut closing = shared.closing.subscribe();
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = closing.wait_for(|closing| *closing) => None,
        };
        let Some(incoming) = incoming else {
            return;
        };
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            add(&shared.counters.connections_refused, 1);
            debug!(remote = %incoming.remote_address(), "refusing a peer connection: too many handshakes in progress");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        shared.runtime.clone().spawn(async move {
            let remote = incoming.remote_address();
            if let Err(error) = accept(&shared, incoming).await {
                add(&shared.counters.connections_refused, 1);
                if error.is_certificate_failure() {
                    if matches!(error, HandshakeError::Connection(ConnectionError::TransportError(_))) {
                        warn!(%remote, %error, "refusing the peer connection: its certificate was rejected");
                    } else {
                        warn!(%remote, %error, "peer connection failed: the dialing peer rejected this member's certificate");
                    }
                } else {
                    debug!(%remote, %error, "incoming peer connection failed");
                }
            }
            drop(permit);
        });
    }
}

/// Completes an incoming connection's handshake, checks its HELLO and installs it.
pub(super) async fn accept(
    shared: &Arc<Shared>,
    incoming: quinn::Incoming,
) -> Result<(), HandshakeError> {
    let remote = incoming.remote_address();
    let handshake = async {
        let connection = incoming.accept()?.await?;
        let result = async {
            let (send, mut recv) = connection.accept_bi().await?;
            let mut buffer = BytesMut::new();
            let hello = read_hello(&mut recv, &mut buffer).await?;
            Ok::<_, HandshakeError>((send, recv, buffer, hello))
        }
        .await;
        match result {
            Ok(parts) => Ok((connection, parts)),
            Err(error) => {
                connection.close(VarInt::from_u32(close_code::PROTOCOL), b"handshake failed");
                Err(error)
            }
        }
    };
    let (connection, (mut send, recv, buffer, hello)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| HandshakeError::Timeout)??;
    let refuse = |code: u32, reason: &str| {
        connection.close(VarInt::from_u32(code), reason.as_bytes());
        Err(HandshakeError::Refused(reason.to_string()))
    };
    // A joining member says cluster ID 0; it is accepted only if it is already a member
    // here (MemberAdd applied), and learns the ID from this side's answer.
    let known_joiner = hello.cluster_id == 0 && lock(&shared.table).peers.contains_key(&hello.from);
    if hello.cluster_id != shared.cluster_id() && !known_joiner {
        warn!(
            %remote,
            remote_member_id = %format_args!("{:x}", hello.from),
            local_cluster_id = %format_args!("{:x}", shared.cluster_id()),
            remote_cluster_id = %format_args!("{:x}", hello.cluster_id),
            "cluster ID mismatch: refusing the peer connection"
        );
        return refuse(close_code::CLUSTER_ID_MISMATCH, "cluster ID mismatch");
    }
    if hello.to != shared.member_id || hello.from == shared.member_id {
        warn!(
            %remote,
            remote_member_id = %format_args!("{:x}", hello.from),
            wanted_member_id = %format_args!("{:x}", hello.to),
            local_member_id = %format_args!("{:x}", shared.member_id),
            "member ID mismatch: refusing the peer connection"
        );
        return refuse(close_code::MEMBER_ID_MISMATCH, "member ID mismatch");
    }
    if shared.check_san {
        if let Err(reason) = check_certificate_san(&connection, remote).await {
            warn!(
                %remote,
                remote_member_id = %format_args!("{:x}", hello.from),
                %reason,
                "refusing the peer connection: its certificate does not name its address"
            );
            return refuse(close_code::CERTIFICATE_REFUSED, "certificate refused");
        }
    }
    let peer = match shared.peer_for_incoming(hello.from, remote) {
        Ok(peer) => peer,
        Err((code, reason)) => {
            warn!(%remote, remote_member_id = %format_args!("{:x}", hello.from), "refusing the peer connection: {reason}");
            return refuse(code, reason);
        }
    };
    let mut reply = BytesMut::new();
    frame::encode_hello(&mut reply, &shared.hello_to(hello.from));
    send.write_all(&reply).await?;
    install(
        shared,
        &peer,
        Link {
            connection,
            dialed_by: hello.from,
            remote_incarnation: hello.incarnation,
            established_at: Instant::now(),
            retired: Arc::new(tokio::sync::watch::Sender::new(false)),
        },
        send,
        recv,
        buffer,
    );
    Ok(())
}

/// etcd's `checkSAN` on an accepted peer connection: a certificate with IP or DNS SANs
/// must name the address the connection comes from (DNS names are resolved).
async fn check_certificate_san(
    connection: &quinn::Connection,
    remote: std::net::SocketAddr,
) -> Result<(), String> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("the peer presented no certificate")?;
    let leaf = chain.first().ok_or("the peer presented no certificate")?;
    let names = crate::tls::certificate_names(leaf).map_err(|e| e.to_string())?;
    let mut resolved: Vec<(String, Vec<std::net::IpAddr>)> = Vec::new();
    for name in &names.dns_names {
        let addresses = tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map(|found| found.map(|address| address.ip()).collect())
            .unwrap_or_default();
        resolved.push((name.clone(), addresses));
    }
    crate::tls::check_san(&names, remote.ip(), |name| {
        resolved
            .iter()
            .find(|(resolved_name, _)| resolved_name == name)
            .map(|(_, addresses)| addresses.clone())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(42);
        let mut previous = Duration::ZERO;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay <= BACKOFF_MAX + BACKOFF_MAX / 4, "{delay:?}");
            assert!(delay >= BACKOFF_INITIAL * 3 / 4, "{delay:?}");
            previous = previous.max(delay);
        }
        assert!(previous >= BACKOFF_MAX * 3 / 4);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_INITIAL * 5 / 4);
    }
}
