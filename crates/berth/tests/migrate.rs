//! `berth migrate-storage`: a registry holding real images (pushed by skopeo) moves from
//! the filesystem + SQLite to S3 (s3s-fs) + PostgreSQL, and back; every image then pulls
//! and verifies from the new backend. Resumable (a second run copies nothing; blobs
//! already at the destination are skipped, damaged ones replaced), --verify re-hashes,
//! --quiet prints only the summary. Online: a pass while the source serves pushes, tag
//! moves and deletes, then the final pass after it stops; a second pass carries a moved
//! tag and a garbage collection over; a served destination is refused.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::{Output, Skopeo, docker_ref, run};
use berth_testkit::images::{
    Flavor, Image, ImageSet, OciLayout, Platform, assert_layout_holds_set, large_layer,
};
use berth_testkit::postgres::PgCluster;
use berth_testkit::s3::S3Server;
use support::*;

fn migrate(from: &Path, to: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("migrate-storage")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(extra);
    run(&mut cmd, Duration::from_secs(300))
}

/// A configuration file in `dir` whose `[storage]` is `storage` (data directory `dir/data`,
/// where a TestServer started in `dir` keeps its data too).
fn config(dir: &Path, storage: &str) -> PathBuf {
    let path = dir.join("migrate.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\ndata_dir = \"{}\"\n{storage}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

fn line_with<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

fn blob_files(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(data.join("blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.extend(std::fs::read_dir(d.path()).unwrap().flatten().map(|f| f.path()));
    }
    out.sort();
    out
}

#[test]
fn fs_sqlite_to_s3_postgres_and_back_then_every_image_pulls() {
    let skopeo = Skopeo::new();
    let tmp = tempfile::tempdir().unwrap();
    let fs_storage = "blobs = \"fs\"\nmetadata = \"sqlite\"\n";

    // The source: filesystem + SQLite, with a multi-platform index and an image with a
    // 12 MiB layer, pushed by skopeo, and a second tag.
    let mut src = TestServer::start(BIN, fs_storage);
    let set = ImageSet::multi_platform(Flavor::Oci, "migrate-set");
    set.write_oci_layout(&tmp.path().join("set"), "v1");
    let big = Image::from_layers(
        Flavor::Oci,
        Platform::linux_amd64(),
        "migrate-big",
        vec![large_layer(Flavor::Oci, "migrate-big", 12 << 20)],
    );
    big.write_oci_layout(&tmp.path().join("big"), "v1");
    let oci = |dir: &str, tag: &str| format!("oci:{}:{tag}", tmp.path().join(dir).display());
    skopeo.copy_all(&oci("set", "v1"), &docker_ref(&src.addr, "team/multi", "v1"));
    skopeo.copy_all(&oci("set", "v1"), &docker_ref(&src.addr, "team/multi", "stable"));
    skopeo.copy(&oci("big", "v1"), &docker_ref(&src.addr, "team/big", "v1"), &[]);
    let tags_before = get(&src.url("/v2/team/multi/tags/list")).json();
    let from = config(src.dir(), fs_storage);

    // The destination: S3 + PostgreSQL.
    let s3 = S3Server::s3s_fs();
    let db = PgCluster::shared().create_database();
    let dst_dir = tempfile::tempdir().unwrap();
    let s3pg = format!(
        "metadata = \"{db}\"\n{}",
        s3.berth_config(dst_dir.path(), "moved")
    );
    let to = config(dst_dir.path(), &s3pg);

    src.terminate(Duration::from_secs(10))
        .expect("berth stops on SIGTERM");

    let n_blobs = blob_files(&src.data_dir()).len();
    let first = migrate(&from, &to, &[]).ok();
    let out = first.stdout_str();
    let blobs_line = line_with(&out, "migrate-storage: blobs:");
    assert!(
        blobs_line.starts_with(&format!("migrate-storage: blobs: {n_blobs} copied ("))
            && blobs_line.ends_with(", 0 already at the destination (0 B)"),
        "{out}"
    );
    assert!(
        line_with(&out, "migrate-storage: tags:").contains("3 rows: 3 added, 0 changed, 0 removed"),
        "{out}"
    );
    assert!(out.contains(&format!("verified {n_blobs} blobs")), "{out}");
    assert!(out.contains("migrate-storage: done in"), "{out}");
    assert!(out.contains("(final pass)"), "{out}");
    // Progress went to stderr as plain lines (not a terminal).
    assert!(first.stderr.contains("migrate-storage: copying"), "{first}");

    // Run again: nothing left to copy.
    let again = migrate(&from, &to, &["--quiet"]).ok();
    let out = again.stdout_str();
    assert!(
        line_with(&out, "migrate-storage: blobs:").starts_with(&format!(
            "migrate-storage: blobs: 0 copied (0 B), {n_blobs} already at the destination"
        )),
        "{out}"
    );
    assert!(
        line_with(&out, "migrate-storage: manifests:").contains(": 0 added, 0 changed, 0 removed"),
        "{out}"
    );
    assert!(
        again.stderr.trim().is_empty(),
        "--quiet printed progress: {again}"
    );

    // Every image pulls from S3 + PostgreSQL and verifies, tags included.
    let moved = TestServer::start_in(dst_dir, BIN, "", &s3pg);
    assert_eq!(get(&moved.url("/v2/team/multi/tags/list")).json(), tags_before);
    let pull = |reg: &TestServer, out: &str| {
        for tag in ["v1", "stable"] {
            let dir = format!("{out}-{tag}");
            skopeo.copy_all(&docker_ref(&reg.addr, "team/multi", tag), &oci(&dir, tag));
            assert_layout_holds_set(&OciLayout::open(&tmp.path().join(&dir)), tag, &set);
        }
        let dir = format!("{out}-big");
        skopeo.copy(
            &docker_ref(&reg.addr, "team/big", "v1"),
            &format!("dir:{}", tmp.path().join(&dir).display()),
            &[],
        );
        let layer = &big.layers[0].blob;
        let got = std::fs::read(
            tmp.path()
                .join(&dir)
                .join(layer.digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap();
        assert!(got == layer.data, "the large layer pulled from {out} differs");
    };
    pull(&moved, "s3pg");
    let manifest = get(&moved.url(&format!("/v2/team/big/manifests/{}", big.manifest.digest)));
    assert_eq!(manifest.status, 200);
    assert!(
        manifest.body == big.manifest.data,
        "manifest bytes changed on the way"
    );

    // And back to the filesystem + SQLite, re-hashing everything at the end. Half the
    // blobs are already there (an interrupted earlier run), one of them damaged.
    let mut moved = moved;
    moved
        .terminate(Duration::from_secs(10))
        .expect("berth stops on SIGTERM");
    let back_dir = tempfile::tempdir().unwrap();
    let back = config(back_dir.path(), fs_storage);
    let files = blob_files(&src.data_dir());
    let data = back_dir.path().join("data");
    for f in files.iter().take(files.len() / 2) {
        let rel = f.strip_prefix(src.data_dir()).unwrap();
        std::fs::create_dir_all(data.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(f, data.join(rel)).unwrap();
    }
    let damaged = data.join(files[0].strip_prefix(src.data_dir()).unwrap());
    std::fs::write(&damaged, b"short").unwrap();
    let r = migrate(&to, &back, &["--verify"]).ok();
    let out = r.stdout_str();
    let half = files.len() / 2;
    assert!(
        line_with(&out, "migrate-storage: blobs:").contains(&format!("{} copied", files.len() - half + 1))
            && out.contains(&format!("{} already at the destination", half - 1))
            && out.contains("1 of them replacing damaged copies"),
        "{out}"
    );
    assert!(
        out.contains("by re-hashing at the destination, 0 problem(s)"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        std::fs::read(&files[0]).unwrap()
    );
    let home = TestServer::start_in(back_dir, BIN, "", fs_storage);
    pull(&home, "back");
    assert_eq!(get(&home.url("/v2/team/multi/tags/list")).json(), tags_before);
}

#[test]
fn refuses_the_same_store_twice_and_a_missing_source() {
    let tmp = tempfile::tempdir().unwrap();
    let a = config(tmp.path(), "");
    let r = migrate(&a, &a, &[]).failed();
    assert_eq!(r.status.code(), Some(2), "{r}");
    assert!(
        r.stderr.contains("name the same blob store and metadata store"),
        "{r}"
    );
    let other = tempfile::tempdir().unwrap();
    let b = config(other.path(), "");
    let r = migrate(&a, &b, &[]).failed();
    assert_eq!(r.status.code(), Some(2), "{r}");
    assert!(r.stderr.contains("there is no metadata database at"), "{r}");
}

const ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Every tag of every repository `reg` lists, with the digest it resolves to.
fn tag_digests(base: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let catalog = get(&format!("{base}/v2/_catalog?n=1000")).json();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags = get(&format!("{base}/v2/{repo}/tags/list?n=1000")).json();
        for tag in tags["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().unwrap();
            let r = req(
                "HEAD",
                &format!("{base}/v2/{repo}/manifests/{tag}"),
                &[("Accept", ALL_MANIFESTS)],
                None,
            );
            assert_eq!(r.status, 200, "HEAD {repo}:{tag} at {base}");
            let digest = r.header("docker-content-digest").unwrap().to_string();
            out.insert((repo.to_string(), tag.to_string()), digest);
        }
    }
    out
}

fn head_status(base: &str, repo: &str, reference: &str) -> u16 {
    req(
        "HEAD",
        &format!("{base}/v2/{repo}/manifests/{reference}"),
        &[("Accept", ALL_MANIFESTS)],
        None,
    )
    .status
}

/// "done in 1.2s" of a migrate-storage summary, in seconds.
fn pass_seconds(out: &str) -> f64 {
    let line = line_with(out, "migrate-storage: done in ");
    line["migrate-storage: done in ".len()..]
        .split('s')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// The whole cut-over, as docs/how-to/migrate-storage.md tells it: a pass while the
/// source takes pushes, tag moves, deletes and garbage collections; then stop it, the final pass, and berth on
/// S3 + PostgreSQL answers every tag with the digest the source had at the stop, every
/// image pulls and verifies through skopeo, and deleted tags are gone.
#[test]
fn live_pass_while_serving_then_final_pass_after_the_stop() {
    let skopeo = Skopeo::new();
    let tmp = tempfile::tempdir().unwrap();
    let fs_storage = "blobs = \"fs\"\nmetadata = \"sqlite\"\n";
    let mut src = TestServer::start(
        BIN,
        &format!("{fs_storage}[gc]\ngrace = \"1s\"\ncache_grace = \"1s\"\nschedule = \"off\"\n"),
    );
    let oci = |dir: &str, tag: &str| format!("oci:{}:{tag}", tmp.path().join(dir).display());

    // Before: 12 images (one with a 24 MiB layer) and an index, and a tag to be deleted.
    let big = Image::from_layers(
        Flavor::Oci,
        Platform::linux_amd64(),
        "live-big",
        vec![large_layer(Flavor::Oci, "live-big", 24 << 20)],
    );
    big.write_oci_layout(&tmp.path().join("big"), "v1");
    skopeo.copy(&oci("big", "v1"), &docker_ref(&src.addr, "live/big", "v1"), &[]);
    let set = ImageSet::multi_platform(Flavor::Oci, "live-set");
    set.write_oci_layout(&tmp.path().join("set"), "v1");
    skopeo.copy_all(&oci("set", "v1"), &docker_ref(&src.addr, "live/multi", "v1"));
    let image = |i: usize| {
        let name = format!("img{i}");
        Image::build(Flavor::Oci, Platform::linux_amd64(), &format!("live-{i}"), 2)
            .write_oci_layout(&tmp.path().join(&name), "v1");
        oci(&name, "v1")
    };
    for i in 0..10 {
        skopeo.copy(
            &image(i),
            &docker_ref(&src.addr, "live/app", &format!("r{i}")),
            &[],
        );
    }
    skopeo.copy(&image(100), &docker_ref(&src.addr, "live/doomed", "v1"), &[]);
    skopeo.copy(&image(0), &docker_ref(&src.addr, "live/app", "moving"), &[]);
    let from = config(src.dir(), fs_storage);

    let s3 = S3Server::s3s_fs();
    let db = PgCluster::shared().create_database();
    let dst_dir = tempfile::tempdir().unwrap();
    let s3pg = format!("metadata = \"{db}\"\n{}", s3.berth_config(dst_dir.path(), "live"));
    let to = config(dst_dir.path(), &s3pg);

    // The load: new tags, a tag moved, a pushed image deleted and collected (GC runs on
    // the source while the pass copies), in a loop until told.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, rounds, addr) = (stop.clone(), rounds.clone(), src.addr.clone());
        // Images pushed to stay, and images of their own (blobs no other image has) to be
        // deleted and collected.
        let layouts: Vec<(String, String)> = (200..260).map(|i| (image(i), image(i + 100))).collect();
        std::thread::spawn(move || {
            let skopeo = Skopeo::new();
            let started = Instant::now();
            for (i, (layout, doomed)) in layouts.iter().enumerate() {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(240) {
                    break;
                }
                skopeo.copy(layout, &docker_ref(&addr, "live/app", &format!("n{i}")), &[]);
                skopeo.copy(layout, &docker_ref(&addr, "live/app", "moving"), &[]);
                skopeo.copy(doomed, &docker_ref(&addr, "live/tmp", &format!("t{i}")), &[]);
                skopeo.delete(&docker_ref(&addr, "live/tmp", &format!("t{i}")));
                let gc = run(
                    Command::new(BIN).args(["gc", "--server", &format!("http://{addr}")]),
                    Duration::from_secs(60),
                );
                assert!(gc.success(), "berth gc: {gc}");
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let waited = Instant::now();
    while rounds.load(Ordering::SeqCst) == 0 && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rounds.load(Ordering::SeqCst) > 0, "the load never ran");

    // The live pass, while the load goes on.
    let before = rounds.load(Ordering::SeqCst);
    let t = Instant::now();
    let live = migrate(&from, &to, &[]).ok();
    let live_wall = t.elapsed();
    let during = rounds.load(Ordering::SeqCst) - before;
    let out = live.stdout_str();
    assert!(out.contains("(live pass: the source was serving)"), "{live}");
    println!("live pass, blobs: {}", line_with(&out, "migrate-storage: blobs:"));
    assert!(out.contains("To cut over: stop berth on the source"), "{out}");
    assert!(out.contains("0 problem(s)"), "{out}");
    // One more round after the pass at least, then a tag deleted and a tag moved that
    // the destination had from the live pass.
    let after = rounds.load(Ordering::SeqCst);
    let waited = Instant::now();
    while rounds.load(Ordering::SeqCst) == after && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    load.join().expect("the load thread");
    skopeo.delete(&docker_ref(&src.addr, "live/doomed", "v1"));
    skopeo.copy(
        &oci("big", "v1"),
        &docker_ref(&src.addr, "live/app", "moving"),
        &[],
    );

    // The cut-over: what the source answers at the stop is what the destination must.
    let at_stop = tag_digests(&src.url(""));
    assert_eq!(
        at_stop.get(&("live/app".into(), "moving".into())),
        Some(&big.manifest.digest)
    );
    assert!(!at_stop.contains_key(&("live/doomed".into(), "v1".into())));
    src.terminate(Duration::from_secs(10))
        .expect("berth stops on SIGTERM");
    let t = Instant::now();
    let last = migrate(&from, &to, &[]).ok();
    let final_wall = t.elapsed();
    let out = last.stdout_str();
    assert!(out.contains("(final pass)"), "{last}");
    assert!(
        out.contains("more verified by an earlier pass), 0 problem(s)"),
        "{out}"
    );
    assert!(
        line_with(&out, "migrate-storage: tags:").contains("1 removed")
            || line_with(&out, "migrate-storage: tags:").contains("2 removed"),
        "the doomed tag (and perhaps a tmp one) went: {out}"
    );
    println!(
        "live pass: {:.2}s wall ({:.1}s by its summary), {during} load rounds during it; \
         final pass: {:.2}s wall ({:.1}s by its summary)",
        live_wall.as_secs_f64(),
        pass_seconds(&live.stdout_str()),
        final_wall.as_secs_f64(),
        pass_seconds(&out)
    );
    println!(
        "live pass output:\n{}\nfinal pass output:\n{out}",
        live.stdout_str()
    );
    // Once more with --verify: nothing to copy, every byte at the destination re-hashed.
    let t = Instant::now();
    let check = migrate(&from, &to, &["--verify", "--quiet"]).ok();
    let out = check.stdout_str();
    assert!(
        line_with(&out, "migrate-storage: blobs:").starts_with("migrate-storage: blobs: 0 copied"),
        "{out}"
    );
    assert!(
        out.contains("by re-hashing at the destination, 0 problem(s)"),
        "{out}"
    );
    println!("--verify pass: {:.2}s wall", t.elapsed().as_secs_f64());

    let moved = TestServer::start_in(dst_dir, BIN, "", &s3pg);
    assert_eq!(
        tag_digests(&moved.url("")),
        at_stop,
        "tags differ after the cut-over"
    );
    assert_eq!(head_status(&moved.url(""), "live/doomed", "v1"), 404);
    // Every tagged image pulls through skopeo, which checks every blob's digest.
    let mut pulled = BTreeSet::new();
    for ((repo, tag), digest) in &at_stop {
        if !pulled.insert(digest.clone()) {
            continue;
        }
        let dir = format!("pull-{}", &digest[7..19]);
        skopeo.copy_all(&docker_ref(&moved.addr, repo, tag), &oci(&dir, "x"));
    }
    assert_layout_holds_set(
        &OciLayout::open(&tmp.path().join(format!("pull-{}", &set.index_digest()[7..19]))),
        "x",
        &set,
    );
}

/// A second pass after the running source moved a tag, deleted an image and collected
/// garbage: the destination follows (tag moved, tag gone, collected blobs gone from its
/// metadata and its bytes); a served destination is refused.
#[test]
fn second_pass_carries_a_moved_tag_and_a_collection_over() {
    let skopeo = Skopeo::new();
    let tmp = tempfile::tempdir().unwrap();
    let fs_storage = "blobs = \"fs\"\nmetadata = \"sqlite\"\n";
    let src = TestServer::start(
        BIN,
        &format!("{fs_storage}[gc]\ngrace = \"2s\"\ncache_grace = \"2s\"\nschedule = \"off\"\n"),
    );
    let oci = |dir: &str| format!("oci:{}:v1", tmp.path().join(dir).display());
    for (name, seed) in [("a", "second-a"), ("b", "second-b"), ("c", "second-c")] {
        Image::build(Flavor::Oci, Platform::linux_amd64(), seed, 2)
            .write_oci_layout(&tmp.path().join(name), "v1");
    }
    skopeo.copy(&oci("a"), &docker_ref(&src.addr, "team/app", "v1"), &[]);
    skopeo.copy(&oci("b"), &docker_ref(&src.addr, "team/app", "old"), &[]);
    let from = config(src.dir(), fs_storage);
    let dst_dir = tempfile::tempdir().unwrap();
    let to = config(dst_dir.path(), fs_storage);

    let first = migrate(&from, &to, &["--quiet"]).ok();
    assert!(
        first.stdout_str().contains("(live pass: the source was serving)"),
        "{first}"
    );
    assert_eq!(blob_files(&dst_dir.path().join("data")).len(), 6);

    // On the running source: v1 moves to c, old is deleted, GC collects a and b.
    skopeo.copy(&oci("c"), &docker_ref(&src.addr, "team/app", "v1"), &[]);
    skopeo.delete(&docker_ref(&src.addr, "team/app", "old"));
    std::thread::sleep(Duration::from_millis(3100)); // 2 s grace + 1 s clock granularity
    let n_before = blob_files(&src.data_dir()).len();
    lifecycle_cli(&src, "gc", &[]);
    let n_after = blob_files(&src.data_dir()).len();
    assert_eq!((n_before, n_after), (9, 3), "GC collected a and b");
    let at_gc = tag_digests(&src.url(""));

    let second = migrate(&from, &to, &["--quiet"]).ok();
    let out = second.stdout_str();
    assert!(out.contains("(live pass: the source was serving)"), "{second}");
    assert!(
        line_with(&out, "migrate-storage: tags:").contains("1 rows: 0 added, 1 changed, 1 removed"),
        "{out}"
    );
    assert!(
        line_with(&out, "migrate-storage: blobs:").starts_with("migrate-storage: blobs: 3 copied"),
        "{out}"
    );
    assert!(
        out.contains("removed 6 blob(s) from the destination that the source no longer has"),
        "{out}"
    );
    assert!(out.contains("0 problem(s)"), "{out}");
    let rel = |files: Vec<PathBuf>, root: &Path| {
        files
            .into_iter()
            .map(|f| f.strip_prefix(root).unwrap().to_path_buf())
            .collect::<Vec<_>>()
    };
    let dst_data = dst_dir.path().join("data");
    assert_eq!(
        rel(blob_files(&dst_data), &dst_data),
        rel(blob_files(&src.data_dir()), &src.data_dir())
    );

    // Stopped: the final pass has nothing to copy; berth on the destination answers as
    // the source did, and a migration into a served destination is refused.
    let mut src = src;
    src.terminate(Duration::from_secs(10))
        .expect("berth stops on SIGTERM");
    let last = migrate(&from, &to, &["--quiet"]).ok();
    let out = last.stdout_str();
    assert!(out.contains("(final pass)"), "{out}");
    assert!(
        line_with(&out, "migrate-storage: blobs:").starts_with("migrate-storage: blobs: 0 copied"),
        "{out}"
    );
    let moved = TestServer::start_in(dst_dir, BIN, "", fs_storage);
    assert_eq!(tag_digests(&moved.url("")), at_gc);
    assert_eq!(head_status(&moved.url(""), "team/app", "old"), 404);
    skopeo.copy(
        &docker_ref(&moved.addr, "team/app", "v1"),
        &format!("dir:{}", tmp.path().join("pulled").display()),
        &[],
    );
    let refused = migrate(&from, &to, &[]).failed();
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    assert!(
        refused
            .stderr
            .contains("the destination must not be served during a migration"),
        "{refused}"
    );
}
