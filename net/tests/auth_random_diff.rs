//! Differential random test of auth against a real etcd 3.4: the same root user, four
//! users and four roles with grants on single keys, prefixes, from-key and other ranges
//! are set up on an etcd and a rivet started by the test, auth is enabled, and then a
//! seeded random sequence of operations runs on both, each as a random user with its own
//! token: Range, Put, DeleteRange, Txn (compares and nested ops on permitted and
//! forbidden keys, puts attaching keys to leases), LeaseGrant, LeaseRevoke,
//! LeaseTimeToLive, LeaseLeases, watch creates on permitted and forbidden ranges, and
//! between them admin steps as root (grant and revoke permissions, grant and revoke roles,
//! change passwords, delete and re-add users, read users and roles back). Every answer is
//! compared field by field: headers (only member_id and cluster_id ignored), kvs,
//! prev_kvs, counts, and errors by gRPC code and message.
//!
//! Tokens behave as a client's would: a user whose answer says `revision of auth store is
//! old`, `invalid auth token` (its password changed, it was deleted) or `user name is
//! empty` (it could not authenticate before) authenticates again (on both, answers
//! compared) and retries once, so stale, missing and fresh tokens are all exercised.
//!
//! **What is compared differently, and why.** rivet checks what later etcd 3.4 releases
//! check and 3.4.23 (the etcd the tests run) lets through: a nested txn's compares and
//! ops, a txn put's `prev_kv` (read) and lease (write on the lease's keys), LeaseGrant /
//! LeaseRevoke / LeaseTimeToLive needing credentials, LeaseTimeToLive with keys and
//! LeaseLeases needing read on the keys, a permission's range must not be empty (else
//! `invalid auth management`); and a from-key watch is checked on its whole
//! range (every 3.4 checks only its first key). For those, etcd 3.4.23 itself is the
//! oracle: before the operation, each check the later rules add is asked of etcd with a
//! request 3.4.23 does check the same way (a serializable count-only Range for read, a
//! txn whose untaken branch holds the put or delete for write, the user's own UserGet for
//! credentials). If one is refused, the operation goes to rivet only, which must refuse it
//! with that error (a watch: cancelled with it as the reason) and change nothing — the next
//! answers' revisions would show it; otherwise both must answer the same. TTLs of
//! LeaseTimeToLive are compared as "positive" (the second may tick between the two asks)
//! and LeaseLeases as a set (etcd lists by expiry, rivet by ID).
//!
//! Auth revisions never appear in answers; they show as `revision of auth store is old`
//! for a token made before an admin step, which both must answer at the same steps.
//!
//! `RIVET_AUTH_FUZZ_SEED` picks the sequence (default [`DEFAULT_SEED`]),
//! `RIVET_AUTH_FUZZ_STEPS` its length (default [`DEFAULT_STEPS`]). A mismatch prints the
//! seed, the step, the last calls, the request and both answers.
//!
//! Without `etcd` on PATH the test fails (CI installs it); it never skips.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Debug};
use std::time::Instant;

use bytes::Bytes;
use common::kv_diff::{execute_as, report, with_token, Answer, Gen, Op, ANSWER_TIMEOUT, KEYS};
use common::kv_diff::{MAX_TXN_OPS, OTHER_KEYS};
use common::rng::env_number;
use common::{bytes, prefix_end_bytes as prefix_end, require_etcd_34, runtime, Etcd, Rivet};
use rivet_api::authpb::{permission, Permission};
use rivet_api::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient, watch_request::RequestUnion, AuthEnableRequest, AuthRoleAddRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, AuthenticateRequest, DeleteRangeRequest,
    LeaseGrantRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, TxnRequest, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 0xa0_7d1f_f5ee_d013;
const DEFAULT_STEPS: usize = 1200;
/// bcrypt's smallest cost on both servers: Authenticate runs often here.
const BCRYPT_COST: &str = "4";

/// The users besides root (index 0 of [`Run::accounts`] is root).
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const ROLES: [&str; 4] = ["single", "prefix", "fromkey", "mixed"];

const OLD_REVISION: &str = "etcdserver: revision of auth store is old";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
const USER_EMPTY: &str = "etcdserver: user name is empty";

/// An answer as comparable text: the response's fields (IDs cleared), or the error's gRPC
/// code and message.
#[derive(Clone, PartialEq)]
enum Outcome {
    Ok(String),
    Err(tonic::Code, String),
}

impl Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(text) => f.write_str(text),
            Outcome::Err(code, message) => write!(f, "error {code:?}: {message}"),
        }
    }
}

impl Outcome {
    fn of<T: Debug>(
        result: Result<tonic::Response<T>, tonic::Status>,
        normalize: impl FnOnce(&mut T),
    ) -> Outcome {
        match result {
            Ok(response) => {
                let mut response = response.into_inner();
                normalize(&mut response);
                Outcome::Ok(format!("{response:#?}"))
            }
            Err(status) => Outcome::Err(status.code(), status.message().to_string()),
        }
    }

    fn of_answer(answer: &Answer) -> Outcome {
        match answer {
            Answer::Error { code, message } => Outcome::Err(*code, message.clone()),
            other => Outcome::Ok(format!("{other:#?}")),
        }
    }

    /// Whether the answer says the caller's token is stale, gone or missing (also as a
    /// watch's cancel reason): a client authenticates (again).
    fn token_refused(&self) -> bool {
        let text = match self {
            Outcome::Ok(text) | Outcome::Err(_, text) => text,
        };
        text.contains(OLD_REVISION) || text.contains(INVALID_TOKEN) || text.contains(USER_EMPTY)
    }

    fn label(&self) -> String {
        match self {
            Outcome::Ok(_) => "ok".to_string(),
            Outcome::Err(_, message) => message.clone(),
        }
    }
}

fn clear(header: &mut Option<ResponseHeader>) {
    common::clear_ids(header);
}

/// A unary call with the test's hang limit.
async fn timed<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    match tokio::time::timeout(ANSWER_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "the test got no answer within {ANSWER_TIMEOUT:?}"
        ))),
    }
}

/// One server's clients.
struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    auth: AuthClient<Channel>,
}

impl Side {
    async fn connect(url: &str) -> Side {
        let channel = common::grpc_channel(url).await;
        Side {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            auth: AuthClient::new(channel),
        }
    }

    /// Opens a watch stream as `token`, sends one create and returns the first answer
    /// (the stream is dropped after it).
    async fn watch_create(&mut self, create: WatchCreateRequest, token: Option<&str>) -> Outcome {
        let (requests, stream) = futures::channel::mpsc::unbounded();
        let request = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        requests
            .unbounded_send(request)
            .expect("queue a watch create");
        let first = async {
            let mut responses = self
                .watch
                .watch(with_token(stream, token))
                .await?
                .into_inner();
            match responses.message().await? {
                Some(response) => Ok(tonic::Response::new(response)),
                None => Err(tonic::Status::unknown("the watch stream ended")),
            }
        };
        let outcome = Outcome::of(timed(first).await, |r: &mut WatchResponse| {
            clear(&mut r.header)
        });
        drop(requests);
        outcome
    }
}

/// A user of the test and its token on each server ([etcd, rivet]).
struct Account {
    name: &'static str,
    password: String,
    tokens: [Option<String>; 2],
}

/// A check that later etcd 3.4 makes and 3.4.23 does not (see the module docs).
#[derive(Clone, Debug)]
enum Check {
    Credentials,
    Read(Bytes, Bytes),
    Write(Bytes, Bytes),
}

/// What a non-KV step asks.
#[derive(Clone, Debug)]
enum Call {
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases,
    Watch(WatchCreateRequest),
}

/// An admin step as root.
#[derive(Clone, Debug)]
enum Admin {
    Grant(String, Permission),
    Revoke(AuthRoleRevokePermissionRequest),
    GrantRole(AuthUserGrantRoleRequest),
    RevokeRole(AuthUserRevokeRoleRequest),
    ChangePassword(usize, String),
    DeleteUser(usize),
    AddUser(usize, String),
    GetUser(String),
    GetRole(String),
    /// Only in the set-up.
    AddRole(String),
    Enable,
}

/// A step's request, for the report.
enum Request<'a> {
    Kv(&'a Op),
    Call(&'a Call),
    Admin(&'a Admin),
    Authenticate(&'static str),
}

impl Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Kv(op) => write!(f, "{op:#?}"),
            Request::Call(call) => write!(f, "{call:#?}"),
            Request::Admin(admin) => write!(f, "{admin:#?}"),
            Request::Authenticate(name) => write!(f, "Authenticate {name}"),
        }
    }
}

struct Run<'a> {
    /// [etcd, rivet].
    sides: [Side; 2],
    accounts: Vec<Account>,
    gen: Gen,
    next_lease: i64,
    /// Users deleted by an admin step and not added again.
    deleted: Vec<usize>,
    recent: VecDeque<String>,
    stats: BTreeMap<String, usize>,
    rivet_log: &'a dyn Fn() -> String,
    seed: u64,
    step: usize,
}

/// Runs `$body` (an expression awaiting a call on `$side` with `$token`) against etcd,
/// then against rivet, with the account's token on each.
macro_rules! on_both {
    ($run:expr, $account:expr, |$side:ident, $token:ident| $body:expr) => {{
        let tokens = $run.accounts[$account].tokens.clone();
        let etcd = {
            let $side = &mut $run.sides[0];
            let $token = tokens[0].as_deref();
            $body
        };
        let rivet = {
            let $side = &mut $run.sides[1];
            let $token = tokens[1].as_deref();
            $body
        };
        (etcd, rivet)
    }};
}

impl Run<'_> {
    fn context(&self) -> String {
        format!(
            "at step {} of seed {:#x} (reproduce: RIVET_AUTH_FUZZ_SEED={:#x} \
             RIVET_AUTH_FUZZ_STEPS={})",
            self.step,
            self.seed,
            self.seed,
            self.step + 1
        )
    }

    fn compare(&self, request: Request<'_>, etcd: &Outcome, rivet: &Outcome) {
        if etcd != rivet {
            report(
                &self.context(),
                &self.recent,
                &request,
                etcd,
                rivet,
                &(self.rivet_log)(),
            );
        }
    }

    /// rivet answered what later 3.4 must not (it should have refused with `expected`).
    fn fail_refusal(&self, request: Request<'_>, expected: &Outcome, rivet: &Outcome) -> ! {
        report(
            &format!(
                "{}: later etcd 3.4 refuses this (etcd 3.4.23 refused a check it adds)",
                self.context()
            ),
            &self.recent,
            &request,
            expected,
            rivet,
            &(self.rivet_log)(),
        );
        unreachable!("report panics")
    }

    fn remember(&mut self, account: usize, what: String, label: String) {
        let mut line = format!(
            "step {} as {}: {what} -> {label}",
            self.step, self.accounts[account].name
        );
        if line.len() > 700 {
            let mut cut = 700;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …");
        }
        self.recent.push_back(line);
        if self.recent.len() > 10 {
            self.recent.pop_front();
        }
    }

    fn count(&mut self, label: String) {
        *self.stats.entry(label).or_default() += 1;
    }

    /// Authenticates `account` on both (answers compared, tokens aside) and keeps the new
    /// tokens; a refused user has none.
    async fn authenticate(&mut self, account: usize) {
        let request = AuthenticateRequest {
            name: self.accounts[account].name.to_string(),
            password: self.accounts[account].password.clone(),
        };
        let mut tokens = [None, None];
        let mut outcomes = Vec::new();
        for (i, side) in self.sides.iter_mut().enumerate() {
            let result = timed(side.auth.authenticate(request.clone())).await;
            outcomes.push(Outcome::of(result, |r| {
                clear(&mut r.header);
                tokens[i] = Some(std::mem::take(&mut r.token));
            }));
        }
        let name = self.accounts[account].name;
        self.compare(Request::Authenticate(name), &outcomes[0], &outcomes[1]);
        self.remember(account, "authenticate".into(), outcomes[0].label());
        self.count(format!("authenticate: {}", outcomes[0].label()));
        self.accounts[account].tokens = tokens;
    }

    // ---- Oracle probes -----------------------------------------------------------------

    /// Asks etcd 3.4.23 each of `checks` as `account`; the first refusal is what later 3.4
    /// answers the operation.
    async fn probe(&mut self, account: usize, checks: &[Check]) -> Option<Outcome> {
        let token = self.accounts[account].tokens[0].clone();
        let token = token.as_deref();
        let etcd = &mut self.sides[0];
        for check in checks {
            let outcome = match check {
                Check::Credentials => {
                    let own = AuthUserGetRequest {
                        name: self.accounts[account].name.to_string(),
                    };
                    let result = timed(etcd.auth.user_get(with_token(own, token))).await;
                    match Outcome::of(result, |_| {}) {
                        // `requireAuthInfo` refuses a missing or unknown token only (a
                        // JWT of a deleted user still names it; UserGet says not found).
                        Outcome::Err(code, message)
                            if message == INVALID_TOKEN || message == USER_EMPTY =>
                        {
                            Outcome::Err(code, message)
                        }
                        _ => Outcome::Ok(String::new()),
                    }
                }
                Check::Read(key, end) if !key.is_empty() => {
                    let read = RangeRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        serializable: true,
                        count_only: true,
                        ..Default::default()
                    };
                    Outcome::of(timed(etcd.kv.range(with_token(read, token))).await, |_| {})
                }
                Check::Write(key, end) if !key.is_empty() => {
                    // The failure branch is checked but not taken (no compares: success).
                    let op = if end.is_empty() {
                        request_op::Request::RequestPut(PutRequest {
                            key: key.clone(),
                            ..Default::default()
                        })
                    } else {
                        request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                            key: key.clone(),
                            range_end: end.clone(),
                            prev_kv: false,
                        })
                    };
                    let txn = TxnRequest {
                        compare: Vec::new(),
                        success: Vec::new(),
                        failure: vec![RequestOp { request: Some(op) }],
                    };
                    Outcome::of(timed(etcd.kv.txn(with_token(txn, token))).await, |_| {})
                }
                // An empty key fails validation before any check, on both.
                Check::Read(..) | Check::Write(..) => continue,
            };
            if let Outcome::Err(..) = outcome {
                return Some(outcome);
            }
        }
        None
    }

    /// The keys attached to `lease`, as etcd knows them (3.4.23 answers anyone).
    async fn lease_keys(&mut self, lease: i64) -> Vec<Bytes> {
        let request = LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        };
        match timed(self.sides[0].lease.lease_time_to_live(request)).await {
            Ok(response) => response.into_inner().keys,
            Err(status) => panic!("etcd's LeaseTimeToLive of {lease:x}: {status}"),
        }
    }

    /// The checks later 3.4 makes on a txn beyond 3.4.23's: everything inside nested txns,
    /// and a put's `prev_kv` and lease.
    async fn txn_checks(&mut self, txn: &TxnRequest, nested: bool, checks: &mut Vec<Check>) {
        if nested {
            for c in &txn.compare {
                checks.push(Check::Read(c.key.clone(), c.range_end.clone()));
            }
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) if nested => {
                    checks.push(Check::Read(r.key.clone(), r.range_end.clone()));
                }
                Some(request_op::Request::RequestPut(p)) => {
                    if nested {
                        checks.push(Check::Write(p.key.clone(), Bytes::new()));
                    }
                    if p.prev_kv {
                        checks.push(Check::Read(p.key.clone(), Bytes::new()));
                    }
                    if p.lease != 0 {
                        for key in self.lease_keys(p.lease).await {
                            checks.push(Check::Write(key, Bytes::new()));
                        }
                    }
                }
                Some(request_op::Request::RequestDeleteRange(d)) if nested => {
                    checks.push(Check::Write(d.key.clone(), d.range_end.clone()));
                    if d.prev_kv {
                        checks.push(Check::Read(d.key.clone(), d.range_end.clone()));
                    }
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    Box::pin(self.txn_checks(t, true, checks)).await;
                }
                _ => {}
            }
        }
    }

    // ---- Steps -------------------------------------------------------------------------

    /// A KV operation as `account`; after a token refusal, authenticates and retries once.
    async fn kv_step(&mut self, account: usize, op: &Op) {
        for attempt in 0..2 {
            let refused = self.kv_once(account, op).await;
            if !refused || attempt == 1 {
                return;
            }
            self.authenticate(account).await;
        }
    }

    /// Returns whether the answer refused the token.
    async fn kv_once(&mut self, account: usize, op: &Op) -> bool {
        let mut checks = Vec::new();
        if let Op::Txn(txn) = op {
            self.txn_checks(txn, false, &mut checks).await;
        }
        let refusal = self.probe(account, &checks).await;
        let tokens = self.accounts[account].tokens.clone();
        let rivet = execute_as(&mut self.sides[1].kv, op, tokens[1].as_deref()).await;
        let rivet_outcome = Outcome::of_answer(&rivet);
        if let Some(expected) = &refusal {
            if &rivet_outcome == expected {
                // Refused by rivet as later 3.4 does; never sent to etcd 3.4.23, which
                // would run it.
                self.remember(
                    account,
                    format!("{op:?}"),
                    format!("{} (later 3.4)", expected.label()),
                );
                self.count(format!("kv: {} (a check later 3.4 adds)", expected.label()));
                return expected.token_refused();
            }
            if let Outcome::Ok(_) = rivet_outcome {
                self.fail_refusal(Request::Kv(op), expected, &rivet_outcome);
            }
            // Refused for another reason (validation comes first): etcd must agree.
        }
        let etcd = execute_as(&mut self.sides[0].kv, op, tokens[0].as_deref()).await;
        let etcd_outcome = Outcome::of_answer(&etcd);
        self.compare(Request::Kv(op), &etcd_outcome, &rivet_outcome);
        self.gen.observe(op, &etcd);
        let label = etcd.label(op);
        self.remember(account, format!("{op:?}"), label.clone());
        self.count(label);
        etcd_outcome.token_refused()
    }

    /// A lease or watch call as `account`; after a token refusal, authenticates and
    /// retries once.
    async fn call_step(&mut self, account: usize, call: &Call) {
        for attempt in 0..2 {
            let refused = self.call_once(account, call).await;
            if !refused || attempt == 1 {
                return;
            }
            self.authenticate(account).await;
        }
    }

    async fn call_checks(&mut self, account: usize, call: &Call) -> Vec<Check> {
        // Later 3.4 lets root through `IsAdminPermitted` before any key is checked (no
        // revision check there: a stale token of root still passes).
        let root = account == 0;
        match call {
            Call::LeaseGrant(_) | Call::LeaseRevoke(_) => vec![Check::Credentials],
            Call::LeaseTimeToLive(r) => {
                let mut checks = vec![Check::Credentials];
                if r.keys && !root {
                    for key in self.lease_keys(r.id).await {
                        checks.push(Check::Read(key, Bytes::new()));
                    }
                }
                checks
            }
            Call::LeaseLeases if root => vec![Check::Credentials],
            Call::LeaseLeases => {
                let mut checks = vec![Check::Credentials];
                let leases = timed(self.sides[0].lease.lease_leases(LeaseLeasesRequest {}))
                    .await
                    .expect("etcd's LeaseLeases")
                    .into_inner()
                    .leases;
                for lease in leases {
                    for key in self.lease_keys(lease.id).await {
                        checks.push(Check::Read(key, Bytes::new()));
                    }
                }
                checks
            }
            Call::Watch(w) if w.range_end.as_ref() == b"\0" => {
                let key = if w.key.is_empty() {
                    bytes(b"\0")
                } else {
                    w.key.clone()
                };
                vec![Check::Read(key, bytes(b"\0"))]
            }
            Call::Watch(_) => Vec::new(),
        }
    }

    async fn call_once(&mut self, account: usize, call: &Call) -> bool {
        let checks = self.call_checks(account, call).await;
        // Root passes every check (and its probes would say so).
        let refusal = self.probe(account, &checks).await;
        if let (Some(expected), Call::LeaseGrant(_) | Call::LeaseRevoke(_)) = (&refusal, call) {
            // etcd 3.4.23 might run it: rivet only, which must refuse.
            let tokens = self.accounts[account].tokens.clone();
            let side = &mut self.sides[1];
            let token = tokens[1].as_deref();
            let rivet = match call {
                Call::LeaseGrant(r) => Outcome::of(
                    timed(side.lease.lease_grant(with_token(*r, token))).await,
                    |r| clear(&mut r.header),
                ),
                Call::LeaseRevoke(r) => Outcome::of(
                    timed(side.lease.lease_revoke(with_token(*r, token))).await,
                    |r| clear(&mut r.header),
                ),
                _ => unreachable!("a grant or revoke"),
            };
            if &rivet != expected {
                self.fail_refusal(Request::Call(call), expected, &rivet);
            }
            let label = format!("{} (a check later 3.4 adds)", expected.label());
            self.remember(account, format!("{call:?}"), label.clone());
            self.count(format!("lease grant/revoke: {label}"));
            return expected.token_refused();
        }
        let (etcd, rivet) = match call {
            Call::LeaseGrant(r) => on_both!(self, account, |side, token| Outcome::of(
                timed(side.lease.lease_grant(with_token(*r, token))).await,
                |r| clear(&mut r.header)
            )),
            Call::LeaseRevoke(r) => on_both!(self, account, |side, token| Outcome::of(
                timed(side.lease.lease_revoke(with_token(*r, token))).await,
                |r| clear(&mut r.header)
            )),
            Call::LeaseTimeToLive(r) => on_both!(self, account, |side, token| Outcome::of(
                timed(side.lease.lease_time_to_live(with_token(*r, token))).await,
                |r| {
                    clear(&mut r.header);
                    // Remaining seconds may tick between the two asks.
                    if r.ttl > 0 {
                        r.ttl = 1;
                    }
                }
            )),
            Call::LeaseLeases => on_both!(self, account, |side, token| Outcome::of(
                timed(
                    side.lease
                        .lease_leases(with_token(LeaseLeasesRequest {}, token))
                )
                .await,
                |r| {
                    clear(&mut r.header);
                    r.leases.sort_by_key(|l| l.id);
                }
            )),
            Call::Watch(w) => {
                on_both!(self, account, |side, token| side
                    .watch_create(w.clone(), token)
                    .await)
            }
        };
        let label = match &refusal {
            Some(expected) => {
                let wanted = match call {
                    Call::Watch(_) => refused_watch(&etcd, expected),
                    _ => expected.clone(),
                };
                if rivet != wanted {
                    self.fail_refusal(Request::Call(call), &wanted, &rivet);
                }
                format!("{} (a check later 3.4 adds)", expected.label())
            }
            None => {
                self.compare(Request::Call(call), &etcd, &rivet);
                etcd.label()
            }
        };
        if let (Call::LeaseGrant(r), Outcome::Ok(_)) = (call, &etcd) {
            self.gen.leases.push(r.id);
        }
        if let (Call::LeaseRevoke(r), Outcome::Ok(_)) = (call, &rivet) {
            self.gen.leases.retain(|id| *id != r.id);
        }
        let kind = match call {
            Call::LeaseGrant(_) => "lease grant",
            Call::LeaseRevoke(_) => "lease revoke",
            Call::LeaseTimeToLive(_) => "lease ttl",
            Call::LeaseLeases => "lease leases",
            Call::Watch(_) => "watch",
        };
        let label = match (call, &rivet) {
            (Call::Watch(_), Outcome::Ok(text)) if text.contains("canceled: true") => {
                format!("{label}, cancelled")
            }
            _ => label,
        };
        self.remember(account, format!("{call:?}"), label.clone());
        self.count(format!("{kind}: {label}"));
        // A revoke deletes keys: the next revision.
        if let Some(revision) = header_revision(&etcd) {
            self.gen.revision = self.gen.revision.max(revision);
        }
        etcd.token_refused() || rivet.token_refused()
    }

    /// An admin step as root; after a token refusal, authenticates and retries once.
    async fn admin_step(&mut self, admin: &Admin) {
        for attempt in 0..2 {
            let refused = self.admin_once(admin).await;
            if !refused || attempt == 1 {
                return;
            }
            self.authenticate(0).await;
        }
    }

    async fn admin_once(&mut self, admin: &Admin) -> bool {
        if let Admin::Grant(role, perm) = admin {
            if !valid_permission_range(&perm.key, &perm.range_end) {
                // Later 3.4 refuses what 3.4.23 would grant: rivet only.
                let r = AuthRoleGrantPermissionRequest {
                    name: role.clone(),
                    perm: Some(perm.clone()),
                };
                let token = self.accounts[0].tokens[1].clone();
                let rivet = Outcome::of(
                    timed(
                        self.sides[1]
                            .auth
                            .role_grant_permission(with_token(r, token.as_deref())),
                    )
                    .await,
                    |r| clear(&mut r.header),
                );
                let expected = Outcome::Err(
                    tonic::Code::InvalidArgument,
                    "etcdserver: invalid auth management".into(),
                );
                // A stale root token is refused before the range is looked at.
                if rivet.token_refused() {
                    return true;
                }
                if rivet != expected {
                    self.fail_refusal(Request::Admin(admin), &expected, &rivet);
                }
                let label = format!("{} (a check later 3.4 adds)", expected.label());
                self.remember(0, format!("{admin:?}"), label.clone());
                self.count(format!("admin Grant: {label}"));
                return false;
            }
        }
        let (etcd, rivet) = match admin {
            Admin::Grant(role, perm) => {
                let r = AuthRoleGrantPermissionRequest {
                    name: role.clone(),
                    perm: Some(perm.clone()),
                };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(
                        side.auth
                            .role_grant_permission(with_token(r.clone(), token))
                    )
                    .await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::Revoke(r) => on_both!(self, 0, |side, token| Outcome::of(
                timed(
                    side.auth
                        .role_revoke_permission(with_token(r.clone(), token))
                )
                .await,
                |r| clear(&mut r.header)
            )),
            Admin::GrantRole(r) => on_both!(self, 0, |side, token| Outcome::of(
                timed(side.auth.user_grant_role(with_token(r.clone(), token))).await,
                |r| clear(&mut r.header)
            )),
            Admin::RevokeRole(r) => on_both!(self, 0, |side, token| Outcome::of(
                timed(side.auth.user_revoke_role(with_token(r.clone(), token))).await,
                |r| clear(&mut r.header)
            )),
            Admin::ChangePassword(user, password) => {
                let r = AuthUserChangePasswordRequest {
                    name: self.accounts[*user].name.to_string(),
                    password: password.clone(),
                };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(side.auth.user_change_password(with_token(r.clone(), token))).await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::DeleteUser(user) => {
                let r = AuthUserDeleteRequest {
                    name: self.accounts[*user].name.to_string(),
                };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(side.auth.user_delete(with_token(r.clone(), token))).await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::AddUser(user, password) => {
                let r = AuthUserAddRequest {
                    name: self.accounts[*user].name.to_string(),
                    password: password.clone(),
                    options: None,
                };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(side.auth.user_add(with_token(r.clone(), token))).await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::GetUser(name) => {
                let r = AuthUserGetRequest { name: name.clone() };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(side.auth.user_get(with_token(r.clone(), token))).await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::GetRole(role) => {
                let r = AuthRoleGetRequest { role: role.clone() };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(side.auth.role_get(with_token(r.clone(), token))).await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::AddRole(role) => {
                let r = AuthRoleAddRequest { name: role.clone() };
                on_both!(self, 0, |side, token| Outcome::of(
                    timed(side.auth.role_add(with_token(r.clone(), token))).await,
                    |r| clear(&mut r.header)
                ))
            }
            Admin::Enable => on_both!(self, 0, |side, token| Outcome::of(
                timed(
                    side.auth
                        .auth_enable(with_token(AuthEnableRequest {}, token))
                )
                .await,
                |r| clear(&mut r.header)
            )),
        };
        self.compare(Request::Admin(admin), &etcd, &rivet);
        if let Outcome::Ok(_) = etcd {
            match admin {
                Admin::DeleteUser(user) => self.deleted.push(*user),
                Admin::AddUser(user, _) => self.deleted.retain(|u| u != user),
                _ => {}
            }
            match admin {
                Admin::ChangePassword(user, password) | Admin::AddUser(user, password) => {
                    self.accounts[*user].password = password.clone();
                }
                _ => {}
            }
        }
        let label = etcd.label();
        self.remember(0, format!("{admin:?}"), label.clone());
        let kind = format!("{admin:?}");
        let kind = kind.split('(').next().unwrap_or_default().to_string();
        self.count(format!("admin {kind}: {label}"));
        etcd.token_refused()
    }

    // ---- The generator -----------------------------------------------------------------

    fn account(&mut self) -> usize {
        if self.gen.rng.percent(10) {
            0
        } else {
            1 + self.gen.rng.below(USERS.len())
        }
    }

    fn kv_op(&mut self) -> Op {
        let gen = &mut self.gen;
        gen.empty_key_permille = 10;
        match gen.rng.below(100) {
            0..=29 => Op::Put(gen.put()),
            30..=39 => Op::Delete(gen.delete()),
            40..=64 => Op::Range(gen.range()),
            _ => {
                gen.empty_key_permille = 2;
                let mut txn = gen.txn(0);
                if common::kv_diff::has_from_key_delete(&txn) {
                    common::kv_diff::defuse_ignore_flags(&mut txn);
                }
                Op::Txn(txn)
            }
        }
    }

    fn lease_id(&mut self) -> i64 {
        if !self.gen.leases.is_empty() && self.gen.rng.percent(85) {
            self.gen.rng.pick(&self.gen.leases)
        } else {
            // Never granted (or revoked already).
            self.gen.rng.between(1, self.next_lease + 1)
        }
    }

    fn call(&mut self) -> Call {
        match self.gen.rng.below(100) {
            0..=24 => {
                self.next_lease += 1;
                Call::LeaseGrant(LeaseGrantRequest {
                    ttl: 3600,
                    id: self.next_lease,
                })
            }
            25..=39 => Call::LeaseRevoke(LeaseRevokeRequest {
                id: self.lease_id(),
            }),
            40..=59 => Call::LeaseTimeToLive(LeaseTimeToLiveRequest {
                id: self.lease_id(),
                keys: self.gen.rng.percent(70),
            }),
            60..=69 => Call::LeaseLeases,
            _ => {
                let (key, mut range_end) = self.gen.key_range(10);
                straighten(&key, &mut range_end);
                Call::Watch(WatchCreateRequest {
                    key,
                    range_end,
                    prev_kv: self.gen.rng.percent(30),
                    ..Default::default()
                })
            }
        }
    }

    /// A permission over a single key, a prefix, a from-key range or an arbitrary range.
    fn permission(&mut self) -> Permission {
        let rng = &mut self.gen.rng;
        let key = bytes(rng.pick(&KEYS));
        let range_end = match rng.below(4) {
            0 => Bytes::new(),
            1 => prefix_end(&key),
            2 => bytes(b"\0"),
            _ => bytes(rng.pick(&OTHER_KEYS)),
        };
        let perm_type = rng.pick(&[
            permission::Type::Read,
            permission::Type::Write,
            permission::Type::Readwrite,
        ]) as i32;
        Permission {
            perm_type,
            key,
            range_end,
        }
    }

    fn admin(&mut self) -> Admin {
        let role = self.gen.rng.pick(&ROLES).to_string();
        let user = 1 + self.gen.rng.below(USERS.len());
        let name = USERS[user - 1].to_string();
        match self.gen.rng.below(100) {
            0..=24 => Admin::Grant(role, self.permission()),
            25..=39 => {
                let perm = self.permission();
                Admin::Revoke(AuthRoleRevokePermissionRequest {
                    role,
                    key: perm.key,
                    range_end: perm.range_end,
                })
            }
            40..=54 => Admin::GrantRole(AuthUserGrantRoleRequest { user: name, role }),
            55..=64 => Admin::RevokeRole(AuthUserRevokeRoleRequest { name, role }),
            65..=71 => {
                let password = format!("{name}-{}", self.step);
                Admin::ChangePassword(user, password)
            }
            72..=77 => Admin::DeleteUser(user),
            78..=87 => {
                // Mostly a deleted user comes back (without its roles).
                let user = match self.deleted.first() {
                    Some(&deleted) if self.gen.rng.percent(80) => deleted,
                    _ => user,
                };
                Admin::AddUser(user, format!("{}-{}", USERS[user - 1], self.step))
            }
            88..=93 => Admin::GetUser(name),
            _ => Admin::GetRole(role),
        }
    }
}

/// What etcd's watch answer turns into when a check refuses the create: created and
/// cancelled at once with the error as its reason (Go's status text), no watch ID.
fn refused_watch(etcd: &Outcome, expected: &Outcome) -> Outcome {
    let Outcome::Err(code, message) = expected else {
        return expected.clone();
    };
    let revision = header_revision(etcd).unwrap_or_default();
    let refused = WatchResponse {
        header: Some(ResponseHeader {
            revision,
            raft_term: header_term(etcd).unwrap_or_default(),
            ..Default::default()
        }),
        watch_id: -1,
        created: true,
        canceled: true,
        cancel_reason: format!("rpc error: code = {code:?} desc = {message}"),
        ..Default::default()
    };
    Outcome::Ok(format!("{refused:#?}"))
}

/// The `revision` of an answer's (pretty-printed) header.
fn header_revision(outcome: &Outcome) -> Option<i64> {
    header_field(outcome, "revision: ")
}

fn header_term(outcome: &Outcome) -> Option<u64> {
    header_field(outcome, "raft_term: ")
}

fn header_field<T: std::str::FromStr>(outcome: &Outcome, field: &str) -> Option<T> {
    let Outcome::Ok(text) = outcome else {
        return None;
    };
    let header = &text[text.find("header: Some(")?..];
    let at = header.find(field)? + field.len();
    let value = &header[at..];
    value[..value.find(',')?].trim().parse().ok()
}

/// An inverted range (end before the key, not "\0") becomes the empty range at its key.
///
/// etcd answers a permission check of an inverted range by walking its interval tree of
/// the user's permissions, and the walk prunes subtrees that hold the key: the answer
/// depends on the red-black tree's shape (the order the permissions were granted in).
/// rivet answers "does a permission hold the key" — what etcd's walk answers when it does
/// not prune — and so do both for `[key, key)`. Known, left alone: such a range asks for
/// no key at all.
fn straighten(key: &[u8], range_end: &mut Bytes) {
    if !key.is_empty()
        && !range_end.is_empty()
        && range_end.as_ref() != b"\0"
        && range_end.as_ref() < key
    {
        *range_end = Bytes::copy_from_slice(key);
    }
}

fn straighten_txn(txn: &mut TxnRequest) {
    for c in &mut txn.compare {
        straighten(&c.key, &mut c.range_end);
    }
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        match &mut op.request {
            Some(request_op::Request::RequestRange(r)) => straighten(&r.key, &mut r.range_end),
            Some(request_op::Request::RequestDeleteRange(d)) => {
                straighten(&d.key, &mut d.range_end)
            }
            Some(request_op::Request::RequestTxn(t)) => straighten_txn(t),
            _ => {}
        }
    }
}

fn straighten_op(op: &mut Op) {
    match op {
        Op::Range(r) => straighten(&r.key, &mut r.range_end),
        Op::Delete(d) => straighten(&d.key, &mut d.range_end),
        Op::Txn(t) => straighten_txn(t),
        _ => {}
    }
}

/// Later etcd 3.4's `isValidPermissionRange`: a key, and no range end, an end after the
/// key, or "\0" (from the key on).
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || key < range_end || range_end == b"\0")
}

/// The roles of the test: every kind of range, every permission type.
fn initial_permissions() -> Vec<(&'static str, Permission)> {
    use permission::Type::{Read, Readwrite, Write};
    let perm = |t: permission::Type, key: &[u8], end: &[u8]| Permission {
        perm_type: t as i32,
        key: bytes(key),
        range_end: bytes(end),
    };
    vec![
        ("single", perm(Read, b"a/b", b"")),
        ("single", perm(Write, b"b/1", b"")),
        ("single", perm(Readwrite, b"c", b"")),
        ("prefix", perm(Readwrite, b"a/", &prefix_end(b"a/"))),
        ("prefix", perm(Read, b"b/", &prefix_end(b"b/"))),
        ("fromkey", perm(Read, b"b", b"\0")),
        ("fromkey", perm(Write, b"c", b"\0")),
        ("mixed", perm(Readwrite, b"a", b"ab")),
        ("mixed", perm(Write, b"ba", b"")),
        ("mixed", perm(Read, b"a/b", &prefix_end(b"a/b"))),
    ]
}

const INITIAL_ROLES: [(&str, &[&str]); 4] = [
    ("alice", &["prefix"]),
    ("bob", &["single", "fromkey"]),
    ("carol", &["fromkey", "mixed"]),
    ("dave", &["mixed"]),
];

/// Sets up root, the users and the roles on both (before auth is on: no tokens needed),
/// every answer compared, then enables auth and authenticates everyone.
async fn set_up(run: &mut Run<'_>) {
    let mut admins = vec![
        Admin::AddRole("root".into()),
        Admin::AddUser(0, "rootpw".into()),
        Admin::GrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }),
    ];
    admins.extend(ROLES.iter().map(|role| Admin::AddRole(role.to_string())));
    for (i, user) in USERS.iter().enumerate() {
        admins.push(Admin::AddUser(i + 1, format!("{user}pw")));
    }
    for (role, perm) in initial_permissions() {
        admins.push(Admin::Grant(role.into(), perm));
    }
    for (user, roles) in INITIAL_ROLES {
        for role in roles {
            admins.push(Admin::GrantRole(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.to_string(),
            }));
        }
    }
    admins.push(Admin::Enable);
    for admin in &admins {
        run.admin_step(admin).await;
    }
    for account in 0..run.accounts.len() {
        run.authenticate(account).await;
    }
}

#[test]
fn random_auth_sequence_matches_etcd() {
    random_auth_sequence(&[]);
}

/// The same with `--auth-token jwt` (RS256 keys made by the test) on both: a token carries
/// the auth revision it was made at, so after an admin step a user's next request is
/// refused `revision of auth store is old` until it logs in again.
#[test]
fn random_auth_sequence_with_jwt_matches_etcd() {
    let dir = tempfile::tempdir().expect("temp dir");
    let option = common::jwt_option(dir.path());
    random_auth_sequence(&["--auth-token", &option]);
}

fn random_auth_sequence(token_flags: &[&str]) {
    require_etcd_34();
    let seed = env_number("RIVET_AUTH_FUZZ_SEED", DEFAULT_SEED);
    let steps = env_number("RIVET_AUTH_FUZZ_STEPS", DEFAULT_STEPS as u64) as usize;
    println!("seed {seed:#x} (replay with RIVET_AUTH_FUZZ_SEED={seed:#x})");
    let max_txn_ops = MAX_TXN_OPS.to_string();
    let mut flags = vec!["--max-txn-ops", &max_txn_ops, "--bcrypt-cost", BCRYPT_COST];
    flags.extend_from_slice(token_flags);
    let etcd = Etcd::start(&flags);
    let rivet = Rivet::start(&flags);
    let rivet_log = || rivet.log_text();
    let started = Instant::now();
    runtime().block_on(async {
        let sides = [
            Side::connect(&format!("http://{}", etcd.endpoint())).await,
            Side::connect(&rivet.url()).await,
        ];
        let mut accounts = vec![Account {
            name: "root",
            password: "rootpw".into(),
            tokens: [None, None],
        }];
        for user in USERS {
            accounts.push(Account {
                name: user,
                password: format!("{user}pw"),
                tokens: [None, None],
            });
        }
        let mut run = Run {
            sides,
            accounts,
            gen: Gen::new(seed),
            next_lease: 0x1000,
            deleted: Vec::new(),
            recent: VecDeque::new(),
            stats: BTreeMap::new(),
            rivet_log: &rivet_log,
            seed,
            step: 0,
        };
        set_up(&mut run).await;
        for step in 0..steps {
            run.step = step;
            match run.gen.rng.below(100) {
                0..=59 => {
                    let account = run.account();
                    let mut op = run.kv_op();
                    straighten_op(&mut op);
                    run.kv_step(account, &op).await;
                }
                60..=89 => {
                    let account = run.account();
                    let call = run.call();
                    run.call_step(account, &call).await;
                }
                _ => {
                    let admin = run.admin();
                    run.admin_step(&admin).await;
                }
            }
        }
        // The end state, read back as root from both: every key, every user and role.
        run.step = steps;
        let everything = Op::Range(RangeRequest {
            key: bytes(b"\0"),
            range_end: bytes(b"\0"),
            ..Default::default()
        });
        run.kv_step(0, &everything).await;
        for user in USERS {
            run.admin_step(&Admin::GetUser(user.into())).await;
        }
        for role in ROLES {
            run.admin_step(&Admin::GetRole(role.into())).await;
        }
        println!(
            "seed {seed:#x}: {steps} steps equal in {:.1?}; revision {}",
            started.elapsed(),
            run.gen.revision
        );
        for (label, count) in &run.stats {
            println!("  {count:6}  {label}");
        }
    });
}
