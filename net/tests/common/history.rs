//! A history of every kind of change etcd's backend keeps, driven through the etcd API
//! (against etcd 3.4 or rivet), and what a server serves of it: the snapshot and import
//! tests compare servers with it.

use std::process::Command;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseTimeToLiveOptions, Txn, TxnOp,
    WatchOptions,
};
use rivet_api::rivetpb::Member;
use rivet_engine::etcd_backend::schema::KeyVersion;

use super::Etcd;

pub fn require_etcd() {
    assert!(
        Etcd::available(),
        "this test needs etcd 3.4 on PATH (apt-get install etcd-server, as CI does); it fails \
         rather than skip"
    );
}

/// `etcdctl` for offline commands (no endpoint).
pub fn etcdctl_offline(args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// What etcd serves as the `key` bucket's contents: the versions live at the compaction
/// revision (etcd keeps exactly those at or below it), then every change after it, in
/// watch order (a revision's events in sub-revision order).
pub async fn served_versions(client: &mut Client, compacted: i64, current: i64) -> Vec<KeyVersion> {
    let mut versions = Vec::new();
    let at_compaction = client
        .get(
            "",
            Some(GetOptions::new().with_from_key().with_revision(compacted)),
        )
        .await
        .expect("range at the compaction revision");
    let mut retained: Vec<KeyVersion> = at_compaction
        .kvs()
        .iter()
        .map(|kv| KeyVersion {
            key: Bytes::copy_from_slice(kv.key()),
            mod_revision: kv.mod_revision(),
            sub_revision: -1,
            create_revision: kv.create_revision(),
            version: kv.version(),
            lease: kv.lease(),
            value: Some(Bytes::copy_from_slice(kv.value())),
        })
        .collect();
    retained.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
    versions.extend(retained);
    let mut stream = client
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_from_key()
                    .with_start_revision(compacted + 1),
            ),
        )
        .await
        .expect("watch");
    let mut last = compacted;
    let mut sub = 0;
    while last < current {
        let response = stream
            .message()
            .await
            .expect("watch response")
            .expect("watch stream open");
        for event in response.events() {
            let kv = event.kv().expect("event kv");
            if kv.mod_revision() != last {
                last = kv.mod_revision();
                sub = 0;
            }
            let put = event.event_type() == EventType::Put;
            versions.push(KeyVersion {
                key: Bytes::copy_from_slice(kv.key()),
                mod_revision: kv.mod_revision(),
                sub_revision: sub,
                create_revision: if put { kv.create_revision() } else { 0 },
                version: if put { kv.version() } else { 0 },
                lease: if put { kv.lease() } else { 0 },
                value: put.then(|| Bytes::copy_from_slice(kv.value())),
            });
            sub += 1;
        }
    }
    drop(stream);
    versions
}

/// Decoded versions at or below the compaction carry real sub-revisions, which etcd's API
/// does not show: compare those by (revision, key) only.
pub fn comparable(mut versions: Vec<KeyVersion>, compacted: i64) -> Vec<KeyVersion> {
    for version in &mut versions {
        if version.mod_revision <= compacted {
            version.sub_revision = -1;
        }
    }
    let (mut old, new): (Vec<_>, Vec<_>) = versions
        .into_iter()
        .partition(|v| v.mod_revision <= compacted);
    old.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
    old.extend(new);
    old
}

pub struct EtcdHistory {
    pub compacted: i64,
    pub current: i64,
    pub served: Vec<KeyVersion>,
    pub leases: Vec<(i64, i64)>,
    pub members: Vec<Member>,
}

/// Drives a real etcd through a history with every kind of change the backend keeps.
pub async fn make_history(endpoint: &str) -> EtcdHistory {
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    for (key, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
        client.put(key, value, None).await.expect("put");
    }
    let long = client.lease_grant(3600, None).await.expect("grant").id();
    let short = client.lease_grant(600, None).await.expect("grant").id();
    client
        .put(
            "d",
            "4",
            Some(etcd_client::PutOptions::new().with_lease(long)),
        )
        .await
        .expect("put with lease");
    client
        .put(
            "e",
            "5",
            Some(etcd_client::PutOptions::new().with_lease(short)),
        )
        .await
        .expect("put with lease");
    client.put("a", "11", None).await.expect("put");
    client.put("x", "gone", None).await.expect("put");
    client.delete("x", None).await.expect("delete");
    client.put("a", "111", None).await.expect("put");
    // Enough keys for a multi-page tree, and a value that needs overflow pages.
    for i in 0..300 {
        client
            .put(format!("many/{i:03}"), format!("value {i}"), None)
            .await
            .expect("put");
    }
    let compacted = client
        .put("big", vec![b'z'; 10_000], None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client
        .compact(
            compacted,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    // One revision, several changes (sub-revisions 0, 1, 2).
    client
        .txn(
            Txn::new()
                .when([Compare::version("a", CompareOp::Greater, 0)])
                .and_then([
                    TxnOp::put("f", "6", None),
                    TxnOp::put("g", "7", None),
                    TxnOp::delete("b", None),
                ]),
        )
        .await
        .expect("txn");
    client.delete("c", None).await.expect("delete");
    client.put("a", "1111", None).await.expect("put");
    client.put("b", "again", None).await.expect("put");
    client.delete("d", None).await.expect("delete leased key");
    client
        .put(
            "h",
            "8",
            Some(etcd_client::PutOptions::new().with_lease(long)),
        )
        .await
        .expect("put with lease");
    client
        .delete(
            "many/1",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete range");
    let current = client
        .put("last", "9", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let served = served_versions(&mut client, compacted, current).await;
    let mut leases = Vec::new();
    for lease in client.leases().await.expect("leases").leases() {
        let ttl = client
            .lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new()))
            .await
            .expect("ttl");
        leases.push((lease.id(), ttl.granted_ttl()));
    }
    leases.sort();
    let members = client
        .member_list()
        .await
        .expect("members")
        .members()
        .iter()
        .map(|m| Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        })
        .collect();
    EtcdHistory {
        compacted,
        current,
        served,
        leases,
        members,
    }
}
