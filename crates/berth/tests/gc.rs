//! Online garbage collection with real clients: everything reachable from a tag stays
//! and pulls; what nothing reaches goes from disk and metadata; nothing else goes.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::Skopeo;
use berth_testkit::images::{Flavor, ImageSet};
use support::*;

/// (repository, tag, manifest bytes) of a committed push.
type Pushed = (String, String, Vec<u8>);

fn berth_gc(s: &TestServer, extra: &[&str]) -> String {
    lifecycle_cli(s, "gc", extra)
}

fn files_on_disk(data: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = data.join("blobs/sha256");
    for dir in std::fs::read_dir(&root).into_iter().flatten() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            out.insert(format!("sha256:{}", f.unwrap().file_name().to_string_lossy()));
        }
    }
    out
}

fn image_blobs(set: &ImageSet) -> BTreeSet<String> {
    set.blobs().iter().map(|b| b.digest.clone()).collect()
}

#[test]
fn gc_keeps_what_tags_reach_and_removes_exactly_the_rest() {
    let s = TestServer::start(
        BIN,
        "[gc]\ngrace = \"2s\"\ncache_grace = \"2s\"\nschedule = \"off\"\n",
    );
    let b = s.url("");
    let skopeo = Skopeo::new();
    let tmp = tempfile::tempdir().unwrap();
    let dest = |repo: &str, tag: &str| format!("docker://{}/{repo}:{tag}", s.addr);

    // A multi-platform OCI index and a Docker manifest list, pushed by skopeo.
    let oci = ImageSet::multi_platform(Flavor::Oci, "gc-oci");
    oci.write_oci_layout(&tmp.path().join("oci"), "v1");
    skopeo.copy_all(
        &format!("oci:{}:v1", tmp.path().join("oci").display()),
        &dest("gc/app", "v1"),
    );
    let docker = ImageSet::multi_platform(Flavor::Docker, "gc-docker");
    docker.write_dir(&tmp.path().join("docker"));
    skopeo.copy_all(
        &format!("dir:{}", tmp.path().join("docker").display()),
        &dest("gc/app", "list"),
    );
    // A referrer of the index (an artifact whose subject is the index).
    let empty = push_blob(&b, "gc/app", b"{}");
    let index = oci.index_digest().to_string();
    let referrer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sbom","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_INDEX}","digest":"{index}","size":1}}}}"#
    );
    let referrer_digest = sha256(referrer.as_bytes());
    assert_eq!(
        put_manifest(&b, "gc/app", &referrer_digest, OCI_MANIFEST, referrer.as_bytes()).status,
        201
    );
    // Another tag in the same repository, deleted below, and an image elsewhere.
    let (old, _) = push_image(&b, "gc/app", "old", 31, 2);
    let (other, other_bytes) = push_image(&b, "gc/other", "keep", 32, 2);
    let before = files_on_disk(&s.blob_root());

    // Delete the other tag; within the grace period GC keeps even the untagged manifest.
    assert_eq!(
        req("DELETE", &format!("{b}/v2/gc/app/manifests/old"), &[], None).status,
        202
    );
    let out = berth_gc(&s, &[]);
    assert!(deleted(&out).is_empty(), "{out}");
    std::thread::sleep(Duration::from_millis(3100)); // 2 s grace + 1 s clock granularity
    let out = berth_gc(&s, &[]);
    let gone = deleted(&out);
    assert!(gone.iter().any(|l| l.contains(&format!("gc/app@{old}"))), "{out}");
    assert_eq!(get(&format!("{b}/v2/gc/app/manifests/{old}")).status, 404);
    // Everything the tags reach stays and pulls: index, children, configs, layers, referrer.
    skopeo.copy_all(
        &dest("gc/app", "v1"),
        &format!("oci:{}:back", tmp.path().join("back").display()),
    );
    skopeo.copy_all(
        &dest("gc/app", "list"),
        &format!("dir:{}", tmp.path().join("back-list").display()),
    );
    for d in oci.child_digests().iter().chain(docker.child_digests().iter()) {
        assert_eq!(
            get(&format!("{b}/v2/gc/app/manifests/{d}")).status,
            200,
            "child {d}"
        );
    }
    for blob in oci.blobs().iter().chain(docker.blobs().iter()) {
        let r = get(&format!("{b}/v2/gc/app/blobs/{}", blob.digest));
        assert_eq!(sha256(&r.body), blob.digest);
    }
    let refs = get(&format!("{b}/v2/gc/app/referrers/{index}")).json();
    assert_eq!(refs["manifests"][0]["digest"], referrer_digest.as_str());
    assert_eq!(get(&format!("{b}/v2/gc/other/manifests/keep")).body, other_bytes);
    // Only the old image's own blobs left the disk.
    let after = files_on_disk(&s.blob_root());
    let removed: BTreeSet<_> = before.difference(&after).cloned().collect();
    assert_eq!(
        removed.len(),
        3,
        "the old image's config and two layers: {removed:?}"
    );
    for d in &removed {
        assert!(
            gone.iter().any(|l| l.contains(d.as_str())),
            "{d} removed but not reported: {out}"
        );
    }

    // Now the index's tag goes: after the grace period the index, its children, their
    // configs and layers, and the referrer all go; the Docker list and the other image stay.
    assert_eq!(
        req("DELETE", &format!("{b}/v2/gc/app/manifests/v1"), &[], None).status,
        202
    );
    std::thread::sleep(Duration::from_millis(3100)); // 2 s grace + 1 s clock granularity
    let dry = berth_gc(&s, &["--dry-run"]);
    assert!(dry.contains("would be freed"), "{dry}");
    assert_eq!(files_on_disk(&s.blob_root()), after, "a dry run changes nothing");
    let real = berth_gc(&s, &[]);
    assert_eq!(
        deleted(&dry),
        deleted(&real),
        "the dry run lists exactly what the real run deletes"
    );
    let gone = deleted(&real);
    for d in std::iter::once(&index)
        .chain(oci.child_digests().iter())
        .chain([&referrer_digest])
    {
        assert!(
            gone.iter().any(|l| l.contains(d.as_str())),
            "{d} not collected: {real}"
        );
        assert_eq!(get(&format!("{b}/v2/gc/app/manifests/{d}")).status, 404);
    }
    let on_disk = files_on_disk(&s.blob_root());
    for blob in image_blobs(&oci).iter().chain([&empty]) {
        assert!(!on_disk.contains(blob), "{blob} still on disk");
        assert_eq!(
            req("HEAD", &format!("{b}/v2/gc/app/blobs/{blob}"), &[], None).status,
            404
        );
    }
    // Nothing else went.
    let expected: BTreeSet<String> = after
        .difference(&image_blobs(&oci))
        .filter(|d| **d != empty)
        .cloned()
        .collect();
    assert_eq!(on_disk, expected);
    skopeo.copy_all(
        &dest("gc/app", "list"),
        &format!("dir:{}", tmp.path().join("again").display()),
    );
    assert_eq!(
        get(&format!("{b}/v2/gc/other/manifests/{other}")).body,
        other_bytes
    );
    let m = get(&format!("{b}/metrics")).text();
    assert!(m.contains("berth_gc_runs_total 3"), "{m}");
}

#[test]
fn gc_in_a_loop_while_clients_push_and_pull() {
    let s = TestServer::start(BIN, "[gc]\nschedule = \"off\"\n");
    let b = s.url("");
    let tags: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    for i in 0..3u8 {
        let (_, m) = push_image(&b, "busy/base", &format!("t{i}"), 60 + i, 2);
        tags.lock()
            .unwrap()
            .push(("busy/base".into(), format!("t{i}"), m));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(8);
    // GC with no grace at all, as often as it can.
    let collector = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = req(
                    "POST",
                    &format!("{b}/admin/gc?grace=0s&cache_grace=0s"),
                    &[],
                    None,
                );
                assert!(r.status == 200 || r.status == 409, "{}", r.text());
                runs += 1;
            }
            runs
        })
    };
    // Pushers: a manifest refused with MANIFEST_BLOB_UNKNOWN (its blobs were collected
    // before it arrived) is pushed again after re-uploading, as clients do.
    let pushers: Vec<_> = (0..2u8)
        .map(|w| {
            let (b, stop, tags) = (b.clone(), stop.clone(), tags.clone());
            std::thread::spawn(move || {
                let mut i = 0u8;
                let mut retries = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let repo = format!("busy/p{w}");
                    let tag = format!("v{i}");
                    let config = format!(r#"{{"w":{w},"i":{i}}}"#).into_bytes();
                    let layer = bytes(w.wrapping_mul(50).wrapping_add(i), 20_000);
                    loop {
                        let c = push_blob(&b, &repo, &config);
                        let l = push_blob(&b, &repo, &layer);
                        let m = image_manifest(&(c, config.len()), &[(l, layer.len())], "");
                        let r = put_manifest(&b, &repo, &tag, OCI_MANIFEST, &m);
                        if r.status == 201 {
                            tags.lock().unwrap().push((repo.clone(), tag.clone(), m));
                            break;
                        }
                        assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN", "{}", r.text());
                        retries += 1;
                        assert!(retries < 1000);
                    }
                    i = i.wrapping_add(1);
                }
                retries
            })
        })
        .collect();
    // Pullers: every committed tag pulls, always.
    let pullers: Vec<_> = (0..2)
        .map(|_| {
            let (b, stop, tags) = (b.clone(), stop.clone(), tags.clone());
            std::thread::spawn(move || {
                let mut pulls = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let all = tags.lock().unwrap().clone();
                    for (repo, tag, m) in all.iter().rev().take(5) {
                        let g = get(&format!("{b}/v2/{repo}/manifests/{tag}"));
                        assert_eq!(g.body, *m, "{repo}:{tag} failed to pull during GC");
                        let v: serde_json::Value = serde_json::from_slice(m).unwrap();
                        for l in v["layers"].as_array().unwrap() {
                            let d = l["digest"].as_str().unwrap();
                            let r = get(&format!("{b}/v2/{repo}/blobs/{d}"));
                            assert_eq!((r.status, sha256(&r.body)), (200, d.to_string()), "{repo}:{tag}");
                        }
                        pulls += 1;
                    }
                }
                pulls
            })
        })
        .collect();
    let runs = collector.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        p.join().unwrap();
    }
    let pulls: usize = pullers.into_iter().map(|p| p.join().unwrap()).sum();
    assert!(runs > 5 && pulls > 20, "runs {runs}, pulls {pulls}");
    // Afterwards every tag pulls and verifies byte for byte.
    let all = tags.lock().unwrap().clone();
    for (repo, tag, m) in &all {
        assert_eq!(get(&format!("{b}/v2/{repo}/manifests/{tag}")).body, *m);
        let v: serde_json::Value = serde_json::from_slice(m).unwrap();
        let mut refs = vec![v["config"]["digest"].as_str().unwrap().to_string()];
        refs.extend(
            v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        for d in refs {
            assert_eq!(
                sha256(&get(&format!("{b}/v2/{repo}/blobs/{d}")).body),
                d,
                "{repo}:{tag}"
            );
        }
    }
}
