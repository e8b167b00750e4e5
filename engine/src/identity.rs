//! Member and cluster IDs, derived exactly as etcd derives them so that a rivet member
//! started with etcd's flags has etcd's IDs.

use sha1::{Digest, Sha1};

/// The first 8 bytes, big endian, of the SHA-1 of `bytes`.
pub fn sha1_prefix(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// etcd's member ID of an initial member: SHA-1 over its sorted peer URLs followed by the
/// cluster token.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort_unstable();
    let mut material = sorted.concat().into_bytes();
    material.extend_from_slice(cluster_token.as_bytes());
    sha1_prefix(&material)
}

/// etcd's cluster ID: SHA-1 over the sorted member IDs, each big endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let material: Vec<u8> = sorted.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_prefix(&material)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcds_defaults() {
        // etcd 3.4 with default flags reports these IDs.
        let member = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(member, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[member]), 0xcdf818194e3a8c32);
    }
}
