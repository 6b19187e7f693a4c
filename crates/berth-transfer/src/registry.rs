//! A registry as a [`Source`] and as a [`Destination`], over `berth_upstream::Upstream`.
//!
//! Uploads: blobs up to `chunk_size` go in one `PUT ?digest=` after the `POST`; larger
//! ones in `PATCH` chunks with `Content-Range`, the last one with the `PUT`. After each
//! chunk the session's location is written to a small state file (under
//! `$XDG_CACHE_HOME/berth/uploads/`, keyed by destination and digest), so a copy that
//! stops mid-blob continues on the next run from what the registry says it holds
//! (`GET` the session: `Range`), reading the source from that offset. A session the
//! registry no longer knows starts over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use berth_oci::{Descriptor, Digest, DigestHasher, Reference, RepoName, media};
use berth_upstream::{UploadStart, Upstream, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Url;
use tokio::sync::mpsc;

use crate::{BlobReader, Destination, Manifest, Source, TransferError};

/// What berth itself accepts by default (`limits.max_manifest_bytes`).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;

/// A registry error as a transfer error: where, what, and the HTTP status when there was one.
pub fn failed(at: &str, what: impl Into<String>, e: UpstreamError) -> TransferError {
    let status = match &e {
        UpstreamError::Status { status, .. } => Some(*status),
        UpstreamError::NotFound { .. } => Some(404),
        UpstreamError::TooManyRequests { .. } => Some(429),
        UpstreamError::Auth(m) if m.contains("HTTP 403") => Some(403),
        UpstreamError::Auth(_) => Some(401),
        _ => None,
    };
    let reason = match status {
        Some(s) => format!("HTTP {s}: {e}"),
        None => e.to_string(),
    };
    TransferError::Failed {
        at: at.to_string(),
        what: what.into(),
        reason,
        status,
    }
}

/// One repository of a registry, read from.
pub struct RegistrySource {
    pub up: Upstream,
    pub repo: RepoName,
}

impl RegistrySource {
    pub fn new(up: Upstream, repo: RepoName) -> RegistrySource {
        RegistrySource { up, repo }
    }
}

#[async_trait::async_trait]
impl Source for RegistrySource {
    fn describe(&self) -> String {
        format!("{}/{}", self.up.name(), self.repo)
    }

    async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError> {
        let what = || format!("manifest {}:{reference}", self.repo);
        let r: Reference = reference
            .parse()
            .map_err(|e| TransferError::Usage(format!("{reference:?}: {e}")))?;
        let (head, bytes) = self
            .up
            .get_manifest(&self.repo, &r, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| failed(self.up.name(), what(), e))?;
        Ok(Manifest {
            bytes,
            media_type: head.media_type,
            digest: head.digest,
        })
    }

    async fn blob(&self, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader, TransferError> {
        let at = self.up.name().to_string();
        let what = format!("blob {digest}");
        let stream = self
            .up
            .get_blob_from(&self.repo, digest, offset)
            .await
            .map_err(|e| failed(&at, what.clone(), e))?;
        if let Some(n) = stream.size
            && n != size - offset
        {
            return Err(TransferError::Failed {
                at,
                what,
                reason: format!(
                    "the source sends {n} bytes from offset {offset}; the manifest says the blob has {size}"
                ),
                status: None,
            });
        }
        Ok(stream
            .body
            .map(move |c| c.map_err(|e| failed(&at, what.clone(), e)))
            .boxed())
    }

    async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>, TransferError> {
        let at = self.up.name().to_string();
        let what = || format!("referrers of {digest}");
        let index = match self
            .up
            .referrers(&self.repo, digest, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| failed(&at, what(), e))?
        {
            Some(b) => b,
            // No referrers API: the tag schema (`sha256-<hex>`) the OCI spec falls back to.
            None => match self.manifest(&fallback_tag(digest)).await {
                Ok(m) if media::is_index(&m.media_type) => m.bytes,
                Ok(_) => return Ok(Vec::new()),
                Err(TransferError::Failed {
                    status: Some(404), ..
                }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            },
        };
        index_entries(&index).map_err(|reason| TransferError::Failed {
            at,
            what: what(),
            reason,
            status: None,
        })
    }
}

/// The referrers tag schema: `sha256:abc...` -> `sha256-abc...`.
pub fn fallback_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().as_str(), digest.hex())
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

fn index_entries(bytes: &[u8]) -> Result<Vec<Descriptor>, String> {
    serde_json::from_slice::<Index>(bytes)
        .map(|i| i.manifests)
        .map_err(|e| format!("not an index: {e}"))
}

/// One repository of a registry, written to.
pub struct RegistryDest {
    up: Upstream,
    repo: RepoName,
    /// A repository of the same registry holding the source blobs: mount from it.
    mount_from: Option<RepoName>,
    chunk_size: u64,
    /// Where partly sent uploads are remembered; `None`: not at all.
    state_dir: Option<PathBuf>,
    resumed: Mutex<HashMap<Digest, u64>>,
}

impl RegistryDest {
    /// `up` must come from [`Upstream::pushing`] so tokens carry the push action.
    pub fn new(
        up: Upstream,
        repo: RepoName,
        mount_from: Option<RepoName>,
        chunk_size: u64,
        state_dir: Option<PathBuf>,
    ) -> RegistryDest {
        RegistryDest {
            up,
            repo,
            mount_from,
            chunk_size: chunk_size.max(1 << 10),
            state_dir,
            resumed: Mutex::new(HashMap::new()),
        }
    }

    fn at(&self) -> String {
        self.up.name().to_string()
    }

    fn state_file(&self, digest: &Digest) -> Option<PathBuf> {
        let dir = self.state_dir.as_ref()?;
        let key = format!("{}/{}@{digest}", self.up.base_url(), self.repo);
        Some(dir.join(format!("{}.json", Digest::sha256_of(key.as_bytes()).hex())))
    }

    fn load_state(&self, digest: &Digest) -> Option<Url> {
        let text = std::fs::read(self.state_file(digest)?).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        Url::parse(v["location"].as_str()?).ok()
    }

    /// Written to a temporary name and renamed, so a kill never leaves half a file.
    fn save_state(&self, digest: &Digest, location: &Url) {
        let Some(file) = self.state_file(digest) else {
            return;
        };
        let body = serde_json::json!({
            "destination": format!("{}/{}", self.up.base_url(), self.repo),
            "digest": digest.to_string(),
            "location": location.as_str(),
        });
        let tmp = file.with_extension("tmp");
        let ok = file
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, body.to_string()))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if let Err(e) = ok {
            tracing::warn!(file = %file.display(), "cannot keep the upload state for resuming: {e}");
        }
    }

    fn drop_state(&self, digest: &Digest) {
        if let Some(f) = self.state_file(digest) {
            let _ = std::fs::remove_file(f);
        }
    }

    async fn new_session(&self, digest: &Digest) -> Result<Url, TransferError> {
        match self
            .up
            .start_upload(&self.repo, None)
            .await
            .map_err(|e| failed(&self.at(), format!("blob {digest}: starting an upload"), e))?
        {
            UploadStart::Session(u) => Ok(u),
            UploadStart::Mounted => unreachable!("no mount asked"),
        }
    }

    /// Where a partly sent upload of `digest` stands: its session and the bytes it holds.
    async fn resume_point(&self, digest: &Digest) -> Result<Option<(Url, u64)>, TransferError> {
        let Some(session) = self.load_state(digest) else {
            return Ok(None);
        };
        match self.up.upload_status(&self.repo, &session).await {
            Ok(Some(n)) if n > 0 => Ok(Some((session, n))),
            Ok(_) => Ok(None),
            Err(e) if e.is_transient() => Err(failed(&self.at(), format!("blob {digest}: upload status"), e)),
            // Refused or unreadable: start over.
            Err(_) => Ok(None),
        }
    }
}

#[async_trait::async_trait]
impl Destination for RegistryDest {
    fn describe(&self) -> String {
        format!("{}/{}", self.up.name(), self.repo)
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, TransferError> {
        self.up
            .blob_exists(&self.repo, digest)
            .await
            .map(|s| s.is_some())
            .map_err(|e| failed(&self.at(), format!("blob {digest}: HEAD"), e))
    }

    async fn put_blob(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        let digest = &desc.digest;
        let size = desc.size;
        let at = self.at();
        let what = format!("blob {digest}");

        // 1. Resume a partly sent upload; 2. mount from the source repository when both
        // are on this registry; 3. a new session.
        let (mut session, mut offset) = match self.resume_point(digest).await? {
            Some(p) => p,
            None => {
                let start = self
                    .up
                    .start_upload(&self.repo, self.mount_from.as_ref().map(|from| (digest, from)))
                    .await
                    .map_err(|e| failed(&at, format!("{what}: starting an upload"), e))?;
                match start {
                    UploadStart::Mounted => {
                        progress(size);
                        return Ok(());
                    }
                    UploadStart::Session(u) => (u, 0),
                }
            }
        };
        if offset >= size {
            // Everything is there but the PUT: start over rather than guess.
            self.drop_state(digest);
            session = self.new_session(digest).await?;
            offset = 0;
        }
        if offset > 0 {
            self.resumed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(digest.clone(), offset);
            tracing::info!(%digest, offset, "resuming an upload");
        }
        progress(offset);

        let reader = source.blob(digest, size, offset).await?;
        // The digest is checked here only when every byte passes through us; a resumed
        // upload is checked by the registry on the final PUT.
        let mut feed = Feed {
            reader,
            leftover: None,
            hasher: (offset == 0).then(|| DigestHasher::new(digest.algorithm())),
            digest: digest.clone(),
            at: source.describe(),
            sent: offset,
        };
        loop {
            let remaining = size - offset;
            let last = remaining <= self.chunk_size;
            let len = if last { remaining } else { self.chunk_size };
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
            let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let send = async {
                if last {
                    self.up
                        .finish_upload(&self.repo, &session, digest, offset, len, body)
                        .await
                        .map(|()| None)
                } else {
                    self.up
                        .upload_chunk(&self.repo, &session, offset, len, body)
                        .await
                        .map(Some)
                }
            };
            let (sent, fed) = tokio::join!(send, feed.feed(len, last, &tx, progress));
            drop(tx);
            // The source's failure explains the aborted request better than the request.
            fed?;
            match sent {
                Ok(Some(next)) => {
                    offset += len;
                    session = next;
                    self.save_state(digest, &session);
                }
                Ok(None) => {
                    self.drop_state(digest);
                    return Ok(());
                }
                Err(e) => {
                    let what = if last {
                        format!("{what}: finishing the upload")
                    } else {
                        format!("{what}: sending bytes {offset}..{}", offset + len)
                    };
                    return Err(failed(&at, what, e));
                }
            }
        }
    }

    fn resumed_from(&self, digest: &Digest) -> Option<u64> {
        self.resumed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .copied()
    }

    async fn has_manifest(&self, digest: &Digest) -> Result<bool, TransferError> {
        self.up
            .manifest_exists(&self.repo, &Reference::Digest(digest.clone()))
            .await
            .map(|h| h.is_some())
            .map_err(|e| failed(&self.at(), format!("manifest {digest}: HEAD"), e))
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<(), TransferError> {
        let at = self.at();
        let reference = match tag {
            Some(t) => Reference::Tag(
                t.parse()
                    .map_err(|e| TransferError::Usage(format!("tag {t:?}: {e}")))?,
            ),
            None => Reference::Digest(manifest.digest.clone()),
        };
        let what = format!("manifest {} ({reference})", manifest.digest);
        let pushed = self
            .up
            .put_manifest(
                &self.repo,
                &reference,
                &manifest.media_type,
                manifest.bytes.clone(),
            )
            .await
            .map_err(|e| failed(&at, what.clone(), e))?;
        if let Some(d) = &pushed.digest
            && d.algorithm() == manifest.digest.algorithm()
            && *d != manifest.digest
        {
            return Err(TransferError::Failed {
                at,
                what,
                reason: format!("the registry stored it as {d}: it changed the bytes"),
                status: None,
            });
        }
        // A registry without the referrers API learns of a referrer through the tag
        // schema: the subject's `sha256-<hex>` index lists it.
        if tag.is_none()
            && !pushed.subject_indexed
            && let Ok(parsed) = berth_oci::manifest::parse(&manifest.bytes, Some(&manifest.media_type))
            && let Some(subject) = parsed.subject
        {
            self.add_to_fallback_index(&subject, manifest, parsed.artifact_type, parsed.annotations)
                .await?;
        }
        Ok(())
    }
}

impl RegistryDest {
    async fn add_to_fallback_index(
        &self,
        subject: &Digest,
        referrer: &Manifest,
        artifact_type: Option<String>,
        annotations: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<(), TransferError> {
        let at = self.at();
        let tag = fallback_tag(subject);
        let reference = Reference::Tag(tag.parse().expect("a valid tag"));
        let what = format!("referrers tag {tag}");
        let mut entries: Vec<serde_json::Value> = match self
            .up
            .get_manifest(&self.repo, &reference, MAX_MANIFEST_BYTES)
            .await
        {
            Ok((_, bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["manifests"].as_array().cloned())
                .unwrap_or_default(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(failed(&at, what, e)),
        };
        let digest = referrer.digest.to_string();
        if entries.iter().any(|e| e["digest"] == digest.as_str()) {
            return Ok(());
        }
        let mut entry = serde_json::json!({
            "mediaType": referrer.media_type,
            "digest": digest,
            "size": referrer.bytes.len(),
        });
        if let Some(t) = artifact_type {
            entry["artifactType"] = t.into();
        }
        if let Some(a) = annotations {
            entry["annotations"] = serde_json::to_value(a).unwrap_or_default();
        }
        entries.push(entry);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": entries,
        });
        let bytes = Bytes::from(serde_json::to_vec(&index).expect("serialisable"));
        self.up
            .put_manifest(&self.repo, &reference, media::OCI_INDEX, bytes)
            .await
            .map_err(|e| failed(&at, what, e))?;
        Ok(())
    }
}

/// Moves a source blob into request bodies, chunk by chunk, hashing on the way.
struct Feed {
    reader: BlobReader,
    leftover: Option<Bytes>,
    hasher: Option<DigestHasher>,
    digest: Digest,
    at: String,
    sent: u64,
}

impl Feed {
    fn fail(&self, reason: String) -> TransferError {
        TransferError::Failed {
            at: self.at.clone(),
            what: format!("blob {}", self.digest),
            reason,
            status: None,
        }
    }

    /// Sends `len` bytes into `tx`. With `last`, the final piece is held back until the
    /// digest verifies (and the source has nothing more), so a registry never receives a
    /// complete wrong blob. A dropped receiver (the request failed) stops quietly: the
    /// request's own error tells why.
    async fn feed(
        &mut self,
        len: u64,
        last: bool,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        let mut want = len;
        let mut held: Option<Bytes> = None;
        while want > 0 {
            let chunk = match self.leftover.take() {
                Some(c) => c,
                None => match self.reader.next().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(std::io::Error::other("the source failed"))).await;
                        return Err(e);
                    }
                    None => {
                        let _ = tx
                            .send(Err(std::io::Error::other("the source ended early")))
                            .await;
                        return Err(self.fail(format!("the source ended after {} bytes", self.sent)));
                    }
                },
            };
            let chunk = if chunk.len() as u64 > want {
                self.leftover = Some(chunk.slice(want as usize..));
                chunk.slice(..want as usize)
            } else {
                chunk
            };
            want -= chunk.len() as u64;
            if let Some(h) = &mut self.hasher {
                h.update(&chunk);
            }
            if let Some(prev) = held.replace(chunk)
                && !self.send(tx, prev, progress).await
            {
                return Ok(());
            }
        }
        if last {
            if self.leftover.is_some() || self.reader.next().await.is_some() {
                let _ = tx
                    .send(Err(std::io::Error::other("the source sent too much")))
                    .await;
                return Err(self.fail("the source sent more bytes than the manifest says".into()));
            }
            if let Some(h) = self.hasher.take() {
                let got = h.finish();
                if got != self.digest {
                    let _ = tx.send(Err(std::io::Error::other("digest mismatch"))).await;
                    return Err(self.fail(format!("the source's bytes hash to {got}")));
                }
            }
        }
        if let Some(prev) = held {
            self.send(tx, prev, progress).await;
        }
        Ok(())
    }

    async fn send(
        &mut self,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
        chunk: Bytes,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> bool {
        let n = chunk.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return false;
        }
        self.sent += n;
        progress(self.sent);
        true
    }
}
