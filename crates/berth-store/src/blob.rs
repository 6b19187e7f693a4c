//! The blob store: immutable bytes addressed by digest, and upload areas that become blobs.

use async_trait::async_trait;
use berth_oci::{Digest, DigestHasher, UploadId};
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::Result;

/// An inclusive byte range `[start, end]` within a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// An open blob: the size of the whole blob as stored, and a stream of the requested bytes.
/// The stream ends with an error (never early) if the bytes on disk turn out shorter.
pub struct BlobRead {
    pub size: u64,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Writes appended to an upload area, hashed as they pass.
#[async_trait]
pub trait BlobSink: Send {
    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()>;
    /// The upload's size on the store so far: bytes readers of the upload area can see.
    fn progress(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Flushes and returns the upload's total size and the hash state over all its bytes.
    async fn finish(self: Box<Self>) -> std::io::Result<(u64, DigestHasher)>;
}

/// A reader of one upload area, by position.
#[async_trait]
pub trait UploadReader: Send + Sync {
    async fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Bytes>;
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Creates an empty upload area.
    async fn create_upload(&self, id: &UploadId) -> Result<()>;
    /// Opens an upload area for appending at `offset` (anything after it, left by an
    /// interrupted request, is discarded). `hasher` covers bytes `[0, offset)`.
    async fn append(&self, id: &UploadId, offset: u64, hasher: DigestHasher) -> Result<Box<dyn BlobSink>>;
    /// [`BlobStore::append`] for an upload that readers follow while it is written (a
    /// cache fill): its bytes reach [`BlobStore::read_upload`] and the sink's progress
    /// soon after they are written. A plain `append` may hold them back until `finish`
    /// when that makes the commit cheaper (S3 writes one object per append then, and
    /// commits it with one server-side copy). Stores whose writes are visible at once
    /// need not override it.
    async fn append_followed(
        &self,
        id: &UploadId,
        offset: u64,
        hasher: DigestHasher,
    ) -> Result<Box<dyn BlobSink>> {
        self.append(id, offset, hasher).await
    }
    /// Reads up to `max` bytes of an upload area from `offset` (to serve a blob while it
    /// is still arriving). Readers that started before the upload was committed keep
    /// reading the same bytes after the commit.
    async fn read_upload(&self, id: &UploadId) -> Result<Box<dyn UploadReader>>;
    /// Re-hashes the first `len` bytes of an upload area (after a restart).
    async fn hash_upload(&self, id: &UploadId, len: u64, hasher: DigestHasher) -> Result<DigestHasher>;
    /// Makes the upload durable and moves it into place as `digest`. The caller has
    /// verified the digest; after this returns the bytes survive a crash.
    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<()>;
    /// Ids of every upload area present (to reconcile with the metadata after a crash).
    async fn upload_ids(&self) -> Result<Vec<UploadId>>;
    /// Drops an upload area (missing is fine).
    async fn abort_upload(&self, id: &UploadId) -> Result<()>;
    /// Size of the stored blob, if its bytes exist.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Opens a blob for reading, all of it or one range. `None` if the bytes are missing.
    async fn open(&self, digest: &Digest, range: Option<ByteRange>) -> Result<Option<BlobRead>>;
    /// Opens a whole blob for reading while hashing it: the stream's last bytes come only
    /// if the bytes hash to `digest`; otherwise it ends with an `InvalidData` error.
    async fn open_verified(&self, digest: &Digest) -> Result<Option<BlobRead>>;
    /// Moves a blob's bytes out of service into quarantine (kept for inspection, never
    /// served). Returns false when there were no bytes.
    async fn quarantine(&self, digest: &Digest) -> Result<bool>;
    /// Deletes a blob's bytes (missing is fine).
    async fn delete(&self, digest: &Digest) -> Result<()>;
    /// Deletes many blobs' bytes (missing is fine).
    async fn delete_many(&self, digests: &[Digest]) -> Result<()> {
        for d in digests {
            self.delete(d).await?;
        }
        Ok(())
    }
    /// Proves the store can take writes now (for readiness).
    async fn check_writable(&self) -> Result<()>;
    /// A URL from which a client can GET the whole blob directly for `ttl` (an S3
    /// presigned URL), so its bytes bypass the registry. `None` when this store cannot hand
    /// one out (the filesystem). Signed, not checked: ask only for blobs known to exist.
    async fn presigned_url(&self, digest: &Digest, ttl: std::time::Duration) -> Result<Option<String>> {
        let _ = (digest, ttl);
        Ok(None)
    }
}
