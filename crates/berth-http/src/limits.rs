//! Request-level limits, per client IP address: a request rate (token bucket), uploads in
//! flight, the declared size of upload bodies, and bodies that stall.
//!
//! The client is the TCP peer (`ConnectInfo<SocketAddr>`, IPv4-mapped IPv6 seen as IPv4)
//! or, when that peer is one of `auth.trusted_proxies`, the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy, so clients behind a proxy each get their
//! own limits. Requests without a peer address (a router driven in-process) are not
//! limited per client.
//!
//! The size of what an upload stores (`limits.max_blob_bytes`, counted over a session's
//! chunks) is enforced by berth-registry while the body streams; here a declared
//! `Content-Length` over it is refused before any byte is read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_oci::{ErrorCode, Route};
use berth_registry::RegistryError;
use bytes::Bytes;
use futures_util::Stream;

use crate::App;
use crate::error::ApiError;

/// The request-level limits (`[limits]` in the configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Requests per second per client to `/v2` and `/auth`; 0 is unlimited.
    pub requests_per_second: u32,
    /// Requests a client may make at once above the rate; 0 means twice the rate.
    pub request_burst: u32,
    /// Upload requests with a body in flight per client; 0 is unlimited.
    pub max_uploads_per_client: u32,
    /// A request body silent this long is cut off; zero never cuts.
    pub body_idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            requests_per_second: 0,
            request_burst: 0,
            max_uploads_per_client: 32,
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The limits and what they count. Clones share the counts.
#[derive(Clone, Default)]
pub struct HttpLimits {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    settings: Settings,
    buckets: Mutex<Buckets>,
    uploads: Mutex<HashMap<IpAddr, u32>>,
}

impl HttpLimits {
    pub fn new(settings: Settings) -> HttpLimits {
        HttpLimits {
            inner: Arc::new(Inner {
                settings,
                ..Inner::default()
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn burst(&self) -> f64 {
        let s = &self.inner.settings;
        match s.request_burst {
            0 => (2 * s.requests_per_second).max(1) as f64,
            n => n as f64,
        }
    }

    /// Takes one request token for `client`; when none is left, how long until one is.
    fn take_token(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.inner.settings.requests_per_second;
        if rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (rate as f64, self.burst());
        let mut buckets = self.inner.buckets.lock().unwrap();
        buckets.sweep(now, rate, burst);
        let b = buckets.map.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.refill(now, rate, burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// A slot for one more upload of `client`, or `None` when it has all it may have.
    fn upload_slot(&self, client: IpAddr) -> Option<UploadSlot> {
        let max = self.inner.settings.max_uploads_per_client;
        if max > 0 {
            let mut uploads = self.inner.uploads.lock().unwrap();
            let n = uploads.entry(client).or_insert(0);
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        Some(UploadSlot {
            limits: self.clone(),
            client,
            counted: max > 0,
        })
    }
}

/// The bucket map drops full buckets (a client idle long enough to have every token
/// back looks exactly like a new one), so it holds only clients seen within about
/// `burst / rate` seconds. It is swept once a minute and whenever it has doubled.
struct Buckets {
    map: HashMap<IpAddr, Bucket>,
    swept: Instant,
    sweep_above: usize,
}

const SWEEP_ABOVE: usize = 4096;

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            map: HashMap::new(),
            swept: Instant::now(),
            sweep_above: SWEEP_ABOVE,
        }
    }
}

impl Buckets {
    fn sweep(&mut self, now: Instant, rate: f64, burst: f64) {
        if self.map.len() <= self.sweep_above && now.duration_since(self.swept) < Duration::from_secs(60) {
            return;
        }
        self.map.retain(|_, b| {
            b.refill(now, rate, burst);
            b.tokens < burst
        });
        self.swept = now;
        self.sweep_above = (2 * self.map.len()).max(SWEEP_ABOVE);
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }
}

/// One upload in flight; dropped when its request ends, however it ends (finished,
/// refused, or the connection dropped and the request with it).
struct UploadSlot {
    limits: HttpLimits,
    client: IpAddr,
    counted: bool,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut uploads = self.limits.inner.uploads.lock().unwrap();
        if let Some(n) = uploads.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                uploads.remove(&self.client);
            }
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub(crate) fn retry_after(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1).to_string()
}

fn too_many(message: String, wait: Duration) -> Response {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, message)
        .header("retry-after", retry_after(wait))
        .into_response()
}

/// What [`enforce`] hands the `/v2` handlers for the request body.
#[derive(Clone)]
struct BodyWatch {
    idle: Duration,
    stalled: Arc<Mutex<bool>>,
}

/// Whether a request is an upload carrying a body: a PATCH or PUT to an upload session,
/// or a POST starting one with a body (a monolithic upload).
fn is_upload(req: &Request) -> bool {
    let Some(rest) = req.uri().path().strip_prefix("/v2/") else {
        return false;
    };
    match (Route::parse(rest), req.method()) {
        (Ok(Route::Upload(..)), &Method::PATCH | &Method::PUT) => true,
        (Ok(Route::UploadStart(_)), &Method::POST) => {
            let h = req.headers();
            h.contains_key(header::TRANSFER_ENCODING) || declared_len(req).is_some_and(|n| n > 0)
        }
        _ => false,
    }
}

fn declared_len(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// The client a trusted proxy forwards for: walking `X-Forwarded-For` from the right (the
/// hop nearest berth), the first address that is not itself a trusted proxy. Anyone else's
/// `X-Forwarded-For` is ignored, since a client can write anything there.
fn forwarded_client(app: &App, headers: &axum::http::HeaderMap, peer: IpAddr) -> IpAddr {
    let Some(ac) = app.access.as_ref().filter(|ac| ac.auth.trusted_proxy(peer)) else {
        return peer;
    };
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !ac.auth.trusted_proxy(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The middleware: the rate limit and upload count per client for `/v2` and `/auth`
/// (health, metrics and admin are never limited), the declared size of uploads, and the
/// idle watch on request bodies.
pub(crate) async fn enforce(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let limited = path == "/v2" || path.starts_with("/v2/") || path == "/auth" || path.starts_with("/auth/");
    if !limited {
        return next.run(req).await;
    }
    let limits = &app.limits;
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| forwarded_client(&app, req.headers(), c.0.ip().to_canonical()));
    if let Some(ip) = client
        && let Err(wait) = limits.take_token(ip, Instant::now())
    {
        let s = limits.settings();
        return too_many(
            format!(
                "client {ip} made more than {} requests per second (bursts of {}; limits.requests_per_second); retry in {} s",
                s.requests_per_second,
                limits.burst(),
                retry_after(wait)
            ),
            wait,
        );
    }
    let mut _slot = None;
    if is_upload(&req) {
        if let Some(ip) = client {
            match limits.upload_slot(ip) {
                Some(slot) => _slot = Some(slot),
                None => {
                    return too_many(
                        format!(
                            "client {ip} already has {} uploads in progress, the most allowed per client (limits.max_uploads_per_client); retry when one ends",
                            limits.settings().max_uploads_per_client
                        ),
                        Duration::from_secs(1),
                    );
                }
            }
        }
        let max = app.registry.limits().max_blob_bytes;
        if max > 0 && declared_len(&req).is_some_and(|n| n > max) {
            let mut r = ApiError::from(RegistryError::BlobTooLarge { limit: max }).into_response();
            // The body is not read: the connection cannot carry another request.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    }
    let idle = limits.settings().body_idle_timeout;
    let stalled = Arc::new(Mutex::new(false));
    req.extensions_mut().insert(BodyWatch {
        idle,
        stalled: stalled.clone(),
    });
    let method = req.method().clone();
    let mut resp = next.run(req).await;
    if *stalled.lock().unwrap() {
        tracing::warn!(client = ?client, %method, path, idle = ?idle,
            "request body sent nothing for limits.body_idle_timeout; cut off");
        *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body as a stream of bytes, cut off (ending in an error) when it delivers
/// nothing for `limits.body_idle_timeout` while the handler waits for it.
pub(crate) fn body_stream(req: Request) -> impl Stream<Item = Result<Bytes, axum::Error>> + Send {
    let watch = req.extensions().get::<BodyWatch>().cloned();
    Watched {
        inner: req.into_body().into_data_stream(),
        watch: watch.filter(|w| !w.idle.is_zero()),
        timer: None,
        done: false,
    }
}

struct Watched<S> {
    inner: S,
    watch: Option<BodyWatch>,
    /// Armed when the handler starts waiting for the next piece, so time the server
    /// spends elsewhere (writing, hashing) never counts against the client.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<S> Stream for Watched<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.timer = None;
                Poll::Ready(item)
            }
            Poll::Pending => {
                let Some(watch) = &this.watch else {
                    return Poll::Pending;
                };
                let idle = watch.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *watch.stalled.lock().unwrap() = true;
                this.done = true;
                Poll::Ready(Some(Err(axum::Error::new(format!(
                    "no bytes arrived for {} (limits.body_idle_timeout)",
                    humantime::format_duration(idle)
                )))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> HttpLimits {
        HttpLimits::new(Settings {
            requests_per_second: rate,
            request_burst: burst,
            ..Settings::default()
        })
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let l = limits(2, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take_token(ip, t0).is_ok());
        }
        let wait = l.take_token(ip, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after(wait), "1");
        // Another client has its own bucket.
        assert!(l.take_token("192.0.2.2".parse().unwrap(), t0).is_ok());
        // Half a second later one token is back, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.take_token(ip, t1).is_ok());
        assert!(l.take_token(ip, t1).is_err());
    }

    #[test]
    fn default_burst_is_twice_the_rate_and_off_is_off() {
        assert_eq!(limits(5, 0).burst(), 10.0);
        let off = limits(0, 0);
        let ip: IpAddr = "::1".parse().unwrap();
        let t = Instant::now();
        assert!((0..10_000).all(|_| off.take_token(ip, t).is_ok()));
    }

    #[test]
    fn idle_full_buckets_are_dropped() {
        let l = limits(100, 1);
        let t0 = Instant::now();
        for i in 0..=SWEEP_ABOVE as u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            l.take_token(ip, t0).unwrap();
        }
        assert_eq!(l.inner.buckets.lock().unwrap().map.len(), SWEEP_ABOVE + 1);
        // A second on, every bucket is full again: the next request sweeps them all.
        l.take_token("198.51.100.1".parse().unwrap(), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(l.inner.buckets.lock().unwrap().map.len(), 1);
    }

    #[test]
    fn upload_slots_are_counted_and_released() {
        let l = HttpLimits::new(Settings {
            max_uploads_per_client: 2,
            ..Settings::default()
        });
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let a = l.upload_slot(ip).unwrap();
        let _b = l.upload_slot(ip).unwrap();
        assert!(l.upload_slot(ip).is_none());
        assert!(l.upload_slot("203.0.113.10".parse().unwrap()).is_some());
        drop(a);
        assert!(l.upload_slot(ip).is_some());
        assert!(l.inner.uploads.lock().unwrap().get(&ip) == Some(&1));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after(Duration::ZERO), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::from_secs(30)), "30");
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let a: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
        assert_eq!(a.ip().to_canonical(), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
