//! Blob reads and link removal. A read checks the stored bytes before it answers: metadata
//! that says yes while the disk says no is an error, never a short 200.

use berth_oci::{Digest, RepoName};
use berth_store::{BlobRead, ByteRange, Removal};
use bytes::Bytes;

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

    /// Opens a blob for reading, whole or one range. The caller learns the blob's size
    /// first, so it can check a range before asking for it.
    pub async fn open_blob(
        &self,
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
        let read = self.blobs.open(digest, r).await?;
        self.check_stored(digest, size, read.as_ref().map(|r| r.size))?;
        Ok((size, r, BlobBody::Stream(read.expect("checked present"))))
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
