//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), with etcd
//! 3.4's semantics (`etcdserver/api/v3compactor/{periodic,revision}.go`): the leader
//! proposes a compaction through raft, like a client's, and every member applies it.
//!
//! **periodic**, retention `p` (hours when a bare integer, else a Go duration): the
//! compactor samples the store's revision every `min(p, 1h) / 10`, keeping the samples of
//! the last `p`; once `p` has passed since the start (or since the last success), it
//! compacts at the oldest sample — the revision of `p` ago — and from then on every
//! `min(p, 1h)`; a failed compaction is retried at the next sample.
//!
//! **revision**, retention `n`: every 5 minutes, if the revision minus `n` is positive and
//! not the last revision compacted, it compacts there: the last `n` revisions stay.
//!
//! Only the leader compacts (etcd pauses the compactor on followers); a periodic
//! compactor keeps sampling while paused. [`Compactor`] is the clock-driven state machine
//! (tested here with a fake clock); [`RaftCore::auto_compact`] runs it on every tick.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use raft::StateRole;
use rivet_api::etcdserverpb::CompactionRequest;
use rivet_api::rivetpb::internal_request;

use super::RaftCore;
use crate::error::EtcdError;
use crate::limits;
use crate::messages::Reply;

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the revisions of the last `period`.
    Periodic { period: Duration },
    /// Keep the last `revisions` revisions.
    Revision { revisions: i64 },
}

/// Parses the flags as etcd 3.4's `embed.StartEtcd` and `Config.Validate` do: the mode
/// must be `periodic` or `revision`; a retention that is an integer is hours (periodic)
/// or revisions (revision), anything else a Go duration (in revision mode its count of
/// nanoseconds, as etcd reads it); 0 disables auto-compaction. The errors are etcd's.
pub fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<AutoCompaction>, String> {
    if !matches!(mode, "" | "periodic" | "revision") {
        return Err(format!("unknown auto-compaction-mode {mode:?}"));
    }
    let retention = if retention.is_empty() { "0" } else { retention };
    // A non-negative integer (Go's `strconv.Atoi`, which takes a sign); anything else,
    // a negative integer included, is parsed as a duration.
    let integer = retention.parse::<i64>().ok().filter(|n| *n >= 0);
    let nanos: i128 = match integer {
        Some(count) if mode == "revision" => i128::from(count),
        Some(hours) if mode == "periodic" => i128::from(hours) * 3_600_000_000_000,
        // An empty mode (possible in etcd's config file, not with its flags) matches
        // neither case: auto-compaction stays off.
        Some(_) => 0,
        None => parse_go_duration(retention)
            .map_err(|e| format!("error parsing CompactionRetention: {e}"))?,
    };
    // 0 disables auto-compaction. etcd hands a negative duration to its compactor
    // unchecked; it then never compacts (a window in the past).
    if nanos <= 0 {
        return Ok(None);
    }
    Ok(Some(if mode == "revision" {
        AutoCompaction::Revision {
            revisions: i64::try_from(nanos).unwrap_or(i64::MAX),
        }
    } else {
        AutoCompaction::Periodic {
            period: Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
        }
    }))
}

/// Go's `time.ParseDuration`, in nanoseconds, with its error messages: a sequence of
/// decimal numbers with a unit each (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), an
/// optional sign, `0` alone allowed without a unit.
pub fn parse_go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let mut rest = text;
    let mut negative = false;
    if let Some(stripped) = rest.strip_prefix('-') {
        negative = true;
        rest = stripped;
    } else if let Some(stripped) = rest.strip_prefix('+') {
        rest = stripped;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        total += value * scale;
        if total > 9.223_372_036_854_775e18 {
            return Err(invalid());
        }
        rest = &rest[unit_end..];
    }
    let nanos = total.round() as i128;
    Ok(if negative { -nanos } else { nanos })
}

/// etcd's `revInterval` (tests shorten it with the test-only
/// `RIVET_TEST_REVISION_COMPACTION_INTERVAL_MS`, see
/// [`limits::revision_compaction_interval`]).
pub use crate::limits::REVISION_COMPACTION_INTERVAL;

/// The auto-compaction state machine, driven by a clock.
pub struct Compactor {
    kind: Kind,
    /// A compaction proposed and not answered yet: the compactor waits for it, as
    /// etcd's waits in `Compact`.
    pending: Option<Pending>,
}

struct Pending {
    revision: i64,
    since: Instant,
    answer: oneshot::Receiver<Result<Reply, EtcdError>>,
}

enum Kind {
    Periodic {
        period: Duration,
        /// `min(period, 1h)`: the interval between compactions after the first.
        compact_interval: Duration,
        /// `compact_interval / 10`: the sampling (and retry) interval.
        retry_interval: Duration,
        /// Samples kept: `period / retry_interval + 1`.
        retentions: usize,
        revisions: VecDeque<i64>,
        next_wake: Instant,
        last_success: Instant,
        /// `period` until the first compaction, then `compact_interval`.
        base_interval: Duration,
    },
    Revision {
        retention: i64,
        interval: Duration,
        next_wake: Instant,
        /// The last revision compacted.
        previous: i64,
    },
}

impl Compactor {
    /// A compactor started at `now` on a store at `revision`.
    pub fn new(
        config: AutoCompaction,
        now: Instant,
        revision: i64,
        revision_interval: Duration,
    ) -> Compactor {
        let kind = match config {
            AutoCompaction::Periodic { period } => {
                let compact_interval = period.min(Duration::from_secs(3600));
                let retry_interval = (compact_interval / 10).max(Duration::from_nanos(1));
                let retentions = usize::try_from(period.as_nanos() / retry_interval.as_nanos())
                    .unwrap_or(usize::MAX / 2)
                    + 1;
                let mut revisions = VecDeque::new();
                // etcd's loop samples first, then sleeps.
                revisions.push_back(revision);
                Kind::Periodic {
                    period,
                    compact_interval,
                    retry_interval,
                    retentions,
                    revisions,
                    next_wake: now + retry_interval,
                    last_success: now,
                    base_interval: period,
                }
            }
            AutoCompaction::Revision { revisions } => Kind::Revision {
                retention: revisions,
                interval: revision_interval,
                next_wake: now + revision_interval,
                previous: 0,
            },
        };
        Compactor {
            kind,
            pending: None,
        }
    }

    /// Moves the clock to `now` on a store at `revision`; answers the revision to compact
    /// at, when it is time (the caller proposes it and hands the answer to
    /// [`Compactor::proposed`]). `leader` false pauses it.
    pub fn poll(&mut self, now: Instant, revision: i64, leader: bool) -> Option<i64> {
        if self.pending.is_some() {
            return None;
        }
        match &mut self.kind {
            Kind::Periodic {
                period,
                compact_interval,
                retry_interval,
                retentions,
                revisions,
                next_wake,
                last_success,
                base_interval,
            } => {
                if now < *next_wake {
                    return None;
                }
                let sample = |revisions: &mut VecDeque<i64>| {
                    revisions.push_back(revision);
                    while revisions.len() > *retentions {
                        revisions.pop_front();
                    }
                };
                if !leader || now.duration_since(*last_success) < *base_interval {
                    sample(revisions);
                    *next_wake = now + *retry_interval;
                    return None;
                }
                if *base_interval == *period {
                    *base_interval = *compact_interval;
                }
                // Always the revision of `period` ago (or the first sample, while the
                // compactor has run for less).
                revisions.front().copied()
            }
            Kind::Revision {
                retention,
                interval,
                next_wake,
                previous,
            } => {
                if now < *next_wake {
                    return None;
                }
                *next_wake = now + *interval;
                if !leader {
                    return None;
                }
                let target = revision - *retention;
                (target > 0 && target != *previous).then_some(target)
            }
        }
    }

    /// The compaction at `revision` was proposed; its answer comes on `answer`.
    pub fn proposed(
        &mut self,
        revision: i64,
        now: Instant,
        answer: oneshot::Receiver<Result<Reply, EtcdError>>,
    ) {
        self.pending = Some(Pending {
            revision,
            since: now,
            answer,
        });
    }

    /// Looks at the pending compaction: when answered (or timed out after `timeout`),
    /// moves on as etcd's loop does after `Compact` returns. Answers the revision and
    /// whether it succeeded (etcd counts "already compacted" as success).
    pub fn check_pending(
        &mut self,
        now: Instant,
        revision: i64,
        timeout: Duration,
    ) -> Option<(i64, Result<(), EtcdError>)> {
        let pending = self.pending.as_mut()?;
        let result = match pending.answer.try_recv() {
            Ok(Some(Ok(_)) | Some(Err(EtcdError::Compacted))) => Ok(()),
            Ok(Some(Err(error))) => Err(error),
            Ok(None) if now.duration_since(pending.since) < timeout => return None,
            Ok(None) => Err(EtcdError::Timeout),
            Err(oneshot::Canceled) => Err(EtcdError::Stopped),
        };
        let compacted = pending.revision;
        self.pending = None;
        match &mut self.kind {
            Kind::Periodic {
                retentions,
                revisions,
                next_wake,
                last_success,
                retry_interval,
                ..
            } => {
                if result.is_ok() {
                    *last_success = now;
                }
                // Back at the top of etcd's loop: sample, then sleep.
                revisions.push_back(revision);
                while revisions.len() > *retentions {
                    revisions.pop_front();
                }
                *next_wake = now + *retry_interval;
            }
            Kind::Revision {
                previous,
                next_wake,
                interval,
                ..
            } => {
                if result.is_ok() {
                    *previous = compacted;
                }
                *next_wake = now + *interval;
            }
        }
        Some((compacted, result))
    }

    fn describe(&self) -> (&'static str, String) {
        match &self.kind {
            Kind::Periodic { period, .. } => ("periodic", format!("{period:?}")),
            Kind::Revision { retention, .. } => ("revision", retention.to_string()),
        }
    }
}

impl RaftCore {
    /// Turns auto-compaction on (the server does, from its flags, after start).
    pub fn set_auto_compaction(&mut self, config: Option<AutoCompaction>) {
        let now = self.clock.now();
        let revision = self.applier.sequencer().revision();
        self.compactor = config.map(|config| {
            tracing::info!(?config, "auto compaction enabled");
            Compactor::new(
                config,
                now,
                revision,
                limits::revision_compaction_interval(),
            )
        });
    }

    /// One tick of auto-compaction: the leader proposes a compaction when it is time.
    pub(super) fn auto_compact(&mut self) {
        let now = self.clock.now();
        let revision = self.applier.sequencer().revision();
        let leader = self.node.raft.state == StateRole::Leader;
        let Some(compactor) = self.compactor.as_mut() else {
            return;
        };
        if let Some((compacted, result)) =
            compactor.check_pending(now, revision, limits::AUTO_COMPACTION_TIMEOUT)
        {
            let (mode, retention) = compactor.describe();
            match result {
                Ok(()) => tracing::info!(
                    revision = compacted,
                    mode,
                    retention,
                    "completed auto compaction"
                ),
                Err(error) => tracing::warn!(
                    revision = compacted,
                    mode,
                    retention,
                    %error,
                    "failed auto compaction; will retry"
                ),
            }
        }
        let Some(target) = compactor.poll(now, revision, leader) else {
            return;
        };
        let (mode, retention) = compactor.describe();
        tracing::info!(
            revision = target,
            mode,
            retention,
            "starting auto compaction"
        );
        let (reply, answer) = oneshot::channel();
        if let Some(compactor) = self.compactor.as_mut() {
            compactor.proposed(target, now, answer);
        }
        self.propose(
            internal_request::Request::Compaction(CompactionRequest {
                revision: target,
                physical: false,
            }),
            None,
            reply,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequencer::Applied;

    fn ok() -> oneshot::Receiver<Result<Reply, EtcdError>> {
        let (reply, answer) = oneshot::channel();
        let _ = reply.send(Ok(Reply {
            index: 1,
            applied: Applied::Compaction(Default::default()),
            historical_ranges: Vec::new(),
        }));
        answer
    }

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            parse_auto_compaction("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic { period: hour }))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "90m"),
            Ok(Some(AutoCompaction::Periodic {
                period: Duration::from_secs(5400)
            }))
        );
        assert_eq!(
            parse_auto_compaction("revision", "1000"),
            Ok(Some(AutoCompaction::Revision { revisions: 1000 }))
        );
        assert_eq!(parse_auto_compaction("periodic", "0"), Ok(None));
        assert_eq!(parse_auto_compaction("periodic", ""), Ok(None));
        assert_eq!(
            parse_auto_compaction("periodic", "1x").unwrap_err(),
            r#"error parsing CompactionRetention: time: unknown unit "x" in duration "1x""#
        );
        assert_eq!(
            parse_auto_compaction("bad", "1").unwrap_err(),
            r#"unknown auto-compaction-mode "bad""#
        );
        assert_eq!(
            parse_auto_compaction("periodic", "-1").unwrap_err(),
            r#"error parsing CompactionRetention: time: missing unit in duration "-1""#
        );
        assert_eq!(parse_go_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("-2ms"), Ok(-2_000_000));
        assert_eq!(
            parse_go_duration("1.5").unwrap_err(),
            r#"time: missing unit in duration "1.5""#
        );
        assert_eq!(
            parse_go_duration("s").unwrap_err(),
            r#"time: invalid duration "s""#
        );
    }

    /// etcd's periodic compactor with a 10 s retention: samples every second; compacts
    /// at the revision of 10 s ago once 10 s passed, then every 10 s.
    #[test]
    fn periodic_compacts_the_revision_of_one_period_ago() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut compactor = Compactor::new(
            AutoCompaction::Periodic {
                period: 10 * second,
            },
            start,
            1,
            REVISION_COMPACTION_INTERVAL,
        );
        // The store gains 100 revisions a second.
        let revision_at = |seconds: u32| 1 + 100 * i64::from(seconds);
        let mut compactions = Vec::new();
        for tick in 1..=35u32 {
            let now = start + second * tick;
            if let Some(target) = compactor.poll(now, revision_at(tick), true) {
                compactions.push((tick, target));
                compactor.proposed(target, now, ok());
                assert!(compactor
                    .check_pending(now, revision_at(tick), second)
                    .is_some());
            }
        }
        // At 10 s the oldest sample is the start's. Then, as in etcd, the window holds
        // the samples of the last 11 wake-ups: at 20 s the oldest is the one of 9 s.
        assert_eq!(
            compactions,
            vec![
                (10, revision_at(0)),
                (20, revision_at(9)),
                (30, revision_at(19))
            ]
        );
    }

    /// Paused (not the leader), it keeps sampling and compacts nothing; a failure is
    /// retried at the next sample.
    #[test]
    fn periodic_pauses_on_followers_and_retries_failures() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut compactor = Compactor::new(
            AutoCompaction::Periodic {
                period: 10 * second,
            },
            start,
            1,
            REVISION_COMPACTION_INTERVAL,
        );
        for tick in 1..=12u32 {
            assert_eq!(
                compactor.poll(start + second * tick, i64::from(tick), false),
                None
            );
        }
        let now = start + second * 13;
        let target = compactor.poll(now, 13, true).expect("due");
        assert_eq!(target, 2, "the oldest of the 11 samples kept");
        let (reply, answer) = oneshot::channel();
        compactor.proposed(target, now, answer);
        let _ = reply.send(Err(EtcdError::NoLeader));
        assert!(compactor
            .check_pending(now, 13, second)
            .is_some_and(|(_, r)| r.is_err()));
        let retry = compactor.poll(start + second * 14, 14, true);
        assert_eq!(retry, Some(3), "retried one sample later");
    }

    #[test]
    fn revision_keeps_the_last_n_revisions_checking_every_interval() {
        let start = Instant::now();
        let interval = Duration::from_secs(300);
        let mut compactor = Compactor::new(
            AutoCompaction::Revision { revisions: 100 },
            start,
            1,
            interval,
        );
        assert_eq!(
            compactor.poll(start + interval / 2, 500, true),
            None,
            "not yet"
        );
        let now = start + interval;
        assert_eq!(
            compactor.poll(now, 50, true),
            None,
            "nothing below the retention"
        );
        let now = now + interval;
        let target = compactor.poll(now, 500, true).expect("due");
        assert_eq!(target, 400);
        compactor.proposed(target, now, ok());
        assert!(compactor.check_pending(now, 500, interval).is_some());
        let now = now + interval;
        assert_eq!(
            compactor.poll(now, 500, true),
            None,
            "the same revision again"
        );
        let now = now + interval;
        assert_eq!(compactor.poll(now, 900, false), None, "paused");
        let now = now + interval;
        assert_eq!(compactor.poll(now, 900, true), Some(800));
    }
}
