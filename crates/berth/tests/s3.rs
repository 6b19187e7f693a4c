//! berth with its blobs in S3 (`storage.blobs = "s3"`), on moto's server: real clients
//! push and pull through it, a restart keeps everything, two berth processes sharing
//! the bucket (each with its own SQLite for now) commit the same blob at once, and a
//! pull-through fill streams into the bucket while concurrent readers wait on it.

mod support;

use std::sync::{Arc, Barrier};

use berth_testkit::TestServer;
use berth_testkit::clients::{Skopeo, docker_ref, http, push_blob};
use berth_testkit::images::{
    Blob, Flavor, Image, ImageSet, OciLayout, Platform, assert_layout_holds_set, large_layer, sha256_digest,
};
use berth_testkit::s3::S3Server;

use support::BIN;

fn start_berth(s3: &S3Server, prefix: &str) -> TestServer {
    start_berth_with(s3, prefix, "")
}

/// `extra` is further TOML tables (after `[storage.s3]`).
fn start_berth_with(s3: &S3Server, prefix: &str, extra: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{extra}", s3.berth_config(dir.path(), prefix));
    TestServer::start_in(dir, BIN, "", &config)
}

fn blob_key(prefix: &str, digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap();
    format!("{prefix}/blobs/sha256/{}/{hex}", &hex[..2])
}

#[test]
fn skopeo_round_trip_through_s3_survives_a_restart() {
    let s3 = S3Server::moto();
    let skopeo = Skopeo::new();
    let mut reg = start_berth(&s3, "smoke");
    let tmp = tempfile::tempdir().unwrap();

    // A multi-platform index, and an image whose 20 MiB layer crosses several multipart parts.
    let set = ImageSet::multi_platform(Flavor::Oci, "s3-smoke");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    let big = Image::from_layers(
        Flavor::Oci,
        Platform::linux_amd64(),
        "s3-large",
        vec![large_layer(Flavor::Oci, "s3-large", 20 << 20)],
    );
    big.write_oci_layout(&tmp.path().join("big"), "v1");
    let oci = |dir: &str, tag: &str| format!("oci:{}:{tag}", tmp.path().join(dir).display());
    skopeo.copy_all(&oci("src", "v1"), &docker_ref(&reg.addr, "s3/multi", "v1"));
    skopeo.copy(&oci("big", "v1"), &docker_ref(&reg.addr, "s3/large", "v1"), &[]);

    // The bytes are in the bucket, not in the data directory.
    let keys = s3.moto_keys("smoke/");
    let mut all: Vec<&Blob> = set.blobs();
    all.extend(big.blobs());
    for b in &all {
        let key = blob_key("smoke", &b.digest);
        assert!(keys.contains(&key), "{key} is not in the bucket: {keys:?}");
    }
    let layer = &big.layers[0].blob;
    assert_eq!(
        sha256_digest(&s3.moto_get(&blob_key("smoke", &layer.digest))),
        layer.digest,
        "the large layer's object"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("smoke/uploads/")),
        "upload areas left behind: {keys:?}"
    );
    let on_disk = reg.data_dir().join("blobs");
    assert!(
        !on_disk.exists() || std::fs::read_dir(&on_disk).unwrap().next().is_none(),
        "blobs were written to {}",
        on_disk.display()
    );

    let pull = |reg: &TestServer, out: &str| {
        skopeo.copy_all(&docker_ref(&reg.addr, "s3/multi", "v1"), &oci(out, "out"));
        assert_layout_holds_set(&OciLayout::open(&tmp.path().join(out)), "out", &set);
        skopeo.copy(
            &docker_ref(&reg.addr, "s3/large", "v1"),
            &oci(&format!("{out}-big"), "v1"),
            &[],
        );
        let layout = OciLayout::open(&tmp.path().join(format!("{out}-big")));
        assert_eq!(layout.descriptor("v1")["digest"], big.manifest.digest);
        let got = std::fs::read(
            tmp.path()
                .join(format!("{out}-big/blobs/sha256"))
                .join(layer.digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap();
        assert!(got == layer.data, "the large layer pulled back differs");
        // A range read straight from the registry.
        let r = http::get_with(
            &reg.url(&format!("/v2/s3/large/blobs/{}", layer.digest)),
            &[("Range", "bytes=9000000-9999999")],
        )
        .unwrap();
        assert_eq!(r.status, 206, "{r}");
        assert!(r.body == layer.data[9_000_000..10_000_000], "range bytes differ");
    };
    pull(&reg, "out1");

    reg.kill_and_restart();
    pull(&reg, "out2");
}

#[test]
fn two_servers_sharing_a_bucket_commit_the_same_blob_at_once() {
    let s3 = S3Server::moto();
    let a = start_berth(&s3, "shared");
    let b = start_berth(&s3, "shared");
    // Every round, both servers receive the same new blob at the same moment.
    for round in 0..4 {
        let img = Image::from_layers(
            Flavor::Oci,
            Platform::linux_amd64(),
            &format!("race-{round}"),
            vec![large_layer(
                Flavor::Oci,
                &format!("race-{round}"),
                (9 << 20) + round * 4099,
            )],
        );
        let layer = img.layers[0].blob.clone();
        let barrier = Arc::new(Barrier::new(2));
        let pushes: Vec<_> = [a.url(""), b.url("")]
            .into_iter()
            .map(|base| {
                let (layer, barrier) = (layer.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    push_blob(&base, "race/layer", &layer);
                })
            })
            .collect();
        for p in pushes {
            p.join().expect("a push of the shared blob failed");
        }
        for reg in [&a, &b] {
            let r = http::must_get(&reg.url(&format!("/v2/race/layer/blobs/{}", layer.digest)), &[]);
            assert_eq!(r.status, 200, "{r}");
            assert_eq!(sha256_digest(&r.body), layer.digest, "round {round}");
        }
        let object = s3.moto_get(&blob_key("shared", &layer.digest));
        assert_eq!(object.len(), layer.data.len());
        assert_eq!(
            sha256_digest(&object),
            layer.digest,
            "the object is intact, round {round}"
        );
    }
    let leftovers: Vec<String> = s3.moto_keys("shared/uploads/").into_iter().collect();
    assert!(leftovers.is_empty(), "upload areas left behind: {leftovers:?}");
}

#[test]
fn pull_through_fill_lands_in_the_bucket_once_for_concurrent_readers() {
    use berth_testkit::fault::FaultUpstream;
    let s3 = S3Server::moto();
    let up = FaultUpstream::start();
    let repo = "lib/app";
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    // Larger than a multipart part, so the fill streams through several.
    let layer = support::bytes(7, (18 << 20) + 12_345);
    let c = up.put_blob(repo, config.clone());
    let l = up.put_blob(repo, layer.clone());
    let m = support::image_manifest(&(c, config.len()), &[(l.clone(), layer.len())], "");
    up.put_manifest(repo, Some("v1"), support::OCI_MANIFEST, m);
    let reg = start_berth_with(
        &s3,
        "cache",
        &format!("[[upstream]]\nname = \"up.test\"\nurl = \"{}\"\n", up.url()),
    );
    let url = reg.url(&format!("/v2/up.test/{repo}/blobs/{l}"));
    let barrier = Arc::new(Barrier::new(6));
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                http::must_get(&url, &[])
            })
        })
        .collect();
    for r in readers {
        let r = r.join().unwrap();
        assert_eq!(r.status, 200, "{r}");
        assert!(r.body == layer, "a reader of the fill got other bytes");
    }
    assert_eq!(
        up.requests("GET", &format!("/v2/{repo}/blobs/{l}")),
        1,
        "one upstream fetch"
    );
    assert_eq!(
        sha256_digest(&s3.moto_get(&blob_key("cache", &l))),
        l,
        "the object"
    );
    // Served from the bucket afterwards.
    let r = http::must_get(&url, &[]);
    assert!(r.status == 200 && r.body == layer);
    assert_eq!(up.requests("GET", &format!("/v2/{repo}/blobs/{l}")), 1);
    assert!(
        s3.moto_keys("cache/uploads/").is_empty(),
        "fill areas left behind"
    );
}

/// `storage.s3.redirect = true`: a whole-blob GET answers 307 to a presigned URL of the
/// bucket (s3s-fs checks its signature), after the same checks a served read makes;
/// ranges and HEAD stay with berth; skopeo follows the redirects to pull a whole image.
#[test]
fn whole_blob_gets_redirect_to_presigned_urls_that_skopeo_follows() {
    let s3 = S3Server::s3s_fs();
    let skopeo = Skopeo::new();
    let reg = start_berth_with(&s3, "redir", "redirect = true\npresign_ttl = \"2m\"\n");
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "s3-redirect");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    let src = format!("oci:{}:v1", tmp.path().join("src").display());
    skopeo.copy_all(&src, &docker_ref(&reg.addr, "redir/app", "v1"));

    let blobs = set.blobs();
    for b in &blobs {
        let url = reg.url(&format!("/v2/redir/app/blobs/{}", b.digest));
        let r = http::get(&url, &[]).unwrap();
        assert_eq!(r.status, 307, "GET {url}: {r}");
        let location = r.header("location").expect("a Location header").to_string();
        assert!(
            location.starts_with(&s3.endpoint) && location.contains("X-Amz-Signature="),
            "{location} is not a presigned URL of {}",
            s3.endpoint
        );
        assert!(
            location.contains("X-Amz-Expires=120"),
            "presign_ttl 2m: {location}"
        );
        let fetched = http::get(&location, &[]).unwrap();
        assert_eq!(fetched.status, 200, "GET {location}: {fetched}");
        assert_eq!(
            sha256_digest(&fetched.body),
            b.digest,
            "bytes behind the redirect"
        );

        // HEAD and ranges are answered by berth itself.
        let h = http::head(&url, &[]).unwrap();
        assert_eq!(h.status, 200, "HEAD {url}: {h}");
        assert_eq!(
            h.header("content-length"),
            Some(b.data.len().to_string().as_str())
        );
        let r = http::get_with(&url, &[("Range", "bytes=0-0")]).unwrap();
        assert_eq!(r.status, 206, "ranged GET {url}: {r}");
        assert_eq!(r.body, b.data[..1]);
    }
    // A tampered signature is refused by the store: the URL really is signed.
    let url = reg.url(&format!("/v2/redir/app/blobs/{}", blobs[0].digest));
    let location = http::get(&url, &[])
        .unwrap()
        .header("location")
        .unwrap()
        .to_string();
    let forged = location.replace("X-Amz-Expires=120", "X-Amz-Expires=9999");
    assert_eq!(
        http::get(&forged, &[]).unwrap().status,
        403,
        "a forged URL was accepted"
    );
    // Unknown blobs and other repositories are not redirected anywhere.
    let missing = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        http::get(&reg.url(&format!("/v2/redir/app/blobs/{missing}")), &[])
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        http::get(
            &reg.url(&format!("/v2/redir/other/blobs/{}", blobs[0].digest)),
            &[]
        )
        .unwrap()
        .status,
        404
    );

    // skopeo follows the 307s and gets every image, byte for byte.
    skopeo.copy_all(
        &docker_ref(&reg.addr, "redir/app", "v1"),
        &format!("oci:{}:out", tmp.path().join("out").display()),
    );
    assert_layout_holds_set(&OciLayout::open(&tmp.path().join("out")), "out", &set);
    let metrics = http::get(&reg.url("/metrics"), &[]).unwrap().body_str();
    let redirected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_blob_redirects_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("berth_blob_redirects_total in /metrics");
    assert!(
        redirected >= 2 * blobs.len() as u64,
        "{redirected} redirects counted"
    );
}
