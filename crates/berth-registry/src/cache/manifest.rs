//! Manifests of cached repositories: immutable by digest, revalidated by tag.

use berth_oci::{Digest, Reference, Tag};
use berth_upstream::UpstreamError;

use super::CachedRepo;
use crate::metrics::CacheLabels;
use crate::{Registry, RegistryError, Result, StoredManifest};

/// A manifest as served from a cache.
pub struct Served {
    pub manifest: StoredManifest,
    /// The upstream could not confirm it (down, erroring, or no longer has the tag); it is
    /// served from the cache within `stale_if_error`.
    pub stale: bool,
}

impl Registry {
    pub async fn cached_manifest(&self, c: &CachedRepo, reference: &Reference) -> Result<Served> {
        let served = self.cached_manifest_inner(c, reference).await?;
        self.note_pull(&c.local, &served.manifest);
        Ok(served)
    }

    async fn cached_manifest_inner(&self, c: &CachedRepo, reference: &Reference) -> Result<Served> {
        let fresh = |manifest| Served {
            manifest,
            stale: false,
        };
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = self.meta.manifest_by_digest(&c.local, d).await? {
                    self.count_cache(c, "manifest", "hit");
                    return Ok(fresh(m));
                }
                self.count_cache(c, "manifest", "miss");
                self.fetch_manifest(c, reference, Some(d), None).await.map(fresh)
            }
            Reference::Tag(t) => {
                let Some(m) = self.meta.manifest_by_tag(&c.local, t).await? else {
                    self.count_cache(c, "manifest", "miss");
                    return self.fetch_manifest(c, reference, None, Some(t)).await.map(fresh);
                };
                let age = self.clock.now() - m.tag_checked_at.unwrap_or(0);
                if age < c.source.manifest_ttl.as_secs() as i64 {
                    self.count_cache(c, "manifest", "hit");
                    return Ok(fresh(m));
                }
                // Older than the TTL: ask the upstream, cheaply, by digest.
                let checked = match c.source.client.head_manifest(&c.remote, reference).await {
                    Ok(head) if head.digest == m.digest => {
                        self.meta.touch_tag(&c.local, t, self.clock.now()).await?;
                        self.count_cache(c, "manifest", "revalidated");
                        return Ok(fresh(m));
                    }
                    Ok(head) => {
                        self.count_cache(c, "manifest", "moved");
                        let by_digest = Reference::Digest(head.digest.clone());
                        self.fetch_manifest(c, &by_digest, Some(&head.digest), Some(t))
                            .await
                    }
                    Err(e) => Err(self.upstream_failed(c, e, "manifest", t.as_str())),
                };
                match checked {
                    Ok(new) => Ok(fresh(new)),
                    Err(e) => self.serve_stale(c, t, m, age, e),
                }
            }
        }
    }

    /// The upstream could not confirm a cached tag: serve the cached copy while within
    /// `stale_if_error`, or when the upstream says the tag is gone (a 404 never deletes
    /// what the cache holds).
    fn serve_stale(
        &self,
        c: &CachedRepo,
        tag: &Tag,
        manifest: StoredManifest,
        age: i64,
        error: RegistryError,
    ) -> Result<Served> {
        let gone = matches!(error, RegistryError::UpstreamNotFound { .. });
        if gone || age < c.source.stale_if_error.as_secs() as i64 {
            tracing::warn!(repo = %c.local, %tag, %error, "serving the cached manifest: the upstream could not confirm it");
            self.count_cache(c, "manifest", "stale");
            return Ok(Served {
                manifest,
                stale: true,
            });
        }
        Err(error)
    }

    /// Fetches a manifest from the upstream, verifies it, stores it (moving `tag` to it).
    async fn fetch_manifest(
        &self,
        c: &CachedRepo,
        reference: &Reference,
        digest: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<StoredManifest> {
        let limit = self.limits.max_manifest_bytes;
        let (head, body) = c
            .source
            .client
            .get_manifest(&c.remote, reference, limit)
            .await
            .map_err(|e| self.upstream_failed(c, e, "manifest", &reference.to_string()))?;
        if let Some(d) = digest
            && *d != head.digest
        {
            return Err(RegistryError::UpstreamInvalid {
                upstream: c.source.name.clone(),
                message: format!("asked for manifest {d}, received {}", head.digest),
            });
        }
        let now = self.clock.now();
        self.meta.mark_cached(&c.local, &c.source.name, now).await?;
        let stored = self
            .store_manifest(
                &c.local,
                Some(&head.digest),
                tag,
                Some(&head.media_type),
                &body,
                false,
            )
            .await?;
        Ok(StoredManifest {
            digest: stored.digest,
            media_type: stored.media_type,
            subject: stored.subject,
            body: body.to_vec(),
            tag_checked_at: Some(now),
            last_pulled: None,
        })
    }

    /// Maps an upstream failure to the domain, counting it.
    pub(crate) fn upstream_failed(
        &self,
        c: &CachedRepo,
        e: UpstreamError,
        what: &'static str,
        reference: &str,
    ) -> RegistryError {
        let upstream = c.source.name.clone();
        if e.is_not_found() {
            return RegistryError::UpstreamNotFound {
                upstream,
                what,
                reference: format!("{}:{reference}", c.remote),
            };
        }
        let label = match &e {
            UpstreamError::Status { status, .. } => status.to_string(),
            UpstreamError::NotFound { .. } => "404".into(),
            UpstreamError::TooManyRequests { .. } => "429".into(),
            UpstreamError::Timeout(_) => "timeout".into(),
            UpstreamError::Connect(_) => "connect".into(),
            UpstreamError::Body(_) => "body".into(),
            UpstreamError::Auth(_) => "auth".into(),
            UpstreamError::Invalid(_) => "invalid".into(),
        };
        self.metrics
            .upstream_errors
            .get_or_create(&crate::metrics::UpstreamLabel {
                upstream: upstream.clone(),
                status: label,
            })
            .inc();
        let status = match &e {
            UpstreamError::Status { status, .. } => Some(*status),
            UpstreamError::TooManyRequests { .. } => Some(429),
            _ => None,
        };
        RegistryError::Upstream {
            upstream,
            status,
            timeout: matches!(e, UpstreamError::Timeout(_)),
            message: e.to_string(),
        }
    }

    pub(crate) fn count_cache_bytes(&self, c: &CachedRepo, source: &'static str, n: u64) {
        self.metrics
            .cache_bytes
            .get_or_create(&crate::metrics::CacheBytesLabels {
                upstream: c.source.name.clone(),
                source,
            })
            .inc_by(n);
    }

    pub(crate) fn count_cache(&self, c: &CachedRepo, kind: &'static str, result: &'static str) {
        self.metrics
            .cache
            .get_or_create(&CacheLabels {
                upstream: c.source.name.clone(),
                kind,
                result,
            })
            .inc();
    }
}
