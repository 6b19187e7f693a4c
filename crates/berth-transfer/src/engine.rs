//! `copy`: one image (an index and its children, or one manifest), its configs and layers
//! and, when asked, its referrers, from a [`Source`] to a [`Destination`].
//!
//! Order: blobs before the manifest that names them, children before their index,
//! referrers after their subject, the tag last, so a client of the destination never
//! sees a tag whose content is incomplete. Blobs the destination has are skipped (HEAD);
//! the rest move a few at a time (`concurrency`), each hashed as it streams. Manifests go
//! as the source served them and each is checked against its digest.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use berth_oci::manifest::{self, RefKind};
use berth_oci::{Descriptor, Digest, media};
use futures_util::StreamExt;

use crate::progress::{Event, Observer};
use crate::{Destination, Manifest, Source, TransferError};

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "{s:?}: expected os/architecture[/variant], e.g. linux/arm64/v8"
            )),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform this binary runs on, in OCI terms (`linux/amd64` on x86-64).
    pub fn native() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// A platform filter without a variant matches every variant.
    fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"].as_str() == Some(self.os.as_str())
            && p["architecture"].as_str() == Some(self.architecture.as_str())
            && self
                .variant
                .as_deref()
                .is_none_or(|v| p["variant"].as_str() == Some(v))
    }
}

pub struct CopyOptions<'a> {
    /// Blobs in flight at once.
    pub concurrency: usize,
    /// Only index children of these platforms (empty: all).
    pub platforms: Vec<Platform>,
    /// Also copy referrers of every copied manifest (recursively, bounded).
    pub referrers: bool,
    pub observer: &'a dyn Observer,
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// The digest the destination tag (or digest) now names.
    pub digest: Option<Digest>,
    /// Its media type.
    pub media_type: Option<String>,
    pub manifests: u64,
    pub manifests_skipped: u64,
    pub blobs_copied: u64,
    pub blobs_skipped: u64,
    pub bytes_sent: u64,
}

/// Referrers of referrers are followed this deep, and at most this many in all.
const MAX_REFERRER_DEPTH: usize = 4;
const MAX_REFERRERS: usize = 10_000;
/// Indexes inside indexes are followed this deep.
const MAX_INDEX_DEPTH: usize = 4;

struct Ctx<'a> {
    src: &'a dyn Source,
    dst: &'a dyn Destination,
    opts: &'a CopyOptions<'a>,
    blobs: Mutex<HashSet<Digest>>,
    manifests: Mutex<HashSet<Digest>>,
    referrers_seen: Mutex<usize>,
    report: Mutex<CopyReport>,
    sent: AtomicU64,
}

/// Copies what `src_ref` (a tag or digest) names at `src` to `dst`, tagging it `dst_tag`
/// when given (else it is stored by digest only), then finishes `dst`.
pub async fn copy(
    src: &dyn Source,
    src_ref: &str,
    dst: &dyn Destination,
    dst_tag: Option<&str>,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport, TransferError> {
    let started = Instant::now();
    let report = copy_image(src, src_ref, dst, dst_tag, opts).await?;
    dst.finish().await?;
    opts.observer.event(&Event::Finished {
        source: format!("{}:{src_ref}", src.describe()),
        destination: dst.describe(),
        digest: report
            .digest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        manifests: report.manifests,
        blobs_copied: report.blobs_copied,
        blobs_skipped: report.blobs_skipped,
        bytes_sent: report.bytes_sent,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(report)
}

/// [`copy`] without [`Destination::finish`], for several images into one destination
/// (an archive of many references): the caller finishes it once, after the last.
pub async fn copy_image(
    src: &dyn Source,
    src_ref: &str,
    dst: &dyn Destination,
    dst_tag: Option<&str>,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport, TransferError> {
    let ctx = Ctx {
        src,
        dst,
        opts,
        blobs: Mutex::new(HashSet::new()),
        manifests: Mutex::new(HashSet::new()),
        referrers_seen: Mutex::new(0),
        report: Mutex::new(CopyReport::default()),
        sent: AtomicU64::new(0),
    };
    opts.observer.event(&Event::Started {
        source: format!("{}:{src_ref}", src.describe()),
        destination: format!(
            "{}{}",
            dst.describe(),
            dst_tag.map(|t| format!(":{t}")).unwrap_or_default()
        ),
    });
    let top = src.manifest(src_ref).await?;
    check_manifest(src, &top, None)?;

    let top = if opts.platforms.is_empty() || !media::is_index(&top.media_type) {
        ctx.manifest_tree(&top, 0, true).await?;
        top
    } else {
        // A filtered index is not the index the source has, and rewriting it would change
        // its digest: the matching child is copied, and tagged, instead.
        let children = matching_children(&top, &opts.platforms).map_err(|reason| TransferError::Failed {
            at: src.describe(),
            what: format!("index {}", top.digest),
            reason,
            status: None,
        })?;
        let Some(first) = children.first() else {
            return Err(TransferError::Failed {
                at: src.describe(),
                what: format!("index {}", top.digest),
                reason: format!(
                    "no child matches --platform {} (it has {})",
                    opts.platforms
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    index_children(&top)
                        .unwrap_or_default()
                        .iter()
                        .map(platform_of)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                status: None,
            });
        };
        let mut chosen = None;
        for d in &children {
            let child = ctx.fetch_child(d).await?;
            ctx.manifest_tree(&child, 1, true).await?;
            if d.digest == first.digest {
                chosen = Some(child);
            }
        }
        let chosen = chosen.expect("the first child was copied");
        opts.observer.event(&Event::Note {
            message: format!(
                "--platform: the index {} is not copied (it would no longer list what the destination holds); \
                 {} child manifest(s) copied{}",
                top.digest,
                children.len(),
                dst_tag
                    .map(|t| format!(", tag {t} names the {} child {}", platform_of(first), chosen.digest))
                    .unwrap_or_default()
            ),
        });
        chosen
    };
    if let Some(tag) = dst_tag {
        dst.put_manifest(&top, Some(tag)).await?;
        opts.observer.event(&Event::ManifestDone {
            digest: top.digest.to_string(),
            media_type: top.media_type.clone(),
            tag: Some(tag.to_string()),
            skipped: false,
        });
    }
    let mut report = ctx.report.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.digest = Some(top.digest.clone());
    report.media_type = Some(top.media_type.clone());
    report.bytes_sent = ctx.sent.load(Ordering::Relaxed);
    Ok(report)
}

fn platform_of(d: &Descriptor) -> String {
    d.platform
        .as_ref()
        .map(|p| {
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or("?"),
                p["architecture"].as_str().unwrap_or("?")
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .unwrap_or_else(|| "unknown platform".into())
}

fn index_children(index: &Manifest) -> Result<Vec<Descriptor>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    serde_json::from_slice::<Index>(&index.bytes)
        .map(|i| i.manifests)
        .map_err(|e| format!("unreadable index: {e}"))
}

fn matching_children(index: &Manifest, platforms: &[Platform]) -> Result<Vec<Descriptor>, String> {
    Ok(index_children(index)?
        .into_iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| platforms.iter().any(|f| f.matches(p)))
        })
        .collect())
}

/// A manifest's bytes hash to its digest and, when a descriptor named it, match it.
fn check_manifest(src: &dyn Source, m: &Manifest, desc: Option<&Descriptor>) -> Result<(), TransferError> {
    let fail = |reason: String| TransferError::Failed {
        at: src.describe(),
        what: format!("manifest {}", m.digest),
        reason,
        status: None,
    };
    if !m.digest.matches(&m.bytes) {
        return Err(fail(format!("the bytes hash to {}", Digest::sha256_of(&m.bytes))));
    }
    if let Some(d) = desc {
        if d.digest != m.digest {
            return Err(fail(format!("asked for {}", d.digest)));
        }
        if d.size != m.bytes.len() as u64 {
            return Err(fail(format!(
                "the index says {} bytes, the source served {}",
                d.size,
                m.bytes.len()
            )));
        }
    }
    Ok(())
}

impl Ctx<'_> {
    async fn fetch_child(&self, d: &Descriptor) -> Result<Manifest, TransferError> {
        let m = self.src.manifest(&d.digest.to_string()).await?;
        check_manifest(self.src, &m, Some(d))?;
        Ok(m)
    }

    /// Copies `m` and everything under it, then stores `m` by digest, then (with
    /// `referrers` and the option on) its referrers.
    fn manifest_tree<'s>(
        &'s self,
        m: &'s Manifest,
        depth: usize,
        referrers: bool,
    ) -> futures_util::future::BoxFuture<'s, Result<(), TransferError>> {
        Box::pin(async move {
            if !self
                .manifests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(m.digest.clone())
            {
                return Ok(());
            }
            let parsed =
                manifest::parse(&m.bytes, Some(&m.media_type)).map_err(|e| TransferError::Failed {
                    at: self.src.describe(),
                    what: format!("manifest {}", m.digest),
                    reason: e.to_string(),
                    status: None,
                })?;
            if media::is_index(&parsed.media_type) {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(TransferError::Failed {
                        at: self.src.describe(),
                        what: format!("index {}", m.digest),
                        reason: format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
                        status: None,
                    });
                }
                let children = index_children(m).map_err(|reason| TransferError::Failed {
                    at: self.src.describe(),
                    what: format!("index {}", m.digest),
                    reason,
                    status: None,
                })?;
                for d in &children {
                    let child = self.fetch_child(d).await?;
                    self.manifest_tree(&child, depth + 1, referrers).await?;
                }
            } else {
                let blobs: Vec<Descriptor> = parsed
                    .refs
                    .iter()
                    .filter(|r| r.required && r.kind != RefKind::Manifest)
                    .map(|r| Descriptor {
                        media_type: String::new(),
                        digest: r.digest.clone(),
                        size: r.size,
                        artifact_type: None,
                        annotations: None,
                        urls: None,
                        platform: None,
                    })
                    .collect();
                self.blobs_of(&blobs).await?;
            }
            self.store(m).await?;
            if referrers && self.opts.referrers {
                self.referrers_of(&m.digest, 0).await?;
            }
            Ok(())
        })
    }

    async fn store(&self, m: &Manifest) -> Result<(), TransferError> {
        let skipped = self.dst.has_manifest(&m.digest).await?;
        if !skipped {
            self.dst.put_manifest(m, None).await?;
        }
        {
            let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
            r.manifests += 1;
            if skipped {
                r.manifests_skipped += 1;
            }
        }
        self.opts.observer.event(&Event::ManifestDone {
            digest: m.digest.to_string(),
            media_type: m.media_type.clone(),
            tag: None,
            skipped,
        });
        Ok(())
    }

    fn referrers_of<'s>(
        &'s self,
        subject: &'s Digest,
        depth: usize,
    ) -> futures_util::future::BoxFuture<'s, Result<(), TransferError>> {
        Box::pin(async move {
            if depth >= MAX_REFERRER_DEPTH {
                return Ok(());
            }
            for d in self.src.referrers(subject).await? {
                {
                    let mut n = self.referrers_seen.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    if *n > MAX_REFERRERS {
                        return Err(TransferError::Failed {
                            at: self.src.describe(),
                            what: format!("referrers of {subject}"),
                            reason: format!("more than {MAX_REFERRERS} referrers"),
                            status: None,
                        });
                    }
                }
                let r = self.fetch_child(&d).await?;
                // Its blobs, itself; its own referrers below, with the depth bound.
                self.manifest_tree(&r, 0, false).await?;
                self.referrers_of(&r.digest, depth + 1).await?;
            }
            Ok(())
        })
    }

    /// Every blob in `blobs` at the destination, `concurrency` at a time. All are tried;
    /// the errors are reported together.
    async fn blobs_of(&self, blobs: &[Descriptor]) -> Result<(), TransferError> {
        let results: Vec<Result<(), TransferError>> = futures_util::stream::iter(blobs.to_vec())
            .map(|d| async move { self.blob(&d).await })
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        let mut errors: Vec<TransferError> = results.into_iter().filter_map(Result::err).collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            n => {
                let first_status = errors.iter().find_map(|e| match e {
                    TransferError::Failed { status, .. } => *status,
                    _ => None,
                });
                if errors.iter().any(|e| matches!(e, TransferError::Interrupted)) {
                    return Err(TransferError::Interrupted);
                }
                Err(TransferError::Failed {
                    at: self.dst.describe(),
                    what: format!("{n} blobs"),
                    reason: errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    status: first_status,
                })
            }
        }
    }

    async fn blob(&self, d: &Descriptor) -> Result<(), TransferError> {
        let digest = d.digest.to_string();
        let obs = self.opts.observer;
        if !self
            .blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.digest.clone())
        {
            return Ok(());
        }
        if self.dst.has_blob(&d.digest).await? {
            self.report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .blobs_skipped += 1;
            obs.event(&Event::BlobSkipped {
                digest,
                size: d.size,
                reason: "exists",
            });
            return Ok(());
        }
        obs.event(&Event::BlobStarted {
            digest: digest.clone(),
            size: d.size,
        });
        let first = AtomicU64::new(u64::MAX);
        let last = AtomicU64::new(0);
        let size = d.size;
        let progress = |sent: u64| {
            let _ = first.compare_exchange(u64::MAX, sent, Ordering::Relaxed, Ordering::Relaxed);
            last.store(sent, Ordering::Relaxed);
            obs.event(&Event::BlobProgress {
                digest: digest.clone(),
                sent,
                size,
            });
        };
        let result = self.dst.put_blob(self.src, d, &progress).await;
        let start = first.load(Ordering::Relaxed);
        let start = if start == u64::MAX { 0 } else { start };
        self.sent.fetch_add(
            last.load(Ordering::Relaxed).saturating_sub(start),
            Ordering::Relaxed,
        );
        result?;
        self.report.lock().unwrap_or_else(|e| e.into_inner()).blobs_copied += 1;
        obs.event(&Event::BlobDone {
            digest,
            size: d.size,
            resumed_from: self.dst.resumed_from(&d.digest),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.matches(&serde_json::json!({"os":"linux","architecture":"arm64","variant":"v8"})));
        assert!(!p.matches(&serde_json::json!({"os":"linux","architecture":"arm64"})));
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches(&serde_json::json!({"os":"linux","architecture":"arm64","variant":"v8"})));
        assert!(!p.matches(&serde_json::json!({"os":"linux","architecture":"amd64"})));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        assert_eq!(p.to_string(), "linux/arm64");
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert_eq!(Platform::native().to_string(), "linux/amd64");
    }
}
