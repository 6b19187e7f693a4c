//! Uploads: sessions that receive bytes in one or more requests and become blobs once
//! their digest is verified.

use std::collections::HashSet;

use berth_oci::{Algorithm, Digest, DigestHasher, RepoName, UploadId};
use berth_store::{StoreError, UploadRow};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::metrics::HashLabel;
use crate::{Registry, RegistryError, Result};

/// How often a long request body marks its upload session active.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A row without an area younger than this may be a session another replica is creating
/// right now (row first, then area), so recovery leaves it to upload expiry.
const RECOVERY_ROW_GRACE_SECS: i64 = 120;

/// Releases an upload's busy mark when a request ends, however it ends, and with it the
/// upload's lock across replicas.
struct BusyGuard<'a> {
    registry: &'a Registry,
    id: UploadId,
    across: Option<berth_store::LockGuard>,
}

impl BusyGuard<'_> {
    /// Ends the claim before the response goes out: the client's next request for this
    /// upload (its next chunk, perhaps at another replica) must find it free, and dropping
    /// a PostgreSQL lock releases it only moments later.
    async fn release(mut self) {
        if let Some(across) = self.across.take() {
            across.release().await;
        }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.registry.busy.lock().unwrap().remove(&self.id);
    }
}

/// An upload area that vanished (expired or cancelled between the row lookup and now)
/// means the upload is unknown, not that storage failed.
fn area_error(id: &UploadId, e: StoreError) -> RegistryError {
    match e {
        StoreError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            RegistryError::UploadUnknown(id.clone())
        }
        e => e.into(),
    }
}

impl Registry {
    /// Opens an upload session in `repo`.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId::parse(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid upload id");
        // The row first, then the area: recovery on a replica starting right now deletes
        // areas no row knows, so an area must never exist before its row.
        self.meta.create_upload(&id, repo, self.clock.now()).await?;
        if let Err(e) = self.blobs.create_upload(&id).await {
            let _ = self.meta.delete_upload(&id).await;
            return Err(e.into());
        }
        Ok(id)
    }

    async fn upload_row(&self, repo: &RepoName, id: &UploadId) -> Result<UploadRow> {
        match self.meta.upload(id).await? {
            Some(row) if row.repo == *repo => Ok(row),
            _ => Err(RegistryError::UploadUnknown(id.clone())),
        }
    }

    /// Bytes received so far.
    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        Ok(self.upload_row(repo, id).await?.size)
    }

    /// Marks the upload as being written by this request: refused while another request
    /// writes to it, in this process or (with `across`) in another replica
    /// (`Coordination::try_lock_upload`). `across` is false only for an upload this request
    /// created, whose id nobody else knows yet.
    async fn claim(&self, id: &UploadId, across: bool) -> Result<BusyGuard<'_>> {
        let refused = || {
            RegistryError::UploadInvalid(format!(
                "another request is writing to upload {id}; send chunks one at a time"
            ))
        };
        if !self.busy.lock().unwrap().insert(id.clone()) {
            return Err(refused());
        }
        let mut guard = BusyGuard {
            registry: self,
            id: id.clone(),
            across: None,
        };
        if across {
            // Dropping `guard` on a refusal or an error clears the mark taken above.
            guard.across = Some(self.meta.try_lock_upload(id).await?.ok_or_else(refused)?);
        }
        Ok(guard)
    }

    /// Runs `work` (a request on upload `id`) while holding the upload, here and across
    /// replicas, and releases it before the response goes out.
    async fn while_claimed<T>(&self, id: &UploadId, work: impl Future<Output = Result<T>>) -> Result<T> {
        let busy = self.claim(id, true).await?;
        let result = work.await;
        busy.release().await;
        result
    }

    /// A hasher for a new upload: one whose state can be saved in the metadata store when
    /// other replicas share it (the next chunk may arrive at any of them), else ring's,
    /// which is faster.
    fn upload_hasher(&self) -> DigestHasher {
        if self.meta.shared() {
            DigestHasher::resumable(Algorithm::Sha256)
        } else {
            DigestHasher::new(Algorithm::Sha256)
        }
    }

    /// The hash state of the upload's first `row.size` bytes: this process's if it hashed
    /// the last chunk, else the one saved in the row (by another replica), else rebuilt by
    /// reading the bytes back. A state is valid only for the exact size it was taken at.
    async fn upload_hash(&self, row: &UploadRow) -> Result<DigestHasher> {
        let cached = self.hashers.lock().unwrap().remove(&row.id);
        let saved = || {
            row.hash_state
                .as_deref()
                .and_then(|s| DigestHasher::restore(Algorithm::Sha256, s))
        };
        let (from, hasher) = match cached {
            Some((n, h, _)) if n == row.size => ("memory", h),
            _ => match saved() {
                Some(h) => ("saved", h),
                None => {
                    let h = self
                        .blobs
                        .hash_upload(&row.id, row.size, self.upload_hasher())
                        .await
                        .map_err(|e| area_error(&row.id, e))?;
                    (if row.size == 0 { "new" } else { "rehashed" }, h)
                }
            },
        };
        self.metrics
            .upload_appends
            .get_or_create(&HashLabel { hash: from })
            .inc();
        Ok(hasher)
    }

    /// Appends a body to the upload; returns the new size and hash state.
    async fn append<S, E>(&self, row: &UploadRow, body: S) -> Result<(u64, DigestHasher)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let hasher = self.upload_hash(row).await?;
        let mut sink = self
            .blobs
            .append(&row.id, row.size, hasher)
            .await
            .map_err(|e| area_error(&row.id, e))?;
        let limit = self.limits.max_blob_bytes;
        let mut size = row.size;
        let mut touched = std::time::Instant::now();
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                RegistryError::UploadInvalid(format!(
                    "the request body ended early ({e}); the upload still holds {} bytes, resume from there",
                    row.size
                ))
            })?;
            // Checked before the bytes are written, so an endless body stops at the limit
            // instead of filling the disk.
            size += chunk.len() as u64;
            if limit > 0 && size > limit {
                return Err(RegistryError::BlobTooLarge { limit });
            }
            sink.write(chunk).await.map_err(StoreError::from)?;
            // A long body marks the session active now and then: upload expiry on another
            // replica cannot see that this one is writing to it.
            if touched.elapsed() >= TOUCH_EVERY {
                touched = std::time::Instant::now();
                self.meta
                    .set_upload_size(&row.id, row.size, self.clock.now())
                    .await?;
            }
        }
        let (size, hasher) = sink.finish().await.map_err(StoreError::from)?;
        Ok((size, hasher))
    }

    /// [`Registry::append`]; a session that would outgrow `limits.max_blob_bytes` is
    /// removed, since its size only grows and it could never become an acceptable blob.
    async fn append_within_limit<S, E>(&self, row: &UploadRow, body: S) -> Result<(u64, DigestHasher)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        match self.append(row, body).await {
            Err(e @ RegistryError::BlobTooLarge { .. }) => {
                self.cancel_upload_row(&row.id).await?;
                Err(e)
            }
            other => other,
        }
    }

    /// Appends one chunk (PATCH). `range` is the request's Content-Range, if it sent one.
    pub async fn upload_chunk<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.while_claimed(id, self.append_chunk(repo, id, range, body))
            .await
    }

    async fn append_chunk<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let row = self.upload_row(repo, id).await?;
        if let Some((start, end)) = range {
            if start != row.size {
                return Err(RegistryError::UploadOutOfOrder {
                    id: id.clone(),
                    expected: row.size,
                    got: start,
                });
            }
            if end < start {
                return Err(RegistryError::SizeInvalid(format!(
                    "Content-Range {start}-{end} ends before it starts"
                )));
            }
            let limit = self.limits.max_blob_bytes;
            if limit > 0 && end >= limit {
                self.cancel_upload_row(id).await?;
                return Err(RegistryError::BlobTooLarge { limit });
            }
        }
        let (size, hasher) = self.append_within_limit(&row, body).await?;
        if let Some((start, end)) = range {
            let got = size - row.size;
            if got != end - start + 1 {
                return Err(RegistryError::SizeInvalid(format!(
                    "Content-Range {start}-{end} announced {} bytes but the body had {got}",
                    end - start + 1
                )));
            }
        }
        let now = self.clock.now();
        // Saved with its size for whichever replica gets the next chunk (only a resumable
        // hasher, used when replicas share the store, can be saved).
        match hasher.save() {
            Some(state) => self.meta.save_upload_state(id, size, &state, now).await?,
            None => self.meta.set_upload_size(id, size, now).await?,
        }
        self.hashers
            .lock()
            .unwrap()
            .insert(id.clone(), (size, hasher, now));
        Ok(size)
    }

    /// Completes an upload (PUT ?digest=), with an optional last chunk. The bytes become a
    /// blob only if they hash to `digest`.
    pub async fn finish_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.while_claimed(id, self.finish_claimed(repo, id, digest, body))
            .await
    }

    /// [`Registry::finish_upload`] of an upload the caller has claimed.
    async fn finish_claimed<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let row = self.upload_row(repo, id).await?;
        let (size, mut hasher) = self.append_within_limit(&row, body).await?;
        if digest.algorithm() != hasher.algorithm() {
            hasher = self
                .blobs
                .hash_upload(id, size, DigestHasher::new(digest.algorithm()))
                .await
                .map_err(|e| area_error(id, e))?;
        }
        let actual = hasher.finish();
        if actual != *digest {
            self.metrics.digest_mismatches.inc();
            self.cancel_upload_row(id).await?;
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        {
            let _bytes = self.lock_bytes([digest]).await?;
            self.blobs.commit_upload(id, digest).await?;
            self.meta
                .commit_blob(repo, digest, size, Some(id), self.clock.now())
                .await?;
        }
        self.metrics.blobs_committed.inc();
        self.metrics.bytes_committed.inc_by(size);
        Ok(size)
    }

    /// A whole blob in one request (POST ?digest=).
    pub async fn upload_monolithic<S, E>(&self, repo: &RepoName, digest: &Digest, body: S) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = self.start_upload(repo).await?;
        // Nobody else knows the new id yet: the in-process mark is enough.
        let result = match self.claim(&id, false).await {
            Ok(_busy) => self.finish_claimed(repo, &id, digest, body).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // A one-shot upload cannot be resumed; don't leave it behind.
            let _ = self.cancel_upload_row(&id).await;
        }
        result
    }

    /// Cancels an upload (DELETE).
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.while_claimed(id, async {
            self.upload_row(repo, id).await?;
            self.cancel_upload_row(id).await
        })
        .await
    }

    /// Forgets an upload: its row first, then its area (an area without a row is what
    /// recovery deletes; a row without an area would look live to other replicas).
    pub(crate) async fn cancel_upload_row(&self, id: &UploadId) -> Result<()> {
        self.hashers.lock().unwrap().remove(id);
        self.meta.delete_upload(id).await?;
        self.blobs.abort_upload(id).await?;
        Ok(())
    }

    /// Cross-repository mount: links a blob already held elsewhere into `repo`.
    /// Returns its size, or `None` when there is nothing to mount.
    pub async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>> {
        Ok(self.meta.link_blob(repo, digest, from, self.clock.now()).await?)
    }

    /// Reconciles upload areas with upload rows after a restart: an area without a row
    /// (a crash while one was cancelled) is deleted, and so is a row without an area idle
    /// for a while (a crash between moving finished bytes into place and recording them).
    /// Returns how many of each were removed.
    ///
    /// Safe while other replicas share the stores: a session's row is written before its
    /// area and deleted before it (fills too), and the areas are listed before the rows,
    /// so an area no listed row knows is dead; a young row without an area may be one
    /// being created elsewhere and is left alone.
    pub async fn recover_uploads(&self) -> Result<(usize, usize)> {
        let on_disk: HashSet<UploadId> = self.blobs.upload_ids().await?.into_iter().collect();
        let rows: HashSet<UploadId> = self
            .meta
            .uploads_idle_since(i64::MAX)
            .await?
            .into_iter()
            .collect();
        let idle: HashSet<UploadId> = self
            .meta
            .uploads_idle_since(self.clock.now() - RECOVERY_ROW_GRACE_SECS)
            .await?
            .into_iter()
            .collect();
        let (mut areas, mut stale_rows) = (0, 0);
        for id in on_disk.difference(&rows) {
            self.blobs.abort_upload(id).await?;
            areas += 1;
        }
        for id in rows.difference(&on_disk).filter(|id| idle.contains(*id)) {
            self.meta.delete_upload(id).await?;
            stale_rows += 1;
        }
        Ok((areas, stale_rows))
    }

    /// Removes upload sessions idle for longer than `max_idle_secs`; returns how many.
    pub async fn expire_uploads(&self, max_idle_secs: i64) -> Result<usize> {
        let cutoff = self.clock.now() - max_idle_secs;
        // Saved hash states of sessions that went on (or ended) on another replica.
        self.hashers
            .lock()
            .unwrap()
            .retain(|_, (_, _, saved)| *saved >= cutoff);
        let ids = self.meta.uploads_idle_since(cutoff).await?;
        let mut n = 0;
        for id in ids {
            // Claimed like a request would, so a session being written to (here or on
            // another replica) is left alone, and no request starts on it meanwhile.
            let busy = match self.claim(&id, true).await {
                Ok(busy) => busy,
                Err(RegistryError::UploadInvalid(_)) => continue,
                Err(e) => return Err(e),
            };
            let cancelled = self.cancel_upload_row(&id).await;
            busy.release().await;
            cancelled?;
            self.metrics.uploads_expired.inc();
            n += 1;
        }
        Ok(n)
    }
}
