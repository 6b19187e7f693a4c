//! Interop with real clients (skopeo, podman, containerd's ctr, CNCF distribution as an
//! upstream) against the real `berth` binary on loopback.
//!
//! Every test starts its own server. The clients must be installed (`apt-get install -y
//! skopeo podman containerd docker-registry`); a missing client fails the test, it never
//! skips.
//!
//! `BERTH_INTEROP_TARGET=distribution` runs the same tests against CNCF distribution instead
//! of berth: a check of the tests themselves against the reference implementation (where
//! distribution 2.8 departs from the spec, e.g. unsorted tag lists, that is noted inline).
//! `BERTH_INTEROP_DEBUG=1` makes skopeo/podman log their HTTP traffic into failure messages.

use std::path::Path;

use berth_testkit::clients::{
    Containerd, Distribution, Podman, Skopeo, Target, docker_ref, http, push_image_set_http,
};
use berth_testkit::images::{
    self, Flavor, Image, ImageSet, OciLayout, Platform, assert_dir_holds_set, assert_layout_holds_set,
    large_layer, sha256_digest,
};
use serde_json::Value;

/// Interop helpers on the registry under test.
trait Interop {
    /// `docker://ADDR/REPO:TAG` or `docker://ADDR/REPO@DIGEST`
    fn docker(&self, repo: &str, reference: &str) -> String;
    fn get_manifest(&self, repo: &str, reference: &str) -> http::Response;
    fn get_blob(&self, repo: &str, digest: &str) -> http::Response;
}

impl Interop for Target {
    /// `docker://ADDR/REPO:TAG` or `docker://ADDR/REPO@DIGEST`
    fn docker(&self, repo: &str, reference: &str) -> String {
        docker_ref(self.addr(), repo, reference)
    }

    fn get_manifest(&self, repo: &str, reference: &str) -> http::Response {
        http::must_get(
            &self.url(&format!("/v2/{repo}/manifests/{reference}")),
            &[
                images::OCI_INDEX,
                images::OCI_MANIFEST,
                images::DOCKER_LIST,
                images::DOCKER_MANIFEST,
            ],
        )
    }

    fn get_blob(&self, repo: &str, digest: &str) -> http::Response {
        // Redirects are not followed by the helper: follow one by hand if the server uses them.
        let r = http::must_get(&self.url(&format!("/v2/{repo}/blobs/{digest}")), &[]);
        if (300..400).contains(&r.status)
            && let Some(loc) = r.header("location")
        {
            let loc = if loc.starts_with('/') {
                self.url(loc)
            } else {
                loc.to_string()
            };
            return http::must_get(&loc, &[]);
        }
        r
    }
}

fn oci_dir(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn dir_ref(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

/// The manifest the registry serves for `repo:reference` is `expected` byte for byte, with
/// the right digest header and content type.
fn assert_manifest_served(reg: &Target, repo: &str, reference: &str, expected: &images::Blob) {
    let r = reg.get_manifest(repo, reference);
    assert_eq!(r.status, 200, "GET manifest {repo}:{reference}:\n{r}");
    assert_eq!(
        r.body, expected.data,
        "manifest bytes for {repo}:{reference} differ from what was pushed"
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(expected.digest.as_str()),
        "Docker-Content-Digest for {repo}:{reference}:\n{r}"
    );
    let ct = r.header("content-type").unwrap_or("");
    assert_eq!(
        ct.split(';').next().unwrap().trim(),
        expected.media_type,
        "Content-Type for {repo}:{reference}"
    );
}

/// Every config/layer blob of `set` is served from `repo` byte for byte.
fn assert_blobs_served(reg: &Target, repo: &str, blobs: &[&images::Blob]) {
    for b in blobs {
        let r = reg.get_blob(repo, &b.digest);
        assert_eq!(r.status, 200, "GET blob {repo}@{}:\n{r}", b.digest);
        assert_eq!(sha256_digest(&r.body), b.digest, "blob {} content", b.digest);
    }
}

/// skopeo's raw view of every manifest of `set` (index by tag and by digest, each child by
/// digest) is byte-identical to what was built.
fn assert_set_via_skopeo(skopeo: &Skopeo, reg: &Target, repo: &str, tag: &str, set: &ImageSet) {
    let by_tag = skopeo.inspect_raw(&reg.docker(repo, tag));
    assert_eq!(sha256_digest(&by_tag), set.index.digest, "index digest by tag");
    assert_eq!(by_tag, set.index.data, "index bytes by tag");
    let by_digest = skopeo.inspect_raw(&reg.docker(repo, &set.index.digest));
    assert_eq!(by_digest, set.index.data, "index bytes by digest");
    for img in &set.images {
        let raw = skopeo.inspect_raw(&reg.docker(repo, &img.manifest.digest));
        assert_eq!(
            raw, img.manifest.data,
            "child manifest {} ({})",
            img.manifest.digest, img.platform.architecture
        );
    }
}

#[test]
fn skopeo_copy_all_oci_index_round_trip_preserves_digests() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let set = ImageSet::multi_platform(Flavor::Oci, "oci-round-trip");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    set.write_oci_layout(&src, "v1");

    let repo = "interop/oci-multi";
    skopeo.copy_all(&oci_dir(&src, "v1"), &reg.docker(repo, "v1"));

    assert_set_via_skopeo(&skopeo, &reg, repo, "v1", &set);
    assert_manifest_served(&reg, repo, "v1", &set.index);
    for img in &set.images {
        assert_manifest_served(&reg, repo, &img.manifest.digest, &img.manifest);
    }
    assert_blobs_served(&reg, repo, &set.blobs());

    // And back out into a fresh OCI layout: the same index, children, configs and layers.
    let dst = tmp.path().join("dst");
    skopeo.copy_all(&reg.docker(repo, "v1"), &oci_dir(&dst, "out"));
    assert_layout_holds_set(&OciLayout::open(&dst), "out", &set);
}

#[test]
fn skopeo_copy_all_docker_manifest_list_round_trip_preserves_digests() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let set = ImageSet::multi_platform(Flavor::Docker, "docker-round-trip");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    set.write_dir(&src);

    let repo = "interop/docker-multi";
    skopeo.copy_all(&dir_ref(&src), &reg.docker(repo, "v1"));

    assert_set_via_skopeo(&skopeo, &reg, repo, "v1", &set);
    assert_manifest_served(&reg, repo, "v1", &set.index);
    for img in &set.images {
        assert_manifest_served(&reg, repo, &img.manifest.digest, &img.manifest);
    }
    assert_blobs_served(&reg, repo, &set.blobs());

    let dst = tmp.path().join("dst");
    skopeo.copy_all(&reg.docker(repo, "v1"), &dir_ref(&dst));
    assert_dir_holds_set(&dst, &set);

    // Platform selection through the Docker manifest list.
    let arm = tmp.path().join("arm64");
    skopeo.copy(
        &reg.docker(repo, "v1"),
        &dir_ref(&arm),
        &[
            "--override-os=linux",
            "--override-arch=arm64",
            "--override-variant=v8",
        ],
    );
    let arm64 = set.image("arm64");
    assert_eq!(
        std::fs::read(arm.join("manifest.json")).unwrap(),
        arm64.manifest.data
    );
    assert_eq!(
        std::fs::read(arm.join(arm64.config.hex())).unwrap(),
        arm64.config.data
    );
}

#[test]
fn skopeo_copies_docker_manifest_list_between_distribution_and_berth() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let upstream = Distribution::start();
    let set = ImageSet::multi_platform(Flavor::Docker, "from-upstream");
    push_image_set_http(&upstream.url(""), "library/app", "1.0", &set);

    // distribution -> berth
    skopeo.copy_all(
        &docker_ref(&upstream.addr, "library/app", "1.0"),
        &reg.docker("mirror/library/app", "1.0"),
    );
    assert_set_via_skopeo(&skopeo, &reg, "mirror/library/app", "1.0", &set);
    assert_blobs_served(&reg, "mirror/library/app", &set.blobs());

    // berth -> distribution (a new repository there): still the same bytes.
    skopeo.copy_all(
        &reg.docker("mirror/library/app", "1.0"),
        &docker_ref(&upstream.addr, "back/app", "again"),
    );
    let back = skopeo.inspect_raw(&docker_ref(&upstream.addr, "back/app", "again"));
    assert_eq!(back, set.index.data, "list bytes after berth -> distribution");
    for img in &set.images {
        let raw = skopeo.inspect_raw(&docker_ref(&upstream.addr, "back/app", &img.manifest.digest));
        assert_eq!(raw, img.manifest.data);
    }
}

#[test]
fn skopeo_pulls_by_tag_and_by_digest() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let set = ImageSet::multi_platform(Flavor::Oci, "pull-by-digest");
    let tmp = tempfile::tempdir().unwrap();
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    let repo = "interop/pull";
    skopeo.copy_all(&oci_dir(&tmp.path().join("src"), "v1"), &reg.docker(repo, "v1"));

    let amd64 = set.image("amd64");
    let arm64 = set.image("arm64");

    // A single child copied by digest: exactly that manifest and its blobs.
    let by_digest = tmp.path().join("arm64-by-digest");
    skopeo.copy(
        &reg.docker(repo, &arm64.manifest.digest),
        &oci_dir(&by_digest, "arm"),
        &[],
    );
    let layout = OciLayout::open(&by_digest);
    let d = layout.descriptor("arm");
    assert_eq!(d["digest"], arm64.manifest.digest);
    assert_eq!(layout.blob(&arm64.manifest.digest), arm64.manifest.data);
    for b in arm64.blobs() {
        assert_eq!(layout.blob(&b.digest), b.data);
    }
    assert!(
        !layout.has_blob(&amd64.config.digest),
        "amd64 config copied with the arm64 image"
    );

    // By tag with a platform override: skopeo resolves the index to the arm64 child.
    let by_tag = tmp.path().join("arm64-by-tag");
    skopeo.copy(
        &reg.docker(repo, "v1"),
        &oci_dir(&by_tag, "sel"),
        &[
            "--override-os=linux",
            "--override-arch=arm64",
            "--override-variant=v8",
        ],
    );
    assert_eq!(
        OciLayout::open(&by_tag).descriptor("sel")["digest"],
        arm64.manifest.digest
    );

    // And the index itself by its digest, with every child.
    let all_by_digest = tmp.path().join("index-by-digest");
    skopeo.copy_all(
        &reg.docker(repo, &set.index.digest),
        &oci_dir(&all_by_digest, "idx"),
    );
    assert_layout_holds_set(&OciLayout::open(&all_by_digest), "idx", &set);

    // skopeo inspect (parsed) selects the platform's layers; --config returns the config.
    let info = skopeo.inspect(
        &reg.docker(repo, "v1"),
        &["--override-os=linux", "--override-arch=amd64"],
    );
    assert_eq!(info["Architecture"], "amd64", "{info}");
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, amd64.layer_digests(), "{info}");
    assert_eq!(info["Labels"]["org.example.berth.seed"], "pull-by-digest");
    let cfg = skopeo.inspect_config_raw(&reg.docker(repo, &amd64.manifest.digest), &[]);
    assert_eq!(cfg, amd64.config.data);

    // An unknown tag and an unknown digest are errors, not empty manifests.
    let out = skopeo.try_inspect_raw(&reg.docker(repo, "no-such-tag")).failed();
    assert!(
        out.stderr.contains("manifest unknown") || out.stderr.contains("not found"),
        "{out}"
    );
    let missing = sha256_digest(b"no such manifest");
    skopeo.try_inspect_raw(&reg.docker(repo, &missing)).failed();
}

#[test]
fn skopeo_list_tags() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "tags", 1);
    img.write_oci_layout(&tmp.path().join("src"), "src");
    let src = oci_dir(&tmp.path().join("src"), "src");
    let other = Image::build(Flavor::Oci, Platform::linux_amd64(), "tags-other", 1);
    other.write_oci_layout(&tmp.path().join("other"), "src");
    let other_src = oci_dir(&tmp.path().join("other"), "src");

    let mut tags = vec!["v1", "latest", "1.0.0-rc.1", "v2", "a_b.c-d"];
    for t in &tags {
        skopeo.copy(&src, &reg.docker("interop/tags", t), &[]);
    }
    // Another repository and a nested one with a common prefix must not leak into the list.
    skopeo.copy(&other_src, &reg.docker("interop/tags-other", "zzz"), &[]);
    skopeo.copy(&other_src, &reg.docker("interop/tags/nested", "nested"), &[]);
    // Re-tagging an existing tag to other content does not duplicate it.
    skopeo.copy(&other_src, &reg.docker("interop/tags", "v2"), &[]);

    let mut listed = skopeo.list_tags(&format!("docker://{}/interop/tags", reg.addr()));
    tags.sort_unstable();
    if reg.is_distribution() {
        // distribution 2.8 lists tags in directory order, not the lexical order the spec
        // requires; berth is held to the spec.
        listed.sort_unstable();
    }
    assert_eq!(listed, tags, "tags of interop/tags (lexical order)");
    assert_eq!(
        skopeo.list_tags(&format!("docker://{}/interop/tags-other", reg.addr())),
        vec!["zzz"]
    );
    assert_eq!(
        skopeo.inspect_raw(&reg.docker("interop/tags", "v2")),
        other.manifest.data,
        "v2 was moved to the other image"
    );
    assert_eq!(
        skopeo.inspect_raw(&reg.docker("interop/tags", "v1")),
        img.manifest.data
    );

    // An unknown repository is an error.
    let out = skopeo.try_run(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/interop/never-pushed", reg.addr()),
    ]);
    out.failed();
}

#[test]
fn skopeo_delete_removes_manifest_and_tag() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "delete");
    set.write_oci_layout(&tmp.path().join("set"), "v1");
    let single = Image::build(Flavor::Oci, Platform::linux_amd64(), "delete-single", 1);
    single.write_oci_layout(&tmp.path().join("single"), "v1");
    let repo = "interop/delete";
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("set"), "v1"),
        &reg.docker(repo, "multi"),
    );
    skopeo.copy(
        &oci_dir(&tmp.path().join("single"), "v1"),
        &reg.docker(repo, "keep"),
        &[],
    );
    skopeo.copy(
        &oci_dir(&tmp.path().join("single"), "v1"),
        &reg.docker(repo, "gone"),
        &[],
    );
    let tags_url = format!("docker://{}/{repo}", reg.addr());
    let mut tags = skopeo.list_tags(&tags_url);
    tags.sort_unstable(); // (order is checked in skopeo_list_tags)
    assert_eq!(tags, vec!["gone", "keep", "multi"]);

    // Delete by tag: skopeo resolves the tag to the index digest and deletes that manifest.
    skopeo.delete(&reg.docker(repo, "multi"));
    let r = reg.get_manifest(repo, &set.index.digest);
    assert_eq!(r.status, 404, "index still served after delete:\n{r}");
    let r = reg.get_manifest(repo, "multi");
    assert_eq!(r.status, 404, "tag still served after delete:\n{r}");
    let r = http::head(
        &reg.url(&format!("/v2/{repo}/manifests/{}", set.index.digest)),
        &[images::OCI_INDEX],
    )
    .unwrap();
    assert_eq!(r.status, 404, "HEAD of a deleted manifest");
    skopeo.try_inspect_raw(&reg.docker(repo, "multi")).failed();
    let mut tags = skopeo.list_tags(&tags_url);
    tags.sort_unstable();
    assert_eq!(tags, vec!["gone", "keep"]);

    // Delete by digest: every tag pointing at that manifest goes with it.
    skopeo.delete(&reg.docker(repo, &single.manifest.digest));
    let r = reg.get_manifest(repo, &single.manifest.digest);
    assert_eq!(r.status, 404, "manifest still served after delete:\n{r}");
    for t in ["keep", "gone"] {
        assert_eq!(reg.get_manifest(repo, t).status, 404, "tag {t} survived");
    }
    let remaining = http::must_get(&reg.url(&format!("/v2/{repo}/tags/list")), &[]);
    if remaining.status == 200 {
        let v: Value = serde_json::from_slice(&remaining.body).expect("tags json");
        let tags = v["tags"].as_array().cloned().unwrap_or_default();
        assert!(tags.is_empty(), "tags left after deleting everything: {v}");
    } else {
        assert_eq!(remaining.status, 404, "tags/list:\n{remaining}");
    }

    // Deleting again is a 404, not a success.
    skopeo
        .try_delete(&reg.docker(repo, &single.manifest.digest))
        .failed();
}

/// The compressed layers podman pushed decompress to the config's diff_ids.
fn assert_pushed_layers_match_config(reg: &Target, repo: &str, manifest: &[u8], config: &[u8]) {
    let m: Value = serde_json::from_slice(manifest).expect("manifest json");
    let c: Value = serde_json::from_slice(config).expect("config json");
    let layers = m["layers"].as_array().expect("layers");
    let diff_ids = c["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(layers.len(), diff_ids.len());
    for (l, diff_id) in layers.iter().zip(diff_ids) {
        let digest = l["digest"].as_str().unwrap();
        let r = reg.get_blob(repo, digest);
        assert_eq!(r.status, 200, "GET layer {digest}:\n{r}");
        assert_eq!(sha256_digest(&r.body), digest);
        assert_eq!(r.body.len() as u64, l["size"].as_u64().unwrap());
        let mut tar = Vec::new();
        let mt = l["mediaType"].as_str().unwrap();
        if mt.ends_with("gzip") {
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut tar)
                .expect("gunzip layer");
        } else {
            assert!(mt.ends_with(".tar"), "unexpected layer media type {mt}");
            tar = r.body.clone();
        }
        assert_eq!(sha256_digest(&tar), diff_id.as_str().unwrap(), "layer {digest}");
    }
}

#[test]
fn podman_push_and_pull_round_trip() {
    let podman = Podman::new();
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "podman", 2);
    img.write_oci_layout(&tmp.path().join("src"), "v1");

    let id = podman.load_oci_layout(&tmp.path().join("src"), "v1");
    assert_eq!(
        id.trim_start_matches("sha256:"),
        img.image_id(),
        "image id after load"
    );

    let dest = format!("{}/interop/podman:v1", reg.addr());
    let pushed = podman.push(img.image_id(), &dest, &[]);
    assert!(pushed.starts_with("sha256:"), "digestfile: {pushed:?}");

    // What berth serves under the tag is what podman says it pushed.
    let raw = skopeo.inspect_raw(&reg.docker("interop/podman", "v1"));
    assert_eq!(sha256_digest(&raw), pushed, "served manifest vs podman's digest");
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["config"]["digest"], img.config.digest, "config kept: {m}");
    let cfg = reg.get_blob("interop/podman", &img.config.digest);
    assert_eq!(cfg.body, img.config.data);
    assert_pushed_layers_match_config(&reg, "interop/podman", &raw, &img.config.data);

    // The same image converted to Docker schema2 on the way out (`--format v2s2`).
    let docker_dest = format!("{}/interop/podman:docker", reg.addr());
    let pushed_docker = podman.push(img.image_id(), &docker_dest, &["--format=v2s2"]);
    let r = reg.get_manifest("interop/podman", "docker");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(sha256_digest(&r.body), pushed_docker);
    assert_eq!(r.header("docker-content-digest"), Some(pushed_docker.as_str()));
    let m: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(m["mediaType"], images::DOCKER_MANIFEST, "{m}");
    assert_eq!(
        r.header("content-type")
            .map(|v| v.split(';').next().unwrap().trim()),
        Some(images::DOCKER_MANIFEST)
    );
    assert_eq!(m["config"]["mediaType"], images::DOCKER_CONFIG, "{m}");
    assert_eq!(m["config"]["digest"], img.config.digest, "{m}");
    assert_pushed_layers_match_config(&reg, "interop/podman", &r.body, &img.config.data);

    podman.rmi(&[img.image_id()]);
    assert!(podman.image_ids().is_empty(), "rmi left images");

    let id = podman.pull(&dest);
    assert_eq!(
        id.trim_start_matches("sha256:"),
        img.image_id(),
        "image id after pull"
    );
    let info = podman.image_inspect(&dest);
    assert_eq!(info["Digest"], pushed, "{info}");
    let repo_digest = format!("{}/interop/podman@{pushed}", reg.addr());
    let repo_digests: Vec<&str> = info["RepoDigests"]
        .as_array()
        .expect("RepoDigests")
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(repo_digests.contains(&repo_digest.as_str()), "{info}");
    assert_eq!(
        info["RootFS"]["Layers"],
        serde_json::json!(img.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()),
        "{info}"
    );

    // By digest too, and the Docker-format copy.
    podman.rmi(&[img.image_id()]);
    let id = podman.pull(&repo_digest);
    assert_eq!(id.trim_start_matches("sha256:"), img.image_id());
    podman.rmi(&[img.image_id()]);
    let id = podman.pull(&docker_dest);
    assert_eq!(id.trim_start_matches("sha256:"), img.image_id());
    assert_eq!(podman.image_inspect(&docker_dest)["Digest"], pushed_docker);
}

#[test]
fn podman_pulls_the_right_platform_from_an_index() {
    let podman = Podman::new();
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "podman-multi");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("src"), "v1"),
        &reg.docker("interop/multi", "v1"),
    );

    let image = format!("{}/interop/multi:v1", reg.addr());
    for (arch, variant) in [("arm64", "v8"), ("amd64", "")] {
        let expected = set.image(arch);
        let mut args = vec![
            "pull",
            "--tls-verify=false",
            "--quiet",
            "--os=linux",
            "--arch",
            arch,
        ];
        if !variant.is_empty() {
            args.extend(["--variant", variant]);
        }
        args.push(&image);
        let out = podman.run(&args);
        let id = out.stdout_str().trim().trim_start_matches("sha256:").to_string();
        assert_eq!(id, expected.image_id(), "{arch} image id");
        let info = podman.image_inspect(expected.image_id());
        assert_eq!(info["Architecture"], arch, "{info}");
        // podman records the digest it pulled by (the index) and the instance it chose.
        assert_eq!(info["Digest"], set.index.digest, "{info}");
        let repo_digests = info["RepoDigests"].as_array().expect("RepoDigests");
        for d in [&set.index.digest, &expected.manifest.digest] {
            let want = format!("{}/interop/multi@{d}", reg.addr());
            assert!(repo_digests.iter().any(|r| r == &want), "{want} missing: {info}");
        }
    }
}

#[test]
fn podman_manifest_push_all() {
    let podman = Podman::new();
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "podman-manifest");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("src"), "v1"),
        &reg.docker("interop/parts", "v1"),
    );

    // podman builds its own list from the images in berth and pushes it with every instance.
    podman.run(&["manifest", "create", "localhost/berth-list"]);
    for img in &set.images {
        podman.run(&[
            "manifest",
            "add",
            "--tls-verify=false",
            "localhost/berth-list",
            &reg.docker("interop/parts", &img.manifest.digest),
        ]);
    }
    let digestfile = podman.dir().join("list-digest");
    podman.run(&[
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "--digestfile",
        digestfile.to_str().unwrap(),
        "localhost/berth-list",
        &reg.docker("interop/podman-list", "v1"),
    ]);
    let pushed = std::fs::read_to_string(&digestfile).unwrap().trim().to_string();

    let raw = skopeo.inspect_raw(&reg.docker("interop/podman-list", "v1"));
    assert_eq!(sha256_digest(&raw), pushed, "served list vs podman's digest");
    let list: Value = serde_json::from_slice(&raw).unwrap();
    let entries = list["manifests"].as_array().expect("manifests");
    let children: Vec<&str> = entries.iter().map(|e| e["digest"].as_str().unwrap()).collect();
    assert_eq!(children, set.child_digests(), "{list}");
    for (e, img) in entries.iter().zip(&set.images) {
        assert_eq!(e["platform"]["architecture"], img.platform.architecture.as_str());
        assert_eq!(e["platform"]["os"], "linux");
        let child = skopeo.inspect_raw(&reg.docker("interop/podman-list", &img.manifest.digest));
        assert_eq!(child, img.manifest.data, "instance {}", img.manifest.digest);
    }
    assert_blobs_served(&reg, "interop/podman-list", &set.blobs());
}

#[test]
fn skopeo_copy_within_registry_mounts_layers() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "mount");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("src"), "v1"),
        &reg.docker("interop/mount-a", "v1"),
    );

    // Target to the same registry: skopeo asks for cross-repository mounts of the layers
    // it knows are in interop/mount-a (POST /v2/interop/mount-b/blobs/uploads/?mount=&from=).
    let out = Skopeo::new().with_debug().copy_all(
        &reg.docker("interop/mount-a", "v1"),
        &reg.docker("interop/mount-b", "v1"),
    );
    let tried = out.stderr.matches("Trying to mount").count();
    let mounted = out.stderr.matches("mount OK").count();
    assert!(tried > 0, "skopeo attempted no mount:\n{}", out.stderr);
    assert_eq!(tried, mounted, "some mounts were not honoured:\n{}", out.stderr);

    assert_set_via_skopeo(&skopeo, &reg, "interop/mount-b", "v1", &set);
    assert_blobs_served(&reg, "interop/mount-b", &set.blobs());
    // The source is untouched.
    assert_set_via_skopeo(&skopeo, &reg, "interop/mount-a", "v1", &set);

    // Deleting the source's manifests (index first, then its children) leaves the mounted
    // copy whole.
    for d in [&set.index.digest].into_iter().chain(&set.child_digests()) {
        skopeo.delete(&reg.docker("interop/mount-a", d));
    }
    skopeo
        .try_inspect_raw(&reg.docker("interop/mount-a", "v1"))
        .failed();
    let out = tmp.path().join("out");
    skopeo.copy_all(&reg.docker("interop/mount-b", "v1"), &oci_dir(&out, "v1"));
    assert_layout_holds_set(&OciLayout::open(&out), "v1", &set);
}

/// (CNCF distribution 2.8 fails this one intermittently: a manifest PUT racing another
/// client's upload of the same blob gets "digest invalid / manifest blob unknown".)
#[test]
fn skopeo_concurrent_copies_of_shared_blobs() {
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "concurrent");
    let src = tmp.path().join("src");
    set.write_oci_layout(&src, "v1");

    // Six clients push the same blobs at once: three into one repository under different
    // tags, three into repositories of their own.
    let targets: Vec<(String, String)> = (0..3)
        .map(|i| ("interop/race".to_string(), format!("t{i}")))
        .chain((0..3).map(|i| (format!("interop/race-{i}"), "v1".to_string())))
        .collect();
    std::thread::scope(|s| {
        for (repo, tag) in &targets {
            let dst = reg.docker(repo, tag);
            let src = oci_dir(&src, "v1");
            s.spawn(move || Skopeo::new().copy_all(&src, &dst));
        }
    });

    let skopeo = Skopeo::new();
    for (repo, tag) in &targets {
        assert_set_via_skopeo(&skopeo, &reg, repo, tag, &set);
        assert_blobs_served(&reg, repo, &set.blobs());
    }
    let tags = skopeo.list_tags(&format!("docker://{}/interop/race", reg.addr()));
    let mut sorted = tags.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec!["t0", "t1", "t2"]);
}

#[test]
fn skopeo_copies_a_large_layer() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let big = large_layer(Flavor::Oci, "large", 24 << 20);
    let img = Image::from_layers(Flavor::Oci, Platform::linux_amd64(), "large", vec![big]);
    img.write_oci_layout(&tmp.path().join("src"), "v1");

    skopeo.copy(
        &oci_dir(&tmp.path().join("src"), "v1"),
        &reg.docker("interop/large", "v1"),
        &[],
    );
    let layer = &img.layers[0].blob;
    let r = reg.get_blob("interop/large", &layer.digest);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), layer.size());
    assert_eq!(sha256_digest(&r.body), layer.digest);
    let h = http::head(
        &reg.url(&format!("/v2/interop/large/blobs/{}", layer.digest)),
        &[],
    )
    .unwrap();
    assert_eq!(h.status, 200, "{h}");
    assert_eq!(
        h.header("content-length"),
        Some(layer.size().to_string().as_str()),
        "HEAD Content-Length:\n{h}"
    );

    let out = tmp.path().join("out");
    skopeo.copy(&reg.docker("interop/large", "v1"), &oci_dir(&out, "v1"), &[]);
    let layout = OciLayout::open(&out);
    assert_eq!(layout.descriptor("v1")["digest"], img.manifest.digest);
    assert_eq!(layout.blob(&layer.digest).len(), layer.size());
}

#[test]
fn content_survives_kill_and_restart() {
    let skopeo = Skopeo::new();
    let mut reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "restart");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    let docker = ImageSet::multi_platform(Flavor::Docker, "restart");
    docker.write_dir(&tmp.path().join("docker"));
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("src"), "v1"),
        &reg.docker("interop/keep", "v1"),
    );
    skopeo.copy_all(
        &dir_ref(&tmp.path().join("docker")),
        &reg.docker("interop/keep", "docker"),
    );

    reg.kill_and_restart();

    let mut tags = skopeo.list_tags(&format!("docker://{}/interop/keep", reg.addr()));
    tags.sort_unstable(); // (order is checked in skopeo_list_tags)
    assert_eq!(tags, vec!["docker", "v1"]);
    assert_set_via_skopeo(&skopeo, &reg, "interop/keep", "v1", &set);
    assert_set_via_skopeo(&skopeo, &reg, "interop/keep", "docker", &docker);
    let out = tmp.path().join("out");
    skopeo.copy_all(&reg.docker("interop/keep", "v1"), &oci_dir(&out, "v1"));
    assert_layout_holds_set(&OciLayout::open(&out), "v1", &set);
}

#[test]
fn skopeo_sync_repository() {
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let oci = ImageSet::multi_platform(Flavor::Oci, "sync");
    oci.write_oci_layout(&tmp.path().join("oci"), "v1");
    let docker = ImageSet::multi_platform(Flavor::Docker, "sync");
    docker.write_dir(&tmp.path().join("docker"));
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("oci"), "v1"),
        &reg.docker("interop/sync", "v1"),
    );
    skopeo.copy_all(
        &dir_ref(&tmp.path().join("docker")),
        &reg.docker("interop/sync", "docker"),
    );

    // Whole repository (every tag, via tags/list) to local directories...
    let out = tmp.path().join("out");
    skopeo.sync(
        &["--src", "docker", "--dest", "dir"],
        &format!("{}/interop/sync", reg.addr()),
        out.to_str().unwrap(),
    );
    assert_dir_holds_set(&out.join("sync:v1"), &oci);
    assert_dir_holds_set(&out.join("sync:docker"), &docker);

    // ...and registry to registry, into another namespace of the same server.
    skopeo.sync(
        &["--src", "docker", "--dest", "docker"],
        &format!("{}/interop/sync", reg.addr()),
        &format!("{}/mirror", reg.addr()),
    );
    assert_set_via_skopeo(&skopeo, &reg, "mirror/sync", "v1", &oci);
    assert_set_via_skopeo(&skopeo, &reg, "mirror/sync", "docker", &docker);
    let mut tags = skopeo.list_tags(&format!("docker://{}/mirror/sync", reg.addr()));
    tags.sort_unstable();
    assert_eq!(tags, vec!["docker", "v1"]);
}

#[test]
fn podman_search_lists_catalog_and_tags() {
    let podman = Podman::new();
    let skopeo = Skopeo::new();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "search", 1);
    img.write_oci_layout(&tmp.path().join("src"), "v1");
    let src = oci_dir(&tmp.path().join("src"), "v1");
    for (repo, tag) in [
        ("team/web-frontend", "v1"),
        ("team/web-frontend", "v2"),
        ("team/web-backend", "stable"),
        ("team/database", "v1"),
    ] {
        skopeo.copy(&src, &reg.docker(repo, tag), &[]);
    }

    // Without a v1 search API podman filters /v2/_catalog by the term.
    let out = podman.run(&[
        "search",
        "--tls-verify=false",
        "--format=json",
        &format!("{}/web", reg.addr()),
    ]);
    let found: Value = serde_json::from_slice(&out.stdout).expect("search json");
    let mut names: Vec<&str> = found
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let backend = format!("{}/team/web-backend", reg.addr());
    let frontend = format!("{}/team/web-frontend", reg.addr());
    assert_eq!(names, vec![backend.as_str(), frontend.as_str()], "{found}");

    let out = podman.run(&[
        "search",
        "--tls-verify=false",
        "--list-tags",
        "--format=json",
        &frontend,
    ]);
    let tags: Value = serde_json::from_slice(&out.stdout).expect("list-tags json");
    assert_eq!(tags[0]["Name"], frontend.as_str(), "{tags}");
    assert_eq!(tags[0]["Tags"], serde_json::json!(["v1", "v2"]), "{tags}");
}

#[test]
fn containerd_pulls_and_pushes_indexes_and_lists() {
    let skopeo = Skopeo::new();
    let ctrd = Containerd::start();
    let reg = Target::start(env!("CARGO_BIN_EXE_berth"));
    let tmp = tempfile::tempdir().unwrap();
    let oci = ImageSet::multi_platform(Flavor::Oci, "containerd");
    oci.write_oci_layout(&tmp.path().join("oci"), "v1");
    let docker = ImageSet::multi_platform(Flavor::Docker, "containerd");
    docker.write_dir(&tmp.path().join("docker"));
    skopeo.copy_all(
        &oci_dir(&tmp.path().join("oci"), "v1"),
        &reg.docker("interop/ctr", "oci"),
    );
    skopeo.copy_all(
        &dir_ref(&tmp.path().join("docker")),
        &reg.docker("interop/ctr", "docker"),
    );

    for (tag, set) in [("oci", &oci), ("docker", &docker)] {
        let src = format!("{}/interop/ctr:{tag}", reg.addr());
        // Everything, every platform, into containerd's content store, verified by digest.
        ctrd.ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--all-platforms",
            "--snapshotter=native",
            &src,
        ]);
        for b in set.all_blobs() {
            assert_eq!(ctrd.content(&b.digest), b.data, "{tag}: content {}", b.digest);
        }
        // And back into berth under a new name: the same bytes, the same digests.
        let dst = format!("{}/interop/ctr-pushed:{tag}", reg.addr());
        ctrd.ctr(&["images", "push", "--plain-http", &dst, &src]);
        assert_set_via_skopeo(&skopeo, &reg, "interop/ctr-pushed", tag, set);
        assert_blobs_served(&reg, "interop/ctr-pushed", &set.blobs());
    }

    // One platform, unpacked: containerd checks every layer against the config's diff_ids
    // and reports the resulting ChainID.
    let arm64 = oci.image("arm64");
    let out = ctrd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter=native",
        "--platform=linux/arm64/v8",
        "--print-chainid",
        &format!("{}/interop/ctr@{}", reg.addr(), oci.index.digest),
    ]);
    let stdout = out.stdout_str();
    assert!(
        stdout.contains(&format!("image chain ID: {}", arm64.chain_id())),
        "chain ID {} not reported:\n{out}",
        arm64.chain_id()
    );
}
