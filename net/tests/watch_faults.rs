//! etcd's watch guarantees under network faults (issue 10 item 8): while a writer keeps
//! writing through any member and every member drops, delays and duplicates its raft
//! messages (then one member is deaf to another), a watcher receives every event of its
//! prefix in revision order, with no gap and no duplicate, and resumes from the last
//! revision it saw when it moves to another member — which it does after every few events
//! and whenever its stream fails. At the end its events must equal, one for one, what a
//! watch from revision 1 on the healed cluster replays.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{wait_until, Cluster};
use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};

const PREFIX: &str = "wf/";
/// The watcher moves to the next member after this many events.
const EVENTS_PER_MEMBER: usize = 40;

type Seen = (String, i64, String, bool);

async fn connect(endpoint: &str) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect([format!("http://{endpoint}")], Some(options)),
    )
    .await
    .ok()?
    .ok()
}

/// Watches `PREFIX` from revision 1 until the writer `finished` and every revision up to
/// `last` arrived, moving between members; answers the events in the order they came.
async fn watch(
    endpoints: Vec<String>,
    finished: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut next_revision = 1i64;
    let mut member = 0usize;
    loop {
        let done =
            finished.load(Ordering::Acquire) && next_revision > last.load(Ordering::Acquire) as i64;
        if done {
            return seen;
        }
        member = (member + 1) % endpoints.len();
        let Some(mut client) = connect(&endpoints[member]).await else {
            continue;
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_revision);
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), client.watch(PREFIX, Some(options))).await
        else {
            continue;
        };
        let mut here = 0usize;
        while here < EVENTS_PER_MEMBER {
            let Ok(Ok(Some(response))) =
                tokio::time::timeout(Duration::from_secs(2), stream.message()).await
            else {
                break;
            };
            if response.canceled() {
                break;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                seen.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    event.event_type() == EventType::Delete,
                ));
                next_revision = kv.mod_revision() + 1;
                here += 1;
            }
        }
    }
}

#[test]
fn watch_events_stay_ordered_gapless_and_resumable_under_faults() {
    let cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let written = Arc::new(Mutex::new(0usize));
    let runtime = std::thread::spawn({
        let (endpoints, stop, last, written) = (
            endpoints.clone(),
            stop.clone(),
            last.clone(),
            written.clone(),
        );
        move || {
            common::runtime().block_on(async move {
                let finished = Arc::new(AtomicBool::new(false));
                let watcher =
                    tokio::spawn(watch(endpoints.clone(), finished.clone(), last.clone()));
                // The writer: puts and deletes through a rotating member, retrying a
                // failed request elsewhere (a retried write may apply twice: the watch
                // must show whatever did apply).
                let mut member = 0usize;
                let mut client: Option<Client> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        member = (member + 1) % endpoints.len();
                        client = connect(&endpoints[member]).await;
                        continue;
                    }
                    let c = client.as_mut().expect("client");
                    let key = format!("{PREFIX}{:03}", i % 50);
                    let result = if i % 7 == 6 {
                        tokio::time::timeout(Duration::from_secs(2), c.delete(key, None))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .map(|r| r.header().map_or(0, |h| h.revision()))
                    } else {
                        tokio::time::timeout(
                            Duration::from_secs(2),
                            c.put(key, format!("v{i}"), None),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|r| r.header().map_or(0, |h| h.revision()))
                    };
                    match result {
                        Some(revision) => {
                            last.fetch_max(revision as u64, Ordering::Relaxed);
                            i += 1;
                            *written.lock().expect("written") += 1;
                        }
                        None => client = None,
                    }
                }
                // Whatever a timed-out write did is settled once a write succeeds after it.
                loop {
                    let Some(mut c) = connect(&endpoints[0]).await else {
                        continue;
                    };
                    if let Ok(r) = c.put(format!("{PREFIX}end"), "end", None).await {
                        last.fetch_max(
                            r.header().map_or(0, |h| h.revision()) as u64,
                            Ordering::Release,
                        );
                        finished.store(true, Ordering::Release);
                        break;
                    }
                }
                watcher.await.expect("watcher")
            })
        }
    });
    let progress = |what: &str| {
        let mark = *written.lock().expect("written");
        wait_until(what, Duration::from_secs(90), || {
            *written.lock().expect("written") >= mark + 150
        });
    };
    progress("writes go through");
    for query in [
        "drop=0.2",
        "delay_ms=120",
        "duplicate=0.3",
        "drop=0.1&delay_ms=60&duplicate=0.2",
    ] {
        for member in &cluster.members {
            member.set_faults(query);
        }
        progress(query);
    }
    let leader = cluster.wait_for_leader(None);
    let follower = (leader + 1) % cluster.members.len();
    let follower_id = Cluster::member_id(
        &cluster.members[leader].endpoint(),
        &cluster.members[follower].name,
    );
    for member in &cluster.members {
        member.set_faults("");
    }
    cluster.members[leader].set_faults(&format!("deaf_to={follower_id}"));
    progress("writes go through while the leader does not hear a follower");
    for member in &cluster.members {
        member.heal();
    }
    progress("writes go through after healing");
    stop.store(true, Ordering::Relaxed);
    let seen = runtime.join().expect("writer and watcher");
    cluster.wait_converged();

    // The reference: a watch from revision 1 on the healed cluster, in one stream.
    let last = last.load(Ordering::Relaxed) as i64;
    let reference: Vec<Seen> = common::runtime().block_on(async {
        let mut client = connect(&endpoints[0]).await.expect("connect");
        let options = WatchOptions::new().with_prefix().with_start_revision(1);
        let mut stream = client.watch(PREFIX, Some(options)).await.expect("watch");
        let mut out: Vec<Seen> = Vec::new();
        while out.last().is_none_or(|e| e.1 < last) {
            let response = stream.message().await.expect("stream").expect("open");
            for event in response.events() {
                let kv = event.kv().expect("kv");
                out.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    event.event_type() == EventType::Delete,
                ));
            }
        }
        out
    });
    let revisions: Vec<i64> = seen.iter().map(|e| e.1).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] <= w[1]),
        "events out of order"
    );
    assert_eq!(seen.len(), reference.len(), "events missing or doubled");
    assert_eq!(seen, reference);
    eprintln!("{} events, up to revision {last}", seen.len());
}
