//! Cached repositories: pull-through from configured upstreams.
//!
//! A cached repository is named `<upstream name>/<repository as the upstream knows it>`
//! (`docker.io/library/nginx`), reached by that path or, from containerd mirrors, by
//! `<repository>?ns=<upstream name>`. Only configured upstreams are ever contacted.
//!
//! - Manifests by digest are immutable: fetched once, verified, served from the cache.
//! - Manifests by tag are served while younger than `manifest_ttl`; then a HEAD to the
//!   upstream revalidates them by digest. Upstream failures serve the cached copy within
//!   `stale_if_error` ([`Served::stale`]); an upstream 404 never deletes a cached tag.
//! - Blobs are filled once per digest at a time ([`fill`]), streamed to every waiting
//!   client as they arrive, and committed only when their digest verifies.

pub(crate) mod fill;
mod manifest;

use std::sync::Arc;
use std::time::Duration;

use berth_oci::RepoName;
use berth_upstream::Upstream;

use crate::{Registry, RegistryError, Result};

pub use manifest::Served;

/// One configured upstream and its cache policy.
pub struct CacheSource {
    /// The local prefix, e.g. `docker.io`.
    pub name: String,
    pub aliases: Vec<String>,
    pub client: Upstream,
    pub manifest_ttl: Duration,
    pub stale_if_error: Duration,
}

impl CacheSource {
    fn answers_to(&self, host: &str) -> bool {
        self.name == host || self.aliases.iter().any(|a| a == host)
    }
}

/// A cached repository: its local name, its name at the upstream, and the upstream.
#[derive(Clone)]
pub struct CachedRepo {
    pub local: RepoName,
    pub remote: RepoName,
    pub source: Arc<CacheSource>,
}

/// Where a request's repository lives.
#[derive(Clone)]
pub enum Located {
    Hosted(RepoName),
    Cached(CachedRepo),
}

impl Located {
    /// The repository's name in this registry.
    pub fn local(&self) -> &RepoName {
        match self {
            Located::Hosted(n) => n,
            Located::Cached(c) => &c.local,
        }
    }

    pub fn cached(&self) -> Option<&CachedRepo> {
        match self {
            Located::Cached(c) => Some(c),
            Located::Hosted(_) => None,
        }
    }
}

impl Registry {
    pub fn upstreams(&self) -> &[Arc<CacheSource>] {
        &self.upstreams
    }

    /// Decides whether `name` (with containerd's `ns`, if sent) is hosted here or cached
    /// from an upstream. An `ns` that names no configured upstream is refused: it never
    /// becomes a dial target.
    pub fn locate(&self, name: &RepoName, ns: Option<&str>) -> Result<Located> {
        let (source, rest) = match ns {
            Some(host) => {
                let source = self
                    .upstreams
                    .iter()
                    .find(|s| s.answers_to(host))
                    .ok_or_else(|| RegistryError::NoSuchUpstream(host.to_string()))?;
                (source, name.as_str())
            }
            None => {
                let Some((first, rest)) = name.as_str().split_once('/') else {
                    return Ok(Located::Hosted(name.clone()));
                };
                match self.upstreams.iter().find(|s| s.answers_to(first)) {
                    Some(source) => (source, rest),
                    None => return Ok(Located::Hosted(name.clone())),
                }
            }
        };
        let invalid = |e: String| RegistryError::NameInvalid(e);
        let rest: RepoName = rest
            .parse()
            .map_err(|e: berth_oci::NameError| invalid(e.to_string()))?;
        let remote = source
            .client
            .remote_repo(&rest)
            .map_err(|e| invalid(e.to_string()))?;
        let local: RepoName = format!("{}/{remote}", source.name)
            .parse()
            .map_err(|e: berth_oci::NameError| invalid(e.to_string()))?;
        Ok(Located::Cached(CachedRepo {
            local,
            remote,
            source: source.clone(),
        }))
    }
}
