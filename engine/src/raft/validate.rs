//! Checks of raft entries whose bytes came from a peer or from the local WAL, before
//! raft-rs or the applier sees them (issue 10: nothing a peer or the disk sends panics a
//! thread).
//!
//! Every entry rivet proposes decodes: a normal entry is empty (a new term's leader
//! entry) or an `InternalRequest`, a conf change is a `ConfChange` whose context is a
//! `ConfChangeContext`. So an entry that does not decode was never proposed by rivet:
//! - in a peer's message it is refused with the whole message ([`message_problem`]),
//!   before raft-rs appends it to the log (raft asks again, or the peer is broken);
//! - in the local log (recovered from the WAL, or committed after all) the log is damaged
//!   in a way the WAL's CRCs did not catch: the member refuses to start, or stops, naming
//!   the entry ([`entry_problem`]), instead of applying around it and forking from the
//!   other replicas.

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeV2, Entry, EntryType, Message as RaftMessage, MessageType,
};
use rivet_api::rivetpb::ConfChangeContext;

/// Why `entry` could not have been proposed by rivet, if it could not.
pub fn entry_problem(entry: &Entry) -> Option<String> {
    match entry.get_entry_type() {
        EntryType::EntryNormal => {
            if entry.data.is_empty() {
                return None;
            }
            rivet_api::rivetpb::decode_internal_request(entry.data.as_ref())
                .err()
                .map(|e| format!("undecodable request: {e}"))
        }
        EntryType::EntryConfChange => {
            let mut change = ConfChange::default();
            if let Err(e) = change.merge_from_bytes(&entry.data) {
                return Some(format!("undecodable conf change: {e}"));
            }
            if change.context.is_empty() {
                return None;
            }
            ConfChangeContext::decode(change.context.as_ref())
                .err()
                .map(|e| format!("undecodable conf change context: {e}"))
        }
        // rivet proposes none; raft-rs itself proposes an empty one to leave a joint
        // configuration, which rivet never enters.
        EntryType::EntryConfChangeV2 => {
            let mut change = ConfChangeV2::default();
            change
                .merge_from_bytes(&entry.data)
                .err()
                .map(|e| format!("undecodable conf change (v2): {e}"))
        }
    }
}

/// Why a peer's raft message must not reach raft-rs, if it must not: a log entry in it
/// (an append, or a proposal a follower forwards) that rivet could not have proposed.
/// The entries of other messages are not log entries (a ReadIndex carries its context
/// as one) and pass.
pub fn message_problem(message: &RaftMessage) -> Option<String> {
    if !matches!(
        message.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgPropose
    ) {
        return None;
    }
    message.entries.iter().find_map(|entry| {
        entry_problem(entry).map(|problem| format!("entry at index {}: {problem}", entry.index))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_api::rivetpb::InternalRequest;

    fn normal(data: &[u8]) -> Entry {
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryNormal);
        entry.data = data.to_vec().into();
        entry.index = 5;
        entry
    }

    #[test]
    fn what_rivet_proposes_passes_and_garbage_does_not() {
        assert_eq!(entry_problem(&normal(b"")), None);
        let request = InternalRequest {
            id: 7,
            ..Default::default()
        };
        assert_eq!(entry_problem(&normal(&request.encode_to_vec())), None);
        // Field 1 with wire type 7 (no such type).
        assert!(entry_problem(&normal(&[0x0f, 0xff])).is_some());

        let mut conf = Entry::default();
        conf.set_entry_type(EntryType::EntryConfChange);
        conf.data = vec![0xff, 0xff, 0xff].into();
        assert!(entry_problem(&conf).is_some());
        let change = ConfChange {
            node_id: 3,
            ..Default::default()
        };
        conf.data = change.write_to_bytes().unwrap_or_default().into();
        assert_eq!(entry_problem(&conf), None);

        let mut message = RaftMessage {
            entries: vec![normal(b""), normal(&[0x0f, 0xff])].into(),
            ..Default::default()
        };
        message.set_msg_type(MessageType::MsgAppend);
        assert!(message_problem(&message).is_some_and(|p| p.starts_with("entry at index 5")));
        // A ReadIndex carries its context as an entry: not a log entry.
        message.set_msg_type(MessageType::MsgReadIndex);
        assert_eq!(message_problem(&message), None);
        message.set_msg_type(MessageType::MsgAppend);
        message.entries = vec![normal(b"")].into();
        assert_eq!(message_problem(&message), None);
    }
}
