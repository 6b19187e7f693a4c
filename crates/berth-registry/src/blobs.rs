//! Blob reads and link removal. A read checks the stored bytes before it answers: metadata
//! that says yes while the disk says no is an error, never a short 200.

use berth_oci::{Digest, RepoName};
use berth_store::{BlobRead, ByteRange, Removal};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::cache::Located;
use crate::metrics::ProblemLabel;
use crate::{Registry, RegistryError, Result};

pub enum BlobBody {
    /// Bytes from the blob store.
    Stream(BlobRead),
    /// A manifest fetched through the blob endpoint.
    Inline(Bytes),
}

impl Registry {
    /// Size of a blob visible in `repo` (manifests count too, as in CNCF distribution).
    /// The bytes on disk are checked too, so a client told "present" can really fetch it,
    /// and one told "unknown" uploads it again, which heals the store.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        if let Some(size) = self.meta.repo_blob_size(repo, digest).await? {
            let on_disk = self.blobs.stat(digest).await?;
            return self.check_stored(digest, size, on_disk).map(|()| size);
        }
        match self.meta.manifest_by_digest(repo, digest).await? {
            Some(m) => Ok(m.body.len() as u64),
            None => Err(RegistryError::BlobUnknown(digest.clone())),
        }
    }

    /// Where a whole-blob GET of `digest` in `repo` can be redirected: a presigned URL of
    /// the blob store, when redirects are on, the blob is linked into `repo` and its bytes
    /// are stored with the recorded size (the checks a served read makes first). `None`
    /// means "serve it as usual": redirects off, a manifest read through the blob endpoint,
    /// a blob a cache still has to fill, or a store that cannot presign. For a cached
    /// repository the caller passes its local name; a hit counts as one.
    pub async fn blob_redirect(&self, located: &Located, digest: &Digest) -> Result<Option<String>> {
        let Some(ttl) = self.redirect_ttl else {
            return Ok(None);
        };
        let repo = located.local();
        let Some(size) = self.meta.repo_blob_size(repo, digest).await? else {
            return Ok(None);
        };
        let on_store = self.blobs.stat(digest).await?;
        if let Located::Cached(_) = located
            && on_store != Some(size)
        {
            // A damaged cached blob is re-fetched by the usual path, which heals it.
            return Ok(None);
        }
        self.check_stored(digest, size, on_store)?;
        let Some(url) = self.blobs.presigned_url(digest, ttl).await? else {
            return Ok(None);
        };
        if let Located::Cached(c) = located {
            self.count_cache(c, "blob", "hit");
        }
        self.metrics.blob_redirects.inc();
        Ok(Some(url))
    }

    /// Opens a blob for reading, whole or one range. The caller learns the blob's size
    /// first, so it can check a range before asking for it.
    pub async fn open_blob(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
        range: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<(u64, Option<ByteRange>, BlobBody)> {
        let Some(size) = self.meta.repo_blob_size(repo, digest).await? else {
            return match self.meta.manifest_by_digest(repo, digest).await? {
                Some(m) => {
                    let size = m.body.len() as u64;
                    let r = range(size)?;
                    let mut body = Bytes::from(m.body);
                    if let Some(r) = r {
                        body = body.slice(r.start as usize..=r.end as usize);
                    }
                    Ok((size, r, BlobBody::Inline(body)))
                }
                None => Err(RegistryError::BlobUnknown(digest.clone())),
            };
        };
        let r = range(size)?;
        let verify = r.is_none() && self.verify_on_read;
        let read = if verify {
            self.blobs.open_verified(digest).await?
        } else {
            self.blobs.open(digest, r).await?
        };
        self.check_stored(digest, size, read.as_ref().map(|r| r.size))?;
        let mut read = read.expect("checked present");
        if verify {
            read.body = self.quarantine_on_mismatch(digest.clone(), read.body);
        }
        Ok((size, r, BlobBody::Stream(read)))
    }

    /// A verified read that finds bytes hashing wrong (its stream ends in `InvalidData`
    /// before the last bytes) takes the blob out of service: quarantined, forgotten,
    /// logged and counted, so the next request answers 404 and a client re-push heals it.
    fn quarantine_on_mismatch(
        self: &Arc<Self>,
        digest: Digest,
        body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        let registry = self.clone();
        body.inspect(move |chunk| {
            if let Err(e) = chunk
                && e.kind() == std::io::ErrorKind::InvalidData
            {
                tracing::error!(%digest, error = %e, "blob bytes are corrupt; quarantining");
                registry
                    .metrics
                    .blob_read_errors
                    .get_or_create(&ProblemLabel {
                        problem: "digest_mismatch",
                    })
                    .inc();
                let (registry, digest) = (registry.clone(), digest.clone());
                tokio::spawn(async move {
                    let result = async {
                        let _bytes = registry.lock_bytes([&digest]).await?;
                        let quarantined = registry.blobs.quarantine(&digest).await;
                        let dropped = registry.meta.drop_blob(&digest).await;
                        quarantined
                            .map(drop)
                            .map_err(RegistryError::from)
                            .and(dropped.map_err(Into::into))
                    }
                    .await;
                    if let Err(e) = result {
                        tracing::error!(%digest, error = %e, "could not quarantine a corrupt blob");
                    }
                });
            }
        })
        .boxed()
    }

    /// Metadata says `size` bytes; the store has `on_disk`. Any disagreement is logged,
    /// counted and refused.
    fn check_stored(&self, digest: &Digest, size: u64, on_disk: Option<u64>) -> Result<()> {
        let problem = match on_disk {
            Some(n) if n == size => return Ok(()),
            Some(n) => {
                tracing::error!(%digest, recorded = size, on_disk = n, "blob bytes on disk have the wrong size; refusing to serve");
                "size_mismatch"
            }
            None => {
                tracing::error!(%digest, "blob is recorded but its bytes are missing; refusing to serve");
                "missing"
            }
        };
        self.metrics
            .blob_read_errors
            .get_or_create(&ProblemLabel { problem })
            .inc();
        Err(RegistryError::BlobDamaged(digest.clone()))
    }

    /// Removes a blob from `repo` (its link), unless a manifest there still uses it. The
    /// bytes stay while anything else uses them.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        match self.meta.unlink_blob(repo, digest).await? {
            Removal::Done => Ok(()),
            Removal::NotFound => Err(RegistryError::BlobUnknown(digest.clone())),
            Removal::ReferencedBy(manifest) => Err(RegistryError::BlobReferenced {
                blob: digest.clone(),
                manifest,
            }),
        }
    }
}
