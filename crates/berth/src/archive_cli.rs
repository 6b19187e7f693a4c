//! `berth export` and `berth import`: images between a registry and an archive file.
//!
//! `export REF... -o FILE` reads each reference from its registry (through
//! `berth-upstream`) and writes one OCI image layout tar (`oci-archive`), optionally
//! gzip- or zstd-compressed, that `skopeo copy oci-archive:FILE:NAME` and `podman load`
//! read. Each reference gets an `index.json` entry named by its tag (the
//! `org.opencontainers.image.ref.name` annotation; `repo:tag` when two references share a
//! tag; the digest for a digest reference) and its full name in `io.containerd.image.name`,
//! which `podman load` names the image after and `import` restores.
//!
//! Platforms: a multi-platform index is exported whole with `--all-platforms` (index and
//! every child, digests unchanged); with `--platform os/arch[/variant]` only that child;
//! otherwise only the child for the platform berth runs on (linux/amd64 on x86-64). A
//! single child is exported as the image itself, which is what `podman load` expects.
//!
//! `import FILE [REF]` pushes an archive (OCI layout archive, compressed or not, or a
//! `docker save` archive; told apart by content) into a registry: blobs first (HEAD, then
//! one POST for small blobs, chunks for large ones), then manifests (children before
//! their index), by digest; the tags only once every image of the archive is complete, so
//! a failed import leaves nothing tagged.
//!
//! The registry side here is deliberately small (read through `Upstream`, write with a
//! plain client that answers Basic and Bearer challenges); `berth copy`'s registry
//! transport replaces it once it exists.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use berth_oci::route::path;
use berth_oci::{Descriptor, Digest, Reference, RepoName, media};
use berth_transfer::archive::{AnyArchive, Compression, OciArchive};
use berth_transfer::{BlobReader, Destination, Manifest, Source, TransferError};
use berth_upstream::{Upstream, UpstreamConfig};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

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

/// Small blobs go in one request; larger ones in chunks of this size.
const CHUNK: u64 = 16 << 20;
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Indexes of indexes deeper than this are refused.
const MAX_DEPTH: usize = 4;

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

/// `scheme://host` for a registry host: plain HTTP for localhost and loopback addresses
/// (or with --insecure), HTTPS otherwise.
fn base_url(host: &str, insecure: bool) -> anyhow::Result<String> {
    let url = Url::parse(&format!("http://{host}")).with_context(|| format!("registry host {host:?}"))?;
    let name = url.host_str().unwrap_or_default();
    if name.is_empty() || url.path() != "/" || !url.username().is_empty() {
        bail!("registry host {host:?} is not host[:port]");
    }
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok(format!(
        "{}://{host}",
        if loopback || insecure { "http" } else { "https" }
    ))
}

fn split_creds(creds: &Option<String>) -> anyhow::Result<Option<(String, String)>> {
    match creds {
        None => Ok(None),
        Some(c) => match c.split_once(':') {
            Some((u, p)) => Ok(Some((u.to_string(), p.to_string()))),
            None => bail!("--creds must be USER:PASSWORD"),
        },
    }
}

/// Which children of an index to take.
#[derive(Clone, Debug)]
enum Platforms {
    All,
    One {
        os: String,
        arch: String,
        variant: Option<String>,
    },
}

impl Platforms {
    fn parse(s: &str) -> anyhow::Result<Platforms> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platforms::One {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()),
            }),
            _ => bail!("--platform {s:?}: expected os/arch or os/arch/variant"),
        }
    }

    /// The platform this binary runs on, in OCI terms.
    fn host() -> Platforms {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platforms::One {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: None,
        }
    }

    fn matches(&self, platform: Option<&serde_json::Value>) -> bool {
        match self {
            Platforms::All => true,
            Platforms::One { os, arch, variant } => {
                let Some(p) = platform else { return false };
                let get = |k: &str| p.get(k).and_then(|v| v.as_str());
                get("os") == Some(os)
                    && get("architecture") == Some(arch)
                    && (variant.is_none() || get("variant") == variant.as_deref())
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct Refs {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

fn refs_of(m: &Manifest, at: &str) -> anyhow::Result<Refs> {
    serde_json::from_slice(&m.bytes).with_context(|| format!("{at}: manifest {} does not parse", m.digest))
}

/// The manifest to copy for `top` under `platforms`: `top` itself, or one child.
async fn select(src: &dyn Source, top: Manifest, platforms: &Platforms) -> anyhow::Result<Manifest> {
    if !media::is_index(&top.media_type) || matches!(platforms, Platforms::All) {
        return Ok(top);
    }
    let refs = refs_of(&top, &src.describe())?;
    let child = refs
        .manifests
        .iter()
        .find(|d| platforms.matches(d.platform.as_ref()))
        .with_context(|| {
            let have: Vec<String> = refs
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| {
                    let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
                    format!("{}/{}", s("os"), s("architecture"))
                })
                .collect();
            format!(
                "{}: index {} has no child for {platforms:?} (it has {}); use --platform or --all-platforms",
                src.describe(),
                top.digest,
                have.join(", ")
            )
        })?;
    Ok(src.manifest(&child.digest.to_string()).await?)
}

/// What a copy did, for the summary.
#[derive(Default)]
struct Tally {
    blobs_sent: usize,
    blobs_present: usize,
    bytes_sent: u64,
    manifests: usize,
}

/// Copies `m` and everything it references (children before their index), by digest.
/// The tag is the caller's business, once everything is there.
async fn copy_tree(
    src: &dyn Source,
    dst: &dyn Destination,
    m: &Manifest,
    depth: usize,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "{}: manifest {} nests indexes deeper than {MAX_DEPTH}",
            src.describe(),
            m.digest
        );
    }
    let refs = refs_of(m, &src.describe())?;
    if media::is_index(&m.media_type) {
        for child in &refs.manifests {
            let cm = src.manifest(&child.digest.to_string()).await?;
            Box::pin(copy_tree(src, dst, &cm, depth + 1, tally)).await?;
        }
    } else {
        for desc in refs.config.iter().chain(&refs.layers) {
            if media::is_non_distributable(&desc.media_type) {
                continue;
            }
            if dst.has_blob(&desc.digest).await? {
                tally.blobs_present += 1;
                continue;
            }
            dst.put_blob(src, desc, &|_| {}).await?;
            tally.blobs_sent += 1;
            tally.bytes_sent += desc.size;
        }
    }
    if !dst.has_manifest(&m.digest).await? {
        dst.put_manifest(m, None).await?;
    }
    tally.manifests += 1;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let platforms = match (&args.platform, args.all_platforms) {
        (_, true) => Platforms::All,
        (Some(p), false) => Platforms::parse(p)?,
        (None, false) => Platforms::host(),
    };
    let creds = split_creds(&args.access.creds)?;
    let mut targets = Vec::new();
    for r in &args.refs {
        let n = parse_name(r)?;
        let (Some(host), Some(repo)) = (n.host.clone(), n.repo.clone()) else {
            bail!("{r:?}: expected host[:port]/repo:tag or host[:port]/repo@sha256:...");
        };
        let reference = n
            .reference
            .clone()
            .unwrap_or_else(|| Reference::Tag("latest".parse().unwrap()));
        targets.push((r.clone(), host, repo, reference));
    }
    // The name each image gets in index.json: its tag, unless two share one.
    let short: Vec<String> = targets.iter().map(|(_, _, _, r)| r.to_string()).collect();
    let unique = short.iter().collect::<std::collections::HashSet<_>>().len() == short.len();
    let archive = OciArchive::create(&args.output, args.compress)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let mut tally = Tally::default();
        for ((text, host, repo, reference), short) in targets.iter().zip(&short) {
            let src = RegistrySource::new(host, repo.clone(), &creds, args.access.insecure)?;
            let top = src.manifest(&reference.to_string()).await?;
            let image = select(&src, top, &platforms).await?;
            copy_tree(&src, &archive, &image, 0, &mut tally).await?;
            let ref_name = if unique {
                short.clone()
            } else {
                format!("{repo}:{reference}")
            };
            archive.put_manifest(&image, Some(&ref_name)).await?;
            let full = match reference {
                Reference::Tag(t) => format!("{host}/{repo}:{t}"),
                Reference::Digest(d) => format!("{host}/{repo}@{d}"),
            };
            archive.name_image(&ref_name, &full)?;
            println!(
                "exported {text} as {ref_name:?}: {} {}",
                image.media_type, image.digest
            );
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
    let creds = split_creds(&args.access.creds)?;
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

    let rt = runtime()?;
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
                    let d = Arc::new(RegistryDest::new(
                        &p.host,
                        p.repo.clone(),
                        &creds,
                        args.access.insecure,
                    )?);
                    dests.insert(key, d.clone());
                    d
                }
            };
            let copied = async {
                let m = src.manifest(&p.source_ref).await?;
                copy_tree(src, dst.as_ref(), &m, 0, &mut tally).await?;
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

/// Reads one repository of a registry through `Upstream` (the token dance, verified
/// manifests, streamed blobs).
struct RegistrySource {
    upstream: Upstream,
    repo: RepoName,
    at: String,
}

impl RegistrySource {
    fn new(
        host: &str,
        repo: RepoName,
        creds: &Option<(String, String)>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let upstream = Upstream::new(UpstreamConfig {
            name: host.to_string(),
            url: base_url(host, insecure)?,
            username: creds.as_ref().map(|c| c.0.clone()),
            password: creds.as_ref().map(|c| c.1.clone()),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            library_prefix: false,
        })?;
        Ok(RegistrySource {
            upstream,
            at: format!("{host}/{repo}"),
            repo,
        })
    }

    fn fail(&self, what: String, e: berth_upstream::UpstreamError) -> TransferError {
        TransferError::Failed {
            at: self.at.clone(),
            what,
            reason: e.to_string(),
            status: None,
        }
    }
}

#[async_trait::async_trait]
impl Source for RegistrySource {
    fn describe(&self) -> String {
        self.at.clone()
    }

    async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError> {
        let what = format!("manifest {reference}");
        let r: Reference = reference
            .parse()
            .map_err(|e| TransferError::Usage(format!("{}: {reference:?}: {e}", self.at)))?;
        let (head, bytes) = self
            .upstream
            .get_manifest(&self.repo, &r, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| self.fail(what, e))?;
        Ok(Manifest {
            bytes,
            media_type: head.media_type,
            digest: head.digest,
        })
    }

    async fn blob(&self, digest: &Digest, _size: u64, offset: u64) -> Result<BlobReader, TransferError> {
        if offset != 0 {
            return Err(TransferError::Usage(format!(
                "{}: resumed blob reads are not supported here",
                self.at
            )));
        }
        let what = format!("blob {digest}");
        let stream = self
            .upstream
            .get_blob(&self.repo, digest)
            .await
            .map_err(|e| self.fail(what.clone(), e))?;
        let at = self.at.clone();
        Ok(Box::pin(stream.body.map(move |r| {
            r.map_err(|e| TransferError::Failed {
                at: at.clone(),
                what: what.clone(),
                reason: e.to_string(),
                status: None,
            })
        })))
    }
}

/// Pushes into one repository of a registry.
struct RegistryDest {
    http: reqwest::Client,
    base: String,
    repo: RepoName,
    at: String,
    creds: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

impl RegistryDest {
    fn new(
        host: &str,
        repo: RepoName,
        creds: &Option<(String, String)>,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RegistryDest {
            http,
            base: base_url(host, insecure)?,
            at: format!("{host}/{repo}"),
            repo,
            creds: creds.clone(),
            token: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> Result<Url, TransferError> {
        Url::parse(&format!("{}{path}", self.base)).map_err(|e| TransferError::Usage(format!("{path}: {e}")))
    }

    fn fail(&self, what: &str, reason: impl std::fmt::Display, status: Option<StatusCode>) -> TransferError {
        TransferError::Failed {
            at: self.at.clone(),
            what: what.to_string(),
            reason: reason.to_string(),
            status: status.map(|s| s.as_u16()),
        }
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (self.token.lock().expect("token lock").clone(), &self.creds) {
            (Some(t), _) => req.bearer_auth(t),
            (None, Some((u, p))) => req.basic_auth(u, Some(p)),
            (None, None) => req,
        }
    }

    /// Sends a request built by `build` (which may be called twice: once more after a
    /// 401 is answered with a token).
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, TransferError> {
        let resp = self
            .authorize(build())
            .send()
            .await
            .map_err(|e| self.fail(what, format!("request failed: {}", chain(&e)), None))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !self.fetch_token(&challenge).await? {
            return Err(self.fail(
                what,
                "401: credentials refused or needed (--creds)",
                Some(resp.status()),
            ));
        }
        self.authorize(build())
            .send()
            .await
            .map_err(|e| self.fail(what, format!("request failed: {}", chain(&e)), None))
    }

    /// Answers a Bearer challenge (with pull and push scope on the repository). False if
    /// there is nothing to answer with.
    async fn fetch_token(&self, challenge: &str) -> Result<bool, TransferError> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Ok(false);
        };
        let mut realm = None;
        let mut service = None;
        for part in params.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                let v = v.trim_matches('"').to_string();
                match k {
                    "realm" => realm = Some(v),
                    "service" => service = Some(v),
                    _ => {}
                }
            }
        }
        let Some(realm) = realm else { return Ok(false) };
        let mut url =
            Url::parse(&realm).map_err(|e| self.fail("token", format!("realm {realm:?}: {e}"), None))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{}:pull,push", self.repo));
        }
        let mut req = self.http.get(url);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.fail("token", format!("request failed: {}", chain(&e)), None))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.fail(
                "token",
                format!("the token server answered {status}"),
                Some(status),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let a: Answer = resp
            .json()
            .await
            .map_err(|e| self.fail("token", format!("answer does not parse: {e}"), None))?;
        let token = a.token.or(a.access_token);
        let got = token.is_some();
        *self.token.lock().expect("token lock") = token;
        Ok(got)
    }

    /// The upload URL a response's `Location` names, made absolute.
    fn location(&self, what: &str, resp: &reqwest::Response) -> Result<Url, TransferError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                self.fail(
                    what,
                    "the registry sent no Location for the upload",
                    Some(resp.status()),
                )
            })?;
        resp.url()
            .join(loc)
            .map_err(|e| self.fail(what, format!("Location {loc:?}: {e}"), None))
    }

    /// Streams a whole blob as a request body with its length; an error of the source is
    /// kept so that it, not the aborted request, is reported.
    fn body(&self, stream: BlobReader, slot: &Arc<Mutex<Option<TransferError>>>) -> reqwest::Body {
        let slot = slot.clone();
        reqwest::Body::wrap_stream(stream.map(move |r| {
            r.map_err(|e| {
                let msg = e.to_string();
                slot.lock().expect("slot lock").get_or_insert(e);
                std::io::Error::other(msg)
            })
        }))
    }

    async fn monolithic(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        what: &str,
    ) -> Result<(), TransferError> {
        let slot = Arc::new(Mutex::new(None));
        let mut url = self.url(&path::uploads(&self.repo))?;
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let stream = source.blob(&desc.digest, desc.size, 0).await?;
        let body = self.body(stream, &slot);
        let sent = self
            .authorize(self.http.post(url))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, desc.size)
            .body(body)
            .send()
            .await;
        if let Some(e) = slot.lock().expect("slot lock").take() {
            return Err(e);
        }
        let resp = sent.map_err(|e| self.fail(what, format!("upload failed: {}", chain(&e)), None))?;
        match resp.status() {
            StatusCode::CREATED => Ok(()),
            // No single-request uploads here: the session is open, send it with PUT.
            StatusCode::ACCEPTED => {
                let mut url = self.location(what, &resp)?;
                url.query_pairs_mut()
                    .append_pair("digest", &desc.digest.to_string());
                let stream = source.blob(&desc.digest, desc.size, 0).await?;
                let body = self.body(stream, &slot);
                let sent = self
                    .authorize(self.http.put(url))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, desc.size)
                    .body(body)
                    .send()
                    .await;
                if let Some(e) = slot.lock().expect("slot lock").take() {
                    return Err(e);
                }
                let resp =
                    sent.map_err(|e| self.fail(what, format!("upload failed: {}", chain(&e)), None))?;
                self.expect(resp, StatusCode::CREATED, what).await.map(drop)
            }
            _ => self.expect(resp, StatusCode::CREATED, what).await.map(drop),
        }
    }

    async fn chunked(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        what: &str,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        let start = self
            .send(what, || {
                self.http
                    .post(self.url(&path::uploads(&self.repo)).expect("valid"))
            })
            .await?;
        let start = self.expect(start, StatusCode::ACCEPTED, what).await?;
        let mut url = self.location(what, &start)?;
        let mut stream = source.blob(&desc.digest, desc.size, 0).await?;
        let mut sent = 0u64;
        let mut buf = BytesMut::new();
        let mut done = false;
        while !done {
            match stream.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk?),
                None => done = true,
            }
            if buf.len() as u64 >= CHUNK || (done && !buf.is_empty()) {
                let chunk: Bytes = buf.split().freeze();
                let end = sent + chunk.len() as u64 - 1;
                let resp = self
                    .authorize(self.http.patch(url.clone()))
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{sent}-{end}"))
                    .header(CONTENT_LENGTH, chunk.len())
                    .body(chunk.clone())
                    .send()
                    .await
                    .map_err(|e| self.fail(what, format!("chunk at {sent} failed: {}", chain(&e)), None))?;
                let resp = self.expect(resp, StatusCode::ACCEPTED, what).await?;
                url = self.location(what, &resp)?;
                sent = end + 1;
                progress(sent);
            }
        }
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let resp = self
            .authorize(self.http.put(url))
            .header(CONTENT_LENGTH, 0)
            .send()
            .await
            .map_err(|e| self.fail(what, format!("closing the upload failed: {}", chain(&e)), None))?;
        self.expect(resp, StatusCode::CREATED, what).await.map(drop)
    }

    /// `resp` if it has `want`, else an error with the status and the registry's message.
    async fn expect(
        &self,
        resp: reqwest::Response,
        want: StatusCode,
        what: &str,
    ) -> Result<reqwest::Response, TransferError> {
        let status = resp.status();
        if status == want {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        Err(self.fail(
            what,
            format!("the registry answered {status}: {}", body.trim()),
            Some(status),
        ))
    }

    async fn exists(&self, what: &str, path: String, accept: Option<&str>) -> Result<bool, TransferError> {
        let resp = self
            .send(what, || {
                let r = self.http.request(Method::HEAD, self.url(&path).expect("valid"));
                match accept {
                    Some(a) => r.header(reqwest::header::ACCEPT, a),
                    None => r,
                }
            })
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.fail(what, format!("HEAD answered {s}"), Some(s))),
        }
    }
}

/// An error with its causes, which is where reqwest says what actually went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait::async_trait]
impl Destination for RegistryDest {
    fn describe(&self) -> String {
        self.at.clone()
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, TransferError> {
        self.exists(&format!("blob {digest}"), path::blob(&self.repo, digest), None)
            .await
    }

    async fn put_blob(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError> {
        let what = format!("blob {}", desc.digest);
        if desc.size <= CHUNK {
            self.monolithic(source, desc, &what).await?;
            progress(desc.size);
            Ok(())
        } else {
            self.chunked(source, desc, &what, progress).await
        }
    }

    async fn has_manifest(&self, digest: &Digest) -> Result<bool, TransferError> {
        self.exists(
            &format!("manifest {digest}"),
            path::manifest(&self.repo, digest),
            Some(&media::MANIFEST_TYPES.join(", ")),
        )
        .await
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<(), TransferError> {
        let reference = tag.map_or_else(|| manifest.digest.to_string(), str::to_string);
        let what = format!("manifest {}:{reference}", self.repo);
        let resp = self
            .send(&what, || {
                self.http
                    .put(self.url(&path::manifest(&self.repo, &reference)).expect("valid"))
                    .header(CONTENT_TYPE, &manifest.media_type)
                    .body(manifest.bytes.clone())
            })
            .await?;
        let resp = self.expect(resp, StatusCode::CREATED, &what).await?;
        if let Some(said) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && said != manifest.digest.to_string()
        {
            return Err(self.fail(&what, format!("stored as {said}, not {}", manifest.digest), None));
        }
        Ok(())
    }
}
