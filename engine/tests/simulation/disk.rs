//! The simulated disk under the WAL, with a write in flight as the real WAL has one
//! (io_uring: the raft core submits a write and goes on). A write is submitted, and becomes
//! durable when the simulation says so (an `Event::DiskDone`, after a seeded latency) —
//! or fails then. One write is in flight at a time, as in the WAL; what is submitted
//! meanwhile queues and goes out as the next write when it completes.
//!
//! A crash keeps the durable records and a seeded prefix of the write in flight (the
//! kernel may have written part of it); what queued behind it is lost. A failed sync
//! leaves an unknown prefix of its records on the disk and poisons the log (as a real WAL
//! must be after a failed fdatasync: a retry could report success for lost data), so the
//! member stops.

use std::sync::{Arc, Mutex};

use rivet_engine::raft::{LogError, LogRecord, LogStorage};
use rivet_wal::RecordKind;

use crate::rng::Rng;

/// What survives a crash, and the write in flight.
#[derive(Default)]
pub struct Disk {
    /// Durable records.
    pub records: Vec<LogRecord>,
    /// The write in flight: the sequence number it makes durable, and its records.
    pub in_flight: Option<(u64, Vec<LogRecord>)>,
    /// The highest sequence durable, for the running incarnation.
    durable: u64,
    /// The write in flight failed: the log is poisoned.
    failed: bool,
}

impl Disk {
    /// The write in flight completes: durable, or (per mille `failure`) failed with a
    /// prefix of it on the disk.
    pub fn complete(&mut self, rng: &mut Rng, failure_per_mille: u64) {
        let Some((sequence, mut records)) = self.in_flight.take() else {
            return;
        };
        if rng.chance(failure_per_mille) {
            let kept = rng.below(records.len() + 1);
            records.truncate(kept);
            self.records.append(&mut records);
            self.failed = true;
            return;
        }
        self.records.append(&mut records);
        self.durable = sequence;
    }

    /// The process dies: a prefix of the write in flight may have reached the disk.
    pub fn crash(&mut self, rng: &mut Rng) {
        if let Some((_, mut records)) = self.in_flight.take() {
            let kept = rng.below(records.len() + 1);
            records.truncate(kept);
            self.records.append(&mut records);
        }
        self.durable = 0;
        self.failed = false;
    }
}

/// The log storage one incarnation of a member writes through.
pub struct SimLog {
    disk: Arc<Mutex<Disk>>,
    /// Submitted, waiting for the write in flight.
    queued: Vec<LogRecord>,
    submitted: u64,
    rng: Rng,
    sync_failure_per_mille: u64,
    poisoned: bool,
}

impl SimLog {
    pub fn new(disk: Arc<Mutex<Disk>>, rng: Rng, sync_failure_per_mille: u64) -> SimLog {
        SimLog {
            disk,
            queued: Vec::new(),
            submitted: 0,
            rng,
            sync_failure_per_mille,
            poisoned: false,
        }
    }

    /// Fails if the log failed a sync; otherwise starts the next write if none is in
    /// flight, and answers the durable sequence.
    fn step(&mut self) -> Result<u64, LogError> {
        let mut disk = self.disk.lock().expect("disk lock");
        if self.poisoned || disk.failed {
            self.poisoned = true;
            return Err(LogError("simulated fdatasync failure".into()));
        }
        if disk.in_flight.is_none() && !self.queued.is_empty() {
            disk.in_flight = Some((self.submitted, std::mem::take(&mut self.queued)));
        }
        Ok(disk.durable)
    }
}

impl LogStorage for SimLog {
    fn submit(&mut self, records: Vec<LogRecord>) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(LogError("the log failed a sync before".into()));
        }
        self.queued.extend(records);
        self.submitted += 1;
        self.step()?;
        Ok(self.submitted)
    }

    fn durable(&mut self) -> Result<u64, LogError> {
        self.step()
    }

    /// Blocks: the disk completes what is in flight and queued at once.
    fn wait_durable(&mut self, sequence: u64) -> Result<(), LogError> {
        loop {
            let durable = self.step()?;
            if durable >= sequence {
                return Ok(());
            }
            let mut disk = self.disk.lock().expect("disk lock");
            if disk.in_flight.is_none() {
                return Err(LogError(format!(
                    "waiting for write {sequence}, which was never submitted"
                )));
            }
            disk.complete(&mut self.rng, self.sync_failure_per_mille);
        }
    }

    fn release_before(&mut self, index: u64) -> Result<(), LogError> {
        let mut disk = self.disk.lock().expect("disk lock");
        disk.records
            .retain(|r| r.kind != RecordKind::Entry || r.index >= index);
        Ok(())
    }
}
