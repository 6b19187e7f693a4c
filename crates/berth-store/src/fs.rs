//! The filesystem blob store.
//!
//! Layout under the data directory:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: committed blobs, immutable;
//! - `uploads/<id>`: upload areas being appended to;
//! - `tmp/`: scratch space, emptied at start.
//!
//! Paths are built only from [`Digest`] and [`UploadId`], whose grammars admit no `/`
//! and no `..`, so no request can name a file outside the data directory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use berth_oci::{Digest, DigestHasher, UploadId};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, spawn_blocking};

use crate::Result;
use crate::blob::{BlobRead, BlobSink, BlobStore, ByteRange};

/// Bytes read from disk per chunk when serving (see docs: 1 MiB halves CPU per GiB
/// against 64 KiB reads).
pub const READ_CHUNK: usize = 1 << 20;
const WRITE_BUFFER: usize = 1 << 20;

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

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }
}

struct FsSink {
    tx: Option<mpsc::Sender<Bytes>>,
    worker: JoinHandle<io::Result<(u64, DigestHasher)>>,
}

impl FsSink {
    /// Hashing and writing run on a blocking thread fed through a bounded channel, so the
    /// network side and the disk side of an upload proceed in parallel.
    fn start(path: PathBuf, offset: u64, mut hasher: DigestHasher) -> FsSink {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let worker = spawn_blocking(move || {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
            let mut size = offset;
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
                out.write_all(&chunk)?;
                size += chunk.len() as u64;
            }
            out.flush()?;
            Ok((size, hasher))
        });
        FsSink { tx: Some(tx), worker }
    }
}

#[async_trait]
impl BlobSink for FsSink {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let tx = self.tx.as_ref().expect("write after finish");
        if tx.send(chunk).await.is_err() {
            // The worker stopped early: report its error.
            self.tx = None;
            return match (&mut self.worker).await {
                Ok(Err(e)) => Err(e),
                _ => Err(io::Error::other("upload writer stopped")),
            };
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> io::Result<(u64, DigestHasher)> {
        self.tx = None;
        (&mut self.worker)
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("upload writer failed: {e}"))))
    }
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
        let body = futures_util::stream::unfold((Some(file), len), |(file, remaining)| async move {
            let file = file?;
            if remaining == 0 {
                return None;
            }
            let want = remaining.min(READ_CHUNK as u64);
            let read = blocking(move || {
                let mut buf = Vec::with_capacity(want as usize);
                let n = (&file).take(want).read_to_end(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("blob file ended with {remaining} bytes still owed"),
                    ));
                }
                Ok((file, buf))
            })
            .await;
            match read {
                Ok((file, buf)) => {
                    let n = buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), (Some(file), remaining - n)))
                }
                Err(e) => Some((Err(e), (None, 0))),
            }
        })
        .boxed();
        Ok(Some(BlobRead { size, body }))
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
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
