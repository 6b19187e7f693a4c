//! `berth migrate-storage`: copies an installation's storage (blob store and metadata
//! store) into another, any backend to any backend (filesystem + SQLite to S3 + PostgreSQL
//! and back), like rsync run twice: the first pass while the source serves, the second,
//! short one after it stops.
//!
//! A pass: every blob the source records that the destination lacks, streamed and
//! re-hashed on its way; then a snapshot of the source's metadata (one read transaction,
//! the server writing on meanwhile) and the blobs it references that are still missing
//! (pushed in the meantime; a few rounds, a new snapshot whenever a blob it needs was
//! collected at the source); then the destination's metadata replaced by the snapshot in
//! one transaction, so moved tags, deleted manifests and collected blobs carry over too;
//! then the destination's bytes that no snapshot row refers to any more are deleted, and
//! everything is verified. Destination metadata never names a blob that is not there.
//!
//! `berth serve` holds `<data_dir>/berth.lock` shared. On the source this command takes
//! it exclusively when it can (the pass is final; no server starts meanwhile), else
//! shared (the source is serving: the pass is not final, the summary says how to cut
//! over). The destination must not be served: its lock is taken exclusively or the run
//! refused.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_oci::{Digest, DigestHasher, UploadId};
use berth_store::{BlobStore, COPIED_TABLES, Cell, MetaStore, RowSnapshot, Table};
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
    /// without it the blobs this pass recorded are checked for presence and size (those
    /// an earlier pass recorded were checked by it).
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
    // The destination is locked exclusively for the whole run: a server on it would
    // serve half-copied content. Created first so a fresh destination can be locked.
    let dst_dir = &to.storage.data_dir;
    std::fs::create_dir_all(dst_dir)
        .with_context(|| format!("creating data directory {}", dst_dir.display()))?;
    let Some(_dst_lock) = lock_data_dir(dst_dir, true)? else {
        bail!(
            "--to {}: a berth server (or another migrate-storage) is running on the data directory \
             {} (it holds {}); the destination must not be served during a migration: stop it",
            args.to.display(),
            dst_dir.display(),
            dst_dir.join(LOCK_FILE).display()
        );
    };
    // The source: exclusively if nothing serves it (this pass is then final and no
    // server starts on it meanwhile), else shared beside the server.
    let src_dir = &from.storage.data_dir;
    std::fs::create_dir_all(src_dir)
        .with_context(|| format!("creating data directory {}", src_dir.display()))?;
    let (_src_lock, serving) = match lock_data_dir(src_dir, true)? {
        Some(f) => (f, false),
        None => match lock_data_dir(src_dir, false)? {
            Some(f) => (f, true),
            None => bail!(
                "--from {}: another berth migrate-storage holds the data directory {} ({})",
                args.from.display(),
                src_dir.display(),
                src_dir.join(LOCK_FILE).display()
            ),
        },
    };
    let progress = Progress::new(args.quiet);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(migrate(&from, &to, &args, serving, progress))
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
    /// Collected at the source while the pass ran: nothing to copy.
    vanished: AtomicU64,
}

/// Snapshots a pass takes at most while a source keeps collecting blobs that the latest
/// snapshot still names (each round copies only what the previous ones did not).
const SNAPSHOT_ROUNDS: u32 = 5;

/// Rows read from the snapshot and written to the destination at a time: fewer for
/// manifests, whose bodies make their rows large.
fn row_page(table: &Table) -> u32 {
    if table.name == "manifests" { 500 } else { 5000 }
}

/// What one batch of blob copies came to.
#[derive(Default)]
struct Copied {
    /// At the destination with the right size now (copied or already there).
    at_destination: Vec<Digest>,
    /// Gone from the source's metadata and bytes while the pass ran.
    vanished: Vec<Digest>,
    /// Could not be copied, with why.
    failures: Vec<String>,
}

async fn migrate(
    from: &Config,
    to: &Config,
    args: &MigrateArgs,
    serving: bool,
    progress: Progress,
) -> anyhow::Result<bool> {
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
    if serving {
        progress.line("the source is serving: this pass copies it as of a snapshot; it is not final");
    }
    let counts = Counts::default();
    let jobs = usize::from(args.jobs);

    // 1. Blobs, every one the source's metadata records now; no transaction is held
    // open for this, the longest part.
    // What the destination's metadata records is at the destination (a pass writes no
    // row for a blob it has not placed, and verified it): skipped without asking the
    // blob store, so a final pass costs the delta, not a HEAD per blob.
    let old_blobs: HashMap<Digest, u64> = all_blobs(dst_meta.as_ref())
        .await
        .context("--to: listing blobs")?
        .into_iter()
        .collect();
    let mut listed = all_blobs(src_meta.as_ref())
        .await
        .context("--from: listing blobs")?;
    let mut known = Vec::new();
    listed.retain(|(d, size)| {
        let recorded = old_blobs.get(d) == Some(size);
        if recorded {
            counts.present.fetch_add(1, Ordering::Relaxed);
            counts.present_bytes.fetch_add(*size, Ordering::Relaxed);
            known.push(d.clone());
        }
        !recorded
    });
    let first = copy_blobs(
        (src_blobs.as_ref(), src_meta.as_ref(), dst_blobs.as_ref()),
        listed,
        jobs,
        &counts,
        &progress,
    )
    .await;
    if !first.failures.is_empty() {
        return Ok(report_failures(&first.failures));
    }
    let mut at_destination: HashSet<Digest> = first.at_destination.into_iter().chain(known).collect();

    // 2. A snapshot of the metadata, and the blobs it names that are still missing:
    // pushed since the listing. One the source collected since the snapshot cannot be
    // copied, so a newer snapshot (which no longer names it) is taken.
    let mut round = 0;
    let (mut snap, referenced, snapshot_at) = loop {
        round += 1;
        let snapshot_at = started.elapsed();
        let mut snap = src_meta
            .snapshot()
            .await
            .context("--from: taking a snapshot of the metadata")?;
        let referenced = snapshot_blobs(snap.as_mut()).await?;
        let missing: Vec<(Digest, u64)> = referenced
            .iter()
            .filter(|(d, _)| !at_destination.contains(d))
            .cloned()
            .collect();
        if missing.is_empty() {
            break (snap, referenced, snapshot_at);
        }
        progress.line(&format!(
            "snapshot {round}: {} blob(s) pushed since the listing",
            missing.len()
        ));
        let more = copy_blobs(
            (src_blobs.as_ref(), src_meta.as_ref(), dst_blobs.as_ref()),
            missing,
            jobs,
            &counts,
            &progress,
        )
        .await;
        if !more.failures.is_empty() {
            return Ok(report_failures(&more.failures));
        }
        at_destination.extend(more.at_destination);
        if more.vanished.is_empty() {
            break (snap, referenced, snapshot_at);
        }
        if round == SNAPSHOT_ROUNDS {
            eprintln!(
                "migrate-storage: after {round} snapshots the source still names blobs it has \
                 collected meanwhile (last: {}); no metadata was written. Run this again, \
                 ideally while no garbage collection runs on the source.",
                more.vanished[0]
            );
            return Ok(false);
        }
        progress.line(&format!(
            "snapshot {round}: {} blob(s) it names were collected at the source meanwhile; taking a new one",
            more.vanished.len()
        ));
    };
    let c = &counts;
    println!(
        "migrate-storage: blobs: {} copied ({}), {} already at the destination ({}){}{}",
        c.copied.load(Ordering::Relaxed),
        bytes(c.copied_bytes.load(Ordering::Relaxed)),
        c.present.load(Ordering::Relaxed),
        bytes(c.present_bytes.load(Ordering::Relaxed)),
        match c.replaced.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} of them replacing damaged copies"),
        },
        match c.vanished.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(", {n} collected at the source meanwhile (skipped)"),
        }
    );

    // 3. The destination's metadata becomes the snapshot, in one transaction.
    let mut before = row_fingerprints(dst_meta.as_ref())
        .await
        .context("--to: reading the metadata it holds")?;
    let mut replace = dst_meta
        .replace_rows()
        .await
        .context("--to: starting the metadata transaction")?;
    let mut written = Vec::new();
    for table in COPIED_TABLES {
        let mut old = before.remove(table.name).unwrap_or_default();
        let (mut offset, mut added, mut changed) = (0u64, 0u64, 0u64);
        loop {
            let rows = snap
                .rows(table, offset, row_page(table))
                .await
                .with_context(|| format!("--from: reading {} from the snapshot", table.name))?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as u64;
            for row in &rows {
                match old.remove(&row[..table.key_len()]) {
                    None => added += 1,
                    Some(h) if h != fingerprint(row) => changed += 1,
                    Some(_) => {}
                }
            }
            replace
                .insert(table, &rows)
                .await
                .with_context(|| format!("--to: writing {} rows", table.name))?;
            progress.rows(table.name, offset);
        }
        println!(
            "migrate-storage: {}: {offset} rows: {added} added, {changed} changed, {} removed",
            table.name,
            old.len()
        );
        written.push((table, offset));
    }
    replace.commit().await.context("--to: committing the metadata")?;
    drop(snap);

    // 4. Bytes at the destination that its metadata no longer names: collected at the
    // source since an earlier pass, or copied this pass and collected before the snapshot.
    let keep: HashSet<&Digest> = referenced.iter().map(|(d, _)| d).collect();
    let mut removed = 0u64;
    let stale: HashSet<&Digest> = old_blobs
        .keys()
        .chain(at_destination.iter())
        .filter(|d| !keep.contains(d))
        .collect();
    for digest in stale {
        dst_blobs
            .delete(digest)
            .await
            .with_context(|| format!("--to: deleting blob {digest}, which the source no longer has"))?;
        removed += 1;
    }
    if removed > 0 {
        println!(
            "migrate-storage: removed {removed} blob(s) from the destination that the source no longer has"
        );
    }

    // 5. Verification at the destination.
    let ok = verify(
        &written,
        &old_blobs,
        dst_meta.as_ref(),
        dst_blobs.as_ref(),
        args.verify,
        &progress,
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "migrate-storage: {} in {took:.1}s ({})",
        if ok { "done" } else { "FAILED verification" },
        if serving {
            "live pass: the source was serving"
        } else {
            "final pass"
        }
    );
    if ok && serving {
        println!(
            "migrate-storage: the destination holds the source as of {:.1}s into this pass; what the \
             source stored since is not copied yet. To cut over: stop berth on the source (every \
             replica), run this same command again (it copies only what changed, so the stop is \
             short), then start berth with the configuration given to --to.",
            snapshot_at.as_secs_f64()
        );
    } else if ok {
        println!(
            "migrate-storage: nothing served the source's data directory during this pass: start \
             berth with the configuration given to --to (for a source shared by replicas on other \
             hosts, make sure every one was stopped before this pass)."
        );
    }
    Ok(ok)
}

fn report_failures(failures: &[String]) -> bool {
    for f in failures {
        eprintln!("migrate-storage: {f}");
    }
    eprintln!(
        "migrate-storage: {} blob(s) could not be copied; no metadata was written. Fix the source \
         (`berth scrub --repair` on it) and run this again: what was copied is kept.",
        failures.len()
    );
    false
}

/// Every blob `meta` records now, by digest.
async fn all_blobs(meta: &dyn MetaStore) -> anyhow::Result<Vec<(Digest, u64)>> {
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    loop {
        let page = meta.blobs_page(blobs.last().map(|(d, _)| d), 1000).await?;
        if page.is_empty() {
            return Ok(blobs);
        }
        blobs.extend(page);
    }
}

/// Every blob the snapshot's `blobs` table records.
async fn snapshot_blobs(snap: &mut dyn RowSnapshot) -> anyhow::Result<Vec<(Digest, u64)>> {
    let table = blobs_table();
    let mut out = Vec::new();
    loop {
        let rows = snap
            .rows(table, out.len() as u64, 5000)
            .await
            .context("--from: reading blobs from the snapshot")?;
        if rows.is_empty() {
            return Ok(out);
        }
        for row in rows {
            match (&row[0], &row[1]) {
                (Cell::Text(d), Cell::Int(size)) => out.push((
                    d.parse::<Digest>()
                        .map_err(|e| anyhow::anyhow!("--from: stored digest {d:?}: {e}"))?,
                    *size as u64,
                )),
                other => bail!("--from: a blobs row reads {other:?}"),
            }
        }
    }
}

fn blobs_table() -> &'static Table {
    COPIED_TABLES
        .iter()
        .find(|t| t.name == "blobs")
        .expect("blobs is a copied table")
}

/// A fingerprint of each row of every copied table, by table and key: enough to tell
/// what a replacement adds, changes and removes without holding the rows.
async fn row_fingerprints(
    meta: &dyn MetaStore,
) -> anyhow::Result<HashMap<&'static str, HashMap<Vec<Cell>, u64>>> {
    let mut snap = meta.snapshot().await?;
    let mut out = HashMap::new();
    for table in COPIED_TABLES {
        let mut rows = HashMap::new();
        loop {
            let page = snap.rows(table, rows.len() as u64, row_page(table)).await?;
            if page.is_empty() {
                break;
            }
            for row in page {
                let h = fingerprint(&row);
                rows.insert(row[..table.key_len()].to_vec(), h);
            }
        }
        out.insert(table.name, rows);
    }
    Ok(out)
}

fn fingerprint(row: &[Cell]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    row.hash(&mut h);
    h.finish()
}

/// Copies `list` a few blobs at a time. A blob that cannot be read is one the source
/// collected meanwhile if its row is gone too (rows go first, then bytes): skipped.
async fn copy_blobs(
    (src, src_meta, dst): (&dyn BlobStore, &dyn MetaStore, &dyn BlobStore),
    list: Vec<(Digest, u64)>,
    jobs: usize,
    counts: &Counts,
    progress: &Progress,
) -> Copied {
    progress.start_blobs(list.len() as u64, list.iter().map(|(_, s)| s).sum());
    let results: Vec<(Digest, u64, anyhow::Result<()>)> = futures_util::stream::iter(list)
        .map(|(digest, size)| async move {
            let r = copy_blob(src, dst, &digest, size, counts).await;
            progress.blob_done(size);
            (digest, size, r)
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    progress.finish_blobs();
    let mut out = Copied::default();
    for (digest, size, r) in results {
        match r {
            Ok(()) => out.at_destination.push(digest),
            Err(e) => match src_meta.blob_size(&digest).await {
                Ok(None) => {
                    counts.vanished.fetch_add(1, Ordering::Relaxed);
                    out.vanished.push(digest);
                }
                _ => out.failures.push(format!("blob {digest} ({size} bytes): {e:#}")),
            },
        }
    }
    out
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
/// `rehash`, hashes to its digest); every table holds the rows the snapshot had. Without
/// `rehash`, blobs an earlier pass recorded (`checked_before`, verified by it) are not
/// asked about again.
async fn verify(
    written: &[(&Table, u64)],
    checked_before: &HashMap<Digest, u64>,
    dst_meta: &dyn MetaStore,
    dst_blobs: &dyn BlobStore,
    rehash: bool,
    progress: &Progress,
) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    for (table, s) in written {
        let d = dst_meta.count_rows(table).await?;
        if d != *s {
            problems.push(format!(
                "{}: {d} rows at the destination, {s} in the source's snapshot",
                table.name
            ));
        }
    }
    let mut after: Option<Digest> = None;
    let (mut checked, mut checked_bytes, mut earlier) = (0u64, 0u64, 0u64);
    progress.line(if rehash {
        "verifying: re-hashing every blob at the destination"
    } else {
        "verifying: the blobs this pass recorded at the destination, by size"
    });
    loop {
        let page = dst_meta.blobs_page(after.as_ref(), 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (digest, size) in page {
            if !rehash && checked_before.get(&digest) == Some(&size) {
                earlier += 1;
                continue;
            }
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
        "migrate-storage: verified {checked} blobs ({}) {} at the destination{}, {} problem(s)",
        bytes(checked_bytes),
        if rehash { "by re-hashing" } else { "by size" },
        match earlier {
            0 => String::new(),
            n => format!(" ({n} more verified by an earlier pass)"),
        },
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
        self.done_blobs.store(0, Ordering::Relaxed);
        self.done_bytes.store(0, Ordering::Relaxed);
        if blobs == 0 {
            return;
        }
        self.line(&format!("copying {blobs} blobs ({})", bytes(bytes_total)));
        if let Mode::Bar(bar) = &self.mode {
            bar.reset();
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

    fn rows(&self, table: &str, done: u64) {
        if let Mode::Lines = self.mode {
            let mut last = self.last_line.lock().unwrap();
            if last.elapsed() < Duration::from_secs(5) {
                return;
            }
            *last = Instant::now();
            eprintln!("migrate-storage: {table}: {done} rows written");
        }
    }
}
