//! `/v2`: one dispatcher over the grammar in berth-oci, one handler per endpoint.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_oci::media::{self, header as oh};
use berth_oci::route::path;
use berth_oci::{Digest, ErrorCode, Reference, RepoName, Route, UploadId};
use berth_registry::cache::Located;
use berth_registry::{BlobBody, Listing, RegistryError};
use berth_store::ByteRange;
use serde_json::json;

use crate::App;
use crate::error::{ApiError, at_upload};

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let mut namespace = None;
    let mut resp = match handle(&app, req, &mut namespace).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut()
        .insert(oh::API_VERSION, HeaderValue::from_static(oh::API_VERSION_VALUE));
    if let Some(ns) = namespace.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert(oh::OCI_NAMESPACE, ns);
    }
    resp
}

struct Params(HashMap<String, String>);

impl Params {
    fn of(req: &Request) -> Params {
        Params(
            Query::<HashMap<String, String>>::try_from_uri(req.uri())
                .map(|q| q.0)
                .unwrap_or_default(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn digest(&self, k: &str) -> Result<Option<Digest>> {
        self.get(k)
            .map(|s| {
                s.parse::<Digest>().map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, e.to_string())
                })
            })
            .transpose()
    }

    fn n(&self) -> Result<Option<u32>> {
        self.get("n")
            .map(|s| {
                s.parse::<u32>().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::PaginationNumberInvalid,
                        format!("n={s:?} is not a number of entries (0 to 4294967295)"),
                    )
                })
            })
            .transpose()
    }
}

async fn handle(app: &App, req: Request, namespace: &mut Option<String>) -> Result<Response> {
    let p = req.uri().path();
    let rest = p.strip_prefix("/v2/").unwrap_or_default();
    let route = Route::parse(rest)?;
    let m = req.method().clone();
    let params = Params::of(&req);
    let caller = crate::auth::caller(app, crate::auth::Facts::of(&req)).await?;
    let located = match route.name() {
        Some(name) => Some(app.registry.locate(name, params.get("ns"))?),
        None => None,
    };
    if let Some(c) = &caller {
        match (&located, crate::auth::needed(&route, &m)) {
            (Some(loc), Some(need)) => c.check(app, loc, need)?,
            // `/v2/` is how clients discover that they must sign in.
            _ if route == Route::Base && c.who.is_anonymous() && c.who.token.is_none() => {
                return Err(crate::auth::sign_in(app, c, None, "authentication required"));
            }
            _ => {}
        }
    }
    let may_mount = |from: Option<&RepoName>| match &caller {
        None => true,
        Some(c) => from
            .and_then(|f| app.registry.locate(f, None).ok())
            .is_some_and(|l| c.allowed(app, &l).contains(berth_auth::Action::Pull)),
    };
    *namespace = located
        .as_ref()
        .and_then(Located::cached)
        .map(|c| c.source.name.clone());
    let loc = || located.as_ref().expect("routes with a name are located");
    let name = || loc().local();
    use Method as M;
    match (route, &m) {
        (Route::Base, &M::GET | &M::HEAD) => Ok(json_response(StatusCode::OK, &json!({}))),
        (Route::Catalog, &M::GET) => catalog(app, &params, caller.as_ref()).await,
        (Route::TagsList(_), &M::GET) => tags(app, name(), &params).await,
        (Route::Manifest(_, r), &M::GET) => get_manifest(app, loc(), &r, false).await,
        (Route::Manifest(_, r), &M::HEAD) => get_manifest(app, loc(), &r, true).await,
        (Route::Manifest(_, r), &M::PUT) => put_manifest(app, hosted(loc())?, &r, req).await,
        (Route::Manifest(_, r), &M::DELETE) => {
            app.registry.delete_manifest(name(), &r).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        (Route::Blob(_, d), &M::GET) => get_blob(app, loc(), &d, req.headers()).await,
        (Route::Blob(_, d), &M::HEAD) => head_blob(app, loc(), &d).await,
        (Route::Blob(_, d), &M::DELETE) => {
            app.registry.delete_blob(name(), &d).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        (Route::UploadStart(_), &M::POST) => start_upload(app, hosted(loc())?, &params, req, may_mount).await,
        (Route::Upload(_, id), &M::GET) => {
            let name = hosted(loc())?;
            let size = app.registry.upload_status(name, &id).await?;
            Ok(upload_state(StatusCode::NO_CONTENT, name, &id, size))
        }
        (Route::Upload(_, id), &M::PATCH) => patch_upload(app, hosted(loc())?, &id, req).await,
        (Route::Upload(_, id), &M::PUT) => put_upload(app, hosted(loc())?, &id, &params, req).await,
        (Route::Upload(_, id), &M::DELETE) => {
            let name = hosted(loc())?;
            app.registry
                .cancel_upload(name, &id)
                .await
                .map_err(|e| at_upload(e, name, &id))?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (Route::Referrers(_, d), &M::GET) => referrers(app, name(), &d, &params).await,
        (route, m) => Err(ApiError::unsupported(m, endpoint_name(&route))),
    }
}

/// Writes go to hosted repositories only; a cache is filled from its upstream.
fn hosted(loc: &Located) -> Result<&RepoName> {
    match loc {
        Located::Hosted(name) => Ok(name),
        Located::Cached(c) => Err(RegistryError::CacheReadOnly(c.local.clone()).into()),
    }
}

fn endpoint_name(r: &Route) -> &'static str {
    match r {
        Route::Base => "/v2/",
        Route::Catalog => "the catalog",
        Route::TagsList(_) => "the tags list",
        Route::Manifest(..) => "manifests",
        Route::Blob(..) => "blobs",
        Route::UploadStart(_) => "the uploads endpoint (start an upload with POST)",
        Route::Upload(..) => "an upload",
        Route::Referrers(..) => "the referrers list",
    }
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(v).expect("JSON values serialize");
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn set(r: &mut Response, name: impl axum::http::header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn next_link(r: &mut Response, base: &str, listing: &Listing, n: Option<u32>) {
    if let (true, Some(last)) = (listing.more, listing.items.last()) {
        let n = n.map(|n| format!("n={n}&")).unwrap_or_default();
        set(r, header::LINK, &format!("<{base}?{n}last={last}>; rel=\"next\""));
    }
}

async fn catalog(app: &App, params: &Params, caller: Option<&crate::auth::Caller>) -> Result<Response> {
    let n = params.n()?;
    let listing = match caller {
        None => app.registry.catalog(n, params.get("last")).await?,
        Some(c) => visible_catalog(app, c, n, params.get("last")).await?,
    };
    let mut r = json_response(StatusCode::OK, &json!({"repositories": listing.items}));
    next_link(&mut r, path::CATALOG, &listing, n);
    Ok(r)
}

/// The catalog as `c` may see it: only repositories it may pull, paged over what is visible.
async fn visible_catalog(
    app: &App,
    c: &crate::auth::Caller,
    n: Option<u32>,
    last: Option<&str>,
) -> Result<Listing> {
    let want = n.map_or(usize::MAX, |n| n as usize);
    let mut out = Listing {
        items: Vec::new(),
        more: false,
    };
    let mut after = last.map(str::to_string);
    loop {
        let page = app.registry.catalog(Some(1000), after.as_deref()).await?;
        for name in page.items {
            after = Some(name.clone());
            let visible = name
                .parse::<RepoName>()
                .ok()
                .and_then(|r| app.registry.locate(&r, None).ok())
                .is_some_and(|l| c.allowed(app, &l).contains(berth_auth::Action::Pull));
            if !visible {
                continue;
            }
            if out.items.len() == want {
                out.more = true;
                return Ok(out);
            }
            out.items.push(name);
        }
        if !page.more {
            return Ok(out);
        }
    }
}

async fn tags(app: &App, name: &RepoName, params: &Params) -> Result<Response> {
    let n = params.n()?;
    let listing = app.registry.tags(name, n, params.get("last")).await?;
    let mut r = json_response(
        StatusCode::OK,
        &json!({"name": name.as_str(), "tags": listing.items}),
    );
    next_link(&mut r, &path::tags(name), &listing, n);
    Ok(r)
}

async fn get_manifest(app: &App, loc: &Located, r: &Reference, head: bool) -> Result<Response> {
    let (m, stale) = match loc {
        Located::Hosted(name) => (app.registry.get_manifest(name, r).await?, false),
        Located::Cached(c) => {
            let served = app.registry.cached_manifest(c, r).await?;
            (served.manifest, served.stale)
        }
    };
    let len = m.body.len();
    let mut resp = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(m.body))
    };
    let digest = m.digest.to_string();
    set(&mut resp, header::CONTENT_TYPE, &m.media_type);
    set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
    set(&mut resp, oh::CONTENT_DIGEST, &digest);
    set(&mut resp, header::ETAG, &format!("\"{digest}\""));
    if let Some(s) = &m.subject {
        set(&mut resp, oh::OCI_SUBJECT, &s.to_string());
    }
    if stale {
        set(&mut resp, header::WARNING, "110 berth \"Response is Stale\"");
    }
    Ok(resp)
}

async fn put_manifest(app: &App, name: &RepoName, r: &Reference, req: Request) -> Result<Response> {
    let limit = app.registry.limits().max_manifest_bytes;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(RegistryError::ManifestTooLarge { size, limit }.into());
    }
    let body = axum::body::to_bytes(req.into_body(), limit as usize)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .map(|s| s.to_string().contains("length limit"))
                .unwrap_or(false)
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::from(RegistryError::ManifestTooLarge {
                    size: limit + 1,
                    limit,
                })
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestInvalid,
                    format!("the manifest body could not be read: {e}"),
                )
            }
        })?;
    let pushed = app
        .registry
        .put_manifest(name, r, content_type.as_deref(), &body)
        .await?;
    let tag = match r {
        Reference::Tag(t) => Some(t.to_string()),
        Reference::Digest(_) => None,
    };
    app.registry
        .verify_after_push(name.clone(), pushed.digest.clone(), tag);
    let mut resp = empty(StatusCode::CREATED);
    let digest = pushed.digest.to_string();
    set(&mut resp, header::LOCATION, &path::manifest(name, &digest));
    set(&mut resp, oh::CONTENT_DIGEST, &digest);
    if let Some(s) = pushed.subject {
        set(&mut resp, oh::OCI_SUBJECT, &s.to_string());
    }
    Ok(resp)
}

/// `Range: bytes=a-b | a- | -n`. Syntax we do not serve (several ranges, other units) is
/// ignored, as RFC 9110 allows; a range outside the blob is 416.
fn parse_range(h: Option<&HeaderValue>, size: u64) -> std::result::Result<Option<ByteRange>, RegistryError> {
    let Some(spec) = h
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = RegistryError::RangeInvalid { size };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else { return Ok(None) };
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            let Ok(end) = b.parse::<u64>() else {
                return Ok(None);
            };
            if end < start {
                return Ok(None);
            }
            end.min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size {
        return Err(unsatisfiable);
    }
    Ok(Some(ByteRange { start, end }))
}

fn blob_headers(r: &mut Response, digest: &Digest, len: u64) {
    let d = digest.to_string();
    set(r, header::CONTENT_LENGTH, &len.to_string());
    set(r, header::CONTENT_TYPE, "application/octet-stream");
    set(r, oh::CONTENT_DIGEST, &d);
    set(r, header::ETAG, &format!("\"{d}\""));
    set(r, header::ACCEPT_RANGES, "bytes");
    set(r, header::CACHE_CONTROL, "max-age=31536000, immutable");
}

async fn head_blob(app: &App, loc: &Located, d: &Digest) -> Result<Response> {
    let size = match loc {
        Located::Hosted(name) => app.registry.blob_size(name, d).await?,
        Located::Cached(c) => app.registry.cached_blob_size(c, d).await?,
    };
    let mut r = Response::new(Body::empty());
    blob_headers(&mut r, d, size);
    Ok(r)
}

async fn get_blob(app: &App, loc: &Located, d: &Digest, headers: &HeaderMap) -> Result<Response> {
    let range_header = headers.get(header::RANGE);
    // storage.s3.redirect: a whole blob the store holds goes out as a presigned URL, after
    // the access check (done before this handler) and the existence checks a served read
    // makes. Ranges stay here: clients resuming a download expect 206 from the registry.
    if range_header.is_none()
        && let Some(url) = app.registry.blob_redirect(loc, d).await?
    {
        let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
        set(&mut r, header::LOCATION, &url);
        set(&mut r, oh::CONTENT_DIGEST, &d.to_string());
        return Ok(r);
    }
    let range = |size| parse_range(range_header, size);
    let (size, range, body) = match loc {
        Located::Hosted(name) => app.registry.open_blob(name, d, range).await?,
        Located::Cached(c) => app.registry.open_cached_blob(c, d, range).await?,
    };
    let body = match body {
        BlobBody::Stream(read) => Body::from_stream(read.body),
        BlobBody::Inline(bytes) => Body::from(bytes),
    };
    let mut r = Response::new(body);
    match range {
        Some(range) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            blob_headers(&mut r, d, range.len());
            set(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", range.start, range.end),
            );
        }
        None => blob_headers(&mut r, d, size),
    }
    Ok(r)
}

fn upload_state(status: StatusCode, name: &RepoName, id: &UploadId, size: u64) -> Response {
    let mut r = empty(status);
    set(&mut r, header::LOCATION, &path::upload(name, id));
    set(&mut r, header::RANGE, &format!("0-{}", size.saturating_sub(1)));
    set(&mut r, oh::UPLOAD_UUID, id.as_str());
    r
}

fn blob_created(name: &RepoName, d: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, header::LOCATION, &path::blob(name, d));
    set(&mut r, oh::CONTENT_DIGEST, &d.to_string());
    r
}

fn body_stream(req: Request) -> impl futures_util::Stream<Item = Result<bytes::Bytes, axum::Error>> + Send {
    crate::limits::body_stream(req)
}

async fn start_upload(
    app: &App,
    name: &RepoName,
    params: &Params,
    req: Request,
    may_mount: impl Fn(Option<&RepoName>) -> bool,
) -> Result<Response> {
    if let Some(d) = params.digest("mount")? {
        let from = params
            .get("from")
            .map(|f| f.parse::<RepoName>())
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, e.to_string()))?;
        // Mounting from a repository the caller may not pull would reveal its blobs.
        if may_mount(from.as_ref()) && app.registry.mount(name, &d, from.as_ref()).await?.is_some() {
            return Ok(blob_created(name, &d));
        }
        // Nothing to mount: the spec says to open an ordinary upload session instead.
    } else if let Some(d) = params.digest("digest")? {
        app.registry.upload_monolithic(name, &d, body_stream(req)).await?;
        return Ok(blob_created(name, &d));
    }
    let id = app.registry.start_upload(name).await?;
    Ok(upload_state(StatusCode::ACCEPTED, name, &id, 0))
}

/// `Content-Range: <start>-<end>` (OCI), also accepted with a `bytes ` prefix.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {v:?} is not of the form <start>-<end>"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes")
        .map(|s| s.trim_start_matches([' ', '=']))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    Ok(Some((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    )))
}

async fn patch_upload(app: &App, name: &RepoName, id: &UploadId, req: Request) -> Result<Response> {
    let range = content_range(req.headers())?;
    let size = app
        .registry
        .upload_chunk(name, id, range, body_stream(req))
        .await
        .map_err(|e| at_upload(e, name, id))?;
    Ok(upload_state(StatusCode::ACCEPTED, name, id, size))
}

async fn put_upload(
    app: &App,
    name: &RepoName,
    id: &UploadId,
    params: &Params,
    req: Request,
) -> Result<Response> {
    let Some(d) = params.digest("digest")? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "completing an upload needs ?digest=<algorithm>:<hex> naming the blob's digest",
        ));
    };
    app.registry
        .finish_upload(name, id, &d, body_stream(req))
        .await
        .map_err(|e| at_upload(e, name, id))?;
    Ok(blob_created(name, &d))
}

async fn referrers(app: &App, name: &RepoName, d: &Digest, params: &Params) -> Result<Response> {
    let filter = params.get("artifactType");
    let manifests = app.registry.referrers(name, d, filter).await?;
    let mut r = json_response(
        StatusCode::OK,
        &json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests}),
    );
    set(&mut r, header::CONTENT_TYPE, media::OCI_INDEX);
    if filter.is_some() {
        set(&mut r, oh::OCI_FILTERS_APPLIED, "artifactType");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(h: &str, size: u64, expect: &str) {
        let v = HeaderValue::from_str(h).unwrap();
        let got = match parse_range(Some(&v), size) {
            Ok(Some(r)) => format!("{}-{}", r.start, r.end),
            Ok(None) => "whole".into(),
            Err(_) => "416".into(),
        };
        assert_eq!(got, expect, "Range {h:?} on {size} bytes");
    }

    #[test]
    fn ranges() {
        check("bytes=0-9", 100, "0-9");
        check("bytes=90-", 100, "90-99");
        check("bytes=90-200", 100, "90-99");
        check("bytes=-10", 100, "90-99");
        check("bytes=-200", 100, "0-99");
        check("bytes=100-", 100, "416");
        check("bytes=-0", 100, "416");
        check("bytes=0-0", 0, "416");
        check("bytes=5-1", 100, "whole");
        check("bytes=0-1,5-6", 100, "whole");
        check("items=0-1", 100, "whole");
        check("bytes=x-1", 100, "whole");
    }
}
