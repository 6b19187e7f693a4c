//! Blob fills: one upstream fetch per digest at a time, streamed to every waiting client.
//!
//! The first request for a blob the cache lacks starts a fill: the upstream body streams
//! into an upload area through the blob store (hashed as it is written), and every
//! request for that digest, first or concurrent, reads the growing area as bytes arrive.
//! Readers never get the last byte before the digest verifies, so a failed fill (short
//! body, wrong bytes, reset, timeout) ends every response with an error, never with a
//! complete wrong body. Nothing of a failed fill is kept; the next request starts anew.
//!
//! Replicas sharing one metadata store and one bucket fill a digest once between them:
//! a fill takes `Coordination::lock_fill` before it asks the upstream, and a replica that
//! got the lock after another one held it first looks whether the blob was committed
//! meanwhile and, if so, serves it from the store. The lock lives in a PostgreSQL session,
//! so a replica that dies mid-fill releases it; its upload row and area (never a blob)
//! stay until upload expiry removes them.

use std::io;
use std::sync::Arc;

use berth_oci::{Digest, DigestHasher, UploadId};
use berth_store::{ByteRange, StoreError, UploadReader};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;

use super::CachedRepo;
use crate::blobs::BlobBody;
use crate::metrics::{FillLabels, UpstreamName};
use crate::{Registry, RegistryError, Result};

/// Largest piece handed to a client at a time.
const CHUNK: usize = 512 << 10;

pub(crate) struct Fill {
    state: watch::Sender<FillState>,
}

#[derive(Clone, Default)]
struct FillState {
    /// The upstream's Content-Length, once it answered.
    size: Option<u64>,
    upload: Option<UploadId>,
    /// Bytes written to the upload area so far.
    progress: Option<watch::Receiver<u64>>,
    done: Option<std::result::Result<(), FillError>>,
}

/// Why a fill failed, kept so every waiting reader gets the same answer.
#[derive(Clone, Debug)]
struct FillError {
    upstream: String,
    status: Option<u16>,
    timeout: bool,
    not_found: Option<String>,
    /// Refused for want of a turn: (limit, time waited).
    busy: Option<(usize, std::time::Duration)>,
    message: String,
}

impl FillError {
    fn of(e: &RegistryError) -> FillError {
        let mut f = FillError {
            upstream: String::new(),
            status: None,
            timeout: false,
            not_found: None,
            busy: None,
            message: e.to_string(),
        };
        match e {
            RegistryError::Upstream {
                upstream,
                status,
                timeout,
                message,
            } => {
                f.upstream = upstream.clone();
                f.status = *status;
                f.timeout = *timeout;
                f.message = message.clone();
            }
            RegistryError::UpstreamNotFound {
                upstream, reference, ..
            } => {
                f.upstream = upstream.clone();
                f.not_found = Some(reference.clone());
            }
            RegistryError::UpstreamInvalid { upstream, .. } => f.upstream = upstream.clone(),
            RegistryError::FillsBusy { limit, waited } => f.busy = Some((*limit, *waited)),
            _ => {}
        }
        f
    }

    fn to_error(&self) -> RegistryError {
        if let Some((limit, waited)) = self.busy {
            return RegistryError::FillsBusy { limit, waited };
        }
        match &self.not_found {
            Some(reference) => RegistryError::UpstreamNotFound {
                upstream: self.upstream.clone(),
                what: "blob",
                reference: reference.clone(),
            },
            None => RegistryError::Upstream {
                upstream: self.upstream.clone(),
                status: self.status,
                timeout: self.timeout,
                message: self.message.clone(),
            },
        }
    }
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl FillState {
    fn ready(&self) -> bool {
        self.done.is_some() || (self.size.is_some() && self.progress.is_some())
    }
}

/// How a fill ended well.
enum Filled {
    /// Fetched from the upstream, verified and committed here.
    Fetched,
    /// Another replica committed the blob while this one waited for the fill lock.
    ByReplica,
}

/// How often a long fill marks its upload row active, so upload expiry on another
/// replica does not take it for abandoned.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

enum Joined {
    /// The fill finished and verified: read the store.
    Stored,
    /// Stream from the fill in progress.
    Streaming {
        size: u64,
        reader: Box<dyn UploadReader>,
        state: watch::Receiver<FillState>,
        progress: watch::Receiver<u64>,
    },
}

impl Registry {
    /// Makes `digest` visible in a cached repository if the registry already holds it
    /// anywhere (content is content); true when it is now linked there.
    async fn link_held(&self, c: &CachedRepo, digest: &Digest) -> Result<bool> {
        if self.meta.repo_blob_size(&c.local, digest).await?.is_some() {
            return Ok(true);
        }
        let now = self.clock.now();
        if self.meta.blob_size(digest).await?.is_some() {
            self.meta.mark_cached(&c.local, &c.source.name, now).await?;
            return Ok(self.meta.link_blob(&c.local, digest, None, now).await?.is_some());
        }
        Ok(false)
    }

    /// Size of a blob of a cached repository (HEAD): from the store, or from the
    /// upstream's answer to a fill.
    pub async fn cached_blob_size(self: &Arc<Self>, c: &CachedRepo, digest: &Digest) -> Result<u64> {
        if self.link_held(c, digest).await? {
            match self.blob_size(&c.local, digest).await {
                Err(RegistryError::BlobDamaged(_)) => {} // refetch below: the fill heals it
                other => {
                    self.count_cache(c, "blob", "hit");
                    return other;
                }
            }
        }
        match self.join(c, digest).await? {
            Joined::Stored => {
                // The fill may have committed the blob under another cached repository.
                self.link_held(c, digest).await?;
                self.blob_size(&c.local, digest).await
            }
            Joined::Streaming { size, .. } => Ok(size),
        }
    }

    /// Opens a blob of a cached repository: from the store when held, else through a fill.
    pub async fn open_cached_blob(
        self: &Arc<Self>,
        c: &CachedRepo,
        digest: &Digest,
        range: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<(u64, Option<ByteRange>, BlobBody)> {
        if self.link_held(c, digest).await? {
            match self.blob_size(&c.local, digest).await {
                Ok(_) => {
                    self.count_cache(c, "blob", "hit");
                    let opened = self.open_blob(&c.local, digest, range).await?;
                    let served = opened.1.map_or(opened.0, |r| r.len());
                    self.count_cache_bytes(c, "cache", served);
                    return Ok(opened);
                }
                Err(RegistryError::BlobDamaged(_)) => {} // refetch below: the fill heals it
                Err(e) => return Err(e),
            }
        }
        match self.join(c, digest).await? {
            Joined::Stored => {
                self.link_held(c, digest).await?;
                self.open_blob(&c.local, digest, range).await
            }
            Joined::Streaming {
                size,
                reader,
                state,
                progress,
            } => {
                if let Some(r) = range(size)? {
                    // A range of a blob still arriving: wait for the verified whole.
                    wait_done(c, state).await?;
                    self.link_held(c, digest).await?;
                    return self.open_blob(&c.local, digest, |_| Ok(Some(r))).await;
                }
                let body = stream(size, reader, state, progress);
                Ok((size, None, BlobBody::Stream(berth_store::BlobRead { size, body })))
            }
        }
    }

    /// Joins the fill of `digest`, starting it if none runs, and waits until the upstream
    /// has answered.
    async fn join(self: &Arc<Self>, c: &CachedRepo, digest: &Digest) -> Result<Joined> {
        let (fill, started) = {
            let mut fills = self.fills.lock().unwrap();
            match fills.get(digest) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Fill {
                        state: watch::Sender::new(FillState::default()),
                    });
                    fills.insert(digest.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if started {
            self.count_cache(c, "blob", "miss");
            tokio::spawn(self.clone().run_fill(c.clone(), digest.clone(), fill.clone()));
        } else {
            self.count_cache(c, "blob", "coalesced");
        }
        let mut state = fill.state.subscribe();
        let st = state
            .wait_for(FillState::ready)
            .await
            .map_err(|_| fill_failed(c, "the fill stopped"))?
            .clone();
        match (&st.done, st.size, &st.upload, st.progress) {
            (Some(Ok(())), ..) => Ok(Joined::Stored),
            (Some(Err(e)), ..) => Err(e.to_error()),
            (None, Some(size), Some(id), Some(progress)) => match self.blobs.read_upload(id).await {
                Ok(reader) => Ok(Joined::Streaming {
                    size,
                    reader,
                    state,
                    progress,
                }),
                // Finished (moved into place) or failed between our look and the open.
                Err(_) => {
                    wait_done(c, state).await?;
                    Ok(Joined::Stored)
                }
            },
            _ => Err(fill_failed(c, "the fill stopped")),
        }
    }

    async fn run_fill(self: Arc<Self>, c: CachedRepo, digest: Digest, fill: Arc<Fill>) {
        let result = self.fill(&c, &digest, &fill).await;
        let outcome = match &result {
            Ok(Filled::Fetched) => {
                let size = fill.state.borrow().size.unwrap_or(0);
                self.count_cache_bytes(&c, "upstream", size);
                "ok"
            }
            Ok(Filled::ByReplica) => {
                tracing::debug!(repo = %c.local, %digest, "blob filled by another replica; serving it from the store");
                "replica"
            }
            Err(e @ RegistryError::FillsBusy { .. }) => {
                tracing::warn!(repo = %c.local, %digest, error = %e, "blob fill refused: no turn free");
                "refused"
            }
            Err(e) => {
                tracing::warn!(repo = %c.local, %digest, error = %e, "blob fill from the upstream failed; nothing kept");
                "failed"
            }
        };
        self.metrics
            .fills
            .get_or_create(&FillLabels {
                upstream: c.source.name.clone(),
                result: outcome,
            })
            .inc();
        // Outcome first, then forget the fill: a request arriving after this sees the
        // stored blob, or starts a fresh fill after a failure.
        fill.state
            .send_modify(|s| s.done = Some(result.map(drop).map_err(|e| FillError::of(&e))));
        self.fills.lock().unwrap().remove(&digest);
    }

    /// Waits for a turn to fill from an upstream (`limits.max_concurrent_fills`), at most
    /// `limits.fill_queue_timeout`. Held until the fill ends, so the turn covers the
    /// upstream request and the whole body.
    async fn fill_turn(&self, c: &CachedRepo) -> Result<Option<tokio::sync::SemaphorePermit<'_>>> {
        let Some(permits) = &self.fill_permits else {
            return Ok(None);
        };
        if let Ok(p) = permits.try_acquire() {
            return Ok(Some(p));
        }
        let label = UpstreamName {
            upstream: c.source.name.clone(),
        };
        let waiting = self.metrics.fills_waiting.get_or_create(&label).clone();
        waiting.inc();
        let waited = self.limits.fill_queue_timeout;
        let turn = tokio::time::timeout(waited, permits.acquire()).await;
        waiting.dec();
        match turn {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(RegistryError::FillsBusy {
                limit: self.limits.max_concurrent_fills,
                waited,
            }),
        }
    }

    /// Waits for the fill lock of `digest` across replicas, at most
    /// `limits.fill_queue_timeout`. `None` when the wait ran out: the replica holding it
    /// has been filling for longer than that (a large blob, a slow upstream), and a pull
    /// that fetches a second time beats one that fails; the conditional create of the
    /// blob store keeps the two commits from clobbering each other.
    async fn fill_lock(&self, c: &CachedRepo, digest: &Digest) -> Result<Option<berth_store::LockGuard>> {
        let waited = self.limits.fill_queue_timeout;
        match tokio::time::timeout(waited, self.meta.lock_fill(digest)).await {
            Ok(lock) => Ok(Some(lock?)),
            Err(_) => {
                tracing::warn!(
                    repo = %c.local,
                    %digest,
                    waited_secs = waited.as_secs(),
                    "another replica has been filling this blob for longer than limits.fill_queue_timeout; fetching it here too"
                );
                Ok(None)
            }
        }
    }

    /// True when the blob's row and bytes are both in place (committed by another replica
    /// while this one waited for the fill lock). Bytes of another size are damage a fill
    /// must heal, not a reason to skip it.
    async fn committed_meanwhile(&self, digest: &Digest) -> Result<bool> {
        let Some(recorded) = self.meta.blob_size(digest).await? else {
            return Ok(false);
        };
        Ok(self.blobs.stat(digest).await? == Some(recorded))
    }

    async fn fill(&self, c: &CachedRepo, digest: &Digest, fill: &Fill) -> Result<Filled> {
        let _across = self.fill_lock(c, digest).await?;
        if self.committed_meanwhile(digest).await? {
            return Ok(Filled::ByReplica);
        }
        let _turn = self.fill_turn(c).await?;
        let reference = digest.to_string();
        let resp = c
            .source
            .client
            .get_blob(&c.remote, digest)
            .await
            .map_err(|e| self.upstream_failed(c, e, "blob", &reference))?;
        let id = UploadId::parse(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid upload id");
        // A row first, then the area, as for a pushed upload: startup recovery on any
        // replica deletes only areas no row knows, and upload expiry cleans up after a
        // replica that died mid-fill.
        self.meta.create_upload(&id, &c.local, self.clock.now()).await?;
        if let Err(e) = self.blobs.create_upload(&id).await {
            let _ = self.meta.delete_upload(&id).await;
            return Err(e.into());
        }
        let result = async {
            // Followed: readers of this fill stream the bytes as they land.
            let mut sink = self
                .blobs
                .append_followed(&id, 0, DigestHasher::new(digest.algorithm()))
                .await?;
            // Without a length from the upstream, readers wait for the verified whole.
            let announced = resp.size;
            fill.state.send_modify(|s| {
                s.size = announced;
                s.upload = announced.map(|_| id.clone());
                s.progress = announced.map(|_| sink.progress());
            });
            let mut body = resp.body;
            let (mut written, mut touched) = (0u64, std::time::Instant::now());
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| self.upstream_failed(c, e, "blob", &reference))?;
                written += chunk.len() as u64;
                sink.write(chunk).await.map_err(StoreError::from)?;
                if touched.elapsed() >= TOUCH_EVERY {
                    touched = std::time::Instant::now();
                    self.meta.set_upload_size(&id, written, self.clock.now()).await?;
                }
            }
            let (size, hasher) = sink.finish().await.map_err(StoreError::from)?;
            let invalid = |message| RegistryError::UpstreamInvalid {
                upstream: c.source.name.clone(),
                message,
            };
            if let Some(n) = announced.filter(|&n| n != size) {
                return Err(invalid(format!(
                    "blob {digest}: announced {n} bytes, sent {size}"
                )));
            }
            let actual = hasher.finish();
            if actual != *digest {
                self.metrics.digest_mismatches.inc();
                return Err(invalid(format!("blob {digest}: the bytes sent hash to {actual}")));
            }
            let _bytes = self.lock_bytes([digest]).await?;
            self.blobs.commit_upload(&id, digest).await?;
            let now = self.clock.now();
            self.meta.mark_cached(&c.local, &c.source.name, now).await?;
            self.meta
                .commit_blob(&c.local, digest, size, Some(&id), now)
                .await?;
            Ok(Filled::Fetched)
        }
        .await;
        if result.is_err() {
            let _ = self.cancel_upload_row(&id).await;
        }
        result
    }
}

fn fill_failed(c: &CachedRepo, message: impl std::fmt::Display) -> RegistryError {
    RegistryError::Upstream {
        upstream: c.source.name.clone(),
        status: None,
        timeout: false,
        message: format!("fetching the blob failed: {message}"),
    }
}

async fn wait_done(c: &CachedRepo, mut state: watch::Receiver<FillState>) -> Result<(), RegistryError> {
    let st = state
        .wait_for(|s| s.done.is_some())
        .await
        .map_err(|_| fill_failed(c, "the fill stopped"))?;
    match &st.done {
        Some(Err(e)) => Err(e.to_error()),
        _ => Ok(()),
    }
}

/// Streams a blob from a fill in progress. The last byte is held back until the fill
/// has verified the digest; a failed fill ends the stream with an error.
fn stream(
    size: u64,
    reader: Box<dyn UploadReader>,
    state: watch::Receiver<FillState>,
    progress: watch::Receiver<u64>,
) -> BoxStream<'static, io::Result<Bytes>> {
    struct S {
        pos: u64,
        size: u64,
        reader: Box<dyn UploadReader>,
        state: watch::Receiver<FillState>,
        progress: watch::Receiver<u64>,
        writing: bool,
    }
    let s = S {
        pos: 0,
        size,
        reader,
        state,
        progress,
        writing: true,
    };
    futures_util::stream::unfold(Some(s), |s| async move {
        let mut s = s?;
        loop {
            let done = s.state.borrow_and_update().done.clone();
            let verified = match done {
                Some(Err(e)) => {
                    let e = io::Error::other(format!("the upstream fill failed: {e}"));
                    return Some((Err(e), None));
                }
                Some(Ok(())) => true,
                None => false,
            };
            let available = if verified {
                s.size
            } else {
                (*s.progress.borrow_and_update()).min(s.size.saturating_sub(1))
            };
            if s.pos < available {
                let want = (available - s.pos).min(CHUNK as u64) as usize;
                return match s.reader.read_at(s.pos, want).await {
                    Ok(b) if !b.is_empty() => {
                        s.pos += b.len() as u64;
                        Some((Ok(b), Some(s)))
                    }
                    Ok(_) => Some((Err(io::Error::other("the fill area ended early")), None)),
                    Err(e) => Some((Err(e), None)),
                };
            }
            if verified {
                return None;
            }
            let changed = if s.writing {
                tokio::select! {
                    r = s.state.changed() => r.is_ok(),
                    r = s.progress.changed() => { s.writing = r.is_ok(); true }
                }
            } else {
                s.state.changed().await.is_ok()
            };
            if !changed {
                return Some((Err(io::Error::other("the upstream fill stopped")), None));
            }
        }
    })
    .boxed()
}
