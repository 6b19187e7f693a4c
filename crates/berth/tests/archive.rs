//! `berth export` and `berth import` against the real berth binary and real clients:
//! skopeo reads what export writes (`oci-archive:`), podman loads it, and import pushes
//! what podman saves (`docker-archive`) and what export wrote, digests unchanged.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_testkit::TestServer;
use berth_testkit::clients::{Output, Podman, Skopeo, docker_ref, http, push_image_http, run};
use berth_testkit::images::{self, Flavor, Image, ImageSet, OciLayout, Platform, sha256_digest};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth(args: &[&str]) -> Output {
    let mut c = Command::new(BERTH);
    c.args(args).env_remove("BERTH_CREDS");
    run(&mut c, Duration::from_secs(180))
}

fn server() -> TestServer {
    TestServer::start(BERTH, "")
}

fn url(s: &TestServer, path: &str) -> String {
    format!("http://{}{path}", s.addr)
}

/// Pushes `set` to `s` as `repo:tag` with skopeo (from an OCI layout, all platforms).
fn push_set(skopeo: &Skopeo, s: &TestServer, repo: &str, tag: &str, set: &ImageSet) {
    let tmp = tempfile::tempdir().unwrap();
    set.write_oci_layout(tmp.path(), tag);
    skopeo.copy_all(
        &format!("oci:{}:{tag}", tmp.path().display()),
        &docker_ref(&s.addr, repo, tag),
    );
}

/// The manifest `s` serves for `repo:reference`, as bytes.
fn manifest_bytes(s: &TestServer, repo: &str, reference: &str) -> (u16, Vec<u8>) {
    let r = http::get(
        &url(s, &format!("/v2/{repo}/manifests/{reference}")),
        &[
            images::OCI_INDEX,
            images::OCI_MANIFEST,
            images::DOCKER_LIST,
            images::DOCKER_MANIFEST,
        ],
    )
    .expect("GET manifest");
    (r.status, r.body)
}

/// `s` serves every manifest and blob of `set` under `repo` byte for byte, the index
/// as `repo:tag`.
fn assert_registry_holds_set(s: &TestServer, repo: &str, tag: &str, set: &ImageSet) {
    assert_eq!(
        manifest_bytes(s, repo, tag),
        (200, set.index.data.clone()),
        "index {repo}:{tag}"
    );
    for img in &set.images {
        assert_eq!(
            manifest_bytes(s, repo, &img.manifest.digest),
            (200, img.manifest.data.clone()),
            "child {}",
            img.manifest.digest
        );
    }
    for b in set.blobs() {
        let r = http::must_get(&url(s, &format!("/v2/{repo}/blobs/{}", b.digest)), &[]);
        assert_eq!(r.status, 200, "blob {}", b.digest);
        assert_eq!(sha256_digest(&r.body), b.digest, "blob {} bytes", b.digest);
    }
}

fn tags(s: &TestServer, repo: &str) -> Vec<String> {
    let r = http::get(&url(s, &format!("/v2/{repo}/tags/list")), &[]).expect("GET tags");
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "tags/list {repo}:\n{r}");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Names of the entries of a tar file (via the system tar, which also proves the file is
/// a well-formed tar).
fn tar_listing(file: &Path, flag: &str) -> Vec<String> {
    let mut c = Command::new("tar");
    c.arg(flag).arg("-tf").arg(file);
    let out = run(&mut c, Duration::from_secs(60)).ok();
    out.stdout_str().lines().map(str::to_string).collect()
}

#[test]
fn export_all_platforms_round_trips_through_skopeo_with_every_digest_kept() {
    let skopeo = Skopeo::new();
    let s = server();
    let set = ImageSet::multi_platform(Flavor::Oci, "export-all");
    push_set(&skopeo, &s, "exp/multi", "v1", &set);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("multi.tar");
    let f = file.to_str().unwrap();

    let out = berth(&[
        "export",
        &format!("{}/exp/multi:v1", s.addr),
        "--all-platforms",
        "-o",
        f,
    ])
    .ok();
    assert!(out.stdout_str().contains(&set.index.digest), "{out}");
    assert!(!tmp.path().join("multi.tar.partial").exists());
    let listing = tar_listing(&file, "--no-auto-compress");
    for b in set.all_blobs() {
        assert!(
            listing.contains(&format!("blobs/sha256/{}", b.hex())),
            "{} missing from {listing:?}",
            b.digest
        );
    }
    assert!(listing.contains(&"index.json".to_string()) && listing.contains(&"oci-layout".to_string()));

    // skopeo reads the archive: the raw manifest is the pushed index, byte for byte.
    let raw = skopeo.inspect_raw(&format!("oci-archive:{f}:v1"));
    assert_eq!(raw, set.index.data, "skopeo inspect --raw of the archive");
    // ... and copies all of it out, digests preserved.
    let out_dir = tmp.path().join("out");
    skopeo.copy_all(
        &format!("oci-archive:{f}:v1"),
        &format!("oci:{}:v1", out_dir.display()),
    );
    images::assert_layout_holds_set(&OciLayout::open(&out_dir), "v1", &set);

    // The same export, compressed: skopeo 1.9 reads gzip and zstd archives too, and
    // import restores every digest into a fresh registry.
    for c in ["gzip", "zstd"] {
        let file = tmp.path().join(format!("multi-{c}.tar"));
        let fc = file.to_str().unwrap();
        berth(&[
            "export",
            &format!("{}/exp/multi:v1", s.addr),
            "--all-platforms",
            "--compress",
            c,
            "-o",
            fc,
        ])
        .ok();
        let magic = std::fs::read(&file).unwrap()[..4].to_vec();
        match c {
            "gzip" => assert_eq!(magic[..2], [0x1f, 0x8b], "gzip magic"),
            _ => assert_eq!(magic, [0x28, 0xb5, 0x2f, 0xfd], "zstd magic"),
        }
        let raw = skopeo.try_inspect_raw(&format!("oci-archive:{fc}:v1"));
        assert!(raw.success(), "skopeo cannot read a {c} archive:\n{raw}");
        assert_eq!(
            raw.stdout, set.index.data,
            "skopeo inspect --raw of the {c} archive"
        );
        let fresh = server();
        let out = berth(&["import", fc, &format!("{}/imp/multi:v1", fresh.addr)]).ok();
        assert!(out.stdout_str().contains("tagged"), "{out}");
        assert_registry_holds_set(&fresh, "imp/multi", "v1", &set);
    }
}

#[test]
fn export_default_platform_loads_into_podman() {
    let skopeo = Skopeo::new();
    let podman = Podman::new();
    let s = server();
    let set = ImageSet::multi_platform(Flavor::Oci, "export-podman");
    push_set(&skopeo, &s, "exp/podman", "v1", &set);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("one.tar");
    let f = file.to_str().unwrap();

    // No --all-platforms: the linux/amd64 child, as the image itself.
    let out = berth(&["export", &format!("{}/exp/podman:v1", s.addr), "-o", f]).ok();
    let amd64 = set.image("amd64");
    assert!(out.stdout_str().contains(&amd64.manifest.digest), "{out}");
    let raw = skopeo.inspect_raw(&format!("oci-archive:{f}:v1"));
    assert_eq!(raw, amd64.manifest.data, "the archive holds the amd64 manifest");

    let out = podman.run(&["load", "-i", f]);
    let name = format!("{}/exp/podman:v1", s.addr);
    assert!(
        out.stdout_str().contains(&name),
        "podman load names the image {name}:\n{out}"
    );
    let inspect = podman.image_inspect(&name);
    assert_eq!(
        inspect["Id"],
        amd64.image_id(),
        "image ID = config digest:\n{inspect}"
    );
    assert_eq!(inspect["Architecture"], "amd64");
    let diff_ids: Vec<String> = amd64.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(inspect["RootFS"]["Layers"], serde_json::json!(diff_ids));

    // --platform picks the other child.
    let arm = tmp.path().join("arm.tar");
    berth(&[
        "export",
        &format!("{}/exp/podman:v1", s.addr),
        "--platform",
        "linux/arm64",
        "-o",
        arm.to_str().unwrap(),
    ])
    .ok();
    let raw = skopeo.inspect_raw(&format!("oci-archive:{}:v1", arm.display()));
    assert_eq!(raw, set.image("arm64").manifest.data);
    // A platform the index lacks is an error that says which ones it has.
    let bad = berth(&[
        "export",
        &format!("{}/exp/podman:v1", s.addr),
        "--platform",
        "linux/s390x",
        "-o",
        tmp.path().join("none.tar").to_str().unwrap(),
    ])
    .failed();
    assert!(bad.stderr.contains("linux/arm64"), "{bad}");
    assert!(!tmp.path().join("none.tar").exists() && !tmp.path().join("none.tar.partial").exists());
}

#[test]
fn import_of_podman_save_docker_archive_keeps_config_and_layers() {
    let podman = Podman::new();
    let skopeo = Skopeo::new();
    let src = server();
    let img = Image::build(Flavor::Docker, Platform::linux_amd64(), "docker-archive", 2);
    push_image_http(&url(&src, ""), "src/app", "v1", &img);
    let name = format!("{}/src/app:v1", src.addr);
    podman.pull(&name);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("saved.tar");
    let f = file.to_str().unwrap();
    podman.run(&["save", "--format", "docker-archive", "-o", f, &name]);

    let dst = server();
    let out = berth(&["import", f, &format!("{}/dst/app:v2", dst.addr)]).ok();
    assert!(out.stdout_str().contains("tagged"), "{out}");

    let inspected = skopeo.inspect(&docker_ref(&dst.addr, "dst/app", "v2"), &[]);
    let config = skopeo.inspect_config_raw(&docker_ref(&dst.addr, "dst/app", "v2"), &[]);
    // The config is podman's bytes as saved: same digest, so the same image ID.
    assert_eq!(sha256_digest(&config), img.config.digest, "config digest");
    let cfg: Value = serde_json::from_slice(&config).unwrap();
    let diff_ids: Vec<String> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    // docker-archive layers are the uncompressed tars: their digests are the diff_ids.
    assert_eq!(inspected["Layers"], serde_json::json!(diff_ids), "{inspected}");
    let (status, manifest) = manifest_bytes(&dst, "dst/app", "v2");
    assert_eq!(status, 200);
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["mediaType"], images::DOCKER_MANIFEST);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar"
    );

    // A fresh podman pulls it from there and gets the same image.
    let again = Podman::new();
    let id = again.pull(&format!("{}/dst/app:v2", dst.addr));
    assert_eq!(id, img.image_id(), "image ID after import");
}

#[test]
fn several_references_in_one_archive_import_restores_every_tag() {
    let skopeo = Skopeo::new();
    let s = server();
    let a = ImageSet::multi_platform(Flavor::Oci, "several-a");
    let b = ImageSet::multi_platform(Flavor::Oci, "several-b");
    push_set(&skopeo, &s, "team/a", "v1", &a);
    push_set(&skopeo, &s, "team/b", "v1", &b);
    push_set(&skopeo, &s, "team/b", "v2", &a);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("several.tar");
    let f = file.to_str().unwrap();
    let refs = [
        format!("{}/team/a:v1", s.addr),
        format!("{}/team/b:v1", s.addr),
        format!("{}/team/b:v2", s.addr),
    ];
    let mut args = vec!["export", "--all-platforms", "-o", f];
    args.extend(refs.iter().map(String::as_str));
    berth(&args).ok();
    // Two references share the tag v1: their entries are named repo:tag.
    for (name, set) in [("team/a:v1", &a), ("team/b:v1", &b), ("team/b:v2", &a)] {
        let raw = skopeo.inspect_raw(&format!("oci-archive:{f}:{name}"));
        assert_eq!(raw, set.index.data, "{name} in the archive");
    }

    // Into a fresh registry, keeping repositories and tags.
    let fresh = server();
    let out = berth(&["import", f, &fresh.addr]).ok();
    assert_eq!(out.stdout_str().matches("tagged").count(), 3, "{out}");
    assert_registry_holds_set(&fresh, "team/a", "v1", &a);
    assert_registry_holds_set(&fresh, "team/b", "v1", &b);
    assert_registry_holds_set(&fresh, "team/b", "v2", &a);
    let mut t = tags(&fresh, "team/b");
    t.sort();
    assert_eq!(t, ["v1", "v2"]);

    // Into one repository, each image under its own tag.
    let one = tmp.path().join("two.tar");
    berth(&[
        "export",
        "--all-platforms",
        "-o",
        one.to_str().unwrap(),
        &refs[0],
        &refs[2],
    ])
    .ok();
    let fresh2 = server();
    berth(&[
        "import",
        one.to_str().unwrap(),
        &format!("{}/restored", fresh2.addr),
    ])
    .ok();
    assert_registry_holds_set(&fresh2, "restored", "v1", &a);
    assert_registry_holds_set(&fresh2, "restored", "v2", &a);
    // A single tag for a many-image archive is refused before anything is pushed.
    let bad = berth(&["import", f, &format!("{}/x:y", fresh2.addr)]).failed();
    assert!(bad.stderr.contains("3 images"), "{bad}");
}

/// A layout directory packed with the system tar (entries named `./...`).
fn pack(dir: &Path, file: &Path) {
    let mut c = Command::new("tar");
    c.arg("-C").arg(dir).arg("-cf").arg(file).arg(".");
    run(&mut c, Duration::from_secs(60)).ok();
}

#[test]
fn bad_archives_fail_naming_the_problem_and_tag_nothing() {
    let s = server();
    let tmp = tempfile::tempdir().unwrap();
    let good = ImageSet::multi_platform(Flavor::Oci, "bad-good");
    let damaged = ImageSet::multi_platform(Flavor::Oci, "bad-damaged");

    // Two images; a layer of the second has the right size but other bytes.
    let layout = tmp.path().join("layout");
    let mut blobs = good.all_blobs();
    blobs.extend(damaged.all_blobs());
    images::write_oci_layout(
        &layout,
        &[("ok", &good.index), ("broken", &damaged.index)],
        &blobs,
    );
    let victim = &damaged.image("arm64").layers[0].blob;
    let mut bytes = victim.data.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(layout.join("blobs/sha256").join(victim.hex()), &bytes).unwrap();
    let mismatched = tmp.path().join("mismatch.tar");
    pack(&layout, &mismatched);
    let out = berth(&[
        "import",
        mismatched.to_str().unwrap(),
        &format!("{}/bad/mix", s.addr),
    ])
    .failed();
    assert!(
        out.stderr.contains(&victim.digest) && out.stderr.contains("hash"),
        "{out}"
    );
    assert!(out.stderr.contains("nothing was tagged"), "{out}");
    assert!(tags(&s, "bad/mix").is_empty(), "a failed import tagged something");
    // The blob with the wrong bytes never reached the registry.
    let r = http::head(&url(&s, &format!("/v2/bad/mix/blobs/{}", victim.digest)), &[]).unwrap();
    assert_eq!(r.status, 404, "the damaged blob was stored");

    // Truncated: half of a good archive.
    let whole = tmp.path().join("whole.tar");
    let one = tmp.path().join("one");
    good.write_oci_layout(&one, "v1");
    pack(&one, &whole);
    let data = std::fs::read(&whole).unwrap();
    let truncated = tmp.path().join("truncated.tar");
    std::fs::write(&truncated, &data[..data.len() / 2]).unwrap();
    let out = berth(&[
        "import",
        truncated.to_str().unwrap(),
        &format!("{}/bad/trunc:v1", s.addr),
    ])
    .failed();
    assert!(out.stderr.contains("truncated"), "{out}");
    assert!(tags(&s, "bad/trunc").is_empty());

    // Truncated gzip stream.
    let gz = images::gzip(&data);
    let truncated_gz = tmp.path().join("truncated.tar.gz");
    std::fs::write(&truncated_gz, &gz[..gz.len() * 2 / 3]).unwrap();
    let out = berth(&[
        "import",
        truncated_gz.to_str().unwrap(),
        &format!("{}/bad/trunc:v1", s.addr),
    ])
    .failed();
    assert!(out.stderr.contains("truncated or damaged"), "{out}");

    // No index.json.
    std::fs::remove_file(one.join("index.json")).unwrap();
    let no_index = tmp.path().join("no-index.tar");
    pack(&one, &no_index);
    let out = berth(&[
        "import",
        no_index.to_str().unwrap(),
        &format!("{}/bad/noindex:v1", s.addr),
    ])
    .failed();
    assert!(out.stderr.contains("index.json"), "{out}");
    assert!(tags(&s, "bad/noindex").is_empty());

    // Not an archive at all.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"this is not a tar file at all, just some text").unwrap();
    let out = berth(&[
        "import",
        junk.to_str().unwrap(),
        &format!("{}/bad/junk:v1", s.addr),
    ])
    .failed();
    assert!(out.stderr.contains("junk"), "{out}");

    // Export of a reference the registry lacks: exit 1, no file.
    let missing = tmp.path().join("missing.tar");
    let out = berth(&[
        "export",
        &format!("{}/bad/none:v1", s.addr),
        "-o",
        missing.to_str().unwrap(),
    ])
    .failed();
    assert!(out.stderr.contains("bad/none"), "{out}");
    assert!(!missing.exists());
}

#[test]
fn a_large_layer_goes_through_export_and_chunked_import() {
    let s = server();
    let layer = images::large_layer(Flavor::Oci, "archive-large", 40 << 20);
    let img = Image::from_layers(Flavor::Oci, Platform::linux_amd64(), "archive-large", vec![layer]);
    push_image_http(&url(&s, ""), "big/app", "v1", &img);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("big.tar");
    let f = file.to_str().unwrap();

    let t = std::time::Instant::now();
    berth(&["export", &format!("{}/big/app:v1", s.addr), "-o", f]).ok();
    let export = t.elapsed();
    let fresh = server();
    let t = std::time::Instant::now();
    let out = berth(&["import", f, &format!("{}/big/copy:v1", fresh.addr)]).ok();
    let import = t.elapsed();
    let mb = img.layers[0].blob.size() as f64 / 1e6;
    eprintln!(
        "40 MiB layer: export {export:?} ({:.0} MB/s), import {import:?} ({:.0} MB/s)",
        mb / export.as_secs_f64(),
        mb / import.as_secs_f64()
    );
    assert!(out.stdout_str().contains("tagged"), "{out}");
    assert_eq!(
        manifest_bytes(&fresh, "big/copy", "v1"),
        (200, img.manifest.data.clone())
    );
    for b in img.blobs() {
        let r = http::must_get(&url(&fresh, &format!("/v2/big/copy/blobs/{}", b.digest)), &[]);
        assert_eq!(sha256_digest(&r.body), b.digest, "blob {}", b.digest);
    }
    // Importing again sends no blob: every one is found by HEAD.
    let out = berth(&["import", f, &format!("{}/big/copy:v2", fresh.addr)]).ok();
    assert!(out.stdout_str().contains("0 blobs pushed"), "{out}");
}

#[test]
fn export_and_import_sign_in_to_a_registry_with_access_control() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("htpasswd");
    let mut add = Command::new(BERTH);
    add.args(["users", "add", users.to_str().unwrap(), "alice", "--cost", "4"]);
    let mut child = add
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"alice-pw\n").unwrap();
    assert!(child.wait().unwrap().success());
    let s = TestServer::start(BERTH, &format!("[auth]\nhtpasswd = \"{}\"\n", users.display()));
    let skopeo = Skopeo::new();
    let set = ImageSet::multi_platform(Flavor::Docker, "archive-auth");
    let layout = tmp.path().join("layout");
    set.write_dir(&layout);
    skopeo.copy(
        &format!("dir:{}", layout.display()),
        &docker_ref(&s.addr, "team/app", "v1"),
        &["--all", "--dest-creds", "alice:alice-pw"],
    );
    let file = tmp.path().join("auth.tar");
    let f = file.to_str().unwrap();
    let src = format!("{}/team/app:v1", s.addr);

    let out = berth(&["export", &src, "--all-platforms", "-o", f]).failed();
    assert!(out.stderr.contains("401") || out.stderr.contains("auth"), "{out}");
    berth(&[
        "export",
        &src,
        "--all-platforms",
        "-o",
        f,
        "--creds",
        "alice:alice-pw",
    ])
    .ok();

    let dst = format!("{}/team/copy:v1", s.addr);
    let out = berth(&["import", f, &dst]).failed();
    assert!(out.stderr.contains("401"), "{out}");
    let out = berth(&["import", f, &dst, "--creds", "alice:wrong"]).failed();
    assert!(out.stderr.contains("team/copy"), "{out}");
    let out = berth(&["import", f, &dst, "--creds", "alice:alice-pw"]).ok();
    assert!(out.stdout_str().contains("tagged"), "{out}");
    // A Docker manifest list, kept byte for byte (skopeo's oci: transports refuse Docker
    // media types; berth's archive does not care).
    assert!(
        !skopeo
            .try_inspect_raw(&docker_ref(&s.addr, "team/copy", "v1"))
            .success()
    );
    let out = skopeo.try_run(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        "--creds",
        "alice:alice-pw",
        &docker_ref(&s.addr, "team/copy", "v1"),
    ]);
    assert_eq!(out.ok().stdout, set.index.data);
}

#[test]
fn export_and_import_summaries_count_every_blob_and_byte() {
    let s = server();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "archive-summary", 2);
    push_image_http(&url(&s, ""), "sum/app", "v1", &img);
    let blobs = img.blobs();
    let bytes: usize = blobs.iter().map(|b| b.size()).sum();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("sum.tar");
    let f = file.to_str().unwrap();

    let out = berth(&["export", &format!("{}/sum/app:v1", s.addr), "-o", f]).ok();
    let want = format!("wrote {f}: {} blobs ({bytes} bytes), 1 manifests", blobs.len());
    assert!(out.stdout_str().contains(&want), "expected {want:?}:\n{out}");

    let fresh = server();
    let out = berth(&["import", f, &format!("{}/sum/copy:v1", fresh.addr)]).ok();
    let want = format!(
        "{} blobs pushed ({bytes} bytes), 0 already present, 1 manifests",
        blobs.len()
    );
    assert!(out.stdout_str().contains(&want), "expected {want:?}:\n{out}");
    let out = berth(&["import", f, &format!("{}/sum/copy:v2", fresh.addr)]).ok();
    let want = format!(
        "0 blobs pushed (0 bytes), {} already present, 1 manifests",
        blobs.len()
    );
    assert!(out.stdout_str().contains(&want), "expected {want:?}:\n{out}");
}
