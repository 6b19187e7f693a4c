//! The scrub. One definition of "servable": every check goes through the code a pull
//! uses (`blob_size` for blobs, manifest lookups for children and tags), so the scrub
//! cannot say "fine" about something a client cannot pull.
//!
//! Rules know the repository kind: a cached repository holds only what was pulled, so a
//! reference it does not hold is normal partial state; in a hosted repository it is damage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_oci::{Digest, DigestHasher, Reference, RepoName};
use berth_store::Usage;
use futures_util::StreamExt;

use crate::cache::Located;
use crate::lifecycle::Pattern;
use crate::metrics::ProblemKind;
use crate::runs::Job;
use crate::{Registry, RegistryError, Result};

#[derive(Clone, Debug, Default)]
pub struct ScrubOptions {
    /// Only repositories matching this pattern (blobs: those linked into one of them).
    pub repositories: Option<Pattern>,
    /// Fix what can be fixed: re-fetch cached content, quarantine damaged bytes.
    pub repair: bool,
    /// Re-hash at most this many bytes per second (0: unlimited).
    pub max_bytes_per_sec: u64,
}

/// One problem found, with who is affected.
#[derive(Clone, Debug)]
pub struct Problem {
    /// `blob_missing`, `blob_size`, `blob_digest`, `reference`, `child_missing`, `tag_dangling`.
    pub kind: &'static str,
    /// The blob or manifest digest, or `repo:tag`.
    pub subject: String,
    pub detail: String,
    /// Affected repositories and their tags (`repo:tag`).
    pub affected: Vec<String>,
    /// Only cached repositories are affected.
    pub cached: bool,
    /// What the repair did, if it ran.
    pub repaired: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ScrubReport {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub references_checked: u64,
    pub tags_checked: u64,
    pub problems: Vec<Problem>,
    pub took: Duration,
}

const PAGE: u32 = 1000;

fn affected(usages: &[Usage], links: &[(String, bool)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in usages {
        if u.tags.is_empty() {
            out.push(format!("{}@{}", u.repo, u.manifest));
        }
        out.extend(u.tags.iter().map(|t| format!("{}:{t}", u.repo)));
    }
    for (repo, _) in links {
        if !out
            .iter()
            .any(|a| a.starts_with(&format!("{repo}:")) || a.starts_with(&format!("{repo}@")))
        {
            out.push(repo.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Registry {
    /// Scrubs blobs, references and tags; with `repair`, fixes what it can.
    pub async fn scrub(self: &Arc<Self>, opts: &ScrubOptions) -> Result<ScrubReport> {
        let started = Instant::now();
        let out = self.scrub_once(opts).await;
        self.note_run(Job::Scrub, false, &out, started.elapsed(), |r| {
            let left = r.problems.iter().filter(|p| p.repaired.is_none()).count();
            format!(
                "{} blobs ({} bytes), {} references and {} tags checked; {} problems, {} left unrepaired",
                r.blobs_checked,
                r.bytes_hashed,
                r.references_checked,
                r.tags_checked,
                r.problems.len(),
                left
            )
        });
        // A partial scrub (one pattern) still replaces the list: it is the latest word.
        if let Ok(r) = &out {
            self.note_scrub_problems(r.problems.clone());
        }
        out
    }

    async fn scrub_once(self: &Arc<Self>, opts: &ScrubOptions) -> Result<ScrubReport> {
        let _turn = self.lifecycle_turn().await?;
        let started = Instant::now();
        let mut report = ScrubReport::default();
        let wanted = |repo: &str| opts.repositories.as_ref().is_none_or(|p| p.matches(repo));

        // 1. Blobs: bytes exist, size matches, sha256 matches.
        let mut after: Option<Digest> = None;
        loop {
            let page = self.meta.blobs_page(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (digest, size) in page {
                let links = self.meta.links_of(&digest).await?;
                if opts.repositories.is_some() && !links.iter().any(|(r, _)| wanted(r)) {
                    continue;
                }
                report.blobs_checked += 1;
                let problem = match self.blobs.stat(&digest).await? {
                    None => Some(("blob_missing", "the bytes are missing".to_string())),
                    Some(n) if n != size => {
                        Some(("blob_size", format!("{n} bytes on disk, {size} recorded")))
                    }
                    Some(_) => match self
                        .rehash(&digest, opts.max_bytes_per_sec, started, &mut report)
                        .await?
                    {
                        Some(actual) => Some(("blob_digest", format!("the bytes hash to {actual}"))),
                        None => {
                            self.meta.mark_verified(&digest, self.clock.now()).await?;
                            None
                        }
                    },
                };
                if let Some((kind, detail)) = problem {
                    let usages = self.meta.usages(&digest).await?;
                    let mut p = Problem {
                        kind,
                        subject: digest.to_string(),
                        detail,
                        affected: affected(&usages, &links),
                        cached: !links.is_empty() && links.iter().all(|(_, c)| *c),
                        repaired: None,
                    };
                    if opts.repair {
                        p.repaired = Some(self.repair_blob(&digest, &links).await?);
                    }
                    report.problems.push(p);
                }
            }
        }

        // 2. References: every reference of every manifest resolves as a pull resolves it.
        let mut after: Option<(String, Digest, Digest)> = None;
        loop {
            let page = self.meta.refs_page(after.clone(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some((last.repo.clone(), last.parent.clone(), last.child.clone()));
            for r in page {
                if !wanted(&r.repo) || r.cached {
                    // A cache holds what was pulled; what it lacks is fetched on demand.
                    continue;
                }
                report.references_checked += 1;
                let Ok(repo) = r.repo.parse::<RepoName>() else {
                    continue;
                };
                let missing = if r.kind == "manifest" {
                    self.meta.manifest_by_digest(&repo, &r.child).await?.is_none()
                } else {
                    match self.blob_size(&repo, &r.child).await {
                        Ok(_) => false,
                        Err(RegistryError::BlobUnknown(_) | RegistryError::BlobDamaged(_)) => true,
                        Err(e) => return Err(e),
                    }
                };
                if missing && !report.problems.iter().any(|p| p.subject == r.child.to_string()) {
                    let usages = self.meta.usages(&r.child).await?;
                    let kind = if r.kind == "manifest" {
                        "child_missing"
                    } else {
                        "reference"
                    };
                    report.problems.push(Problem {
                        kind,
                        subject: r.child.to_string(),
                        detail: format!(
                            "{} {} of {}@{} cannot be pulled",
                            r.kind, r.child, r.repo, r.parent
                        ),
                        affected: affected(&usages, &[]),
                        cached: false,
                        repaired: opts
                            .repair
                            .then(|| "hosted damage: push the image again".to_string()),
                    });
                }
            }
        }

        // 3. Tags: each points at a stored manifest.
        for (repo, tag, digest, cached) in self.meta.all_tags().await? {
            if !wanted(&repo) {
                continue;
            }
            report.tags_checked += 1;
            let Ok(name) = repo.parse::<RepoName>() else {
                continue;
            };
            if self.meta.manifest_by_digest(&name, &digest).await?.is_some() {
                continue;
            }
            let mut p = Problem {
                kind: "tag_dangling",
                subject: format!("{repo}:{tag}"),
                detail: format!("the tag points at {digest}, which is not stored"),
                affected: vec![format!("{repo}:{tag}")],
                cached,
                repaired: None,
            };
            if opts.repair {
                p.repaired = Some(match self.locate(&name, None)? {
                    Located::Cached(c) => {
                        self.meta
                            .delete_tag(&name, &tag.parse().expect("stored tags are valid"))
                            .await?;
                        match self
                            .cached_manifest(&c, &Reference::Tag(tag.parse().expect("valid")))
                            .await
                        {
                            Ok(_) => "re-fetched from the upstream".into(),
                            Err(e) => format!("could not re-fetch: {e}"),
                        }
                    }
                    Located::Hosted(_) => "hosted damage: push the image again".into(),
                });
            }
            report.problems.push(p);
        }

        report.took = started.elapsed();
        if opts.repositories.is_none() {
            self.record_run("scrub", report.took);
        }
        // A scoped scrub saw only part of the registry: it must not clear what the last
        // full scrub found elsewhere.
        self.record_scrub(&report, opts.repair, opts.repositories.is_none());
        tracing::info!(
            blobs = report.blobs_checked,
            bytes = report.bytes_hashed,
            references = report.references_checked,
            tags = report.tags_checked,
            problems = report.problems.len(),
            ms = report.took.as_millis() as u64,
            "scrub"
        );
        for p in &report.problems {
            tracing::error!(kind = p.kind, subject = %p.subject, detail = %p.detail, affected = ?p.affected, repaired = ?p.repaired, "integrity problem");
        }
        Ok(report)
    }

    /// Re-hashes a stored blob at no more than `limit` bytes per second of the run;
    /// returns the actual digest when it differs.
    async fn rehash(
        &self,
        digest: &Digest,
        limit: u64,
        run_started: Instant,
        report: &mut ScrubReport,
    ) -> Result<Option<Digest>> {
        let Some(read) = self.blobs.open(digest, None).await? else {
            return Ok(None);
        };
        let mut body = read.body;
        let mut hasher = DigestHasher::new(digest.algorithm());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(berth_store::StoreError::from)?;
            report.bytes_hashed += chunk.len() as u64;
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                hasher
            })
            .await
            .expect("hashing does not panic");
            if limit > 0 {
                let due = Duration::from_secs_f64(report.bytes_hashed as f64 / limit as f64);
                if let Some(wait) = due.checked_sub(run_started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let actual = hasher.finish();
        Ok((actual != *digest).then_some(actual))
    }

    /// Takes damaged bytes out of service and forgets them, so the registry answers 404
    /// instead of wrong bytes; re-fetches them for cached repositories.
    async fn repair_blob(self: &Arc<Self>, digest: &Digest, links: &[(String, bool)]) -> Result<String> {
        {
            let _bytes = self.lock_bytes([digest]).await?;
            self.blobs.quarantine(digest).await?;
            self.meta.drop_blob(digest).await?;
        }
        let mut done = vec!["quarantined".to_string()];
        for (repo, cached) in links.iter().filter(|(_, c)| *c) {
            let _ = cached;
            let Ok(name) = repo.parse::<RepoName>() else {
                continue;
            };
            let Located::Cached(c) = self.locate(&name, None)? else {
                continue;
            };
            let fetched = async {
                let (_, _, body) = self.open_cached_blob(&c, digest, |_| Ok(None)).await?;
                if let crate::BlobBody::Stream(read) = body {
                    let mut s = read.body;
                    while let Some(chunk) = s.next().await {
                        chunk.map_err(berth_store::StoreError::from)?;
                    }
                }
                Ok::<_, RegistryError>(())
            }
            .await;
            done.push(match fetched {
                Ok(()) => format!("re-fetched for {repo}"),
                Err(e) => format!("could not re-fetch for {repo}: {e}"),
            });
            break; // one verified copy serves every repository
        }
        Ok(done.join(", "))
    }

    fn record_scrub(&self, report: &ScrubReport, repair: bool, full: bool) {
        let m = &self.metrics;
        m.scrub_bytes.inc_by(report.bytes_hashed);
        if repair {
            m.integrity_repaired
                .inc_by(report.problems.iter().filter(|p| p.repaired.is_some()).count() as u64);
        }
        if !full {
            return;
        }
        m.scrub_runs.inc();
        m.scrub_last_success.set(self.clock.now());
        for kind in [
            "blob_missing",
            "blob_size",
            "blob_digest",
            "reference",
            "child_missing",
            "tag_dangling",
        ] {
            for cached in [false, true] {
                let n = report
                    .problems
                    .iter()
                    .filter(|p| p.kind == kind && p.cached == cached && !(repair && p.cached))
                    .count();
                m.integrity_problems
                    .get_or_create(&ProblemKind {
                        kind,
                        repository: if cached { "cached" } else { "hosted" },
                    })
                    .set(n as i64);
            }
        }
    }
}
