//! `OciArchive`: an OCI image layout inside a tar file (what `skopeo copy oci-archive:`
//! and `podman load` read), optionally compressed as a whole with gzip or zstd.
//!
//! Writing streams: each blob becomes a tar entry as its bytes arrive (the size is known
//! from the descriptor, so the header goes first), one entry at a time; `finish` appends
//! `oci-layout` and `index.json`, ends the tar and the compressor, and renames the file
//! into place, so a failed export never leaves a file that looks complete.
//!
//! Reading: the compression is told by its magic bytes. A plain tar is indexed once
//! (entry name -> offset, size) and entries are read by seeking. A compressed one is
//! decompressed once into a temporary tar file, which is then read the same way (one
//! code path for OCI and `docker save` archives, and nothing the archive names is ever
//! written as a path on disk).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use berth_oci::{Descriptor, Digest, DigestHasher, media};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::layout::{
    self, INDEX_FILE, LAYOUT_FILE, LAYOUT_VERSION, LayoutImage, Lookup, MAX_MANIFEST_BYTES, Names, failed,
};
use crate::{BlobReader, Destination, Manifest, Source, TransferError};

/// How a whole archive is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Tells the compression of a file from its first bytes.
    pub fn detect(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("{s:?}: expected gzip, zstd or none")),
        }
    }
}

/// An archive of either kind, told apart by what it holds.
pub enum AnyArchive {
    Oci(OciArchive),
    Docker(crate::docker_archive::DockerArchive),
}

impl AnyArchive {
    /// Opens an OCI layout archive or a `docker save` archive, compressed or not
    /// (blocking).
    pub fn open(path: &Path) -> Result<AnyArchive, TransferError> {
        let at = format!("oci-archive:{}", path.display());
        let tar = TarIndex::open(path, &at)?;
        if tar.contains(LAYOUT_FILE) || !tar.contains("manifest.json") {
            OciArchive::from_index(tar).map(AnyArchive::Oci)
        } else {
            crate::docker_archive::DockerArchive::from_index(tar).map(AnyArchive::Docker)
        }
    }

    pub fn source(&self) -> &dyn Source {
        match self {
            AnyArchive::Oci(a) => a,
            AnyArchive::Docker(a) => a,
        }
    }
}

/// A tar file indexed by entry name; compressed input is first decompressed into a
/// temporary file that lives as long as this.
pub(crate) struct TarIndex {
    pub(crate) path: PathBuf,
    pub(crate) at: String,
    entries: HashMap<String, (u64, u64)>,
    _temp: Option<tempfile::TempPath>,
}

impl TarIndex {
    /// Reads the archive's table of contents (blocking: decompression and a pass over
    /// every header).
    pub(crate) fn open(path: &Path, at: &str) -> Result<TarIndex, TransferError> {
        let what = "archive";
        let mut file = File::open(path).map_err(|e| failed(at, what, format!("cannot open: {e}")))?;
        let mut head = [0u8; 4];
        let n =
            read_up_to(&mut file, &mut head).map_err(|e| failed(at, what, format!("cannot read: {e}")))?;
        let compression = Compression::detect(&head[..n]);
        file.rewind()
            .map_err(|e| failed(at, what, format!("cannot read: {e}")))?;
        let (tar_path, temp) = match compression {
            Compression::None => (path.to_path_buf(), None),
            c => {
                let temp = tempfile::NamedTempFile::new()
                    .map_err(|e| failed(at, what, format!("cannot create a temporary file: {e}")))?;
                let mut out = BufWriter::new(temp.as_file());
                let mut input = std::io::BufReader::new(file);
                let copied = match c {
                    Compression::Gzip => {
                        std::io::copy(&mut flate2::read::MultiGzDecoder::new(&mut input), &mut out)
                    }
                    Compression::Zstd => zstd::stream::read::Decoder::with_buffer(input)
                        .and_then(|mut d| std::io::copy(&mut d, &mut out)),
                    Compression::None => unreachable!(),
                };
                copied.and_then(|_| out.flush()).map_err(|e| {
                    failed(
                        at,
                        what,
                        format!("the {c:?} stream is truncated or damaged: {e}").to_lowercase(),
                    )
                })?;
                drop(out);
                let temp = temp.into_temp_path();
                (temp.to_path_buf(), Some(temp))
            }
        };
        let entries = index_tar(&tar_path, at)?;
        Ok(TarIndex {
            path: tar_path,
            at: at.to_string(),
            entries,
            _temp: temp,
        })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub(crate) fn offset(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|&(offset, _)| offset)
    }

    pub(crate) fn size(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|&(_, size)| size)
    }

    /// A small entry (JSON), whole.
    pub(crate) fn read_small(&self, name: &str) -> Result<Bytes, TransferError> {
        let &(offset, size) = self
            .entries
            .get(name)
            .ok_or_else(|| failed(&self.at, name, "not in the archive"))?;
        if size > MAX_MANIFEST_BYTES {
            return Err(failed(&self.at, name, format!("{size} bytes is too large")));
        }
        let mut file =
            File::open(&self.path).map_err(|e| failed(&self.at, name, format!("cannot open: {e}")))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| failed(&self.at, name, format!("cannot seek: {e}")))?;
        let mut buf = vec![0; size as usize];
        file.read_exact(&mut buf)
            .map_err(|e| failed(&self.at, name, format!("cannot read: {e}")))?;
        Ok(Bytes::from(buf))
    }

    /// An entry's bytes, streamed.
    pub(crate) async fn stream(&self, name: &str, what: &str) -> Result<BlobReader, TransferError> {
        let &(offset, size) = self
            .entries
            .get(name)
            .ok_or_else(|| failed(&self.at, what, format!("{name} is not in the archive")))?;
        layout::read_file_range(&self.path, offset, size, &self.at, what).await
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Every regular file in the tar: normalised name -> (data offset, size). An entry whose
/// data runs past the end of the file means the archive was truncated.
fn index_tar(path: &Path, at: &str) -> Result<HashMap<String, (u64, u64)>, TransferError> {
    let damaged = |e: std::io::Error| failed(at, "archive", format!("not a readable tar file: {e}"));
    let file = File::open(path).map_err(damaged)?;
    let len = file.metadata().map_err(damaged)?.len();
    let mut archive = tar::Archive::new(file);
    let mut out = HashMap::new();
    for entry in archive.entries_with_seek().map_err(damaged)? {
        let entry = entry.map_err(damaged)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let name = entry.path().map_err(damaged)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if offset + size > len {
            return Err(failed(
                at,
                "archive",
                format!(
                    "truncated: entry {name} needs {size} bytes, {} remain",
                    len.saturating_sub(offset)
                ),
            ));
        }
        out.insert(name, (offset, size));
    }
    Ok(out)
}

/// A tar header for a regular file (with a PAX `path` record before it when the name does
/// not fit ustar). Fixed mtime, owner and mode: the same export gives the same bytes.
fn entry_header(name: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1536);
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    if h.set_path(name).is_err() {
        // PAX extended header: "<len> path=<name>\n", where <len> counts itself.
        let body_len = " path=\n".len() + name.len();
        let mut total = body_len + 1;
        while total != body_len + total.to_string().len() {
            total = body_len + total.to_string().len();
        }
        let record = format!("{total} path={name}\n");
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_mode(0o644);
        x.set_mtime(0);
        x.set_size(record.len() as u64);
        x.set_path("PaxHeader").expect("short name");
        x.set_cksum();
        out.extend_from_slice(x.as_bytes());
        out.extend_from_slice(record.as_bytes());
        out.resize(out.len().next_multiple_of(512), 0);
        h.set_path(&name[name.len() - 99..]).expect("99 bytes fit");
    }
    h.set_size(size);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

impl Sink {
    fn close(self) -> std::io::Result<()> {
        let w = match self {
            Sink::Plain(w) => w,
            Sink::Gzip(w) => w.finish()?,
            Sink::Zstd(w) => w.finish()?,
        };
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

struct Writer {
    /// The open tar; `None` once finished. Written on the blocking pool.
    sink: Arc<Mutex<Option<Sink>>>,
    /// Held for a whole entry (header, data, padding): entries never interleave.
    entry: tokio::sync::Mutex<()>,
    written: Mutex<HashSet<Digest>>,
    names: Mutex<Names>,
    /// Set when an entry was left half written: the archive can only be thrown away.
    broken: AtomicBool,
    partial: PathBuf,
    dest: PathBuf,
}

enum Mode {
    Read { tar: TarIndex, images: Vec<LayoutImage> },
    Write(Writer),
}

/// An OCI image layout in a tar archive, to read from ([`OciArchive::open`]) or to write
/// ([`OciArchive::create`]).
pub struct OciArchive {
    at: String,
    mode: Mode,
}

impl OciArchive {
    /// Opens an archive to read (blocking: see the module docs).
    pub fn open(path: &Path) -> Result<OciArchive, TransferError> {
        let at = format!("oci-archive:{}", path.display());
        let tar = TarIndex::open(path, &at)?;
        OciArchive::from_index(tar)
    }

    pub(crate) fn from_index(tar: TarIndex) -> Result<OciArchive, TransferError> {
        let at = tar.at.clone();
        if !tar.contains(LAYOUT_FILE) {
            return Err(failed(
                &at,
                LAYOUT_FILE,
                "missing: not an OCI image layout archive",
            ));
        }
        layout::check_layout_file(&tar.read_small(LAYOUT_FILE)?, &at)?;
        if !tar.contains(INDEX_FILE) {
            return Err(failed(&at, INDEX_FILE, "missing from the archive"));
        }
        let images = layout::parse_index(&tar.read_small(INDEX_FILE)?, &at)?;
        Ok(OciArchive {
            at,
            mode: Mode::Read { tar, images },
        })
    }

    /// Starts writing an archive to `dest` (through `dest` + `.partial`, renamed by
    /// `finish`).
    pub fn create(dest: &Path, compression: Compression) -> Result<OciArchive, TransferError> {
        let at = format!("oci-archive:{}", dest.display());
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(|e| {
            failed(
                &at,
                "archive",
                format!("cannot create {}: {e}", partial.display()),
            )
        })?;
        let file = BufWriter::with_capacity(1 << 20, file);
        let sink = match compression {
            Compression::None => Sink::Plain(file),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Sink::Zstd(
                zstd::stream::write::Encoder::new(file, 3)
                    .map_err(|e| failed(&at, "archive", format!("cannot start zstd: {e}")))?,
            ),
        };
        Ok(OciArchive {
            at,
            mode: Mode::Write(Writer {
                sink: Arc::new(Mutex::new(Some(sink))),
                entry: tokio::sync::Mutex::new(()),
                written: Mutex::new(HashSet::new()),
                names: Mutex::new(Names::default()),
                broken: AtomicBool::new(false),
                partial,
                dest: dest.to_path_buf(),
            }),
        })
    }

    /// The entries of the archive's `index.json` (empty for an archive being written).
    pub fn images(&self) -> Vec<LayoutImage> {
        match &self.mode {
            Mode::Read { images, .. } => images.clone(),
            Mode::Write(_) => Vec::new(),
        }
    }

    /// See [`crate::layout::OciDir::name_image`].
    pub fn name_image(&self, tag: &str, full_name: &str) -> Result<(), TransferError> {
        let w = self.writer()?;
        if w.names.lock().expect("names lock").name_image(tag, full_name) {
            Ok(())
        } else {
            Err(TransferError::Usage(format!(
                "{}: no image tagged {tag:?} yet",
                self.at
            )))
        }
    }

    /// Removes the partly written file of an archive that will not be finished.
    pub fn abandon(&self) {
        if let Mode::Write(w) = &self.mode {
            w.sink.lock().expect("sink lock").take();
            let _ = std::fs::remove_file(&w.partial);
        }
    }

    fn reader(&self) -> Result<(&TarIndex, &[LayoutImage]), TransferError> {
        match &self.mode {
            Mode::Read { tar, images } => Ok((tar, images)),
            Mode::Write(_) => Err(TransferError::Usage(format!("{}: opened for writing", self.at))),
        }
    }

    fn writer(&self) -> Result<&Writer, TransferError> {
        match &self.mode {
            Mode::Write(w) => Ok(w),
            Mode::Read { .. } => Err(TransferError::Usage(format!("{}: opened for reading", self.at))),
        }
    }

    /// Runs `f` on the open tar on the blocking pool.
    async fn with_sink(
        &self,
        what: &str,
        f: impl FnOnce(&mut Sink) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), TransferError> {
        let sink = self.writer()?.sink.clone();
        let done = tokio::task::spawn_blocking(move || match sink.lock().expect("sink lock").as_mut() {
            Some(s) => f(s),
            None => Err(std::io::Error::other("the archive is already closed")),
        })
        .await
        .map_err(|e| failed(&self.at, what, format!("writer task failed: {e}")))?;
        done.map_err(|e| failed(&self.at, what, format!("write failed: {e}")))
    }

    /// Appends one entry whose `size` bytes come from `body`; checks they hash to
    /// `digest`. Any failure once the header is out leaves the archive broken.
    async fn append(
        &self,
        name: String,
        mut body: BlobReader,
        digest: &Digest,
        size: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        let w = self.writer()?;
        let what = format!("blob {digest}");
        let _entry = w.entry.lock().await;
        if w.broken.load(Ordering::SeqCst) {
            return Err(failed(
                &self.at,
                &what,
                "an earlier entry failed; the archive is unusable",
            ));
        }
        if w.written.lock().expect("written lock").contains(digest) {
            return Ok(());
        }
        w.broken.store(true, Ordering::SeqCst);
        let header = entry_header(&name, size);
        self.with_sink(&what, move |s| s.write_all(&header)).await?;
        let mut hasher = DigestHasher::new(digest.algorithm());
        let mut seen = 0u64;
        // The engine counts bytes sent from the first report on: here, from nothing.
        progress(0);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > size {
                return Err(failed(
                    &self.at,
                    &what,
                    format!("longer than the {size} bytes announced"),
                ));
            }
            hasher.update(&chunk);
            self.with_sink(&what, move |s| s.write_all(&chunk)).await?;
            progress(seen);
        }
        if seen != size {
            return Err(failed(
                &self.at,
                &what,
                format!("{seen} bytes where {size} were announced"),
            ));
        }
        let got = hasher.finish();
        if got != *digest {
            return Err(failed(&self.at, &what, format!("its bytes hash to {got}")));
        }
        let pad = (size.next_multiple_of(512) - size) as usize;
        self.with_sink(&what, move |s| s.write_all(&vec![0; pad])).await?;
        w.written.lock().expect("written lock").insert(digest.clone());
        w.broken.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn append_small(&self, name: &str, bytes: &[u8]) -> Result<(), TransferError> {
        let mut data = entry_header(name, bytes.len() as u64);
        data.extend_from_slice(bytes);
        data.resize(data.len().next_multiple_of(512), 0);
        self.with_sink(name, move |s| s.write_all(&data)).await
    }
}

#[async_trait::async_trait]
impl Source for OciArchive {
    fn describe(&self) -> String {
        self.at.clone()
    }

    async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError> {
        let (tar, images) = self.reader()?;
        let (digest, hint) = match layout::lookup(images, reference, &self.at)? {
            Lookup::Digest(d, hint) => (d, hint),
            Lookup::Entry(d) => (d.digest, Some(d.media_type)),
        };
        let name = layout::blob_name(&digest);
        if !tar.contains(&name) {
            return Err(failed(
                &self.at,
                format!("manifest {digest}"),
                "not in the archive",
            ));
        }
        let bytes = tar.read_small(&name)?;
        layout::checked_manifest(bytes, &digest, hint.as_deref(), &self.at)
    }

    async fn blob(&self, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader, TransferError> {
        let (tar, _) = self.reader()?;
        let what = format!("blob {digest}");
        let name = layout::blob_name(digest);
        match tar.size(&name) {
            None => return Err(failed(&self.at, &what, "not in the archive")),
            Some(s) if s != size => {
                return Err(failed(
                    &self.at,
                    &what,
                    format!("{s} bytes in the archive where its descriptor says {size}"),
                ));
            }
            Some(_) => {}
        }
        let body = tar.stream(&name, &what).await?;
        Ok(layout::skip(
            layout::verified(body, digest, size, &self.at),
            offset,
        ))
    }

    async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>, TransferError> {
        let (tar, images) = self.reader()?;
        let mut out: Vec<Descriptor> = Vec::new();
        for img in images {
            if !media::MANIFEST_TYPES.contains(&img.descriptor.media_type.as_str()) {
                continue;
            }
            let Ok(bytes) = tar.read_small(&layout::blob_name(&img.descriptor.digest)) else {
                continue;
            };
            if layout::subject_of(&bytes).as_ref() == Some(digest)
                && !out.iter().any(|o| o.digest == img.descriptor.digest)
            {
                out.push(img.descriptor.clone());
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Destination for OciArchive {
    fn describe(&self) -> String {
        self.at.clone()
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, TransferError> {
        Ok(self
            .writer()?
            .written
            .lock()
            .expect("written lock")
            .contains(digest))
    }

    async fn put_blob(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        if self.has_blob(&desc.digest).await? {
            return Ok(());
        }
        let body = source.blob(&desc.digest, desc.size, 0).await?;
        self.append(
            layout::blob_name(&desc.digest),
            body,
            &desc.digest,
            desc.size,
            progress,
        )
        .await
    }

    async fn has_manifest(&self, digest: &Digest) -> Result<bool, TransferError> {
        self.has_blob(digest).await
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<(), TransferError> {
        if !self.has_blob(&manifest.digest).await? {
            let body: BlobReader = Box::pin(futures_util::stream::iter([Ok(manifest.bytes.clone())]));
            let name = layout::blob_name(&manifest.digest);
            let size = manifest.bytes.len() as u64;
            self.append(name, body, &manifest.digest, size, &|_| {}).await?;
        }
        if let Some(tag) = tag {
            self.writer()?
                .names
                .lock()
                .expect("names lock")
                .tag(manifest, tag);
        }
        Ok(())
    }

    async fn finish(&self) -> Result<(), TransferError> {
        let w = self.writer()?;
        let _entry = w.entry.lock().await;
        if w.broken.load(Ordering::SeqCst) {
            self.abandon();
            return Err(failed(
                &self.at,
                "archive",
                "an entry failed; nothing was written",
            ));
        }
        let entries: Vec<_> = {
            let names = w.names.lock().expect("names lock");
            names
                .entries
                .iter()
                .map(|(_, d, a)| (d.clone(), a.clone()))
                .collect()
        };
        self.append_small(LAYOUT_FILE, LAYOUT_VERSION).await?;
        self.append_small(INDEX_FILE, &layout::index_json(&entries))
            .await?;
        self.with_sink("archive", |s| s.write_all(&[0; 1024])).await?;
        let sink = w.sink.clone();
        let closed = tokio::task::spawn_blocking(move || match sink.lock().expect("sink lock").take() {
            Some(s) => s.close(),
            None => Err(std::io::Error::other("the archive is already closed")),
        })
        .await
        .map_err(|e| failed(&self.at, "archive", format!("writer task failed: {e}")))?;
        closed
            .and_then(|()| std::fs::rename(&w.partial, &w.dest))
            .map_err(|e| failed(&self.at, "archive", format!("cannot finish: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::layout::OciDir;

    /// Blobs and manifests in memory.
    struct Mem {
        blobs: HashMap<Digest, Bytes>,
        manifests: HashMap<String, Manifest>,
    }

    #[async_trait::async_trait]
    impl Source for Mem {
        fn describe(&self) -> String {
            "mem".into()
        }
        async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError> {
            self.manifests
                .get(reference)
                .cloned()
                .ok_or_else(|| failed("mem", reference, "unknown"))
        }
        async fn blob(&self, digest: &Digest, _size: u64, _offset: u64) -> Result<BlobReader, TransferError> {
            let b = self
                .blobs
                .get(digest)
                .cloned()
                .ok_or_else(|| failed("mem", digest, "unknown"))?;
            // Two chunks, so the last-chunk rule is exercised.
            let (a, z) = (b.slice(..b.len() / 2), b.slice(b.len() / 2..));
            Ok(Box::pin(futures_util::stream::iter([Ok(a), Ok(z)])))
        }
    }

    fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::sha256_of(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        }
    }

    /// A config, a layer and a manifest over them.
    fn image(seed: &str) -> (Mem, Manifest, Vec<Descriptor>) {
        let config = Bytes::from(format!("{{\"seed\":\"{seed}\"}}"));
        let layer = Bytes::from(vec![seed.len() as u8; 3000]);
        let c = desc("application/vnd.oci.image.config.v1+json", &config);
        let l = desc("application/vnd.oci.image.layer.v1.tar", &layer);
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": c, "layers": [l],
        }))
        .unwrap();
        let manifest = Manifest {
            digest: Digest::sha256_of(&m),
            bytes: Bytes::from(m),
            media_type: media::OCI_MANIFEST.into(),
        };
        let mem = Mem {
            blobs: HashMap::from([(c.digest.clone(), config), (l.digest.clone(), layer)]),
            manifests: HashMap::from([(seed.to_string(), manifest.clone())]),
        };
        (mem, manifest, vec![c, l])
    }

    async fn write(dst: &dyn Destination, src: &Mem, m: &Manifest, blobs: &[Descriptor], tag: &str) {
        for d in blobs {
            dst.put_blob(src, d, &|_| {}).await.unwrap();
        }
        dst.put_manifest(m, Some(tag)).await.unwrap();
    }

    async fn read_all(src: &dyn Source, d: &Descriptor) -> Result<Vec<u8>, TransferError> {
        let mut s = src.blob(&d.digest, d.size, 0).await?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn archive_round_trip_in_every_compression() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let tmp = tempfile::tempdir().unwrap();
            let file = tmp.path().join("a.tar");
            let a = OciArchive::create(&file, c).unwrap();
            let (mem, m, blobs) = image("one");
            write(&a, &mem, &m, &blobs, "v1").await;
            let (mem2, m2, blobs2) = image("second");
            write(&a, &mem2, &m2, &blobs2, "v2").await;
            a.name_image("v2", "example.com/x:v2").unwrap();
            a.finish().await.unwrap();
            assert!(!tmp.path().join("a.tar.partial").exists());

            let head = std::fs::read(&file).unwrap();
            assert_eq!(Compression::detect(&head), c);
            let r = OciArchive::open(&file).unwrap();
            assert_eq!(r.manifest("v1").await.unwrap(), m);
            assert_eq!(r.manifest("example.com/x:v2").await.unwrap(), m2);
            assert_eq!(r.manifest(&m2.digest.to_string()).await.unwrap(), m2);
            for d in &blobs {
                assert_eq!(read_all(&r, d).await.unwrap(), mem.blobs[&d.digest]);
            }
            assert!(r.manifest("v3").await.unwrap_err().to_string().contains("v1, v2"));
        }
    }

    #[tokio::test]
    async fn archive_refuses_a_blob_that_does_not_match_its_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("bad.tar");
        let a = OciArchive::create(&file, Compression::None).unwrap();
        let (mut mem, _, blobs) = image("bad");
        mem.blobs
            .insert(blobs[1].digest.clone(), Bytes::from(vec![9u8; 3000]));
        a.put_blob(&mem, &blobs[0], &|_| {}).await.unwrap();
        let e = a
            .put_blob(&mem, &blobs[1], &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("hash to"), "{e}");
        assert!(a.finish().await.is_err());
        assert!(!file.exists() && !tmp.path().join("bad.tar.partial").exists());
    }

    #[test]
    fn long_names_get_a_pax_header_that_tar_readers_follow() {
        let name = format!("blobs/sha512/{}", "a".repeat(128));
        let mut data = entry_header(&name, 3);
        data.extend_from_slice(b"abc");
        data.resize(data.len().next_multiple_of(512) + 1024, 0);
        let mut ar = tar::Archive::new(&data[..]);
        let entries: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, [name]);
    }

    #[tokio::test]
    async fn oci_dir_round_trip_merges_index_json() {
        let tmp = tempfile::tempdir().unwrap();
        let (mem, m, blobs) = image("dir");
        let d = OciDir::create(tmp.path()).unwrap();
        write(&d, &mem, &m, &blobs, "v1").await;
        d.finish().await.unwrap();
        let (mem2, m2, blobs2) = image("dir-two");
        let d = OciDir::create(tmp.path()).unwrap();
        write(&d, &mem2, &m2, &blobs2, "v2").await;
        d.finish().await.unwrap();

        let r = OciDir::open(tmp.path()).unwrap();
        let names: Vec<_> = r
            .images()
            .unwrap()
            .into_iter()
            .filter_map(|i| i.ref_name)
            .collect();
        assert_eq!(names, ["v1", "v2"]);
        assert_eq!(r.manifest("v1").await.unwrap(), m);
        assert_eq!(
            read_all(&r, &blobs2[1]).await.unwrap(),
            mem2.blobs[&blobs2[1].digest]
        );
        // A damaged file is named, not served.
        std::fs::write(
            tmp.path().join(layout::blob_name(&blobs[1].digest)),
            vec![0u8; 3000],
        )
        .unwrap();
        let e = read_all(&r, &blobs[1]).await.unwrap_err().to_string();
        assert!(
            e.contains(&blobs[1].digest.to_string()) && e.contains("hash to"),
            "{e}"
        );
    }

    #[test]
    fn docker_archive_config_must_match_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("d.tar");
        let config = b"{\"rootfs\":{}}";
        let wrong = format!("{}.json", "0".repeat(64));
        let mut b = tar::Builder::new(std::fs::File::create(&file).unwrap());
        let manifest = format!(r#"[{{"Config":"{wrong}","RepoTags":["x/y:z"],"Layers":[]}}]"#);
        for (name, data) in [
            ("manifest.json", manifest.as_bytes()),
            (wrong.as_str(), &config[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let e = match AnyArchive::open(&file) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted a config whose name is not its digest"),
        };
        assert!(e.contains("docker-archive:") && e.contains("hash to"), "{e}");
    }
}
