//! `berth copy` and `berth mirror`: flags, opening each side, signals, exit statuses.
//!
//! Exit status: 0 everything copied (and, for mirror, verified); 1 something was left
//! uncopied or failed verification (the message names the blob or manifest, the HTTP
//! status and the registry); 2 usage errors; 130 interrupted (SIGINT/SIGTERM: requests
//! in flight are dropped, partly sent uploads are remembered for the next run).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use berth_oci::{Pattern, Reference, RepoName};
use berth_transfer::archive::{Compression, OciArchive};
use berth_transfer::docker_archive::DockerArchive;
use berth_transfer::layout::{LayoutImage, OciDir};
use berth_transfer::progress::{self, Event, Observer};
use berth_transfer::reference::{ImageRef, RegistryRef, parse_host};
use berth_transfer::registry::{DEFAULT_CHUNK_SIZE, RegistryDest, RegistrySource};
use berth_transfer::{CopyOptions, Destination, Platform, Source, TransferError, creds, mirror};
use berth_upstream::{Upstream, UpstreamConfig};

const USAGE: u8 = 2;
const INTERRUPTED: u8 = 130;

/// Flags `copy` and `mirror` share.
#[derive(clap::Args)]
pub struct Common {
    /// Also copy referrers (signatures, SBOMs, ...) of every copied manifest.
    #[arg(long)]
    referrers: bool,
    /// Blobs (for mirror: also tags) transferred at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,
    /// USER:PASSWORD for the source registry (else BERTH_SRC_CREDS, else the auth files).
    #[arg(long, value_name = "USER:PASS")]
    src_creds: Option<String>,
    /// USER:PASSWORD for the destination registry (else BERTH_DEST_CREDS, else the auth files).
    #[arg(long, value_name = "USER:PASS")]
    dest_creds: Option<String>,
    /// Plain HTTP for every registry, not only localhost and loopback addresses.
    #[arg(long)]
    insecure: bool,
    /// Blobs larger than this go in chunks of this size (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// No progress output.
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// One JSON object per event per line on stdout.
    #[arg(long)]
    json: bool,
}

/// `berth copy` flags.
#[derive(clap::Args)]
pub struct CopyArgs {
    /// `host[:port]/repo[:tag|@sha256:...]` (a `docker://` prefix is accepted).
    #[arg(value_name = "SRC")]
    src: String,
    /// `host[:port]/repo[:tag]`; without a tag, the source's tag (or by digest only).
    #[arg(value_name = "DST")]
    dst: String,
    /// Only these platforms of an index (`os/arch[/variant]`, repeatable or comma-separated).
    #[arg(long, value_name = "OS/ARCH", value_delimiter = ',')]
    platform: Vec<Platform>,
    #[command(flatten)]
    common: Common,
}

/// `berth mirror` flags.
#[derive(clap::Args)]
pub struct MirrorArgs {
    /// `host[:port][/prefix]`: every repository under the prefix (all without one).
    #[arg(value_name = "SRC_PREFIX")]
    src_prefix: String,
    /// `host[:port][/prefix]`: where they go, the part under the source prefix kept.
    #[arg(value_name = "DST_PREFIX")]
    dst_prefix: String,
    /// Only tags matching this glob (or /regex/).
    #[arg(long, value_name = "PATTERN")]
    tags: Option<String>,
    /// List each repo:tag that would be copied with the bytes it lacks, and a total; copy nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: Common,
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn init_logs() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Where partly sent uploads are remembered: `$XDG_CACHE_HOME/berth/uploads`.
fn state_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("berth").join("uploads"))
}

pub(crate) fn client(
    host: &str,
    loopback: bool,
    insecure: bool,
    creds: Option<(String, String)>,
) -> Result<Upstream, TransferError> {
    let scheme = if loopback || insecure { "http" } else { "https" };
    let (username, password) = creds.unzip();
    Upstream::new(UpstreamConfig {
        name: host.to_string(),
        url: format!("{scheme}://{host}"),
        username,
        password,
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(120),
        library_prefix: false,
    })
    .map_err(|e| TransferError::Usage(e.to_string()))
}

fn side_creds(host: &str, flag: Option<&str>, env: &str) -> Result<Option<(String, String)>, TransferError> {
    creds::resolve(host, flag, env).map_err(TransferError::Usage)
}

/// The reference to read from a layout or archive: the tag asked for, or, when none was
/// given, its only image's name (or digest).
fn only_image(r: &ImageRef, tag: Option<&String>, images: Vec<LayoutImage>) -> Result<String, TransferError> {
    if let Some(t) = tag {
        return Ok(t.clone());
    }
    match images.as_slice() {
        [one] => Ok(one
            .ref_name
            .clone()
            .unwrap_or_else(|| one.descriptor.digest.to_string())),
        [] => Err(TransferError::Usage(format!("{r}: holds no image"))),
        many => Err(TransferError::Usage(format!(
            "{r}: holds {} images; name one with :TAG ({})",
            many.len(),
            many.iter()
                .filter_map(|i| i.ref_name.as_deref())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The source a reference names. Layouts and archives are wired here.
fn open_source(r: &ImageRef, c: &Common) -> Result<(Box<dyn Source>, String), TransferError> {
    match r {
        ImageRef::Registry(reg) => {
            let creds = side_creds(&reg.host, c.src_creds.as_deref(), "BERTH_SRC_CREDS")?;
            let up = client(&reg.host, reg.loopback, c.insecure, creds)?;
            Ok((
                Box::new(RegistrySource::new(up, reg.repo.clone())),
                reg.reference(),
            ))
        }
        ImageRef::OciDir { path, tag } => {
            let dir = OciDir::open(path)?;
            let reference = only_image(r, tag.as_ref(), dir.images()?)?;
            Ok((Box::new(dir), reference))
        }
        ImageRef::OciArchive { path, tag } => {
            let archive = OciArchive::open(path)?;
            let reference = only_image(r, tag.as_ref(), archive.images())?;
            Ok((Box::new(archive), reference))
        }
        ImageRef::DockerArchive { path, reference } => {
            let archive = DockerArchive::open(path)?;
            let reference = reference.clone().unwrap_or_else(|| "0".into());
            Ok((Box::new(archive), reference))
        }
    }
}

/// The tag a copy into a layout or archive gets: the one named, else the source's tag.
fn file_tag(tag: &Option<String>, src: &ImageRef) -> Option<String> {
    tag.clone().or_else(|| match src {
        ImageRef::Registry(RegistryRef { tag: Some(t), .. }) => Some(t.to_string()),
        ImageRef::OciDir { tag, .. } | ImageRef::OciArchive { tag, .. } => tag.clone(),
        _ => Some("latest".into()),
    })
}

/// The destination a reference names, and the tag to give the copy. Layouts and
/// archives are wired here.
fn open_destination(
    r: &ImageRef,
    src: &ImageRef,
    c: &Common,
) -> Result<(Box<dyn Destination>, Option<String>), TransferError> {
    match r {
        ImageRef::Registry(reg) => {
            if reg.digest.is_some() {
                return Err(TransferError::Usage(format!(
                    "{r}: a destination names a tag (or nothing), not a digest"
                )));
            }
            let creds = side_creds(&reg.host, c.dest_creds.as_deref(), "BERTH_DEST_CREDS")?;
            let up = client(&reg.host, reg.loopback, c.insecure, creds)?.pushing();
            let mount_from = match src {
                ImageRef::Registry(s) if s.host == reg.host && s.repo != reg.repo => Some(s.repo.clone()),
                _ => None,
            };
            let tag = reg.tag.as_ref().map(ToString::to_string).or_else(|| match src {
                ImageRef::Registry(RegistryRef {
                    tag: Some(t),
                    digest: None,
                    ..
                }) => Some(t.to_string()),
                ImageRef::Registry(RegistryRef {
                    tag: None,
                    digest: None,
                    ..
                }) => Some("latest".into()),
                _ => None,
            });
            let dest = RegistryDest::new(up, reg.repo.clone(), mount_from, c.chunk_size, state_dir());
            Ok((Box::new(dest), tag))
        }
        ImageRef::OciDir { path, tag } => Ok((Box::new(OciDir::create(path)?), file_tag(tag, src))),
        ImageRef::OciArchive { path, tag } => Ok((
            Box::new(OciArchive::create(path, Compression::None)?),
            file_tag(tag, src),
        )),
        ImageRef::DockerArchive { .. } => Err(TransferError::Usage(format!(
            "{r}: berth reads docker-archive files but does not write them; write oci-archive:FILE:TAG \
             (`podman load` and `skopeo` read it)"
        ))),
    }
}

fn exit_for(e: &TransferError) -> ExitCode {
    match e {
        TransferError::Usage(_) => ExitCode::from(USAGE),
        TransferError::Interrupted => ExitCode::from(INTERRUPTED),
        TransferError::Failed { .. } => ExitCode::FAILURE,
    }
}

/// The observer first (JSON lines get an `error` event; bars are cleared), then stderr.
fn report_error(cmd: &str, e: &TransferError, observer: &dyn Observer) {
    observer.event(&Event::Error {
        message: e.to_string(),
    });
    eprintln!("berth {cmd}: {e}");
}

/// Runs `berth copy`.
pub fn copy(args: CopyArgs) -> ExitCode {
    init_logs();
    let c = &args.common;
    let observer = progress::observer(c.quiet, c.json);
    let sides = args
        .src
        .parse::<ImageRef>()
        .and_then(|s| args.dst.parse::<ImageRef>().map(|d| (s, d)));
    let (src_ref, dst_ref) = match sides {
        Ok(s) => s,
        Err(e) => {
            report_error("copy", &TransferError::Usage(e), observer.as_ref());
            return ExitCode::from(USAGE);
        }
    };
    let opened =
        open_source(&src_ref, c).and_then(|s| open_destination(&dst_ref, &src_ref, c).map(|d| (s, d)));
    let ((source, reference), (dest, tag)) = match opened {
        Ok(o) => o,
        Err(e) => {
            report_error("copy", &e, observer.as_ref());
            return exit_for(&e);
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth copy: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = CopyOptions {
        concurrency: c.concurrency as usize,
        platforms: args.platform.clone(),
        referrers: c.referrers,
        observer: observer.as_ref(),
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = berth_transfer::copy(source.as_ref(), &reference, dest.as_ref(), tag.as_deref(), &opts) => r,
            _ = interrupted() => Err(TransferError::Interrupted),
        }
    });
    // Dropping the runtime drops whatever was still in flight.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(r) => {
            if !c.quiet && !c.json {
                println!(
                    "copied {} -> {}{} ({}): {} manifests, {} blobs copied ({}), {} already there",
                    src_ref,
                    dest.describe(),
                    tag.map(|t| format!(":{t}")).unwrap_or_default(),
                    r.digest.map(|d| d.to_string()).unwrap_or_default(),
                    r.manifests,
                    r.blobs_copied,
                    progress::human_bytes(r.bytes_sent),
                    r.blobs_skipped
                );
            }
            ExitCode::SUCCESS
        }
        Err(TransferError::Interrupted) => {
            observer.event(&Event::Error {
                message: "interrupted".into(),
            });
            eprintln!("berth copy: interrupted; run the same command again to resume");
            ExitCode::from(INTERRUPTED)
        }
        Err(e) => {
            report_error("copy", &e, observer.as_ref());
            exit_for(&e)
        }
    }
}

/// `host[:port][/prefix]`.
fn parse_prefix(s: &str) -> Result<(String, bool, String), String> {
    let s = s.strip_prefix("docker://").unwrap_or(s).trim_end_matches('/');
    let (host, prefix) = s.split_once('/').unwrap_or((s, ""));
    let (host, loopback) = parse_host(host).map_err(|e| format!("{s:?}: {e}"))?;
    if !prefix.is_empty() {
        prefix
            .parse::<RepoName>()
            .map_err(|e| format!("{s:?}: prefix {prefix:?}: {e}"))?;
    }
    Ok((host, loopback, prefix.to_string()))
}

/// Runs `berth mirror`.
pub fn mirror(args: MirrorArgs) -> ExitCode {
    init_logs();
    let c = &args.common;
    let observer = progress::observer(c.quiet, c.json);
    let usage = |e: String| {
        eprintln!("berth mirror: {e}");
        ExitCode::from(USAGE)
    };
    let (src_host, src_loop, src_prefix) = match parse_prefix(&args.src_prefix) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let (dst_host, dst_loop, dst_prefix) = match parse_prefix(&args.dst_prefix) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let pattern = match args.tags.as_deref().map(Pattern::parse).transpose() {
        Ok(p) => p,
        Err(e) => return usage(format!("--tags: {e}")),
    };
    let clients = side_creds(&src_host, c.src_creds.as_deref(), "BERTH_SRC_CREDS")
        .and_then(|sc| client(&src_host, src_loop, c.insecure, sc))
        .and_then(|s| {
            side_creds(&dst_host, c.dest_creds.as_deref(), "BERTH_DEST_CREDS")
                .and_then(|dc| client(&dst_host, dst_loop, c.insecure, dc))
                .map(|d| (s, d))
        });
    let (src, dst) = match clients {
        Ok(x) => x,
        Err(e) => return usage(e.to_string()),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth mirror: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let concurrency = c.concurrency as usize;
    let work = async {
        let plan = mirror::plan(
            &src,
            &src_prefix,
            &dst,
            &dst_prefix,
            pattern.as_ref(),
            concurrency,
        )
        .await?;
        if args.dry_run {
            return Ok((plan, None));
        }
        let opts = mirror::RunOptions {
            concurrency,
            referrers: c.referrers,
            chunk_size: c.chunk_size,
            state_dir: state_dir(),
            same_registry: src_host == dst_host,
            observer: observer.as_ref(),
        };
        let results = mirror::run(&plan, &src, &dst, &opts).await;
        // Verify every tag at the destination the way a client pulls it.
        let mut verified = Vec::new();
        for (item, result) in results {
            let outcome = match result {
                Some(Err(e)) => Err(e.to_string()),
                copied => {
                    let tag = Reference::Tag(item.tag.parse().expect("listed tags are valid"));
                    let walk = crate::probe::walk(&dst, &item.dst_repo, &tag, false).await;
                    if walk.problems.is_empty() {
                        Ok(copied.and_then(Result::ok))
                    } else {
                        Err(format!("verification failed: {}", walk.problems.join("; ")))
                    }
                }
            };
            verified.push((item, outcome));
        }
        Ok::<_, TransferError>((plan, Some(verified)))
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = work => r,
            _ = interrupted() => Err(TransferError::Interrupted),
        }
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    let (plan, verified) = match result {
        Ok(x) => x,
        Err(TransferError::Interrupted) => {
            eprintln!("berth mirror: interrupted; run the same command again to resume");
            return ExitCode::from(INTERRUPTED);
        }
        Err(e) => {
            report_error("mirror", &e, observer.as_ref());
            return exit_for(&e);
        }
    };
    let name = |item: &mirror::Item| {
        (
            format!("{src_host}/{}:{}", item.src_repo, item.tag),
            format!("{dst_host}/{}:{}", item.dst_repo, item.tag),
        )
    };
    let Some(verified) = verified else {
        // --dry-run
        let mut n = 0;
        for item in &plan.items {
            let (from, to) = name(item);
            if item.identical {
                if c.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "would_skip", "source": from, "destination": to, "digest": item.digest.to_string()})
                    );
                } else {
                    println!("skip {from} -> {to} (already identical)");
                }
            } else {
                n += 1;
                if c.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "would_copy", "source": from, "destination": to, "digest": item.digest.to_string(), "bytes": item.bytes})
                    );
                } else {
                    println!("would copy {from} -> {to} ({} bytes)", item.bytes);
                }
            }
        }
        let skipped = plan.items.len() - n;
        if c.json {
            println!(
                "{}",
                serde_json::json!({"event": "plan", "copy": n, "skip": skipped, "bytes": plan.total_bytes})
            );
        } else {
            println!(
                "total: {n} tags to copy, {} bytes ({}), {skipped} already identical",
                plan.total_bytes,
                progress::human_bytes(plan.total_bytes)
            );
        }
        return ExitCode::SUCCESS;
    };
    let (mut copied, mut skipped, mut failed, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for (item, outcome) in &verified {
        let (from, to) = name(item);
        let (result, detail) = match outcome {
            Ok(Some(r)) => {
                copied += 1;
                bytes += r.bytes_sent;
                ("copied", format!("{} ({} bytes sent)", item.digest, r.bytes_sent))
            }
            Ok(None) => {
                skipped += 1;
                ("skipped", format!("{} (already identical)", item.digest))
            }
            Err(e) => {
                failed += 1;
                ("failed", e.clone())
            }
        };
        if c.json {
            println!(
                "{}",
                serde_json::json!({"event": "tag", "result": result, "source": from, "destination": to, "detail": detail})
            );
        } else {
            println!("{result} {from} -> {to}: {detail}");
        }
    }
    if c.json {
        println!(
            "{}",
            serde_json::json!({"event": "mirror_finished", "copied": copied, "skipped": skipped, "failed": failed, "bytes_sent": bytes})
        );
    } else {
        println!(
            "mirror: {copied} copied, {skipped} skipped, {failed} failed, {} sent; every copied and skipped tag verified at {dst_host}",
            progress::human_bytes(bytes)
        );
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
