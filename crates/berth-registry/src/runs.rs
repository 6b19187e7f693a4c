//! What the last lifecycle and integrity runs did, kept in memory for the web UI: the
//! metrics say when a run last succeeded; this says what it found and whether it failed.

use std::collections::VecDeque;
use std::time::Duration;

use berth_oci::Digest;

use crate::integrity::Problem;
use crate::{Registry, RegistryError, Result};

/// How many push verifications are remembered.
const VERIFICATIONS_KEPT: usize = 20;

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// Unix time the run finished.
    pub at: i64,
    pub took: Duration,
    /// What it did (`Ok`) or why it failed (`Err`).
    pub outcome: std::result::Result<String, String>,
}

/// One push verification: the image walked like a pull right after its push.
#[derive(Clone, Debug)]
pub struct Verification {
    pub at: i64,
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Digest,
    /// `ok`, `failed` or `error`.
    pub result: &'static str,
    /// What could not be pulled, or why the walk failed.
    pub problems: Vec<String>,
}

/// The last probe of one reference by the server's own prober (`[probe]`): the image
/// pulled through berth's HTTP API the way a client pulls it.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub at: i64,
    /// As configured (`repo:tag`).
    pub reference: String,
    pub repo: String,
    pub took: Duration,
    /// `ok (N manifests, M blobs, B bytes)`, or why it failed.
    pub summary: String,
    /// Empty when the image pulled whole.
    pub problems: Vec<String>,
}

/// The last real (not dry) run of each job, and recent push verifications.
#[derive(Clone, Debug, Default)]
pub struct LastRuns {
    pub gc: Option<RunRecord>,
    pub retention: Option<RunRecord>,
    pub evict: Option<RunRecord>,
    pub scrub: Option<RunRecord>,
    /// What the last completed scrub found (repaired or not).
    pub scrub_problems: Vec<Problem>,
    /// Most recent first.
    pub verifications: VecDeque<Verification>,
    /// The last probe of each configured reference, in configuration order.
    pub probes: Vec<ProbeResult>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Job {
    Gc,
    Retention,
    Evict,
    Scrub,
}

impl Registry {
    /// Records the server prober's latest result for one reference.
    pub fn note_probe(&self, result: ProbeResult) {
        let mut last = self.last_runs.lock().unwrap();
        match last.probes.iter_mut().find(|p| p.reference == result.reference) {
            Some(p) => *p = result,
            None => last.probes.push(result),
        }
    }

    /// What the last runs did.
    pub fn last_runs(&self) -> LastRuns {
        self.last_runs.lock().unwrap().clone()
    }

    /// Records a finished run. A dry run changes nothing and is not "the last run"; a run
    /// refused because another was in progress did not run at all.
    pub(crate) fn note_run<T>(
        &self,
        job: Job,
        dry_run: bool,
        result: &Result<T>,
        took: Duration,
        summary: impl FnOnce(&T) -> String,
    ) {
        if dry_run || matches!(result, Err(RegistryError::Busy)) {
            return;
        }
        let record = RunRecord {
            at: self.clock.now(),
            took,
            outcome: result.as_ref().map(summary).map_err(|e| e.to_string()),
        };
        let mut runs = self.last_runs.lock().unwrap();
        let slot = match job {
            Job::Gc => &mut runs.gc,
            Job::Retention => &mut runs.retention,
            Job::Evict => &mut runs.evict,
            Job::Scrub => &mut runs.scrub,
        };
        *slot = Some(record);
    }

    pub(crate) fn note_scrub_problems(&self, problems: Vec<Problem>) {
        self.last_runs.lock().unwrap().scrub_problems = problems;
    }

    pub(crate) fn note_verification(&self, v: Verification) {
        let mut runs = self.last_runs.lock().unwrap();
        runs.verifications.push_front(v);
        runs.verifications.truncate(VERIFICATIONS_KEPT);
    }
}
