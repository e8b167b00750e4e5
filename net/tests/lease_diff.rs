//! Differential tests of the Lease service against a real etcd 3.4 started by the test:
//! the same requests in the same order to both, answers compared field by field with the
//! raw generated gRPC clients (member and cluster IDs ignored). Lease key lists and lease
//! lists are compared sorted (Go map order in etcd); remaining TTLs may differ by a
//! second (granted TTLs compare exactly).
//!
//! Without `etcd` on PATH the tests fail (CI installs it); they never skip.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::watch::{create, settle, Side};
use common::{
    bounded, bytes as b, clear_ids, grpc_channel as channel, grpc_outcome as outcome,
    require_etcd_34, runtime, Etcd, Rivet,
};
use futures::channel::mpsc;
use futures::StreamExt;
use rivet_api::etcdserverpb::kv_client::KvClient;
use rivet_api::etcdserverpb::watch_request::RequestUnion;
use rivet_api::etcdserverpb::PutRequest;
use tonic::transport::Channel;

use rivet_api::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, RangeRequest,
};

/// One server's lease and KV clients, and the ID it chose for the server-chosen lease.
struct LeaseSide {
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
    chosen: i64,
}

impl LeaseSide {
    async fn new(endpoint: &str) -> LeaseSide {
        let channel = channel(endpoint).await;
        LeaseSide {
            lease: LeaseClient::new(channel.clone()),
            kv: KvClient::new(channel),
            chosen: 0,
        }
    }

    /// `text` with this side's server-chosen lease ID replaced by a placeholder, in
    /// decimal (Debug of the messages) and in hex (error messages).
    fn normalize(&self, text: String) -> String {
        if self.chosen == 0 {
            return text;
        }
        text.replace(&self.chosen.to_string(), "<chosen>")
            .replace(&format!("{:x}", self.chosen), "<chosen>")
    }

    /// A lease ID in a request: `CHOSEN` stands for this side's server-chosen one.
    fn id(&self, id: i64) -> i64 {
        if id == CHOSEN {
            self.chosen
        } else {
            id
        }
    }

    async fn grant(&mut self, ttl: i64, id: i64) -> String {
        let result = self.lease.lease_grant(LeaseGrantRequest { ttl, id }).await;
        let result = result.map(|r| {
            r.map(|mut g| {
                clear_ids(&mut g.header);
                if id == 0 && self.chosen == 0 {
                    self.chosen = g.id;
                }
                g
            })
        });
        self.normalize(outcome(result))
    }

    async fn revoke(&mut self, id: i64) -> String {
        let id = self.id(id);
        let result = self.lease.lease_revoke(LeaseRevokeRequest { id }).await;
        let result = result.map(|r| {
            r.map(|mut g| {
                clear_ids(&mut g.header);
                g
            })
        });
        self.normalize(outcome(result))
    }

    async fn time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, String> {
        let id = self.id(id);
        match self
            .lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
            .await
        {
            Ok(r) => {
                let mut r = r.into_inner();
                clear_ids(&mut r.header);
                if r.id == self.chosen && self.chosen != 0 {
                    r.id = CHOSEN;
                }
                // etcd lists a lease's keys in Go map order (random): compared as sets.
                r.keys.sort();
                Ok(r)
            }
            Err(s) => Err(self.normalize(format!("error {:?}: {}", s.code(), s.message()))),
        }
    }

    async fn leases(&mut self) -> String {
        let mut r = self
            .lease
            .lease_leases(LeaseLeasesRequest {})
            .await
            .expect("Leases")
            .into_inner();
        clear_ids(&mut r.header);
        for lease in &mut r.leases {
            if lease.id == self.chosen {
                lease.id = CHOSEN;
            }
        }
        // etcd lists its lease map in Go map order.
        r.leases.sort_by_key(|l| l.id);
        format!("{r:?}")
    }

    /// One keep-alive on a stream of its own: the first answer (or the error).
    async fn keep_alive_once(&mut self, id: i64) -> String {
        let id = self.id(id);
        let (requests, inbound) = mpsc::unbounded();
        requests
            .unbounded_send(LeaseKeepAliveRequest { id })
            .expect("send");
        let text = match self.lease.lease_keep_alive(inbound).await {
            Ok(stream) => match stream.into_inner().next().await {
                Some(Ok(mut r)) => {
                    clear_ids(&mut r.header);
                    format!("{r:?}")
                }
                Some(Err(s)) => format!("error {:?}: {}", s.code(), s.message()),
                None => "stream ended".to_string(),
            },
            Err(s) => format!("error {:?}: {}", s.code(), s.message()),
        };
        drop(requests);
        self.normalize(text)
    }

    async fn put(&mut self, key: &str, lease: i64) -> String {
        let lease = self.id(lease);
        let result = self
            .kv
            .put(PutRequest {
                key: Bytes::from(key.to_string()),
                value: b(b"v"),
                lease,
                ..Default::default()
            })
            .await;
        let result = result.map(|r| {
            r.map(|mut p| {
                clear_ids(&mut p.header);
                p
            })
        });
        self.normalize(outcome(result))
    }

    async fn everything(&mut self) -> String {
        let result = self
            .kv
            .range(RangeRequest {
                key: b(b"\0"),
                range_end: b(b"\0"),
                ..Default::default()
            })
            .await;
        let result = result.map(|r| {
            r.map(|mut p| {
                clear_ids(&mut p.header);
                p
            })
        });
        self.normalize(outcome(result))
    }
}

/// Stands for a side's server-chosen lease ID in requests and answers.
const CHOSEN: i64 = -4242;

/// TimeToLive answers compare exactly except the remaining TTL: the two servers' clocks
/// started at different instants, so it may differ by a second.
fn same_time_to_live(
    what: &str,
    etcd: Result<LeaseTimeToLiveResponse, String>,
    rivet: Result<LeaseTimeToLiveResponse, String>,
) -> Result<LeaseTimeToLiveResponse, String> {
    match (&etcd, rivet) {
        (Ok(e), Ok(mut r)) => {
            assert!(
                (e.ttl - r.ttl).abs() <= 1,
                "{what}: remaining TTL: etcd {e:?}, rivet {r:?}"
            );
            r.ttl = e.ttl;
            assert_eq!(&r, e, "{what}: rivet (left) differs from etcd");
        }
        (_, rivet) => assert_eq!(rivet, etcd, "{what}: rivet (left) differs from etcd"),
    }
    etcd
}

#[test]
fn lease_operations_match_etcd() {
    require_etcd_34();
    let etcd = Etcd::start(&[]);
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut e = LeaseSide::new(&etcd.endpoint()).await;
        let mut r = LeaseSide::new(&rivet.endpoint()).await;
        // A watch on every key, with prev_kv: revokes and the expiry delete in one
        // revision each.
        let mut etcd_watch = Side::new("etcd", &etcd.endpoint()).await;
        let mut rivet_watch = Side::new("rivet", &rivet.endpoint()).await;
        for side in [&mut etcd_watch, &mut rivet_watch] {
            side.open_stream().await;
            side.send(0, RequestUnion::CreateRequest(create(b"\0", b"\0", 0, 0)));
        }
        macro_rules! same {
            ($what:expr, $call:ident ( $($arg:expr),* )) => {{
                let etcd_answer = bounded("etcd", e.$call($($arg),*)).await;
                let rivet_answer = bounded("rivet", r.$call($($arg),*)).await;
                assert_eq!(rivet_answer, etcd_answer, "{}: rivet (left) differs from etcd", $what);
                println!("{}: {etcd_answer}", $what);
                etcd_answer
            }};
        }
        macro_rules! ttl {
            ($what:expr, $id:expr, $keys:expr) => {{
                let etcd_answer = bounded("etcd", e.time_to_live($id, $keys)).await;
                let rivet_answer = bounded("rivet", r.time_to_live($id, $keys)).await;
                same_time_to_live($what, etcd_answer, rivet_answer)
            }};
        }
        // Grants: server-chosen ID, client-chosen IDs, TTLs below etcd's minimum (1.5
        // election timeouts, 2 s with the defaults), zero, too large, a duplicate ID.
        let chosen = same!("grant, server-chosen ID", grant(60, 0));
        assert!(chosen.contains("<chosen>"), "{chosen}");
        assert!(e.chosen != 0 && r.chosen != 0);
        same!("grant ID 1000", grant(30, 1000));
        same!("grant TTL 1", grant(1, 1001));
        same!("grant TTL 0", grant(0, 1002));
        same!("grant negative TTL", grant(-5, 1003));
        same!("grant too large TTL", grant(9_000_000_001, 1004));
        let duplicate = same!("grant a duplicate ID", grant(30, 1000));
        assert!(duplicate.starts_with("error"), "{duplicate}");
        same!("leases", leases());

        // Keys attached to leases; a missing lease is refused.
        same!("put with lease 1000", put("k1", 1000));
        same!("put with lease 1000", put("k2", 1000));
        same!("put with the chosen lease", put("k3", CHOSEN));
        same!("put without lease", put("k4", 0));
        same!("put with lease 1000", put("k6", 1000));
        same!("put with lease 1002 (TTL 2)", put("k8", 1002));
        same!("put with lease 1002 (TTL 2)", put("k9", 1002));
        same!("move a key to another lease", put("k2", 1001));
        let missing = same!("put with a missing lease", put("k5", 999));
        assert!(missing.starts_with("error"), "{missing}");

        // TimeToLive with and without keys; a missing lease answers TTL -1.
        let with_keys = ttl!("ttl 1000 with keys", 1000, true).expect("TTL");
        assert_eq!(with_keys.granted_ttl, 30);
        assert_eq!(with_keys.keys.len(), 2, "{with_keys:?}");
        ttl!("ttl 1000", 1000, false).expect("TTL");
        ttl!("ttl 1001 with keys", 1001, true).expect("TTL");
        ttl!("ttl chosen with keys", CHOSEN, true).expect("TTL");
        let gone = ttl!("ttl missing", 999, true).expect("an answer");
        assert_eq!(gone.ttl, -1);

        // KeepAlive once: the lease's TTL; for a missing lease TTL 0.
        same!("keep-alive 1000", keep_alive_once(1000));
        same!("keep-alive chosen", keep_alive_once(CHOSEN));
        same!("keep-alive missing", keep_alive_once(999));

        // Revoke: the attached keys go in one revision; a missing lease is an error.
        same!("everything before revokes", everything());
        same!("revoke 1000", revoke(1000));
        same!("everything after revoking 1000", everything());
        same!("revoke chosen", revoke(CHOSEN));
        same!("everything after revoking the chosen", everything());
        let again = same!("revoke 1000 again", revoke(1000));
        assert!(again.starts_with("error"), "{again}");
        same!("revoke never granted", revoke(424_242));
        let revoked = ttl!("ttl revoked", 1000, false).expect("an answer");
        assert_eq!(revoked.ttl, -1);
        same!("leases after revokes", leases());
        same!("revoke 1001 (one key, moved to it)", revoke(1001));
        same!("everything after the revokes", everything());

        // Lease 1002 (TTL 2 s) expires: both delete its two keys in one revision.
        let deadline = Instant::now() + Duration::from_secs(20);
        for side in [&mut e, &mut r] {
            for id in [1002, 1003] {
                loop {
                    let answer = bounded("ttl", side.time_to_live(id, false)).await;
                    if answer.expect("TTL").ttl == -1 {
                        break;
                    }
                    assert!(Instant::now() < deadline, "lease {id} never expired");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        same!("everything after the expiry", everything());
        same!("leases at the end", leases());

        settle(&etcd_watch, &rivet_watch, &etcd.endpoint(), None).await;
        let etcd_events = e.normalize(format!("{:?}", etcd_watch.by_watcher()));
        let rivet_events = r.normalize(format!("{:?}", rivet_watch.by_watcher()));
        assert_eq!(
            rivet_events, etcd_events,
            "watch: rivet (left) differs from etcd"
        );
        assert!(
            etcd_events.contains("key: b\"k9\", create_revision: 0"),
            "{etcd_events}"
        );
    });
}
