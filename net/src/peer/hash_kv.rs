//! HashKV between members, for etcd's corruption checks (etcd 3.4 asks each peer's
//! `HashKV` with a client; 3.5 on the peer URL's `/members/hashkv`): the asking member
//! opens a bidirectional stream on the link, sends one HASHKV_REQUEST and ends its side;
//! the other member hands the request to its owner ([`Incoming::HashKv`]) and writes
//! the one HASHKV_ANSWER its owner gives. Both sides read at most one frame of a fixed
//! length, checked by the decoder ([`frame`]), within [`HASHKV_TIMEOUT`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::oneshot;
use tracing::debug;

use super::frame::{self, decode_frame, Frame, HashKvAnswer};
use super::limits::HASHKV_TIMEOUT;
use super::link::LinkError;
use super::table::Peer;
use super::{ignore_closed, Incoming, Shared};

/// Why a peer gave no HashKV answer.
#[derive(Debug, thiserror::Error)]
pub enum HashKvError {
    #[error("unknown peer {0:x}")]
    UnknownPeer(u64),
    #[error("peer {0:x} is unreachable")]
    Unreachable(u64),
    #[error("peer {0:x} did not answer within {HASHKV_TIMEOUT:?}")]
    Timeout(u64),
    #[error("HashKV stream failed: {0}")]
    Stream(String),
    #[error("peer sent a bad HashKV answer: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("peer sent no HashKV answer")]
    NoAnswer,
}

/// Asks `to` for its HashKV at `revision`. A peer without a link yet (a member that
/// just started is still dialing) is waited for, as etcd's client dials within its
/// request timeout: the whole exchange takes at most [`HASHKV_TIMEOUT`].
pub(super) async fn ask(
    shared: &Shared,
    to: u64,
    revision: i64,
) -> Result<HashKvAnswer, HashKvError> {
    let peer = shared.peer(to).ok_or(HashKvError::UnknownPeer(to))?;
    let deadline = tokio::time::Instant::now() + HASHKV_TIMEOUT;
    let link = loop {
        if peer.blocked.load(Relaxed) {
            return Err(HashKvError::Unreachable(to));
        }
        if let Some(link) = peer.current_link() {
            break link;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HashKvError::Unreachable(to));
        }
        tokio::time::sleep(LINK_WAIT_STEP).await;
    };
    tokio::time::timeout_at(deadline, exchange(&link.connection, revision))
        .await
        .unwrap_or(Err(HashKvError::Timeout(to)))
}

/// How often [`ask`] looks whether a link came up.
const LINK_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(20);

async fn exchange(connection: &Connection, revision: i64) -> Result<HashKvAnswer, HashKvError> {
    let stream = |e: &dyn std::fmt::Display| HashKvError::Stream(e.to_string());
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| stream(&e))?;
    let mut buffer = BytesMut::new();
    frame::encode_hash_kv_request(&mut buffer, revision);
    send.write_all(&buffer).await.map_err(|e| stream(&e))?;
    send.finish().map_err(|e| stream(&e))?;
    match read_one_frame(&mut recv).await? {
        Some(Frame::HashKvAnswer(answer)) => Ok(answer),
        Some(_) => Err(HashKvError::Stream(
            "unexpected frame on a HashKV stream".into(),
        )),
        None => Err(HashKvError::NoAnswer),
    }
}

/// Reads the one frame of a HashKV stream side (`None` if the side ended without one);
/// bytes after it are an error. The frame's length is bounded by its kind, so this
/// never buffers more than a HASHKV_ANSWER.
async fn read_one_frame(recv: &mut RecvStream) -> Result<Option<Frame>, HashKvError> {
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; frame::HASHKV_ANSWER_BYTES + frame::FRAME_HEADER_BYTES];
    loop {
        if let Some(frame) = decode_frame(&mut buffer)? {
            if !buffer.is_empty() {
                return Err(HashKvError::Stream("bytes after a HashKV frame".into()));
            }
            return Ok(Some(frame));
        }
        match recv
            .read(&mut chunk)
            .await
            .map_err(|e| HashKvError::Stream(e.to_string()))?
        {
            Some(n) => buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            None if buffer.is_empty() => return Ok(None),
            None => return Err(HashKvError::Stream("truncated HashKV frame".into())),
        }
    }
}

/// Accepts the HashKV streams the peer opens on this link (at most
/// [`super::limits::HASHKV_STREAMS_MAX`] at once: QUIC's stream limit).
pub(super) async fn accept_requests(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    connection: &Connection,
) -> Result<(), LinkError> {
    loop {
        let (send, recv) = connection.accept_bi().await?;
        shared
            .runtime
            .spawn(answer(shared.clone(), peer.clone(), send, recv));
    }
}

async fn answer(shared: Arc<Shared>, peer: Arc<Peer>, mut send: SendStream, mut recv: RecvStream) {
    let served = tokio::time::timeout(HASHKV_TIMEOUT, async {
        let revision = match read_one_frame(&mut recv).await {
            Ok(Some(Frame::HashKvRequest(revision))) => revision,
            Ok(_) => {
                return Err(HashKvError::Stream(
                    "no HashKV request on the stream".into(),
                ))
            }
            Err(e) => return Err(e),
        };
        if peer.blocked.load(Relaxed) {
            return Err(HashKvError::Unreachable(peer.id));
        }
        let (reply, answered) = oneshot::channel();
        let request = Incoming::HashKv {
            from: peer.id,
            revision,
            reply,
        };
        if shared.incoming.send(request).await.is_err() {
            return Err(HashKvError::NoAnswer);
        }
        let answer = answered.await.unwrap_or(HashKvAnswer::Unavailable);
        let mut buffer = BytesMut::new();
        frame::encode_hash_kv_answer(&mut buffer, &answer);
        send.write_all(&buffer)
            .await
            .map_err(|e| HashKvError::Stream(e.to_string()))?;
        send.finish()
            .map_err(|e| HashKvError::Stream(e.to_string()))
    })
    .await
    .unwrap_or(Err(HashKvError::Timeout(peer.id)));
    if let Err(error) = served {
        debug!(peer = %format_args!("{:x}", peer.id), %error, "HashKV request not answered");
        ignore_closed(send.reset(quinn::VarInt::from_u32(0)));
    }
}
