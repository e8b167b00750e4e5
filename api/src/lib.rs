//! The etcd v3 API as rivet speaks it: protobuf types and tonic services generated from
//! the `.proto` files in `proto/` (written for rivet from the public etcd v3 API
//! reference), plus rivet's own replicated message types.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod leasepb {
    tonic::include_proto!("leasepb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

pub mod rivetpb {
    tonic::include_proto!("rivetpb");
}
