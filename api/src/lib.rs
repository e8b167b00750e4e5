//! The etcd v3 API as rivet speaks it: protobuf types and tonic services generated from
//! the `.proto` files in `proto/` (written for rivet from the public etcd v3 API
//! reference), plus rivet's own replicated message types. The etcd messages also
//! implement serde's `Serialize`/`Deserialize` as proto3 JSON (see `build.rs`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod leasepb {
    tonic::include_proto!("leasepb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

pub mod rivetpb {
    tonic::include_proto!("rivetpb");

    /// Decodes a raft entry's `InternalRequest` so that a txn nests as deep in an entry
    /// as the gRPC service accepts it from a client: the entry's own fields are read
    /// first ([`InternalRequestEnvelope`]), then the txn on its own, each with prost's
    /// full nesting budget.
    pub fn decode_internal_request(bytes: &[u8]) -> Result<InternalRequest, prost::DecodeError> {
        use internal_request::Request as R;
        use internal_request_envelope::Request as E;
        use prost::Message as _;
        let envelope = InternalRequestEnvelope::decode(bytes)?;
        let request = match envelope.request {
            None => None,
            Some(E::Put(r)) => Some(R::Put(r)),
            Some(E::DeleteRange(r)) => Some(R::DeleteRange(r)),
            Some(E::Txn(txn)) => Some(R::Txn(crate::etcdserverpb::TxnRequest::decode(txn)?)),
            Some(E::Compaction(r)) => Some(R::Compaction(r)),
            Some(E::MemberAttributes(r)) => Some(R::MemberAttributes(r)),
            Some(E::MemberUpdate(r)) => Some(R::MemberUpdate(r)),
            Some(E::LeaseGrant(r)) => Some(R::LeaseGrant(r)),
            Some(E::LeaseRevoke(r)) => Some(R::LeaseRevoke(r)),
            Some(E::LeaseCheckpoint(r)) => Some(R::LeaseCheckpoint(r)),
            Some(E::Alarm(r)) => Some(R::Alarm(r)),
            Some(E::LeaseKeepAlive(r)) => Some(R::LeaseKeepAlive(r)),
            Some(E::Auth(r)) => Some(R::Auth(r)),
        };
        Ok(InternalRequest {
            member_id: envelope.member_id,
            id: envelope.id,
            request,
            caller: envelope.caller,
        })
    }
}

/// Every field of the etcd messages the JSON gateway reads, generated from the protos'
/// descriptors (`build.rs`): the gateway reads request JSON with the rules and error
/// messages of etcd's gateway (golang/protobuf's jsonpb), then pbjson makes the message.
pub mod json_schema {
    /// A field's JSON kind; `Enum` and `Message` index [`ENUMS`] and [`MESSAGES`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Bytes,
        String,
        Bool,
        Int64,
        Uint64,
        Int32,
        Uint32,
        Enum(usize),
        Message(usize),
    }

    #[derive(Debug)]
    pub struct Field {
        /// The name written in the proto (`create_revision`, `ID`, `peerURLs`).
        pub name: &'static str,
        /// protoc's lowerCamelCase name (`createRevision`), also accepted when reading.
        pub json_name: &'static str,
        pub kind: Kind,
        pub repeated: bool,
        /// A member of a `oneof`.
        pub oneof: bool,
    }

    #[derive(Debug)]
    pub struct Message {
        /// `etcdserverpb.RangeRequest`.
        pub proto_name: &'static str,
        /// The Go type name that etcd's error messages use.
        pub go_name: &'static str,
        pub fields: &'static [Field],
    }

    #[derive(Debug)]
    pub struct Enum {
        pub proto_name: &'static str,
        /// `etcdserverpb.RangeRequest_SortOrder`, as etcd's error messages name it.
        pub go_name: &'static str,
        pub values: &'static [(&'static str, i32)],
    }

    include!(concat!(env!("OUT_DIR"), "/json_schema.rs"));

    /// The message named `proto_name` (`etcdserverpb.RangeRequest`).
    pub fn message(proto_name: &str) -> Option<&'static Message> {
        MESSAGES.iter().find(|m| m.proto_name == proto_name)
    }
}
