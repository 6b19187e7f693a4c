//! Verify after push: walk a just-pushed image the way a client pulls it (index ->
//! children -> config and layers), through the pull code path, and say so loudly if any
//! part cannot be served.

use std::sync::Arc;

use berth_oci::{Digest, RefKind, RepoName};

use crate::metrics::ResultLabel;
use crate::{Registry, Result};

impl Registry {
    /// What of the image `digest` in `repo` cannot be pulled (empty: all of it can).
    pub async fn unservable(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let mut todo = vec![(digest.clone(), 0)];
        while let Some((d, depth)) = todo.pop() {
            let Some(m) = self.meta.manifest_by_digest(repo, &d).await? else {
                problems.push(format!("manifest {d} is not stored"));
                continue;
            };
            let Ok(parsed) = berth_oci::manifest::parse(&m.body, Some(&m.media_type)) else {
                problems.push(format!("manifest {d} no longer parses"));
                continue;
            };
            for r in parsed.refs.iter().filter(|r| r.required) {
                match r.kind {
                    RefKind::Manifest if depth < 8 => todo.push((r.digest.clone(), depth + 1)),
                    RefKind::Manifest => problems.push(format!("index nesting too deep at {}", r.digest)),
                    RefKind::Config | RefKind::Layer => {
                        if let Err(e) = self.blob_size(repo, &r.digest).await {
                            problems.push(format!("{} {} of {d}: {e}", r.kind.as_str(), r.digest));
                        }
                    }
                }
            }
        }
        Ok(problems)
    }

    /// Checks a pushed image in the background and records the result.
    pub fn verify_after_push(self: &Arc<Self>, repo: RepoName, digest: Digest, tag: Option<String>) {
        if !self.verify_after_push {
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            let (result, problems) = match registry.unservable(&repo, &digest).await {
                Ok(p) if p.is_empty() => ("ok", p),
                Ok(problems) => {
                    tracing::error!(%repo, ?tag, %digest, ?problems, "a pushed image cannot be pulled whole");
                    ("failed", problems)
                }
                Err(e) => {
                    tracing::warn!(%repo, %digest, error = %e, "could not verify a pushed image");
                    ("error", vec![e.to_string()])
                }
            };
            registry.note_verification(crate::Verification {
                at: registry.clock.now(),
                repo: repo.to_string(),
                tag,
                digest,
                result,
                problems,
            });
            registry
                .metrics
                .push_verifications
                .get_or_create(&ResultLabel { result })
                .inc();
        });
    }
}
