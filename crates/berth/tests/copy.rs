//! `berth copy` and `berth mirror` against real registries: berth and CNCF distribution in
//! both directions (a multi-platform OCI index with a referrer, a Docker manifest list, an
//! image with a 200 MiB layer), an interrupted copy resumed, a mirror of 20 x 5 tags with
//! its dry run, failures that name the registry and status, and the JSON events.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::{
    Distribution, Output, Skopeo, docker_ref, push_image_http, push_image_set_http, run,
};
use berth_testkit::images::{Blob, Flavor, Image, ImageSet, Platform, large_layer};
use serde_json::{Value, json};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(600);

/// `berth ARGS` with the upload state kept in `cache` (so runs are independent of $HOME).
fn berth(args: &[&str], cache: &std::path::Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("BERTH_SRC_CREDS")
        .env_remove("BERTH_DEST_CREDS")
        .env("DOCKER_CONFIG", cache.join("no-docker-config"))
        .env_remove("REGISTRY_AUTH_FILE");
    run(&mut cmd, TIMEOUT)
}

/// Every stdout line as a JSON object (panics on one that is not).
fn events(out: &Output) -> Vec<Value> {
    out.stdout_str()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{out}")))
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// An artifact manifest (a "signature") whose subject is `subject`, with its blobs.
fn referrer(subject: &Blob, seed: &str) -> (Blob, Vec<Blob>) {
    let config = Blob::new("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let sig = Blob::new(
        "application/vnd.example.signature",
        format!("signed {seed}").into_bytes(),
    );
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": config.descriptor(),
        "layers": [sig.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.example.seed": seed},
    });
    (
        Blob::new(OCI_MANIFEST, serde_json::to_vec(&m).unwrap()),
        vec![config, sig],
    )
}

/// GETs every blob a tag reaches (children of an index included) from `base` and checks
/// it hashes to its digest; returns the digests and sizes seen.
fn rehash_all(base: &str, repo: &str, reference: &str) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    let mut queue = vec![reference.to_string()];
    while let Some(r) = queue.pop() {
        let m = req(
            "GET",
            &format!("{base}/v2/{repo}/manifests/{r}"),
            &[(
                "accept",
                &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", "),
            )],
            None,
        );
        assert_eq!(m.status, 200, "{base} {repo}:{r}: {}", m.text());
        if r.starts_with("sha256:") {
            assert_eq!(sha256(&m.body), r, "manifest bytes of {r} at {base}");
        }
        let v = m.json();
        for child in v["manifests"].as_array().into_iter().flatten() {
            queue.push(child["digest"].as_str().unwrap().to_string());
        }
        let blobs = v["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&v["config"]).filter(|c| c.is_object()));
        for b in blobs {
            let d = b["digest"].as_str().unwrap().to_string();
            if seen.contains_key(&d) {
                continue;
            }
            let got = get(&format!("{base}/v2/{repo}/blobs/{d}"));
            assert_eq!(got.status, 200, "blob {d} at {base}");
            assert_eq!(sha256(&got.body), d, "blob {d} at {base} re-hashed");
            assert_eq!(got.body.len() as u64, b["size"].as_u64().unwrap());
            seen.insert(d, got.body.len() as u64);
        }
    }
    seen
}

/// The three images of the round trip, pushed to `base`.
struct Fixture {
    oci: ImageSet,
    sig: Blob,
    docker: ImageSet,
    large: Image,
}

fn push_fixture(base: &str) -> Fixture {
    let oci = ImageSet::multi_platform(Flavor::Oci, "copy-oci");
    push_image_set_http(base, "team/multi", "v1", &oci);
    let (sig, sig_blobs) = referrer(&oci.index, "copy-oci");
    for b in &sig_blobs {
        berth_testkit::clients::push_blob(base, "team/multi", b);
    }
    berth_testkit::clients::push_manifest(base, "team/multi", &sig.digest, &sig);
    let docker = ImageSet::multi_platform(Flavor::Docker, "copy-docker");
    push_image_set_http(base, "team/list", "v1", &docker);
    let big = large_layer(Flavor::Oci, "copy-large", 200 << 20);
    let large = Image::from_layers(Flavor::Oci, Platform::linux_amd64(), "copy-large", vec![big]);
    push_image_http(base, "team/large", "v1", &large);
    Fixture {
        oci,
        sig,
        docker,
        large,
    }
}

/// The referrers a registry lists for `digest`: the referrers API, else the tag schema.
fn referrer_digests(base: &str, repo: &str, digest: &str) -> Vec<String> {
    let r = get(&format!("{base}/v2/{repo}/referrers/{digest}"));
    let index = if r.status == 200 {
        r.json()
    } else {
        let tag = digest.replace(':', "-");
        let r = req(
            "GET",
            &format!("{base}/v2/{repo}/manifests/{tag}"),
            &[("accept", OCI_INDEX)],
            None,
        );
        assert_eq!(
            r.status,
            200,
            "no referrers API and no {tag} tag at {base}: {}",
            r.text()
        );
        r.json()
    };
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn berth_to_distribution_to_berth_keeps_every_digest() {
    let skopeo = Skopeo::new();
    let cache = tempfile::tempdir().unwrap();
    let a = TestServer::start(BIN, "");
    let dist = Distribution::start();
    let b = TestServer::start(BIN, "");
    let fx = push_fixture(&a.url(""));

    let hops = [
        (a.addr.clone(), dist.addr.clone()),
        (dist.addr.clone(), b.addr.clone()),
    ];
    for (from, to) in &hops {
        for repo in ["team/multi", "team/list", "team/large"] {
            let out = berth(
                &[
                    "copy",
                    "--referrers",
                    &format!("{from}/{repo}:v1"),
                    &format!("{to}/{repo}:v1"),
                ],
                cache.path(),
            )
            .ok();
            assert!(out.stdout_str().contains("copied"), "{out}");
        }
    }

    let bases = [a.url(""), dist.url(""), b.url("")];
    let addrs = [&a.addr, &dist.addr, &b.addr];
    for (repo, top) in [
        ("team/multi", &fx.oci.index.digest),
        ("team/list", &fx.docker.index.digest),
        ("team/large", &fx.large.manifest.digest),
    ] {
        let raws: Vec<Vec<u8>> = addrs
            .iter()
            .map(|addr| skopeo.inspect_raw(&docker_ref(addr, repo, "v1")))
            .collect();
        for raw in &raws {
            assert_eq!(&sha256(raw), top, "{repo}: skopeo inspect --raw digest");
            assert_eq!(raw, &raws[0]);
        }
        let blobs: Vec<BTreeMap<String, u64>> = bases.iter().map(|b| rehash_all(b, repo, "v1")).collect();
        assert!(!blobs[0].is_empty());
        assert_eq!(blobs[0], blobs[1], "{repo}: blobs at distribution");
        assert_eq!(blobs[0], blobs[2], "{repo}: blobs at the second berth");
    }
    // Every child of the list and index by digest, on every side.
    for (repo, set) in [("team/multi", &fx.oci), ("team/list", &fx.docker)] {
        for child in set.child_digests() {
            for addr in addrs {
                assert_eq!(
                    sha256(&skopeo.inspect_raw(&docker_ref(addr, repo, &child))),
                    child
                );
            }
        }
    }
    // The 200 MiB layer arrived whole.
    let large = rehash_all(&b.url(""), "team/large", "v1");
    assert!(large.values().any(|&n| n > 200 << 20), "{large:?}");
    // The referrer travelled: through distribution's tag schema, into berth's referrers API.
    for base in &bases {
        assert_eq!(
            referrer_digests(base, "team/multi", &fx.oci.index.digest),
            vec![fx.sig.digest.clone()],
            "referrers at {base}"
        );
        rehash_all(base, "team/multi", &fx.sig.digest);
    }
}

#[test]
fn interrupted_copy_resumes_without_resending_finished_blobs() {
    let cache = tempfile::tempdir().unwrap();
    let src = TestServer::start(BIN, "");
    let mut dst = TestServer::start(BIN, "");
    let big = large_layer(Flavor::Oci, "resume-large", 200 << 20);
    let small = berth_testkit::images::layer(
        Flavor::Oci,
        &[berth_testkit::images::Entry::File("hello.txt", b"hello")],
    );
    let image = Image::from_layers(Flavor::Oci, Platform::linux_amd64(), "resume", vec![small, big]);
    push_image_http(&src.url(""), "app", "v1", &image);
    let large_digest = image.layers[1].blob.digest.clone();
    let from = format!("{}/app:v1", src.addr);
    let to = format!("{}/app:v1", dst.addr);
    let args = ["copy", "--json", "--chunk-size", "8388608", &from, &to];

    // First run: stop the destination once 40 MiB of the large blob are out.
    let mut child = Command::new(BIN)
        .args(args)
        .env("XDG_CACHE_HOME", cache.path())
        .env("DOCKER_CONFIG", cache.path().join("none"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first: Vec<Value> = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    for line in stdout.lines() {
        let line = line.unwrap();
        let e: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if !killed
            && e["event"] == "blob_progress"
            && e["digest"] == large_digest.as_str()
            && e["sent"].as_u64().unwrap() >= 40 << 20
        {
            dst.kill();
            killed = true;
        }
        first.push(e);
        assert!(Instant::now() < deadline, "the first copy took too long");
    }
    let status = child.wait().unwrap();
    assert!(killed, "the destination was never stopped mid-blob: {first:?}");
    assert_eq!(status.code(), Some(1), "copy with the destination gone");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&dst.addr),
        "the failure names the registry: {stderr}"
    );
    let done_first: BTreeSet<String> = of_kind(&first, "blob_done")
        .iter()
        .map(|e| e["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(!done_first.contains(&large_digest));
    assert!(
        !done_first.is_empty(),
        "some blob finished before the stop: {first:?}"
    );
    let state = std::fs::read_dir(cache.path().join("berth/uploads"))
        .unwrap()
        .count();
    assert_eq!(state, 1, "one partly sent upload remembered");

    // Second run after a restart: finishes, re-sends nothing finished, resumes the large blob.
    dst.kill_and_restart();
    let out = berth(&args, cache.path()).ok();
    let second = events(&out);
    for d in &done_first {
        assert!(
            of_kind(&second, "blob_skipped")
                .iter()
                .any(|e| e["digest"] == d.as_str()),
            "{d} finished in the first run, skipped in the second: {second:?}"
        );
        assert!(
            !of_kind(&second, "blob_started")
                .iter()
                .any(|e| e["digest"] == d.as_str()),
            "{d} was sent again"
        );
    }
    let resumed = of_kind(&second, "blob_done")
        .into_iter()
        .find(|e| e["digest"] == large_digest.as_str())
        .expect("the large blob finished in the second run");
    let offset = resumed["resumed_from"].as_u64().expect("it resumed");
    assert!(
        offset >= 8 << 20 && offset % (8 << 20) == 0,
        "resumed at {offset}"
    );
    let finished = of_kind(&second, "finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["digest"], image.manifest.digest.as_str());
    let sent = finished[0]["bytes_sent"].as_u64().unwrap();
    let large_size = image.layers[1].blob.size() as u64;
    assert_eq!(
        sent,
        large_size - offset,
        "only the rest of the large blob was sent"
    );
    assert_eq!(
        std::fs::read_dir(cache.path().join("berth/uploads"))
            .unwrap()
            .count(),
        0
    );
    let skopeo = Skopeo::new();
    assert_eq!(
        sha256(&skopeo.inspect_raw(&docker_ref(&dst.addr, "app", "v1"))),
        image.manifest.digest
    );
    let blobs = rehash_all(&dst.url(""), "app", "v1");
    assert!(blobs.contains_key(&large_digest));
}

#[test]
fn mirror_dry_run_lists_what_the_run_copies_then_verifies() {
    let cache = tempfile::tempdir().unwrap();
    let src = TestServer::start(BIN, "");
    let dst = TestServer::start(BIN, "");
    let base = src.url("");
    // 20 repositories x 5 tags under `org/`, plus one outside the prefix.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut missing: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    for r in 0..20u8 {
        for t in 0..5u8 {
            let repo = format!("org/app{r:02}");
            let tag = format!("v{t}");
            let (digest, m) = push_image(&base, &repo, &tag, r * 5 + t, 2);
            let v: Value = serde_json::from_slice(&m).unwrap();
            for b in v["layers"].as_array().unwrap().iter().chain([&v["config"]]) {
                missing.insert(
                    (format!("mirror/app{r:02}"), b["digest"].as_str().unwrap().into()),
                    b["size"].as_u64().unwrap(),
                );
            }
            expected.insert(format!("mirror/app{r:02}:{tag}"));
            digests.insert(format!("mirror/app{r:02}:{tag}"), digest);
        }
    }
    push_image(&base, "other/app", "v0", 200, 1);
    let total: u64 = missing.values().sum();
    let from = format!("{}/org", src.addr);
    let to = format!("{}/mirror", dst.addr);
    let listed = |out: &Output, verb: &str| -> BTreeSet<String> {
        out.stdout_str()
            .lines()
            .filter_map(|l| l.strip_prefix(verb))
            .map(|l| {
                let (_, to) = l.split_once(" -> ").unwrap();
                let to = to.split([' ', ':']).collect::<Vec<_>>();
                // host:port/repo:tag ...
                format!("{}:{}", to[1].split_once('/').unwrap().1, to[2])
            })
            .collect()
    };

    let dry = berth(&["mirror", "--dry-run", &from, &to], cache.path()).ok();
    assert_eq!(listed(&dry, "would copy "), expected, "{dry}");
    assert!(
        dry.stdout_str()
            .contains(&format!("total: 100 tags to copy, {total} bytes")),
        "expected {total} bytes: {dry}"
    );
    assert!(!dry.stdout_str().contains("other/app"));
    assert_eq!(
        get(&dst.url("/v2/_catalog")).json()["repositories"],
        json!([]),
        "the dry run copied nothing"
    );

    let out = berth(&["mirror", "--concurrency", "4", &from, &to], cache.path()).ok();
    assert_eq!(listed(&out, "copied "), expected, "{out}");
    assert!(
        out.stdout_str()
            .contains("mirror: 100 copied, 0 skipped, 0 failed"),
        "{out}"
    );
    for (name, digest) in &digests {
        let (repo, tag) = name.split_once(':').unwrap();
        let r = req(
            "HEAD",
            &dst.url(&format!("/v2/{repo}/manifests/{tag}")),
            &[("accept", OCI_MANIFEST)],
            None,
        );
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()), "{name}");
    }
    let catalog = get(&dst.url("/v2/_catalog")).json();
    assert_eq!(catalog["repositories"].as_array().unwrap().len(), 20);

    let again = berth(&["mirror", &from, &to], cache.path()).ok();
    assert_eq!(listed(&again, "skipped "), expected, "{again}");
    assert!(
        again
            .stdout_str()
            .contains("mirror: 0 copied, 100 skipped, 0 failed"),
        "{again}"
    );
    let dry = berth(&["mirror", "--dry-run", &from, &to], cache.path()).ok();
    assert!(
        dry.stdout_str().contains("total: 0 tags to copy, 0 bytes"),
        "{dry}"
    );

    // --tags narrows the set.
    let only = berth(
        &[
            "mirror",
            "--dry-run",
            "--tags",
            "/^v[01]$/",
            &from,
            &format!("{}/m2", dst.addr),
        ],
        cache.path(),
    )
    .ok();
    assert_eq!(
        only.stdout_str()
            .lines()
            .filter(|l| l.starts_with("would copy "))
            .count(),
        40,
        "{only}"
    );
}

#[test]
fn failures_name_the_registry_and_the_status() {
    let cache = tempfile::tempdir().unwrap();
    let src = TestServer::start(BIN, "");
    let htpasswd = cache.path().join("htpasswd");
    let mut add = Command::new(BIN)
        .args(["users", "add", htpasswd.to_str().unwrap(), "alice", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), b"secret\n").unwrap();
    assert!(add.wait().unwrap().success());
    let locked = TestServer::start(BIN, &format!("[auth]\nhtpasswd = \"{}\"\n", htpasswd.display()));
    let (digest, _) = push_image(&src.url(""), "app", "v1", 7, 1);
    let from = format!("{}/app:v1", src.addr);
    let to = format!("{}/app:v1", locked.addr);

    let out = berth(&["copy", "--quiet", &from, &to], cache.path());
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&locked.addr), "names the registry: {out}");
    assert!(out.stderr.contains("401"), "names the status: {out}");
    assert!(out.stderr.contains("blob sha256:"), "names the blob: {out}");

    // Wrong credentials: the same, said by the token server.
    let out = berth(
        &["copy", "--quiet", "--dest-creds", "alice:wrong", &from, &to],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("401"), "{out}");

    // The right ones, from the environment: copied.
    let mut cmd = Command::new(BIN);
    cmd.args(["copy", "--quiet", &from, &to])
        .env("XDG_CACHE_HOME", cache.path())
        .env("BERTH_DEST_CREDS", "alice:secret");
    run(&mut cmd, TIMEOUT).ok();
    // ... and from a docker config.json.
    let docker = cache.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64_encode(b"alice:secret");
    std::fs::write(
        docker.join("config.json"),
        json!({"auths": {locked.addr.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["copy", "--quiet", &from, &format!("{}/app2:v1", locked.addr)])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("BERTH_DEST_CREDS")
        .env("DOCKER_CONFIG", &docker);
    run(&mut cmd, TIMEOUT).ok();
    let r = req(
        "HEAD",
        &locked.url("/v2/app2/manifests/v1"),
        &[
            ("accept", OCI_MANIFEST),
            ("authorization", &format!("Basic {auth}")),
        ],
        None,
    );
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));

    // A missing source manifest: 404, named.
    let out = berth(&["copy", &format!("{}/app:nope", src.addr), &to], cache.path());
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("404") && out.stderr.contains(&src.addr),
        "{out}"
    );

    // Usage errors: exit status 2.
    for bad in [
        vec!["copy", "alpine", &to],
        vec!["copy", &from, &format!("{}/app@{digest}", locked.addr)],
        vec!["mirror", "--tags", "/(/", &from, &to],
    ] {
        let out = berth(&bad, cache.path());
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out}");
    }
    // A layout that is not there: a failure naming it.
    let out = berth(&["copy", "oci:/nonexistent/layout:v1", &to], cache.path());
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("/nonexistent/layout"), "{out}");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn json_events_are_json_lines_and_platform_filter_copies_the_child() {
    let cache = tempfile::tempdir().unwrap();
    let src = TestServer::start(BIN, "");
    let dst = TestServer::start(BIN, "");
    let set = ImageSet::multi_platform(Flavor::Oci, "json-events");
    push_image_set_http(&src.url(""), "multi", "v1", &set);
    let from = format!("{}/multi:v1", src.addr);

    let out = berth(
        &["copy", "--json", &from, &format!("{}/multi:v1", dst.addr)],
        cache.path(),
    )
    .ok();
    let ev = events(&out);
    assert!(ev.iter().all(|e| e["event"].is_string()));
    assert_eq!(ev.first().unwrap()["event"], "started");
    assert_eq!(ev.last().unwrap()["event"], "finished");
    let n_blobs = set.blobs().len();
    assert_eq!(of_kind(&ev, "blob_done").len(), n_blobs);
    assert_eq!(ev.last().unwrap()["blobs_copied"], n_blobs);
    // Children before the index, the tag last.
    let manifests: Vec<&Value> = of_kind(&ev, "manifest_done");
    assert_eq!(manifests.last().unwrap()["tag"], "v1");
    let pos = |d: &str| {
        manifests
            .iter()
            .position(|m| m["digest"] == d && m["tag"].is_null())
            .unwrap()
    };
    for c in set.child_digests() {
        assert!(pos(&c) < pos(&set.index.digest));
    }

    // Again: everything is there.
    let out = berth(
        &["copy", "--json", &from, &format!("{}/multi:v1", dst.addr)],
        cache.path(),
    )
    .ok();
    let ev = events(&out);
    assert_eq!(of_kind(&ev, "blob_skipped").len(), n_blobs);
    assert_eq!(of_kind(&ev, "blob_started").len(), 0);

    // --platform: only the arm64 child, tagged; the index is not copied, and it says so.
    let arm = set.image("arm64");
    let out = berth(
        &[
            "copy",
            "--json",
            "--platform",
            "linux/arm64",
            &from,
            &format!("{}/arm:v1", dst.addr),
        ],
        cache.path(),
    )
    .ok();
    let ev = events(&out);
    assert!(
        of_kind(&ev, "note")[0]["message"]
            .as_str()
            .unwrap()
            .contains("not copied")
    );
    let r = req(
        "HEAD",
        &dst.url("/v2/arm/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
        None,
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(arm.manifest.digest.as_str())
    );
    let r = req(
        "HEAD",
        &dst.url(&format!("/v2/arm/manifests/{}", set.index.digest)),
        &[("accept", OCI_INDEX)],
        None,
    );
    assert_eq!(r.status, 404);

    // The plain output (not a terminal) is lines on stderr and a summary on stdout.
    let out = berth(&["copy", &from, &format!("{}/plain:v1", dst.addr)], cache.path()).ok();
    assert!(out.stdout_str().starts_with("copied "), "{out}");
    assert!(out.stderr.contains("manifest sha256:"), "{out}");
}

#[test]
fn sigint_stops_with_130_and_the_next_run_resumes() {
    let cache = tempfile::tempdir().unwrap();
    let src = TestServer::start(BIN, "");
    let dst = TestServer::start(BIN, "");
    let big = large_layer(Flavor::Oci, "sigint-large", 96 << 20);
    let image = Image::from_layers(Flavor::Oci, Platform::linux_amd64(), "sigint", vec![big]);
    push_image_http(&src.url(""), "app", "v1", &image);
    let large_digest = image.layers[0].blob.digest.clone();
    let from = format!("{}/app:v1", src.addr);
    let to = format!("{}/app:v1", dst.addr);
    let args = ["copy", "--json", "--chunk-size", "4194304", &from, &to];
    let mut child = Command::new(BIN)
        .args(args)
        .env("XDG_CACHE_HOME", cache.path())
        .env("DOCKER_CONFIG", cache.path().join("none"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut signalled = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if !signalled
            && e["event"] == "blob_progress"
            && e["digest"] == large_digest.as_str()
            && e["sent"].as_u64().unwrap() >= 16 << 20
        {
            let st = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            signalled = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(signalled, "never saw the large blob in flight");
    assert_eq!(status.code(), Some(130));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(cache.path().join("berth/uploads"))
            .unwrap()
            .count(),
        1
    );

    let out = berth(&args, cache.path()).ok();
    let ev = events(&out);
    let done = of_kind(&ev, "blob_done")
        .into_iter()
        .find(|e| e["digest"] == large_digest.as_str())
        .expect("the large blob finished");
    assert!(done["resumed_from"].as_u64().unwrap() >= 4 << 20, "{done}");
    assert_eq!(
        sha256(&Skopeo::new().inspect_raw(&docker_ref(&dst.addr, "app", "v1"))),
        image.manifest.digest
    );
    rehash_all(&dst.url(""), "app", "v1");
}

/// `berth copy` between a registry and an OCI layout directory or archive, both ways:
/// the same engine, the file transports of `berth export`/`import`; skopeo reads what
/// berth wrote.
#[test]
fn copy_to_and_from_oci_layouts_and_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let s = TestServer::start(BIN, "");
    let set = ImageSet::multi_platform(Flavor::Oci, "copy-layouts");
    let layout = tmp.path().join("in");
    set.write_oci_layout(&layout, "v1");

    // A layout into the registry: every platform, digests as they were.
    let dst = format!("{}/files/app:v1", s.addr);
    let out = berth(
        &["copy", "--quiet", &format!("oci:{}:v1", layout.display()), &dst],
        &cache,
    );
    assert!(out.success(), "{out}");
    let served = get(&s.url("/v2/files/app/manifests/v1"));
    assert_eq!(sha256(&served.body), set.index_digest());
    for child in set.child_digests() {
        assert_eq!(
            get(&s.url(&format!("/v2/files/app/manifests/{child}"))).status,
            200
        );
    }
    let seen = rehash_all(&s.url(""), "files/app", "v1");
    for b in set.blobs() {
        assert!(seen.contains_key(&b.digest), "{} did not arrive whole", b.digest);
    }

    // The registry into a layout directory and an archive; skopeo reads both.
    let skopeo = Skopeo::new();
    let dir = tmp.path().join("out");
    let archive = tmp.path().join("out.tar");
    for target in [
        format!("oci:{}:v2", dir.display()),
        format!("oci-archive:{}:v2", archive.display()),
    ] {
        let out = berth(&["copy", "--quiet", &dst, &target], &cache);
        assert!(out.success(), "{target}: {out}");
        let raw = skopeo.try_run(&["inspect", "--raw", &target]).ok().stdout;
        assert_eq!(sha256(&raw), set.index_digest(), "{target}");
    }
    // And back from the archive into another repository.
    let back = format!("{}/files/back:v3", s.addr);
    let out = berth(
        &[
            "copy",
            "--quiet",
            &format!("oci-archive:{}:v2", archive.display()),
            &back,
        ],
        &cache,
    );
    assert!(out.success(), "{out}");
    assert_eq!(
        sha256(&get(&s.url("/v2/files/back/manifests/v3")).body),
        set.index_digest()
    );
    // docker-archive is read-only: a clear usage error.
    let out = berth(
        &[
            "copy",
            &dst,
            &format!("docker-archive:{}", tmp.path().join("x.tar").display()),
        ],
        &cache,
    );
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("does not write them"), "{out}");
}
