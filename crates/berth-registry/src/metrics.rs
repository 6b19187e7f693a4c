//! Counters the domain keeps. Registered into an explicit prometheus-client registry, so
//! several servers in one process each count their own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemLabel {
    pub problem: &'static str,
}

/// Where the hash state of an upload's earlier bytes came from when a request appended to
/// it: `new` (nothing before), `memory` (this process hashed the last chunk), `saved` (the
/// state another replica saved in the metadata store), `rehashed` (read back and hashed
/// again: the earlier bytes went through a process that is gone or kept no state).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HashLabel {
    pub hash: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub upstream: String,
    /// `manifest` or `blob`.
    pub kind: &'static str,
    /// `hit`, `miss`, `revalidated`, `moved`, `stale` (manifests), `hit`, `miss`,
    /// `coalesced` (blobs).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
    /// The upstream's HTTP status (`503`, `429`, ...) or `timeout`, `connect`, `body`,
    /// `auth`, `invalid`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FillLabels {
    pub upstream: String,
    /// `ok`, `failed` or `refused` (no turn free within `limits.fill_queue_timeout`).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheBytesLabels {
    pub upstream: String,
    /// `cache` (served from what the cache holds) or `upstream` (fetched by a fill).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamName {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProblemKind {
    pub kind: &'static str,
    /// `hosted` or `cached`.
    pub repository: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `hosted` or `cached`.
    pub repository: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    /// `gc`, `retention`, `evict`, `scrub`.
    pub job: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct RegistryMetrics {
    /// Pushed images walked after the push, by result (`ok`, `failed`, `error`).
    pub push_verifications: Family<ResultLabel, Counter>,
    pub storage_bytes: Family<KindLabel, Gauge>,
    pub storage_blobs: Family<KindLabel, Gauge>,
    pub manifests: Family<KindLabel, Gauge>,
    pub uploads_in_progress: Gauge,
    /// `cache.max_bytes` (0: unlimited), so alerts can compare usage against it.
    pub cache_max_bytes: Gauge,
    pub lifecycle_duration: Family<JobLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub lifecycle_last_success: Family<JobLabel, Gauge>,
    pub scrub_runs: Counter,
    pub scrub_bytes: Counter,
    pub scrub_last_success: Gauge,
    /// Problems the last scrub found (left unrepaired), by kind and repository kind.
    pub integrity_problems: Family<ProblemKind, Gauge>,
    pub integrity_repaired: Counter,
    /// Cached-repository lookups by outcome.
    pub cache: Family<CacheLabels, Counter>,
    /// Upstream requests that failed (down, timeout, 5xx, 429, invalid answers).
    pub upstream_errors: Family<UpstreamLabel, Counter>,
    /// Blob fills from upstreams, by outcome.
    pub fills: Family<FillLabels, Counter>,
    /// Blob bytes of cached repositories: served from the cache, or fetched from upstreams.
    pub cache_bytes: Family<CacheBytesLabels, Counter>,
    /// Fills waiting for a turn (`limits.max_concurrent_fills`), by upstream.
    pub fills_waiting: Family<UpstreamName, Gauge>,
    /// Blob reads refused because the bytes were missing or of the wrong size.
    pub blob_read_errors: Family<ProblemLabel, Counter>,
    pub uploads_expired: Counter,
    /// Appends to uploads, by where the hash state of the bytes before came from.
    pub upload_appends: Family<HashLabel, Counter>,
    /// Whole-blob GETs answered with a redirect to a presigned URL (storage.s3.redirect).
    pub blob_redirects: Counter,
    pub digest_mismatches: Counter,
    pub blobs_committed: Counter,
    pub bytes_committed: Counter,
    pub manifests_pushed: Counter,
    pub gc_runs: Counter,
    pub gc_manifests: Counter,
    pub gc_blobs: Counter,
    pub gc_bytes: Counter,
    /// Unix time of the last completed collection.
    pub gc_last_run: Gauge,
    pub retention_tags: Counter,
    pub evicted_images: Counter,
}

impl RegistryMetrics {
    pub fn register(&self, r: &mut PromRegistry) {
        r.register(
            "berth_blob_read_errors",
            "Blob reads refused because stored bytes were missing or of the wrong size",
            self.blob_read_errors.clone(),
        );
        r.register(
            "berth_blob_redirects",
            "Whole-blob GETs redirected to a presigned URL of the blob store",
            self.blob_redirects.clone(),
        );
        r.register(
            "berth_upload_appends",
            "Requests that appended to an upload, by where the hash state of its earlier bytes came from",
            self.upload_appends.clone(),
        );
        r.register(
            "berth_uploads_expired",
            "Upload sessions removed after being idle too long",
            self.uploads_expired.clone(),
        );
        r.register(
            "berth_digest_mismatches",
            "Uploads refused because their bytes did not hash to the digest given",
            self.digest_mismatches.clone(),
        );
        r.register(
            "berth_blobs_committed",
            "Blobs committed by uploads",
            self.blobs_committed.clone(),
        );
        r.register(
            "berth_blob_bytes_committed",
            "Bytes committed by uploads",
            self.bytes_committed.clone(),
        );
        r.register(
            "berth_manifests_pushed",
            "Manifests accepted",
            self.manifests_pushed.clone(),
        );
        r.register(
            "berth_cache_requests",
            "Cached-repository lookups by kind and outcome",
            self.cache.clone(),
        );
        r.register(
            "berth_upstream_errors",
            "Upstream requests that failed, by upstream",
            self.upstream_errors.clone(),
        );
        r.register(
            "berth_cache_fills",
            "Blob fills from upstreams, by outcome",
            self.fills.clone(),
        );
        r.register(
            "berth_cache_blob_bytes",
            "Blob bytes of cached repositories, served from the cache or fetched from the upstream",
            self.cache_bytes.clone(),
        );
        r.register(
            "berth_cache_fills_waiting",
            "Blob fills waiting for a turn (limits.max_concurrent_fills), by upstream",
            self.fills_waiting.clone(),
        );
        r.register(
            "berth_gc_runs",
            "Garbage collections completed",
            self.gc_runs.clone(),
        );
        r.register(
            "berth_gc_deleted_manifests",
            "Manifests removed by garbage collection",
            self.gc_manifests.clone(),
        );
        r.register(
            "berth_gc_deleted_blobs",
            "Blobs removed by garbage collection",
            self.gc_blobs.clone(),
        );
        r.register(
            "berth_gc_freed_bytes",
            "Bytes freed by garbage collection",
            self.gc_bytes.clone(),
        );
        r.register(
            "berth_gc_last_run_timestamp_seconds",
            "Unix time of the last completed garbage collection",
            self.gc_last_run.clone(),
        );
        r.register(
            "berth_retention_deleted_tags",
            "Tags deleted by retention rules",
            self.retention_tags.clone(),
        );
        r.register(
            "berth_cache_evicted_images",
            "Cached images (tags) evicted",
            self.evicted_images.clone(),
        );
        r.register(
            "berth_storage_bytes",
            "Bytes of blobs held, by repository kind (a blob in both kinds counts in both)",
            self.storage_bytes.clone(),
        );
        r.register(
            "berth_storage_blobs",
            "Blobs held, by repository kind",
            self.storage_blobs.clone(),
        );
        r.register(
            "berth_manifests",
            "Manifests held, by repository kind",
            self.manifests.clone(),
        );
        r.register(
            "berth_uploads_in_progress",
            "Upload sessions open",
            self.uploads_in_progress.clone(),
        );
        r.register(
            "berth_cache_max_bytes",
            "The configured cache.max_bytes (0: unlimited)",
            self.cache_max_bytes.clone(),
        );
        r.register(
            "berth_lifecycle_last_duration_seconds",
            "Duration of the last completed run, by job",
            self.lifecycle_duration.clone(),
        );
        r.register(
            "berth_lifecycle_last_success_timestamp_seconds",
            "Unix time of the last completed run, by job (gc, retention, evict, scrub)",
            self.lifecycle_last_success.clone(),
        );
        r.register(
            "berth_push_verifications",
            "Pushed images walked like a pull right after the push, by result",
            self.push_verifications.clone(),
        );
        r.register("berth_scrub_runs", "Scrubs completed", self.scrub_runs.clone());
        r.register(
            "berth_scrub_hashed_bytes",
            "Bytes re-hashed by scrubs",
            self.scrub_bytes.clone(),
        );
        r.register(
            "berth_scrub_last_success_timestamp_seconds",
            "Unix time of the last completed scrub",
            self.scrub_last_success.clone(),
        );
        r.register(
            "berth_integrity_problems",
            "Problems the last scrub found and left unrepaired, by kind and repository kind",
            self.integrity_problems.clone(),
        );
        r.register(
            "berth_integrity_repaired",
            "Problems repaired by scrub --repair",
            self.integrity_repaired.clone(),
        );
    }
}

/// Readings of the counters for the web UI. prometheus-client families cannot be iterated,
/// so these look up the label values the registry itself uses.
impl RegistryMetrics {
    /// Cached-repository lookups of `kind` (`manifest`, `blob`) with `result` at `upstream`.
    pub fn cache_count(&self, upstream: &str, kind: &'static str, result: &'static str) -> u64 {
        let l = CacheLabels {
            upstream: upstream.to_string(),
            kind,
            result,
        };
        self.cache.get(&l).map(|c| c.get()).unwrap_or(0)
    }

    /// Blob bytes of `upstream`'s repositories from `source` (`cache` or `upstream`).
    pub fn cache_bytes_of(&self, upstream: &str, source: &'static str) -> u64 {
        let l = CacheBytesLabels {
            upstream: upstream.to_string(),
            source,
        };
        self.cache_bytes.get(&l).map(|c| c.get()).unwrap_or(0)
    }

    /// Failed requests to `upstream` by status label (HTTP statuses and the named kinds).
    pub fn upstream_errors_of(&self, upstream: &str) -> Vec<(String, u64)> {
        let named = ["timeout", "connect", "body", "auth", "invalid"].map(String::from);
        let statuses = (100..600).map(|s: u16| s.to_string());
        named
            .into_iter()
            .chain(statuses)
            .filter_map(|status| {
                let l = UpstreamLabel {
                    upstream: upstream.to_string(),
                    status,
                };
                let n = self.upstream_errors.get(&l).map(|c| c.get()).unwrap_or(0);
                (n > 0).then_some((l.status, n))
            })
            .collect()
    }

    /// Push verifications with `result` (`ok`, `failed`, `error`).
    pub fn push_verifications_of(&self, result: &'static str) -> u64 {
        self.push_verifications
            .get(&ResultLabel { result })
            .map(|c| c.get())
            .unwrap_or(0)
    }
}
