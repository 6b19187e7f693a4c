//! Manifests, tags, the catalog and referrers.

use berth_oci::manifest;
use berth_oci::{Descriptor, Digest, Reference, RepoName, Tag};
use berth_store::{ManifestRow, NewManifest, PutManifest, Removal};

use crate::{Registry, RegistryError, Result};

pub type StoredManifest = ManifestRow;

/// One page of a listing, and whether more follow.
pub struct Listing {
    pub items: Vec<String>,
    pub more: bool,
}

/// What the push stored.
pub struct Pushed {
    pub digest: Digest,
    pub subject: Option<Digest>,
    pub media_type: String,
}

impl Registry {
    /// Stores a pushed manifest byte for byte, under `reference` (a tag, or its own digest).
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Pushed> {
        let (digest, tag) = match reference {
            Reference::Digest(d) => (Some(d), None),
            Reference::Tag(t) => (None, Some(t)),
        };
        self.store_manifest(repo, digest, tag, content_type, body, true)
            .await
    }

    /// Checks a manifest (size, format, `digest` if given) and records it with `tag`.
    /// With `require_refs`, everything it references must be in the repository.
    pub(crate) async fn store_manifest(
        &self,
        repo: &RepoName,
        digest: Option<&Digest>,
        tag: Option<&Tag>,
        content_type: Option<&str>,
        body: &[u8],
        require_refs: bool,
    ) -> Result<Pushed> {
        let limit = self.limits.max_manifest_bytes;
        if body.len() as u64 > limit {
            return Err(RegistryError::ManifestTooLarge {
                size: body.len() as u64,
                limit,
            });
        }
        let parsed =
            manifest::parse(body, content_type).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let digest = match digest {
            Some(d) => {
                if !d.matches(body) {
                    let mut h = berth_oci::DigestHasher::new(d.algorithm());
                    h.update(body);
                    return Err(RegistryError::DigestMismatch {
                        expected: d.clone(),
                        actual: h.finish(),
                    });
                }
                d.clone()
            }
            None => Digest::sha256_of(body),
        };
        let annotations = parsed
            .annotations
            .as_ref()
            .map(|a| serde_json::to_string(a).expect("string map serializes"));
        let stored = self
            .meta
            .put_manifest(NewManifest {
                repo,
                digest: &digest,
                media_type: &parsed.media_type,
                artifact_type: parsed.artifact_type.as_deref(),
                subject: parsed.subject.as_ref(),
                annotations,
                body,
                refs: &parsed.refs,
                tag,
                require_refs,
                now: self.clock.now(),
            })
            .await?;
        match stored {
            PutManifest::Stored => {
                self.metrics.manifests_pushed.inc();
                Ok(Pushed {
                    digest,
                    subject: parsed.subject,
                    media_type: parsed.media_type,
                })
            }
            PutManifest::Missing(missing) => Err(RegistryError::ManifestBlobUnknown(missing)),
        }
    }

    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        let found = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo, t).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo, d).await?,
        };
        match found {
            Some(m) => {
                self.note_pull(repo, &m);
                Ok(m)
            }
            None if !self.meta.repo_exists(repo).await? => Err(RegistryError::NameUnknown(repo.clone())),
            None => Err(RegistryError::ManifestUnknown(reference.clone(), repo.clone())),
        }
    }

    /// Deletes a tag (only the tag), or a manifest by digest (with the tags on it).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let unknown = || RegistryError::ManifestUnknown(reference.clone(), repo.clone());
        match reference {
            Reference::Tag(t) => {
                if self.meta.delete_tag(repo, t).await? {
                    Ok(())
                } else {
                    Err(unknown())
                }
            }
            Reference::Digest(d) => match self.meta.delete_manifest(repo, d).await? {
                Removal::Done => Ok(()),
                Removal::NotFound => Err(unknown()),
                Removal::ReferencedBy(parent) => Err(RegistryError::ManifestReferenced {
                    child: d.clone(),
                    parent,
                }),
            },
        }
    }

    pub async fn tags(&self, repo: &RepoName, n: Option<u32>, last: Option<&str>) -> Result<Listing> {
        if !self.meta.repo_exists(repo).await? {
            return Err(RegistryError::NameUnknown(repo.clone()));
        }
        let limit = n.unwrap_or(u32::MAX - 1);
        let mut items = self.meta.tags(repo, last, limit + 1).await?;
        Ok(page(&mut items, limit))
    }

    pub async fn catalog(&self, n: Option<u32>, last: Option<&str>) -> Result<Listing> {
        let limit = n.unwrap_or(u32::MAX - 1);
        let mut items = self.meta.repositories(last, limit + 1).await?;
        Ok(page(&mut items, limit))
    }

    /// Manifests in `repo` whose subject is `subject`, as descriptors.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let rows = self.meta.referrers(repo, subject, artifact_type).await?;
        Ok(rows
            .into_iter()
            .map(|r| Descriptor {
                media_type: r.media_type,
                digest: r.digest,
                size: r.size,
                artifact_type: r.artifact_type,
                annotations: r.annotations.and_then(|a| serde_json::from_str(&a).ok()),
                urls: None,
                platform: None,
            })
            .collect())
    }
}

fn page(items: &mut Vec<String>, limit: u32) -> Listing {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Listing {
        items: std::mem::take(items),
        more,
    }
}
