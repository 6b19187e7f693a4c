//! Seeds a data directory for the garbage-collection benchmark (`bench/gc.sh`), directly
//! through the storage layer: the same `FsBlobStore` and `SqliteMeta` (on
//! `DATA_DIR/berth.db`) that `berth serve` opens with `[storage] data_dir = DATA_DIR`.
//!
//! ```text
//! cargo run --release -p berth --example gc_seed -- DATA_DIR [BLOBS] [MANIFESTS] [LIST_FILE]
//! ```
//!
//! - BLOBS (100000) distinct blobs of 64..4096 bytes, each written like a push does it:
//!   `create_upload`, `append`, `finish` (hashing on the way), `commit_upload` (fsync,
//!   rename), then `commit_blob` (row and repository link in one transaction).
//! - MANIFESTS (10000) OCI image manifests, `put_manifest` with `require_refs: true`, in
//!   8 repositories `gcbench/r0`..`gcbench/r7`. Manifests come in pairs in one repository:
//!   the even one is tagged `v<n>`, the odd one untagged. Each owns BLOBS/MANIFESTS blobs
//!   (a config and, by default, 9 layers); the untagged one also references the first
//!   layer of its tagged partner (a shared base layer GC must keep). Blobs left over
//!   (BLOBS not a multiple) are linked but referenced by nothing.
//! - Every timestamp is two days old, so no grace period protects anything.
//!
//! A GC with the default grace must then delete exactly the untagged manifests, their own
//! blobs and the leftovers (printed as `expect:` at the end). LIST_FILE, if given, gets one
//! line per manifest: `tagged|untagged repo tag-or-- manifest-digest own-layer-digest
//! shared-layer-digest-or--`, for the benchmark's load and its checks afterwards.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use berth_oci::{Algorithm, Digest, DigestHasher, RepoName, Tag, UploadId, media};
use berth_store::fs::FsBlobStore;
use berth_store::sqlite::SqliteMeta;
use berth_store::{BlobMeta, BlobStore, ManifestMeta, NewManifest, PutManifest};
use tokio::task::JoinSet;

const REPOS: usize = 8;
/// Blob writes in flight: file work runs on the blocking pool, so this overlaps fsyncs.
/// SQLite write transactions serialize anyway; taking them in turn here instead of
/// leaving them to SQLite's busy handler measured the same (about 2,300 blobs/s on 2 cores).
const BLOB_PARALLEL: usize = 64;
/// Manifest pushes in flight (each is one SQLite write transaction).
const MANIFEST_PARALLEL: usize = 16;
const TWO_DAYS: i64 = 2 * 24 * 3600;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Blob `i`: 64..=4096 bytes, distinct (its index is in the first bytes).
fn blob_bytes(i: usize) -> Vec<u8> {
    let len = 64 + (splitmix(i as u64) % 4033) as usize;
    let mut out = Vec::with_capacity(len + 8);
    writeln!(out, "gc_seed blob {i}").unwrap();
    let mut s = splitmix(i as u64 ^ 0x5eed);
    while out.len() < len {
        s = splitmix(s);
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn repo_name(r: usize) -> RepoName {
    format!("gcbench/r{r}").parse().expect("valid repository name")
}

/// The repository of manifest `j` (pairs share one); of leftover blob `i`.
fn manifest_repo(j: usize) -> usize {
    (j / 2) % REPOS
}

async fn seed_blob(
    blobs: &FsBlobStore,
    meta: &SqliteMeta,
    i: usize,
    repo: &RepoName,
    now: i64,
) -> anyhow::Result<(Digest, u64)> {
    let id = UploadId::parse(&format!("gcseed-{i}")).expect("valid upload id");
    blobs.create_upload(&id).await?;
    let mut sink = blobs.append(&id, 0, DigestHasher::new(Algorithm::Sha256)).await?;
    sink.write(bytes::Bytes::from(blob_bytes(i))).await?;
    let (size, hasher) = sink.finish().await?;
    let digest = hasher.finish();
    blobs.commit_upload(&id, &digest).await?;
    meta.commit_blob(repo, &digest, size, None, now).await?;
    Ok((digest, size))
}

fn descriptor(media_type: &str, d: &(Digest, u64)) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": d.0.to_string(), "size": d.1})
}

struct Plan {
    blobs: usize,
    manifests: usize,
    /// Blobs each manifest owns: a config and `per - 1` layers.
    per: usize,
}

impl Plan {
    fn own(&self, j: usize) -> std::ops::Range<usize> {
        j * self.per..(j + 1) * self.per
    }
    fn leftovers(&self) -> std::ops::Range<usize> {
        self.manifests * self.per..self.blobs
    }
    fn blob_repo(&self, i: usize) -> usize {
        if i < self.manifests * self.per {
            manifest_repo(i / self.per)
        } else {
            i % REPOS
        }
    }
    /// The shared base layer of untagged manifest `j`: its partner's first layer.
    fn shared(&self, j: usize) -> Option<usize> {
        (j % 2 == 1).then(|| self.own(j - 1).start + 1)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = berth_testkit::seed::seed_args(
        "gc_seed DATA_DIR [BLOBS=100000] [MANIFESTS=10000] [LIST_FILE]",
        &[100_000, 10_000],
    )
    .map_err(anyhow::Error::msg)?;
    let (data, n_blobs, n_manifests) = (args.data, args.counts[0], args.counts[1]);
    let list_file = args.rest.first().map(PathBuf::from);
    ensure!(
        n_manifests >= 2 && n_manifests.is_multiple_of(2),
        "MANIFESTS must be even and at least 2"
    );
    let per = n_blobs / n_manifests;
    ensure!(
        per >= 3,
        "need at least 3 blobs per manifest (config and two layers)"
    );
    let plan = Arc::new(Plan {
        blobs: n_blobs,
        manifests: n_manifests,
        per,
    });
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let blobs = Arc::new(FsBlobStore::open(&data).await?);
    let meta = Arc::new(SqliteMeta::open(&data.join("berth.db")).await?);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64 - TWO_DAYS;
    let repos: Arc<Vec<RepoName>> = Arc::new((0..REPOS).map(repo_name).collect());

    // Blobs.
    let started = Instant::now();
    let mut digests: Vec<Option<(Digest, u64)>> = vec![None; n_blobs];
    let mut total_bytes = 0u64;
    let mut set = JoinSet::new();
    let mut next = 0usize;
    let mut report_at = Instant::now() + Duration::from_secs(10);
    while next < n_blobs || !set.is_empty() {
        while next < n_blobs && set.len() < BLOB_PARALLEL {
            let (b, m, r, p) = (blobs.clone(), meta.clone(), repos.clone(), plan.clone());
            let i = next;
            set.spawn(async move {
                let repo = &r[p.blob_repo(i)];
                (i, seed_blob(&b, &m, i, repo, now).await)
            });
            next += 1;
        }
        let (i, res) = set.join_next().await.expect("tasks in flight")?;
        let d = res.with_context(|| format!("seeding blob {i}"))?;
        total_bytes += d.1;
        digests[i] = Some(d);
        if Instant::now() >= report_at {
            eprintln!("gc_seed: {next}/{n_blobs} blobs, {:.0?}", started.elapsed());
            report_at += Duration::from_secs(10);
        }
    }
    let blobs_took = started.elapsed();
    let digests: Arc<Vec<(Digest, u64)>> =
        Arc::new(digests.into_iter().map(|d| d.expect("seeded")).collect());

    // Manifests.
    let started_m = Instant::now();
    let mut lines: Vec<Option<String>> = vec![None; n_manifests];
    let mut set = JoinSet::new();
    let mut next = 0usize;
    while next < n_manifests || !set.is_empty() {
        while next < n_manifests && set.len() < MANIFEST_PARALLEL {
            let (m, r, p, d) = (meta.clone(), repos.clone(), plan.clone(), digests.clone());
            let j = next;
            set.spawn(async move { (j, seed_manifest(&m, &r, &p, &d, j, now).await) });
            next += 1;
        }
        let (j, res) = set.join_next().await.expect("tasks in flight")?;
        lines[j] = Some(res.with_context(|| format!("seeding manifest {j}"))?);
        if Instant::now() >= report_at {
            eprintln!(
                "gc_seed: {next}/{n_manifests} manifests, {:.0?}",
                started_m.elapsed()
            );
            report_at += Duration::from_secs(10);
        }
    }
    let manifests_took = started_m.elapsed();

    if let Some(path) = &list_file {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for l in lines.iter().flatten() {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
    }

    // What a collection with the default grace must remove.
    let untagged = n_manifests / 2;
    let garbage_blobs: Vec<usize> = (0..n_manifests)
        .filter(|j| j % 2 == 1)
        .flat_map(|j| plan.own(j))
        .chain(plan.leftovers())
        .collect();
    let garbage_bytes: u64 = garbage_blobs.iter().map(|&i| digests[i].1).sum();
    let total = started.elapsed();
    println!(
        "seeded {}: {n_blobs} blobs ({total_bytes} bytes) in {REPOS} repositories, {n_manifests} manifests \
         ({} tagged, {untagged} untagged; {} blobs each, untagged ones share a layer with a tagged one), \
         timestamps 2 days old",
        data.display(),
        n_manifests - untagged,
        per,
    );
    println!(
        "took: blobs {:.1}s ({:.0}/s), manifests {:.1}s ({:.0}/s), total {:.1}s",
        blobs_took.as_secs_f64(),
        n_blobs as f64 / blobs_took.as_secs_f64(),
        manifests_took.as_secs_f64(),
        n_manifests as f64 / manifests_took.as_secs_f64(),
        total.as_secs_f64(),
    );
    println!(
        "expect: manifests={untagged} links={} blobs={} bytes={garbage_bytes} leftovers={}",
        garbage_blobs.len(),
        garbage_blobs.len(),
        plan.leftovers().len(),
    );
    Ok(())
}

/// Pushes manifest `j`; returns its line for LIST_FILE.
async fn seed_manifest(
    meta: &SqliteMeta,
    repos: &[RepoName],
    plan: &Plan,
    digests: &[(Digest, u64)],
    j: usize,
    now: i64,
) -> anyhow::Result<String> {
    let own = plan.own(j);
    let config = &digests[own.start];
    let mut layers: Vec<&(Digest, u64)> = Vec::new();
    if let Some(s) = plan.shared(j) {
        layers.push(&digests[s]);
    }
    layers.extend(own.clone().skip(1).map(|i| &digests[i]));
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|d| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d)).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.title": format!("gc_seed manifest {j}")},
    }))?;
    let parsed = berth_oci::manifest::parse(&body, Some(media::OCI_MANIFEST))?;
    let digest = Digest::sha256_of(&body);
    let tagged = j.is_multiple_of(2);
    let tag: Option<Tag> = tagged.then(|| format!("v{j}").parse().expect("valid tag"));
    let annotations = parsed
        .annotations
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let repo = &repos[manifest_repo(j)];
    let stored = meta
        .put_manifest(NewManifest {
            repo,
            digest: &digest,
            media_type: &parsed.media_type,
            artifact_type: parsed.artifact_type.as_deref(),
            subject: parsed.subject.as_ref(),
            annotations,
            body: &body,
            refs: &parsed.refs,
            tag: tag.as_ref(),
            require_refs: true,
            now,
        })
        .await?;
    if let PutManifest::Missing(m) = stored {
        bail!("references not present in {repo}: {m:?}");
    }
    Ok(format!(
        "{} {repo} {} {digest} {} {}",
        if tagged { "tagged" } else { "untagged" },
        tag.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        digests[own.start + 1].0,
        plan.shared(j)
            .map(|s| digests[s].0.to_string())
            .unwrap_or_else(|| "-".into()),
    ))
}
