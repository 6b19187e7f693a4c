//! `Upstream`: one configured remote registry, its HTTP client and its token cache.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_oci::media::{self, header};
use berth_oci::route::path;
use berth_oci::{Digest, Reference, RepoName};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use crate::auth::{Challenge, TokenAnswer, TokenCache, parse_challenges};
use crate::error::{UpstreamError, oci_error};

/// How to reach one remote registry.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The name berth knows it by (`docker.io`, `ghcr.io`, ...); used in logs.
    pub name: String,
    /// Scheme and authority, e.g. `http://127.0.0.1:5000` or `https://registry.example`.
    /// No user info, query or fragment; a trailing `/` is ignored.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest silence between two reads: waiting for headers, or between body chunks.
    pub read_timeout: Duration,
    /// Longest a non-streaming call may take in all (token dance included), and the
    /// longest `get_blob` may wait for the response headers.
    pub request_timeout: Duration,
    /// Docker Hub: a single-component name `x` is `library/x` upstream.
    pub library_prefix: bool,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("library_prefix", &self.library_prefix)
            .finish()
    }
}

/// What the upstream says about a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    /// One of [`berth_oci::media::MANIFEST_TYPES`].
    pub media_type: String,
    pub size: u64,
}

/// A blob body as it arrives. `size` is the upstream's `Content-Length`, when it sent one;
/// the stream then yields exactly that many bytes or ends with an error.
pub struct BlobStream {
    pub size: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl BlobStream {
    /// The next chunk of the body; `None` once it has ended (and on every call after).
    /// For callers that read the body in a loop without a `Stream` extension trait.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        let next = self.body.next().await;
        if next.is_none() {
            // A finished stream must not be polled again.
            self.body = futures_util::stream::empty().boxed();
        }
        next
    }
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// One remote registry. Cloning is cheap and clones share connections and tokens.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
    /// The actions asked of token servers: `pull`, or `pull,push` for copies.
    actions: &'static str,
}

struct Inner {
    name: String,
    /// `scheme://authority`, no trailing slash.
    base: String,
    credentials: Option<(String, String)>,
    library_prefix: bool,
    request_timeout: Duration,
    http: reqwest::Client,
    tokens: TokenCache,
    /// The upstream has answered a `Basic` challenge: send credentials up front.
    basic_upstream: AtomicBool,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.inner.name)
            .field("url", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// Every manifest type berth stores, so the upstream never converts.
fn manifest_accept() -> String {
    media::MANIFEST_TYPES.join(", ")
}

/// Token and error bodies are small; anything larger is not what we asked for.
const MAX_TOKEN_BODY: u64 = 1 << 20;
const MAX_ERROR_BODY: u64 = 64 << 10;

enum Credential {
    None,
    Basic,
    Bearer(String),
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let invalid = |why: &str| UpstreamError::Invalid(format!("upstream {:?}: {why}", cfg.name));
        let url = Url::parse(cfg.url.trim_end_matches('/'))
            .map_err(|e| invalid(&format!("url {:?} does not parse: {e}", cfg.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("url must be http:// or https:// with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("put credentials in username/password, not in the url"));
        }
        if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
            return Err(invalid("url must be scheme://host[:port] only"));
        }
        let credentials = match (cfg.username, cfg.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(invalid("username and password go together")),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(&format!("cannot build the HTTP client: {e}")))?;
        let base = url.as_str().trim_end_matches('/').to_string();
        Ok(Upstream {
            inner: Arc::new(Inner {
                name: cfg.name,
                base,
                credentials,
                library_prefix: cfg.library_prefix,
                request_timeout: cfg.request_timeout,
                http,
                tokens: TokenCache::default(),
                basic_upstream: AtomicBool::new(false),
            }),
            actions: "pull",
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The same registry (connections and credentials shared) asking token servers for
    /// `pull,push`, as a copy destination must.
    pub fn pushing(&self) -> Upstream {
        Upstream {
            inner: self.inner.clone(),
            actions: "pull,push",
        }
    }

    /// `scheme://authority` of the registry.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The repository name as the upstream knows it: with `library_prefix`, `alpine` is
    /// `library/alpine`. Fails only if the prefix makes the name too long.
    pub fn remote_repo(&self, repo: &RepoName) -> Result<RepoName, UpstreamError> {
        if !self.inner.library_prefix || repo.as_str().contains('/') {
            return Ok(repo.clone());
        }
        format!("library/{repo}")
            .parse()
            .map_err(|e| UpstreamError::Invalid(format!("{e}")))
    }

    /// `HEAD` a manifest: its digest (`Docker-Content-Digest`, or the reference itself),
    /// media type and size, without its bytes.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::manifest(&remote, reference))?;
        self.bounded(async {
            let resp = self
                .send(Method::HEAD, &url, &remote, Some(&manifest_accept()))
                .await?;
            let resp = check_status(resp).await?;
            let headers = resp.headers();
            let said = content_digest(headers)?;
            let digest = match (reference, said) {
                (Reference::Digest(asked), Some(said)) => {
                    if said.algorithm() == asked.algorithm() && said != *asked {
                        return Err(UpstreamError::Invalid(format!(
                            "{url}: asked for {asked}, upstream says {said}"
                        )));
                    }
                    asked.clone()
                }
                (Reference::Digest(asked), None) => asked.clone(),
                (Reference::Tag(_), Some(said)) => said,
                (Reference::Tag(_), None) => {
                    return Err(UpstreamError::Invalid(format!(
                        "{url}: the upstream sent no {} header",
                        header::CONTENT_DIGEST
                    )));
                }
            };
            let media_type = manifest_media_type(headers, &url)?;
            let size = content_length(headers)?
                .ok_or_else(|| UpstreamError::Invalid(format!("{url}: no Content-Length")))?;
            Ok(ManifestHead {
                digest,
                media_type,
                size,
            })
        })
        .await
    }

    /// `GET` a manifest, at most `max_bytes` of it, verified (see the crate docs).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        max_bytes: u64,
    ) -> Result<(ManifestHead, Bytes), UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::manifest(&remote, reference))?;
        self.bounded(async {
            let resp = self
                .send(Method::GET, &url, &remote, Some(&manifest_accept()))
                .await?;
            let resp = check_status(resp).await?;
            let said = content_digest(resp.headers())?;
            let media_type = manifest_media_type(resp.headers(), &url)?;
            if let Some(len) = content_length(resp.headers())?
                && len > max_bytes
            {
                return Err(too_large(&url, max_bytes));
            }
            let bytes = read_limited(resp, max_bytes)
                .await?
                .ok_or_else(|| too_large(&url, max_bytes))?;
            if let Some(said) = &said
                && !said.matches(&bytes)
            {
                return Err(UpstreamError::Invalid(format!(
                    "{url}: the upstream says {said} but the bytes hash to {}",
                    Digest::sha256_of(&bytes)
                )));
            }
            let digest = match reference {
                Reference::Digest(asked) => {
                    if !asked.matches(&bytes) {
                        return Err(UpstreamError::Invalid(format!(
                            "{url}: the bytes hash to {}, not to the digest asked for",
                            Digest::sha256_of(&bytes)
                        )));
                    }
                    asked.clone()
                }
                Reference::Tag(_) => said.unwrap_or_else(|| Digest::sha256_of(&bytes)),
            };
            let head = ManifestHead {
                digest,
                media_type,
                size: bytes.len() as u64,
            };
            Ok((head, bytes))
        })
        .await
    }

    /// `GET` a blob (following redirects, e.g. to a CDN) and stream its body. Not hashed
    /// here: the caller verifies the digest as it stores the bytes.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobStream, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::blob(&remote, digest))?;
        let resp = self
            .bounded(async {
                let resp = self.send(Method::GET, &url, &remote, None).await?;
                check_status(resp).await
            })
            .await?;
        let size = content_length(resp.headers())?;
        Ok(BlobStream {
            size,
            body: exact_length(resp, size, url),
        })
    }

    /// `HEAD` a blob (following redirects): its size, from `Content-Length`. A
    /// `Docker-Content-Digest` naming another digest is [`UpstreamError::Invalid`], and so
    /// is an answer without a `Content-Length`.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::blob(&remote, digest))?;
        self.bounded(async {
            let resp = self.send(Method::HEAD, &url, &remote, None).await?;
            let resp = check_status(resp).await?;
            if let Some(said) = content_digest(resp.headers())?
                && said.algorithm() == digest.algorithm()
                && said != *digest
            {
                return Err(UpstreamError::Invalid(format!(
                    "{url}: asked for {digest}, upstream says {said}"
                )));
            }
            content_length(resp.headers())?
                .ok_or_else(|| UpstreamError::Invalid(format!("{url}: no Content-Length")))
        })
        .await
    }

    pub(crate) fn url(&self, path: &str) -> Result<Url, UpstreamError> {
        let s = format!("{}{path}", self.inner.base);
        Url::parse(&s).map_err(|e| UpstreamError::Invalid(format!("{s}: {e}")))
    }

    /// Runs a whole call within `request_timeout`.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let limit = self.inner.request_timeout;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(UpstreamError::Timeout(format!(
                "upstream {:?} gave no complete answer within {limit:?}",
                self.inner.name
            )))
        })
    }

    /// Sends a request with the best credential known for `remote`'s scope (pull, or
    /// pull and push for a client made with [`Upstream::pushing`]); on a 401, answers the
    /// challenge and retries once.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        remote: &RepoName,
        accept: Option<&str>,
    ) -> Result<Response, UpstreamError> {
        self.send_with(method, url, remote, |req| {
            Ok(match accept {
                Some(accept) => req.header(ACCEPT, accept),
                None => req,
            })
        })
        .await
    }

    /// Like [`Upstream::send`], with the request completed by `build` (headers, body).
    /// `build` runs again for the retry after a 401; a streamed body that cannot be sent
    /// twice says so with an error.
    pub(crate) async fn send_with(
        &self,
        method: Method,
        url: &Url,
        remote: &RepoName,
        mut build: impl FnMut(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, UpstreamError>,
    ) -> Result<Response, UpstreamError> {
        let scope = format!("repository:{remote}:{}", self.actions);
        let mut credential = self.known_credential(&scope);
        let mut answered = false;
        loop {
            let mut req = build(self.inner.http.request(method.clone(), url.clone()))?;
            req = match (&credential, &self.inner.credentials) {
                (Credential::Bearer(token), _) => req.bearer_auth(token),
                (Credential::Basic, Some((user, password))) => req.basic_auth(user, Some(password)),
                _ => req,
            };
            let resp = req.send().await.map_err(UpstreamError::from_reqwest)?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if answered {
                // A token just issued and still refused (e.g. insufficient scope) is no
                // use to the next request either.
                self.inner.tokens.forget(&scope);
                return Err(UpstreamError::Auth(format!(
                    "{url}: still 401 after authenticating{}",
                    error_summary(resp).await
                )));
            }
            if matches!(credential, Credential::Bearer(_)) {
                self.inner.tokens.forget(&scope);
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            credential = self.answer(&challenges, &scope, url).await?;
            answered = true;
        }
    }

    fn known_credential(&self, scope: &str) -> Credential {
        if let Some(token) = self.inner.tokens.get(scope, Instant::now()) {
            Credential::Bearer(token)
        } else if self.inner.credentials.is_some() && self.inner.basic_upstream.load(Ordering::Relaxed) {
            Credential::Basic
        } else {
            Credential::None
        }
    }

    async fn answer(
        &self,
        challenges: &[Challenge],
        scope: &str,
        url: &Url,
    ) -> Result<Credential, UpstreamError> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self.fetch_token(bearer, scope).await?;
            return Ok(Credential::Bearer(token));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if self.inner.credentials.is_none() {
                return Err(UpstreamError::Auth(format!(
                    "{url}: the upstream wants Basic credentials and none are configured"
                )));
            }
            self.inner.basic_upstream.store(true, Ordering::Relaxed);
            return Ok(Credential::Basic);
        }
        Err(UpstreamError::Auth(format!(
            "{url}: 401 without a Bearer or Basic challenge"
        )))
    }

    /// Asks the challenge's realm for a token for `scope` (or for the scope the challenge
    /// names, if it names one) and caches it under `scope`.
    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<String, UpstreamError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| UpstreamError::Auth("Bearer challenge without a realm".into()))?;
        let mut realm_url = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| UpstreamError::Auth(format!("Bearer realm {realm:?} is not an http(s) URL")))?;
        {
            let mut query = realm_url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", challenge.param("scope").unwrap_or(scope));
            if let Some((user, _)) = &self.inner.credentials {
                query.append_pair("account", user);
            }
        }
        let mut req = self.inner.http.get(realm_url.clone());
        if let Some((user, password)) = &self.inner.credentials {
            req = req.basic_auth(user, Some(password));
        }
        tracing::debug!(upstream = %self.inner.name, %scope, realm, "fetching a token");
        let resp = req.send().await.map_err(UpstreamError::from_reqwest)?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let whose = if self.inner.credentials.is_some() {
                "the configured credentials"
            } else {
                "anonymous access"
            };
            return Err(UpstreamError::Auth(format!(
                "token server {realm} refused {whose} for {scope} (HTTP {}){}",
                status.as_u16(),
                error_summary(resp).await
            )));
        }
        if !status.is_success() && status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
            // Not "not found" for the caller: the manifest may well exist.
            return Err(UpstreamError::Auth(format!(
                "token server {realm} answered HTTP {}{}",
                status.as_u16(),
                error_summary(resp).await
            )));
        }
        let resp = check_status(resp).await?;
        let body = read_limited(resp, MAX_TOKEN_BODY)
            .await?
            .ok_or_else(|| UpstreamError::Auth(format!("token server {realm}: answer too large")))?;
        let (token, lifetime) = serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .and_then(TokenAnswer::into_token)
            .ok_or_else(|| UpstreamError::Auth(format!("token server {realm}: no token in its answer")))?;
        self.inner
            .tokens
            .put(scope, token.clone(), lifetime, Instant::now());
        Ok(token)
    }
}

/// Success passes; anything else becomes the matching error, with the upstream's OCI
/// error code and message when its body has them.
pub(crate) async fn check_status(resp: Response) -> Result<Response, UpstreamError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(UpstreamError::TooManyRequests { retry_after });
    }
    let url = resp.url().clone();
    let (code, message) = error_body(resp).await;
    let message = message.unwrap_or_else(|| {
        format!(
            "{url}: {}",
            status.canonical_reason().unwrap_or("no reason given")
        )
    });
    Err(match status {
        StatusCode::NOT_FOUND => UpstreamError::NotFound { code, message },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UpstreamError::Auth(format!(
            "{url}: HTTP {}{}: {message}",
            status.as_u16(),
            code.map(|c| format!(" {c}")).unwrap_or_default()
        )),
        _ => UpstreamError::Status {
            status: status.as_u16(),
            code,
            message,
        },
    })
}

/// The OCI error code and message of an error answer, if its body has them.
async fn error_body(resp: Response) -> (Option<String>, Option<String>) {
    match read_limited(resp, MAX_ERROR_BODY).await {
        Ok(Some(body)) => match oci_error(&body) {
            Some((code, message)) => (code, (!message.is_empty()).then_some(message)),
            None => (None, None),
        },
        _ => (None, None),
    }
}

/// `: CODE message` for an error answer, or nothing.
pub(crate) async fn error_summary(resp: Response) -> String {
    match error_body(resp).await {
        (None, None) => String::new(),
        (code, message) => format!(
            ": {}{}",
            code.unwrap_or_default(),
            message.map(|m| format!(" {m}")).unwrap_or_default()
        ),
    }
}

/// Reads a whole body of at most `max` bytes; `None` if it is longer.
pub(crate) async fn read_limited(mut resp: Response, max: u64) -> Result<Option<Bytes>, UpstreamError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(UpstreamError::from_reqwest)? {
        if (buf.len() + chunk.len()) as u64 > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

fn too_large(url: &Url, max: u64) -> UpstreamError {
    UpstreamError::Invalid(format!("{url}: manifest larger than {max} bytes"))
}

pub(crate) fn content_digest(headers: &HeaderMap) -> Result<Option<Digest>, UpstreamError> {
    let Some(v) = headers.get(header::CONTENT_DIGEST) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or_default().trim();
    s.parse()
        .map(Some)
        .map_err(|e| UpstreamError::Invalid(format!("{}: {e}", header::CONTENT_DIGEST)))
}

pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, UpstreamError> {
    let Some(v) = headers.get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| UpstreamError::Invalid(format!("Content-Length {v:?} is not a number")))
}

pub(crate) fn manifest_media_type(headers: &HeaderMap, url: &Url) -> Result<String, UpstreamError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = media::essence(content_type);
    if media::MANIFEST_TYPES.contains(&essence) {
        Ok(essence.to_string())
    } else {
        Err(UpstreamError::Invalid(format!(
            "{url}: media type {content_type:?} is not a manifest type berth stores"
        )))
    }
}

/// The body as a stream that ends cleanly only after exactly `expected` bytes (when
/// known); reqwest's `read_timeout` bounds each wait for a chunk.
pub(crate) fn exact_length(
    resp: Response,
    expected: Option<u64>,
    url: Url,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    struct State {
        inner: BoxStream<'static, reqwest::Result<Bytes>>,
        got: u64,
        expected: Option<u64>,
        url: Url,
        done: bool,
    }
    let state = State {
        inner: resp.bytes_stream().boxed(),
        got: 0,
        expected,
        url,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let item = match s.inner.next().await {
            Some(Ok(chunk)) => {
                s.got += chunk.len() as u64;
                match s.expected {
                    Some(e) if s.got > e => Err(UpstreamError::Body(format!(
                        "{}: more than the {e} bytes announced",
                        s.url
                    ))),
                    _ => Ok(chunk),
                }
            }
            Some(Err(e)) => {
                let e = if e.url().is_none() {
                    e.with_url(s.url.clone())
                } else {
                    e
                };
                Err(UpstreamError::from_reqwest(e))
            }
            None => match s.expected {
                Some(e) if s.got < e => Err(UpstreamError::Body(format!(
                    "{}: body ended after {} of {e} bytes",
                    s.url, s.got
                ))),
                _ => return None,
            },
        };
        s.done = item.is_err();
        Some((item, s))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str, library_prefix: bool) -> Result<Upstream, UpstreamError> {
        Upstream::new(UpstreamConfig {
            name: "test".into(),
            url: url.into(),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            library_prefix,
        })
    }

    #[test]
    fn urls() {
        assert!(upstream("http://127.0.0.1:5000", false).is_ok());
        assert!(upstream("https://registry.example/", false).is_ok());
        for bad in [
            "ftp://x",
            "http://u:p@x",
            "http://x/prefix",
            "http://x/?q",
            "not a url",
        ] {
            let e = upstream(bad, false).unwrap_err();
            assert!(matches!(e, UpstreamError::Invalid(_)), "{bad}: {e}");
            assert!(!e.to_string().contains(":p@"), "{e}");
        }
    }

    #[test]
    fn library_prefix() {
        let name = |s: &str| s.parse::<RepoName>().unwrap();
        let hub = upstream("https://hub.example", true).unwrap();
        assert_eq!(hub.remote_repo(&name("alpine")).unwrap(), name("library/alpine"));
        assert_eq!(hub.remote_repo(&name("user/app")).unwrap(), name("user/app"));
        let long = "a".repeat(250);
        assert!(matches!(
            hub.remote_repo(&name(&long)),
            Err(UpstreamError::Invalid(_))
        ));
        let other = upstream("https://other.example", false).unwrap();
        assert_eq!(other.remote_repo(&name("alpine")).unwrap(), name("alpine"));
    }

    #[test]
    fn accept_lists_every_stored_type() {
        let accept = manifest_accept();
        for t in media::MANIFEST_TYPES {
            assert!(accept.contains(t));
        }
    }

    #[test]
    fn debug_redacts_the_password() {
        let cfg = UpstreamConfig {
            name: "n".into(),
            url: "http://x".into(),
            username: Some("alice".into()),
            password: Some("hunter2".into()),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            library_prefix: false,
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
