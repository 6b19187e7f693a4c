//! The filesystem blob store.
//!
//! Layout under the data directory:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: committed blobs, immutable;
//! - `uploads/<id>`: upload areas being appended to;
//! - `tmp/`: scratch space, emptied at start;
//! - `quarantine/`: damaged bytes moved out of service by a repair, for inspection.
//!
//! Paths are built only from [`Digest`] and [`UploadId`], whose grammars admit no `/`
//! and no `..`, so no request can name a file outside the data directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use berth_oci::{Digest, DigestHasher, UploadId};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, spawn_blocking};

use crate::Result;
use crate::blob::{BlobRead, BlobSink, BlobStore, ByteRange, UploadReader};

/// Bytes read from disk per chunk when serving: large enough that per-chunk overhead is
/// small next to the copy, small enough that many parallel downloads stay cheap in memory.
pub const READ_CHUNK: usize = 512 << 10;
/// Most bytes an upload writer gathers from its queue into one round of writes.
const WRITE_BATCH: usize = 1 << 20;

pub struct FsBlobStore {
    root: PathBuf,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("blocking task failed: {e}"))))
}

impl FsBlobStore {
    /// Opens (creating) the store under `root` and empties its scratch directory.
    pub async fn open(root: &Path) -> Result<FsBlobStore> {
        let root = root.to_path_buf();
        let r = root.clone();
        blocking(move || {
            for d in ["blobs", "uploads"] {
                std::fs::create_dir_all(r.join(d))?;
            }
            let tmp = r.join("tmp");
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            std::fs::create_dir_all(tmp)
        })
        .await?;
        Ok(FsBlobStore { root })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Where an upload area lives. Public so the path property tests can check that no
    /// accepted upload id leads outside the data directory.
    pub fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    async fn open_checked(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
        verify: bool,
    ) -> Result<Option<BlobRead>> {
        let p = self.blob_path(digest);
        let opened = blocking(move || match File::open(&p) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok(Some((f, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await?;
        let Some((mut file, size)) = opened else {
            return Ok(None);
        };
        let (start, len) = match range {
            Some(r) => (r.start, r.len()),
            None => (0, size),
        };
        if start > 0 {
            file.seek(SeekFrom::Start(start))?;
        }
        let check = verify.then(|| (DigestHasher::new(digest.algorithm()), digest.clone()));
        let body = read_ahead(file, len, check.filter(|_| range.is_none()));
        Ok(Some(BlobRead { size, body }))
    }
}

struct FsSink {
    to_hasher: Option<mpsc::Sender<Bytes>>,
    to_writer: Option<mpsc::Sender<Bytes>>,
    hasher: JoinHandle<DigestHasher>,
    writer: JoinHandle<io::Result<u64>>,
    progress: watch::Receiver<u64>,
}

impl FsSink {
    /// Hashing and writing each run on their own blocking thread, fed the same chunks
    /// through bounded channels: hashing bounds upload speed, so nothing else may wait
    /// on the thread that hashes, and the network side keeps receiving meanwhile.
    fn start(path: PathBuf, offset: u64, mut state: DigestHasher) -> FsSink {
        let (to_hasher, mut hash_rx) = mpsc::channel::<Bytes>(8);
        let (to_writer, mut write_rx) = mpsc::channel::<Bytes>(8);
        let (progress_tx, progress) = watch::channel(offset);
        let hasher = spawn_blocking(move || {
            while let Some(chunk) = hash_rx.blocking_recv() {
                state.update(&chunk);
            }
            state
        });
        let writer = spawn_blocking(move || {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut size = offset;
            let mut batch: Vec<Bytes> = Vec::new();
            while let Some(first) = write_rx.blocking_recv() {
                // Coalesce what is already queued into one vectored write, so small
                // network chunks cost few syscalls and every write is visible at once.
                let mut queued = first.len();
                batch.push(first);
                while queued < WRITE_BATCH {
                    match write_rx.try_recv() {
                        Ok(c) => {
                            queued += c.len();
                            batch.push(c);
                        }
                        Err(_) => break,
                    }
                }
                for chunk in batch.drain(..) {
                    file.write_all(&chunk)?;
                }
                size += queued as u64;
                progress_tx.send_replace(size);
            }
            Ok(size)
        });
        FsSink {
            to_hasher: Some(to_hasher),
            to_writer: Some(to_writer),
            hasher,
            writer,
            progress,
        }
    }

    async fn writer_error(&mut self) -> io::Error {
        self.to_writer = None;
        match (&mut self.writer).await {
            Ok(Err(e)) => e,
            _ => io::Error::other("upload writer stopped"),
        }
    }
}

#[async_trait]
impl BlobSink for FsSink {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let (Some(h), Some(w)) = (&self.to_hasher, &self.to_writer) else {
            return Err(io::Error::other("write after finish"));
        };
        if w.send(chunk.clone()).await.is_err() {
            return Err(self.writer_error().await);
        }
        if h.send(chunk).await.is_err() {
            return Err(io::Error::other("upload hasher stopped"));
        }
        Ok(())
    }

    fn progress(&self) -> watch::Receiver<u64> {
        self.progress.clone()
    }

    async fn finish(mut self: Box<Self>) -> io::Result<(u64, DigestHasher)> {
        self.to_hasher = None;
        self.to_writer = None;
        let size = (&mut self.writer)
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("upload writer failed: {e}"))))?;
        let state = (&mut self.hasher)
            .await
            .map_err(|e| io::Error::other(format!("upload hasher failed: {e}")))?;
        Ok((size, state))
    }
}

struct FsUploadReader {
    file: Arc<File>,
}

#[async_trait]
impl UploadReader for FsUploadReader {
    async fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let file = self.file.clone();
        blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; max];
            let n = file.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok(Bytes::from(buf))
        })
        .await
    }
}

/// Read buffers of one download, recycled: a buffer the network side has finished with
/// is refilled while still warm in the CPU cache, and no chunk costs an allocation.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.0.lock().unwrap().pop().unwrap_or_default();
        buf.clear();
        buf.reserve(len);
        buf
    }
}

/// A chunk on its way to the client; its buffer goes back to the pool when sent.
struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut free = self.pool.0.lock().unwrap();
        if free.len() < 2 {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Verification of a whole-blob read: the running hash and the digest it must reach.
type Check = Option<(DigestHasher, Digest)>;

type ChunkRead = JoinHandle<io::Result<(File, Vec<u8>, Check)>>;

/// Reads the next chunk on the blocking pool. No thread is held while the client is slow:
/// each chunk is one short blocking task. With a check, the chunk is hashed on the same
/// thread, and the last chunk is refused (`InvalidData`) unless the digest matches.
fn read_chunk(file: File, remaining: u64, mut buf: Vec<u8>, mut check: Check) -> ChunkRead {
    spawn_blocking(move || {
        let want = remaining.min(READ_CHUNK as u64);
        let n = (&file).take(want).read_to_end(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob file ended with {remaining} bytes still owed"),
            ));
        }
        if let Some((hasher, expected)) = &mut check {
            hasher.update(&buf);
            if n as u64 == remaining {
                let (hasher, expected) = (hasher.clone(), expected.clone());
                let actual = hasher.finish();
                if actual != expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("blob {expected} on disk hashes to {actual}"),
                    ));
                }
            }
        }
        Ok((file, buf, check))
    })
}

/// Streams `len` bytes from `file`, reading one chunk ahead so the disk read of the next
/// chunk overlaps the network write of this one. Ends with an error, never early.
fn read_ahead(
    file: File,
    len: u64,
    check: Check,
) -> futures_util::stream::BoxStream<'static, io::Result<Bytes>> {
    let pool = BufferPool::default();
    let first = (len > 0).then(|| read_chunk(file, len, pool.take(READ_CHUNK), check));
    futures_util::stream::unfold((first, len, pool), |(pending, remaining, pool)| async move {
        let read = pending?
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("blob read task failed: {e}"))));
        match read {
            Ok((file, buf, check)) => {
                let left = remaining - buf.len() as u64;
                let next = (left > 0).then(|| read_chunk(file, left, pool.take(READ_CHUNK), check));
                let chunk = Bytes::from_owner(Pooled {
                    buf,
                    pool: pool.clone(),
                });
                Some((Ok(chunk), (next, left, pool)))
            }
            Err(e) => Some((Err(e), (None, 0, pool))),
        }
    })
    .boxed()
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn create_upload(&self, id: &UploadId) -> Result<()> {
        let p = self.upload_path(id);
        blocking(move || File::create(p).map(drop)).await?;
        Ok(())
    }

    async fn append(&self, id: &UploadId, offset: u64, hasher: DigestHasher) -> Result<Box<dyn BlobSink>> {
        let p = self.upload_path(id);
        if !tokio::fs::try_exists(&p).await? {
            return Err(
                io::Error::new(io::ErrorKind::NotFound, format!("upload area {id} is missing")).into(),
            );
        }
        Ok(Box::new(FsSink::start(p, offset, hasher)))
    }

    async fn read_upload(&self, id: &UploadId) -> Result<Box<dyn UploadReader>> {
        let p = self.upload_path(id);
        let file = blocking(move || File::open(p)).await?;
        Ok(Box::new(FsUploadReader { file: Arc::new(file) }))
    }

    async fn hash_upload(&self, id: &UploadId, len: u64, mut hasher: DigestHasher) -> Result<DigestHasher> {
        let p = self.upload_path(id);
        Ok(blocking(move || {
            let mut f = File::open(p)?.take(len);
            let mut buf = vec![0u8; READ_CHUNK];
            let mut seen = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                seen += n as u64;
            }
            if seen != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("upload area holds {seen} bytes, {len} were recorded"),
                ));
            }
            Ok(hasher)
        })
        .await?)
    }

    async fn commit_upload(&self, id: &UploadId, digest: &Digest) -> Result<()> {
        let from = self.upload_path(id);
        let to = self.blob_path(digest);
        blocking(move || {
            File::open(&from)?.sync_all()?;
            let dir = to.parent().expect("blob path has a parent");
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&from, &to)?;
            fsync_dir(dir)
        })
        .await?;
        Ok(())
    }

    async fn upload_ids(&self) -> Result<Vec<UploadId>> {
        let mut ids = Vec::new();
        let mut dir = tokio::fs::read_dir(self.root.join("uploads")).await?;
        while let Some(entry) = dir.next_entry().await? {
            if let Some(id) = entry.file_name().to_str().and_then(UploadId::parse) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<()> {
        match tokio::fs::remove_file(self.upload_path(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn open(&self, digest: &Digest, range: Option<ByteRange>) -> Result<Option<BlobRead>> {
        self.open_checked(digest, range, false).await
    }

    async fn open_verified(&self, digest: &Digest) -> Result<Option<BlobRead>> {
        self.open_checked(digest, None, true).await
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<()> {
        let paths: Vec<PathBuf> = digests.iter().map(|d| self.blob_path(d)).collect();
        blocking(move || {
            for p in paths {
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn quarantine(&self, digest: &Digest) -> Result<bool> {
        let from = self.blob_path(digest);
        let dir = self.root.join("quarantine");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = dir.join(format!(
            "{}-{}-{stamp}",
            digest.algorithm().as_str(),
            digest.hex()
        ));
        Ok(blocking(move || {
            std::fs::create_dir_all(&dir)?;
            match std::fs::rename(&from, &to) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await?)
    }

    async fn check_writable(&self) -> Result<()> {
        let p = self.root.join("tmp").join(".ready-probe");
        blocking(move || {
            let mut f = File::create(&p)?;
            f.write_all(b"ok")?;
            f.sync_all()?;
            std::fs::remove_file(&p)
        })
        .await?;
        Ok(())
    }
}
