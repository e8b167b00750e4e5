//! The apply sequencer: runs on the raft core, applies committed requests in log order,
//! assigns etcd revisions and decides txn branches. Deterministic: the same log gives the
//! same revisions, responses and mutations on every member and on every replay.
//!
//! It keeps the *head* of every live key (create/mod revision, version, lease, value) —
//! everything needed to evaluate compares, `prev_kv`, `ignore_value` and the ranges inside
//! a txn without asking the shards. The shards keep history and serve standalone reads;
//! the sequencer hands them a stream of [`Mutation`]s.
//!
//! A head restored at start does not hold its value: it points at the key's record in the
//! owning shard's page file ([`StoredHead`]), and the sequencer reads the value from its
//! own read-only mapping of that segment when a compare, `prev_kv`, `ignore_value` or a
//! txn range needs it. Records are immutable and the mapping outlives the shard's garbage
//! collection and compactions, so the bytes read are exactly the key's value at its mod
//! revision, on every member and every replay. Values written since the start are held.
//!
//! Revision rules (etcd 3.4 `mvcc`): the store starts at revision 1; a request that
//! changes something advances the revision by one and all its changes share it; a delete
//! that matches nothing, or a txn whose branch changes nothing, does not advance it.
//!
//! Worked example (keys `a`, `b`; current revision 1):
//! - put a=1        → revision 2; a{create 2, mod 2, version 1}
//! - put a=2        → revision 3; a{create 2, mod 3, version 2}
//! - delete b       → nothing matched: revision stays 3, deleted 0
//! - txn [a=2?] put b, delete a → revision 4; b{create 4, mod 4, version 1}, a gone

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use rivet_api::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointRequest, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use rivet_api::mvccpb::KeyValue;

use crate::error::EtcdError;
use crate::keyspace::RangeEnd;
pub use crate::keyspace::{Head, Mutation};
use crate::page::{decode_record_at, PagePtr, Record, SegmentView};
use crate::range::{fetch_limit, finish_range, needs_values, resolve_revision};

/// The answer to one applied write.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(rivet_api::etcdserverpb::AlarmResponse),
    /// A forwarded keep-alive: the lease's TTL (0: no such lease).
    LeaseKeepAlive(i64),
    /// An internal request (lease checkpoint, membership) that answers nobody.
    Internal,
    /// An applied Auth service request (headers left for the answering core).
    Auth(Box<crate::auth::AuthResponse>),
    /// Authenticate refused because the auth store moved since the proposer checked the
    /// password: the proposer checks it again and re-proposes (etcd's retry).
    AuthStalePasswordCheck,
}

/// A range inside a txn that reads an older revision: the sequencer keeps no history, so
/// the member answering the client fills it in from the shards. `path` indexes into the
/// nested `responses` of the txn response.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoricalRange {
    pub path: Vec<usize>,
    pub request: RangeRequest,
    /// The revision for the nested header (the txn's view revision).
    pub header_revision: i64,
}

/// Everything one applied request produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub result: Option<Result<Applied, EtcdError>>,
    pub mutations: Vec<Mutation>,
    /// Set when the request compacted the store at this revision.
    pub compaction: Option<i64>,
    pub historical_ranges: Vec<HistoricalRange>,
}

pub struct Sequencer {
    keys: BTreeMap<Bytes, Entry>,
    revision: i64,
    compact_revision: i64,
    leases: BTreeMap<i64, LeaseEntry>,
    /// The shards' segments that restored heads' values are read from, by (shard, segment
    /// key), with the number of heads whose value is in each: a segment is let go once none
    /// is left, so that the disk space of one the shard's garbage collection removed is
    /// freed.
    segments: HashMap<(u32, u32), MappedSegment>,
    /// Segments whose count fell to zero during the request being applied; let go when it
    /// ends ([`Sequencer::release_unused_segments`]), since a request that fails half-way
    /// puts its heads back.
    maybe_unused: Vec<(u32, u32)>,
}

/// A live key's newest version as the sequencer holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
    value: Value,
}

/// Where a head's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    /// Written since the start: held here.
    Held(Bytes),
    /// Restored at start (or kept by an `ignore_value` put): the value of the key record at
    /// `ptr` in shard `shard`'s page file.
    OnPage { shard: u32, ptr: PagePtr },
}

/// A head a shard streams at start: everything but the value, which stays in the key
/// record at `ptr` of its page file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHead {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub ptr: PagePtr,
}

struct MappedSegment {
    view: SegmentView,
    heads: usize,
}

/// Reads a restored value from the mapped `segments`. The record was read and its CRC
/// checked when the shard streamed the head, and the mapping holds it unchanged since; a
/// failure here (a bug, or bytes damaged in memory) stops the member rather than let this
/// member decide a compare or answer differently from the others.
fn read_from(
    segments: &HashMap<(u32, u32), MappedSegment>,
    key: &[u8],
    shard: u32,
    ptr: PagePtr,
) -> Bytes {
    let read = match segments.get(&(shard, ptr.segment_key())) {
        None => Err("its segment is not mapped".to_string()),
        Some(segment) => match decode_record_at(segment.view.bytes(), ptr.offset() as usize) {
            Ok(Some((Record::Key(record), _))) if record.key == key => match record.value {
                Some(value) => Ok(Bytes::copy_from_slice(value)),
                None => Err("the record is a tombstone".into()),
            },
            Ok(Some((Record::Key(_), _))) => Err("the record holds another key".into()),
            Ok(_) => Err("no key record there".into()),
            Err(e) => Err(e.to_string()),
        },
    };
    match read {
        Ok(value) => value,
        Err(reason) => crate::crash::stop(format_args!(
            "cannot read the value of key {:?} from shard {shard} at {ptr:?}: {reason}",
            String::from_utf8_lossy(key)
        )),
    }
}

/// A lease in the replicated state. Expiry is not here: it is the leader's business (a
/// monotonic deadline on the raft core), decided into the log as a revoke.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// The remaining TTL a leader last checkpointed (0: none).
    pub remaining_ttl: i64,
    pub keys: BTreeSet<Bytes>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

/// Iterates the live keys of a range in ascending key order.
fn range_iter<'a, V>(
    keys: &'a BTreeMap<Bytes, V>,
    key: &'a Bytes,
    end: &'a RangeEnd,
) -> Box<dyn Iterator<Item = (&'a Bytes, &'a V)> + 'a> {
    match end {
        RangeEnd::Single => Box::new(keys.get_key_value(key).into_iter()),
        RangeEnd::FromKey => {
            Box::new(keys.range::<Bytes, _>((Bound::Included(key), Bound::Unbounded)))
        }
        RangeEnd::Before(stop) => {
            if stop <= key {
                Box::new(std::iter::empty())
            } else {
                Box::new(keys.range::<Bytes, _>((Bound::Included(key), Bound::Excluded(stop))))
            }
        }
    }
}

impl Sequencer {
    /// An empty store: revision 1, nothing compacted.
    pub fn new() -> Sequencer {
        Sequencer::restore(1, -1)
    }

    /// Rebuilds the sequencer from recovered state: the heads of all live keys (fed in
    /// chunks by the shards), the revision and compaction of the checkpoint.
    pub fn restore(revision: i64, compact_revision: i64) -> Sequencer {
        Sequencer {
            keys: BTreeMap::new(),
            revision,
            compact_revision,
            leases: BTreeMap::new(),
            segments: HashMap::new(),
            maybe_unused: Vec::new(),
        }
    }

    /// Restores a key's head with its value (a snapshot's); call after
    /// [`Sequencer::restore_lease`] so the key is attached to its lease.
    pub fn restore_key(&mut self, key: Bytes, head: Head) {
        let entry = Entry {
            create_revision: head.create_revision,
            mod_revision: head.mod_revision,
            version: head.version,
            lease: head.lease,
            value: Value::Held(head.value),
        };
        self.restore_entry(key, entry);
    }

    /// Restores a key's head whose value stays in shard `shard`'s page file; call after
    /// [`Sequencer::restore_segments`] for that shard and [`Sequencer::restore_lease`].
    pub fn restore_stored_key(&mut self, shard: usize, key: Bytes, head: StoredHead) {
        let entry = Entry {
            create_revision: head.create_revision,
            mod_revision: head.mod_revision,
            version: head.version,
            lease: head.lease,
            value: Value::OnPage {
                shard: shard as u32,
                ptr: head.ptr,
            },
        };
        self.restore_entry(key, entry);
    }

    /// The segments of shard `shard`'s page file as they are at the start (read-only
    /// mappings that outlive the shard's changes to its files), which the values of the
    /// heads it streams are read from.
    pub fn restore_segments(&mut self, shard: usize, segments: Vec<SegmentView>) {
        for view in segments {
            let at = (shard as u32, view.key);
            self.segments.insert(at, MappedSegment { view, heads: 0 });
            self.maybe_unused.push(at);
        }
    }

    fn restore_entry(&mut self, key: Bytes, entry: Entry) {
        if entry.lease != 0 {
            if let Some(lease) = self.leases.get_mut(&entry.lease) {
                lease.keys.insert(key.clone());
            }
        }
        self.insert(key, entry);
    }

    /// Sets a key's entry, keeping the count of heads per mapped segment.
    fn insert(&mut self, key: Bytes, entry: Entry) -> Option<Entry> {
        self.count_in(&entry.value);
        let old = self.keys.insert(key, entry);
        if let Some(old) = &old {
            self.count_out(&old.value);
        }
        old
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.keys.remove(key);
        if let Some(old) = &old {
            self.count_out(&old.value);
        }
        old
    }

    fn count_in(&mut self, value: &Value) {
        if let Value::OnPage { shard, ptr } = value {
            if let Some(segment) = self.segments.get_mut(&(*shard, ptr.segment_key())) {
                segment.heads += 1;
            }
        }
    }

    fn count_out(&mut self, value: &Value) {
        if let Value::OnPage { shard, ptr } = value {
            let at = (*shard, ptr.segment_key());
            if let Some(segment) = self.segments.get_mut(&at) {
                segment.heads = segment.heads.saturating_sub(1);
                if segment.heads == 0 {
                    self.maybe_unused.push(at);
                }
            }
        }
    }

    /// Lets go of the mapped segments no head's value is in any more (called when a
    /// request ends, and by the start once every shard streamed its heads).
    pub fn release_unused_segments(&mut self) {
        for at in std::mem::take(&mut self.maybe_unused) {
            if self.segments.get(&at).is_some_and(|s| s.heads == 0) {
                self.segments.remove(&at);
            }
        }
    }

    /// How many shard segments the sequencer still maps for restored values.
    pub fn mapped_segments(&self) -> usize {
        self.segments.len()
    }

    /// The (shard, segment key) of every segment the sequencer still maps.
    pub fn mapped_segment_keys(&self) -> Vec<(usize, u32)> {
        let mut keys: Vec<(usize, u32)> = self
            .segments
            .keys()
            .map(|(shard, key)| (*shard as usize, *key))
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The shards deleted the segments `released` (shard, segment key) from their page
    /// files (garbage collection or a defragmentation rewrote them): every head whose
    /// value is still read from one of them takes a copy of its value (the same bytes,
    /// now held), and the mappings go, so that the files' disk space is freed now rather
    /// than at the next start. Between requests only (a request's undo log may point into
    /// a segment). One pass over the heads for the whole batch, which stops once no head
    /// is left in the released segments; none when no head points into them. Answers
    /// how many values were copied.
    pub fn release_segments(&mut self, released: &[(usize, u32)]) -> usize {
        let mut left = 0;
        let mut targets = Vec::with_capacity(released.len());
        for (shard, key) in released {
            let at = (*shard as u32, *key);
            if let Some(segment) = self.segments.get(&at) {
                left += segment.heads;
                targets.push(at);
            }
        }
        let mut copied = 0;
        if left > 0 {
            for (key, entry) in self.keys.iter_mut() {
                let Value::OnPage { shard, ptr } = entry.value else {
                    continue;
                };
                if !targets.contains(&(shard, ptr.segment_key())) {
                    continue;
                }
                entry.value = Value::Held(read_from(&self.segments, key, shard, ptr));
                copied += 1;
                if copied == left {
                    break;
                }
            }
        }
        for at in targets {
            self.segments.remove(&at);
        }
        copied
    }

    /// The value of `key`'s entry: held, or read from the page record it points at.
    fn value_of(&self, key: &[u8], entry: &Entry) -> Bytes {
        match &entry.value {
            Value::Held(value) => value.clone(),
            Value::OnPage { shard, ptr } => self.read_value(key, *shard, *ptr),
        }
    }

    /// Reads a restored value (see [`read_from`]).
    fn read_value(&self, key: &[u8], shard: u32, ptr: PagePtr) -> Bytes {
        read_from(&self.segments, key, shard, ptr)
    }

    /// The key-value etcd answers for `key`'s entry, its value read if `with_value`.
    fn key_value(&self, key: &Bytes, entry: &Entry, with_value: bool) -> KeyValue {
        KeyValue {
            key: key.clone(),
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
            version: entry.version,
            value: if with_value {
                self.value_of(key, entry)
            } else {
                Bytes::new()
            },
            lease: entry.lease,
        }
    }

    fn head(&self, key: &[u8], entry: &Entry) -> Head {
        Head {
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
            version: entry.version,
            lease: entry.lease,
            value: self.value_of(key, entry),
        }
    }

    pub fn restore_lease(&mut self, id: i64, ttl: i64, remaining_ttl: i64) {
        self.leases.insert(
            id,
            LeaseEntry {
                ttl,
                remaining_ttl,
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn leases(&self) -> &BTreeMap<i64, LeaseEntry> {
        &self.leases
    }

    pub fn lease(&self, id: i64) -> Option<&LeaseEntry> {
        self.leases.get(&id)
    }

    pub fn lease_exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// etcd's LeaseGrant: the ID was chosen by the proposer if the client gave none; a
    /// TTL below the minimum is raised to it.
    pub fn apply_lease_grant(&mut self, request: &LeaseGrantRequest, min_ttl: i64) -> Outcome {
        if request.ttl > crate::limits::LEASE_TTL_MAX_SECONDS {
            return Outcome::error(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&request.id) {
            return Outcome::error(EtcdError::LeaseExist);
        }
        let ttl = request.ttl.max(min_ttl);
        crate::metrics::LEASE_GRANTED.inc();
        crate::metrics::LEASE_TTL.observe_value(ttl as f64);
        self.leases.insert(
            request.id,
            LeaseEntry {
                ttl,
                remaining_ttl: 0,
                keys: BTreeSet::new(),
            },
        );
        Outcome {
            result: Some(Ok(Applied::LeaseGrant(LeaseGrantResponse {
                header: Some(header(self.revision)),
                id: request.id,
                ttl,
                error: String::new(),
            }))),
            ..Outcome::default()
        }
    }

    /// etcd's LeaseRevoke: the lease goes and every key attached to it is deleted, all in
    /// one revision.
    pub fn apply_lease_revoke(&mut self, request: &LeaseRevokeRequest) -> Outcome {
        let Some(lease) = self.leases.remove(&request.id) else {
            return Outcome::error(EtcdError::LeaseNotFound);
        };
        crate::metrics::LEASE_REVOKED.inc();
        let mut txn = WriteTxn::new(self);
        for key in &lease.keys {
            txn.delete(&DeleteRangeRequest {
                key: key.clone(),
                range_end: Bytes::new(),
                prev_kv: false,
            });
        }
        let revision = txn.finish();
        txn.outcome.result = Some(Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
            header: Some(header(revision)),
        })));
        txn.outcome
    }

    pub fn apply_lease_checkpoint(&mut self, request: &LeaseCheckpointRequest) -> Outcome {
        for checkpoint in &request.checkpoints {
            if let Some(lease) = self.leases.get_mut(&checkpoint.id) {
                lease.remaining_ttl = checkpoint.remaining_ttl;
            }
        }
        Outcome {
            result: Some(Ok(Applied::Internal)),
            ..Outcome::default()
        }
    }

    /// Moves `key` from the lease it had to `new` (0: none).
    fn attach(&mut self, key: &Bytes, old: i64, new: i64) {
        if old == new {
            return;
        }
        if old != 0 {
            if let Some(lease) = self.leases.get_mut(&old) {
                lease.keys.remove(key);
            }
        }
        if new != 0 {
            if let Some(lease) = self.leases.get_mut(&new) {
                lease.keys.insert(key.clone());
            }
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// A live key's head, its value read if it is in a page file.
    pub fn get(&self, key: &[u8]) -> Option<Head> {
        self.keys.get(key).map(|entry| self.head(key, entry))
    }

    /// Every live key's head, in key order (values read as [`Sequencer::get`] does).
    pub fn heads(&self) -> impl Iterator<Item = (&Bytes, Head)> {
        self.keys
            .iter()
            .map(|(key, entry)| (key, self.head(key, entry)))
    }

    pub fn apply_put(&mut self, request: &PutRequest) -> Outcome {
        if let Err(e) = crate::check::check_put_storable(request) {
            return Outcome::error(e);
        }
        if request.lease != 0 && !self.lease_exists(request.lease) {
            return Outcome::error(EtcdError::LeaseNotFound);
        }
        let mut txn = WriteTxn::new(self);
        match txn.put(request) {
            Ok(mut response) => {
                let revision = txn.finish();
                response.header = Some(header(revision));
                txn.outcome.result = Some(Ok(Applied::Put(response)));
                txn.outcome
            }
            Err(e) => Outcome::error(e),
        }
    }

    pub fn apply_delete(&mut self, request: &DeleteRangeRequest) -> Outcome {
        let mut txn = WriteTxn::new(self);
        let mut response = txn.delete(request);
        let revision = txn.finish();
        response.header = Some(header(revision));
        txn.outcome.result = Some(Ok(Applied::DeleteRange(response)));
        txn.outcome
    }

    /// A txn, read-only or not; read-only ones change nothing and can be evaluated without
    /// going through the log.
    pub fn apply_txn(&mut self, request: &TxnRequest) -> Outcome {
        // Compares, and the branch of every nested txn, are decided against the view
        // before any op runs (etcd's compareToPath), all on one view.
        let mut path = Vec::new();
        self.compare_to_path(request, &mut path);
        let is_write = !crate::check::txn_is_read_only(request);
        if is_write {
            if let Err(e) = self.check_puts(request, &path, &mut 0) {
                return Outcome::error(e);
            }
        }
        if let Err(e) = self.check_ranges(request, &path, &mut 0) {
            return Outcome::error(e);
        }
        let mut txn = WriteTxn::new(self);
        let mut position = 0;
        match txn.txn(request, &path, &mut position, &mut Vec::new()) {
            Ok(mut response) => {
                if txn.ops > 1 {
                    crate::metrics::MVCC_TXN.inc();
                }
                let revision = txn.finish();
                response.header = Some(header(revision));
                txn.outcome.result = Some(Ok(Applied::Txn(response)));
                txn.outcome
            }
            Err(e) => {
                // An op failed half-way (see `WriteTxn::txn`): the request changes
                // nothing, on every replica alike.
                txn.roll_back();
                Outcome::error(e)
            }
        }
    }

    pub fn apply_compaction(&mut self, request: &CompactionRequest) -> Outcome {
        if request.revision <= self.compact_revision {
            return Outcome::error(EtcdError::Compacted);
        }
        if request.revision > self.revision {
            return Outcome::error(EtcdError::FutureRevision);
        }
        self.compact_revision = request.revision;
        Outcome {
            result: Some(Ok(Applied::Compaction(CompactionResponse {
                header: Some(header(self.revision)),
            }))),
            compaction: Some(request.revision),
            ..Outcome::default()
        }
    }

    fn compare_to_path(&self, request: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = request.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                self.compare_to_path(nested, path);
            }
        }
    }

    /// etcd's applyCompare: every key in the range must satisfy the compare; an empty
    /// range compares a zero key-value, except for VALUE compares which then fail.
    fn compare(&self, c: &Compare) -> bool {
        let end = RangeEnd::from_request(&c.range_end);
        let mut any = false;
        let with_value = c.target == compare::CompareTarget::Value as i32;
        for (key, entry) in range_iter(&self.keys, &c.key, &end) {
            any = true;
            if !compare_kv(c, &self.key_value(key, entry, with_value)) {
                return false;
            }
        }
        if any {
            return true;
        }
        if c.target == compare::CompareTarget::Value as i32 {
            return false;
        }
        compare_kv(c, &KeyValue::default())
    }

    fn check_puts(
        &self,
        request: &TxnRequest,
        path: &[bool],
        position: &mut usize,
    ) -> Result<(), EtcdError> {
        let ops = branch(request, path, *position)?;
        *position += 1;
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(put)) => {
                    crate::check::check_put_storable(put)?;
                    if (put.ignore_value || put.ignore_lease) && !self.keys.contains_key(&put.key) {
                        return Err(EtcdError::KeyNotFound);
                    }
                    if put.lease != 0 && !self.lease_exists(put.lease) {
                        return Err(EtcdError::LeaseNotFound);
                    }
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_puts(nested, path, position)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_ranges(
        &self,
        request: &TxnRequest,
        path: &[bool],
        position: &mut usize,
    ) -> Result<(), EtcdError> {
        let ops = branch(request, path, *position)?;
        *position += 1;
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(range)) => {
                    if range.revision == 0 {
                        continue;
                    }
                    if range.revision > self.revision {
                        return Err(EtcdError::FutureRevision);
                    }
                    if range.revision < self.compact_revision {
                        return Err(EtcdError::Compacted);
                    }
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_ranges(nested, path, position)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The ops of the branch `path[position]` chose (see `compare_to_path`). The path is built
/// by the same walk that reads it, so a missing entry is a bug; it is answered as an
/// error rather than a panic of the raft core.
fn branch<'r>(
    request: &'r TxnRequest,
    path: &[bool],
    position: usize,
) -> Result<&'r [RequestOp], EtcdError> {
    match path.get(position) {
        Some(true) => Ok(&request.success),
        Some(false) => Ok(&request.failure),
        None => Err(EtcdError::Internal(format!(
            "txn branch {position} not decided (path of {})",
            path.len()
        ))),
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ordering = if c.target == CompareTarget::Value as i32 {
        let empty = Bytes::new();
        let value = match &c.target_union {
            Some(TargetUnion::Value(v)) => v,
            _ => &empty,
        };
        kv.value.as_ref().cmp(value.as_ref())
    } else {
        let (have, want) = if c.target == CompareTarget::Create as i32 {
            let want = match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => v,
                _ => 0,
            };
            (kv.create_revision, want)
        } else if c.target == CompareTarget::Mod as i32 {
            let want = match c.target_union {
                Some(TargetUnion::ModRevision(v)) => v,
                _ => 0,
            };
            (kv.mod_revision, want)
        } else if c.target == CompareTarget::Version as i32 {
            let want = match c.target_union {
                Some(TargetUnion::Version(v)) => v,
                _ => 0,
            };
            (kv.version, want)
        } else if c.target == CompareTarget::Lease as i32 {
            let want = match c.target_union {
                Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            (kv.lease, want)
        } else {
            (0, 0)
        };
        have.cmp(&want)
    };
    match c.result {
        r if r == CompareResult::Equal as i32 => ordering.is_eq(),
        r if r == CompareResult::NotEqual as i32 => ordering.is_ne(),
        r if r == CompareResult::Greater as i32 => ordering.is_gt(),
        r if r == CompareResult::Less as i32 => ordering.is_lt(),
        _ => true,
    }
}

impl Outcome {
    /// A request that failed as a whole and changed nothing.
    pub fn failed(error: EtcdError) -> Outcome {
        Outcome::error(error)
    }

    /// A request that changed no key and answers `applied`.
    pub fn applied(applied: Applied) -> Outcome {
        Outcome {
            result: Some(Ok(applied)),
            ..Outcome::default()
        }
    }

    fn error(error: EtcdError) -> Outcome {
        Outcome {
            result: Some(Err(error)),
            ..Outcome::default()
        }
    }
}

/// One write request in progress: mutates the sequencer's heads in place (the requests
/// were checked, so nothing fails half-way) and records the mutations for the shards.
struct WriteTxn<'s> {
    sequencer: &'s mut Sequencer,
    begin_revision: i64,
    outcome: Outcome,
    /// Ranges, puts and deletes run (etcd counts a txn of more than one in
    /// `etcd_mvcc_txn_total`).
    ops: u32,
    /// Each key change as (key, head before it), in order, so that a request that fails
    /// half-way can be undone (`roll_back`).
    undo: Vec<(Bytes, Option<Entry>)>,
}

impl<'s> WriteTxn<'s> {
    fn new(sequencer: &'s mut Sequencer) -> WriteTxn<'s> {
        let begin_revision = sequencer.revision;
        WriteTxn {
            sequencer,
            begin_revision,
            outcome: Outcome::default(),
            ops: 0,
            undo: Vec::new(),
        }
    }

    /// Undoes every change this request made to the heads and the lease attachments
    /// (newest first) and drops its mutations: the store is as before the request, and
    /// its revision was never advanced (`finish` was not called).
    fn roll_back(&mut self) {
        while let Some((key, before)) = self.undo.pop() {
            let now_lease = self.sequencer.keys.get(&key).map_or(0, |h| h.lease);
            let before_lease = before.as_ref().map_or(0, |h| h.lease);
            self.sequencer.attach(&key, now_lease, before_lease);
            match before {
                Some(entry) => {
                    self.sequencer.insert(key, entry);
                }
                None => {
                    self.sequencer.remove(&key);
                }
            }
        }
        self.sequencer.release_unused_segments();
        self.outcome = Outcome::default();
    }

    fn changed(&self) -> bool {
        !self.outcome.mutations.is_empty()
    }

    /// The revision reads inside this request see: one ahead once something changed.
    fn read_revision(&self) -> i64 {
        if self.changed() {
            self.begin_revision + 1
        } else {
            self.begin_revision
        }
    }

    fn write_revision(&self) -> i64 {
        self.begin_revision + 1
    }

    /// Ends the request; returns the store revision after it.
    fn finish(&mut self) -> i64 {
        if self.changed() {
            self.sequencer.revision = self.begin_revision + 1;
            self.coalesce();
        }
        self.sequencer.release_unused_segments();
        self.sequencer.revision
    }

    /// Leaves at most one mutation per key: the state the key ends the request in.
    ///
    /// One request can change a key more than once: etcd's duplicate-key check takes a
    /// from-key delete (`range_end` "\0") inside a txn as an empty interval, so
    /// `txn [put b, delete "a".."\0"]` passes and deletes the `b` it just put. etcd gives
    /// each change a sub-revision of the same main revision; reads see only main revisions,
    /// so what a read at this revision sees is the last change of each key, and a key
    /// created and deleted within the request was never visible at all. The shards index
    /// one version per key and revision, so they get exactly that.
    fn coalesce(&mut self) {
        let mutations = &mut self.outcome.mutations;
        if mutations.len() < 2 {
            return;
        }
        let mut seen = std::collections::HashSet::with_capacity(mutations.len());
        if mutations.iter().all(|m| seen.insert(m.key().clone())) {
            return;
        }
        let revision = self.begin_revision + 1;
        // For each key: did it exist before this request (its first change did not create
        // it), and where is its last change. Kept changes stay in the request's op order,
        // which watch events within a revision follow.
        let mut first_creates: std::collections::HashMap<Bytes, bool> =
            std::collections::HashMap::new();
        let mut last_at: std::collections::HashMap<Bytes, usize> = std::collections::HashMap::new();
        for (i, mutation) in mutations.iter().enumerate() {
            first_creates.entry(mutation.key().clone()).or_insert_with(|| {
                matches!(mutation, Mutation::Put { head, .. } if head.create_revision == revision)
            });
            last_at.insert(mutation.key().clone(), i);
        }
        let kept: Vec<Mutation> = std::mem::take(mutations)
            .into_iter()
            .enumerate()
            .filter(|(i, m)| last_at.get(m.key()) == Some(i))
            .map(|(_, m)| m)
            .filter(|m| {
                let created_here = first_creates.get(m.key()).copied().unwrap_or(false);
                !(matches!(m, Mutation::Delete { .. }) && created_here)
            })
            .collect();
        *mutations = kept;
    }

    fn put(&mut self, request: &PutRequest) -> Result<PutResponse, EtcdError> {
        let previous = self.sequencer.keys.get(&request.key).cloned();
        if (request.ignore_value || request.ignore_lease) && previous.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        self.ops += 1;
        let revision = self.write_revision();
        // An ignore_value put keeps where the value is (a restored one stays in its page
        // record, which is immutable); the shard gets the bytes.
        let (value, stored) = match (&previous, request.ignore_value) {
            (Some(p), true) => (self.sequencer.value_of(&request.key, p), p.value.clone()),
            _ => (request.value.clone(), Value::Held(request.value.clone())),
        };
        let lease = match (&previous, request.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => request.lease,
        };
        let head = Head {
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        crate::metrics::MVCC_PUT.inc();
        crate::metrics::MVCC_PUT_SIZE.add((request.key.len() + head.value.len()) as u64);
        let old_lease = previous.as_ref().map_or(0, |p| p.lease);
        let prev_kv = match &previous {
            Some(p) if request.prev_kv => Some(self.sequencer.key_value(&request.key, p, true)),
            _ => None,
        };
        self.undo.push((request.key.clone(), previous));
        self.sequencer.attach(&request.key, old_lease, lease);
        self.sequencer.insert(
            request.key.clone(),
            Entry {
                create_revision: head.create_revision,
                mod_revision: head.mod_revision,
                version: head.version,
                lease: head.lease,
                value: stored,
            },
        );
        self.outcome.mutations.push(Mutation::Put {
            key: request.key.clone(),
            head,
        });
        Ok(PutResponse {
            header: Some(header(revision)),
            prev_kv,
        })
    }

    fn delete(&mut self, request: &DeleteRangeRequest) -> DeleteRangeResponse {
        self.ops += 1;
        crate::metrics::MVCC_DELETE.inc();
        let end = RangeEnd::from_request(&request.range_end);
        let doomed: Vec<(Bytes, Entry)> = range_iter(&self.sequencer.keys, &request.key, &end)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let revision = self.write_revision();
        let mut prev_kvs = Vec::new();
        for (key, entry) in &doomed {
            if request.prev_kv {
                prev_kvs.push(self.sequencer.key_value(key, entry, true));
            }
            self.undo.push((key.clone(), Some(entry.clone())));
            self.sequencer.remove(key);
            self.sequencer.attach(key, entry.lease, 0);
            self.outcome.mutations.push(Mutation::Delete {
                key: key.clone(),
                revision,
            });
        }
        let header_revision = if !doomed.is_empty() || self.changed() {
            revision
        } else {
            self.begin_revision
        };
        DeleteRangeResponse {
            header: Some(header(header_revision)),
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn range(&self, request: &RangeRequest) -> RangeResponse {
        let current = self.read_revision();
        let end = RangeEnd::from_request(&request.range_end);
        let mut count = 0i64;
        let mut kvs = Vec::new();
        let limit = fetch_limit(request);
        let with_values = needs_values(request);
        for (key, entry) in range_iter(&self.sequencer.keys, &request.key, &end) {
            count += 1;
            if request.count_only || (limit != 0 && kvs.len() >= limit) {
                continue;
            }
            kvs.push(self.sequencer.key_value(key, entry, with_values));
        }
        finish_range(request, kvs, count, current)
    }

    fn txn(
        &mut self,
        request: &TxnRequest,
        path: &[bool],
        position: &mut usize,
        response_path: &mut Vec<usize>,
    ) -> Result<TxnResponse, EtcdError> {
        let ops = branch(request, path, *position)?;
        let succeeded = path.get(*position).copied().unwrap_or(false);
        *position += 1;
        let mut responses = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(range)) => {
                    self.ops += 1;
                    crate::metrics::MVCC_RANGE.inc();
                    let current = self.read_revision();
                    if range.revision != 0 && range.revision != current {
                        // Resolved now so that errors match etcd; read later by the shards.
                        let _ = resolve_revision(
                            range.revision,
                            current,
                            self.sequencer.compact_revision,
                        );
                        let mut at = response_path.clone();
                        at.push(i);
                        self.outcome.historical_ranges.push(HistoricalRange {
                            path: at,
                            request: range.clone(),
                            header_revision: current,
                        });
                        Some(response_op::Response::ResponseRange(
                            RangeResponse::default(),
                        ))
                    } else {
                        Some(response_op::Response::ResponseRange(self.range(range)))
                    }
                }
                Some(request_op::Request::RequestPut(put)) => {
                    // Checked against the view before the txn started, but an earlier op
                    // of this txn may have deleted the key since: etcd's interval check
                    // takes a from-key delete ("\0") as an empty interval, so
                    // `[delete "a".."\0", put b ignore_value]` passes it. etcd 3.4 panics
                    // there; the whole request fails with the error a put with
                    // ignore_value gets for a missing key, and changes nothing.
                    Some(response_op::Response::ResponsePut(self.put(put)?))
                }
                Some(request_op::Request::RequestDeleteRange(delete)) => Some(
                    response_op::Response::ResponseDeleteRange(self.delete(delete)),
                ),
                Some(request_op::Request::RequestTxn(nested)) => {
                    response_path.push(i);
                    let nested_response = self.txn(nested, path, position, response_path);
                    response_path.pop();
                    let mut nested_response = nested_response?;
                    // etcd gives nested txn responses an empty header.
                    nested_response.header = Some(ResponseHeader::default());
                    Some(response_op::Response::ResponseTxn(nested_response))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use rivet_api::etcdserverpb::RequestOp;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(s: &mut Sequencer, key: &str, value: &str) -> Outcome {
        s.apply_put(&PutRequest {
            key: b(key),
            value: b(value),
            prev_kv: true,
            ..Default::default()
        })
    }

    #[test]
    fn revisions_follow_etcd() {
        let mut s = Sequencer::new();
        assert_eq!(s.revision(), 1);
        put(&mut s, "a", "1");
        assert_eq!(s.revision(), 2);
        let out = put(&mut s, "a", "2");
        let Some(Ok(Applied::Put(r))) = out.result else {
            panic!()
        };
        assert_eq!(r.prev_kv.unwrap().value, b("1"));
        assert_eq!(s.get(b"a").unwrap().version, 2);
        assert_eq!(s.get(b"a").unwrap().create_revision, 2);
        let out = s.apply_delete(&DeleteRangeRequest {
            key: b("zzz"),
            ..Default::default()
        });
        assert!(out.mutations.is_empty());
        assert_eq!(s.revision(), 3);
        let Some(Ok(Applied::DeleteRange(d))) = out.result else {
            panic!()
        };
        assert_eq!(d.header.unwrap().revision, 3);
        assert_eq!(d.deleted, 0);
    }

    #[test]
    fn txn_branches_and_nested_reads() {
        let mut s = Sequencer::new();
        put(&mut s, "a", "1");
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: b("a"),
                target_union: Some(TargetUnion::Value(b("1"))),
                range_end: Bytes::new(),
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b("b"),
                        value: b("x"),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: b("a"),
                        range_end: b("c"),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        };
        let out = s.apply_txn(&txn);
        let Some(Ok(Applied::Txn(r))) = out.result else {
            panic!()
        };
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 3);
        let Some(response_op::Response::ResponseRange(range)) = &r.responses[1].response else {
            panic!()
        };
        assert_eq!(range.count, 2);
        assert_eq!(range.header.as_ref().unwrap().revision, 3);
    }

    #[test]
    fn compaction_errors() {
        let mut s = Sequencer::new();
        put(&mut s, "a", "1");
        let c = |r| CompactionRequest {
            revision: r,
            physical: false,
        };
        assert!(matches!(
            s.apply_compaction(&c(5)).result,
            Some(Err(EtcdError::FutureRevision))
        ));
        assert!(matches!(s.apply_compaction(&c(2)).result, Some(Ok(_))));
        assert!(matches!(
            s.apply_compaction(&c(2)).result,
            Some(Err(EtcdError::Compacted))
        ));
    }

    fn op(request: request_op::Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    fn put_op(key: &str, value: &str) -> RequestOp {
        op(request_op::Request::RequestPut(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        }))
    }

    fn delete_from_op(key: &str) -> RequestOp {
        op(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: b(key),
                range_end: b("\0"),
                prev_kv: true,
            },
        ))
    }

    /// etcd lets a txn change a key twice (a from-key delete passes its duplicate-key
    /// check); the shards get one mutation per key: its state at the end of the request.
    #[test]
    fn a_key_changed_twice_in_a_txn_gives_one_mutation() {
        let mut s = Sequencer::new();
        put(&mut s, "a", "1"); // revision 2
        put(&mut s, "c", "1"); // revision 3
        let txn = TxnRequest {
            compare: vec![],
            // b: created and deleted; a and c: deleted; a: put again.
            success: vec![put_op("b", "x"), delete_from_op("a"), put_op("a", "2")],
            failure: vec![],
        };
        let out = s.apply_txn(&txn);
        let Some(Ok(Applied::Txn(r))) = &out.result else {
            panic!("{:?}", out.result)
        };
        assert_eq!(r.header.as_ref().unwrap().revision, 4);
        let Some(response_op::Response::ResponseDeleteRange(d)) = &r.responses[1].response else {
            panic!()
        };
        assert_eq!(d.deleted, 3);
        assert_eq!(d.prev_kvs[1].key, b("b"));
        assert_eq!(d.prev_kvs[1].mod_revision, 4);
        let a = Head {
            create_revision: 4,
            mod_revision: 4,
            version: 1,
            lease: 0,
            value: b("2"),
        };
        assert_eq!(
            out.mutations,
            // Each key's last change, in the order the ops made them: delete c (by the
            // from-key delete), then put a.
            vec![
                Mutation::Delete {
                    key: b("c"),
                    revision: 4
                },
                Mutation::Put {
                    key: b("a"),
                    head: a.clone()
                },
            ]
        );
        assert_eq!(s.get(b"a"), Some(a));
        assert_eq!(s.get(b"b"), None);
        // A request whose only change vanished still took a revision, as in etcd.
        let txn = TxnRequest {
            compare: vec![],
            success: vec![put_op("d", "x"), delete_from_op("d")],
            failure: vec![],
        };
        let out = s.apply_txn(&txn);
        assert!(out.mutations.is_empty());
        assert_eq!(s.revision(), 5);
    }

    /// The request of issue 10: it passes etcd's checks (a from-key delete is an empty
    /// interval), then its delete removes the key the ignore_value put needs. etcd 3.4
    /// panics; rivet answers "key not found" and changes nothing, leases included.
    #[test]
    fn a_put_whose_key_an_earlier_op_deleted_fails_the_whole_txn() {
        let mut s = Sequencer::new();
        s.apply_lease_grant(
            &rivet_api::etcdserverpb::LeaseGrantRequest { ttl: 60, id: 7 },
            1,
        );
        s.apply_put(&PutRequest {
            key: b("b"),
            value: b("v"),
            lease: 7,
            ..Default::default()
        });
        put(&mut s, "c", "w");
        let before: Vec<(Bytes, Head)> = s.heads().map(|(k, h)| (k.clone(), h.clone())).collect();
        let leases_before = s.leases().clone();
        let revision = s.revision();
        for ignore_lease in [false, true] {
            let txn = TxnRequest {
                compare: vec![],
                success: vec![
                    delete_from_op("a"),
                    op(request_op::Request::RequestPut(PutRequest {
                        key: b("b"),
                        ignore_value: !ignore_lease,
                        ignore_lease,
                        ..Default::default()
                    })),
                ],
                failure: vec![],
            };
            assert_eq!(crate::check::check_txn(&txn, 128), Ok(()));
            let out = s.apply_txn(&txn);
            assert_eq!(out.result, Some(Err(EtcdError::KeyNotFound)));
            assert!(out.mutations.is_empty());
            assert_eq!(s.revision(), revision);
            let after: Vec<(Bytes, Head)> =
                s.heads().map(|(k, h)| (k.clone(), h.clone())).collect();
            assert_eq!(after, before);
            assert_eq!(s.leases(), &leases_before);
        }
        // The same failure one level down, in a nested txn after other changes.
        let nested = TxnRequest {
            compare: vec![],
            success: vec![op(request_op::Request::RequestPut(PutRequest {
                key: b("c"),
                ignore_value: true,
                ..Default::default()
            }))],
            failure: vec![],
        };
        let txn = TxnRequest {
            compare: vec![],
            success: vec![
                put_op("0", "x"),
                delete_from_op("a"),
                op(request_op::Request::RequestTxn(nested)),
            ],
            failure: vec![],
        };
        assert_eq!(crate::check::check_txn(&txn, 128), Ok(()));
        let out = s.apply_txn(&txn);
        assert_eq!(out.result, Some(Err(EtcdError::KeyNotFound)));
        assert_eq!(s.revision(), revision);
        assert_eq!(s.get(b"0"), None);
        let after: Vec<(Bytes, Head)> = s.heads().map(|(k, h)| (k.clone(), h.clone())).collect();
        assert_eq!(after, before);
        assert_eq!(s.leases(), &leases_before);
    }

    #[test]
    fn ignore_value_needs_the_key() {
        let mut s = Sequencer::new();
        let out = s.apply_put(&PutRequest {
            key: b("a"),
            ignore_value: true,
            ..Default::default()
        });
        assert_eq!(out.result, Some(Err(EtcdError::KeyNotFound)));
        assert_eq!(s.revision(), 1);
    }
}
