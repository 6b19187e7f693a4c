//! Online garbage collection.
//!
//! Mark and sweep are one metadata transaction ([`berth_store::LifecycleMeta`]): a push
//! that references a blob being collected is serialized with it, so it either keeps the
//! blob or fails with `MANIFEST_BLOB_UNKNOWN` and the client uploads it again. Bytes are
//! deleted only after their rows are gone, each under the blob's bytes lock with the row
//! checked absent again, so a concurrent upload of the same digest is never undone.

use std::time::{Duration, Instant};

use berth_store::{Deletion, GcReport};

use crate::runs::Job;
use crate::{Registry, Result};

/// What a collection did (or would do).
#[derive(Debug)]
pub struct GcOutcome {
    pub dry_run: bool,
    pub report: GcReport,
    /// Bytes of blob files deleted (or that would be).
    pub bytes_freed: u64,
    pub took: Duration,
}

impl GcOutcome {
    /// One line for people: what went (or would go).
    pub fn summary(&self) -> String {
        format!(
            "{} manifests, {} links and {} blobs ({} bytes) {}",
            self.report.manifests.len(),
            self.report.links,
            self.report.blobs.len(),
            self.bytes_freed,
            if self.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        )
    }
}

/// Grace periods of a collection.
#[derive(Clone, Copy, Debug)]
pub struct Grace {
    /// Untagged manifests pushed, and links created, within this long stay (hosted).
    pub hosted: Duration,
    /// The same for cached repositories.
    pub cached: Duration,
}

impl Registry {
    /// Collects garbage: manifests not reachable from a tag (nor pushed within the grace
    /// period), then the links and blobs nothing live uses. One lifecycle run at a time.
    pub async fn collect_garbage(&self, grace: Grace, dry_run: bool) -> Result<GcOutcome> {
        let started = Instant::now();
        let out = self.collect_garbage_once(grace, dry_run).await;
        self.note_run(Job::Gc, dry_run, &out, started.elapsed(), GcOutcome::summary);
        out
    }

    async fn collect_garbage_once(&self, grace: Grace, dry_run: bool) -> Result<GcOutcome> {
        let _turn = self.lifecycle_turn().await?;
        let out = self.collect(&[], grace, dry_run).await?;
        if !dry_run {
            self.record_run("gc", out.took);
        }
        Ok(out)
    }

    /// Applies `first` (deletions decided by a rule), then collects, in one transaction;
    /// the caller holds the lifecycle lock.
    pub(crate) async fn collect(&self, first: &[Deletion], grace: Grace, dry_run: bool) -> Result<GcOutcome> {
        let started = Instant::now();
        let now = self.clock.now();
        let report = self
            .meta
            .collect_garbage(
                first,
                now - grace.hosted.as_secs() as i64,
                now - grace.cached.as_secs() as i64,
                dry_run,
            )
            .await?;
        let mut bytes_freed = 0;
        if dry_run {
            bytes_freed = report.blobs.iter().map(|(_, size)| size).sum();
        } else {
            // In batches: take the bytes locks the batch needs (in this process and across
            // replicas), drop whatever an upload recorded again since the sweep, delete the
            // rest.
            for batch in report.blobs.chunks(1000) {
                let _bytes = self.lock_bytes(batch.iter().map(|(d, _)| d)).await?;
                let digests: Vec<_> = batch.iter().map(|(d, _)| d.clone()).collect();
                let again = self.meta.recorded_among(&digests).await?;
                let doomed: Vec<_> = batch.iter().filter(|(d, _)| !again.contains(d)).collect();
                let paths: Vec<_> = doomed.iter().map(|(d, _)| d.clone()).collect();
                self.blobs.delete_many(&paths).await?;
                bytes_freed += doomed.iter().map(|(_, size)| size).sum::<u64>();
            }
        }
        let outcome = GcOutcome {
            dry_run,
            report,
            bytes_freed,
            took: started.elapsed(),
        };
        if !dry_run {
            let m = &self.metrics;
            m.gc_runs.inc();
            m.gc_manifests.inc_by(outcome.report.manifests.len() as u64);
            m.gc_blobs.inc_by(outcome.report.blobs.len() as u64);
            m.gc_bytes.inc_by(outcome.bytes_freed);
            m.gc_last_run.set(now);
        }
        tracing::info!(
            dry_run,
            manifests = outcome.report.manifests.len(),
            links = outcome.report.links,
            blobs = outcome.report.blobs.len(),
            bytes = outcome.bytes_freed,
            ms = outcome.took.as_millis() as u64,
            "garbage collection"
        );
        Ok(outcome)
    }
}
