//! `OciDir`: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) as a [`Source`] and as a [`Destination`].
//!
//! A reference into a layout is a name found in `index.json` (the
//! `org.opencontainers.image.ref.name` annotation, or the full image name in
//! `io.containerd.image.name`) or a digest. Blobs and manifests written here are hashed
//! while written to a temporary file and renamed into place only when they match their
//! digest, so a layout never holds a file under the wrong name.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use berth_oci::{Descriptor, Digest, DigestHasher, media};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::{BlobReader, Destination, Manifest, Source, TransferError};

/// The annotation that names an image inside a layout (OCI image spec, "Pre-Defined
/// Annotation Keys"); `skopeo copy oci:DIR:NAME` looks this up.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name (`registry/repo:tag`), as buildkit and containerd write it;
/// `podman load` names the image after it (it would otherwise only see the short name).
pub const IMAGE_NAME: &str = "io.containerd.image.name";
pub(crate) const LAYOUT_FILE: &str = "oci-layout";
pub(crate) const INDEX_FILE: &str = "index.json";
pub(crate) const LAYOUT_VERSION: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Manifests and `index.json` are small; anything larger is not what it claims to be.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// One entry of a layout's `index.json`.
#[derive(Clone, Debug)]
pub struct LayoutImage {
    /// The `org.opencontainers.image.ref.name` annotation (usually a tag).
    pub ref_name: Option<String>,
    /// The `io.containerd.image.name` annotation (`registry/repo:tag`), when present.
    pub image_name: Option<String>,
    pub descriptor: Descriptor,
}

pub(crate) fn failed(at: &str, what: impl Display, reason: impl Display) -> TransferError {
    TransferError::Failed {
        at: at.to_string(),
        what: what.to_string(),
        reason: reason.to_string(),
        status: None,
    }
}

/// `blobs/<alg>/<hex>`, relative to the layout root.
pub(crate) fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// Reads `index.json`: every entry with its names.
pub(crate) fn parse_index(bytes: &[u8], at: &str) -> Result<Vec<LayoutImage>, TransferError> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let index: Index = serde_json::from_slice(bytes)
        .map_err(|e| failed(at, INDEX_FILE, format!("not an OCI index: {e}")))?;
    Ok(index
        .manifests
        .into_iter()
        .map(|d| {
            let get = |k: &str| d.annotations.as_ref().and_then(|a| a.get(k)).cloned();
            LayoutImage {
                ref_name: get(REF_NAME),
                image_name: get(IMAGE_NAME),
                descriptor: d,
            }
        })
        .collect())
}

/// What a layout reference names: a digest, or the entry whose ref name (or full image
/// name) it is.
pub(crate) enum Lookup {
    Digest(Digest, Option<String>),
    Entry(Descriptor),
}

pub(crate) fn lookup(images: &[LayoutImage], reference: &str, at: &str) -> Result<Lookup, TransferError> {
    if let Ok(d) = reference.parse::<Digest>() {
        let hint = images
            .iter()
            .find(|i| i.descriptor.digest == d)
            .map(|i| i.descriptor.media_type.clone());
        return Ok(Lookup::Digest(d, hint));
    }
    let matches: Vec<&LayoutImage> = images
        .iter()
        .filter(|i| i.ref_name.as_deref() == Some(reference) || i.image_name.as_deref() == Some(reference))
        .collect();
    match matches.as_slice() {
        [one] => Ok(Lookup::Entry(one.descriptor.clone())),
        [] => {
            let names: Vec<&str> = images.iter().filter_map(|i| i.ref_name.as_deref()).collect();
            Err(failed(
                at,
                format!("image {reference:?}"),
                format!("not in {INDEX_FILE} (it names: {})", names.join(", ")),
            ))
        }
        _ => Err(failed(
            at,
            format!("image {reference:?}"),
            format!("{INDEX_FILE} names it {} times", matches.len()),
        )),
    }
}

/// Checks manifest bytes against their digest and learns their media type (from the
/// bytes, or from the descriptor that pointed at them).
pub(crate) fn checked_manifest(
    bytes: Bytes,
    digest: &Digest,
    hint: Option<&str>,
    at: &str,
) -> Result<Manifest, TransferError> {
    if !digest.matches(&bytes) {
        return Err(failed(
            at,
            format!("manifest {digest}"),
            format!("its bytes hash to {}", Digest::sha256_of(&bytes)),
        ));
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let head: Head = serde_json::from_slice(&bytes)
        .map_err(|e| failed(at, format!("manifest {digest}"), format!("not JSON: {e}")))?;
    let media_type = head
        .media_type
        .or_else(|| hint.map(str::to_string))
        .ok_or_else(|| failed(at, format!("manifest {digest}"), "no mediaType"))?;
    if !media::MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(failed(
            at,
            format!("manifest {digest}"),
            format!("media type {media_type} is not a manifest type"),
        ));
    }
    Ok(Manifest {
        bytes,
        media_type,
        digest: digest.clone(),
    })
}

/// The subject a manifest names, if any.
pub(crate) fn subject_of(bytes: &[u8]) -> Option<Digest> {
    berth_oci::manifest::parse(bytes, None).ok()?.subject
}

/// A blob stream that ends in an error unless exactly `size` bytes hashing to `digest`
/// came through: sources check what they serve, so a damaged archive is named as such
/// rather than discovered by whoever receives it.
pub(crate) fn verified(inner: BlobReader, digest: &Digest, size: u64, at: &str) -> BlobReader {
    Box::pin(Verified {
        inner,
        hasher: Some(DigestHasher::new(digest.algorithm())),
        digest: digest.clone(),
        size,
        seen: 0,
        at: at.to_string(),
    })
}

struct Verified {
    inner: BlobReader,
    hasher: Option<DigestHasher>,
    digest: Digest,
    size: u64,
    seen: u64,
    at: String,
}

impl Stream for Verified {
    type Item = Result<Bytes, TransferError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen > this.size {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(failed(
                        &this.at,
                        format!("blob {}", this.digest),
                        format!("longer than the {} bytes its descriptor says", this.size),
                    ))));
                }
                hasher.update(&chunk);
                if this.seen < this.size {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                // The last chunk goes out only if the digest matches: a receiver that
                // stops reading at the announced length must not take damaged bytes.
                let got = this.hasher.take().expect("checked above").finish();
                if got != this.digest {
                    return Poll::Ready(Some(Err(failed(
                        &this.at,
                        format!("blob {}", this.digest),
                        format!("its bytes hash to {got}"),
                    ))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                // Still hashing: fewer bytes than announced, or an empty blob.
                let hasher = this.hasher.take().expect("checked above");
                if this.seen != this.size {
                    return Poll::Ready(Some(Err(failed(
                        &this.at,
                        format!("blob {}", this.digest),
                        format!("{} bytes where its descriptor says {}", this.seen, this.size),
                    ))));
                }
                let got = hasher.finish();
                if got != this.digest {
                    return Poll::Ready(Some(Err(failed(
                        &this.at,
                        format!("blob {}", this.digest),
                        format!("its bytes hash to {got}"),
                    ))));
                }
                Poll::Ready(None)
            }
        }
    }
}

/// Streams `path` (a whole file or `len` bytes from `offset`) in 1 MiB chunks.
pub(crate) async fn read_file_range(
    path: &Path,
    offset: u64,
    len: u64,
    at: &str,
    what: &str,
) -> Result<BlobReader, TransferError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| failed(at, what, format!("cannot open {}: {e}", path.display())))?;
    if offset > 0 {
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| failed(at, what, format!("cannot seek: {e}")))?;
    }
    let what = what.to_string();
    let at = at.to_string();
    let body = tokio_util::io::ReaderStream::with_capacity(file.take(len), 1 << 20)
        .map(move |r| r.map_err(|e| failed(&at, &what, format!("read failed: {e}"))));
    Ok(Box::pin(body))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a stream to `dest` through a temporary file beside it, hashing as it writes;
/// the file is renamed into place (after an fsync) only if size and digest match.
pub(crate) async fn write_verified(
    dest: &Path,
    mut body: BlobReader,
    digest: &Digest,
    size: u64,
    progress: &(dyn Fn(u64) + Send + Sync),
    at: &str,
) -> Result<(), TransferError> {
    let what = format!("blob {digest}");
    let dir = dest.parent().expect("blob paths have a parent");
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| failed(at, &what, format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(
        ".partial-{}-{}-{}",
        digest.hex(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| failed(at, &what, format!("cannot create {}: {e}", tmp.display())))?;
        let mut hasher = DigestHasher::new(digest.algorithm());
        let mut written = 0u64;
        // The engine counts bytes sent from the first report on: here, from nothing.
        progress(0);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            if written > size {
                return Err(failed(
                    at,
                    &what,
                    format!("longer than the {size} bytes announced"),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(at, &what, format!("write failed: {e}")))?;
            progress(written);
        }
        if written != size {
            return Err(failed(
                at,
                &what,
                format!("{written} bytes where {size} were announced"),
            ));
        }
        let got = hasher.finish();
        if got != *digest {
            return Err(failed(at, &what, format!("its bytes hash to {got}")));
        }
        file.sync_all()
            .await
            .map_err(|e| failed(at, &what, format!("fsync failed: {e}")))?;
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(|e| failed(at, &what, format!("cannot rename into place: {e}")))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// `index.json` for `entries`: one descriptor per name, annotated with its names.
pub(crate) fn index_json(entries: &[(Descriptor, BTreeMap<String, String>)]) -> Vec<u8> {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(d, annotations)| {
            let mut d = d.clone();
            let mut a = d.annotations.take().unwrap_or_default();
            a.extend(annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
            d.annotations = (!a.is_empty()).then_some(a);
            serde_json::to_value(&d).expect("descriptors serialise")
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("json")
}

/// Names given through `put_manifest(.., Some(tag))` and `name_image`, in order.
#[derive(Default)]
pub(crate) struct Names {
    /// tag -> (descriptor, annotations)
    pub(crate) entries: Vec<(String, Descriptor, BTreeMap<String, String>)>,
}

impl Names {
    pub(crate) fn tag(&mut self, manifest: &Manifest, tag: &str) {
        let desc = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: manifest.bytes.len() as u64,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(REF_NAME.to_string(), tag.to_string());
        self.entries.retain(|(t, ..)| t != tag);
        self.entries.push((tag.to_string(), desc, annotations));
    }

    pub(crate) fn name_image(&mut self, tag: &str, full_name: &str) -> bool {
        match self.entries.iter_mut().find(|(t, ..)| t == tag) {
            Some((_, _, a)) => {
                a.insert(IMAGE_NAME.to_string(), full_name.to_string());
                true
            }
            None => false,
        }
    }
}

/// An OCI image layout directory.
pub struct OciDir {
    root: PathBuf,
    at: String,
    names: Mutex<Names>,
}

impl OciDir {
    /// Opens an existing layout to read from.
    pub fn open(root: &Path) -> Result<OciDir, TransferError> {
        let dir = OciDir::at(root);
        let layout = std::fs::read(root.join(LAYOUT_FILE))
            .map_err(|e| failed(&dir.at, LAYOUT_FILE, format!("cannot read: {e}")))?;
        check_layout_file(&layout, &dir.at)?;
        Ok(dir)
    }

    /// Opens a layout to write into, creating it (or adding to the one there).
    pub fn create(root: &Path) -> Result<OciDir, TransferError> {
        let dir = OciDir::at(root);
        std::fs::create_dir_all(root.join("blobs")).map_err(|e| {
            failed(
                &dir.at,
                "layout",
                format!("cannot create {}: {e}", root.display()),
            )
        })?;
        match std::fs::read(root.join(LAYOUT_FILE)) {
            Ok(bytes) => check_layout_file(&bytes, &dir.at)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(root.join(LAYOUT_FILE), LAYOUT_VERSION)
                    .map_err(|e| failed(&dir.at, LAYOUT_FILE, format!("cannot write: {e}")))?
            }
            Err(e) => return Err(failed(&dir.at, LAYOUT_FILE, format!("cannot read: {e}"))),
        }
        Ok(dir)
    }

    fn at(root: &Path) -> OciDir {
        OciDir {
            root: root.to_path_buf(),
            at: format!("oci:{}", root.display()),
            names: Mutex::new(Names::default()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries of `index.json`.
    pub fn images(&self) -> Result<Vec<LayoutImage>, TransferError> {
        let bytes = std::fs::read(self.root.join(INDEX_FILE))
            .map_err(|e| failed(&self.at, INDEX_FILE, format!("cannot read: {e}")))?;
        parse_index(&bytes, &self.at)
    }

    /// Records `full_name` (`registry/repo:tag`) as the `io.containerd.image.name` of the
    /// entry tagged `tag` (call after `put_manifest(.., Some(tag))`).
    pub fn name_image(&self, tag: &str, full_name: &str) -> Result<(), TransferError> {
        if self.names.lock().expect("names lock").name_image(tag, full_name) {
            Ok(())
        } else {
            Err(TransferError::Usage(format!(
                "{}: no image tagged {tag:?} yet",
                self.at
            )))
        }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(blob_name(digest))
    }

    async fn read_small(&self, digest: &Digest, what: &str) -> Result<Bytes, TransferError> {
        let path = self.blob_path(digest);
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| failed(&self.at, what, format!("not in the layout ({e})")))?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(failed(
                &self.at,
                what,
                format!("{} bytes is too large", meta.len()),
            ));
        }
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| failed(&self.at, what, format!("cannot read: {e}")))
    }
}

pub(crate) fn check_layout_file(bytes: &[u8], at: &str) -> Result<(), TransferError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| failed(at, LAYOUT_FILE, format!("not JSON: {e}")))?;
    match v.get("imageLayoutVersion").and_then(Value::as_str) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        other => Err(failed(
            at,
            LAYOUT_FILE,
            format!("imageLayoutVersion {other:?} is not 1.x"),
        )),
    }
}

#[async_trait::async_trait]
impl Source for OciDir {
    fn describe(&self) -> String {
        self.at.clone()
    }

    async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError> {
        let (digest, hint) = match lookup(&self.images()?, reference, &self.at)? {
            Lookup::Digest(d, hint) => (d, hint),
            Lookup::Entry(d) => (d.digest, Some(d.media_type)),
        };
        let bytes = self.read_small(&digest, &format!("manifest {digest}")).await?;
        checked_manifest(bytes, &digest, hint.as_deref(), &self.at)
    }

    async fn blob(&self, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader, TransferError> {
        let what = format!("blob {digest}");
        let path = self.blob_path(digest);
        let on_disk = tokio::fs::metadata(&path)
            .await
            .map_err(|e| failed(&self.at, &what, format!("not in the layout ({e})")))?
            .len();
        if on_disk != size {
            return Err(failed(
                &self.at,
                &what,
                format!("{on_disk} bytes on disk where its descriptor says {size}"),
            ));
        }
        let body = read_file_range(&path, 0, size, &self.at, &what).await?;
        let body = verified(body, digest, size, &self.at);
        // Verification needs every byte; a resumed read skips the first `offset` of them.
        Ok(skip(body, offset))
    }

    async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>, TransferError> {
        let mut out = Vec::new();
        for img in self.images()? {
            if !media::MANIFEST_TYPES.contains(&img.descriptor.media_type.as_str()) {
                continue;
            }
            let d = &img.descriptor.digest;
            let Ok(bytes) = self.read_small(d, "manifest").await else {
                continue;
            };
            if subject_of(&bytes).as_ref() == Some(digest) && !out.iter().any(|o: &Descriptor| o.digest == *d)
            {
                out.push(img.descriptor.clone());
            }
        }
        Ok(out)
    }
}

/// Drops the first `offset` bytes of a stream.
pub(crate) fn skip(body: BlobReader, offset: u64) -> BlobReader {
    if offset == 0 {
        return body;
    }
    let mut left = offset;
    Box::pin(body.filter_map(move |chunk| {
        let out = match chunk {
            Ok(mut c) => {
                let n = (c.len() as u64).min(left);
                left -= n;
                let rest = c.split_off(n as usize);
                (!rest.is_empty()).then_some(Ok(rest))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    }))
}

#[async_trait::async_trait]
impl Destination for OciDir {
    fn describe(&self) -> String {
        self.at.clone()
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, TransferError> {
        Ok(tokio::fs::try_exists(self.blob_path(digest))
            .await
            .unwrap_or(false))
    }

    async fn put_blob(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        let dest = self.blob_path(&desc.digest);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(());
        }
        let body = source.blob(&desc.digest, desc.size, 0).await?;
        write_verified(&dest, body, &desc.digest, desc.size, progress, &self.at).await
    }

    async fn has_manifest(&self, digest: &Digest) -> Result<bool, TransferError> {
        self.has_blob(digest).await
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<(), TransferError> {
        let dest = self.blob_path(&manifest.digest);
        if !tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let body: BlobReader = Box::pin(futures_util::stream::iter([Ok(manifest.bytes.clone())]));
            let size = manifest.bytes.len() as u64;
            write_verified(&dest, body, &manifest.digest, size, &|_| {}, &self.at).await?;
        }
        if let Some(tag) = tag {
            self.names.lock().expect("names lock").tag(manifest, tag);
        }
        Ok(())
    }

    /// Writes `index.json`: the entries already there, except those whose ref name was
    /// given again, then the new ones.
    async fn finish(&self) -> Result<(), TransferError> {
        let index_path = self.root.join(INDEX_FILE);
        let existing: Vec<LayoutImage> = match std::fs::read(&index_path) {
            Ok(b) => parse_index(&b, &self.at)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(failed(&self.at, INDEX_FILE, format!("cannot read: {e}"))),
        };
        let names = std::mem::take(&mut *self.names.lock().expect("names lock"));
        let new_tags: HashSet<&str> = names.entries.iter().map(|(t, ..)| t.as_str()).collect();
        let mut entries: Vec<(Descriptor, BTreeMap<String, String>)> = existing
            .into_iter()
            .filter(|i| !i.ref_name.as_deref().is_some_and(|r| new_tags.contains(r)))
            .map(|i| (i.descriptor, BTreeMap::new()))
            .collect();
        entries.extend(names.entries.iter().map(|(_, d, a)| (d.clone(), a.clone())));
        let tmp = self
            .root
            .join(format!(".{INDEX_FILE}.partial-{}", std::process::id()));
        std::fs::write(&tmp, index_json(&entries))
            .and_then(|()| std::fs::rename(&tmp, &index_path))
            .map_err(|e| failed(&self.at, INDEX_FILE, format!("cannot write: {e}")))
    }
}
