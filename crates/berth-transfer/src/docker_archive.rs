//! `DockerArchive`: what `docker save` and `podman save --format docker-archive` write
//! (a tar holding `manifest.json` with `Config`, `RepoTags` and `Layers`, the config
//! JSON and one tar per layer), read as Docker schema 2 images.
//!
//! The config blob is the config file as it is (when it is named `<hex>.json` its
//! sha256 must be that hex), each layer is its file as it is (media type
//! `...rootfs.diff.tar` for a plain tar, `...rootfs.diff.tar.gzip` for a gzip'd one), so
//! the image's config digest, and with it its image ID, and its layer `diff_ids` are
//! those of the image that was saved. The archive holds no registry manifest, so one is
//! generated once per image, as canonical JSON (sorted keys, no whitespace): **this
//! manifest, and so the manifest digest, is new** (a registry the image came from had
//! compressed layers and another manifest). It is the only manifest berth ever creates.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use berth_oci::{Digest, DigestHasher};
use bytes::Bytes;

use crate::archive::TarIndex;
use crate::layout::{self, failed};
use crate::{BlobReader, Manifest, Source, TransferError};

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MANIFEST_FILE: &str = "manifest.json";

/// One image of the archive.
#[derive(Clone, Debug)]
pub struct DockerImage {
    /// `RepoTags` of `manifest.json` (may be empty).
    pub repo_tags: Vec<String>,
    /// The generated schema 2 manifest.
    pub manifest: Manifest,
}

pub struct DockerArchive {
    at: String,
    tar: TarIndex,
    images: Vec<DockerImage>,
    /// Blob digest -> (entry name, size).
    blobs: HashMap<Digest, (String, u64)>,
}

// Field order is alphabetical: serde writes fields in declaration order, which makes
// this canonical JSON.
#[derive(serde::Serialize)]
struct GenManifest {
    config: GenDescriptor,
    layers: Vec<GenDescriptor>,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
}

#[derive(serde::Serialize)]
struct GenDescriptor {
    digest: Digest,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    size: u64,
}

#[derive(serde::Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl DockerArchive {
    /// Opens a `docker save` archive (blocking: every layer is hashed once to learn its
    /// digest).
    pub fn open(path: &Path) -> Result<DockerArchive, TransferError> {
        let at = format!("docker-archive:{}", path.display());
        DockerArchive::from_index(TarIndex::open(path, &at)?)
    }

    pub(crate) fn from_index(mut tar: TarIndex) -> Result<DockerArchive, TransferError> {
        tar.at = tar.at.replacen("oci-archive:", "docker-archive:", 1);
        let at = tar.at.clone();
        if !tar.contains(MANIFEST_FILE) {
            return Err(failed(&at, MANIFEST_FILE, "missing: not a docker-archive"));
        }
        let entries: Vec<SaveEntry> = serde_json::from_slice(&tar.read_small(MANIFEST_FILE)?)
            .map_err(|e| failed(&at, MANIFEST_FILE, format!("not a docker save manifest: {e}")))?;
        if entries.is_empty() {
            return Err(failed(&at, MANIFEST_FILE, "lists no images"));
        }
        let mut blobs = HashMap::new();
        let mut hashed: HashMap<String, (Digest, u64, &'static str)> = HashMap::new();
        let mut images = Vec::new();
        for entry in entries {
            let config = tar.read_small(&entry.config)?;
            let config_digest = Digest::sha256_of(&config);
            let named = Path::new(&entry.config)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if let Some(hex) = named
                && hex != config_digest.hex()
            {
                return Err(failed(
                    &at,
                    format!("config {}", entry.config),
                    format!("its bytes hash to {config_digest}, not to the digest its name says"),
                ));
            }
            blobs.insert(config_digest.clone(), (entry.config.clone(), config.len() as u64));
            let mut layers = Vec::new();
            for name in &entry.layers {
                if !hashed.contains_key(name) {
                    let h = hash_entry(&tar, name)?;
                    hashed.insert(name.clone(), h);
                }
                let (digest, size, media_type) = hashed[name].clone();
                blobs.insert(digest.clone(), (name.clone(), size));
                layers.push(GenDescriptor {
                    digest,
                    media_type,
                    size,
                });
            }
            let manifest = GenManifest {
                config: GenDescriptor {
                    digest: config_digest,
                    media_type: DOCKER_CONFIG,
                    size: config.len() as u64,
                },
                layers,
                media_type: berth_oci::media::DOCKER_MANIFEST,
                schema_version: 2,
            };
            let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("json"));
            images.push(DockerImage {
                repo_tags: entry.repo_tags.unwrap_or_default(),
                manifest: Manifest {
                    digest: Digest::sha256_of(&bytes),
                    bytes,
                    media_type: berth_oci::media::DOCKER_MANIFEST.to_string(),
                },
            });
        }
        Ok(DockerArchive {
            at,
            tar,
            images,
            blobs,
        })
    }

    pub fn images(&self) -> &[DockerImage] {
        &self.images
    }
}

/// sha256 and size of an entry, and whether it is gzip'd.
fn hash_entry(tar: &TarIndex, name: &str) -> Result<(Digest, u64, &'static str), TransferError> {
    let at = &tar.at;
    let size = tar
        .size(name)
        .ok_or_else(|| failed(at, format!("layer {name}"), "not in the archive"))?;
    let what = format!("layer {name}");
    let mut file =
        std::fs::File::open(&tar.path).map_err(|e| failed(at, &what, format!("cannot open: {e}")))?;
    let start = tar.offset(name).expect("checked by size()");
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
        .map_err(|e| failed(at, &what, format!("cannot seek: {e}")))?;
    let mut file = file.take(size);
    let mut hasher = DigestHasher::new(berth_oci::Algorithm::Sha256);
    let mut buf = vec![0u8; 1 << 20];
    let mut first = [0u8; 2];
    let mut seen = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| failed(at, &what, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        if seen == 0 && n >= 2 {
            first.copy_from_slice(&buf[..2]);
        }
        seen += n as u64;
        hasher.update(&buf[..n]);
    }
    if seen != size {
        return Err(failed(
            at,
            &what,
            format!("{seen} bytes where the tar says {size}"),
        ));
    }
    let media_type = if first == [0x1f, 0x8b] {
        DOCKER_LAYER_GZIP
    } else {
        DOCKER_LAYER_TAR
    };
    Ok((hasher.finish(), size, media_type))
}

#[async_trait::async_trait]
impl Source for DockerArchive {
    fn describe(&self) -> String {
        self.at.clone()
    }

    /// `reference`: one of the archive's `RepoTags`, the generated manifest's digest, or
    /// the position of the image in `manifest.json` (`0`, `1`, ...).
    async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError> {
        let by_digest = reference.parse::<Digest>().ok();
        let by_position = reference.parse::<usize>().ok();
        self.images
            .iter()
            .enumerate()
            .find(|(i, img)| {
                img.repo_tags.iter().any(|t| t == reference)
                    || by_digest.as_ref() == Some(&img.manifest.digest)
                    || by_position == Some(*i)
            })
            .map(|(_, img)| img.manifest.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .images
                    .iter()
                    .flat_map(|i| i.repo_tags.iter().map(String::as_str))
                    .collect();
                failed(
                    &self.at,
                    format!("image {reference:?}"),
                    format!("not in {MANIFEST_FILE} (it names: {})", names.join(", ")),
                )
            })
    }

    async fn blob(&self, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader, TransferError> {
        let what = format!("blob {digest}");
        let (name, known) = self
            .blobs
            .get(digest)
            .ok_or_else(|| failed(&self.at, &what, "not in the archive"))?;
        if *known != size {
            return Err(failed(
                &self.at,
                &what,
                format!("{known} bytes in the archive where its descriptor says {size}"),
            ));
        }
        let body = self.tar.stream(name, &what).await?;
        Ok(layout::skip(
            layout::verified(body, digest, size, &self.at),
            offset,
        ))
    }
}
