//! `mirror`: every tag of every repository under a prefix, from one registry to another.
//!
//! [`plan`] lists what a run would copy: repositories from the source catalog, their
//! tags (optionally filtered), and for each tag whether the destination already has the
//! same digest (then it is skipped) and how many bytes of blobs it lacks. [`run`] copies
//! exactly the plan's items; the caller verifies them afterwards.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;

use berth_oci::manifest::{self, RefKind};
use berth_oci::{Digest, Pattern, Reference, RepoName, media};
use berth_upstream::Upstream;
use futures_util::StreamExt;

use crate::TransferError;
use crate::engine::{CopyOptions, CopyReport, copy};
use crate::progress::Observer;
use crate::registry::{MAX_MANIFEST_BYTES, RegistryDest, RegistrySource, failed};

/// A repository's source and destination names and its tags.
type Listed = (RepoName, RepoName, Vec<String>);
/// A tag, and the blobs (digest, size) the destination lacks.
type Assessed = (Item, Vec<(Digest, u64)>);

/// One tag to mirror.
#[derive(Clone, Debug)]
pub struct Item {
    pub src_repo: RepoName,
    pub dst_repo: RepoName,
    pub tag: String,
    /// What the tag names at the source.
    pub digest: Digest,
    /// The destination's tag already names the same digest: nothing to copy.
    pub identical: bool,
    /// Bytes of the tag's blobs the destination repository lacks.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Bytes of blobs missing at the destination, each (repository, blob) counted once.
    pub total_bytes: u64,
}

/// The destination name of `repo`, if it lies under `src_prefix`.
pub fn map_name(repo: &str, src_prefix: &str, dst_prefix: &str) -> Option<String> {
    let rest = if src_prefix.is_empty() {
        repo
    } else if repo == src_prefix {
        ""
    } else {
        repo.strip_prefix(src_prefix)?.strip_prefix('/')?
    };
    Some(match (dst_prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => dst_prefix.to_string(),
        (false, false) => format!("{dst_prefix}/{rest}"),
    })
}

/// Lists what a mirror of `src_prefix` to `dst_prefix` copies.
pub async fn plan(
    src: &Upstream,
    src_prefix: &str,
    dst: &Upstream,
    dst_prefix: &str,
    tags: Option<&Pattern>,
    concurrency: usize,
) -> Result<Plan, TransferError> {
    let at = src.name().to_string();
    let mut repos: Vec<(RepoName, RepoName)> = Vec::new();
    for repo in src.catalog().await.map_err(|e| failed(&at, "catalog", e))? {
        let Some(dst_name) = map_name(&repo, src_prefix, dst_prefix) else {
            continue;
        };
        let (Ok(s), Ok(d)) = (repo.parse::<RepoName>(), dst_name.parse::<RepoName>()) else {
            return Err(TransferError::Usage(format!(
                "{repo}: maps to {dst_name:?}, which is not a valid repository name"
            )));
        };
        repos.push((s, d));
    }
    repos.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));

    let mut wanted: Vec<(RepoName, RepoName, String)> = Vec::new();
    let listed: Vec<Result<Listed, TransferError>> = futures_util::stream::iter(repos)
        .map(|(s, d)| async {
            let tags = src
                .tags(&s)
                .await
                .map_err(|e| failed(&at, format!("tags of {s}"), e))?;
            Ok((s, d, tags))
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    for r in listed {
        let (s, d, mut t) = r?;
        t.sort();
        for tag in t {
            if tags.is_none_or(|p| p.matches(&tag)) {
                wanted.push((s.clone(), d.clone(), tag));
            }
        }
    }

    let counted: Mutex<HashSet<(RepoName, Digest)>> = Mutex::new(HashSet::new());
    let items: Vec<Result<Assessed, TransferError>> = futures_util::stream::iter(wanted)
        .map(|(s, d, tag)| assess(src, dst, s, d, tag))
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut plan = Plan::default();
    for r in items {
        let (item, missing) = r?;
        let mut counted = counted.lock().unwrap_or_else(|e| e.into_inner());
        for (digest, size) in missing {
            if counted.insert((item.dst_repo.clone(), digest)) {
                plan.total_bytes += size;
            }
        }
        plan.items.push(item);
    }
    Ok(plan)
}

/// One tag: its digest at the source, whether the destination has the same, and the
/// blobs the destination lacks.
async fn assess(
    src: &Upstream,
    dst: &Upstream,
    src_repo: RepoName,
    dst_repo: RepoName,
    tag: String,
) -> Result<Assessed, TransferError> {
    let at = src.name().to_string();
    let reference: Reference = tag
        .parse()
        .map_err(|e| TransferError::Usage(format!("tag {tag:?} of {src_repo}: {e}")))?;
    let (head, bytes) = src
        .get_manifest(&src_repo, &reference, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| failed(&at, format!("manifest {src_repo}:{tag}"), e))?;
    let there = dst
        .manifest_exists(&dst_repo, &reference)
        .await
        .map_err(|e| failed(dst.name(), format!("manifest {dst_repo}:{tag}"), e))?;
    let identical = there.is_some_and(|h| h.digest == head.digest);
    let mut item = Item {
        src_repo,
        dst_repo,
        tag,
        digest: head.digest.clone(),
        identical,
        bytes: 0,
    };
    if identical {
        return Ok((item, Vec::new()));
    }
    // Every blob of the tag (children of an index included), then which the destination lacks.
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![(head.media_type, bytes, 0usize)];
    while let Some((mt, body, depth)) = queue.pop() {
        let parsed = manifest::parse(&body, Some(&mt)).map_err(|e| TransferError::Failed {
            at: at.clone(),
            what: format!("manifest {}:{}", item.src_repo, item.tag),
            reason: e.to_string(),
            status: None,
        })?;
        for r in parsed.refs {
            if r.kind == RefKind::Manifest {
                if depth < 4 && media::is_index(&parsed.media_type) {
                    let (h, b) = src
                        .get_manifest(
                            &item.src_repo,
                            &Reference::Digest(r.digest.clone()),
                            MAX_MANIFEST_BYTES,
                        )
                        .await
                        .map_err(|e| failed(&at, format!("manifest {}@{}", item.src_repo, r.digest), e))?;
                    queue.push((h.media_type, b, depth + 1));
                }
            } else if r.required && seen.insert(r.digest.clone()) {
                blobs.push((r.digest, r.size));
            }
        }
    }
    let mut missing = Vec::new();
    for (digest, size) in blobs {
        let has = dst
            .blob_exists(&item.dst_repo, &digest)
            .await
            .map_err(|e| failed(dst.name(), format!("blob {digest}: HEAD"), e))?;
        if has.is_none() {
            item.bytes += size;
            missing.push((digest, size));
        }
    }
    Ok((item, missing))
}

/// How to run the copies of a plan.
pub struct RunOptions<'a> {
    /// Tags copied at once (and blobs per tag).
    pub concurrency: usize,
    pub referrers: bool,
    pub chunk_size: u64,
    pub state_dir: Option<PathBuf>,
    /// Source and destination are the same registry: blobs are mounted, not sent.
    pub same_registry: bool,
    pub observer: &'a dyn Observer,
}

/// Copies every item of `plan` that is not `identical`; results in plan order.
pub async fn run(
    plan: &Plan,
    src: &Upstream,
    dst: &Upstream,
    opts: &RunOptions<'_>,
) -> Vec<(Item, Option<Result<CopyReport, TransferError>>)> {
    let dst = dst.pushing();
    futures_util::stream::iter(plan.items.iter().cloned())
        .map(|item| {
            let dst = dst.clone();
            async move {
                if item.identical {
                    return (item, None);
                }
                let source = RegistrySource::new(src.clone(), item.src_repo.clone());
                let dest = RegistryDest::new(
                    dst,
                    item.dst_repo.clone(),
                    opts.same_registry.then(|| item.src_repo.clone()),
                    opts.chunk_size,
                    opts.state_dir.clone(),
                );
                let copy_opts = CopyOptions {
                    concurrency: opts.concurrency,
                    platforms: Vec::new(),
                    referrers: opts.referrers,
                    observer: opts.observer,
                };
                let r = copy(
                    &source,
                    &item.digest.to_string(),
                    &dest,
                    Some(&item.tag),
                    &copy_opts,
                )
                .await;
                (item, Some(r))
            }
        })
        .buffered(opts.concurrency.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::map_name;

    #[test]
    fn names_under_a_prefix() {
        assert_eq!(
            map_name("team/app", "team", "mirror").as_deref(),
            Some("mirror/app")
        );
        assert_eq!(map_name("team", "team", "mirror").as_deref(), Some("mirror"));
        assert_eq!(map_name("teams/app", "team", "mirror"), None);
        assert_eq!(map_name("team/a/b", "team", "").as_deref(), Some("a/b"));
        assert_eq!(map_name("x/y", "", "m").as_deref(), Some("m/x/y"));
        assert_eq!(map_name("x/y", "", "").as_deref(), Some("x/y"));
    }
}
