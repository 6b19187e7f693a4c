//! Pull-through caching against a fault-injecting upstream that speaks real HTTP: every
//! fault ends in an error or in correct bytes, never wrong bytes with success; nothing
//! bad is kept; the next pull after the fault clears succeeds.

mod support;

use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::fault::{Fault, FaultTarget, FaultUpstream};
use support::*;

const REPO: &str = "lib/app";

fn upstream_toml(name: &str, up: &FaultUpstream, ttl: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\nmanifest_ttl = \"{ttl}\"\nconnect_timeout = \"1s\"\nread_timeout = \"1s\"\n",
        up.url()
    )
}

fn cache(up: &FaultUpstream, ttl: &str) -> (TestServer, String) {
    let s = TestServer::start(BIN, &upstream_toml("up.test", up, ttl));
    let b = s.url("");
    (s, b)
}

/// An image at the upstream: (manifest digest, manifest bytes, layer digest, layer bytes).
fn seed(up: &FaultUpstream, tag: &str, seed: u8, layer_len: usize) -> (String, Vec<u8>, String, Vec<u8>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes(seed, layer_len);
    let c = up.put_blob(REPO, config.clone());
    let l = up.put_blob(REPO, layer.clone());
    let m = image_manifest(&(c, config.len()), &[(l.clone(), layer.len())], "");
    let d = up.put_manifest(REPO, Some(tag), OCI_MANIFEST, m.clone());
    (d, m, l, layer)
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

fn stored(s: &TestServer, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    s.blob_root()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .exists()
}

#[test]
fn pulls_through_by_prefix_and_by_ns_and_caches() {
    let up = FaultUpstream::start();
    let (s, b) = cache(&up, "5m");
    let (d, m, l, layer) = seed(&up, "v1", 1, 300_000);

    let g = get(&format!("{b}/v2/up.test/{REPO}/manifests/v1"));
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(g.body, m);
    assert_eq!(g.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(g.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(g.header("oci-namespace"), Some("up.test"));
    // containerd's mirror form reaches the same cached repository.
    let g = get(&format!("{b}/v2/{REPO}/manifests/v1?ns=up.test"));
    assert_eq!((g.status, g.body.as_slice()), (200, m.as_slice()));
    assert_eq!(g.header("oci-namespace"), Some("up.test"));
    assert_eq!(
        up.requests("GET", &format!("/v2/{REPO}/manifests/v1")),
        1,
        "second pull came from the cache"
    );

    for _ in 0..2 {
        let r = get(&format!("{b}/v2/up.test/{REPO}/blobs/{l}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, layer);
    }
    let h = req("HEAD", &format!("{b}/v2/{REPO}/blobs/{l}?ns=up.test"), &[], None);
    assert_eq!(h.header("content-length"), Some("300000"));
    assert_eq!(up.requests("GET", &blob_path(&l)), 1, "the blob was fetched once");
    assert!(stored(&s, &l));
    // Ranges of a cached blob.
    let r = req(
        "GET",
        &format!("{b}/v2/up.test/{REPO}/blobs/{l}"),
        &[("range", "bytes=100-199")],
        None,
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &layer[100..200]));
    // The catalog shows the cache under its prefixed name; the manifest by digest too.
    assert_eq!(
        get(&format!("{b}/v2/_catalog")).json()["repositories"],
        serde_json::json!(["up.test/lib/app"])
    );
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/manifests/{d}")).body, m);
    let metrics = get(&format!("{b}/metrics")).text();
    assert!(
        metrics.contains("berth_cache_requests_total{upstream=\"up.test\",kind=\"blob\",result=\"hit\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_cache_fills_total{upstream=\"up.test\",result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn writes_are_refused_and_deletes_allowed() {
    let up = FaultUpstream::start();
    let (_s, b) = cache(&up, "5m");
    let (d, m, _, _) = seed(&up, "v1", 2, 1000);
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/manifests/v1")).status, 200);
    let r = put_manifest(&b, &format!("up.test/{REPO}"), "v2", OCI_MANIFEST, &m);
    assert_eq!((r.status, r.code().as_str()), (403, "DENIED"), "{}", r.text());
    assert!(r.text().contains("cache"));
    let r = req(
        "POST",
        &format!("{b}/v2/up.test/{REPO}/blobs/uploads/"),
        &[],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (403, "DENIED"));
    // Deleting the cached tag and manifest works; the next pull fetches again.
    assert_eq!(
        req(
            "DELETE",
            &format!("{b}/v2/up.test/{REPO}/manifests/v1"),
            &[],
            None
        )
        .status,
        202
    );
    assert_eq!(
        req(
            "DELETE",
            &format!("{b}/v2/up.test/{REPO}/manifests/{d}"),
            &[],
            None
        )
        .status,
        202
    );
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/manifests/v1")).body, m);
    assert_eq!(up.requests("GET", &format!("/v2/{REPO}/manifests/v1")), 2);
    // Unconfigured namespaces are never dialled.
    let before = up.total_requests();
    let r = get(&format!("{b}/v2/{REPO}/manifests/v1?ns=elsewhere.example"));
    assert_eq!((r.status, r.code().as_str()), (404, "NAME_UNKNOWN"));
    assert_eq!(up.total_requests(), before);
}

#[test]
fn blob_faults_never_serve_wrong_bytes_and_keep_nothing() {
    let up = FaultUpstream::start();
    let (s, b) = cache(&up, "5m");
    let faults = [
        Fault::Truncate { after: 1000 },
        Fault::EmptyBody200,
        Fault::WrongBytes,
        Fault::Reset,
        Fault::Status(502),
        Fault::Status(503),
        Fault::Status(504),
        Fault::Status(429),
        Fault::StallBeforeHeaders(Duration::from_secs(4)),
        Fault::StallMidBody {
            after: 1000,
            stall: Duration::from_secs(4),
        },
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        let layer = bytes(100 + i as u8, 200_000);
        let l = up.put_blob(REPO, layer.clone());
        up.set_fault(FaultTarget::Blob(l.clone()), fault.clone());
        let url = format!("{b}/v2/up.test/{REPO}/blobs/{l}");
        let started = Instant::now();
        match try_req("GET", &url, &[], None, None) {
            Ok(r) if r.status == 200 => assert_eq!(sha256(&r.body), l, "{fault:?}: 200 with wrong bytes"),
            Ok(r) => assert!(r.status >= 400, "{fault:?}: {}", r.status),
            Err(_) => {} // the response was aborted: the client knows it failed
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{fault:?} hung");
        // Nothing of the failed fill is kept, not even as a committed file.
        assert!(!stored(&s, &l), "{fault:?}: bytes kept");
        up.clear_faults();
        let r = get(&url);
        assert_eq!(
            r.status,
            200,
            "{fault:?}: pull after the fault cleared: {}",
            r.text()
        );
        assert_eq!(r.body, layer, "{fault:?}");
        assert!(stored(&s, &l));
    }
    let metrics = get(&format!("{b}/metrics")).text();
    assert!(
        metrics.contains("berth_cache_fills_total{upstream=\"up.test\",result=\"failed\"}"),
        "{metrics}"
    );
    // Uncached + upstream status: the status and reason are passed on clearly.
    let l = up.put_blob(REPO, bytes(200, 10));
    up.set_fault(FaultTarget::Blob(l.clone()), Fault::Status(429));
    let r = get(&format!("{b}/v2/up.test/{REPO}/blobs/{l}"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "TOOMANYREQUESTS"),
        "{}",
        r.text()
    );
    up.set_fault(FaultTarget::Blob(l.clone()), Fault::Status(503));
    let r = get(&format!("{b}/v2/up.test/{REPO}/blobs/{l}"));
    assert_eq!(r.status, 502);
    assert!(r.text().contains("503"), "{}", r.text());
    let r = get(&format!("{b}/v2/up.test/{REPO}/blobs/{}", sha256(b"nowhere")));
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UNKNOWN"));
}

#[test]
fn concurrent_pulls_share_one_upstream_fetch() {
    let up = FaultUpstream::start();
    let (_s, b) = cache(&up, "5m");
    let layer = bytes(7, 3 << 20);
    let l = up.put_blob(REPO, layer.clone());
    // Slow enough that every client arrives while the fill is running.
    up.set_fault(
        FaultTarget::Blob(l.clone()),
        Fault::Slow {
            bytes_per_sec: 4 << 20,
        },
    );
    let url = format!("{b}/v2/up.test/{REPO}/blobs/{l}");
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(i * 40));
                get(&url)
            })
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sha256(&r.body), l);
    }
    assert_eq!(
        up.requests("GET", &blob_path(&l)),
        1,
        "one upstream fetch for eight clients"
    );
    let metrics = get(&format!("{b}/metrics")).text();
    assert!(metrics.contains("result=\"coalesced\"} 7"), "{metrics}");
}

#[test]
fn a_failed_fill_fails_every_waiting_reader() {
    let up = FaultUpstream::start();
    let (s, b) = cache(&up, "5m");
    let layer = bytes(8, 2 << 20);
    let l = up.put_blob(REPO, layer.clone());
    // Bytes trickle, then the connection dies: all readers are mid-body.
    up.set_fault(
        FaultTarget::Blob(l.clone()),
        Fault::Once(Box::new(Fault::StallMidBody {
            after: 1 << 20,
            stall: Duration::from_secs(5),
        })),
    );
    let url = format!("{b}/v2/up.test/{REPO}/blobs/{l}");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || try_req("GET", &url, &[], None, None))
        })
        .collect();
    for c in clients {
        match c.join().unwrap() {
            Ok(r) if r.status == 200 => assert_eq!(sha256(&r.body), l, "wrong bytes with success"),
            Ok(r) => assert!(r.status >= 400),
            Err(_) => {}
        }
    }
    assert!(!stored(&s, &l));
    assert_eq!(get(&url).body, layer, "the next pull starts a fresh fill");
}

#[test]
fn tags_revalidate_after_ttl_and_serve_stale_when_the_upstream_fails() {
    let up = FaultUpstream::start();
    // A TTL long enough that the "still within it" step holds on a loaded machine.
    let (_s, b) = cache(&up, "2s");
    let (d1, m1, l1, layer1) = seed(&up, "latest", 10, 5000);
    let url = format!("{b}/v2/up.test/{REPO}/manifests/latest");
    assert_eq!(get(&url).body, m1);
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/blobs/{l1}")).body, layer1);

    // The upstream moves the tag: within the TTL the cache still answers the old one...
    let (d2, m2, _, _) = seed(&up, "latest", 11, 6000);
    assert_ne!(d1, d2);
    assert_eq!(get(&url).header("docker-content-digest"), Some(d1.as_str()));
    // ... and after it, the move shows through.
    std::thread::sleep(Duration::from_millis(2200));
    let g = get(&url);
    assert_eq!(
        (g.body.as_slice(), g.header("docker-content-digest")),
        (m2.as_slice(), Some(d2.as_str()))
    );
    assert_eq!(g.header("warning"), None);
    // Revalidation with the same digest costs a HEAD, not a GET.
    std::thread::sleep(Duration::from_millis(2200));
    let gets = up.requests("GET", &format!("/v2/{REPO}/manifests/latest"));
    assert_eq!(get(&url).body, m2);
    assert_eq!(up.requests("GET", &format!("/v2/{REPO}/manifests/latest")), gets);
    assert!(up.requests("HEAD", &format!("/v2/{REPO}/manifests/latest")) >= 2);

    // Upstream errors after the TTL: the cached copy, with a Warning.
    for fault in [
        Fault::Status(503),
        Fault::Status(429),
        Fault::Reset,
        Fault::Status(404),
    ] {
        std::thread::sleep(Duration::from_millis(2100));
        up.set_fault(FaultTarget::Manifest("latest".into()), fault.clone());
        let g = get(&url);
        assert_eq!(g.status, 200, "{fault:?}: {}", g.text());
        assert_eq!(g.body, m2, "{fault:?}");
        assert!(g.header("warning").unwrap_or("").contains("Stale"), "{fault:?}");
        up.clear_faults();
    }
    // Upstream down: cached images keep pulling, blobs included.
    up.set_down(true);
    std::thread::sleep(Duration::from_millis(2100));
    let g = get(&url);
    assert_eq!((g.status, g.body.as_slice()), (200, m2.as_slice()));
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/manifests/{d1}")).body, m1);
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/blobs/{l1}")).body, layer1);
    // Something never cached: a clear error, quickly.
    let started = Instant::now();
    let r = get(&format!("{b}/v2/up.test/{REPO}/manifests/other"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "UNAVAILABLE"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("up.test"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = get(&format!("{b}/metrics")).text();
    assert!(m.contains("result=\"stale\""), "{m}");
    assert!(
        m.contains("berth_upstream_errors_total{upstream=\"up.test\",status="),
        "{m}"
    );
}

#[test]
fn uncached_manifest_errors_pass_the_upstream_reason_on() {
    let up = FaultUpstream::start();
    let (_s, b) = cache(&up, "5m");
    let url = format!("{b}/v2/up.test/{REPO}/manifests/missing");
    let r = get(&url);
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "{}",
        r.text()
    );
    seed(&up, "slow", 12, 100);
    up.set_fault(
        FaultTarget::Manifest("slow".into()),
        Fault::StallBeforeHeaders(Duration::from_secs(6)),
    );
    let started = Instant::now();
    let r = get(&format!("{b}/v2/up.test/{REPO}/manifests/slow"));
    assert!(r.status == 504 || r.status == 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stalled upstream must time out"
    );
    up.clear_faults();
    up.set_fault(FaultTarget::Manifest("slow".into()), Fault::WrongBytes);
    let r = get(&format!("{b}/v2/up.test/{REPO}/manifests/slow"));
    assert_eq!(r.status, 502, "{}", r.text());
    up.clear_faults();
    assert_eq!(get(&format!("{b}/v2/up.test/{REPO}/manifests/slow")).status, 200);
}

#[test]
fn two_upstreams_at_once() {
    let (a, z) = (FaultUpstream::start(), FaultUpstream::start());
    let config = format!(
        "{}{}",
        upstream_toml("a.test", &a, "5m"),
        upstream_toml("z.test", &z, "5m")
    );
    let s = TestServer::start(BIN, &config);
    let b = s.url("");
    let (_, ma, _, _) = seed(&a, "v1", 20, 100);
    let (_, mz, _, _) = seed(&z, "v1", 21, 100);
    assert_eq!(get(&format!("{b}/v2/a.test/{REPO}/manifests/v1")).body, ma);
    assert_eq!(get(&format!("{b}/v2/{REPO}/manifests/v1?ns=z.test")).body, mz);
    assert_eq!(
        get(&format!("{b}/v2/_catalog")).json()["repositories"],
        serde_json::json!(["a.test/lib/app", "z.test/lib/app"])
    );
    // Content is content: a layer both upstreams have is fetched once, from the first asked.
    let shared = bytes(23, 50_000);
    let l = a.put_blob(REPO, shared.clone());
    assert_eq!(z.put_blob(REPO, shared.clone()), l);
    assert_eq!(get(&format!("{b}/v2/a.test/{REPO}/blobs/{l}")).body, shared);
    assert_eq!(get(&format!("{b}/v2/z.test/{REPO}/blobs/{l}")).body, shared);
    assert_eq!(z.requests("GET", &blob_path(&l)), 0);
    // Hosted repositories still work beside them.
    push_image(&b, "team/own", "v1", 22, 1);
    assert_eq!(
        get(&format!("{b}/v2/team/own/tags/list")).json()["tags"],
        serde_json::json!(["v1"])
    );
}
