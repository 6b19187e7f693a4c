//! Interop with the `oci-client` crate (the ORAS Rust client) against the real `berth`
//! binary on loopback: push, pull, chunked and monolithic uploads, tags, catalog, indexes,
//! cross-repository mounts and referrers.
//!
//! `BERTH_INTEROP_TARGET=distribution` runs the tests against CNCF distribution instead;
//! two are expected to fail there: `oci_client_referrers` (distribution 2.8 has no
//! referrers API) and `oci_client_list_tags_with_pagination` (it ignores `n` and does not
//! sort tags, both of which the spec requires).
//!
//! Note: `Client::pull` fetches layers concurrently and returns them in completion order,
//! not manifest order, so pulled layers are compared by digest.

use std::collections::BTreeMap;

use berth_testkit::clients::{Target, http};
use berth_testkit::images::{
    self, Blob, Flavor, Image, ImageSet, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Platform,
    docker_style_json, sha256_digest,
};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};

/// Interop helpers on the registry under test.
trait Interop {
    fn tag(&self, repo: &str, tag: &str) -> Reference;
    fn digest(&self, repo: &str, digest: &str) -> Reference;
}

impl Interop for Target {
    fn tag(&self, repo: &str, tag: &str) -> Reference {
        Reference::with_tag(self.addr().to_string(), repo.to_string(), tag.to_string())
    }

    fn digest(&self, repo: &str, digest: &str) -> Reference {
        Reference::with_digest(self.addr().to_string(), repo.to_string(), digest.to_string())
    }
}

fn client_with(f: impl FnOnce(&mut ClientConfig)) -> Client {
    let mut config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    };
    f(&mut config);
    Client::new(config)
}

fn client() -> Client {
    client_with(|_| {})
}

const ANON: RegistryAuth = RegistryAuth::Anonymous;

const ALL_MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    images::DOCKER_MANIFEST,
    images::DOCKER_LIST,
];

async fn pull_blob_bytes(c: &Client, r: &Reference, digest: &str) -> Vec<u8> {
    let mut out = Vec::new();
    c.pull_blob(r, digest, &mut out)
        .await
        .unwrap_or_else(|e| panic!("pull_blob {digest}: {e}"));
    out
}

/// Digests of pulled layers (sorted: `Client::pull` returns them in completion order).
fn layer_set(layers: &[ImageLayer]) -> Vec<String> {
    let mut v: Vec<String> = layers.iter().map(|l| sha256_digest(&l.data)).collect();
    v.sort();
    v
}

fn layer_set_of(img: &Image) -> Vec<String> {
    let mut v = img.layer_digests();
    v.sort();
    v
}

/// Pushes blobs and the exact manifest bytes of `image` under `tag`.
async fn push_image_raw(c: &Client, reg: &Target, repo: &str, tag: &str, image: &Image) {
    let r = reg.tag(repo, tag);
    for b in image.blobs() {
        c.push_blob(&r, b.data.clone(), &b.digest)
            .await
            .unwrap_or_else(|e| panic!("push_blob {}: {e}", b.digest));
    }
    c.push_manifest_raw(&r, image.manifest.data.clone(), OCI_MANIFEST.parse().unwrap())
        .await
        .expect("push_manifest_raw");
}

#[tokio::test]
async fn oci_client_push_then_pull_image() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let c = client();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "oci-client-push", 2);
    let r = reg.tag("ocic/app", "v1");

    let layers: Vec<ImageLayer> = img
        .layers
        .iter()
        .map(|l| ImageLayer::new(l.blob.data.clone(), OCI_LAYER_GZIP.to_string(), None))
        .collect();
    let config = Config::new(img.config.data.clone(), OCI_CONFIG.to_string(), None);
    let resp = c.push(&r, &layers, config, &ANON, None).await.expect("push");
    assert!(!resp.manifest_url.is_empty());

    let pulled = c.pull(&r, &ANON, vec![OCI_LAYER_GZIP]).await.expect("pull");
    assert_eq!(pulled.config.data.as_ref(), &img.config.data[..], "config bytes");
    assert_eq!(pulled.config.media_type, OCI_CONFIG);
    assert_eq!(layer_set(&pulled.layers), layer_set_of(&img), "pulled layers");
    assert!(pulled.layers.iter().all(|l| l.media_type == OCI_LAYER_GZIP));
    let manifest = pulled.manifest.expect("manifest");
    assert_eq!(manifest.config.digest, img.config.digest);
    let layer_digests: Vec<String> = manifest.layers.iter().map(|d| d.digest.clone()).collect();
    assert_eq!(layer_digests, img.layer_digests());

    // The digest the client reports is the digest of the bytes the registry serves.
    let (raw, digest) = c
        .pull_manifest_raw(&r, &ANON, &[OCI_MANIFEST])
        .await
        .expect("pull_manifest_raw");
    assert_eq!(sha256_digest(&raw), digest);
    assert_eq!(pulled.digest.as_deref(), Some(digest.as_str()));
    let head = c.fetch_manifest_digest(&r, &ANON).await.expect("HEAD digest");
    assert_eq!(head, digest);

    // And the image is pullable by that digest, with the same content.
    let by_digest = c
        .pull(&reg.digest("ocic/app", &digest), &ANON, vec![OCI_LAYER_GZIP])
        .await
        .expect("pull by digest");
    assert_eq!(by_digest.config.data, pulled.config.data);
    assert_eq!(by_digest.digest.as_deref(), Some(digest.as_str()));
}

#[tokio::test]
async fn oci_client_exact_manifest_bytes_by_tag_and_digest() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let c = client();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "oci-client-raw", 2);
    push_image_raw(&c, &reg, "ocic/raw", "v1", &img).await;

    for r in [
        reg.tag("ocic/raw", "v1"),
        reg.digest("ocic/raw", &img.manifest.digest),
    ] {
        let (raw, digest) = c
            .pull_manifest_raw(&r, &ANON, ALL_MANIFEST_TYPES)
            .await
            .unwrap_or_else(|e| panic!("pull_manifest_raw {r}: {e}"));
        assert_eq!(raw.as_ref(), &img.manifest.data[..], "{r}: bytes");
        assert_eq!(digest, img.manifest.digest, "{r}: digest");
        let (m, d) = c.pull_image_manifest(&r, &ANON).await.expect("parsed");
        assert_eq!(d, img.manifest.digest);
        assert_eq!(m.config.digest, img.config.digest);
        assert_eq!(m.config.size as usize, img.config.size());
    }
    let r = reg.tag("ocic/raw", "v1");
    for b in img.blobs() {
        assert_eq!(pull_blob_bytes(&c, &r, &b.digest).await, b.data);
        assert!(c.blob_exists(&r, &b.digest).await.expect("HEAD blob"));
    }
    assert!(
        !c.blob_exists(&r, &sha256_digest(b"never pushed"))
            .await
            .expect("HEAD missing blob"),
        "a blob that was never pushed exists"
    );
    // Not in another repository either (no cross-repository leakage without a mount).
    let other = reg.tag("ocic/other", "v1");
    assert!(
        !c.blob_exists(&other, &img.config.digest)
            .await
            .expect("HEAD blob in other repo"),
        "blob visible in a repository it was never pushed or mounted to"
    );
}

#[tokio::test]
async fn oci_client_chunked_and_monolithic_uploads() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let r = reg.tag("ocic/uploads", "v1");

    // Chunked: one PATCH per stream item (three chunks), then the closing PUT.
    let chunks: Vec<Vec<u8>> = (0u8..3)
        .map(|i| {
            (0..100_000u32)
                .map(|j| (j.wrapping_mul(31).wrapping_add(i as u32 * 7) % 251) as u8)
                .collect()
        })
        .collect();
    let whole: Vec<u8> = chunks.concat();
    let whole_digest = sha256_digest(&whole);
    let chunked = client();
    let stream = futures_util::stream::iter(
        chunks
            .clone()
            .into_iter()
            .map(|c| Ok::<_, oci_client::errors::OciDistributionError>(bytes::Bytes::from(c))),
    );
    chunked
        .push_blob_stream(&r, stream, &whole_digest, None)
        .await
        .expect("chunked push_blob_stream");
    assert_eq!(pull_blob_bytes(&chunked, &r, &whole_digest).await, whole);

    // Chunked with the digest computed while streaming.
    let other: Vec<u8> = whole.iter().rev().copied().collect();
    let stream = futures_util::stream::iter(
        other
            .chunks(70_000)
            .map(|c| Ok::<_, oci_client::errors::OciDistributionError>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let resp = chunked
        .push_blob_stream_chunked(&r, stream)
        .await
        .expect("push_blob_stream_chunked");
    assert_eq!(resp.blob_digest, sha256_digest(&other));
    assert_eq!(resp.size, other.len() as u64);
    assert_eq!(pull_blob_bytes(&chunked, &r, &resp.blob_digest).await, other);

    // Monolithic: POST to open the session, one PUT with the whole body.
    let mono = client_with(|c| c.use_monolithic_push = true);
    let blob: Vec<u8> = b"monolithic upload through oci-client\n".repeat(1000);
    let digest = sha256_digest(&blob);
    mono.push_blob(&r, blob.clone(), &digest)
        .await
        .expect("monolithic push_blob");
    assert_eq!(pull_blob_bytes(&mono, &r, &digest).await, blob);

    // A wrong digest is refused and leaves no blob behind.
    let bad = sha256_digest(b"not the content");
    let err = mono.push_blob(&r, blob.clone(), &bad).await;
    assert!(err.is_err(), "push with a wrong digest succeeded");
    assert!(!mono.blob_exists(&r, &bad).await.expect("HEAD"));
}

#[tokio::test]
async fn oci_client_list_tags_with_pagination() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let c = client();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "oci-client-tags", 1);
    let mut tags = vec!["v1.0", "latest", "alpha", "v2.0", "beta-1", "0.9"];
    for t in &tags {
        push_image_raw(&c, &reg, "ocic/tags", t, &img).await;
    }
    tags.sort_unstable();
    let r = reg.tag("ocic/tags", "latest");

    let all = c.list_tags(&r, &ANON, None, None).await.expect("list_tags");
    assert_eq!(all.name, "ocic/tags");
    assert_eq!(all.tags, tags, "all tags, lexical order");

    // Page through two at a time with n and last.
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    for _ in 0..10 {
        let page = c
            .list_tags(&r, &ANON, Some(2), last.as_deref())
            .await
            .expect("list_tags page");
        if page.tags.is_empty() {
            break;
        }
        assert!(page.tags.len() <= 2, "page larger than n=2: {:?}", page.tags);
        last = page.tags.last().cloned();
        seen.extend(page.tags);
    }
    assert_eq!(seen, tags, "tags collected page by page");

    let after_beta = c
        .list_tags(&r, &ANON, None, Some("beta-1"))
        .await
        .expect("list_tags last only");
    let expected: Vec<&str> = tags.iter().copied().filter(|t| *t > "beta-1").collect();
    assert_eq!(after_beta.tags, expected, "tags after beta-1");
}

#[tokio::test]
async fn oci_client_catalog_lists_repositories() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let c = client();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "oci-client-catalog", 1);
    let mut repos = vec!["ocic/zeta", "ocic/alpha", "other/nested/deep"];
    for repo in &repos {
        push_image_raw(&c, &reg, repo, "v1", &img).await;
    }
    repos.sort_unstable();
    let cat = c
        .catalog(&reg.tag("ocic/zeta", "v1"), &ANON, None, None)
        .await
        .expect("catalog");
    assert_eq!(cat.repositories, repos);
    let page = c
        .catalog(&reg.tag("ocic/zeta", "v1"), &ANON, Some(1), Some("ocic/alpha"))
        .await
        .expect("catalog page");
    assert_eq!(page.repositories, vec!["ocic/zeta"]);
}

#[tokio::test]
async fn oci_client_index_and_platform_resolution() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let set = ImageSet::multi_platform(Flavor::Oci, "oci-client-index");
    let repo = "ocic/multi";
    let c = client();
    for b in set.blobs() {
        c.push_blob(&reg.tag(repo, "x"), b.data.clone(), &b.digest)
            .await
            .expect("push_blob");
    }
    for img in &set.images {
        c.push_manifest_raw(
            &reg.digest(repo, &img.manifest.digest),
            img.manifest.data.clone(),
            OCI_MANIFEST.parse().unwrap(),
        )
        .await
        .expect("push child manifest by digest");
    }
    c.push_manifest_raw(
        &reg.tag(repo, "v1"),
        set.index.data.clone(),
        OCI_INDEX.parse().unwrap(),
    )
    .await
    .expect("push index");

    let (raw, digest) = c
        .pull_manifest_raw(&reg.tag(repo, "v1"), &ANON, ALL_MANIFEST_TYPES)
        .await
        .expect("raw index");
    assert_eq!(raw.as_ref(), &set.index.data[..]);
    assert_eq!(digest, set.index.digest);

    let (m, d) = c
        .pull_manifest(&reg.tag(repo, "v1"), &ANON)
        .await
        .expect("pull_manifest");
    assert_eq!(d, set.index.digest);
    let OciManifest::ImageIndex(index) = m else {
        panic!("expected an index, got {m:?}");
    };
    let children: Vec<String> = index.manifests.iter().map(|e| e.digest.clone()).collect();
    assert_eq!(children, set.child_digests());

    for arch in ["amd64", "arm64"] {
        let arch_owned = arch.to_string();
        let c = client_with(move |cfg| {
            cfg.platform_resolver = Some(Box::new(move |entries: &[ImageIndexEntry]| {
                entries
                    .iter()
                    .find(|e| {
                        e.platform
                            .as_ref()
                            .is_some_and(|p| p.architecture.to_string() == arch_owned)
                    })
                    .map(|e| e.digest.clone())
            }))
        });
        let expected = set.image(arch);
        let (m, d, list) = c
            .pull_image_manifest_and_list_digest(&reg.tag(repo, "v1"), &ANON)
            .await
            .expect("resolve platform");
        assert_eq!(d, expected.manifest.digest, "{arch} child digest");
        assert_eq!(list.as_deref(), Some(set.index.digest.as_str()));
        assert_eq!(m.config.digest, expected.config.digest);
        let pulled = c
            .pull(&reg.tag(repo, "v1"), &ANON, vec![OCI_LAYER_GZIP])
            .await
            .expect("pull through index");
        assert_eq!(pulled.config.data.as_ref(), &expected.config.data[..]);
        assert_eq!(layer_set(&pulled.layers), layer_set_of(expected), "{arch} layers");
    }
}

#[tokio::test]
async fn oci_client_mounts_blobs_across_repositories() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let c = client();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "oci-client-mount", 2);
    push_image_raw(&c, &reg, "ocic/source", "v1", &img).await;

    let source = reg.tag("ocic/source", "v1");
    let target = reg.tag("ocic/target", "v1");
    for b in img.blobs() {
        assert!(!c.blob_exists(&target, &b.digest).await.expect("HEAD"));
        c.mount_blob(&target, &source, &b.digest)
            .await
            .unwrap_or_else(|e| panic!("mount {}: {e}", b.digest));
        assert!(c.blob_exists(&target, &b.digest).await.expect("HEAD"));
        assert_eq!(pull_blob_bytes(&c, &target, &b.digest).await, b.data);
    }
    // With every blob mounted, the manifest can be pushed to the target without uploads.
    c.push_manifest_raw(&target, img.manifest.data.clone(), OCI_MANIFEST.parse().unwrap())
        .await
        .expect("manifest after mount");
    let (raw, digest) = c
        .pull_manifest_raw(&target, &ANON, &[OCI_MANIFEST])
        .await
        .expect("pull mounted image");
    assert_eq!(raw.as_ref(), &img.manifest.data[..]);
    assert_eq!(digest, img.manifest.digest);
}

/// An OCI 1.1 artifact manifest (empty config) referring to `subject`.
fn artifact(artifact_type: &str, payload: &Blob, subject: &Blob) -> (Blob, Blob) {
    let empty = Blob::new("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let mut annotations = BTreeMap::new();
    annotations.insert("org.example.berth.kind", artifact_type);
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [payload.descriptor()],
        "subject": subject.descriptor(),
        "annotations": annotations,
    });
    (Blob::new(OCI_MANIFEST, docker_style_json(&m)), empty)
}

#[tokio::test]
async fn oci_client_referrers() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let c = client();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "oci-client-referrers", 1);
    let repo = "ocic/referrers";
    push_image_raw(&c, &reg, repo, "v1", &img).await;

    let sbom_type = "application/vnd.example.sbom.v1+json";
    let sig_type = "application/vnd.example.signature.v1";
    let sbom_payload = Blob::new("application/json", br#"{"packages":["hello"]}"#.to_vec());
    let sig_payload = Blob::new("application/octet-stream", b"signature bytes".to_vec());
    let (sbom, empty) = artifact(sbom_type, &sbom_payload, &img.manifest);
    let (sig, _) = artifact(sig_type, &sig_payload, &img.manifest);
    let r = reg.tag(repo, "v1");
    for b in [&empty, &sbom_payload, &sig_payload] {
        c.push_blob(&r, b.data.clone(), &b.digest)
            .await
            .expect("push artifact blob");
    }
    // Pushed by digest (untagged), as ORAS does; check the OCI-Subject header by hand.
    for a in [&sbom, &sig] {
        let url = reg.url(&format!("/v2/{repo}/manifests/{}", a.digest));
        let resp = http::put(&url, OCI_MANIFEST, &a.data).expect("PUT artifact");
        assert_eq!(resp.status, 201, "PUT {url}:\n{resp}");
        assert_eq!(
            resp.header("oci-subject"),
            Some(img.manifest.digest.as_str()),
            "OCI-Subject on PUT {url}:\n{resp}"
        );
    }

    let subject = reg.digest(repo, &img.manifest.digest);
    let all = c.pull_referrers(&subject, None).await.expect("referrers");
    let mut got: Vec<(String, Option<String>)> = all
        .manifests
        .iter()
        .map(|e| (e.digest.clone(), e.artifact_type.clone()))
        .collect();
    got.sort();
    let mut want = vec![
        (sbom.digest.clone(), Some(sbom_type.to_string())),
        (sig.digest.clone(), Some(sig_type.to_string())),
    ];
    want.sort();
    assert_eq!(got, want, "referrers of the image");
    for e in &all.manifests {
        let a = if e.digest == sbom.digest { &sbom } else { &sig };
        assert_eq!(e.size as usize, a.size());
        assert_eq!(e.media_type, OCI_MANIFEST);
    }

    let only_sbom = c
        .pull_referrers(&subject, Some(sbom_type))
        .await
        .expect("filtered referrers");
    let digests: Vec<&str> = only_sbom.manifests.iter().map(|e| e.digest.as_str()).collect();
    assert_eq!(digests, vec![sbom.digest.as_str()], "artifactType filter");

    // The raw endpoint: an OCI index, and the filter is reported as applied.
    let resp = http::must_get(
        &reg.url(&format!(
            "/v2/{repo}/referrers/{}?artifactType={}",
            img.manifest.digest,
            sbom_type.replace('+', "%2B")
        )),
        &[],
    );
    assert_eq!(resp.status, 200, "{resp}");
    assert_eq!(
        resp.header("content-type")
            .map(|v| v.split(';').next().unwrap().trim()),
        Some(OCI_INDEX),
        "{resp}"
    );
    assert_eq!(resp.header("oci-filters-applied"), Some("artifactType"), "{resp}");
    let v: Value = serde_json::from_slice(&resp.body).expect("referrers json");
    assert_eq!(v["manifests"].as_array().map(Vec::len), Some(1), "{v}");

    // A subject without referrers: an empty index, not a 404.
    let none = c
        .pull_referrers(&reg.digest(repo, &img.config.digest), None)
        .await
        .expect("no referrers");
    assert!(none.manifests.is_empty());
    let resp = http::must_get(
        &reg.url(&format!("/v2/{repo}/referrers/{}", img.config.digest)),
        &[],
    );
    assert_eq!(resp.status, 200, "referrers of an unreferenced digest:\n{resp}");
}
