//! Damage a running registry on purpose: the scrub finds each problem and names who is
//! affected, metrics show it, pulls never return wrong bytes with success, and --repair
//! restores cached content from the upstream and quarantines the rest.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_testkit::TestServer;
use berth_testkit::fault::FaultUpstream;
use support::*;

fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn scrub(s: &TestServer, extra: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["scrub", "--server", &s.url("")])
        .args(extra)
        .output()
        .expect("run berth scrub");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sql(data: &Path, statement: &str) {
    let db = data.join("berth.db");
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
        ])
        .arg(&db)
        .arg(statement)
        .status()
        .expect("python3")
        .success();
    assert!(ok, "{statement}");
}

fn layers(m: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(m).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn scrub_finds_each_damage_names_it_and_repair_heals_what_it_can() {
    if berth_testkit::skip_on_s3pg(
        "scrub_finds_each_damage_names_it_and_repair_heals_what_it_can",
        "damages rows through berth.db (SQLite) and reads the data directory's quarantine/",
    ) {
        return;
    }
    let up = FaultUpstream::start();
    let s = TestServer::start(
        BIN,
        &format!(
            "[scrub]\nschedule = \"off\"\n[[upstream]]\nname = \"up.test\"\nurl = \"{}\"\nmanifest_ttl = \"1h\"\n",
            up.url()
        ),
    );
    let b = s.url("");
    let data = s.data_dir();

    // Hosted: an image with four layers, and an index over two images.
    let (_, app) = push_image(&b, "h/app", "v1", 1, 4);
    let app_layers = layers(&app);
    let (c1, m1) = push_image(&b, "h/multi", "amd64", 2, 1);
    let (c2, m2) = push_image(&b, "h/multi", "arm64", 3, 1);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{c1}","size":{}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{c2}","size":{}}}]}}"#,
        m1.len(),
        m2.len()
    );
    assert_eq!(
        put_manifest(&b, "h/multi", "v1", OCI_INDEX, index.as_bytes()).status,
        201
    );
    // Cached: an image pulled through the cache.
    let config = br#"{"cached":true}"#.to_vec();
    let layer = bytes(9, 300_000);
    let cc = up.put_blob("lib/app", config.clone());
    let cl = up.put_blob("lib/app", layer.clone());
    let cm = image_manifest(&(cc, config.len()), &[(cl.clone(), layer.len())], "");
    up.put_manifest("lib/app", Some("v1"), OCI_MANIFEST, cm.clone());
    assert_eq!(get(&format!("{b}/v2/up.test/lib/app/manifests/v1")).body, cm);
    assert_eq!(get(&format!("{b}/v2/up.test/lib/app/blobs/{cl}")).body, layer);

    let (ok, clean) = scrub(&s, &[]);
    assert!(ok, "a healthy registry scrubs clean: {clean}");

    // The damage.
    let truncated = &app_layers[0];
    let f = blob_file(&data, truncated);
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    std::fs::write(&f, vec![1u8; len / 2]).unwrap();
    let zeroed = &app_layers[1];
    let f = blob_file(&data, zeroed);
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    std::fs::write(&f, vec![0u8; len]).unwrap();
    let removed = &app_layers[2];
    std::fs::remove_file(blob_file(&data, removed)).unwrap();
    let unlinked = &app_layers[3];
    sql(
        &data,
        &format!("DELETE FROM repo_blobs WHERE repo = 'h/app' AND digest = '{unlinked}'"),
    );
    sql(
        &data,
        &format!("DELETE FROM manifests WHERE repo = 'h/multi' AND digest = '{c2}'"),
    );
    let mut flipped = std::fs::read(blob_file(&data, &cl)).unwrap();
    flipped[1000] ^= 0xff;
    std::fs::write(blob_file(&data, &cl), &flipped).unwrap();

    let (ok, out) = scrub(&s, &[]);
    assert!(!ok, "damage must fail the scrub: {out}");
    for (kind, subject) in [
        ("blob_size", truncated.as_str()),
        ("blob_digest", zeroed.as_str()),
        ("blob_missing", removed.as_str()),
        ("reference", unlinked.as_str()),
        ("child_missing", c2.as_str()),
        ("blob_digest", cl.as_str()),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(kind) && l.contains(subject))
            .unwrap_or_else(|| panic!("{kind} {subject} not reported:\n{out}"));
        assert!(line.contains("affects"), "{line}");
    }
    let line = |d: &str| out.lines().find(|l| l.contains(d)).unwrap().to_string();
    assert!(line(truncated).contains("h/app:v1"), "{out}");
    assert!(
        line(&c2).contains("h/multi:v1"),
        "the index's tag is named: {out}"
    );
    assert!(
        line(&cl).contains("(cached)") && line(&cl).contains("up.test/lib/app:v1"),
        "{out}"
    );
    let m = get(&format!("{b}/metrics")).text();
    assert!(
        m.contains("berth_integrity_problems{kind=\"blob_digest\",repository=\"hosted\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("berth_integrity_problems{kind=\"child_missing\",repository=\"hosted\"} 1"),
        "{m}"
    );

    // Pulls never return wrong bytes with success.
    for d in [truncated, zeroed, removed, unlinked] {
        if let Ok(r) = try_req("GET", &format!("{b}/v2/h/app/blobs/{d}"), &[], None, None) {
            assert!(r.status != 200 || sha256(&r.body) == *d, "{d} served wrong bytes");
        }
    }

    // Repair: the cached layer comes back from the upstream; hosted damage is quarantined
    // and reported; afterwards the hosted blobs answer 404, never wrong bytes.
    let (ok, out) = scrub(&s, &["--repair"]);
    assert!(!ok, "hosted damage remains after repair: {out}");
    assert!(out.contains("re-fetched for up.test/lib/app"), "{out}");
    assert!(out.contains("quarantined"), "{out}");
    assert_eq!(get(&format!("{b}/v2/up.test/lib/app/blobs/{cl}")).body, layer);
    assert_eq!(std::fs::read(blob_file(&data, &cl)).unwrap(), layer);
    assert!(std::fs::read_dir(data.join("quarantine")).unwrap().count() >= 2);
    for d in [truncated, zeroed, removed] {
        assert_eq!(
            req("HEAD", &format!("{b}/v2/h/app/blobs/{d}"), &[], None).status,
            404,
            "{d}"
        );
    }
    let m = get(&format!("{b}/metrics")).text();
    assert!(
        m.contains("berth_integrity_problems{kind=\"blob_digest\",repository=\"cached\"} 0"),
        "{m}"
    );
    assert!(!m.contains("berth_integrity_repaired_total 0"), "{m}");
    // Only the cached repository is healthy again; --repo scopes the scrub to it.
    let (ok, out) = scrub(&s, &["--repo", "up.test/**"]);
    assert!(ok, "{out}");
}

#[test]
fn corrupt_bytes_are_never_served_as_a_complete_success() {
    let s = TestServer::start(BIN, "[scrub]\nschedule = \"off\"\n");
    let b = s.url("");
    let data = bytes(5, 3 << 20);
    let d = push_blob(&b, "v/app", &data);
    assert_eq!(get(&format!("{b}/v2/v/app/blobs/{d}")).body, data);
    // Bit rot: same size, one byte flipped near the end.
    let f = blob_file(&s.blob_root(), &d);
    let mut rotten = data.clone();
    rotten[(3 << 20) - 10] ^= 1;
    std::fs::write(&f, &rotten).unwrap();
    // An aborted response (Err) is fine: the client knows it failed.
    if let Ok(r) = try_req("GET", &format!("{b}/v2/v/app/blobs/{d}"), &[], None, None) {
        assert!(
            r.status != 200 || r.body != rotten,
            "rotten bytes served as a success"
        );
    }
    // It was quarantined: the next request answers 404, and a re-push heals it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // Until then a read may be aborted again (quarantine in S3 is a copy and a delete,
    // slower than a rename): an Err is the same refusal.
    while try_req("GET", &format!("{b}/v2/v/app/blobs/{d}"), &[], None, None).map(|r| r.status) != Ok(404) {
        assert!(std::time::Instant::now() < deadline, "not quarantined");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let m = get(&format!("{b}/metrics")).text();
    // Every read that found the rot counts (one, or more while the quarantine runs).
    let mismatches: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("berth_blob_read_errors_total{problem=\"digest_mismatch\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(mismatches >= 1, "{m}");
    push_blob(&b, "v/app", &data);
    assert_eq!(get(&format!("{b}/v2/v/app/blobs/{d}")).body, data);
}

#[test]
fn every_push_is_walked_like_a_pull() {
    let s = TestServer::start(BIN, "[scrub]\nschedule = \"off\"\n");
    let b = s.url("");
    push_image(&b, "w/app", "good", 1, 2);
    // A layer whose bytes vanish between its upload and the manifest push.
    let config = br#"{"w":1}"#;
    let c = push_blob(&b, "w/app", config);
    let layer = bytes(7, 5000);
    let l = push_blob(&b, "w/app", &layer);
    std::fs::remove_file(blob_file(&s.blob_root(), &l)).unwrap();
    let m = image_manifest(&(c, config.len()), &[(l, layer.len())], "");
    assert_eq!(put_manifest(&b, "w/app", "bad", OCI_MANIFEST, &m).status, 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let metrics = get(&format!("{b}/metrics")).text();
        if metrics.contains("berth_push_verifications_total{result=\"ok\"} 1")
            && metrics.contains("berth_push_verifications_total{result=\"failed\"} 1")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
