//! Against CNCF distribution 2.8 over plain HTTP on loopback: manifests and blobs byte for
//! byte, Docker Hub names, not-found answers, Basic auth.

mod cncf;

use berth_oci::{Reference, RepoName, media};
use berth_upstream::{Upstream, UpstreamError};
use cncf::{Distribution, PushAuth, config, digest, htpasswd, seed};
use futures_util::TryStreamExt;

fn name(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

const MAX: u64 = 4 << 20;

async fn read_all(up: &Upstream, repo: &str, bytes: &[u8]) -> Vec<u8> {
    let blob = up.get_blob(&name(repo), &digest(bytes)).await.expect("get_blob");
    assert_eq!(blob.size, Some(bytes.len() as u64));
    let chunks: Vec<bytes::Bytes> = blob.body.try_collect().await.expect("blob body");
    chunks.concat()
}

#[tokio::test]
async fn manifests_and_blobs_come_back_byte_for_byte() {
    let registry = Distribution::start("");
    let image = seed(&registry.url, "test/app", &PushAuth::None).await;
    let up = Upstream::new(config(&registry.url, None)).unwrap();
    let repo = name("test/app");

    let cases = [
        ("v1", media::OCI_MANIFEST, &image.oci),
        ("docker", media::DOCKER_MANIFEST, &image.docker),
        ("multi", media::DOCKER_MANIFEST_LIST, &image.list),
    ];
    for (tag, media_type, bytes) in cases {
        let want_digest = digest(bytes);
        let head = up
            .head_manifest(&repo, &reference(tag))
            .await
            .expect("head by tag");
        assert_eq!(head.digest, want_digest, "{tag}");
        assert_eq!(head.media_type, media_type, "{tag}");
        assert_eq!(head.size, bytes.len() as u64, "{tag}");

        let (got, body) = up
            .get_manifest(&repo, &reference(tag), MAX)
            .await
            .expect("get by tag");
        assert_eq!(got, head, "{tag}");
        assert_eq!(&body[..], &bytes[..], "{tag}");

        let by_digest = Reference::Digest(want_digest.clone());
        let (got, body) = up
            .get_manifest(&repo, &by_digest, MAX)
            .await
            .expect("get by digest");
        assert_eq!(got, head, "{tag} by digest");
        assert_eq!(&body[..], &bytes[..], "{tag} by digest");
        let head = up.head_manifest(&repo, &by_digest).await.expect("head by digest");
        assert_eq!(head.digest, want_digest);
    }

    assert_eq!(read_all(&up, "test/app", &image.layer).await, image.layer);
    assert_eq!(read_all(&up, "test/app", &image.config).await, image.config);
}

#[tokio::test]
async fn single_names_map_to_library_when_configured() {
    let registry = Distribution::start("");
    let image = seed(&registry.url, "library/busybox", &PushAuth::None).await;
    let mut cfg = config(&registry.url, None);
    cfg.library_prefix = true;
    let hub = Upstream::new(cfg).unwrap();
    assert_eq!(
        hub.remote_repo(&name("busybox")).unwrap(),
        name("library/busybox")
    );
    let (head, body) = hub
        .get_manifest(&name("busybox"), &reference("v1"), MAX)
        .await
        .unwrap();
    assert_eq!(head.digest, digest(&image.oci));
    assert_eq!(&body[..], &image.oci[..]);
    assert_eq!(read_all(&hub, "busybox", &image.layer).await, image.layer);

    let plain = Upstream::new(config(&registry.url, None)).unwrap();
    let e = plain
        .head_manifest(&name("busybox"), &reference("v1"))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn unknown_tags_blobs_and_repositories_are_not_found() {
    let registry = Distribution::start("");
    let image = seed(&registry.url, "test/app", &PushAuth::None).await;
    let up = Upstream::new(config(&registry.url, None)).unwrap();
    let repo = name("test/app");

    let e = up.head_manifest(&repo, &reference("nope")).await.unwrap_err();
    assert!(e.is_not_found() && !e.is_transient(), "{e}");
    let e = up.get_manifest(&repo, &reference("nope"), MAX).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // The upstream's OCI error code comes through.
    assert!(
        matches!(&e, UpstreamError::NotFound { code: Some(c), .. } if c == "MANIFEST_UNKNOWN"),
        "{e:?}"
    );
    let missing = digest(b"not pushed");
    let e = up.get_blob(&repo, &missing).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = up
        .get_manifest(&name("no/such"), &reference("v1"), MAX)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // A blob that exists in another repository is not in this one.
    let e = up
        .get_blob(&name("no/such"), &digest(&image.layer))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn a_manifest_over_the_limit_is_invalid() {
    let registry = Distribution::start("");
    let image = seed(&registry.url, "test/app", &PushAuth::None).await;
    let up = Upstream::new(config(&registry.url, None)).unwrap();
    let limit = image.list.len() as u64 - 1;
    let e = up
        .get_manifest(&name("test/app"), &reference("multi"), limit)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Invalid(_)) && !e.is_transient(), "{e}");
    let exact = image.list.len() as u64;
    assert!(
        up.get_manifest(&name("test/app"), &reference("multi"), exact)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn basic_auth_with_and_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Distribution::start(&htpasswd(dir.path(), "alice", "s3cret-pw"));
    let image = seed(
        &registry.url,
        "test/app",
        &PushAuth::Basic("alice".into(), "s3cret-pw".into()),
    )
    .await;
    let repo = name("test/app");

    let up = Upstream::new(config(&registry.url, Some(("alice", "s3cret-pw")))).unwrap();
    let (head, body) = up
        .get_manifest(&repo, &reference("v1"), MAX)
        .await
        .expect("get with credentials");
    assert_eq!(head.digest, digest(&image.oci));
    assert_eq!(&body[..], &image.oci[..]);
    // Later requests send the credentials up front; either way they succeed.
    assert_eq!(
        up.head_manifest(&repo, &reference("multi")).await.unwrap().digest,
        digest(&image.list)
    );
    assert_eq!(read_all(&up, "test/app", &image.layer).await, image.layer);

    let anonymous = Upstream::new(config(&registry.url, None)).unwrap();
    let e = anonymous
        .get_manifest(&repo, &reference("v1"), MAX)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)) && !e.is_transient(), "{e}");

    let wrong = Upstream::new(config(&registry.url, Some(("alice", "wrong-pw")))).unwrap();
    let e = wrong.head_manifest(&repo, &reference("v1")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)), "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");
    let e = wrong.get_blob(&repo, &digest(&image.layer)).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)), "{e}");
}
