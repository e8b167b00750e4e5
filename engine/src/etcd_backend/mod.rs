//! etcd 3.4's backend file in both directions: the bbolt format ([`bbolt`]) and etcd's
//! buckets on top of it ([`schema`]): the snapshot `Maintenance.Snapshot` streams and
//! `etcdctl snapshot save` stores, and the `member/snap/db` of an etcd data dir.

pub mod bbolt;
pub mod schema;
pub mod snapshot_file;

#[cfg(test)]
mod tests;
