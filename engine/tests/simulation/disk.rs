//! The simulated disk under the WAL: records that are durable once synced, and a sync that
//! may fail. A crash keeps only what was synced; a failed sync leaves an unknown prefix of
//! the unsynced records on the disk and poisons the log (as a real WAL must be after a
//! failed fdatasync: a retry could report success for lost data), so the member stops.

use std::sync::{Arc, Mutex};

use rivet_engine::raft::{LogError, LogRecord, LogStorage};
use rivet_wal::RecordKind;

use crate::rng::Rng;

/// What survives a crash.
#[derive(Default)]
pub struct Disk {
    pub records: Vec<LogRecord>,
}

/// The log storage one incarnation of a member writes through.
pub struct SimLog {
    disk: Arc<Mutex<Disk>>,
    pending: Vec<LogRecord>,
    submitted: u64,
    durable: u64,
    rng: Rng,
    sync_failure_per_mille: u64,
    poisoned: bool,
}

impl SimLog {
    pub fn new(disk: Arc<Mutex<Disk>>, rng: Rng, sync_failure_per_mille: u64) -> SimLog {
        SimLog {
            disk,
            pending: Vec::new(),
            submitted: 0,
            durable: 0,
            rng,
            sync_failure_per_mille,
            poisoned: false,
        }
    }
}

impl LogStorage for SimLog {
    fn submit(&mut self, records: Vec<LogRecord>) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(LogError("the log failed a sync before".into()));
        }
        self.pending.extend(records);
        self.submitted += 1;
        Ok(self.submitted)
    }

    fn wait_durable(&mut self, sequence: u64) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError("the log failed a sync before".into()));
        }
        if sequence <= self.durable {
            return Ok(());
        }
        let mut disk = self.disk.lock().expect("disk lock");
        if self.rng.chance(self.sync_failure_per_mille) {
            let kept = self.rng.below(self.pending.len() + 1);
            disk.records.extend(self.pending.drain(..).take(kept));
            self.poisoned = true;
            return Err(LogError("simulated fdatasync failure".into()));
        }
        disk.records.append(&mut self.pending);
        self.durable = self.submitted;
        Ok(())
    }

    fn release_before(&mut self, index: u64) -> Result<(), LogError> {
        let mut disk = self.disk.lock().expect("disk lock");
        disk.records
            .retain(|r| r.kind != RecordKind::Entry || r.index >= index);
        Ok(())
    }
}
