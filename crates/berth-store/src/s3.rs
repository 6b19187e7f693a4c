//! The S3 blob store: the same contract as the filesystem store, on any S3-compatible
//! object store (AWS S3, MinIO, Ceph RGW, Garage), through `object_store`.
//!
//! Layout in the bucket, under an optional prefix:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: committed blobs, immutable;
//! - `uploads/<id>/area`: the empty object that says an upload area exists;
//! - `uploads/<id>/p-<seq>-<start>`: the upload's bytes from logical offset `start`, one
//!   object per append request (per segment for a followed append). A part with a higher
//!   `seq` cuts everything at or after its `start` (that is how an append at an earlier
//!   offset discards a tail: S3 cannot truncate an object), so the upload's bytes are the
//!   parts applied in `seq` order;
//! - `quarantine/<algorithm>-<hex>-<unix time>`: damaged bytes moved out of service;
//! - `tmp/`: readiness probes.
//!
//! An append streams into one object (a multipart upload of [`PART`]-sized parts once a
//! part's worth has arrived, a single PUT below that), hashing as it goes, so a push of
//! any size in one request is one object. A followed append (a cache fill, whose readers
//! stream the bytes while they arrive) starts a new object every [`SEGMENT`] bytes
//! instead, since an object is readable only once complete. The hash state is the
//! caller's [`DigestHasher`], carried between requests in memory; another process
//! rebuilds it with [`BlobStore::hash_upload`], which re-reads the parts (ring's hasher
//! cannot be serialised).
//!
//! Commit makes `blobs/<digest>` in one of two ways:
//! - an upload that is one whole object of at most [`MAX_COPY`] bytes (5 GiB, the most
//!   one CopyObject may copy) is copied server side: no byte passes through berth;
//! - anything else (several parts: a chunked push, a fill of more than one segment; or
//!   more than 5 GiB) is streamed through berth into a multipart upload at the blob's
//!   key, never through an intermediate object (`object_store` offers no multipart copy).
//!
//! Two writers of one digest (replicas filling the same blob) never both write it: the
//! registry commits under its per-digest bytes lock, which PostgreSQL makes cross-replica
//! (`Coordination::lock_bytes`), and a HEAD under that lock skips the work when the blob
//! exists with the upload's size (an object of another size cannot be this digest's bytes
//! and is replaced, as the filesystem store's rename replaces a file). The server-side copy
//! is also a conditional create (`CopyMode::Create`: `object_store` copies as a one-part
//! multipart upload completed with `If-None-Match: *`), so processes sharing a bucket
//! without a shared lock cannot clobber each other either: the loser sees "already
//! exists", checks the size and succeeds. The streamed path has no conditional form
//! (`object_store` offers no conditional multipart upload), so it relies on the lock and
//! the HEAD. On s3s-fs, whose part copy reads and writes the bytes again, the conditional
//! copy costs about half the push throughput against a plain CopyObject (bench/backends.sh:
//! 42 against 94 MiB/s for 1 GiB); on S3 itself a part copy stays inside the store. Before
//! one object per request, a 1 GiB push composed 256 MiB segments first (18-30 MiB/s).
//!
//! Request bodies are sent as `UNSIGNED-PAYLOAD` unless [`S3Settings::sign_payload`]:
//! signing hashes every byte once more in berth and once more in the server.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_oci::{Digest, DigestHasher, UploadId};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3CopyIfNotExists};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, CopyMode, CopyOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::sync::watch;

use crate::Result;
use crate::blob::{BlobRead, BlobSink, BlobStore, ByteRange, UploadReader};
use crate::fs::READ_CHUNK;

/// Bytes per multipart part: S3 wants at least 5 MiB for every part but the last. Two
/// parts in flight per upload bound its memory to about three of these.
const PART: usize = 8 << 20;
/// Parts uploading at once per upload.
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes per upload object in a followed append (a cache fill). Its readers see bytes as
/// each segment lands, so smaller is more prompt; a commit of several segments streams
/// them through berth into one object, so larger is cheaper. Most layers fit in one
/// segment and commit with a server-side copy.
pub const SEGMENT: u64 = 256 << 20;
/// The largest object one CopyObject may copy (AWS's limit); a larger upload is streamed.
pub const MAX_COPY: u64 = 5 << 30;
/// How long a committed upload's id still leads readers to its blob (readers of a cache
/// fill that began before the commit).
const FORWARD_FOR: Duration = Duration::from_secs(600);

/// Where the bucket is and how to reach it. Secrets are read by the caller (from the
/// environment or files named in the configuration) and never printed.
#[derive(Clone)]
pub struct S3Settings {
    /// `http(s)://host:port`; `None` means AWS S3 for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`), or empty.
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
    /// Sign each request body's SHA-256 (SigV4) rather than send `UNSIGNED-PAYLOAD`. It
    /// costs a hash of every byte on both ends and adds nothing over TLS, which already
    /// guards the bytes in transit; berth checks what it reads back against the digest.
    pub sign_payload: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("sign_payload", &self.sign_payload)
            .finish()
    }
}

impl S3Settings {
    /// "bucket B at http://host:port" (or "in AWS region R"), for error messages.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("bucket {:?} at {e}", self.bucket),
            None => format!("bucket {:?} in AWS region {}", self.bucket, self.region),
        }
    }
}

struct Inner {
    s3: AmazonS3,
    prefix: String,
    describe: String,
    /// Upload id -> the blob it became, for readers that outlive the upload area.
    committed: Mutex<HashMap<String, (Digest, Instant)>>,
}

pub struct S3BlobStore {
    inner: Arc<Inner>,
}

/// One upload object: bytes `[0, len)` of `key` are the upload's `[start, start + len)`.
#[derive(Clone, Debug)]
struct Extent {
    start: u64,
    len: u64,
    object_size: u64,
    key: Path,
}

fn end_of(extents: &[Extent]) -> u64 {
    extents.last().map(|e| e.start + e.len).unwrap_or(0)
}

fn io_err(what: impl std::fmt::Display, e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            io::ErrorKind::PermissionDenied
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3BlobStore {
    /// Connects and checks the bucket answers (a listing under the prefix), so a wrong
    /// endpoint, a missing bucket or refused credentials stop the server at start with a
    /// sentence naming the endpoint and bucket.
    pub async fn open(settings: &S3Settings) -> Result<S3BlobStore> {
        let prefix = settings.prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !prefix.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "storage.s3.prefix {:?} has an empty, `.` or `..` segment",
                    settings.prefix
                ),
            )
            .into());
        }
        let client = ClientOptions::new()
            .with_allow_http(settings.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            // A blob GET lasts as long as the client reading it; only a stall is an error.
            .with_timeout_disabled()
            .with_config(object_store::ClientConfigKey::ReadTimeout, "60s");
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let mut b = AmazonS3Builder::new()
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_allow_http(settings.allow_http)
            .with_client_options(client)
            .with_retry(retry)
            .with_unsigned_payload(!settings.sign_payload)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
        if let Some(e) = &settings.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &settings.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &settings.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let describe = settings.describe();
        let s3 = b.build().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("S3 {describe}: configuration is not usable: {e}"),
            )
        })?;
        let store = S3BlobStore {
            inner: Arc::new(Inner {
                s3,
                prefix,
                describe,
                committed: Mutex::new(HashMap::new()),
            }),
        };
        store.check().await?;
        Ok(store)
    }

    /// Lists under the prefix and turns a failure into a sentence an operator can act on.
    async fn check(&self) -> Result<()> {
        let at = self.inner.key("blobs");
        let Err(e) = self.inner.s3.list_with_delimiter(Some(&at)).await else {
            return Ok(());
        };
        let d = &self.inner.describe;
        let text = e.to_string();
        let why = if text.contains("NoSuchBucket") || is_not_found(&e) {
            format!("S3 {d} does not exist (create it first)")
        } else if matches!(
            e,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        ) || [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            format!(
                "S3 {d} refused the credentials (check storage.s3.access_key_id_env and \
                 secret_access_key_env): {text}"
            )
        } else if text.contains("error sending request") || text.contains("connect") {
            format!("S3 {d} cannot be reached (is the endpoint right and up?): {text}")
        } else {
            format!("S3 {d} cannot be listed: {text}")
        };
        Err(io::Error::other(why).into())
    }

    /// A URL that fetches the blob's bytes directly from the object store for `ttl`,
    /// for redirecting blob GETs. It is signed, not checked: call it for blobs known to exist.
    pub async fn presigned_get(&self, digest: &Digest, ttl: Duration) -> Result<String> {
        let key = self.inner.blob_key(digest);
        let url = self
            .inner
            .s3
            .signed_url(http::Method::GET, &key, ttl)
            .await
            .map_err(|e| {
                io_err(
                    format_args!("presigning blob {digest} in {}", self.inner.describe),
                    e,
                )
            })?;
        Ok(url.to_string())
    }

    /// The key a blob is stored under (for tests and the migration tool).
    pub fn blob_key(&self, digest: &Digest) -> String {
        self.inner.blob_key(digest).to_string()
    }
}

impl Inner {
    fn key(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn blob_key(&self, digest: &Digest) -> Path {
        let hex = digest.hex();
        self.key(&format!(
            "blobs/{}/{}/{hex}",
            digest.algorithm().as_str(),
            &hex[..2]
        ))
    }

    fn area(&self, id: &UploadId) -> Path {
        self.key(&format!("uploads/{}", id.as_str()))
    }

    fn marker(&self, id: &UploadId) -> Path {
        self.key(&format!("uploads/{}/area", id.as_str()))
    }

    fn part_key(&self, id: &UploadId, seq: u64, start: u64) -> Path {
        self.key(&format!("uploads/{}/p-{seq:010}-{start:020}", id.as_str()))
    }

    async fn exists(&self, key: &Path) -> io::Result<Option<u64>> {
        match self.s3.head(key).await {
            Ok(m) => Ok(Some(m.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(io_err(format_args!("HEAD {key} in {}", self.describe), e)),
        }
    }

    async fn require_area(&self, id: &UploadId) -> io::Result<()> {
        match self.exists(&self.marker(id)).await? {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("upload area {id} is missing in {}", self.describe),
            )),
        }
    }

    /// Every object of an upload area.
    async fn area_objects(&self, id: &UploadId) -> io::Result<Vec<object_store::ObjectMeta>> {
        let area = self.area(id);
        self.s3
            .list(Some(&area))
            .try_collect()
            .await
            .map_err(|e| io_err(format_args!("listing upload area {id} in {}", self.describe), e))
    }

    /// The upload's bytes as extents in order, and the highest part sequence number.
    async fn layout(&self, id: &UploadId) -> io::Result<(Vec<Extent>, u64)> {
        let mut parts: Vec<(u64, u64, object_store::ObjectMeta)> = self
            .area_objects(id)
            .await?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                let rest = name.strip_prefix("p-")?;
                let (seq, start) = rest.split_once('-')?;
                Some((seq.parse().ok()?, start.parse().ok()?, m))
            })
            .collect();
        parts.sort_by_key(|p| p.0);
        let mut extents: Vec<Extent> = Vec::new();
        let mut top = 0;
        for (seq, start, meta) in parts {
            top = seq;
            extents.retain(|e| e.start < start);
            if let Some(last) = extents.last_mut() {
                last.len = last.len.min(start - last.start);
            }
            if start > end_of(&extents) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("upload area {id} has a gap before offset {start}"),
                ));
            }
            if meta.size > 0 {
                extents.push(Extent {
                    start,
                    len: meta.size,
                    object_size: meta.size,
                    key: meta.location,
                });
            }
        }
        Ok((extents, top))
    }

    /// Streams `range` of one object, with errors that name it.
    async fn stream_range(
        self: &Arc<Self>,
        key: &Path,
        range: Option<Range<u64>>,
    ) -> io::Result<Option<(u64, BoxStream<'static, io::Result<Bytes>>)>> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = match self.s3.get_opts(key, opts).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err(format_args!("GET {key} in {}", self.describe), e)),
        };
        let size = got.meta.size;
        let want = got.range.end - got.range.start;
        let what = format!("{key} in {}", self.describe);
        Ok(Some((size, bounded(got.into_stream(), want, what))))
    }
}

/// Splits a body into chunks of at most [`READ_CHUNK`] and ends it with an error, never
/// early, if fewer than `want` bytes arrive.
fn bounded(
    body: BoxStream<'static, object_store::Result<Bytes>>,
    want: u64,
    what: String,
) -> BoxStream<'static, io::Result<Bytes>> {
    let what = Arc::new(what);
    let split = body.flat_map(move |item| {
        let what = what.clone();
        let pieces: Vec<io::Result<Bytes>> = match item {
            Ok(mut b) => {
                let mut v = Vec::with_capacity(b.len() / READ_CHUNK + 1);
                while b.len() > READ_CHUNK {
                    v.push(Ok(b.split_to(READ_CHUNK)));
                }
                v.push(Ok(b));
                v
            }
            Err(e) => vec![Err(io_err(format_args!("reading {what}"), e))],
        };
        futures_util::stream::iter(pieces)
    });
    let mut seen = 0u64;
    let mut done = false;
    split
        .map(Some)
        .chain(futures_util::stream::iter([None]))
        .filter_map(move |item| {
            let out = match item {
                _ if done => None,
                Some(Ok(b)) => {
                    seen += b.len() as u64;
                    Some(Ok(b))
                }
                Some(Err(e)) => {
                    done = true;
                    Some(Err(e))
                }
                None if seen < want => {
                    done = true;
                    Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("object ended with {} bytes still owed", want - seen),
                    )))
                }
                None => None,
            };
            futures_util::future::ready(out)
        })
        .boxed()
}

/// Withholds the last chunk of a whole-blob read until the bytes hash to `expected`.
fn verified(
    body: BoxStream<'static, io::Result<Bytes>>,
    mut hasher: DigestHasher,
    expected: Digest,
) -> BoxStream<'static, io::Result<Bytes>> {
    let mut held: Option<Bytes> = None;
    let mut failed = false;
    body.map(Some)
        .chain(futures_util::stream::iter([None]))
        .filter_map(move |item| {
            let out = match item {
                _ if failed => None,
                Some(Ok(b)) => {
                    hasher.update(&b);
                    held.replace(b).map(Ok)
                }
                Some(Err(e)) => {
                    failed = true;
                    Some(Err(e))
                }
                None => {
                    let actual = hasher.clone().finish();
                    if actual == expected {
                        held.take().map(Ok)
                    } else {
                        failed = true;
                        Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("blob {expected} in the object store hashes to {actual}"),
                        )))
                    }
                }
            };
            futures_util::future::ready(out)
        })
        .boxed()
}

/// Appends to an upload area: one object per segment, hashed as the bytes pass.
struct S3Sink {
    inner: Arc<Inner>,
    id: UploadId,
    hasher: DigestHasher,
    /// Bytes per object: [`SEGMENT`] when readers follow the upload, else unbounded.
    segment: u64,
    seq: u64,
    /// Logical offset where the current segment starts.
    seg_start: u64,
    seg_len: u64,
    /// Bytes of the current segment not yet handed to a multipart upload.
    pending: Vec<Bytes>,
    pending_len: usize,
    multipart: Option<WriteMultipart>,
    progress_tx: watch::Sender<u64>,
    progress: watch::Receiver<u64>,
}

impl S3Sink {
    fn segment_key(&self) -> Path {
        self.inner.part_key(&self.id, self.seq, self.seg_start)
    }

    async fn finish_segment(&mut self) -> io::Result<()> {
        if self.seg_len == 0 {
            return Ok(());
        }
        let key = self.segment_key();
        let what = format!("writing upload {} part {key} in {}", self.id, self.inner.describe);
        match self.multipart.take() {
            Some(mut m) => {
                for b in self.pending.drain(..) {
                    m.put(b);
                }
                m.finish().await.map_err(|e| io_err(&what, e))?;
            }
            None => {
                let payload: PutPayload = self.pending.drain(..).collect();
                self.inner
                    .s3
                    .put(&key, payload)
                    .await
                    .map_err(|e| io_err(&what, e))?;
            }
        }
        self.pending_len = 0;
        self.seg_start += self.seg_len;
        self.seg_len = 0;
        self.seq += 1;
        self.progress_tx.send_replace(self.seg_start);
        Ok(())
    }
}

impl Drop for S3Sink {
    /// A sink dropped mid-segment (the client went away) abandons its multipart upload;
    /// abort it so the bucket does not keep invisible parts (a lifecycle rule catches
    /// what a crash leaves).
    fn drop(&mut self) {
        if let Some(m) = self.multipart.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = m.abort().await;
            });
        }
    }
}

#[async_trait]
impl BlobSink for S3Sink {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.hasher.update(&chunk);
        self.seg_len += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.multipart.is_none() && self.pending_len >= PART {
            let key = self.segment_key();
            let upload = self.inner.s3.put_multipart(&key).await.map_err(|e| {
                io_err(
                    format_args!("starting multipart upload {key} in {}", self.inner.describe),
                    e,
                )
            })?;
            self.multipart = Some(WriteMultipart::new_with_chunk_size(upload, PART));
        }
        if let Some(m) = &mut self.multipart {
            for b in self.pending.drain(..) {
                m.put(b);
            }
            self.pending_len = 0;
            m.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| {
                io_err(
                    format_args!("uploading upload {} in {}", self.id, self.inner.describe),
                    e,
                )
            })?;
        }
        if self.seg_len >= self.segment {
            self.finish_segment().await?;
        }
        Ok(())
    }

    fn progress(&self) -> watch::Receiver<u64> {
        self.progress.clone()
    }

    async fn finish(mut self: Box<Self>) -> io::Result<(u64, DigestHasher)> {
        self.finish_segment().await?;
        Ok((self.seg_start, self.hasher.clone()))
    }
}

struct S3UploadReader {
    inner: Arc<Inner>,
    id: UploadId,
    extents: tokio::sync::Mutex<Vec<Extent>>,
}

#[async_trait]
impl UploadReader for S3UploadReader {
    async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let mut extents = self.extents.lock().await;
        if offset >= end_of(&extents) {
            // The upload may have grown (a fill in progress) or been committed.
            match self.inner.layout(&self.id).await {
                Ok((fresh, _)) if !fresh.is_empty() => *extents = fresh,
                _ => {}
            }
        }
        let Some(e) = extents
            .iter()
            .find(|e| e.start <= offset && offset < e.start + e.len)
            .cloned()
        else {
            if let Some(bytes) = self.read_committed(offset, max).await? {
                return Ok(bytes);
            }
            return Ok(Bytes::new());
        };
        drop(extents);
        let from = offset - e.start;
        let to = e.len.min(from + max as u64);
        match self.inner.s3.get_range(&e.key, from..to).await {
            Ok(b) => Ok(b),
            Err(err) if is_not_found(&err) => Ok(self.read_committed(offset, max).await?.unwrap_or_default()),
            Err(err) => Err(io_err(
                format_args!("reading upload {} in {}", self.id, self.inner.describe),
                err,
            )),
        }
    }
}

impl S3UploadReader {
    /// After a commit the parts are gone: read the blob the upload became.
    async fn read_committed(&self, offset: u64, max: usize) -> io::Result<Option<Bytes>> {
        let digest = self
            .inner
            .committed
            .lock()
            .unwrap()
            .get(self.id.as_str())
            .map(|c| c.0.clone());
        let Some(digest) = digest else {
            return Ok(None);
        };
        let key = self.inner.blob_key(&digest);
        let Some(size) = self.inner.exists(&key).await? else {
            return Ok(None);
        };
        if offset >= size {
            return Ok(Some(Bytes::new()));
        }
        let to = size.min(offset + max as u64);
        self.inner
            .s3
            .get_range(&key, offset..to)
            .await
            .map(Some)
            .map_err(|e| {
                io_err(
                    format_args!("reading blob {digest} in {}", self.inner.describe),
                    e,
                )
            })
    }
}

impl S3BlobStore {
    async fn delete_area(&self, id: &UploadId) -> io::Result<()> {
        let inner = &self.inner;
        let keys = inner
            .area_objects(id)
            .await?
            .into_iter()
            .map(|m| Ok(m.location))
            .collect::<Vec<_>>();
        // The marker goes last, so an area is listed until all its parts are gone.
        let marker = inner.marker(id);
        let (marker_keys, parts): (Vec<_>, Vec<_>) =
            keys.into_iter().partition(|k| matches!(k, Ok(p) if *p == marker));
        for batch in [parts, marker_keys] {
            inner
                .s3
                .delete_stream(futures_util::stream::iter(batch).boxed())
                .try_collect::<Vec<_>>()
                .await
                .or_else(|e| if is_not_found(&e) { Ok(Vec::new()) } else { Err(e) })
                .map_err(|e| io_err(format_args!("deleting upload area {id} in {}", inner.describe), e))?;
        }
        Ok(())
    }

    /// Makes `blobs/<digest>` hold the upload's bytes (see the module comment): a
    /// server-side copy of a single whole object up to [`MAX_COPY`], else a stream of the
    /// parts into a multipart upload at the blob's key. Skipped when the blob exists with
    /// the upload's size; an object of another size there cannot be this digest's bytes
    /// and is replaced, as the filesystem store's rename replaces a file.
    async fn create_blob(&self, id: &UploadId, extents: &[Extent], digest: &Digest) -> io::Result<()> {
        let inner = &self.inner;
        let to = inner.blob_key(digest);
        let size = end_of(extents);
        match inner.exists(&to).await? {
            Some(existing) if existing == size => return Ok(()),
            // Damage (or bytes written outside berth): the conditional create below would
            // keep it, so it goes first.
            Some(existing) => {
                tracing::warn!(
                    %digest,
                    existing,
                    size,
                    "blob object in the bucket has the wrong size; replacing it with the upload"
                );
                inner.s3.delete(&to).await.map_err(|e| {
                    io_err(
                        format_args!("deleting the wrong-size blob {digest} in {}", inner.describe),
                        e,
                    )
                })?;
            }
            None => {}
        }
        let what = format!("committing upload {id} as blob {digest} in {}", inner.describe);
        match extents {
            // A part copy of zero bytes is refused by S3; a conditional PUT does the same.
            _ if size == 0 => {
                let opts = object_store::PutOptions {
                    mode: object_store::PutMode::Create,
                    ..Default::default()
                };
                match inner.s3.put_opts(&to, PutPayload::new(), opts).await {
                    Err(
                        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
                    ) => Ok(()),
                    other => other.map(drop),
                }
            }
            [e] if e.start == 0 && e.len == e.object_size && size <= MAX_COPY => {
                let opts = CopyOptions {
                    mode: CopyMode::Create,
                    ..Default::default()
                };
                match inner.s3.copy_opts(&e.key, &to, opts).await {
                    Err(
                        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
                    ) => {
                        // Another process sharing the bucket committed this digest between
                        // our HEAD and our copy: the conditional create kept its object.
                        tracing::debug!(%digest, "blob committed concurrently by another writer");
                        let existing = inner.exists(&to).await?.unwrap_or(size);
                        if existing != size {
                            return Err(io::Error::other(format!(
                                "{what}: another writer committed {existing} bytes, the upload has {size}"
                            )));
                        }
                        Ok(())
                    }
                    other => other,
                }
            }
            _ => return self.stream_blob(extents, &to, &what).await,
        }
        .map_err(|e| io_err(&what, e))
    }

    /// Streams the upload's extents, in order, into one multipart upload at `to`.
    async fn stream_blob(&self, extents: &[Extent], to: &Path, what: &str) -> io::Result<()> {
        let inner = &self.inner;
        let upload = inner.s3.put_multipart(to).await.map_err(|e| io_err(what, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let streamed = async {
            for e in extents {
                let Some((_, mut body)) = inner.stream_range(&e.key, Some(0..e.len)).await? else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{what}: part {} vanished", e.key),
                    ));
                };
                while let Some(b) = body.next().await {
                    w.put(b?);
                    w.wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|err| io_err(what, err))?;
                }
            }
            Ok(())
        }
        .await;
        match streamed {
            Ok(()) => w.finish().await.map(drop).map_err(|e| io_err(what, e)),
            Err(e) => {
                // Invisible parts would linger until a lifecycle rule removed them.
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Opens an upload area for appending at `offset`, one object per `segment` bytes.
    async fn sink(
        &self,
        id: &UploadId,
        offset: u64,
        hasher: DigestHasher,
        segment: u64,
    ) -> Result<Box<dyn BlobSink>> {
        let inner = &self.inner;
        inner.require_area(id).await?;
        let (extents, top) = inner.layout(id).await?;
        let end = end_of(&extents);
        if offset > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("upload area {id} holds {end} bytes, cannot append at {offset}"),
            )
            .into());
        }
        let mut seq = top + 1;
        if offset < end {
            // Parts wholly after `offset` go; an empty part at `offset` cuts the one
            // that straddles it (S3 cannot truncate an object).
            let gone: Vec<_> = extents
                .iter()
                .filter(|e| e.start >= offset)
                .map(|e| Ok(e.key.clone()))
                .collect();
            inner
                .s3
                .delete_stream(futures_util::stream::iter(gone).boxed())
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| io_err(format_args!("cutting upload {id} at {offset}"), e))?;
            if extents
                .iter()
                .any(|e| e.start < offset && offset < e.start + e.len)
            {
                inner
                    .s3
                    .put(&inner.part_key(id, seq, offset), PutPayload::new())
                    .await
                    .map_err(|e| io_err(format_args!("cutting upload {id} at {offset}"), e))?;
                seq += 1;
            }
        }
        let (progress_tx, progress) = watch::channel(offset);
        Ok(Box::new(S3Sink {
            inner: inner.clone(),
            id: id.clone(),
            hasher,
            segment,
            seq,
            seg_start: offset,
            seg_len: 0,
            pending: Vec::new(),
            pending_len: 0,
            multipart: None,
            progress_tx,
            progress,
        }))
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn presigned_url(&self, digest: &Digest, ttl: Duration) -> Result<Option<String>> {
        self.presigned_get(digest, ttl).await.map(Some)
    }

    async fn create_upload(&self, id: &UploadId) -> Result<()> {
        // Creating an area again starts it over, like truncating a file.
        if self.inner.exists(&self.inner.marker(id)).await?.is_some() {
            self.delete_area(id).await?;
        }
        let key = self.inner.marker(id);
        self.inner.s3.put(&key, PutPayload::new()).await.map_err(|e| {
            io_err(
                format_args!("creating upload area {id} in {}", self.inner.describe),
                e,
            )
        })?;
        Ok(())
    }

    async fn append(&self, id: &UploadId, offset: u64, hasher: DigestHasher) -> Result<Box<dyn BlobSink>> {
        self.sink(id, offset, hasher, u64::MAX).await
    }

    async fn append_followed(
        &self,
        id: &UploadId,
        offset: u64,
        hasher: DigestHasher,
    ) -> Result<Box<dyn BlobSink>> {
        self.sink(id, offset, hasher, SEGMENT).await
    }

    async fn read_upload(&self, id: &UploadId) -> Result<Box<dyn UploadReader>> {
        self.inner.require_area(id).await?;
        let (extents, _) = self.inner.layout(id).await?;
        Ok(Box::new(S3UploadReader {
            inner: self.inner.clone(),
            id: id.clone(),
            extents: tokio::sync::Mutex::new(extents),
        }))
    }

    async fn hash_upload(&self, id: &UploadId, len: u64, mut hasher: DigestHasher) -> Result<DigestHasher> {
        let inner = &self.inner;
        inner.require_area(id).await?;
        let (extents, _) = inner.layout(id).await?;
        let held = end_of(&extents);
        if held < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("upload area {id} holds {held} bytes, {len} were recorded"),
            )
            .into());
        }
        for e in extents.iter().filter(|e| e.start < len) {
            let upto = e.len.min(len - e.start);
            let Some((_, mut body)) = inner.stream_range(&e.key, Some(0..upto)).await? else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("upload {id} lost part {} while it was re-hashed", e.key),
                )
                .into());
            };
            while let Some(b) = body.next().await {
                hasher.update(&b?);
            }
        }
        Ok(hasher)
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<()> {
        self.inner.require_area(id).await?;
        let (extents, _) = self.inner.layout(id).await?;
        self.create_blob(id, &extents, digest).await?;
        {
            let mut committed = self.inner.committed.lock().unwrap();
            committed.retain(|_, (_, at)| at.elapsed() < FORWARD_FOR);
            committed.insert(id.as_str().to_string(), (digest.clone(), Instant::now()));
        }
        self.delete_area(id).await?;
        Ok(())
    }

    async fn upload_ids(&self) -> Result<Vec<UploadId>> {
        let at = self.inner.key("uploads");
        let listed = self
            .inner
            .s3
            .list_with_delimiter(Some(&at))
            .await
            .map_err(|e| io_err(format_args!("listing uploads in {}", self.inner.describe), e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(UploadId::parse))
            .collect())
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<()> {
        self.delete_area(id).await?;
        Ok(())
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.inner.exists(&self.inner.blob_key(digest)).await?)
    }

    async fn open(&self, digest: &Digest, range: Option<ByteRange>) -> Result<Option<BlobRead>> {
        let key = self.inner.blob_key(digest);
        let Some((size, body)) = self
            .inner
            .stream_range(&key, range.map(|r| r.start..r.end + 1))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(BlobRead { size, body }))
    }

    async fn open_verified(&self, digest: &Digest) -> Result<Option<BlobRead>> {
        let key = self.inner.blob_key(digest);
        let Some((size, body)) = self.inner.stream_range(&key, None).await? else {
            return Ok(None);
        };
        let body = verified(body, DigestHasher::new(digest.algorithm()), digest.clone());
        Ok(Some(BlobRead { size, body }))
    }

    async fn quarantine(&self, digest: &Digest) -> Result<bool> {
        let inner = &self.inner;
        let from = inner.blob_key(digest);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = inner.key(&format!(
            "quarantine/{}-{}-{stamp}",
            digest.algorithm().as_str(),
            digest.hex()
        ));
        match inner.s3.copy(&from, &to).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => {
                return Err(io_err(
                    format_args!("quarantining blob {digest} in {}", inner.describe),
                    e,
                )
                .into());
            }
        }
        self.delete(digest).await?;
        Ok(true)
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        match self.inner.s3.delete(&self.inner.blob_key(digest)).await {
            Err(e) if !is_not_found(&e) => Err(io_err(
                format_args!("deleting blob {digest} in {}", self.inner.describe),
                e,
            )
            .into()),
            _ => Ok(()),
        }
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<()> {
        let keys: Vec<_> = digests.iter().map(|d| Ok(self.inner.blob_key(d))).collect();
        let results: Vec<_> = self
            .inner
            .s3
            .delete_stream(futures_util::stream::iter(keys).boxed())
            .collect()
            .await;
        for r in results {
            match r {
                Err(e) if !is_not_found(&e) => {
                    return Err(io_err(format_args!("deleting blobs in {}", self.inner.describe), e).into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn check_writable(&self) -> Result<()> {
        // Unique per process and call: replicas sharing a bucket probe at the same time.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let key = self
            .inner
            .key(&format!("tmp/ready-{}-{nanos}-{n}", std::process::id()));
        let what = format!("probing writes to {}", self.inner.describe);
        self.inner
            .s3
            .put(&key, PutPayload::from_static(b"ok"))
            .await
            .map_err(|e| io_err(&what, e))?;
        self.inner.s3.delete(&key).await.map_err(|e| io_err(&what, e))?;
        Ok(())
    }
}
