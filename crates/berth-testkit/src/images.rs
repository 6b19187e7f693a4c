//! Small, deterministic container images built on disk without any network: gzip'd layer
//! tarballs, image configs, image manifests and multi-platform indexes, in both the OCI and
//! the Docker schema2 media types, plus writers for the on-disk formats real clients read
//! (OCI image layout for `oci:DIR:TAG`, containers/image `dir:` for `dir:DIR`).
//!
//! Everything here is computed: every digest a test asserts comes from hashing the bytes
//! built here, never from a constant.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Oci,
    Docker,
}

impl Flavor {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_MANIFEST,
            Flavor::Docker => DOCKER_MANIFEST,
        }
    }
    pub fn index_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_INDEX,
            Flavor::Docker => DOCKER_LIST,
        }
    }
    pub fn config_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_CONFIG,
            Flavor::Docker => DOCKER_CONFIG,
        }
    }
    pub fn layer_type(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_LAYER_GZIP,
            Flavor::Docker => DOCKER_LAYER_GZIP,
        }
    }
}

/// Some bytes with the media type they are referenced by and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `data`
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// The hex part of the digest (the file name under `blobs/sha256/`).
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").expect("sha256 digest")
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// `{"mediaType", "digest", "size"}`
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.data.len(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }
    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }
    pub fn linux_arm64() -> Platform {
        Platform::new("linux", "arm64", Some("v8"))
    }
    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// One gzip'd layer tarball.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The compressed bytes, as stored in the registry.
    pub blob: Blob,
    /// `sha256:` of the uncompressed tar (what the config's `rootfs.diff_ids` lists).
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

/// A file or directory inside a layer.
#[derive(Clone, Debug)]
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// Executable file (mode 0755).
    Exec(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A deterministic uncompressed tar: fixed mtime, uid/gid 0, fixed modes, ustar headers.
pub fn tar_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match *e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).expect("tar dir");
            }
            Entry::File(p, data) | Entry::Exec(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if matches!(e, Entry::Exec(..)) {
                    0o755
                } else {
                    0o644
                });
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data).expect("tar file");
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).expect("tar symlink");
            }
        }
    }
    b.into_inner().expect("finish tar")
}

/// Deterministic gzip (mtime 0, no file name).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip finish")
}

/// Builds a gzip'd layer of the given flavor from `entries`.
pub fn layer(flavor: Flavor, entries: &[Entry<'_>]) -> Layer {
    let tar = tar_bytes(entries);
    let diff_id = sha256_digest(&tar);
    let blob = Blob::new(flavor.layer_type(), gzip(&tar));
    Layer { blob, diff_id, tar }
}

/// A layer holding one `size`-byte file of pseudo-random (incompressible) data derived
/// from `seed`: for exercising large, streamed uploads. (Gzip'd with stored blocks: the data
/// would not compress anyway, and unoptimized test builds deflate slowly.)
pub fn large_layer(flavor: Flavor, seed: &str, size: usize) -> Layer {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ b as u64);
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        data.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    data.truncate(size);
    let tar = tar_bytes(&[Entry::Dir("data/"), Entry::File("data/random.bin", &data)]);
    let diff_id = sha256_digest(&tar);
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::none());
    enc.write_all(&tar).expect("gzip");
    let blob = Blob::new(flavor.layer_type(), enc.finish().expect("gzip finish"));
    Layer { blob, diff_id, tar }
}

/// JSON serialized the way Docker does it (indented with three spaces): not canonical, so
/// a registry that re-serializes manifests changes their digests.
pub fn docker_style_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("serialize json");
    out
}

/// A single-platform image: config, layers and the manifest that ties them together.
#[derive(Clone, Debug)]
pub struct Image {
    pub flavor: Flavor,
    pub platform: Platform,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub manifest: Blob,
}

impl Image {
    /// Builds an image for `platform` whose contents depend on `seed` (so differently seeded
    /// images share no blobs) and whose layer count is `n_layers` (1 or 2).
    pub fn build(flavor: Flavor, platform: Platform, seed: &str, n_layers: usize) -> Image {
        assert!((1..=2).contains(&n_layers), "1 or 2 layers");
        let arch = platform.architecture.as_str();
        let os_release =
            format!("NAME=\"berth test image\"\nID=berthtest\nVERSION_ID=\"{seed}\"\nBERTH_ARCH={arch}\n");
        let script = format!("#!/bin/sh\necho hello from berth test image {seed} on {arch}\n");
        let mut layers = vec![layer(
            flavor,
            &[
                Entry::Dir("bin/"),
                Entry::Dir("etc/"),
                Entry::File("etc/os-release", os_release.as_bytes()),
                Entry::Exec("bin/hello", script.as_bytes()),
                Entry::Symlink("bin/greet", "hello"),
                Entry::Dir("tmp/"),
            ],
        )];
        if n_layers == 2 {
            let motd = format!("second layer of {seed} for {arch}\n");
            let data: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed.len() as u8)
                .collect();
            layers.push(layer(
                flavor,
                &[
                    Entry::Dir("app/"),
                    Entry::File("app/motd", motd.as_bytes()),
                    Entry::File("app/data.bin", &data),
                ],
            ));
        }

        Image::from_layers(flavor, platform, seed, layers)
    }

    /// An image of `platform` made of the given layers (config and manifest are derived).
    pub fn from_layers(flavor: Flavor, platform: Platform, seed: &str, layers: Vec<Layer>) -> Image {
        let arch = platform.architecture.as_str();
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let history: Vec<Value> = (0..layers.len())
            .map(|i| {
                json!({
                    "created": "2023-11-14T22:13:20Z",
                    "created_by": format!("berth-testkit layer {i}"),
                })
            })
            .collect();
        let mut config = json!({
            "architecture": arch,
            "os": platform.os,
            "created": "2023-11-14T22:13:20Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Entrypoint": ["/bin/hello"],
                "WorkingDir": "/",
                "Labels": { "org.example.berth.seed": seed },
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        let config = Blob::new(flavor.config_type(), docker_style_json(&config));

        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": flavor.manifest_type(),
            "config": config.descriptor(),
            "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(flavor.manifest_type(), docker_style_json(&manifest));
        Image {
            flavor,
            platform,
            config,
            layers,
            manifest,
        }
    }

    /// Config and layer blobs (not the manifest).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut v = vec![&self.config];
        v.extend(self.layers.iter().map(|l| &l.blob));
        v
    }

    pub fn manifest_digest(&self) -> &str {
        &self.manifest.digest
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.blob.digest.clone()).collect()
    }

    /// The ChainID of the image's top layer (what containerd's `--print-chainid` reports):
    /// `chain(L0) = diff_id(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln))`.
    pub fn chain_id(&self) -> String {
        let mut ids = self.layers.iter().map(|l| l.diff_id.clone());
        let first = ids.next().expect("at least one layer");
        ids.fold(first, |chain, diff_id| {
            sha256_digest(format!("{chain} {diff_id}").as_bytes())
        })
    }

    /// The image ID podman/docker give this image: the hex of the config digest.
    pub fn image_id(&self) -> &str {
        self.config.hex()
    }

    /// Writes an OCI image layout with this image tagged `tag`.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) {
        let mut blobs = self.blobs();
        blobs.push(&self.manifest);
        write_oci_layout(dir, &[(tag, &self.manifest)], &blobs);
    }

    /// Writes a containers/image `dir:` directory holding this image.
    pub fn write_dir(&self, dir: &Path) {
        write_dir_transport(dir, &self.manifest, &[], &self.blobs());
    }
}

/// A multi-platform image: an OCI index or a Docker manifest list plus its images.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub flavor: Flavor,
    pub index: Blob,
    pub images: Vec<Image>,
}

impl ImageSet {
    /// linux/amd64 (two layers) and linux/arm64/v8 (one layer), each with its own config.
    pub fn multi_platform(flavor: Flavor, seed: &str) -> ImageSet {
        let images = vec![
            Image::build(flavor, Platform::linux_amd64(), seed, 2),
            Image::build(flavor, Platform::linux_arm64(), seed, 1),
        ];
        let manifests: Vec<Value> = images
            .iter()
            .map(|img| {
                let mut d = img.manifest.descriptor();
                d["platform"] = img.platform.to_json();
                d
            })
            .collect();
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": flavor.index_type(),
            "manifests": manifests,
        });
        if flavor == Flavor::Oci {
            index["annotations"] = json!({ "org.example.berth.seed": seed });
        }
        let index = Blob::new(flavor.index_type(), docker_style_json(&index));
        ImageSet {
            flavor,
            index,
            images,
        }
    }

    pub fn index_digest(&self) -> &str {
        &self.index.digest
    }

    /// The child manifest digests, in index order.
    pub fn child_digests(&self) -> Vec<String> {
        self.images.iter().map(|i| i.manifest.digest.clone()).collect()
    }

    pub fn image(&self, architecture: &str) -> &Image {
        self.images
            .iter()
            .find(|i| i.platform.architecture == architecture)
            .unwrap_or_else(|| panic!("no {architecture} image in the set"))
    }

    /// Every config and layer blob (deduplicated), not manifests.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = BTreeMap::new();
        for img in &self.images {
            for b in img.blobs() {
                seen.entry(b.digest.clone()).or_insert(b);
            }
        }
        seen.into_values().collect()
    }

    /// Every blob including child manifests and the index itself.
    pub fn all_blobs(&self) -> Vec<&Blob> {
        let mut v = self.blobs();
        v.extend(self.images.iter().map(|i| &i.manifest));
        v.push(&self.index);
        v
    }

    /// Writes an OCI image layout whose `index.json` points (under the ref name `tag`) at
    /// this set's index, which `skopeo copy --all oci:DIR:TAG ...` copies whole.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) {
        write_oci_layout(dir, &[(tag, &self.index)], &self.all_blobs());
    }

    /// Writes a containers/image `dir:` directory holding the index/list and every image
    /// (`manifest.json` is the list, `<hex>.manifest.json` the instances).
    pub fn write_dir(&self, dir: &Path) {
        let instances: Vec<&Blob> = self.images.iter().map(|i| &i.manifest).collect();
        write_dir_transport(dir, &self.index, &instances, &self.blobs());
    }
}

/// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`). `refs` are
/// the `index.json` entries, each annotated with `org.opencontainers.image.ref.name`.
pub fn write_oci_layout(dir: &Path, refs: &[(&str, &Blob)], blobs: &[&Blob]) {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).expect("create blobs dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    for b in blobs.iter().chain(refs.iter().map(|(_, b)| b)) {
        std::fs::write(blob_dir.join(b.hex()), &b.data).expect("write blob");
    }
    let manifests: Vec<Value> = refs
        .iter()
        .map(|(tag, b)| {
            let mut d = b.descriptor();
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
            d
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("json"))
        .expect("write index.json");
}

/// Writes a containers/image `dir:` transport directory: `version`, `manifest.json` (the
/// top-level manifest), `<hex>.manifest.json` per list instance and `<hex>` per blob.
pub fn write_dir_transport(dir: &Path, top: &Blob, instances: &[&Blob], blobs: &[&Blob]) {
    std::fs::create_dir_all(dir).expect("create dir");
    std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").expect("write version");
    std::fs::write(dir.join("manifest.json"), &top.data).expect("write manifest.json");
    for m in instances {
        std::fs::write(dir.join(format!("{}.manifest.json", m.hex())), &m.data)
            .expect("write instance manifest");
    }
    for b in blobs {
        std::fs::write(dir.join(b.hex()), &b.data).expect("write blob");
    }
}

/// An OCI image layout read back from disk (e.g. what `skopeo copy ... oci:DIR:TAG` wrote).
pub struct OciLayout {
    pub dir: std::path::PathBuf,
    pub index: Value,
}

impl OciLayout {
    pub fn open(dir: &Path) -> OciLayout {
        let layout = std::fs::read(dir.join("oci-layout"))
            .unwrap_or_else(|e| panic!("{}/oci-layout: {e}", dir.display()));
        let layout: Value = serde_json::from_slice(&layout).expect("oci-layout json");
        assert_eq!(layout["imageLayoutVersion"], "1.0.0", "oci-layout version");
        let index = std::fs::read(dir.join("index.json"))
            .unwrap_or_else(|e| panic!("{}/index.json: {e}", dir.display()));
        OciLayout {
            dir: dir.to_path_buf(),
            index: serde_json::from_slice(&index).expect("index.json"),
        }
    }

    /// The `index.json` descriptor whose ref name is `tag`.
    pub fn descriptor(&self, tag: &str) -> Value {
        self.index["manifests"]
            .as_array()
            .expect("index.json manifests")
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no ref {tag:?} in index.json: {}", self.index))
            .clone()
    }

    /// Reads `blobs/sha256/<hex>` and checks it hashes to `digest`.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = self.dir.join("blobs").join("sha256").join(hex);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(sha256_digest(&data), digest, "{} is corrupt", path.display());
        data
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("blobs").join("sha256").join(hex).is_file()
    }
}

/// Checks that everything `set` consists of is in `layout` byte for byte and that `tag`
/// names the index by its original digest.
pub fn assert_layout_holds_set(layout: &OciLayout, tag: &str, set: &ImageSet) {
    let d = layout.descriptor(tag);
    assert_eq!(d["digest"], set.index.digest, "index digest under {tag}");
    assert_eq!(d["mediaType"], set.index.media_type, "index media type");
    assert_eq!(d["size"], set.index.size(), "index size");
    for b in set.all_blobs() {
        assert_eq!(
            layout.blob(&b.digest),
            b.data,
            "{} ({}) differs",
            b.digest,
            b.media_type
        );
    }
}

/// Checks that a containers/image `dir:` directory holds `set` byte for byte.
pub fn assert_dir_holds_set(dir: &Path, set: &ImageSet) {
    let top = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    assert_eq!(sha256_digest(&top), set.index.digest, "top-level manifest");
    assert_eq!(top, set.index.data);
    for img in &set.images {
        let p = dir.join(format!("{}.manifest.json", img.manifest.hex()));
        let m = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(m, img.manifest.data, "instance {}", img.manifest.digest);
    }
    for b in set.blobs() {
        let p = dir.join(b.hex());
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(data, b.data, "blob {}", b.digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_self_consistent() {
        let a = ImageSet::multi_platform(Flavor::Oci, "s1");
        let b = ImageSet::multi_platform(Flavor::Oci, "s1");
        assert_eq!(a.index, b.index);
        let c = ImageSet::multi_platform(Flavor::Oci, "s2");
        assert_ne!(a.index.digest, c.index.digest);
        for img in &a.images {
            let cfg: Value = serde_json::from_slice(&img.config.data).unwrap();
            let diff_ids: Vec<String> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
            assert_eq!(cfg["rootfs"]["diff_ids"], json!(diff_ids));
            for l in &img.layers {
                let mut d = flate2::read::GzDecoder::new(&l.blob.data[..]);
                let mut tar = Vec::new();
                std::io::Read::read_to_end(&mut d, &mut tar).unwrap();
                assert_eq!(sha256_digest(&tar), l.diff_id);
            }
            let m: Value = serde_json::from_slice(&img.manifest.data).unwrap();
            assert_eq!(m["config"]["digest"], img.config.digest);
        }
        let idx: Value = serde_json::from_slice(&a.index.data).unwrap();
        let children: Vec<&str> = idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap())
            .collect();
        assert_eq!(children, a.child_digests());
        let d = ImageSet::multi_platform(Flavor::Docker, "s1");
        assert_ne!(a.index.digest, d.index.digest);
        assert_eq!(d.index.media_type, DOCKER_LIST);
    }
}
