//! The Watch service. Each client stream is served by one task on the core that accepted
//! the connection. Its watchers are cursors over the store's history: when the shards
//! apply new revisions the task reads the changes — from each shard's bounded recent log
//! when its watchers keep up, from the shards' indexes (catch-up) when they fall behind or
//! start in the past — and sends them in revision order, all events of a revision in one
//! response. Nothing is pushed to watchers, so a slow client slows only its own stream and
//! never the apply stream or other watchers (ETCD_LESSONS 19); cancelling is removing a
//! cursor, with no channel left to write to (lesson 18).

use rivet_engine::metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either};
use futures::{SinkExt, Stream, StreamExt};
use prost::Message as _;
use rivet_api::etcdserverpb::{
    watch_create_request::FilterType, watch_request, watch_server::Watch, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use rivet_api::mvccpb::{event::EventType, Event};
use rivet_engine::core::ShardCore;
use rivet_engine::keyspace::{CompactedAt, RangeEnd};
use rivet_engine::limits;
use tonic::{Request, Response, Status, Streaming};

use crate::services::{CoreHandle, Credentials};
use crate::watchers::{
    NewWatcher, Slot, Watchers, FRAGMENT, NO_DELETE, NO_PUT, PREV_KV, PROGRESS_NOTIFY, QUIET,
    SYNCED,
};
use rivet_engine::auth::request::{check_watch_create, watch_cancel_reason};
use rivet_engine::error::EtcdError;

/// etcd's reason for a watch ID that is already in use on the stream.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's reason for a watch whose range holds no key.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// Largest watch response before a watcher that asked for fragments gets them split.
const FRAGMENT_BYTES: usize = 1_572_864;

pub struct WatchService(pub CoreHandle);

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let credentials = self.0.credentials(&request);
        let inbound = request.into_inner();
        let (out, responses) = mpsc::channel(limits::WATCH_STREAM_QUEUE);
        // `gone` completes when tonic drops the response stream (the client went away):
        // a stream whose client half-closed its side has no other way to learn it.
        let (mut gone, client_holds) = oneshot::channel::<()>();
        let core = self.0.core();
        glommio::spawn_local(async move {
            WatchStream::new(core, out, credentials)
                .run(inbound, &mut gone)
                .await;
        })
        .detach();
        let responses = responses.map(move |response| {
            let _held_until_the_stream_drops = &client_holds;
            response
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Whether a watcher wants an event: in its range and not filtered out.
fn wants(watcher: &Slot, event: &Event) -> bool {
    let Some(kv) = &event.kv else { return false };
    if !watcher.contains(&kv.key) {
        return false;
    }
    let is_put = event.r#type == EventType::Put as i32;
    !(is_put && watcher.has(NO_PUT) || !is_put && watcher.has(NO_DELETE))
}

/// The event as a watcher sees it (without `prev_kv` unless it asked).
fn shape(watcher: &Slot, event: &Event) -> Event {
    let mut event = event.clone();
    if !watcher.has(PREV_KV) {
        event.prev_kv = None;
    }
    event
}

struct WatchStream {
    core: Rc<ShardCore>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    /// The watchers, indexed by ID and by key: the live path looks up the watchers of
    /// each event instead of testing every watcher for every revision.
    watchers: Watchers,
    /// Watchers cancelled because their start was compacted: as in etcd, their IDs stay
    /// taken (a create with one is a duplicate, auto IDs skip them) until the client
    /// cancels them, which is then answered as for a live watcher.
    compacted: BTreeSet<i64>,
    next_id: i64,
    /// The next revision the synced watchers have not seen.
    live_next: i64,
    /// The applied index the stream last caught up with.
    seen_index: u64,
    /// When the next progress notifications go out.
    next_progress: std::time::Instant,
    /// The stream's token and certificate name: each create is checked with them, and
    /// every open watcher again when the auth store changes.
    credentials: Credentials,
    /// The auth store (enabled, revision) the open watchers were last checked against.
    auth_checked: (bool, u64),
}

/// `--experimental-watch-progress-notify-interval`: a process-wide setting, as etcd's
/// `v3rpc.SetProgressReportInterval`.
static PROGRESS_REPORT_INTERVAL: std::sync::OnceLock<std::time::Duration> =
    std::sync::OnceLock::new();

/// Sets the interval of progress notifications (once, at start).
pub fn set_progress_report_interval(interval: std::time::Duration) {
    let _ = PROGRESS_REPORT_INTERVAL.set(interval);
}

/// etcd's `GetProgressReportInterval`: the interval plus up to a tenth of it as jitter,
/// so that streams opened together (a client restart) do not notify together.
fn progress_report_interval(seed: u64) -> std::time::Duration {
    let interval = PROGRESS_REPORT_INTERVAL
        .get()
        .copied()
        .unwrap_or(limits::WATCH_PROGRESS_NOTIFY_INTERVAL);
    let tenth = (interval.as_nanos() / 10).max(1);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mixed = (seed ^ u64::from(clock)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    interval + std::time::Duration::from_nanos((u128::from(mixed) % tenth) as u64)
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        metrics::WATCH_STREAMS.add(-1);
        metrics::WATCHERS.add(-(self.watchers.len() as i64));
        let slow = self.watchers.unsynced().len();
        metrics::WATCH_SLOW_WATCHERS.add(-(slow as i64));
    }
}

enum Wake {
    Request(Option<Result<WatchRequest, Status>>),
    /// The client dropped the stream after half-closing its side.
    ClientGone,
    Applied,
    Progress,
}

impl WatchStream {
    fn new(
        core: Rc<ShardCore>,
        out: mpsc::Sender<Result<WatchResponse, Status>>,
        credentials: Credentials,
    ) -> WatchStream {
        let live_next = core.shared.applied_revision() + 1;
        let seen_index = core.shared.applied_index();
        metrics::WATCH_STREAMS.add(1);
        let auth = core.auth_state();
        let auth_checked = (auth.is_enabled(), auth.revision());
        WatchStream {
            core,
            out,
            watchers: Watchers::new(),
            compacted: BTreeSet::new(),
            next_id: 0,
            live_next,
            seen_index,
            next_progress: std::time::Instant::now() + progress_report_interval(seen_index),
            credentials,
            auth_checked,
        }
    }

    /// Whether this stream's credentials may watch `[key, range_end)` now (etcd's
    /// `isWatchPermitted`): the error is the watch's cancel reason.
    async fn check_watch(&self, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        if !self.core.auth_enabled() {
            return Ok(());
        }
        let caller = self
            .core
            .caller(
                self.credentials.token.as_deref(),
                self.credentials.common_name.as_deref(),
            )
            .await?
            .unwrap_or_default();
        check_watch_create(&self.core.auth_state(), &caller, key, range_end)
    }

    /// After the auth store changed (a permission revoked, a user deleted, auth turned
    /// on): every open watcher is checked again, and those no longer permitted are
    /// cancelled with the reason a create would get.
    async fn recheck_permissions(&mut self) -> bool {
        let auth = self.core.auth_state();
        let now = (auth.is_enabled(), auth.revision());
        if now == self.auth_checked {
            return true;
        }
        self.auth_checked = now;
        let mut ids: Vec<i64> = self.watchers.iter().map(Slot::id).collect();
        ids.sort_unstable();
        for id in ids {
            let Some(watcher) = self.watchers.get(id) else {
                continue;
            };
            let (key, range_end) = (watcher.key().to_vec(), watcher.range_end().to_vec());
            if let Err(error) = self.check_watch(&key, &range_end).await {
                self.remove(id);
                let mut response = self.response(id, self.core.shared.applied_revision());
                response.canceled = true;
                response.cancel_reason = watch_cancel_reason(&error);
                if !self.send(response).await {
                    return false;
                }
            }
        }
        true
    }

    /// Serves the stream until the client cancels it, resets it or goes away. A client
    /// that half-closes its sending side (grpc-gateway does, after the create request)
    /// still gets events, as from etcd, until it drops the stream.
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, gone: &mut oneshot::Sender<()>) {
        let mut half_closed = false;
        loop {
            if self.out.is_closed() {
                break;
            }
            let wake = {
                // A watcher still catching up gets its next chunk without waiting for a
                // new revision (requests still come first, so a cancel is not delayed).
                let catching_up = self.catching_up();
                let (core, seen_index) = (self.core.clone(), self.seen_index);
                let inbound = &mut inbound;
                let gone = &mut *gone;
                let request = std::pin::pin!(async move {
                    if half_closed {
                        gone.cancellation().await;
                        Wake::ClientGone
                    } else {
                        Wake::Request(inbound.message().await.transpose())
                    }
                });
                let applied = std::pin::pin!(async move {
                    if catching_up {
                        glommio::yield_if_needed().await;
                    } else {
                        core.wait_applied(seen_index + 1).await;
                    }
                });
                let timer = std::pin::pin!(glommio::timer::sleep(
                    self.next_progress
                        .saturating_duration_since(std::time::Instant::now())
                ));
                match select(request, select(applied, timer)).await {
                    Either::Left((wake, _)) => wake,
                    Either::Right((Either::Left(_), _)) => Wake::Applied,
                    Either::Right((Either::Right(_), _)) => Wake::Progress,
                }
            };
            let open = match wake {
                Wake::Request(Some(Ok(request))) => self.handle(request).await,
                Wake::Request(None) => {
                    half_closed = true;
                    true
                }
                Wake::Request(Some(Err(status))) => {
                    // A request that could not be read (too large, malformed) ends the
                    // stream with its status, as etcd's does.
                    let _ = self
                        .out
                        .send(Err(crate::http::go_stream_status(status)))
                        .await;
                    false
                }
                Wake::ClientGone => false,
                Wake::Applied => true,
                Wake::Progress => self.progress_notify().await,
            };
            if !open || !self.poll().await {
                break;
            }
        }
    }

    /// Whether a watcher is behind the applied revision and reads history in chunks of
    /// [`limits::WATCH_CATCH_UP_REVISIONS_MAX`]: the next chunk must not wait for a write.
    fn catching_up(&self) -> bool {
        let revision = self.core.shared.applied_revision();
        self.watchers
            .unsynced()
            .values()
            .any(|&next| next <= revision)
    }

    async fn send(&mut self, response: WatchResponse) -> bool {
        self.out.send(Ok(response)).await.is_ok()
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.core.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, request: WatchRequest) -> bool {
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                if self.remove(cancel.watch_id) || self.compacted.remove(&cancel.watch_id) {
                    let mut response =
                        self.response(cancel.watch_id, self.core.shared.applied_revision());
                    response.canceled = true;
                    return self.send(response).await;
                }
                true
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Not tied to one watcher: etcd answers with watch ID -1.
                let response = self.response(-1, self.core.shared.applied_revision());
                self.send(response).await
            }
            None => true,
        }
    }

    async fn create(&mut self, mut create: WatchCreateRequest) -> bool {
        let current = self.core.shared.applied_revision();
        // As etcd's v3rpc: the empty key is "\0", the smallest key.
        if create.key.is_empty() {
            create.key = Bytes::from_static(b"\0");
        }
        // etcd's v3rpc checks the permission first: a refused create is answered created
        // and cancelled at once, with no watch ID (`clientv3.InvalidWatchID`), and
        // takes no ID from the stream's sequence.
        if let Err(error) = self.check_watch(&create.key, &create.range_end).await {
            let mut response = self.response(-1, current);
            response.created = true;
            response.canceled = true;
            response.cancel_reason = watch_cancel_reason(&error);
            return self.send(response).await;
        }
        // etcd refuses a range that holds no key (end at or before the key; "\0" means
        // from the key on) before it assigns an ID.
        let empty_range = !create.range_end.is_empty()
            && create.range_end.as_ref() != [0]
            && create.key >= create.range_end;
        if empty_range {
            let mut response = self.response(-1, current);
            response.created = true;
            response.canceled = true;
            response.cancel_reason = EMPTY_RANGE.to_string();
            return self.send(response).await;
        }
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.id_taken(self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let mut response = self.response(id, current);
        response.created = true;
        if self.id_taken(id) {
            // etcd answers a refused create with watch ID -1, not the one asked for.
            response.watch_id = -1;
            response.canceled = true;
            response.cancel_reason = DUPLICATE_WATCH_ID.to_string();
            return self.send(response).await;
        }
        let next = if create.start_revision == 0 {
            current + 1
        } else {
            create.start_revision
        };
        let synced = next == self.live_next;
        let mut flags = QUIET;
        for (on, flag) in [
            (create.filters.contains(&(FilterType::Noput as i32)), NO_PUT),
            (
                create.filters.contains(&(FilterType::Nodelete as i32)),
                NO_DELETE,
            ),
            (create.prev_kv, PREV_KV),
            (create.progress_notify, PROGRESS_NOTIFY),
            (create.fragment, FRAGMENT),
        ] {
            if on {
                flags |= flag;
            }
        }
        // The key and range end are copied out of the request: a slice of it would keep
        // the whole receive buffer it was decoded from alive as long as the watcher.
        self.watchers.insert(NewWatcher {
            id,
            key: &create.key,
            range_end: &create.range_end,
            flags,
            next: (!synced).then_some(next),
        });
        metrics::WATCHERS.add(1);
        if !synced {
            metrics::WATCH_SLOW_WATCHERS.add(1);
        }
        self.send(response).await
    }

    fn id_taken(&self, id: i64) -> bool {
        self.watchers.contains(id) || self.compacted.contains(&id)
    }

    /// Removes a watcher; false if there is none with this ID.
    fn remove(&mut self, id: i64) -> bool {
        let Some(synced) = self.watchers.remove(id) else {
            return false;
        };
        metrics::WATCHERS.add(-1);
        if !synced {
            metrics::WATCH_SLOW_WATCHERS.add(-1);
        }
        true
    }

    /// Brings every watcher up to the revision all shards have applied.
    async fn poll(&mut self) -> bool {
        if !self.recheck_permissions().await {
            return false;
        }
        self.seen_index = self.core.shared.applied_index();
        let revision = self.core.shared.applied_revision();
        if !self.poll_synced(revision).await {
            return false;
        }
        self.poll_unsynced(revision).await
    }

    async fn poll_synced(&mut self, revision: i64) -> bool {
        if self.live_next > revision {
            return true;
        }
        let from = self.live_next;
        self.live_next = revision + 1;
        let (any, prev_kv) = self.watchers.synced();
        if !any {
            return true;
        }
        let events = match self.core.watch_recent(from, revision, prev_kv).await {
            Some(Ok(events)) => events,
            Some(Err(e)) => {
                // A change could not be read: these watchers cannot go on without a gap.
                let mut synced: Vec<i64> = self
                    .watchers
                    .iter()
                    .filter(|w| w.has(SYNCED))
                    .map(Slot::id)
                    .collect();
                synced.sort_unstable();
                for id in synced {
                    if !self.cancel_for_error(id, &e).await {
                        return false;
                    }
                }
                return true;
            }
            None => {
                // The recent logs no longer reach back: these watchers catch up from
                // history.
                let synced: Vec<i64> = self
                    .watchers
                    .iter()
                    .filter(|w| w.has(SYNCED))
                    .map(Slot::id)
                    .collect();
                for id in synced {
                    self.watchers.unsync(id, from);
                    metrics::WATCH_SLOW_WATCHERS.add(1);
                }
                return true;
            }
        };
        // One response per revision, as etcd sends live events.
        let mut start = 0;
        while start < events.len() {
            let at = event_revision(&events[start]);
            let stop = start
                + events[start..]
                    .iter()
                    .take_while(|e| event_revision(e) == at)
                    .count();
            for (id, mine) in self.synced_matches(&events[start..stop]) {
                if !self.deliver(id, at, mine).await {
                    return false;
                }
            }
            start = stop;
        }
        // The synced watchers' next revision is the stream's, `live_next`.
        true
    }

    /// The events of one revision each synced watcher wants, in event order, by watcher ID.
    fn synced_matches(&self, events: &[Event]) -> BTreeMap<i64, Vec<Event>> {
        let mut matches: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for event in events {
            let Some(kv) = &event.kv else { continue };
            for watcher in self.watchers.candidates(&kv.key) {
                if watcher.has(SYNCED) && wants(watcher, event) {
                    matches
                        .entry(watcher.id())
                        .or_default()
                        .push(shape(watcher, event));
                }
            }
        }
        matches
    }

    async fn poll_unsynced(&mut self, revision: i64) -> bool {
        let unsynced: Vec<i64> = self.watchers.unsynced().keys().copied().collect();
        for id in unsynced {
            let Some(&next) = self.watchers.unsynced().get(&id) else {
                continue;
            };
            let Some(watcher) = self.watchers.get(id) else {
                continue;
            };
            if next <= revision {
                let to = revision.min(next + limits::WATCH_CATCH_UP_REVISIONS_MAX - 1);
                let (key, end, from, prev_kv) = (
                    Bytes::copy_from_slice(watcher.key()),
                    RangeEnd::from_request(&Bytes::copy_from_slice(watcher.range_end())),
                    next,
                    watcher.has(PREV_KV),
                );
                match self.core.watch_history(&key, &end, from, to, prev_kv).await {
                    Ok(Err(e)) => {
                        if !self.cancel_for_error(id, &e).await {
                            return false;
                        }
                        continue;
                    }
                    Ok(Ok(events)) => {
                        self.watchers.set_next(id, to + 1);
                        let Some(watcher) = self.watchers.get(id) else {
                            continue;
                        };
                        let mine: Vec<Event> = events
                            .iter()
                            .filter(|e| wants(watcher, e))
                            .map(|e| shape(watcher, e))
                            .collect();
                        if !mine.is_empty() && !self.deliver(id, revision, mine).await {
                            return false;
                        }
                    }
                    Err(CompactedAt(compact_revision)) => {
                        self.remove(id);
                        self.compacted.insert(id);
                        // As etcd 3.4 sends it: a header at revision 0 and no cancel
                        // reason (its mvcc layer reports only the compact revision),
                        // and `canceled` only when that revision is not 0 (its send
                        // loop derives one from the other; a store compacted at
                        // revision 0 cancels a watcher with a negative start silently).
                        let mut response = self.response(id, 0);
                        response.canceled = compact_revision != 0;
                        response.compact_revision = compact_revision;
                        if !self.send(response).await {
                            return false;
                        }
                        continue;
                    }
                }
            }
            if self.watchers.unsynced().get(&id) == Some(&self.live_next) {
                self.watchers.sync(id);
                metrics::WATCH_SLOW_WATCHERS.add(-1);
            }
        }
        true
    }

    /// Ends a watcher that cannot be served without a gap (a change could not be read):
    /// it is cancelled with the error as its reason, as etcd cancels a watcher it cannot
    /// serve, and the client may watch again.
    async fn cancel_for_error(&mut self, id: i64, error: &rivet_engine::error::EtcdError) -> bool {
        tracing::error!(watch_id = id, "cancelling a watcher: {error}");
        self.remove(id);
        let mut response = self.response(id, self.core.shared.applied_revision());
        response.canceled = true;
        response.cancel_reason = error.to_string();
        self.send(response).await
    }

    /// Sends events to one watcher, split into fragments when it asked for them and the
    /// response would be too large.
    async fn deliver(&mut self, id: i64, revision: i64, events: Vec<Event>) -> bool {
        metrics::WATCH_EVENTS.add(events.len() as u64);
        self.watchers.set_flags(id, QUIET, false);
        let fragment = self.watchers.get(id).is_some_and(|w| w.has(FRAGMENT));
        let total: usize = events.iter().map(prost::Message::encoded_len).sum();
        if !fragment || total <= FRAGMENT_BYTES {
            let mut response = self.response(id, revision);
            response.events = events;
            return self.send(response).await;
        }
        let mut chunks: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = 0;
        for event in events {
            let len = event.encoded_len();
            if size + len > FRAGMENT_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(event);
            }
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut response = self.response(id, revision);
            response.events = chunk;
            response.fragment = i < last;
            if !self.send(response).await {
                return false;
            }
        }
        true
    }

    /// etcd 3.4's progress tick: every watcher that asked for progress notifications and
    /// got no events since the last tick, and is caught up, gets an empty response at
    /// the current revision; then the tick starts over for all.
    async fn progress_notify(&mut self) -> bool {
        self.next_progress =
            std::time::Instant::now() + progress_report_interval(self.live_next as u64);
        let revision = self.core.shared.applied_revision();
        let notified = PROGRESS_NOTIFY | QUIET | SYNCED;
        let mut ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|w| w.flags() & notified == notified)
            .map(Slot::id)
            .collect();
        ids.sort_unstable();
        self.watchers.set_flags_all(QUIET);
        for id in ids {
            let response = self.response(id, revision);
            if !self.send(response).await {
                return false;
            }
        }
        true
    }
}

fn event_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}
