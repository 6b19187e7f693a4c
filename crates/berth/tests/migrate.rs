//! `berth migrate-storage`: a registry holding real images (pushed by skopeo) moves from
//! the filesystem + SQLite to S3 (s3s-fs) + PostgreSQL, and back; every image then pulls
//! and verifies from the new backend. Also: refused while a server runs on the source,
//! resumable (a second run copies nothing; blobs already at the destination are skipped,
//! damaged ones replaced), --verify re-hashes, --quiet prints only the summary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

    // Refused while the source is serving.
    let refused = migrate(&from, &to, &[]).failed();
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    assert!(
        refused
            .stderr
            .contains("a berth server is running on the data directory"),
        "{refused}"
    );
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
        line_with(&out, "migrate-storage: tags:").contains("3 rows, 3 copied"),
        "{out}"
    );
    assert!(out.contains(&format!("verified {n_blobs} blobs")), "{out}");
    assert!(out.contains("migrate-storage: done in"), "{out}");
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
        line_with(&out, "migrate-storage: manifests:").contains(", 0 copied,"),
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
