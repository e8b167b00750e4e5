//! Watch, Lease, Lock and Election through a real third-party client (the `etcd-client`
//! crate) against one rivet member.

mod common;

use std::time::Duration;

use common::{runtime, Rivet};
use etcd_client::{Client, EventType, GetOptions, LockOptions, PutOptions, WatchOptions};

async fn client(rivet: &Rivet) -> Client {
    Client::connect([rivet.url()], None).await.expect("connect")
}

#[test]
fn watch_replays_history_then_delivers_live_events_in_order() {
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut c = client(&rivet).await;
        c.put("a", "1", None).await.expect("put");
        c.put("a", "2", None).await.expect("put");
        c.delete("a", None).await.expect("delete");
        let mut stream = c
            .watch(
                "a",
                Some(WatchOptions::new().with_start_revision(1).with_prev_key()),
            )
            .await
            .expect("watch");
        let mut events = Vec::new();
        while events.len() < 3 {
            let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("events in time")
                .expect("stream")
                .expect("open");
            events.extend(response.events().iter().cloned());
        }
        let kinds: Vec<EventType> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(kinds, [EventType::Put, EventType::Put, EventType::Delete]);
        let revisions: Vec<i64> = events
            .iter()
            .map(|e| e.kv().expect("kv").mod_revision())
            .collect();
        assert_eq!(revisions, [2, 3, 4]);
        assert_eq!(events[1].prev_kv().expect("prev").value(), b"1");
        assert_eq!(events[2].prev_kv().expect("prev").value(), b"2");
        // Live: a put after the watch started arrives too.
        c.put("a", "3", None).await.expect("put");
        let live = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("live event in time")
            .expect("stream")
            .expect("open");
        assert_eq!(live.events()[0].kv().expect("kv").value(), b"3");
    });
}

#[test]
fn a_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision() {
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut c = client(&rivet).await;
        for i in 0..5 {
            c.put("k", format!("{i}"), None).await.expect("put");
        }
        c.compact(4, None).await.expect("compact");
        let mut stream = c
            .watch("k", Some(WatchOptions::new().with_start_revision(2)))
            .await
            .expect("watch");
        let response = loop {
            let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("answer in time")
                .expect("stream")
                .expect("open");
            if r.canceled() {
                break r;
            }
        };
        assert_eq!(response.compact_revision(), 4);
    });
}

#[test]
fn an_expired_lease_deletes_its_keys_in_one_revision_and_keep_alive_extends_it() {
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut c = client(&rivet).await;
        // etcd raises TTLs below 1.5 election timeouts (2 s here) to that minimum.
        let lease = c.lease_grant(1, None).await.expect("grant");
        assert_eq!(lease.ttl(), 2);
        c.put("x", "1", Some(PutOptions::new().with_lease(lease.id())))
            .await
            .expect("put");
        c.put("y", "1", Some(PutOptions::new().with_lease(lease.id())))
            .await
            .expect("put");
        let ttl = c.lease_time_to_live(lease.id(), None).await.expect("ttl");
        assert!(ttl.ttl() <= 2 && ttl.ttl() >= 0);
        let missing = c
            .lease_time_to_live(12345, None)
            .await
            .expect("ttl of a missing lease");
        assert_eq!(missing.ttl(), -1);
        let before = c
            .get("x", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        // Keep it alive past its TTL.
        let (mut keeper, mut answers) = c.lease_keep_alive(lease.id()).await.expect("keep-alive");
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            keeper.keep_alive().await.expect("keep alive");
            let answer = answers.message().await.expect("answer").expect("open");
            assert_eq!(answer.ttl(), 2);
        }
        assert_eq!(
            c.get("x", None).await.expect("get").count(),
            1,
            "kept alive"
        );
        drop(keeper);
        // Then let it expire: both keys go, in one revision.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = c
                .get(
                    "",
                    Some(GetOptions::new().with_all_keys().with_count_only()),
                )
                .await
                .expect("count");
            if left.count() == 0 {
                assert_eq!(left.header().expect("header").revision(), before + 1);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lease did not expire"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Waits (at most 20 s) until `prefix` holds `count` keys.
async fn keys_under(c: &mut Client, prefix: &str, count: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held = c
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count")
            .count();
        if held == count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{prefix} holds {held} keys, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn locks_exclude_each_other_and_elections_hand_over() {
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut c = client(&rivet).await;
        let first = c.lease_grant(30, None).await.expect("grant").id();
        let second = c.lease_grant(30, None).await.expect("grant").id();
        let held = c
            .lock("the-lock", Some(LockOptions::new().with_lease(first)))
            .await
            .expect("lock");
        let mut other = client(&rivet).await;
        let waiting = tokio::spawn(async move {
            other
                .lock("the-lock", Some(LockOptions::new().with_lease(second)))
                .await
                .map(|r| r.key().to_vec())
        });
        // Once the second locker's key is under the lock's prefix, it waits for the
        // first.
        keys_under(&mut c, "the-lock/", 2).await;
        assert!(!waiting.is_finished(), "the second locker must wait");
        c.unlock(held.key()).await.expect("unlock");
        let key = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiter gets the lock")
            .expect("task")
            .expect("lock");
        assert!(key.starts_with(b"the-lock/"));

        // Election: the first campaigner leads; after it resigns the second does.
        let a = c.lease_grant(30, None).await.expect("grant").id();
        let b = c.lease_grant(30, None).await.expect("grant").id();
        let leader = c.campaign("the-election", "a", a).await.expect("campaign");
        let leader_key = leader.leader().expect("leader key").clone();
        let mut other = client(&rivet).await;
        let campaigning =
            tokio::spawn(async move { other.campaign("the-election", "b", b).await.map(|_| ()) });
        keys_under(&mut c, "the-election/", 2).await;
        let now = c.leader("the-election").await.expect("leader");
        assert_eq!(now.kv().expect("kv").value(), b"a");
        c.resign(Some(
            etcd_client::ResignOptions::new().with_leader(leader_key),
        ))
        .await
        .expect("resign");
        tokio::time::timeout(Duration::from_secs(10), campaigning)
            .await
            .expect("the second campaigner leads")
            .expect("task")
            .expect("campaign");
        let now = c.leader("the-election").await.expect("leader");
        assert_eq!(now.kv().expect("kv").value(), b"b");
    });
}
