//! A fault-injecting upstream registry for pull-through cache tests.
//!
//! [`FaultUpstream`] is a real HTTP/1.1 server on `127.0.0.1:0` that speaks the read side of
//! the OCI distribution API (`GET /v2/`, `HEAD`/`GET` of manifests and blobs, OCI JSON errors)
//! and can be told to misbehave at the TCP level: truncate a body, send the wrong bytes, reset
//! the connection, stall, throttle, or refuse connections altogether.
//!
//! The server is written by hand on tokio sockets (no hyper) because its whole point is to
//! break the protocol in ways a well-behaved HTTP library would not allow. It runs on a
//! current-thread tokio runtime in a background std thread, so the API is plain sync code,
//! usable from blocking tests and from async tests alike. It stops when dropped.
//!
//! Fault semantics:
//! * Faults are kept in insertion order; the first one whose [`FaultTarget`] matches a request
//!   applies. Setting a fault for a target that already has one replaces it.
//! * "Early" faults ([`Fault::Reset`], [`Fault::Status`], [`Fault::StallBeforeHeaders`]) match
//!   every request to the target, `HEAD` included, whatever the resource's existence.
//! * "Body" faults ([`Fault::Truncate`], [`Fault::EmptyBody200`], [`Fault::WrongBytes`],
//!   [`Fault::StallMidBody`], [`Fault::Slow`]) match only `GET` requests that would succeed
//!   (200/206), so a `HEAD` or a 404 never consumes a [`Fault::Once`] meant for a body.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc as tmpsc;
use tokio::task::JoinSet;

/// Which requests a [`Fault`] applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// Every request, `GET /v2/` included.
    Any,
    /// `HEAD`/`GET /v2/<any name>/blobs/<digest>`.
    Blob(String),
    /// `HEAD`/`GET /v2/<any name>/manifests/<reference>` where the requested reference equals
    /// this string, or where it resolves (a tag) to this digest.
    Manifest(String),
    /// Requests whose path (without query string) is exactly this, e.g. `/v2/`.
    Path(String),
}

/// What goes wrong. See the module documentation for which requests each kind matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Correct headers (full `Content-Length`), then `after` body bytes, then the connection is
    /// closed (FIN).
    Truncate { after: usize },
    /// Status 200 with the full `Content-Length` header, no body bytes, then close (FIN).
    EmptyBody200,
    /// Same length and headers (including the true `Docker-Content-Digest`), but the last body
    /// byte has all its bits flipped.
    WrongBytes,
    /// The request is read, then the connection is reset (`SO_LINGER` 0, RST) before any
    /// response byte.
    Reset,
    /// This status with an OCI error body (`TOOMANYREQUESTS` and `Retry-After: 1` for 429).
    /// The connection stays usable.
    Status(u16),
    /// The request is read, nothing is sent for this long, then the normal response.
    StallBeforeHeaders(Duration),
    /// Headers and `after` body bytes, nothing for `stall`, then the rest of the body.
    StallMidBody { after: usize, stall: Duration },
    /// The body is paced so its last byte leaves no earlier than `len / bytes_per_sec` seconds
    /// after the headers.
    Slow { bytes_per_sec: u64 },
    /// Applies the inner fault to the next matching request, then removes itself.
    Once(Box<Fault>),
}

impl Fault {
    /// The fault that actually acts (through any number of `Once` wrappers).
    fn effective(&self) -> &Fault {
        match self {
            Fault::Once(inner) => inner.effective(),
            f => f,
        }
    }

    fn is_body_fault(&self) -> bool {
        !matches!(
            self.effective(),
            Fault::Reset | Fault::Status(_) | Fault::StallBeforeHeaders(_)
        )
    }
}

/// The sha256 digest of `bytes`, as `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Default)]
struct Repo {
    blobs: HashMap<String, Arc<[u8]>>,
    /// digest -> (media type, bytes)
    manifests: HashMap<String, (String, Arc<[u8]>)>,
    tags: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    faults: Vec<(FaultTarget, Fault)>,
    counts: HashMap<(String, String), usize>,
    total: usize,
}

enum Cmd {
    SetDown(bool, mpsc::Sender<io::Result<()>>),
    Shutdown,
}

/// A fault-injecting OCI upstream on `127.0.0.1`. Stops on drop.
pub struct FaultUpstream {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    cmds: tmpsc::UnboundedSender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl FaultUpstream {
    /// Binds `127.0.0.1:0` and starts serving in a background thread.
    pub fn start() -> FaultUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(Mutex::new(State::default()));
        let (cmds, rx) = tmpsc::unbounded_channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    run(listener, addr, st, rx).await
                });
            })
            .expect("spawn fault upstream thread");
        FaultUpstream {
            addr,
            state,
            cmds,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Stores a blob in `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        let mut st = self.state();
        let r = st.repos.entry(repo.to_string()).or_default();
        r.blobs.insert(digest.clone(), bytes.into());
        digest
    }

    /// Stores a manifest in `repo` (tagged `tag` if given); returns its digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        let mut st = self.state();
        let r = st.repos.entry(repo.to_string()).or_default();
        r.manifests
            .insert(digest.clone(), (media_type.to_string(), bytes.into()));
        if let Some(tag) = tag {
            r.tags.insert(tag.to_string(), digest.clone());
        }
        digest
    }

    /// Points `tag` in `repo` at `digest` (which should be a stored manifest).
    pub fn set_tag(&self, repo: &str, tag: &str, digest: &str) {
        let mut st = self.state();
        let r = st.repos.entry(repo.to_string()).or_default();
        r.tags.insert(tag.to_string(), digest.to_string());
    }

    /// Applies `fault` to requests matching `target` until cleared (or once, for
    /// [`Fault::Once`]). Replaces an existing fault for the same target.
    pub fn set_fault(&self, target: FaultTarget, fault: Fault) {
        let mut st = self.state();
        match st.faults.iter_mut().find(|(t, _)| *t == target) {
            Some(entry) => entry.1 = fault,
            None => st.faults.push((target, fault)),
        }
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// How many requests with this method (e.g. `GET`) and path (without query string) were
    /// received, faulted ones included.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        let st = self.state();
        st.counts
            .get(&(method.to_ascii_uppercase(), path.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> usize {
        self.state().total
    }

    /// `true`: stops listening (new connections are refused: ECONNREFUSED, curl exit 7) and
    /// drops every open connection; the port stays reserved by a bound, non-listening socket.
    /// `false`: listens again on the same port. Takes effect before returning.
    pub fn set_down(&self, down: bool) {
        let (tx, rx) = mpsc::channel();
        self.cmds
            .send(Cmd::SetDown(down, tx))
            .expect("fault upstream is running");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("fault upstream did not acknowledge set_down")
            .expect("fault upstream could not listen again on its port");
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mut cmds: tmpsc::UnboundedReceiver<Cmd>,
) {
    let mut listener = Some(listener);
    // While down, a bound but non-listening socket keeps the port: connections to it are
    // refused, yet no other server (say, a parallel test's) can take the port meanwhile.
    let mut reserved: Option<TcpSocket> = None;
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(Cmd::Shutdown) => break,
                Some(Cmd::SetDown(true, ack)) => {
                    if listener.take().is_some() {
                        reserved = reserve(addr).await.ok();
                    }
                    conns.abort_all();
                    // Wait for the aborted tasks to be dropped, which closes their sockets.
                    while conns.join_next().await.is_some() {}
                    let _ = ack.send(Ok(()));
                }
                Some(Cmd::SetDown(false, ack)) => {
                    let mut res = Ok(());
                    if listener.is_none() {
                        res = match reserved.take() {
                            Some(sock) => sock.listen(1024),
                            None => reserve(addr).await.and_then(|sock| sock.listen(1024)),
                        }
                        .map(|l| listener = Some(l));
                    }
                    let _ = ack.send(res);
                }
            },
            accepted = accept(listener.as_ref()) => {
                if let Ok((stream, _)) = accepted {
                    conns.spawn(connection(stream, state.clone()));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// A socket bound to `addr`, not listening.
async fn reserve(addr: SocketAddr) -> io::Result<TcpSocket> {
    // Connections we closed may linger in TIME_WAIT on this port; SO_REUSEADDR lets us bind it
    // anyway. Retry briefly in case the kernel is still releasing the old listener.
    let mut last = None;
    for _ in 0..50 {
        let sock = TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        match sock.bind(addr) {
            Ok(()) => return Ok(sock),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.expect("at least one attempt"))
}

struct Request {
    method: String,
    /// Without the query string.
    path: String,
    range: Option<String>,
    close: bool,
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads one request head (and discards a `Content-Length` body). `None` on EOF or garbage.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_ascii_uppercase();
    let target = parts.next()?;
    let version = parts.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut req = Request {
        method,
        path,
        range: None,
        close: version == "HTTP/1.0",
    };
    let mut body_len = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => req.range = Some(value.to_string()),
            "connection" => req.close = value.eq_ignore_ascii_case("close"),
            "content-length" => body_len = value.parse().ok()?,
            "transfer-encoding" => return None,
            _ => {}
        }
    }
    // Discard a request body; this server never needs one.
    while body_len > 0 {
        if buf.is_empty() {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let n = body_len.min(buf.len());
        buf.drain(..n);
        body_len -= n;
    }
    Some(req)
}

type Headers = Vec<(&'static str, String)>;

struct Response {
    status: u16,
    headers: Headers,
    body: Arc<[u8]>,
    /// What a fault target can match on.
    kind: Kind,
}

enum Kind {
    Other,
    Blob(String),
    /// (requested reference, resolved digest if any)
    Manifest(String, Option<String>),
}

impl Response {
    fn ok(headers: Headers, body: Arc<[u8]>, kind: Kind) -> Response {
        Response {
            status: 200,
            headers,
            body,
            kind,
        }
    }

    /// An OCI JSON error.
    fn error(status: u16, code: &str, message: &str, kind: Kind) -> Response {
        let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: serde_json::to_vec(&body).expect("json").into(),
            kind,
        }
    }
}

/// Builds the fault-free response to `req` from the stored content.
fn respond(st: &State, req: &Request) -> Response {
    if req.path == "/v2" || req.path == "/v2/" {
        let h = vec![("Content-Type", "application/json".into())];
        return Response::ok(h, Arc::from(&b"{}"[..]), Kind::Other);
    }
    // Names may contain slashes, so split at the last `/manifests/` or `/blobs/`.
    let rest = req.path.strip_prefix("/v2/").unwrap_or_default();
    let (name, kind) = if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        (name, Kind::Manifest(reference.to_string(), None))
    } else if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        (name, Kind::Blob(digest.to_string()))
    } else {
        return Response::error(404, "NAME_UNKNOWN", "not found", Kind::Other);
    };
    if req.method != "GET" && req.method != "HEAD" {
        return Response::error(405, "UNSUPPORTED", "read-only upstream", kind);
    }
    let repo = st.repos.get(name);
    match kind {
        Kind::Manifest(reference, _) => {
            let digest = match reference.contains(':') {
                true => Some(reference.clone()),
                false => repo.and_then(|r| r.tags.get(&reference).cloned()),
            };
            let found = digest.as_ref().and_then(|d| repo?.manifests.get(d));
            let kind = Kind::Manifest(reference, digest.clone());
            match (found, digest) {
                (Some((media_type, bytes)), Some(d)) => {
                    let h = vec![("Content-Type", media_type.clone()), ("Docker-Content-Digest", d)];
                    Response::ok(h, bytes.clone(), kind)
                }
                _ => Response::error(404, "MANIFEST_UNKNOWN", "manifest unknown", kind),
            }
        }
        Kind::Blob(digest) => {
            let Some(bytes) = repo.and_then(|r| r.blobs.get(&digest)).cloned() else {
                return Response::error(404, "BLOB_UNKNOWN", "blob unknown", Kind::Blob(digest));
            };
            let mut h = vec![
                ("Content-Type", "application/octet-stream".into()),
                ("Docker-Content-Digest", digest.clone()),
                ("Accept-Ranges", "bytes".into()),
            ];
            let kind = Kind::Blob(digest);
            let Some(range) = req.range.as_deref().filter(|_| req.method == "GET") else {
                return Response::ok(h, bytes, kind);
            };
            let len = bytes.len();
            match parse_range(range, len) {
                Some((start, end)) => {
                    h.push(("Content-Range", format!("bytes {start}-{end}/{len}")));
                    let mut r = Response::ok(h, bytes[start..=end].into(), kind);
                    r.status = 206;
                    r
                }
                None => {
                    let mut r = Response::error(416, "BLOB_UNKNOWN", "range not satisfiable", kind);
                    r.headers.push(("Content-Range", format!("bytes */{len}")));
                    r
                }
            }
        }
        Kind::Other => unreachable!("kind is a manifest or a blob here"),
    }
}

/// A single `bytes=start-[end]` range, clamped to `len`; inclusive bounds.
fn parse_range(range: &str, len: usize) -> Option<(usize, usize)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.trim().parse().ok()?;
    let end: usize = match end.trim() {
        "" => len.checked_sub(1)?,
        e => e.parse::<usize>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end).then_some((start, end))
}

fn matches(target: &FaultTarget, req: &Request, resp: &Response) -> bool {
    match (target, &resp.kind) {
        (FaultTarget::Any, _) => true,
        (FaultTarget::Path(p), _) => *p == req.path,
        (FaultTarget::Blob(d), Kind::Blob(digest)) => d == digest,
        (FaultTarget::Manifest(m), Kind::Manifest(reference, digest)) => {
            m == reference || digest.as_ref() == Some(m)
        }
        _ => false,
    }
}

/// Counts the request and picks (consuming a `Once`) the fault that applies to it.
fn take_fault(st: &mut State, req: &Request, resp: &Response) -> Option<Fault> {
    let body_ok = req.method == "GET" && matches!(resp.status, 200 | 206);
    let i = st
        .faults
        .iter()
        .position(|(t, f)| matches(t, req, resp) && (body_ok || !f.is_body_fault()))?;
    match &st.faults[i].1 {
        Fault::Once(_) => match st.faults.remove(i).1 {
            Fault::Once(inner) => Some(inner.effective().clone()),
            _ => unreachable!(),
        },
        f => Some(f.clone()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    }
}

fn head_bytes(status: u16, headers: &Headers, len: usize, close: bool) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str(&format!("Content-Length: {len}\r\n"));
    s.push_str("Docker-Distribution-API-Version: registry/2.0\r\n");
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Serves one connection; returns when it is closed by either side.
async fn connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let (resp, fault) = {
            let mut st = lock(&state);
            *st.counts
                .entry((req.method.clone(), req.path.clone()))
                .or_default() += 1;
            st.total += 1;
            let resp = respond(&st, &req);
            let fault = take_fault(&mut st, &req, &resp);
            (resp, fault)
        };
        match serve(&mut stream, &req, resp, fault).await {
            Ok(Then::KeepAlive) if !req.close => {}
            // FIN: after a truncated body the client sees a clean EOF, too early.
            Ok(Then::KeepAlive | Then::Close) => {
                let _ = stream.shutdown().await;
                return;
            }
            // Dropped with SO_LINGER 0: RST.
            Ok(Then::Reset) | Err(_) => return,
        }
    }
}

/// What happens to the connection after a response.
enum Then {
    KeepAlive,
    Close,
    Reset,
}

/// Writes the (possibly faulted) response.
async fn serve(
    stream: &mut TcpStream,
    req: &Request,
    resp: Response,
    fault: Option<Fault>,
) -> io::Result<Then> {
    let Response {
        mut status,
        mut headers,
        mut body,
        ..
    } = resp;
    let head_only = req.method == "HEAD";
    let mut paced: Option<u64> = None;
    let mut stall_mid: Option<(usize, Duration)> = None;
    let mut cut: Option<usize> = None;
    match fault {
        None => {}
        Some(Fault::Reset) => {
            stream.set_zero_linger()?;
            return Ok(Then::Reset);
        }
        Some(Fault::Status(code)) => {
            let (code_str, msg) = match code {
                429 => ("TOOMANYREQUESTS", "too many requests"),
                401 => ("UNAUTHORIZED", "authentication required"),
                403 => ("DENIED", "requested access to the resource is denied"),
                _ => ("UNAVAILABLE", "service unavailable"),
            };
            let err = Response::error(
                code,
                code_str,
                &format!("injected fault: {msg} ({code})"),
                Kind::Other,
            );
            (status, headers, body) = (err.status, err.headers, err.body);
            if code == 429 {
                headers.push(("Retry-After", "1".into()));
            }
        }
        Some(Fault::StallBeforeHeaders(d)) => tokio::time::sleep(d).await,
        Some(Fault::Truncate { after }) => cut = Some(after),
        Some(Fault::EmptyBody200) => {
            status = 200;
            cut = Some(0);
        }
        Some(Fault::WrongBytes) => {
            let mut b = body.to_vec();
            if let Some(last) = b.last_mut() {
                *last ^= 0xff;
            }
            body = b.into();
        }
        Some(Fault::StallMidBody { after, stall }) => stall_mid = Some((after, stall)),
        Some(Fault::Slow { bytes_per_sec }) => paced = Some(bytes_per_sec.max(1)),
        Some(Fault::Once(_)) => unreachable!("take_fault unwraps Once"),
    }
    stream
        .write_all(&head_bytes(status, &headers, body.len(), req.close))
        .await?;
    if head_only {
        stream.flush().await?;
        return Ok(Then::KeepAlive);
    }
    if let Some(after) = cut {
        stream.write_all(&body[..after.min(body.len())]).await?;
        stream.flush().await?;
        return Ok(Then::Close);
    }
    if let Some((after, stall)) = stall_mid {
        let after = after.min(body.len());
        stream.write_all(&body[..after]).await?;
        stream.flush().await?;
        tokio::time::sleep(stall).await;
        stream.write_all(&body[after..]).await?;
    } else if let Some(bps) = paced {
        // Each chunk leaves when the pace allows it, so the last byte leaves at len/bps.
        let chunk = (bps / 10).clamp(1, 64 * 1024) as usize;
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < body.len() {
            let n = chunk.min(body.len() - sent);
            let due = Duration::from_secs_f64((sent + n) as f64 / bps as f64);
            tokio::time::sleep_until((start + due).into()).await;
            stream.write_all(&body[sent..sent + n]).await?;
            stream.flush().await?;
            sent += n;
        }
    } else {
        stream.write_all(&body).await?;
    }
    stream.flush().await?;
    Ok(Then::KeepAlive)
}
