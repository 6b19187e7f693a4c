//! Retention rules: which tags to keep in which repositories; the rest are deleted and
//! garbage collection reclaims what they held, in the same transaction.

use std::time::Duration;

use berth_store::Deletion;

use super::gc::{GcOutcome, Grace};
use crate::runs::Job;
use crate::{Registry, Result};

pub use berth_oci::Pattern;

/// One `[[retention.rule]]`. A repository follows the first rule whose pattern matches.
#[derive(Clone, Debug)]
pub struct RetentionRule {
    pub repositories: Pattern,
    /// Keep the most recently pushed N tags.
    pub keep_last: Option<usize>,
    /// Keep tags whose manifest was pulled within this long.
    pub keep_pulled_within: Option<Duration>,
    /// Keep tags matching any of these.
    pub keep_tags: Vec<Pattern>,
    /// Delete manifests no tag reaches once older than this.
    pub delete_untagged_after: Option<Duration>,
}

impl RetentionRule {
    fn has_tag_clause(&self) -> bool {
        self.keep_last.is_some() || self.keep_pulled_within.is_some() || !self.keep_tags.is_empty()
    }
}

/// What a retention run deleted (or would delete), and what the collection after it freed.
#[derive(Debug)]
pub struct RetentionOutcome {
    /// (repository, tag)
    pub tags: Vec<(String, String)>,
    pub gc: GcOutcome,
}

impl Registry {
    /// Applies `rules` to every repository, then collects garbage, in one transaction.
    pub async fn apply_retention(
        &self,
        rules: &[RetentionRule],
        grace: Grace,
        dry_run: bool,
    ) -> Result<RetentionOutcome> {
        let started = std::time::Instant::now();
        let out = self.apply_retention_once(rules, grace, dry_run).await;
        self.note_run(Job::Retention, dry_run, &out, started.elapsed(), |o| {
            format!("{} tags deleted; then {}", o.tags.len(), o.gc.summary())
        });
        out
    }

    async fn apply_retention_once(
        &self,
        rules: &[RetentionRule],
        grace: Grace,
        dry_run: bool,
    ) -> Result<RetentionOutcome> {
        let _turn = self.lifecycle_turn().await?;
        let now = self.clock.now();
        let mut deletions = Vec::new();
        let mut tags = Vec::new();
        for (repo, _cached) in self.meta.repositories_by_kind().await? {
            let Some(rule) = rules.iter().find(|r| r.repositories.matches(&repo)) else {
                continue;
            };
            if rule.has_tag_clause() {
                // Most recently pushed first.
                let all = self.meta.tag_details(&repo).await?;
                for (i, t) in all.iter().enumerate() {
                    let kept = rule.keep_last.is_some_and(|n| i < n)
                        || rule.keep_tags.iter().any(|p| p.matches(&t.name))
                        || rule
                            .keep_pulled_within
                            .is_some_and(|w| t.last_pulled.is_some_and(|p| p >= now - w.as_secs() as i64));
                    if !kept {
                        tags.push((repo.clone(), t.name.clone()));
                        deletions.push(Deletion::Tag {
                            repo: repo.clone(),
                            tag: t.name.clone(),
                        });
                    }
                }
            }
            if let Some(after) = rule.delete_untagged_after {
                for digest in self
                    .meta
                    .untagged_before(&repo, now - after.as_secs() as i64)
                    .await?
                {
                    deletions.push(Deletion::Manifest {
                        repo: repo.clone(),
                        digest,
                    });
                }
            }
        }
        let gc = self.collect(&deletions, grace, dry_run).await?;
        if !dry_run {
            self.metrics.retention_tags.inc_by(tags.len() as u64);
        }
        tracing::info!(
            dry_run,
            tags = tags.len(),
            manifests = gc.report.manifests.len(),
            "retention"
        );
        if !dry_run {
            self.record_run("retention", gc.took);
        }
        Ok(RetentionOutcome { tags, gc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("v*").matches("v1.2"));
        assert!(!p("v*").matches("latest"));
        assert!(p("team/*").matches("team/app"));
        assert!(!p("team/*").matches("team/app/sub"));
        assert!(p("team/**").matches("team/app/sub"));
        assert!(p("latest").matches("latest") && !p("latest").matches("latest2"));
        assert!(p("v?").matches("v1") && !p("v?").matches("v10"));
        assert!(p("/^release-[0-9]+$/").matches("release-12"));
        assert!(!p("/^release-[0-9]+$/").matches("release-x"));
        assert!(p("a.b").matches("a.b") && !p("a.b").matches("axb"));
        assert!(Pattern::parse("/(/").is_err());
    }
}
