//! What a copy needs beyond pulling: ranged blob reads, blob uploads (monolithic or in
//! chunks, with cross-repository mounts and upload status for resuming), manifest pushes,
//! referrers, the catalog and tag lists.

use berth_oci::media::header;
use berth_oci::route::path;
use berth_oci::{Digest, Reference, RepoName};
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, LOCATION, RANGE};
use reqwest::{Body, Method, Response, StatusCode, Url};

use crate::client::{
    BlobStream, Upstream, check_status, content_digest, content_length, exact_length, read_limited,
};
use crate::error::UpstreamError;

/// Where `start_upload` left us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStart {
    /// The registry linked the blob from the other repository: nothing to send.
    Mounted,
    /// An upload session: send the bytes to this URL.
    Session(Url),
}

/// What a manifest push answered.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<Digest>,
    /// `OCI-Subject`: the registry indexed the manifest's subject for the referrers API.
    pub subject_indexed: bool,
}

/// Catalog and tag list pages.
const PAGE: usize = 1000;

/// A catalog page (`repositories`) or a tag list page (`tags`).
#[derive(serde::Deserialize)]
struct ListPage {
    repositories: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}
/// Catalog and tag list bodies are small JSON; more than this is not what we asked for.
const MAX_LIST_BODY: u64 = 16 << 20;

impl Upstream {
    /// `GET` a blob from byte `offset` on (`Range: bytes=offset-`). A registry that
    /// ignores the range and answers 200 has its first `offset` bytes dropped here, so the
    /// stream always starts at `offset`; `size` is then what remains.
    pub async fn get_blob_from(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, UpstreamError> {
        if offset == 0 {
            return self.get_blob(repo, digest).await;
        }
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::blob(&remote, digest))?;
        let resp = self
            .bounded(async {
                let resp = self
                    .send_with(Method::GET, &url, &remote, |r| {
                        Ok(r.header(RANGE, format!("bytes={offset}-")))
                    })
                    .await?;
                check_status(resp).await
            })
            .await?;
        let len = content_length(resp.headers())?;
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            return Ok(BlobStream {
                size: len,
                body: exact_length(resp, len, url),
            });
        }
        // 200: the whole blob; skip what the caller already has.
        let body = exact_length(resp, len, url);
        let mut skip = offset;
        let body = body
            .filter_map(move |chunk| {
                let out = match chunk {
                    Ok(c) if skip >= c.len() as u64 => {
                        skip -= c.len() as u64;
                        None
                    }
                    Ok(c) => {
                        let c = c.slice(skip as usize..);
                        skip = 0;
                        Some(Ok(c))
                    }
                    Err(e) => Some(Err(e)),
                };
                std::future::ready(out)
            })
            .boxed();
        Ok(BlobStream {
            size: len.map(|l| l.saturating_sub(offset)),
            body,
        })
    }

    /// `HEAD` a blob: its size, or `None` when the registry does not have it.
    pub async fn blob_exists(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        match self.head_blob(repo, digest).await {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `HEAD` a manifest: its digest and media type, or `None` when there is none.
    pub async fn manifest_exists(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<crate::ManifestHead>, UpstreamError> {
        match self.head_manifest(repo, reference).await {
            Ok(h) => Ok(Some(h)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`, with `?mount=<digest>&from=<repo>` when `mount`
    /// names a repository of this registry that holds the blob.
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        mount: Option<(&Digest, &RepoName)>,
    ) -> Result<UploadStart, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let mut url = self.url(&path::uploads(&remote))?;
        if let Some((digest, from)) = mount {
            let from = self.remote_repo(from)?;
            url.query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", from.as_str());
        }
        self.bounded(async {
            let resp = self
                .send_with(Method::POST, &url, &remote, |r| Ok(r.header(CONTENT_LENGTH, "0")))
                .await?;
            let resp = check_status(resp).await?;
            if resp.status() == StatusCode::CREATED && mount.is_some() {
                return Ok(UploadStart::Mounted);
            }
            Ok(UploadStart::Session(self.location(&resp, &url)?))
        })
        .await
    }

    /// How many bytes an upload session holds (`GET` its location, `Range: 0-<last>`);
    /// `None` when the registry no longer knows the session.
    pub async fn upload_status(&self, repo: &RepoName, session: &Url) -> Result<Option<u64>, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        self.check_same_registry(session)?;
        self.bounded(async {
            let resp = self.send_with(Method::GET, session, &remote, Ok).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = check_status(resp).await?;
            Ok(Some(range_end(&resp).unwrap_or(0)))
        })
        .await
    }

    /// `PATCH` `len` bytes at `offset` into an upload session; returns the session's next
    /// location (registries may move it on every chunk).
    pub async fn upload_chunk(
        &self,
        repo: &RepoName,
        session: &Url,
        offset: u64,
        len: u64,
        body: Body,
    ) -> Result<Url, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        self.check_same_registry(session)?;
        let mut body = Some(body);
        let resp = self
            .send_with(Method::PATCH, session, &remote, |r| {
                let body = body.take().ok_or_else(|| {
                    UpstreamError::Auth(format!("{session}: refused a chunk already streamed (HTTP 401)"))
                })?;
                Ok(r.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len)
                    .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                    .body(body))
            })
            .await?;
        let resp = check_status(resp).await?;
        self.location(&resp, session)
    }

    /// `PUT` an upload session `?digest=`, with the last `len` bytes as body (0: none).
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        session: &Url,
        digest: &Digest,
        offset: u64,
        len: u64,
        body: Body,
    ) -> Result<(), UpstreamError> {
        let remote = self.remote_repo(repo)?;
        self.check_same_registry(session)?;
        let mut url = session.clone();
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut body = Some(body);
        let resp = self
            .send_with(Method::PUT, &url, &remote, |r| {
                let body = body.take().ok_or_else(|| {
                    UpstreamError::Auth(format!("{url}: refused a body already streamed (HTTP 401)"))
                })?;
                let r = r
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len);
                let r = if len > 0 {
                    r.header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                } else {
                    r
                };
                Ok(r.body(body))
            })
            .await?;
        check_status(resp).await?;
        Ok(())
    }

    /// `PUT` a manifest's bytes under `reference` with its exact media type.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<PushedManifest, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::manifest(&remote, reference))?;
        self.bounded(async {
            let resp = self
                .send_with(Method::PUT, &url, &remote, |r| {
                    Ok(r.header(CONTENT_TYPE, media_type).body(bytes.clone()))
                })
                .await?;
            let resp = check_status(resp).await?;
            Ok(PushedManifest {
                digest: content_digest(resp.headers())?,
                subject_indexed: resp.headers().contains_key(header::OCI_SUBJECT),
            })
        })
        .await
    }

    /// The referrers index of `digest` (`GET /v2/<repo>/referrers/<digest>`), or `None`
    /// when the registry has no referrers API (404).
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&path::referrers(&remote, digest))?;
        self.bounded(async {
            let resp = self.send(Method::GET, &url, &remote, None).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = check_status(resp).await?;
            read_limited(resp, max_bytes)
                .await?
                .map(Some)
                .ok_or_else(|| UpstreamError::Invalid(format!("{url}: referrers index too large")))
        })
        .await
    }

    /// Every repository in the catalog (`/v2/_catalog`, following `Link` pages).
    pub async fn catalog(&self) -> Result<Vec<String>, UpstreamError> {
        let url = self.url(&format!("{}?n={PAGE}", path::CATALOG))?;
        // The catalog scope is not a repository one; any name serves for the token
        // cache key, the challenge names the scope it wants.
        let any: RepoName = "catalog".parse().expect("valid name");
        self.list_all(url, &any, "catalog", |p| p.repositories).await
    }

    /// Every tag of `repo` (`/v2/<repo>/tags/list`, following `Link` pages).
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, UpstreamError> {
        let remote = self.remote_repo(repo)?;
        let url = self.url(&format!("{}?n={PAGE}", path::tags(&remote)))?;
        self.list_all(url, &remote, "tag list", |p| p.tags).await
    }

    /// The names of every page from `url` on, following `Link` headers until a page
    /// is empty or has no next one (bounded); `items` picks the page's list, `what`
    /// names it in errors.
    async fn list_all(
        &self,
        mut url: Url,
        scope: &RepoName,
        what: &str,
        items: fn(ListPage) -> Option<Vec<String>>,
    ) -> Result<Vec<String>, UpstreamError> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let (body, next) = self.list_page(&url, scope).await?;
            let page: ListPage = serde_json::from_slice(&body)
                .map_err(|e| UpstreamError::Invalid(format!("{url}: {what} is not JSON: {e}")))?;
            let page = items(page).unwrap_or_default();
            if page.is_empty() {
                break;
            }
            out.extend(page);
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(out)
    }

    async fn list_page(&self, url: &Url, remote: &RepoName) -> Result<(Bytes, Option<Url>), UpstreamError> {
        self.bounded(async {
            let resp = self.send(Method::GET, url, remote, None).await?;
            let resp = check_status(resp).await?;
            let next = next_link(&resp, url);
            let body = read_limited(resp, MAX_LIST_BODY).await?.ok_or_else(|| {
                UpstreamError::Invalid(format!("{url}: list larger than {MAX_LIST_BODY} bytes"))
            })?;
            Ok((body, next))
        })
        .await
    }

    /// The `Location` of an upload answer, resolved against the request URL.
    fn location(&self, resp: &Response, request: &Url) -> Result<Url, UpstreamError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                UpstreamError::Invalid(format!(
                    "{request}: HTTP {} without a Location header",
                    resp.status().as_u16()
                ))
            })?;
        let url = request
            .join(loc)
            .map_err(|e| UpstreamError::Invalid(format!("{request}: Location {loc:?}: {e}")))?;
        self.check_same_registry(&url)?;
        Ok(url)
    }

    /// Upload locations come from the registry's answers (or a state file); credentials
    /// go only to the registry configured.
    fn check_same_registry(&self, url: &Url) -> Result<(), UpstreamError> {
        let base = self.url("/")?;
        if url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
        {
            Ok(())
        } else {
            Err(UpstreamError::Invalid(format!(
                "upload location {} is not on {}",
                url.as_str().split('?').next().unwrap_or_default(),
                self.base_url()
            )))
        }
    }
}

/// `Range: 0-<last>` of an upload status: the bytes held (`0-0` is read as none: registries
/// send it for an empty session, and our chunks are never one byte).
fn range_end(resp: &Response) -> Option<u64> {
    let v = resp.headers().get(RANGE)?.to_str().ok()?;
    let v = v.trim().trim_start_matches("bytes=");
    let (_, end) = v.split_once('-')?;
    let end: u64 = end.trim().parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

/// The `rel="next"` target of a `Link` header, resolved against `base`.
fn next_link(resp: &Response, base: &Url) -> Option<Url> {
    let v = resp.headers().get(LINK)?.to_str().ok()?;
    v.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        base.join(target).ok()
    })
}
