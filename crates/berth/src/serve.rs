//! `berth serve`: wiring stores, domain and HTTP, then serving until a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use berth_http::{App, HttpMetrics};
use berth_registry::cache::CacheSource;
use berth_registry::{Registry, RegistryMetrics, SystemClock};
use berth_store::fs::FsBlobStore;
use berth_store::postgres::PgMeta;
use berth_store::s3::S3BlobStore;
use berth_store::sqlite::SqliteMeta;
use berth_store::{BlobStore, MetaStore};
use berth_upstream::{Upstream, UpstreamConfig};
use prometheus_client::registry::Registry as PromRegistry;
use tracing_subscriber::EnvFilter;

use crate::config::{BlobBackend, Config, Metadata};

pub fn run(config: Config) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.server.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config))
}

/// A listener on `addr`; an IPv6 wildcard also accepts IPv4 (dual-stack), whatever the
/// system's `bindv6only` default says.
fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    socket.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}

/// The blob store `storage.blobs` names. An S3 bucket is checked before serving, so bad
/// credentials, a missing bucket or an unreachable endpoint stop the start with a sentence.
pub(crate) async fn open_blobs(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let data = &config.storage.data_dir;
    Ok(match config.storage.blobs {
        BlobBackend::Fs => Arc::new(
            FsBlobStore::open(data)
                .await
                .with_context(|| format!("opening blob store in {}", data.display()))?,
        ),
        BlobBackend::S3 => {
            let settings = config.storage.s3.settings()?;
            // The store's sentences already name the endpoint and bucket; print one, not
            // the error chain that repeats it.
            let store = S3BlobStore::open(&settings).await.map_err(|e| match e {
                berth_store::StoreError::Io(io) => anyhow::anyhow!("opening the S3 blob store: {io}"),
                other => anyhow::anyhow!("opening the S3 blob store: {other}"),
            })?;
            tracing::info!(store = %settings.describe(), prefix = %settings.prefix, "blobs in S3");
            Arc::new(store)
        }
    })
}

/// The metadata store `storage.metadata` names. Errors name the key and where it points,
/// never the password.
pub(crate) async fn open_metadata(config: &Config) -> anyhow::Result<Arc<dyn MetaStore>> {
    Ok(match config.storage.metadata() {
        Metadata::Sqlite(path) => Arc::new(
            SqliteMeta::open(&path)
                .await
                .with_context(|| format!("opening metadata in {}", path.display()))?,
        ),
        Metadata::Postgres(url) => {
            let at = berth_store::postgres::describe_url(&url).unwrap_or_else(|| "postgres://".into());
            let meta = PgMeta::connect(&url).await.with_context(|| {
                format!("storage.metadata: cannot open the PostgreSQL metadata store at {at}")
            })?;
            tracing::info!(at, "metadata in PostgreSQL");
            Arc::new(meta)
        }
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data = &config.storage.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating data directory {}", data.display()))?;
    // Held shared while serving (replicas may share a directory), so `berth
    // migrate-storage` knows a live source (its pass is not final) and refuses a served
    // destination; it holds a destination, or a stopped source, exclusively.
    let _data_lock = crate::migrate_cli::lock_data_dir(data, false)?.with_context(|| {
        format!(
            "{}: `berth migrate-storage` is working on this data directory",
            data.display()
        )
    })?;
    let blobs = open_blobs(&config).await?;
    let meta = open_metadata(&config).await?;

    let mut prometheus = PromRegistry::default();
    let registry_metrics = RegistryMetrics::default();
    registry_metrics
        .cache_max_bytes
        .set(config.cache.max_bytes as i64);
    registry_metrics.register(&mut prometheus);
    let http_metrics = HttpMetrics::default();
    http_metrics.register(&mut prometheus);

    let registry = Arc::new(
        Registry::new(
            blobs,
            meta,
            Arc::new(SystemClock),
            berth_registry::Limits {
                max_manifest_bytes: config.limits.max_manifest_bytes,
                max_blob_bytes: config.limits.max_blob_bytes,
                max_concurrent_fills: config.limits.max_concurrent_fills as usize,
                fill_queue_timeout: config.limits.fill_queue_timeout,
            },
            registry_metrics,
        )
        .with_upstreams(cache_sources(&config)?)
        .with_verify_on_read(config.storage.verify_on_read)
        .with_blob_redirects(
            (config.storage.blobs == BlobBackend::S3 && config.storage.s3.redirect)
                .then_some(config.storage.s3.presign_ttl),
        )
        .with_verify_after_push(config.scrub.verify_after_push),
    );
    let lifecycle = berth_http::admin::LifecycleDefaults {
        grace: config.gc.grace(),
        rules: config
            .retention
            .rules
            .iter()
            .map(|r| r.to_rule().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        eviction: config.cache.policy(),
        scrub_max_bytes_per_sec: config.scrub.max_bytes_per_sec,
    };
    let access = match config.auth_config()? {
        None => None,
        Some(cfg) => {
            let auth = Arc::new(berth_auth::Auth::new(cfg).context("access control")?);
            auth.spawn_reloader(std::time::Duration::from_secs(2));
            tracing::info!(rules = config.access.len(), "access control on");
            Some(berth_http::auth::AccessControl {
                auth,
                public_url: (!config.auth.public_url.is_empty()).then(|| config.auth.public_url.clone()),
            })
        }
    };
    let app = App {
        registry: registry.clone(),
        metrics: http_metrics,
        prometheus: Arc::new(prometheus),
        lifecycle: lifecycle.clone(),
        access,
        limits: berth_http::limits::HttpLimits::new(berth_http::limits::Settings {
            requests_per_second: config.limits.requests_per_second,
            request_burst: config.limits.request_burst,
            max_uploads_per_client: config.limits.max_uploads_per_client,
            body_idle_timeout: config.limits.body_idle_timeout,
        }),
    };

    let (areas, rows) = registry
        .recover_uploads()
        .await
        .context("reconciling upload sessions")?;
    if areas + rows > 0 {
        tracing::info!(
            areas,
            rows,
            "removed upload sessions left half-made by an earlier crash"
        );
    }
    tokio::spawn(expire_uploads(registry.clone(), config.uploads.clone()));
    tokio::spawn(scheduled(
        registry.clone(),
        config.gc.schedule,
        lifecycle.clone(),
        Job::Gc,
    ));
    tokio::spawn(scheduled(
        registry.clone(),
        config.retention.schedule,
        lifecycle.clone(),
        Job::Retention,
    ));
    tokio::spawn(scheduled(
        registry.clone(),
        config.cache.schedule,
        lifecycle.clone(),
        Job::Evict,
    ));
    tokio::spawn(scheduled(
        registry.clone(),
        config.scrub.schedule,
        lifecycle.clone(),
        Job::Scrub,
    ));

    let tls = if config.server.tls_cert.as_os_str().is_empty() {
        None
    } else {
        Some(crate::listener::Tls::load(
            &config.server.tls_cert,
            &config.server.tls_key,
        )?)
    };
    match crate::listener::raise_open_files_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let listener = listen(config.server.listen)?;
    let addr = listener.local_addr()?;
    let tls_on = tls.is_some();
    let scheme = if tls_on { "https" } else { "http" };
    tracing::info!(%addr, data_dir = %data.display(), scheme, "berth serving");
    // The line tests and scripts wait for.
    println!("berth listening on {scheme}://{addr}");
    std::io::stdout().flush().ok();

    if !config.probe.references.is_empty() {
        // The server's own API, on loopback, whatever address it listens on.
        let port = addr.port();
        let base = format!(
            "{scheme}://{}",
            if tls_on {
                format!("localhost:{port}")
            } else {
                format!("127.0.0.1:{port}")
            }
        );
        tokio::spawn(crate::probe::serve_probes(
            registry.clone(),
            base,
            config.probe.clone(),
        ));
    }
    let options = crate::listener::Options {
        max_header_bytes: config.server.max_header_bytes,
        header_timeout: config.server.header_timeout,
        max_connections: config.server.max_connections,
        tls,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::listener::serve(
        listener,
        berth_http::router(app),
        options,
        async {
            let _ = stop_rx.await;
        },
    ));
    let signal = shutdown_signal().await;
    tracing::info!(signal, timeout = ?config.server.shutdown_timeout, "stopping: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(());
    match tokio::time::timeout(config.server.shutdown_timeout, server).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout; exiting anyway")
        }
    }
    Ok(())
}

/// The configured upstreams, ready to serve as pull-through caches.
fn cache_sources(config: &Config) -> anyhow::Result<Vec<CacheSource>> {
    config
        .upstreams
        .iter()
        .map(|u| {
            let client = Upstream::new(UpstreamConfig {
                name: u.name.clone(),
                url: u.url.clone(),
                username: u.username.clone(),
                password: u.password()?,
                connect_timeout: u.connect_timeout,
                read_timeout: u.read_timeout,
                // Whole non-streaming calls (a manifest, the token dance included).
                request_timeout: u.connect_timeout + 2 * u.read_timeout,
                library_prefix: u.name == "docker.io",
            })
            .with_context(|| format!("upstream {:?}", u.name))?;
            Ok(CacheSource {
                name: u.name.clone(),
                aliases: u.aliases.clone(),
                client,
                manifest_ttl: u.manifest_ttl,
                stale_if_error: u.stale_if_error,
            })
        })
        .collect()
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn expire_uploads(registry: Arc<Registry>, cfg: crate::config::Uploads) {
    let mut tick = tokio::time::interval(cfg.expire_interval);
    loop {
        tick.tick().await;
        match registry.expire_uploads(cfg.expire_after.as_secs() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "removed idle upload sessions"),
            Err(e) => tracing::warn!(error = %e, "could not expire idle uploads"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Job {
    Gc,
    Retention,
    Evict,
    Scrub,
}

/// A lifecycle job on its schedule; when another run is going (`berth gc`, say), this
/// one is skipped and logged.
async fn scheduled(
    registry: Arc<Registry>,
    schedule: crate::config::Schedule,
    cfg: berth_http::admin::LifecycleDefaults,
    job: Job,
) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let Some(wait) = schedule.next_in(now) else {
            return;
        };
        tokio::time::sleep(wait).await;
        let result = match job {
            Job::Gc => registry.collect_garbage(cfg.grace, false).await.map(drop),
            Job::Retention if cfg.rules.is_empty() => Ok(()),
            Job::Retention => registry
                .apply_retention(&cfg.rules, cfg.grace, false)
                .await
                .map(drop),
            Job::Evict if cfg.eviction.max_bytes.is_none() && cfg.eviction.evict_unpulled_after.is_none() => {
                Ok(())
            }
            Job::Evict => registry.evict(cfg.eviction, cfg.grace, false).await.map(drop),
            Job::Scrub => {
                let opts = berth_registry::integrity::ScrubOptions {
                    max_bytes_per_sec: cfg.scrub_max_bytes_per_sec,
                    ..Default::default()
                };
                registry.scrub(&opts).await.map(drop)
            }
        };
        match result {
            // Another run holds the lifecycle lock, in this process or on another replica
            // sharing the metadata store: that run does the work, so this one skips.
            Err(berth_registry::RegistryError::Busy) => {
                tracing::info!(
                    ?job,
                    "scheduled lifecycle run skipped: another run (here or on another replica) holds the lifecycle lock"
                )
            }
            Err(e) => tracing::warn!(?job, error = %e, "scheduled lifecycle run did not complete"),
            Ok(()) => {}
        }
    }
}
