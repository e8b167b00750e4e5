//! etcd v3 API types (being written).
