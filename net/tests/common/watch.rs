//! Watch streams opened with the raw generated client, recording every response, for
//! differential tests that compare what etcd and rivet send; and the wait until both
//! servers have sent the same so far.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::StreamExt;
use rivet_api::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use tonic::transport::Channel;

use super::{bytes as b, clear_ids, grpc_channel as channel};

/// One open watch stream: the request sender and every response received, in order.
pub struct Stream {
    pub requests: mpsc::UnboundedSender<WatchRequest>,
    pub received: Arc<Mutex<Vec<WatchResponse>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One server's side of the watch test.
pub struct Side {
    pub name: &'static str,
    pub channel: Channel,
    pub kv: KvClient<Channel>,
    pub streams: Vec<Stream>,
}

impl Side {
    pub async fn new(name: &'static str, endpoint: &str) -> Side {
        let channel = channel(endpoint).await;
        Side {
            name,
            kv: KvClient::new(channel.clone()),
            channel,
            streams: Vec::new(),
        }
    }

    pub async fn open_stream(&mut self) {
        let (requests, inbound) = mpsc::unbounded();
        let mut client = WatchClient::new(self.channel.clone());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let name = self.name;
        // etcd (grpc-go) sends the stream's headers with its first response, so the call
        // is awaited by the reader, not here.
        let reader = tokio::spawn(async move {
            let mut responses = client
                .watch(inbound)
                .await
                .unwrap_or_else(|e| panic!("{name}: watch: {e}"))
                .into_inner();
            while let Some(Ok(mut response)) = responses.next().await {
                clear_ids(&mut response.header);
                sink.lock().expect("lock").push(response);
            }
        });
        self.streams.push(Stream {
            requests,
            received,
            reader,
        });
    }

    pub fn send(&self, stream: usize, request: RequestUnion) {
        self.streams[stream]
            .requests
            .unbounded_send(WatchRequest {
                request_union: Some(request),
            })
            .expect("watch stream open");
    }

    pub fn stream_count(&self, stream: usize) -> usize {
        self.streams[stream].received.lock().expect("lock").len()
    }

    /// Every stream's responses grouped by watch ID, each group in arrival order. etcd
    /// sends the responses of different watchers of one revision in map order (random),
    /// so only the order within a watcher is compared.
    pub fn by_watcher(&self) -> BTreeMap<(usize, i64), Vec<WatchResponse>> {
        let mut groups: BTreeMap<(usize, i64), Vec<WatchResponse>> = BTreeMap::new();
        for (i, stream) in self.streams.iter().enumerate() {
            for response in stream.received.lock().expect("lock").iter() {
                groups
                    .entry((i, response.watch_id))
                    .or_default()
                    .push(response.clone());
            }
        }
        groups
    }
}

/// A number in etcd's `/metrics` text.
pub fn metric(endpoint: &str, name: &str) -> Option<f64> {
    let text = super::http_get(endpoint, "/metrics").ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until both servers have sent the same thing so far: the answer each owes to a
/// request just sent on `stream` (if it owes one) has arrived from both, etcd reports no
/// watcher still catching up (its 100 ms sync loop ran), and every
/// watcher has received as many responses from rivet as from etcd. Catching-up
/// watchers must be synced before the next write, or its events may join their
/// catch-up on one server and not on the other.
pub async fn settle(
    etcd: &Side,
    rivet: &Side,
    etcd_endpoint: &str,
    answer_on: Option<(usize, usize, usize)>,
) {
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    loop {
        let answered = answer_on.is_none_or(|(stream, etcd_before, rivet_before)| {
            etcd.stream_count(stream) > etcd_before && rivet.stream_count(stream) > rivet_before
        });
        // (etcd's pending-events gauge is no help: it also counts events its filters
        // drop, which it never reports as sent.)
        let synced =
            || metric(etcd_endpoint, "etcd_debugging_mvcc_slow_watcher_total") == Some(0.0);
        let counts = |side: &Side| -> BTreeMap<(usize, i64), usize> {
            side.by_watcher()
                .into_iter()
                .map(|(k, v)| (k, v.len()))
                .collect()
        };
        if answered && synced() && counts(etcd) == counts(rivet) {
            return;
        }
        if Instant::now() >= deadline {
            let (etcd_groups, rivet_groups) = (etcd.by_watcher(), rivet.by_watcher());
            let (etcd_counts, rivet_counts) = (counts(etcd), counts(rivet));
            // First the watcher whose number of responses differs (what is waited
            // for), else the first whose responses differ.
            let differing = etcd_counts
                .keys()
                .chain(rivet_counts.keys())
                .find(|k| etcd_counts.get(k) != rivet_counts.get(k))
                .or_else(|| {
                    etcd_groups
                        .keys()
                        .chain(rivet_groups.keys())
                        .find(|k| etcd_groups.get(k) != rivet_groups.get(k))
                });
            let detail = differing.map(|k| {
                let none = Vec::new();
                format!(
                    "stream {}, watch {} ({:?} responses from etcd, {:?} from rivet): {}",
                    k.0,
                    k.1,
                    etcd_counts.get(k),
                    rivet_counts.get(k),
                    first_difference(
                        etcd_groups.get(k).unwrap_or(&none),
                        rivet_groups.get(k).unwrap_or(&none)
                    )
                )
            });
            panic!(
                "after {limit:?} the servers have not sent the same responses (answered: \
                 {answered}; etcd's slow watchers {:?}): {}",
                metric(etcd_endpoint, "etcd_debugging_mvcc_slow_watcher_total"),
                detail.unwrap_or_else(|| "same responses".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A create request with `prev_kv` set.
pub fn create(
    key: &[u8],
    range_end: &[u8],
    start_revision: i64,
    watch_id: i64,
) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(key),
        range_end: b(range_end),
        start_revision,
        watch_id,
        prev_kv: true,
        ..Default::default()
    }
}

/// The watch IDs a stream's responses left live (created and not cancelled).
pub fn live_ids(responses: &[WatchResponse]) -> Vec<i64> {
    let mut live = Vec::new();
    for r in responses {
        if r.created && !r.canceled {
            live.push(r.watch_id);
        } else if r.canceled {
            live.retain(|id| *id != r.watch_id);
        }
    }
    live
}

/// Where two watchers' responses first differ.
pub fn first_difference(etcd: &[WatchResponse], rivet: &[WatchResponse]) -> String {
    for (i, (e, r)) in etcd.iter().zip(rivet).enumerate() {
        if e != r {
            return format!("response {i}:\n  etcd:  {e:?}\n  rivet: {r:?}");
        }
    }
    format!(
        "etcd sent {} responses, rivet {}; the extra ones:\n  etcd:  {:?}\n  rivet: {:?}",
        etcd.len(),
        rivet.len(),
        etcd.get(rivet.len()..),
        rivet.get(etcd.len()..)
    )
}
