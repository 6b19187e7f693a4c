//! `berth migrate-storage`: copies an installation's storage (blob store and metadata
//! store) into another, any backend to any backend (filesystem + SQLite to S3 + PostgreSQL
//! and back). Blobs first, streamed and re-hashed on their way into the destination, then
//! every metadata row as stored, then a verification pass. Everything already at the
//! destination is skipped, so an interrupted run is resumed by running it again.
//!
//! The source must not be serving: `berth serve` holds a shared lock on
//! `<data_dir>/berth.lock` and this command takes it exclusively, so it refuses to start
//! while a server (of this version or later) runs on either data directory.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_oci::{Digest, DigestHasher, UploadId};
use berth_store::{BlobStore, COPIED_TABLES, MetaStore};
use futures_util::{StreamExt, TryStreamExt};

use crate::config::{BlobBackend, Config, Metadata};

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Configuration of the installation to copy from (only its [storage] table is used).
    #[arg(long, value_name = "CONFIG")]
    from: PathBuf,
    /// Configuration of the installation to copy into (only its [storage] table is used).
    #[arg(long, value_name = "CONFIG")]
    to: PathBuf,
    /// After copying, re-hash every blob at the destination (reads every byte again);
    /// without it the final pass checks each blob's presence and size.
    #[arg(long)]
    verify: bool,
    /// Blobs copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Print only the summary and errors (no progress).
    #[arg(long, short)]
    quiet: bool,
}

/// The lock file `berth serve` holds shared and migrate-storage exclusively.
const LOCK_FILE: &str = "berth.lock";

/// Takes the data directory's lock: shared for a server (several replicas may share a
/// directory), exclusive for a migration. The lock lasts as long as the returned file.
pub fn lock_data_dir(dir: &Path, exclusive: bool) -> anyhow::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mode = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: flock on a file descriptor we own, for as long as `file` lives.
    let r = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Ok(None);
    }
    Err(e).with_context(|| format!("locking {}", path.display()))
}

pub fn run(args: MigrateArgs) -> anyhow::Result<bool> {
    let from = Config::load(&args.from).with_context(|| format!("--from {}", args.from.display()))?;
    let to = Config::load(&args.to).with_context(|| format!("--to {}", args.to.display()))?;
    if same_place(&from, &to) {
        bail!(
            "--from {} and --to {} name the same blob store and metadata store: nothing to migrate",
            args.from.display(),
            args.to.display()
        );
    }
    if let Metadata::Sqlite(db) = from.storage.metadata()
        && !db.exists()
    {
        bail!(
            "--from {}: there is no metadata database at {}",
            args.from.display(),
            db.display()
        );
    }
    // Both data directories are locked for the whole run: a server running on the
    // source would go on changing it behind the copy, one on the destination would serve
    // half-copied content.
    let mut locks = Vec::new();
    for (flag, path, config) in [("--from", &args.from, &from), ("--to", &args.to, &to)] {
        let dir = &config.storage.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        match lock_data_dir(dir, true)? {
            Some(f) => locks.push(f),
            None => bail!(
                "{flag} {}: a berth server is running on the data directory {} (it holds {}); \
                 stop it (every replica) before migrating",
                path.display(),
                dir.display(),
                dir.join(LOCK_FILE).display()
            ),
        }
    }
    let progress = Progress::new(args.quiet);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(migrate(&from, &to, &args, progress))
}

fn same_place(a: &Config, b: &Config) -> bool {
    let blobs_same = match (a.storage.blobs, b.storage.blobs) {
        (BlobBackend::Fs, BlobBackend::Fs) => {
            canonical(&a.storage.data_dir) == canonical(&b.storage.data_dir)
        }
        (BlobBackend::S3, BlobBackend::S3) => {
            let (x, y) = (&a.storage.s3, &b.storage.s3);
            x.endpoint == y.endpoint && x.bucket == y.bucket && x.prefix == y.prefix
        }
        _ => false,
    };
    let meta_same = match (a.storage.metadata(), b.storage.metadata()) {
        (Metadata::Sqlite(x), Metadata::Sqlite(y)) => canonical(&x) == canonical(&y),
        (Metadata::Postgres(x), Metadata::Postgres(y)) => x == y,
        _ => false,
    };
    blobs_same && meta_same
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn describe(c: &Config) -> String {
    let blobs = match c.storage.blobs {
        BlobBackend::Fs => format!("files in {}", c.storage.data_dir.display()),
        BlobBackend::S3 => format!(
            "S3 bucket {} at {}{}",
            c.storage.s3.bucket,
            c.storage.s3.endpoint,
            if c.storage.s3.prefix.is_empty() {
                String::new()
            } else {
                format!(" under {}", c.storage.s3.prefix)
            }
        ),
    };
    let meta = match c.storage.metadata() {
        Metadata::Sqlite(p) => format!("SQLite {}", p.display()),
        Metadata::Postgres(url) => {
            berth_store::postgres::describe_url(&url).unwrap_or_else(|| "PostgreSQL".into())
        }
    };
    format!("{blobs} + {meta}")
}

#[derive(Default)]
struct Counts {
    copied: AtomicU64,
    copied_bytes: AtomicU64,
    present: AtomicU64,
    present_bytes: AtomicU64,
    replaced: AtomicU64,
}

async fn migrate(from: &Config, to: &Config, args: &MigrateArgs, progress: Progress) -> anyhow::Result<bool> {
    let started = Instant::now();
    let src_blobs = crate::serve::open_blobs(from)
        .await
        .context("--from: blob store")?;
    let src_meta = crate::serve::open_metadata(from)
        .await
        .context("--from: metadata store")?;
    let dst_blobs = crate::serve::open_blobs(to).await.context("--to: blob store")?;
    let dst_meta = crate::serve::open_metadata(to)
        .await
        .context("--to: metadata store")?;
    progress.line(&format!("from: {}", describe(from)));
    progress.line(&format!("to:   {}", describe(to)));

    // 1. Blobs, every one the source's metadata records.
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    loop {
        let page = src_meta.blobs_page(blobs.last().map(|(d, _)| d), 1000).await?;
        if page.is_empty() {
            break;
        }
        blobs.extend(page);
    }
    let total_bytes: u64 = blobs.iter().map(|(_, s)| s).sum();
    progress.start_blobs(blobs.len() as u64, total_bytes);
    let counts = Arc::new(Counts::default());
    let failures: Vec<String> = futures_util::stream::iter(blobs.iter().cloned())
        .map(|(digest, size)| {
            let (src, dst, counts, progress) = (&src_blobs, &dst_blobs, counts.clone(), &progress);
            async move {
                let r = copy_blob(src.as_ref(), dst.as_ref(), &digest, size, &counts).await;
                progress.blob_done(size);
                r.err().map(|e| format!("blob {digest} ({size} bytes): {e:#}"))
            }
        })
        .buffer_unordered(usize::from(args.jobs))
        .filter_map(|f| async move { f })
        .collect()
        .await;
    progress.finish_blobs();
    let c = &counts;
    println!(
        "migrate-storage: blobs: {} copied ({}), {} already at the destination ({}){}",
        c.copied.load(Ordering::Relaxed),
        bytes(c.copied_bytes.load(Ordering::Relaxed)),
        c.present.load(Ordering::Relaxed),
        bytes(c.present_bytes.load(Ordering::Relaxed)),
        match c.replaced.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} of them replacing damaged copies"),
        }
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("migrate-storage: {f}");
        }
        eprintln!(
            "migrate-storage: {} blob(s) could not be copied; no metadata was copied. Fix the source \
             (`berth scrub --repair` on it) and run this again: what was copied is kept.",
            failures.len()
        );
        return Ok(false);
    }

    // 2. Metadata, table by table, parents first; rows already there are kept.
    for table in COPIED_TABLES {
        let total = src_meta.count_rows(table).await?;
        let (mut offset, mut added) = (0u64, 0u64);
        loop {
            let rows = src_meta.export_rows(table, offset, 500).await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as u64;
            added += dst_meta
                .import_rows(table, &rows)
                .await
                .with_context(|| format!("writing {} rows at the destination", table.name))?;
            progress.rows(table.name, offset, total);
        }
        println!(
            "migrate-storage: {}: {offset} rows, {added} copied, {} already there",
            table.name,
            offset - added
        );
    }

    // 3. Verification at the destination.
    let ok = verify(
        src_meta.as_ref(),
        dst_meta.as_ref(),
        dst_blobs.as_ref(),
        args.verify,
        &progress,
    )
    .await?;
    println!(
        "migrate-storage: {} in {:.1}s",
        if ok { "done" } else { "FAILED verification" },
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// Copies one blob unless the destination has it with the right size, hashing the bytes
/// on their way: they are committed only if they hash to `digest`.
async fn copy_blob(
    src: &dyn BlobStore,
    dst: &dyn BlobStore,
    digest: &Digest,
    size: u64,
    counts: &Counts,
) -> anyhow::Result<()> {
    match dst.stat(digest).await? {
        Some(n) if n == size => {
            counts.present.fetch_add(1, Ordering::Relaxed);
            counts.present_bytes.fetch_add(size, Ordering::Relaxed);
            return Ok(());
        }
        // Content-addressed bytes of the wrong size are damaged: replace them.
        Some(_) => {
            dst.delete(digest).await?;
            counts.replaced.fetch_add(1, Ordering::Relaxed);
        }
        None => {}
    }
    let Some(read) = src.open(digest, None).await? else {
        bail!("its bytes are missing from the source blob store");
    };
    if read.size != size {
        bail!("the source holds {} bytes, its metadata says {size}", read.size);
    }
    let id = UploadId::parse(&format!("migrate-{}", uuid_like())).expect("a valid upload id");
    dst.create_upload(&id).await?;
    let result = async {
        let mut sink = dst.append(&id, 0, DigestHasher::new(digest.algorithm())).await?;
        let mut body = read.body;
        while let Some(chunk) = body.try_next().await.context("reading the source")? {
            sink.write(chunk).await.context("writing the destination")?;
        }
        let (written, hasher) = sink.finish().await.context("finishing the destination upload")?;
        let got = hasher.finish();
        if written != size || &got != digest {
            bail!("the bytes read ({written} bytes) hash to {got}, not to the blob's digest");
        }
        dst.commit_upload(&id, digest).await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        let _ = dst.abort_upload(&id).await;
    } else {
        counts.copied.fetch_add(1, Ordering::Relaxed);
        counts.copied_bytes.fetch_add(size, Ordering::Relaxed);
    }
    result
}

/// Every blob the destination's metadata records is present with its size (and, with
/// `rehash`, hashes to its digest); every table holds at least the source's rows.
async fn verify(
    src_meta: &dyn MetaStore,
    dst_meta: &dyn MetaStore,
    dst_blobs: &dyn BlobStore,
    rehash: bool,
    progress: &Progress,
) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    for table in COPIED_TABLES {
        let (s, d) = (
            src_meta.count_rows(table).await?,
            dst_meta.count_rows(table).await?,
        );
        if d < s {
            problems.push(format!(
                "{}: {d} rows at the destination, {s} at the source",
                table.name
            ));
        }
    }
    let mut after: Option<Digest> = None;
    let (mut checked, mut checked_bytes) = (0u64, 0u64);
    progress.line(if rehash {
        "verifying: re-hashing every blob at the destination"
    } else {
        "verifying: every blob at the destination, by size"
    });
    loop {
        let page = dst_meta.blobs_page(after.as_ref(), 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (digest, size) in page {
            match dst_blobs.stat(&digest).await? {
                Some(n) if n == size => {}
                Some(n) => problems.push(format!(
                    "blob {digest}: {n} bytes at the destination, {size} recorded"
                )),
                None => problems.push(format!("blob {digest}: missing at the destination")),
            }
            if rehash && let Some(read) = dst_blobs.open(&digest, None).await? {
                let mut h = DigestHasher::new(digest.algorithm());
                let mut body = read.body;
                while let Some(chunk) = body.try_next().await? {
                    h.update(&chunk);
                }
                let got = h.finish();
                if got != digest {
                    problems.push(format!("blob {digest}: the destination's bytes hash to {got}"));
                }
            }
            checked += 1;
            checked_bytes += size;
        }
    }
    println!(
        "migrate-storage: verified {checked} blobs ({}) {} at the destination, {} problem(s)",
        bytes(checked_bytes),
        if rehash { "by re-hashing" } else { "by size" },
        problems.len()
    );
    for p in &problems {
        eprintln!("migrate-storage: {p}");
    }
    Ok(problems.is_empty())
}

/// A unique suffix for the upload areas of this run.
fn uuid_like() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Progress on stderr: a bar on a terminal, a plain line every few seconds otherwise,
/// nothing with --quiet.
struct Progress {
    mode: Mode,
    done_blobs: AtomicU64,
    done_bytes: AtomicU64,
    total: std::sync::Mutex<(u64, u64)>,
    last_line: std::sync::Mutex<Instant>,
}

enum Mode {
    Quiet,
    Lines,
    Bar(indicatif::ProgressBar),
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar(indicatif::ProgressBar::hidden())
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            done_blobs: AtomicU64::new(0),
            done_bytes: AtomicU64::new(0),
            total: std::sync::Mutex::new((0, 0)),
            last_line: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn line(&self, text: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("migrate-storage: {text}"),
            Mode::Bar(bar) => bar.println(format!("migrate-storage: {text}")),
        }
    }

    fn start_blobs(&self, blobs: u64, bytes_total: u64) {
        *self.total.lock().unwrap() = (blobs, bytes_total);
        self.line(&format!("copying {blobs} blobs ({})", bytes(bytes_total)));
        if let Mode::Bar(bar) = &self.mode {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(bytes_total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("blobs 0/{blobs}"));
        }
    }

    fn blob_done(&self, size: u64) {
        let n = self.done_blobs.fetch_add(1, Ordering::Relaxed) + 1;
        let b = self.done_bytes.fetch_add(size, Ordering::Relaxed) + size;
        let (blobs, total) = *self.total.lock().unwrap();
        match &self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => {
                bar.set_position(b);
                bar.set_message(format!("blobs {n}/{blobs}"));
            }
            Mode::Lines => {
                let mut last = self.last_line.lock().unwrap();
                if n == blobs || last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    eprintln!(
                        "migrate-storage: blobs {n}/{blobs}, {}/{}",
                        bytes(b),
                        bytes(total)
                    );
                }
            }
        }
    }

    fn finish_blobs(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }

    fn rows(&self, table: &str, done: u64, total: u64) {
        if let Mode::Lines = self.mode {
            let mut last = self.last_line.lock().unwrap();
            if last.elapsed() < Duration::from_secs(5) {
                return;
            }
            *last = Instant::now();
            eprintln!("migrate-storage: {table}: {done}/{total} rows");
        }
    }
}
