//! The registry domain: hosted repositories, their uploads, blobs, manifests, tags and
//! referrers.
//!
//! Architecture invariant: this is the only crate that decides what is true. It knows
//! nothing of HTTP; berth-http turns its results and [`RegistryError`]s into responses.

mod blobs;
mod browse;
pub mod cache;
mod error;
pub mod integrity;
pub mod lifecycle;
mod manifests;
pub mod metrics;
mod runs;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use berth_oci::{Digest, DigestHasher, RepoName, UploadId};
use berth_store::{BlobStore, MetaStore};

pub use blobs::BlobBody;
pub use error::{RegistryError, Result};
pub use manifests::{Listing, Pushed, StoredManifest};
pub use metrics::RegistryMetrics;
pub use runs::{LastRuns, ProbeResult, RunRecord, Verification};

/// Seconds since the Unix epoch, injected so tests can move time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    /// Largest blob an upload session may grow to (all its chunks); 0 is unlimited.
    pub max_blob_bytes: u64,
    /// Blob fills from upstreams running at once, across all upstreams; 0 is unlimited.
    pub max_concurrent_fills: usize,
    /// How long a fill waits for a turn before the pull is refused.
    pub fill_queue_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 0,
            max_concurrent_fills: 64,
            fill_queue_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The coordination job every lifecycle run takes: GC, retention and eviction all end in a
/// collection and scrub may quarantine, so they exclude one another as they do in one
/// process.
const LIFECYCLE_JOB: &str = "lifecycle";

/// Bytes locks held (see [`Registry::lock_bytes`]); the cross-replica lock is declared
/// first so it is released before the in-process stripes.
pub(crate) struct BytesLock<'a> {
    _across: berth_store::LockGuard,
    _here: Vec<tokio::sync::MutexGuard<'a, ()>>,
}

pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    metrics: RegistryMetrics,
    /// Hash state of uploads between requests: (bytes hashed, state, when saved). Lost on
    /// restart, or missing when the previous chunk went to another replica; then taken
    /// from the upload row (saved there when the metadata store is shared) or rebuilt from
    /// the upload area.
    hashers: Mutex<HashMap<UploadId, (u64, DigestHasher, i64)>>,
    /// Uploads a request is writing to right now.
    busy: Mutex<HashSet<UploadId>>,
    /// Configured upstreams (pull-through caches).
    upstreams: Vec<Arc<cache::CacheSource>>,
    /// Blob fills from upstreams in progress, one per digest.
    fills: Mutex<HashMap<Digest, Arc<cache::fill::Fill>>>,
    /// Turns for upstream fills (`limits.max_concurrent_fills`); `None` when unlimited.
    fill_permits: Option<tokio::sync::Semaphore>,
    /// Held while blob bytes are moved into place and recorded, or checked and deleted:
    /// striped by digest, so a commit and a collection of one digest never interleave
    /// (across replicas too: see [`Registry::lock_bytes`]).
    bytes_locks: Vec<tokio::sync::Mutex<()>>,
    /// One lifecycle run (GC, retention, eviction, scrub) at a time in this process; see
    /// [`Registry::lifecycle_turn`] for the lock across replicas.
    lifecycle: tokio::sync::Mutex<()>,
    /// Pull times being written, so a burst of pulls writes once.
    pulls_pending: Arc<Mutex<HashSet<(RepoName, Digest)>>>,
    /// Hash every whole-blob read while it streams (storage.verify_on_read).
    verify_on_read: bool,
    /// Answer whole-blob GETs with a redirect to a presigned URL valid this long, when the
    /// blob store can make one (storage.s3.redirect, storage.s3.presign_ttl).
    redirect_ttl: Option<std::time::Duration>,
    /// Walk every pushed image like a pull right after the push.
    verify_after_push: bool,
    /// What the last lifecycle and integrity runs did (for the web UI).
    last_runs: Mutex<LastRuns>,
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        metrics: RegistryMetrics,
    ) -> Registry {
        let fill_permits = (limits.max_concurrent_fills > 0)
            .then(|| tokio::sync::Semaphore::new(limits.max_concurrent_fills));
        Registry {
            blobs,
            meta,
            clock,
            fill_permits,
            limits,
            metrics,
            hashers: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            upstreams: Vec::new(),
            fills: Mutex::new(HashMap::new()),
            bytes_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            lifecycle: tokio::sync::Mutex::new(()),
            pulls_pending: Arc::default(),
            verify_on_read: true,
            redirect_ttl: None,
            verify_after_push: true,
            last_runs: Mutex::default(),
        }
    }

    /// Whether pushed images are walked like a pull right after the push (on by default).
    pub fn with_verify_after_push(mut self, on: bool) -> Registry {
        self.verify_after_push = on;
        self
    }

    /// Whether whole-blob reads are hashed as they stream (on by default).
    /// Whole-blob GETs of stored blobs redirect to presigned URLs valid for `ttl` (when the
    /// blob store makes them). Those bytes are not hashed on their way (verify_on_read
    /// cannot apply to bytes berth does not serve): scrub covers them.
    pub fn with_blob_redirects(mut self, ttl: Option<std::time::Duration>) -> Registry {
        self.redirect_ttl = ttl;
        self
    }

    pub fn with_verify_on_read(mut self, on: bool) -> Registry {
        self.verify_on_read = on;
        self
    }

    /// Records that a manifest was pulled (for retention and eviction), at most about
    /// once a minute per manifest and off the request's path.
    pub(crate) fn note_pull(&self, repo: &RepoName, m: &StoredManifest) {
        let now = self.clock.now();
        if m.last_pulled.is_some_and(|t| now - t < 60) {
            return;
        }
        let key = (repo.clone(), m.digest.clone());
        if !self.pulls_pending.lock().unwrap().insert(key.clone()) {
            return;
        }
        let (meta, pending) = (self.meta.clone(), self.pulls_pending.clone());
        tokio::spawn(async move {
            if let Err(e) = meta.touch_pulled(&key.0, &key.1, now).await {
                tracing::warn!(error = %e, "could not record a pull");
            }
            pending.lock().unwrap().remove(&key);
        });
    }

    /// Takes the turn of a lifecycle run (GC, retention, eviction, scrub): one at a time in
    /// this process, and one at a time across every replica sharing the metadata store
    /// (`Coordination::try_lock_job`, an advisory lock on PostgreSQL). `Busy` when another
    /// run holds either; the turn ends when the returned guards drop.
    pub(crate) async fn lifecycle_turn(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, berth_store::LockGuard)> {
        let here = self.lifecycle.try_lock().map_err(|_| RegistryError::Busy)?;
        let across = self
            .meta
            .try_lock_job(LIFECYCLE_JOB)
            .await?
            .ok_or(RegistryError::Busy)?;
        Ok((here, across))
    }

    fn bytes_stripe(&self, digest: &Digest) -> usize {
        u8::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0) as usize % self.bytes_locks.len()
    }

    /// Takes the bytes locks of `digests`: their in-process stripes first, then the same
    /// stripes across replicas (`Coordination::lock_bytes`, one PostgreSQL connection for
    /// the set), both in ascending stripe order, so no two holders can deadlock. Held while
    /// bytes are moved into place and recorded, or checked absent and deleted.
    pub(crate) async fn lock_bytes<'a>(
        &self,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<BytesLock<'_>> {
        let mut stripes: Vec<usize> = digests.into_iter().map(|d| self.bytes_stripe(d)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut here = Vec::with_capacity(stripes.len());
        for &i in &stripes {
            here.push(self.bytes_locks[i].lock().await);
        }
        let stripes: Vec<u32> = stripes.into_iter().map(|i| i as u32).collect();
        let across = self.meta.lock_bytes(&stripes).await?;
        Ok(BytesLock {
            _across: across,
            _here: here,
        })
    }

    /// Serves these upstreams as pull-through caches.
    pub fn with_upstreams(mut self, upstreams: Vec<cache::CacheSource>) -> Registry {
        self.upstreams = upstreams.into_iter().map(Arc::new).collect();
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &RegistryMetrics {
        &self.metrics
    }

    /// Refreshes the storage gauges (called before /metrics is rendered).
    pub async fn refresh_gauges(&self) -> Result<()> {
        use metrics::KindLabel;
        let st = self.meta.storage_stats().await?;
        let m = &self.metrics;
        for (repository, blobs, bytes, manifests) in [
            ("hosted", st.hosted_blobs, st.hosted_bytes, st.hosted_manifests),
            ("cached", st.cached_blobs, st.cached_bytes, st.cached_manifests),
        ] {
            let l = KindLabel { repository };
            m.storage_blobs.get_or_create(&l).set(blobs as i64);
            m.storage_bytes.get_or_create(&l).set(bytes as i64);
            m.manifests.get_or_create(&l).set(manifests as i64);
        }
        m.uploads_in_progress.set(st.uploads as i64);
        Ok(())
    }

    /// Records a completed lifecycle run.
    pub(crate) fn record_run(&self, job: &'static str, took: std::time::Duration) {
        let l = metrics::JobLabel { job };
        self.metrics
            .lifecycle_duration
            .get_or_create(&l)
            .set(took.as_secs_f64());
        self.metrics
            .lifecycle_last_success
            .get_or_create(&l)
            .set(self.clock.now());
    }

    /// Readiness: the metadata store answers and the blob store takes writes.
    pub async fn ready(&self) -> Result<()> {
        self.meta.ping().await?;
        self.blobs.check_writable().await?;
        Ok(())
    }
}
