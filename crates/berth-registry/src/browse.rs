//! Reads for browsing (the web UI): listings with aggregates, manifests without counting
//! a pull, small blobs such as image configs.

use std::sync::Arc;

use berth_oci::{Digest, RepoName};
use berth_store::{CachedTag, RepoSummary, StorageStats, TagInfo};
use futures_util::StreamExt;

use crate::{BlobBody, Registry, RegistryError, Result, StoredManifest};

impl Registry {
    /// Every repository holding a manifest, with its tag count, bytes and times.
    pub async fn repository_summaries(&self) -> Result<Vec<RepoSummary>> {
        Ok(self.meta.repository_summaries().await?)
    }

    /// Tags of `repo` with their manifest digests and times, most recently pushed first.
    pub async fn tag_details(&self, repo: &RepoName) -> Result<Vec<TagInfo>> {
        Ok(self.meta.tag_details(repo.as_str()).await?)
    }

    /// Every tag of every cached repository, with when its upstream last confirmed it.
    pub async fn cached_tags(&self) -> Result<Vec<CachedTag>> {
        Ok(self.meta.cached_tags().await?)
    }

    pub async fn storage_stats(&self) -> Result<StorageStats> {
        Ok(self.meta.storage_stats().await?)
    }

    /// A stored manifest by digest; looking at it is not a pull (retention and eviction
    /// go by pulls).
    pub async fn peek_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        Ok(self.meta.manifest_by_digest(repo, digest).await?)
    }

    /// The bytes of a small blob of `repo` (an image config), through the pull path (sizes
    /// and, with verify-on-read, digests checked). `None` when it is not held here or is
    /// larger than `max` bytes.
    pub async fn small_blob(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
        max: u64,
    ) -> Result<Option<Vec<u8>>> {
        match self.meta.repo_blob_size(repo, digest).await? {
            Some(size) if size <= max => {}
            _ => return Ok(None),
        }
        let (_, _, body) = match self.open_blob(repo, digest, |_| Ok(None)).await {
            Ok(b) => b,
            Err(RegistryError::BlobUnknown(_) | RegistryError::BlobDamaged(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match body {
            BlobBody::Inline(b) => Ok(Some(b.to_vec())),
            BlobBody::Stream(mut r) => {
                let mut out = Vec::with_capacity(r.size as usize);
                while let Some(chunk) = r.body.next().await {
                    out.extend_from_slice(&chunk.map_err(|e| RegistryError::Store(e.into()))?);
                }
                Ok(Some(out))
            }
        }
    }
}
