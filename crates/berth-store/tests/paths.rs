//! No repository name, tag, digest or upload id can make a path outside the data
//! directory.
//!
//! Arbitrary strings (with `..`, `/`, `\`, NUL, `%2e`, look-alike dots, very long runs)
//! go through the berth-oci parsers; whatever they accept goes through the filesystem
//! store's path builders, and every resulting path must be lexically inside the data
//! directory: it starts with the root, and each part after it is a plain name, never
//! empty, `.`, `..` or absolute. Checked on the raw bytes of the path, because
//! `Path::components` silently drops `.` parts. A second property does real uploads,
//! commits and quarantines with accepted ids and digests and looks where files land.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_oci::{Algorithm, Digest, DigestHasher, Reference, RepoName, Tag, UploadId};
use berth_store::BlobStore;
use berth_store::fs::FsBlobStore;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Pieces of path tricks, decoded and encoded, plus plausible name parts.
const FRAGMENTS: &[&str] = &[
    "..",
    ".",
    "/",
    "//",
    "\\",
    "\0",
    "%2e",
    "%2E%2E",
    "%2f",
    "%00",
    "a",
    "b0",
    "x.y",
    "_",
    "__",
    "-",
    ":",
    "sha256:",
    "sha512:",
    "é",
    "\u{2025}",
    "\u{ff0e}",
    "\u{202e}",
    " ",
    "~",
    "$HOME",
    "blobs",
    "uploads",
    "tmp",
    "0f",
    "e3b0c44298fc1c14",
];

const VALID_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Strings from every corner: arbitrary unicode, near-grammar, fragment soups, digests
/// with tricks spliced in, very long.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9._/-]{1,300}",
        "[A-Za-z0-9._%:/\\\\-]{1,80}",
        proptest::collection::vec(select(FRAGMENTS), 1..12).prop_map(|v| v.concat()),
        near_valid_digest(),
        near_valid_upload_id(),
        ("[a-z0-9./]{1,3}", 0usize..400).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// Valid digests, sometimes with a fragment spliced in at a random place.
fn near_valid_digest() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
    ];
    (
        valid,
        proptest::option::weighted(0.25, (select(FRAGMENTS), any::<prop::sample::Index>())),
    )
        .prop_map(|(mut d, splice)| {
            if let Some((frag, at)) = splice {
                let at = at.index(d.len() + 1);
                d.insert_str(at, frag);
            }
            d
        })
}

/// Upload ids like berth's (UUIDs) or any of the grammar, sometimes with a fragment.
fn near_valid_upload_id() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[A-Za-z0-9-]{1,70}"
    ];
    (valid, proptest::option::weighted(0.25, select(FRAGMENTS))).prop_map(|(mut id, frag)| {
        if let Some(f) = frag {
            id.push_str(f);
        }
        id
    })
}

/// `p` is `root` followed by exactly `parts` plain names: no `.`, `..`, empty or
/// absolute part, no NUL. Checked on the bytes, not through `components()`, which
/// would hide `a/./b` and `a//b`.
fn assert_inside(root: &Path, p: &Path, parts: usize, what: &str) -> Result<(), TestCaseError> {
    let rel = p
        .strip_prefix(root)
        .map_err(|_| TestCaseError::fail(format!("{what}: {p:?} is not under {root:?}")))?;
    let raw = p.as_os_str().as_bytes();
    let root_raw = root.as_os_str().as_bytes();
    prop_assert!(raw.starts_with(root_raw) && raw.get(root_raw.len()) == Some(&b'/'));
    let tail = &raw[root_raw.len() + 1..];
    prop_assert!(!rel.is_absolute(), "{what}: {p:?}");
    prop_assert!(!tail.contains(&0), "{what}: {p:?} holds a NUL byte");
    let segs: Vec<&[u8]> = tail.split(|&b| b == b'/').collect();
    prop_assert_eq!(
        segs.len(),
        parts,
        "{}: {:?} has the wrong number of parts",
        what,
        p
    );
    for s in segs {
        prop_assert!(
            !s.is_empty() && s != b"." && s != b"..",
            "{}: {:?} has a part {:?}",
            what,
            p,
            String::from_utf8_lossy(s)
        );
    }
    Ok(())
}

/// Which parsers accepted the input (so the test can show it was not vacuous).
#[derive(Default, Debug)]
struct Accepted {
    names: u32,
    tags: u32,
    digests: u32,
    upload_ids: u32,
}

fn check_one(root: &Path, store: &FsBlobStore, s: &str, seen: &mut Accepted) -> Result<(), TestCaseError> {
    if let Ok(name) = s.parse::<RepoName>() {
        seen.names += 1;
        // Names are rows, not paths, today; if one is ever joined to a directory it must
        // stay inside, one directory level per component.
        prop_assert_eq!(name.as_str(), s);
        assert_inside(
            root,
            &root.join(name.as_str()),
            s.split('/').count(),
            "repository name",
        )?;
    }
    if let Ok(tag) = s.parse::<Tag>() {
        seen.tags += 1;
        assert_inside(root, &root.join(tag.as_str()), 1, "tag")?;
    }
    if let Ok(d) = s.parse::<Digest>() {
        seen.digests += 1;
        let p = store.blob_path(&d);
        assert_inside(root, &p, 4, "blob path")?;
        let hex = d.hex();
        prop_assert_eq!(
            p,
            root.join("blobs")
                .join(d.algorithm().as_str())
                .join(&hex[..2])
                .join(hex)
        );
    }
    if let Ok(Reference::Digest(d)) = s.parse::<Reference>() {
        assert_inside(root, &store.blob_path(&d), 4, "blob path of a reference")?;
    }
    if let Some(id) = UploadId::parse(s) {
        seen.upload_ids += 1;
        let p = store.upload_path(&id);
        assert_inside(root, &p, 2, "upload path")?;
        prop_assert_eq!(p, root.join("uploads").join(s));
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn no_accepted_input_builds_a_path_outside_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let store = runtime().block_on(FsBlobStore::open(&root)).unwrap();
    let seen = std::cell::RefCell::new(Accepted::default());
    let mut runner = TestRunner::new(Config {
        cases: 5_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&hostile(), |s| {
            check_one(&root, &store, &s, &mut seen.borrow_mut())
        })
        .unwrap();
    let mut seen = seen.into_inner();
    // Fixed hostile inputs, whatever the generator does.
    for s in [
        "..",
        "../..",
        "a/../../b",
        "sha256:../../../../etc/passwd",
        "sha256:..",
        "/etc/passwd",
        "a/./b",
        "a//b",
        "%2e%2e",
        "..%2f..",
        "a\0b",
        "\u{ff0e}\u{ff0e}",
        VALID_SHA256,
    ] {
        check_one(&root, &store, s, &mut seen).unwrap();
    }
    // Every parser accepted something, so every path builder was exercised.
    assert!(
        seen.names > 0 && seen.tags > 0 && seen.digests > 0 && seen.upload_ids > 0,
        "{seen:?}"
    );
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn uploads_commits_and_quarantines_land_inside_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // A file beside the data directory: nothing may appear next to it.
    std::fs::write(dir.path().join("outside"), b"sentinel").unwrap();
    let rt = runtime();
    let store = rt.block_on(FsBlobStore::open(&root)).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop_oneof![3 => near_valid_upload_id(), 1 => hostile()],
        prop_oneof![3 => near_valid_digest(), 1 => hostile()],
        proptest::collection::vec(any::<u8>(), 0..64),
    );
    let landed = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(id, digest, bytes)| {
            let (Some(id), Ok(digest)) = (UploadId::parse(&id), digest.parse::<Digest>()) else {
                return Ok(());
            };
            rt.block_on(async {
                store.create_upload(&id).await.unwrap();
                prop_assert!(store.upload_path(&id).is_file());
                let mut sink = store
                    .append(&id, 0, DigestHasher::new(Algorithm::Sha256))
                    .await
                    .unwrap();
                sink.write(Bytes::from(bytes.clone())).await.unwrap();
                sink.finish().await.unwrap();
                // The store trusts the caller to have verified the digest; any accepted
                // digest must still land under blobs/.
                store.commit_upload(&id, &digest).await.unwrap();
                prop_assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);
                prop_assert!(store.quarantine(&digest).await.unwrap());
                Ok(())
            })?;
            let mut all = Vec::new();
            files(dir.path(), &mut all);
            for f in &all {
                if f != &dir.path().join("outside") {
                    let rel = f.strip_prefix(&root).map_err(|_| {
                        TestCaseError::fail(format!(
                            "{f:?} landed outside {root:?} (id {id}, digest {digest})"
                        ))
                    })?;
                    let first = rel.components().next().unwrap().as_os_str().to_owned();
                    prop_assert!(
                        ["blobs", "uploads", "quarantine", "tmp"]
                            .iter()
                            .any(|d| first == *d),
                        "{:?} is in an unexpected place",
                        f
                    );
                }
            }
            landed.set(landed.get() + 1);
            Ok(())
        })
        .unwrap();
    let landed = landed.get();
    // About a third of the cases reach the store; a handful is enough to show it was not vacuous.
    assert!(landed >= 8, "only {landed} of 96 cases reached the store");
}
