//! The `/v2` path grammar, parsed once for the server and built once for clients.

use crate::digest::Digest;
use crate::name::{NameError, Reference, RepoName};

/// An upload session id: 1 to 64 characters of `[A-Za-z0-9-]` (berth issues UUIDs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn parse(s: &str) -> Option<UploadId> {
        (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .then(|| UploadId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    TagsList(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no such endpoint: /v2/{0}")]
    NotFound(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("upload id {0:?} is not one this registry issues")]
    UploadId(String),
}

impl Route {
    /// The endpoint's name, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::TagsList(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    /// The repository the route addresses, if any.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::TagsList(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }

    /// Parses the part of the raw (still percent-encoded) path after `/v2/`.
    pub fn parse(rest: &str) -> Result<Route, RouteError> {
        match rest {
            "" => return Ok(Route::Base),
            "_catalog" => return Ok(Route::Catalog),
            _ => {}
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |k: usize| -> Result<RepoName, RouteError> {
            if k == 0 {
                return Err(RouteError::NotFound(rest.to_string()));
            }
            Ok(segs[..k].join("/").parse()?)
        };
        let not_found = || RouteError::NotFound(rest.to_string());
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Route::TagsList(name(n - 2)?));
        }
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
            return Ok(Route::UploadStart(name(n - 2)?));
        }
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let repo = name(n - 3)?;
            if segs[n - 1].is_empty() {
                return Ok(Route::UploadStart(repo));
            }
            let id =
                UploadId::parse(segs[n - 1]).ok_or_else(|| RouteError::UploadId(segs[n - 1].to_string()))?;
            return Ok(Route::Upload(repo, id));
        }
        if n >= 2 {
            let last = segs[n - 1];
            match segs[n - 2] {
                "manifests" => return Ok(Route::Manifest(name(n - 2)?, last.parse()?)),
                "blobs" => {
                    let repo = name(n - 2)?;
                    let digest = last.parse().map_err(NameError::from)?;
                    return Ok(Route::Blob(repo, digest));
                }
                "referrers" => {
                    let repo = name(n - 2)?;
                    let digest = last.parse().map_err(NameError::from)?;
                    return Ok(Route::Referrers(repo, digest));
                }
                _ => {}
            }
        }
        Err(not_found())
    }
}

/// Paths as they appear in `Location` headers and client requests.
pub mod path {
    use super::UploadId;
    use crate::{Digest, RepoName};

    pub fn blob(name: &RepoName, digest: &Digest) -> String {
        format!("/v2/{name}/blobs/{digest}")
    }
    pub fn uploads(name: &RepoName) -> String {
        format!("/v2/{name}/blobs/uploads/")
    }
    pub fn upload(name: &RepoName, id: &UploadId) -> String {
        format!("/v2/{name}/blobs/uploads/{id}")
    }
    pub fn manifest(name: &RepoName, reference: &impl std::fmt::Display) -> String {
        format!("/v2/{name}/manifests/{reference}")
    }
    pub fn tags(name: &RepoName) -> String {
        format!("/v2/{name}/tags/list")
    }
    pub fn referrers(name: &RepoName, digest: &Digest) -> String {
        format!("/v2/{name}/referrers/{digest}")
    }
    pub const CATALOG: &str = "/v2/_catalog";
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn check(input: &str, expect: &str) {
        let got = match Route::parse(input) {
            Ok(r) => format!("{r:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            got.contains(expect),
            "{input:?} parsed to {got}, expected {expect}"
        );
    }

    #[test]
    fn grammar() {
        check("", "Base");
        check("_catalog", "Catalog");
        check("a/b/tags/list", "TagsList(\"a/b\")");
        check("a/blobs/uploads/", "UploadStart(\"a\")");
        check("a/blobs/uploads", "UploadStart(\"a\")");
        check("a/b/blobs/uploads/abc-1", "Upload(\"a/b\", UploadId(\"abc-1\"))");
        check("a/manifests/latest", "Manifest(\"a\", Tag(\"latest\"))");
        check(&format!("x/y/manifests/{D}"), "Manifest(\"x/y\", Digest(");
        check(&format!("x/blobs/{D}"), "Blob(\"x\"");
        check(&format!("x/referrers/{D}"), "Referrers(\"x\"");
        check("x/blobs/manifests/v1", "Manifest(\"x/blobs\"");
        check("manifests/latest", "error: no such endpoint");
        check("x/unknown/y", "error: no such endpoint");
        check("../etc/manifests/latest", "error: repository name");
        check("a%2fb/manifests/latest", "error: repository name");
        check("a/blobs/sha256:zz", "error: digest");
        check("a/manifests/-bad", "error: tag");
        check("a/blobs/uploads/..", "error: upload id");
    }
}
