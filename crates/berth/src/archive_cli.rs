//! `berth export` and `berth import`: images between a registry and an archive file,
//! through `berth-transfer` (its registry source and destination, its archives, its
//! copy engine).
//!
//! `export REF... -o FILE` reads each reference from its registry and writes one OCI
//! image layout tar (`oci-archive`), optionally gzip- or zstd-compressed, that `skopeo
//! copy oci-archive:FILE:NAME` and `podman load` read. Each reference gets an
//! `index.json` entry named by its tag (the `org.opencontainers.image.ref.name`
//! annotation; `repo:tag` when two references share a tag; the digest for a digest
//! reference) and its full name in `io.containerd.image.name`, which `podman load` names
//! the image after and `import` restores.
//!
//! Platforms: a multi-platform index is exported whole with `--all-platforms` (index and
//! every child, digests unchanged); with `--platform os/arch[/variant]` only that child;
//! otherwise only the child for the platform berth runs on (linux/amd64 on x86-64). A
//! single child is exported as the image itself, which is what `podman load` expects.
//!
//! `import FILE [REF]` pushes an archive (OCI layout archive, compressed or not, or a
//! `docker save` archive; told apart by content) into a registry: blobs first (HEAD, then
//! one upload for small blobs, chunks for large ones), then manifests (children before
//! their index), by digest; the tags only once every image of the archive is complete, so
//! a failed import leaves nothing tagged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use berth_oci::{Digest, Reference, RepoName};
use berth_transfer::archive::{AnyArchive, Compression, OciArchive};
use berth_transfer::progress::Quiet;
use berth_transfer::reference::{parse_host, parse_registry};
use berth_transfer::registry::{DEFAULT_CHUNK_SIZE, RegistryDest, RegistrySource};
use berth_transfer::{CopyOptions, CopyReport, Destination, Platform, copy_image, creds};

use crate::transfer_cli::{client, runtime};

/// `berth export` flags.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Images to export: `host[:port]/repo:tag` or `host[:port]/repo@sha256:...`.
    #[arg(required = true, value_name = "REF")]
    refs: Vec<String>,
    /// The archive to write (replaced only once complete).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// Compress the whole archive: gzip, zstd or none.
    #[arg(long, value_name = "C", default_value = "none", value_parser = parse_compression)]
    compress: Compression,
    /// Export every platform of a multi-platform image (the index and all children).
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Export only this platform of a multi-platform image (`os/arch[/variant]`)
    /// [default: the platform berth runs on].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    #[command(flatten)]
    access: Access,
}

/// `berth import` flags.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// An OCI image layout archive (plain, gzip or zstd) or a `docker save` archive.
    file: PathBuf,
    /// Where to push: `host/repo:tag` (an archive of one image), `host/repo` (each image
    /// under its own tag), or `host` (each image under its own repository and tag).
    /// Default: each image's full name in the archive.
    #[arg(value_name = "REF")]
    reference: Option<String>,
    #[command(flatten)]
    access: Access,
}

#[derive(clap::Args)]
struct Access {
    /// Credentials for the registry, `USER:PASSWORD` (Basic, or for its token server).
    #[arg(long, value_name = "USER:PASS", env = "BERTH_CREDS", hide_env_values = true)]
    creds: Option<String>,
    /// Plain HTTP for every registry, not only localhost and loopback addresses.
    #[arg(long)]
    insecure: bool,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// Blobs in flight at once (`berth copy`'s default).
const CONCURRENCY: usize = 4;

/// A registry name split up: `host[:port]`, repository, tag or digest.
#[derive(Clone, Debug)]
struct ImageName {
    host: Option<String>,
    repo: Option<RepoName>,
    reference: Option<Reference>,
}

/// docker's rule: a first component with a `.` or `:`, or `localhost`, is a registry.
fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn parse_name(s: &str) -> anyhow::Result<ImageName> {
    let (host, rest) = match s.split_once('/') {
        Some((h, rest)) if is_host(h) => (Some(h.to_string()), Some(rest)),
        None if is_host(s) => (Some(s.to_string()), None),
        _ => (None, Some(s)),
    };
    let Some(rest) = rest else {
        return Ok(ImageName {
            host,
            repo: None,
            reference: None,
        });
    };
    let (name, reference) = match rest.split_once('@') {
        Some((name, digest)) => {
            let name = name.split_once(':').map_or(name, |(n, _)| n);
            let d: Digest = digest.parse().with_context(|| format!("{s:?}"))?;
            (name, Some(Reference::Digest(d)))
        }
        None => match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (
                name,
                Some(Reference::Tag(tag.parse().with_context(|| format!("{s:?}"))?)),
            ),
            _ => (rest, None),
        },
    };
    let repo: RepoName = name.parse().with_context(|| format!("{s:?}"))?;
    Ok(ImageName {
        host,
        repo: Some(repo),
        reference,
    })
}

fn split_creds(access: &Access) -> anyhow::Result<Option<(String, String)>> {
    access
        .creds
        .as_deref()
        .map(creds::parse_pair)
        .transpose()
        .map_err(|e| anyhow!("--creds: {e}"))
}

/// What the copies did, for the summary.
#[derive(Default)]
struct Tally {
    blobs_sent: u64,
    blobs_present: u64,
    bytes_sent: u64,
    manifests: u64,
}

impl Tally {
    fn add(&mut self, r: &CopyReport) {
        self.blobs_sent += r.blobs_copied;
        self.blobs_present += r.blobs_skipped;
        self.bytes_sent += r.bytes_sent;
        self.manifests += r.manifests;
    }
}

fn copy_options(platforms: Vec<Platform>) -> CopyOptions<'static> {
    CopyOptions {
        concurrency: CONCURRENCY,
        platforms,
        referrers: false,
        observer: &Quiet,
    }
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    // Empty: every platform (the index itself).
    let platforms = match (&args.platform, args.all_platforms) {
        (_, true) => Vec::new(),
        (Some(p), false) => vec![p.parse::<Platform>().map_err(|e| anyhow!("--platform {e}"))?],
        (None, false) => vec![Platform::native()],
    };
    let creds = split_creds(&args.access)?;
    // (as given, what to read, the registry, the full name index.json keeps)
    let mut targets = Vec::new();
    for r in &args.refs {
        let reg = parse_registry(r).map_err(|e| anyhow!("{r:?}: {e}"))?;
        let up = client(&reg.host, reg.loopback, args.access.insecure, creds.clone())?;
        let full = match &reg.digest {
            Some(d) => format!("{}/{}@{d}", reg.host, reg.repo),
            None => format!("{}/{}:{}", reg.host, reg.repo, reg.reference()),
        };
        targets.push((r, reg.reference(), RegistrySource::new(up, reg.repo), full));
    }
    // The name each image gets in index.json: its tag, unless two share one.
    let unique = targets
        .iter()
        .map(|t| &t.1)
        .collect::<std::collections::HashSet<_>>()
        .len()
        == targets.len();
    let opts = copy_options(platforms);
    let archive = OciArchive::create(&args.output, args.compress)?;
    let rt = runtime().context("starting the runtime")?;
    let result = rt.block_on(async {
        let mut tally = Tally::default();
        for (text, reference, src, full) in &targets {
            let ref_name = if unique {
                reference.clone()
            } else {
                format!("{}:{reference}", src.repo)
            };
            let r = copy_image(src, reference, &archive, Some(&ref_name), &opts).await?;
            archive.name_image(&ref_name, full)?;
            println!(
                "exported {text} as {ref_name:?}: {} {}",
                r.media_type.as_deref().unwrap_or_default(),
                r.digest.as_ref().map(ToString::to_string).unwrap_or_default()
            );
            tally.add(&r);
        }
        archive.finish().await?;
        anyhow::Ok(tally)
    });
    match result {
        Ok(t) => {
            println!(
                "wrote {}: {} blobs ({} bytes), {} manifests",
                args.output.display(),
                t.blobs_sent,
                t.bytes_sent,
                t.manifests
            );
            Ok(())
        }
        Err(e) => {
            archive.abandon();
            Err(e.context(format!(
                "export to {} failed; no file was written",
                args.output.display()
            )))
        }
    }
}

/// One image to push: where from in the archive and where to.
struct Planned {
    /// The reference inside the archive (a ref name, a RepoTag or a digest).
    source_ref: String,
    host: String,
    repo: RepoName,
    tag: Option<String>,
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let creds = split_creds(&args.access)?;
    let file = args.file.clone();
    let archive = AnyArchive::open(&file)?;
    // (reference into the archive, the name it gives the image)
    let entries: Vec<(String, Option<String>)> = match &archive {
        AnyArchive::Oci(a) => {
            let images = a.images();
            let count = |r: &str| images.iter().filter(|o| o.ref_name.as_deref() == Some(r)).count();
            images
                .iter()
                .map(|i| {
                    // A ref name given twice cannot select one image; the digest can.
                    let reference = i
                        .ref_name
                        .clone()
                        .filter(|r| count(r) == 1)
                        .unwrap_or_else(|| i.descriptor.digest.to_string());
                    (reference, i.image_name.clone().or(i.ref_name.clone()))
                })
                .collect()
        }
        AnyArchive::Docker(a) => a
            .images()
            .iter()
            .enumerate()
            .flat_map(|(n, i)| {
                if i.repo_tags.is_empty() {
                    vec![(n.to_string(), None)]
                } else {
                    i.repo_tags.iter().map(|t| (t.clone(), Some(t.clone()))).collect()
                }
            })
            .collect(),
    };
    if entries.is_empty() {
        bail!("{}: the archive names no images", file.display());
    }
    let target = args.reference.as_deref().map(parse_name).transpose()?;
    let mut plan = Vec::new();
    for (source_ref, name) in entries.iter() {
        let own = name.as_deref().map(parse_name).transpose().ok().flatten();
        let own_tag = || match own.as_ref().and_then(|o| o.reference.clone()) {
            Some(Reference::Tag(t)) => Some(t.to_string()),
            // A bare ref name (`v1`) parses as a repository; it is a tag here.
            _ => own
                .as_ref()
                .filter(|o| o.host.is_none() && o.reference.is_none())
                .and_then(|o| o.repo.as_ref())
                .filter(|r| !r.as_str().contains('/'))
                .map(|r| r.to_string())
                .or_else(|| name.clone().filter(|n| n.parse::<berth_oci::Tag>().is_ok())),
        };
        let item = match &target {
            Some(ImageName {
                host: Some(host),
                repo: Some(repo),
                reference,
            }) => {
                let tag = match reference {
                    Some(Reference::Tag(t)) => {
                        if entries.len() > 1 {
                            bail!(
                                "{} holds {} images; give host/repo or host to import them all",
                                file.display(),
                                entries.len()
                            );
                        }
                        Some(t.to_string())
                    }
                    Some(Reference::Digest(_)) => bail!("import to a digest: give a tag or none"),
                    None => own_tag(),
                };
                Planned {
                    source_ref: source_ref.clone(),
                    host: host.clone(),
                    repo: repo.clone(),
                    tag,
                }
            }
            Some(ImageName {
                host: Some(host),
                repo: None,
                ..
            }) => {
                let Some(ImageName { repo: Some(repo), .. }) = own.clone().filter(|o| o.host.is_some())
                else {
                    bail!("image {source_ref:?} of the archive has no full name; give host/repo:tag");
                };
                Planned {
                    source_ref: source_ref.clone(),
                    host: host.clone(),
                    repo,
                    tag: own_tag(),
                }
            }
            Some(_) => bail!("REF must start with a registry host (host[:port]/repo[:tag])"),
            None => {
                let Some(ImageName {
                    host: Some(host),
                    repo: Some(repo),
                    ..
                }) = own.clone()
                else {
                    bail!(
                        "image {source_ref:?} of the archive has no name with a registry; give REF (host/repo:tag)"
                    );
                };
                Planned {
                    source_ref: source_ref.clone(),
                    host,
                    repo,
                    tag: own_tag(),
                }
            }
        };
        plan.push(item);
    }

    let opts = copy_options(Vec::new());
    let rt = runtime().context("starting the runtime")?;
    rt.block_on(async {
        let src = archive.source();
        let mut dests: BTreeMap<(String, String), Arc<RegistryDest>> = BTreeMap::new();
        let mut pushed = Vec::new();
        let mut tally = Tally::default();
        for p in &plan {
            let key = (p.host.clone(), p.repo.to_string());
            let dst = match dests.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let (host, loopback) = parse_host(&p.host).map_err(anyhow::Error::msg)?;
                    let up = client(&host, loopback, args.access.insecure, creds.clone())?.pushing();
                    // No upload state files: an import is not resumed mid-blob.
                    let d = Arc::new(RegistryDest::new(
                        up,
                        p.repo.clone(),
                        None,
                        DEFAULT_CHUNK_SIZE,
                        None,
                    ));
                    dests.insert(key, d.clone());
                    d
                }
            };
            let copied = async {
                let m = src.manifest(&p.source_ref).await?;
                // By digest only: the tags move below, once every image is complete.
                let r = copy_image(src, &p.source_ref, dst.as_ref(), None, &opts).await?;
                tally.add(&r);
                anyhow::Ok(m)
            };
            let m = copied.await.with_context(|| {
                format!(
                    "importing {:?} into {}/{}: nothing was tagged",
                    p.source_ref, p.host, p.repo
                )
            })?;
            println!("pushed {} {} to {}/{}", m.media_type, m.digest, p.host, p.repo);
            pushed.push((dst, m, p));
        }
        // Only now that every image is complete do tags move.
        for (dst, m, p) in &pushed {
            match &p.tag {
                Some(tag) => {
                    dst.put_manifest(m, Some(tag)).await.with_context(|| {
                        format!(
                            "every image was pushed, but tagging {}/{}:{tag} failed",
                            p.host, p.repo
                        )
                    })?;
                    println!("tagged {}/{}:{tag} {}", p.host, p.repo, m.digest);
                }
                None => println!("untagged {}/{}@{}", p.host, p.repo, m.digest),
            }
        }
        println!(
            "imported {}: {} blobs pushed ({} bytes), {} already present, {} manifests",
            file.display(),
            tally.blobs_sent,
            tally.bytes_sent,
            tally.blobs_present,
            tally.manifests
        );
        anyhow::Ok(())
    })
}
