//! Cache eviction: whole cached images go, least recently pulled first, until the cache
//! is under its byte budget; images unpulled for too long go too. Garbage collection in
//! the same transaction removes what only they used, never a blob another repository
//! (hosted or cached) still references.

use std::time::Duration;

use berth_store::Deletion;

use super::gc::{GcOutcome, Grace};
use crate::runs::Job;
use crate::{Registry, Result};

#[derive(Clone, Copy, Debug, Default)]
pub struct EvictionPolicy {
    /// Budget for bytes held by cached repositories; `None`: unlimited.
    pub max_bytes: Option<u64>,
    /// Images not pulled for this long go.
    pub evict_unpulled_after: Option<Duration>,
}

#[derive(Debug)]
pub struct EvictionOutcome {
    /// (repository, tag) of the images evicted.
    pub images: Vec<(String, String)>,
    pub cached_bytes_before: u64,
    pub gc: GcOutcome,
}

impl Registry {
    /// Evicts cached images by the policy, then collects what only they used.
    pub async fn evict(
        &self,
        policy: EvictionPolicy,
        grace: Grace,
        dry_run: bool,
    ) -> Result<EvictionOutcome> {
        let started = std::time::Instant::now();
        let out = self.evict_once(policy, grace, dry_run).await;
        self.note_run(Job::Evict, dry_run, &out, started.elapsed(), |o| {
            format!(
                "{} images evicted (cache held {} bytes); then {}",
                o.images.len(),
                o.cached_bytes_before,
                o.gc.summary()
            )
        });
        out
    }

    async fn evict_once(
        &self,
        policy: EvictionPolicy,
        grace: Grace,
        dry_run: bool,
    ) -> Result<EvictionOutcome> {
        let _turn = self.lifecycle_turn().await?;
        let now = self.clock.now();
        // Every tag of every cached repository, least recently used first.
        let mut images = Vec::new();
        for (repo, cached) in self.meta.repositories_by_kind().await? {
            if !cached {
                continue;
            }
            for t in self.meta.tag_details(&repo).await? {
                let used = t.last_pulled.unwrap_or(t.updated_at).max(t.updated_at);
                images.push((used, repo.clone(), t.name));
            }
        }
        images.sort();
        let before = self.meta.cached_bytes().await?;
        let mut chosen: Vec<(String, String)> = Vec::new();
        if let Some(after) = policy.evict_unpulled_after {
            let cutoff = now - after.as_secs() as i64;
            chosen.extend(
                images
                    .iter()
                    .filter(|i| i.0 < cutoff)
                    .map(|i| (i.1.clone(), i.2.clone())),
            );
        }
        let deletions = |chosen: &[(String, String)]| -> Vec<Deletion> {
            chosen
                .iter()
                .map(|(repo, tag)| Deletion::Tag {
                    repo: repo.clone(),
                    tag: tag.clone(),
                })
                .collect()
        };
        // Cached content evicted now need not wait out a grace period.
        let evicting = Grace {
            hosted: grace.hosted,
            cached: Duration::ZERO,
        };
        if let Some(budget) = policy.max_bytes {
            // The fewest least-recently-used images whose eviction makes the cache fit,
            // each candidate checked by a dry collection: exponential, then binary search.
            let lru: Vec<(String, String)> = images.iter().map(|i| (i.1.clone(), i.2.clone())).collect();
            let with = |k: usize| {
                let mut set = chosen.clone();
                for i in &lru[..k] {
                    if !set.contains(i) {
                        set.push(i.clone());
                    }
                }
                set
            };
            let fits = async |k: usize| -> Result<bool> {
                let report = self.collect(&deletions(&with(k)), evicting, true).await?.report;
                Ok(report.cached_bytes_after <= budget)
            };
            if !fits(0).await? {
                let (mut lo, mut hi) = (0, 1.min(lru.len()));
                while hi < lru.len() && !fits(hi).await? {
                    lo = hi;
                    hi = (hi * 2).min(lru.len());
                }
                // fits(hi) holds, or hi is everything; fits(lo) does not.
                while hi - lo > 1 {
                    let mid = (lo + hi) / 2;
                    if fits(mid).await? {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                chosen = with(hi);
            }
        }
        let gc = self.collect(&deletions(&chosen), evicting, dry_run).await?;
        if !dry_run {
            self.metrics.evicted_images.inc_by(chosen.len() as u64);
        }
        tracing::info!(
            dry_run,
            images = chosen.len(),
            cached_bytes = before,
            freed = gc.bytes_freed,
            "cache eviction"
        );
        if !dry_run {
            self.record_run("evict", gc.took);
        }
        Ok(EvictionOutcome {
            images: chosen,
            cached_bytes_before: before,
            gc,
        })
    }
}
