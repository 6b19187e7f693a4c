//! Retention rules and cache eviction, end to end through the real binary and CLI.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use berth_testkit::TestServer;
use berth_testkit::fault::FaultUpstream;
use support::*;

fn tags(b: &str, repo: &str) -> BTreeSet<String> {
    get(&format!("{b}/v2/{repo}/tags/list")).json()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn retention_keeps_last_five_and_latest_and_the_dry_run_is_exact() {
    let config = "[gc]\ngrace = \"0s\"\nschedule = \"off\"\n[retention]\nschedule = \"off\"\n\
                  [[retention.rule]]\nrepositories = \"ci/**\"\nkeep_last = 5\nkeep_tags = [\"latest\"]\n";
    let s = TestServer::start(BIN, config);
    let b = s.url("");
    let mut pushed = Vec::new();
    pushed.push(("latest".to_string(), push_image(&b, "ci/app", "latest", 0, 1)));
    for i in 1..30u8 {
        let tag = format!("build-{i:02}");
        pushed.push((tag.clone(), push_image(&b, "ci/app", &tag, i, 1)));
    }
    // A repository no rule matches is left alone.
    push_image(&b, "other/app", "old", 200, 1);
    assert_eq!(tags(&b, "ci/app").len(), 30);

    let dry = lifecycle_cli(&s, "retention", &["--dry-run"]);
    assert_eq!(tags(&b, "ci/app").len(), 30, "a dry run changes nothing");
    let real = lifecycle_cli(&s, "retention", &[]);
    assert_eq!(
        deleted(&dry),
        deleted(&real),
        "the dry run lists exactly what the real run deletes"
    );
    let expected: BTreeSet<String> = [
        "latest", "build-25", "build-26", "build-27", "build-28", "build-29",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(tags(&b, "ci/app"), expected);
    let gone_tags: BTreeSet<String> = deleted(&real)
        .into_iter()
        .filter(|l| l.starts_with("tag "))
        .collect();
    assert_eq!(gone_tags.len(), 24, "{real}");
    // GC in the same run reclaimed the deleted tags' images; the kept ones still pull.
    for (tag, (digest, m)) in &pushed {
        let g = get(&format!("{b}/v2/ci/app/manifests/{digest}"));
        if expected.contains(tag) {
            assert_eq!(g.body, *m, "{tag}");
        } else {
            assert_eq!(g.status, 404, "{tag} should be collected");
            assert!(real.contains(digest.as_str()), "{digest} not reported");
        }
    }
    assert_eq!(tags(&b, "other/app").len(), 1);
    assert!(
        real.contains("bytes freed") && !real.contains(" 0 bytes freed"),
        "{real}"
    );
}

#[test]
fn eviction_removes_least_recently_pulled_images_and_keeps_shared_blobs() {
    let up = FaultUpstream::start();
    let layer_len = 200_000;
    // Four images upstream; image 0 shares its layer with a hosted image.
    let mut images = Vec::new();
    for i in 0..4u8 {
        let config = format!(r#"{{"image":{i}}}"#).into_bytes();
        let layer = bytes(40 + i, layer_len);
        let c = up.put_blob("lib/app", config.clone());
        let l = up.put_blob("lib/app", layer.clone());
        let m = image_manifest(&(c, config.len()), &[(l.clone(), layer.len())], "");
        up.put_manifest("lib/app", Some(&format!("v{i}")), OCI_MANIFEST, m.clone());
        images.push((m, l, layer));
    }
    // Budget: room for two of the four images.
    let config = format!(
        "[gc]\nschedule = \"off\"\n[cache]\nmax_bytes = {}\nschedule = \"off\"\n\
         [[upstream]]\nname = \"up.test\"\nurl = \"{}\"\nmanifest_ttl = \"1h\"\n",
        2 * layer_len + 1000,
        up.url()
    );
    let s = TestServer::start(BIN, &config);
    let b = s.url("");
    let shared = push_blob(&b, "team/own", &images[0].2);
    let own_config = push_blob(&b, "team/own", b"{}");
    let own = image_manifest(&(own_config, 2), &[(shared.clone(), layer_len)], "");
    assert_eq!(put_manifest(&b, "team/own", "v1", OCI_MANIFEST, &own).status, 201);
    // Pull all four through the cache, oldest first, a second apart.
    for (i, (m, l, layer)) in images.iter().enumerate() {
        assert_eq!(get(&format!("{b}/v2/up.test/lib/app/manifests/v{i}")).body, *m);
        assert_eq!(get(&format!("{b}/v2/up.test/lib/app/blobs/{l}")).body, *layer);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let dry = lifecycle_cli(&s, "evict", &["--dry-run"]);
    let real = lifecycle_cli(&s, "evict", &[]);
    assert_eq!(deleted(&dry), deleted(&real));
    assert!(
        real.contains("tag up.test/lib/app:v0") && real.contains("tag up.test/lib/app:v1"),
        "{real}"
    );
    assert!(!real.contains(":v2") && !real.contains(":v3"), "{real}");
    // The rest still pull, with the upstream gone.
    up.set_down(true);
    for (i, (m, l, layer)) in images.iter().enumerate().skip(2) {
        assert_eq!(get(&format!("{b}/v2/up.test/lib/app/manifests/v{i}")).body, *m);
        assert_eq!(get(&format!("{b}/v2/up.test/lib/app/blobs/{l}")).body, *layer);
    }
    assert_eq!(get(&format!("{b}/v2/up.test/lib/app/manifests/v0")).status, 502);
    // A blob the hosted repository uses stayed; the hosted image pulls whole.
    assert_eq!(get(&format!("{b}/v2/team/own/blobs/{shared}")).body, images[0].2);
    assert_eq!(get(&format!("{b}/v2/team/own/manifests/v1")).body, own);
    // Disk use of cached content ends under the budget.
    let cached: u64 = images[2..]
        .iter()
        .map(|(_, l, _)| {
            let hex = l.strip_prefix("sha256:").unwrap();
            std::fs::metadata(s.blob_root().join("blobs/sha256").join(&hex[..2]).join(hex))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    assert!(cached <= 2 * layer_len as u64 + 1000);
    let l1 = images[1].1.strip_prefix("sha256:").unwrap().to_string();
    assert!(
        !s.blob_root()
            .join("blobs/sha256")
            .join(&l1[..2])
            .join(&l1)
            .exists(),
        "evicted layer still on disk"
    );
}
