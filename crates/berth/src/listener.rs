//! The listener: accepts TCP connections, terminates TLS when configured, and hands each
//! connection to hyper (HTTP/1.1 and HTTP/2) with the limits a server facing the network
//! needs: request head size, time to send a head, number of connections.
//!
//! A request flows: `accept` -> connection task (TCP_NODELAY, a connection slot, TLS
//! handshake or a wait for the first byte, both within `header_timeout`) -> hyper's
//! connection (h1 with `header_read_timeout` and `max_buf_size`, h2 with
//! `max_header_list_size`) -> [`ConnectInfo`] and [`Transport`] put in the request's
//! extensions -> the axum router.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::ConnectInfo;
use berth_http::Transport;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);
/// Pause after an accept error such as EMFILE, so a full file table is not spun on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub struct Options {
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    /// 0 means unlimited.
    pub max_connections: usize,
    pub tls: Option<Tls>,
}

/// TLS termination with a certificate that follows its files.
pub struct Tls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

impl Tls {
    /// Loads the pair named by `server.tls_cert` and `server.tls_key`; an error names the
    /// key and the file at fault.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pair = load_pair(cert, key, &provider)?;
        let resolver = Arc::new(ReloadingCert {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(pair)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("configuring TLS")?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert: resolver,
        })
    }
}

/// Reads a certificate chain and its private key, and checks that they belong together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "server.tls_cert: reading PEM certificates from {}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "server.tls_cert: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        );
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("server.tls_key: reading a PEM private key from {}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider).with_context(|| {
        format!(
            "server.tls_key: {} is not a usable private key for the certificate in {}",
            key.display(),
            cert.display()
        )
    })
}

/// The certificate every new handshake gets; replaced when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole Arc: keep serving it.
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// What identifies a version of a file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

impl ReloadingCert {
    /// Polls both files; when either changes, loads the pair for new connections. A pair
    /// that does not load (a half-written file, a key for another certificate) keeps the
    /// old one and is tried again when the files change again.
    async fn follow_files(self: Arc<Self>) {
        let stamps = |c: &ReloadingCert| (stamp(&c.cert_path), stamp(&c.key_path));
        let mut seen = stamps(&self);
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamps(&self);
            if now == seen {
                continue;
            }
            seen = now;
            let this = self.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                load_pair(&this.cert_path, &this.key_path, &this.provider)
            })
            .await;
            match loaded {
                Ok(Ok(pair)) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                }
                Ok(Err(e)) => tracing::warn!(
                    error = format!("{e:#}"),
                    "TLS certificate files changed but do not load; still serving the previous certificate"
                ),
                Err(e) => tracing::warn!(error = %e, "TLS certificate reload did not run"),
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so many connections fit.
/// Returns the (soft, hard) limits in force afterwards.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// What every connection task shares.
struct Shared {
    router: Router,
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c), told apart by the preface.
    auto: auto::Builder<TokioExecutor>,
    /// TLS: ALPN already said which protocol, so no preface sniffing (which has no timeout).
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
    open: AtomicUsize,
}

/// A held connection slot, given back when the connection ends.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts and serves connections until `stop` resolves; then stops accepting, lets
/// in-flight requests finish, and returns when every connection has ended.
pub async fn serve(listener: TcpListener, router: Router, opts: Options, stop: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(opts.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX));
    let reload = opts
        .tls
        .as_ref()
        .map(|t| tokio::spawn(t.cert.clone().follow_files()));
    let shared = Arc::new(Shared {
        router,
        h1: builder.clone().http1_only(),
        h2: builder.clone().http2_only(),
        auto: builder,
        tls: opts.tls.map(|t| t.acceptor),
        header_timeout: opts.header_timeout,
        open: AtomicUsize::new(0),
    });
    let graceful = GracefulShutdown::new();
    // Tells connections still in their handshake or first-byte wait to give up.
    let (stopping_tx, stopping) = watch::channel(false);
    let mut last_warning: Option<Instant> = None;
    let mut warn_throttled = |msg: &str, detail: String| {
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_warning = Some(Instant::now());
            tracing::warn!(detail, "{msg}");
        }
    };
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            // The peer gave up before we got to it: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            // EMFILE, ENFILE, ENOBUFS...: the loop must survive; connections ending
            // free descriptors.
            Err(e) => {
                warn_throttled("accepting a connection failed; retrying", e.to_string());
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let open = shared.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(shared.clone());
        if opts.max_connections > 0 && open >= opts.max_connections {
            // Closing at once lets the client fail fast and retry, where leaving it in
            // the kernel's queue would make it wait for a timeout.
            drop((tcp, slot));
            warn_throttled(
                "server.max_connections reached; closing new connections",
                format!("{} open", opts.max_connections),
            );
            continue;
        }
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            remote,
            slot,
            graceful.watcher(),
            stopping.clone(),
        ));
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    if let Some(task) = reload {
        task.abort();
    }
    graceful.shutdown().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    watcher: Watcher,
    mut stopping: watch::Receiver<bool>,
) {
    let shared = slot.0.clone();
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    match &shared.tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(shared.header_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                r = handshake => r,
                () = stop => return,
            };
            let tls = match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
            };
            let builder = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => &shared.h2,
                _ => &shared.h1,
            };
            serve_io(tls, builder, &shared.router, remote, true, watcher).await;
        }
        None => {
            // hyper's preface sniffing waits for bytes without a timeout, and its header
            // timeout starts only after it: a silent client is cut here.
            let mut byte = [0u8; 1];
            let first = tokio::time::timeout(shared.header_timeout, tcp.peek(&mut byte));
            let first = tokio::select! {
                r = first => r,
                () = stop => return,
            };
            match first {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => return tracing::debug!(%remote, "no request within server.header_timeout"),
            }
            serve_io(tcp, &shared.auto, &shared.router, remote, false, watcher).await;
        }
    }
    drop(slot);
}

async fn serve_io<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    router: &Router,
    remote: SocketAddr,
    tls: bool,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tower = TowerToHyperService::new(router.clone());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // What axum's `into_make_service_with_connect_info` did, plus how the client came.
        req.extensions_mut().insert(ConnectInfo(remote));
        req.extensions_mut().insert(Transport { tls });
        hyper::service::Service::call(&tower, req)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
