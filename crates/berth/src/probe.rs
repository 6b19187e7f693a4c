//! `berth probe`: pulls references the way a client does, against berth or any other
//! registry, and says what is broken and where.
//!
//! For each reference: GET its manifest (accepting every manifest type, so nothing is
//! converted); for an index or list, GET every child by digest (the client checks each
//! hashes to its digest), nested indexes included; for each image manifest, HEAD its config
//! and every required layer (non-distributable layers are skipped) and compare the size to
//! the descriptor's. With `--verify` every blob is also fetched and hashed while it
//! streams (never held in memory). Every problem is collected with the path to it
//! (`child digest (platform) -> layer digest: what`), not just the first.
//!
//! Once (no `--interval`): one line per reference on stdout, exit status 0 if all are
//! healthy, 1 if any is not, 2 on usage errors. Periodic (`--interval D`): every D, forever,
//! results logged to stderr and Prometheus metrics served on `--listen` at `/metrics`,
//! until SIGINT or SIGTERM.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_oci::manifest::{self, RefKind};
use berth_oci::{Descriptor, Digest, DigestHasher, Reference, RepoName, Tag, media};
use berth_upstream::{Upstream, UpstreamConfig, UpstreamError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use tracing_subscriber::EnvFilter;

/// `berth probe` flags.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("password").args(["password_env", "password_file"])))]
pub struct ProbeArgs {
    /// What to pull: `host[:port]/repo:tag` or `host[:port]/repo@sha256:...` (no tag:
    /// `latest`). Plain HTTP for localhost, 127.0.0.1 and [::1], HTTPS otherwise.
    #[arg(required = true, value_name = "REF", value_parser = parse_target)]
    refs: Vec<Target>,
    /// Also GET every blob, checking its size and digest as it streams.
    #[arg(long)]
    verify: bool,
    /// Probe every D (e.g. `1m`) until stopped, serving metrics, instead of once.
    #[arg(long, value_name = "D", value_parser = parse_interval)]
    interval: Option<Duration>,
    /// With --interval: where to serve /metrics [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR", requires = "interval")]
    listen: Option<SocketAddr>,
    /// User name for registries that ask for credentials (Basic, or for their token server).
    #[arg(long, value_name = "U", requires = "password")]
    username: Option<String>,
    /// The environment variable that holds the password for --username.
    #[arg(long, value_name = "VAR", requires = "username")]
    password_env: Option<String>,
    /// A file that holds the password for --username (a trailing newline is ignored).
    #[arg(long, value_name = "FILE", requires = "username")]
    password_file: Option<PathBuf>,
    /// Plain HTTP for every registry, not only loopback ones.
    #[arg(long)]
    insecure: bool,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// What berth itself accepts by default (`limits.max_manifest_bytes`).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Indexes may hold indexes; deeper than this is reported, not followed.
const MAX_DEPTH: usize = 4;
/// Blobs of one reference checked at once.
const PARALLEL_BLOBS: usize = 4;
const USAGE: u8 = 2;

/// One reference to probe, as parsed from the command line.
#[derive(Clone, Debug)]
pub struct Target {
    /// As given; the `reference` label of the metrics.
    text: String,
    /// `host[:port]` as given.
    host: String,
    /// localhost or a loopback address: plain HTTP.
    loopback: bool,
    repo: RepoName,
    reference: Reference,
}

fn parse_target(s: &str) -> Result<Target, String> {
    const FORM: &str = "expected host[:port]/repo:tag or host[:port]/repo@sha256:...";
    let (host, rest) = s.split_once('/').ok_or_else(|| format!("{s:?}: {FORM}"))?;
    // Only the form of the host is checked: the first component is always the host here.
    let loopback = berth_transfer::reference::check_host_port(host).map_err(|e| format!("{s:?}: {e}"))?;
    let (name, reference) = match rest.split_once('@') {
        // `repo:tag@digest` pulls the digest, as docker does.
        Some((name, digest)) => {
            let name = name.split_once(':').map_or(name, |(n, _)| n);
            let digest: Digest = digest.parse().map_err(|e| format!("{s:?}: {e}"))?;
            (name, Reference::Digest(digest))
        }
        None => {
            let (name, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
            let tag: Tag = tag.parse().map_err(|e| format!("{s:?}: {e}"))?;
            (name, Reference::Tag(tag))
        }
    };
    let repo: RepoName = name.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Target {
        text: s.to_string(),
        host: host.to_string(),
        loopback,
        repo,
        reference,
    })
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("the interval must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?} is not a duration like 30s or 5m: {e}")),
    }
}

/// Runs `berth probe`; the exit status is the result (see the module docs).
pub fn run(args: ProbeArgs) -> ExitCode {
    let default_log = if args.interval.is_some() { "info" } else { "warn" };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let probes = match setup(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth probe: {e:#}");
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth probe: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verify = args.verify;
    match args.interval {
        None => runtime.block_on(once(&probes, verify)),
        Some(interval) => {
            let listen = args
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
            match runtime.block_on(periodic(probes, verify, interval, listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth probe: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The targets (duplicates dropped), each with the client of its registry; one client per
/// registry, so tokens are shared.
fn setup(args: &ProbeArgs) -> anyhow::Result<Vec<(Target, Upstream)>> {
    let password = match (&args.password_env, &args.password_file) {
        (Some(var), _) => Some(
            std::env::var(var)
                .with_context(|| format!("--password-env {var}: the variable is not set (or not UTF-8)"))?,
        ),
        (None, Some(file)) => {
            let p = std::fs::read_to_string(file)
                .with_context(|| format!("--password-file {}", file.display()))?;
            Some(
                p.strip_suffix('\n')
                    .map(|p| p.strip_suffix('\r').unwrap_or(p))
                    .unwrap_or(&p)
                    .to_string(),
            )
        }
        (None, None) => None,
    };
    let mut clients: HashMap<String, Upstream> = HashMap::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for t in &args.refs {
        if !seen.insert(t.text.clone()) {
            continue;
        }
        let scheme = if t.loopback || args.insecure {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{}", t.host);
        let client = match clients.get(&url) {
            Some(c) => c.clone(),
            None => {
                let c = Upstream::new(UpstreamConfig {
                    name: t.host.clone(),
                    url: url.clone(),
                    username: args.username.clone(),
                    password: password.clone(),
                    connect_timeout: Duration::from_secs(10),
                    read_timeout: Duration::from_secs(30),
                    request_timeout: Duration::from_secs(60),
                    library_prefix: false,
                })
                .with_context(|| format!("registry {url}"))?;
                clients.insert(url, c.clone());
                c
            }
        };
        out.push((t.clone(), client));
    }
    Ok(out)
}

/// What one probe of one reference found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub manifests: u64,
    pub blobs: u64,
    /// Manifests and blobs: what a full pull transfers.
    pub bytes: u64,
    pub problems: Vec<String>,
}

impl Outcome {
    fn line(&self, reference: &str) -> String {
        if self.problems.is_empty() {
            format!(
                "ok {reference} ({} manifests, {} blobs, {} bytes)",
                self.manifests, self.blobs, self.bytes
            )
        } else {
            format!("FAIL {reference}: {}", self.problems.join("; "))
        }
    }
}

/// A manifest still to fetch: the path to it (empty for the reference itself).
struct Pending {
    path: Vec<String>,
    reference: Reference,
    /// The size its index's descriptor gives.
    size: Option<u64>,
    depth: usize,
}

/// A blob to check: the path to it, ending in `config|layer <digest>`.
struct BlobCheck {
    path: String,
    digest: Digest,
    size: u64,
}

fn path_label(path: &[String]) -> String {
    if path.is_empty() {
        "manifest".into()
    } else {
        path.join(" -> ")
    }
}

/// An upstream error, with "missing" for a 404.
fn describe(e: &UpstreamError, what: &str) -> String {
    if e.is_not_found() {
        format!("{what} missing ({e})")
    } else {
        e.to_string()
    }
}

/// The `os/architecture[/variant]` of each child an index names, for the paths.
fn platforms(index: &[u8]) -> HashMap<Digest, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let Ok(index) = serde_json::from_slice::<Index>(index) else {
        return HashMap::new();
    };
    index
        .manifests
        .into_iter()
        .filter_map(|d| {
            let p = d.platform?;
            let mut s = format!("{}/{}", p["os"].as_str()?, p["architecture"].as_str()?);
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            Some((d.digest, s))
        })
        .collect()
}

/// Pulls `t` the way a client does and collects every problem on the way.
async fn probe(up: &Upstream, t: &Target, verify: bool) -> Outcome {
    walk(up, &t.repo, &t.reference, verify).await
}

/// Pulls `repo:reference` the way a client does and collects every problem on the way
/// (also what `berth mirror` verifies each tag with).
pub(crate) async fn walk(up: &Upstream, repo: &RepoName, reference: &Reference, verify: bool) -> Outcome {
    let mut out = Outcome::default();
    let mut queue = VecDeque::from([Pending {
        path: Vec::new(),
        reference: reference.clone(),
        size: None,
        depth: 0,
    }]);
    let mut seen_manifests = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut blobs = Vec::new();
    while let Some(p) = queue.pop_front() {
        let label = path_label(&p.path);
        let what = if p.path.is_empty() {
            "manifest"
        } else {
            "child manifest"
        };
        let (head, bytes) = match up.get_manifest(repo, &p.reference, MAX_MANIFEST_BYTES).await {
            Ok(got) => got,
            Err(e) => {
                out.problems.push(format!("{label}: {}", describe(&e, what)));
                continue;
            }
        };
        out.manifests += 1;
        out.bytes += head.size;
        if let Some(size) = p.size
            && size != head.size
        {
            out.problems.push(format!(
                "{label}: size mismatch: the index says {size} bytes, the registry served {}",
                head.size
            ));
        }
        let parsed = match manifest::parse(&bytes, Some(&head.media_type)) {
            Ok(m) => m,
            Err(e) => {
                out.problems.push(format!("{label}: unreadable manifest: {e}"));
                continue;
            }
        };
        if media::is_index(&parsed.media_type) {
            let platforms = platforms(&bytes);
            for r in parsed.refs.iter().filter(|r| r.kind == RefKind::Manifest) {
                if !seen_manifests.insert(r.digest.clone()) {
                    continue;
                }
                let mut path = p.path.clone();
                path.push(match platforms.get(&r.digest) {
                    Some(platform) => format!("{} ({platform})", r.digest),
                    None => r.digest.to_string(),
                });
                if p.depth + 1 > MAX_DEPTH {
                    out.problems.push(format!(
                        "{}: indexes nested deeper than {MAX_DEPTH}; not followed",
                        path_label(&path)
                    ));
                    continue;
                }
                queue.push_back(Pending {
                    path,
                    reference: Reference::Digest(r.digest.clone()),
                    size: Some(r.size),
                    depth: p.depth + 1,
                });
            }
        } else {
            for r in parsed
                .refs
                .iter()
                .filter(|r| r.required && r.kind != RefKind::Manifest)
            {
                if !seen_blobs.insert(r.digest.clone()) {
                    continue;
                }
                let mut path = p.path.clone();
                path.push(format!("{} {}", r.kind.as_str(), r.digest));
                blobs.push(BlobCheck {
                    path: path.join(" -> "),
                    digest: r.digest.clone(),
                    size: r.size,
                });
            }
        }
    }

    // Blobs a few at a time; results kept in walk order.
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_BLOBS));
    let mut tasks = tokio::task::JoinSet::new();
    let n = blobs.len();
    for (i, b) in blobs.into_iter().enumerate() {
        let (up, repo, limit) = (up.clone(), repo.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = check_blob(&up, &repo, &b.digest, b.size, verify).await;
            (i, b.path, result)
        });
    }
    let mut results: Vec<Option<(String, Result<u64, String>)>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, path, result)) => results[i] = Some((path, result)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => out.problems.push(format!("a blob check did not finish: {e}")),
        }
    }
    for (path, result) in results.into_iter().flatten() {
        match result {
            Ok(size) => {
                out.blobs += 1;
                out.bytes += size;
            }
            Err(problem) => out.problems.push(format!("{path}: {problem}")),
        }
    }
    out
}

/// HEAD a blob and compare its size; with `verify`, GET it too and hash it as it streams.
/// The size on success.
async fn check_blob(
    up: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
    verify: bool,
) -> Result<u64, String> {
    let sizes = |n: u64| format!("size mismatch: the manifest says {size} bytes, the registry has {n}");
    match up.head_blob(repo, digest).await {
        Ok(n) if n != size => return Err(sizes(n)),
        Ok(_) => {}
        Err(e) => return Err(format!("HEAD: {}", describe(&e, "blob"))),
    }
    if !verify {
        return Ok(size);
    }
    let mut blob = up
        .get_blob(repo, digest)
        .await
        .map_err(|e| format!("GET: {}", describe(&e, "blob")))?;
    if let Some(n) = blob.size
        && n != size
    {
        return Err(sizes(n));
    }
    let mut hasher = DigestHasher::new(digest.algorithm());
    let mut got = 0u64;
    while let Some(chunk) = blob.next_chunk().await {
        let chunk = chunk.map_err(|e| format!("GET: after {got} bytes: {e}"))?;
        got += chunk.len() as u64;
        if got > size {
            return Err(format!(
                "size mismatch: the manifest says {size} bytes, the registry sent more"
            ));
        }
        hasher.update(&chunk);
    }
    if got != size {
        return Err(format!(
            "size mismatch: the manifest says {size} bytes, the registry sent {got}"
        ));
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(format!("digest mismatch: the bytes hash to {actual}"));
    }
    Ok(size)
}

/// One pass over every target, a line each on stdout; 0 if all are healthy, else 1.
async fn once(probes: &[(Target, Upstream)], verify: bool) -> ExitCode {
    let mut failed = false;
    for (t, up) in probes {
        let out = probe(up, t, verify).await;
        failed |= !out.problems.is_empty();
        println!("{}", out.line(&t.text));
        std::io::stdout().flush().ok();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefLabels {
    reference: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    reference: String,
    result: &'static str,
}

/// What `/metrics` shows in periodic mode.
#[derive(Default)]
struct ProbeMetrics {
    runs: Family<RunLabels, Counter>,
    problems: Family<RefLabels, Gauge>,
    last_success: Family<RefLabels, Gauge<f64, AtomicU64>>,
    duration: Family<RefLabels, Gauge<f64, AtomicU64>>,
}

impl ProbeMetrics {
    fn register(&self, prom: &mut PromRegistry) {
        prom.register(
            "berth_probe_runs",
            "Probes of a reference, by result (ok: nothing wrong; fail: at least one problem)",
            self.runs.clone(),
        );
        prom.register(
            "berth_probe_problems",
            "Problems the last probe of a reference found",
            self.problems.clone(),
        );
        prom.register(
            "berth_probe_last_success_timestamp_seconds",
            "When a probe of a reference last found nothing wrong (Unix time)",
            self.last_success.clone(),
        );
        prom.register(
            "berth_probe_duration_seconds",
            "How long the last probe of a reference took",
            self.duration.clone(),
        );
    }

    fn record(&self, reference: &str, out: &Outcome, took: Duration) {
        let labels = RefLabels {
            reference: reference.to_string(),
        };
        let ok = out.problems.is_empty();
        self.runs
            .get_or_create(&RunLabels {
                reference: reference.to_string(),
                result: if ok { "ok" } else { "fail" },
            })
            .inc();
        self.problems
            .get_or_create(&labels)
            .set(out.problems.len() as i64);
        self.duration.get_or_create(&labels).set(took.as_secs_f64());
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_success.get_or_create(&labels).set(now);
        }
    }
}

/// Every `interval`, every target, until SIGINT/SIGTERM; metrics on `listen`.
async fn periodic(
    probes: Vec<(Target, Upstream)>,
    verify: bool,
    interval: Duration,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let metrics = ProbeMetrics::default();
    let mut prom = PromRegistry::default();
    metrics.register(&mut prom);
    // Both results from the start, so rates and increases work from the first failure.
    for (t, _) in &probes {
        for result in ["ok", "fail"] {
            drop(metrics.runs.get_or_create(&RunLabels {
                reference: t.text.clone(),
                result,
            }));
        }
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(serve_metrics))
        .with_state(Arc::new(prom));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    tracing::info!(%addr, ?interval, references = probes.len(), verify, "probing");
    // The line tests and scripts wait for.
    println!("berth probe: metrics on http://{addr}/metrics");
    std::io::stdout().flush().ok();

    let probing = async {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (t, up) in &probes {
                let started = Instant::now();
                let out = probe(up, t, verify).await;
                let took = started.elapsed();
                metrics.record(&t.text, &out, took);
                if out.problems.is_empty() {
                    tracing::info!(
                        reference = %t.text,
                        manifests = out.manifests,
                        blobs = out.blobs,
                        bytes = out.bytes,
                        seconds = took.as_secs_f64(),
                        "ok"
                    );
                } else {
                    tracing::warn!(
                        reference = %t.text,
                        problems = out.problems.len(),
                        seconds = took.as_secs_f64(),
                        details = %out.problems.join("; "),
                        "FAIL"
                    );
                }
            }
        }
    };
    let signal = tokio::select! {
        s = shutdown_signal() => s,
        () = probing => unreachable!("the probe loop never ends"),
    };
    tracing::info!(signal, "stopping");
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("the metrics server did not stop within 5 s; exiting anyway");
    }
    Ok(())
}

async fn serve_metrics(State(prom): State<Arc<PromRegistry>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &prom) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics encoding failed: {e}\n"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A `[probe]` reference on this server: `repo:tag` or `repo@sha256:...`.
pub fn parse_local(reference: &str) -> Result<(RepoName, Reference), String> {
    let t = parse_target(&format!("localhost/{reference}"))
        .map_err(|e| e.replace("localhost/", "").replace("host[:port]/", ""))?;
    Ok((t.repo, t.reference))
}

/// The server's own prober (`[probe]`): every `interval`, each reference is pulled through
/// berth's own HTTP API at `base` the way a client pulls it (the same walk as
/// `berth probe`), and the result is logged and kept for the web UI's health page.
pub async fn serve_probes(
    registry: std::sync::Arc<berth_registry::Registry>,
    base: String,
    cfg: crate::config::Probe,
) {
    let refs: Vec<(String, RepoName, Reference)> = cfg
        .references
        .iter()
        .filter_map(|r| parse_local(r).ok().map(|(n, rf)| (r.clone(), n, rf)))
        .collect();
    let password = match cfg.password() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "probe: no password; the server's probes do not run");
            return;
        }
    };
    let up = match Upstream::new(UpstreamConfig {
        name: "berth probe".into(),
        url: base.clone(),
        username: (!cfg.username.is_empty()).then(|| cfg.username.clone()),
        password,
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(60),
        library_prefix: false,
    }) {
        Ok(up) => up,
        Err(e) => {
            tracing::error!(error = %e, %base, "probe: cannot reach the server's own API; the probes do not run");
            return;
        }
    };
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (text, repo, reference) in &refs {
            let start = std::time::Instant::now();
            let out = walk(&up, repo, reference, cfg.verify).await;
            let summary = if out.problems.is_empty() {
                tracing::info!(reference = %text, manifests = out.manifests, blobs = out.blobs, "probe ok");
                format!(
                    "ok ({} manifests, {} blobs, {} bytes)",
                    out.manifests, out.blobs, out.bytes
                )
            } else {
                tracing::warn!(reference = %text, problems = %out.problems.join("; "), "probe failed");
                format!("failed ({} problems)", out.problems.len())
            };
            registry.note_probe(berth_registry::ProbeResult {
                at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                reference: text.clone(),
                repo: repo.to_string(),
                took: start.elapsed(),
                summary,
                problems: out.problems,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references() {
        let t = parse_target("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(t.host, "127.0.0.1:5000");
        assert!(t.loopback);
        assert_eq!(t.repo.as_str(), "team/app");
        assert_eq!(t.reference.to_string(), "v1");

        let t = parse_target(&format!("registry.example/app@{D}")).unwrap();
        assert!(!t.loopback);
        assert_eq!(t.reference, Reference::Digest(D.parse().unwrap()));
        let t = parse_target(&format!("registry.example:443/app:v2@{D}")).unwrap();
        assert_eq!(t.repo.as_str(), "app");
        assert_eq!(t.reference, Reference::Digest(D.parse().unwrap()));

        let t = parse_target("[::1]:5000/app").unwrap();
        assert!(t.loopback);
        assert_eq!(t.host, "[::1]:5000");
        assert_eq!(t.reference.to_string(), "latest");
        assert!(parse_target("localhost/a/b:c").unwrap().loopback);
        assert!(!parse_target("localhost.example/a:c").unwrap().loopback);

        for bad in [
            "app:v1",
            "/app:v1",
            "host/",
            "host/App:v1",
            "host/app:-bad",
            "host/app@sha256:short",
            "u:p@host/app:v1",
            "host?x/app:v1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn lines() {
        let mut out = Outcome {
            manifests: 3,
            blobs: 5,
            bytes: 1234,
            problems: Vec::new(),
        };
        assert_eq!(out.line("h/a:v1"), "ok h/a:v1 (3 manifests, 5 blobs, 1234 bytes)");
        out.problems = vec!["a: x".into(), "b: y".into()];
        assert_eq!(out.line("h/a:v1"), "FAIL h/a:v1: a: x; b: y");
    }

    #[test]
    fn index_platforms() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media::OCI_MANIFEST
        );
        let p = platforms(index.as_bytes());
        assert_eq!(p[&D.parse::<Digest>().unwrap()], "linux/arm64/v8");
        assert!(platforms(b"{").is_empty());
    }

    #[test]
    fn metric_names() {
        let m = ProbeMetrics::default();
        let mut prom = PromRegistry::default();
        m.register(&mut prom);
        let out = Outcome {
            problems: vec!["x".into()],
            ..Outcome::default()
        };
        m.record("h/a:v1", &out, Duration::from_millis(1500));
        m.record("h/a:v1", &Outcome::default(), Duration::from_millis(500));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &prom).unwrap();
        for want in [
            r#"berth_probe_runs_total{reference="h/a:v1",result="fail"} 1"#,
            r#"berth_probe_runs_total{reference="h/a:v1",result="ok"} 1"#,
            r#"berth_probe_problems{reference="h/a:v1"} 0"#,
            r#"berth_probe_duration_seconds{reference="h/a:v1"} 0.5"#,
            r#"berth_probe_last_success_timestamp_seconds{reference="h/a:v1"} "#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
