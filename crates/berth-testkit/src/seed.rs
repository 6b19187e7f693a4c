//! Seeds a data directory with many repositories straight through the storage layer (the
//! `FsBlobStore` and `SqliteMeta` that `berth serve` opens on the same directory), for
//! tests and benchmarks of listings: far faster than pushing over HTTP, and every row
//! still goes through the same transactions a push uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::{Algorithm, Digest, DigestHasher, ManifestRef, RefKind, RepoName, Tag, UploadId};
use berth_store::fs::FsBlobStore;
use berth_store::sqlite::SqliteMeta;
use berth_store::{BlobMeta, BlobStore, ManifestMeta, NewManifest, PutManifest};
use tokio::task::JoinSet;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Repositories seeded at once (each one's writes are a run of SQLite transactions).
const PARALLEL: usize = 16;

/// The command line of a seeding example (`examples/ui_seed.rs`, `examples/gc_seed.rs`).
pub struct SeedArgs {
    pub data: PathBuf,
    /// One per default given, in order.
    pub counts: Vec<usize>,
    /// What follows the counts.
    pub rest: Vec<String>,
}

/// Reads `DATA_DIR [COUNT...] [REST...]` from the process arguments: a missing count takes
/// its default. `DATA_DIR` must not hold a `berth.db` yet. Errors say what is wrong, or
/// `usage: {usage}`.
pub fn seed_args(usage: &str, defaults: &[usize]) -> Result<SeedArgs, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(data) = args.first().map(PathBuf::from) else {
        return Err(format!("usage: {usage}"));
    };
    let counts = (1..=defaults.len())
        .map(|i| match args.get(i) {
            Some(s) => s
                .parse()
                .map_err(|e| format!("argument {i} {s:?} is not a count: {e}")),
            None => Ok(defaults[i - 1]),
        })
        .collect::<Result<Vec<usize>, String>>()?;
    if data.join("berth.db").exists() {
        return Err(format!(
            "{} already holds a berth.db; seed a fresh directory",
            data.display()
        ));
    }
    let rest = args.get(defaults.len() + 1..).unwrap_or_default().to_vec();
    Ok(SeedArgs { data, counts, rest })
}

/// What was seeded.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub repos: Vec<String>,
    pub tags_per_repo: usize,
    /// Bytes each repository links: the shared config and base layer and its own layer.
    pub bytes_of: Vec<u64>,
}

/// The name of seeded repository `r`: ten teams, `seed/team<r % 10>/app<r>`.
pub fn repo_name(r: usize) -> String {
    format!("seed/team{}/app{r:04}", r % 10)
}

async fn blob(
    blobs: &FsBlobStore,
    meta: &SqliteMeta,
    repo: &RepoName,
    id: &str,
    bytes: Vec<u8>,
    now: i64,
) -> (Digest, u64) {
    let id = UploadId::parse(id).expect("valid upload id");
    blobs.create_upload(&id).await.expect("create upload");
    let mut sink = blobs
        .append(&id, 0, DigestHasher::new(Algorithm::Sha256))
        .await
        .expect("append");
    sink.write(bytes.into()).await.expect("write");
    let (size, hasher) = sink.finish().await.expect("finish");
    let digest = hasher.finish();
    blobs.commit_upload(&id, &digest).await.expect("commit upload");
    meta.commit_blob(repo, &digest, size, None, now)
        .await
        .expect("commit_blob");
    (digest, size)
}

fn desc(media_type: &str, d: &(Digest, u64)) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": d.0.to_string(), "size": d.1})
}

/// Seeds `repos` repositories with `tags` tagged image manifests each into `data_dir`
/// (created if needed; it must not hold a registry yet). Repository `r` gets its own layer
/// of `1024 + r` bytes besides a config and a base layer all share; its manifests are
/// pushed one second apart, repository by repository, ending now.
pub async fn repositories(data_dir: &Path, repos: usize, tags: usize) -> Seeded {
    std::fs::create_dir_all(data_dir).expect("create the data directory");
    let blobs = Arc::new(FsBlobStore::open(data_dir).await.expect("open blob store"));
    let meta = Arc::new(
        SqliteMeta::open(&data_dir.join("berth.db"))
            .await
            .expect("open metadata"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = now - (repos * tags) as i64;
    let first: RepoName = repo_name(0).parse().unwrap();
    let config = blob(
        &blobs,
        &meta,
        &first,
        "seed-config",
        br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec(),
        start,
    )
    .await;
    let base = blob(&blobs, &meta, &first, "seed-base", vec![7u8; 4096], start).await;
    let shared = Arc::new((config, base));
    let mut set = JoinSet::new();
    let mut bytes_of = vec![0u64; repos];
    for r in 0..repos {
        if set.len() >= PARALLEL {
            let (r, b) = set.join_next().await.unwrap().expect("seed task");
            bytes_of[r] = b;
        }
        let (blobs, meta, shared) = (blobs.clone(), meta.clone(), shared.clone());
        set.spawn(async move {
            let repo: RepoName = repo_name(r).parse().unwrap();
            let (config, base) = &*shared;
            let t0 = start + (r * tags) as i64;
            for d in [config, base] {
                meta.link_blob(&repo, &d.0, None, t0).await.expect("link_blob");
            }
            let own = blob(
                &blobs,
                &meta,
                &repo,
                &format!("seed-{r}"),
                {
                    let mut v = format!("layer of repository {r}\n").into_bytes();
                    v.resize(1024 + r, b'x');
                    v
                },
                t0,
            )
            .await;
            let refs = [
                (RefKind::Config, config),
                (RefKind::Layer, base),
                (RefKind::Layer, &own),
            ]
            .map(|(kind, d)| ManifestRef {
                kind,
                digest: d.0.clone(),
                size: d.1,
                required: true,
            });
            for t in 0..tags {
                let body = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": desc("application/vnd.oci.image.config.v1+json", config),
                    "layers": [desc("application/vnd.oci.image.layer.v1.tar", base),
                               desc("application/vnd.oci.image.layer.v1.tar", &own)],
                    "annotations": {"seed": format!("{r}-{t}")},
                }))
                .unwrap();
                let digest = Digest::sha256_of(&body);
                let tag: Tag = format!("v{t}").parse().unwrap();
                let stored = meta
                    .put_manifest(NewManifest {
                        repo: &repo,
                        digest: &digest,
                        media_type: OCI_MANIFEST,
                        artifact_type: None,
                        subject: None,
                        annotations: None,
                        body: &body,
                        refs: &refs,
                        tag: Some(&tag),
                        require_refs: true,
                        now: t0 + t as i64,
                    })
                    .await
                    .expect("put_manifest");
                assert_eq!(stored, PutManifest::Stored);
            }
            (r, config.1 + base.1 + own.1)
        });
    }
    while let Some(done) = set.join_next().await {
        let (r, b) = done.expect("seed task");
        bytes_of[r] = b;
    }
    Seeded {
        repos: (0..repos).map(repo_name).collect(),
        tags_per_repo: tags,
        bytes_of,
    }
}
