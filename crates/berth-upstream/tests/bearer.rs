//! The Bearer token dance against CNCF distribution 2.8 with `auth: token:` and the
//! testkit token server.

mod cncf;

use berth_oci::{Reference, RepoName};
use berth_testkit::token::TokenServer;
use berth_upstream::{Upstream, UpstreamError};
use cncf::{Distribution, PushAuth, config, digest, seed};
use futures_util::TryStreamExt;

fn name(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

const MAX: u64 = 4 << 20;

#[tokio::test]
async fn tokens_are_fetched_once_per_scope() {
    let tokens = TokenServer::start(&[("alice", "s3cret-pw")]);
    let registry = Distribution::start(&tokens.distribution_auth());
    let push = tokens.issue(&["repository:test/app:pull,push", "repository:test/other:pull,push"]);
    let image = seed(&registry.url, "test/app", &PushAuth::Bearer(push.clone())).await;
    let other = seed(&registry.url, "test/other", &PushAuth::Bearer(push)).await;
    assert_eq!(tokens.requests(), 0);

    let up = Upstream::new(config(&registry.url, Some(("alice", "s3cret-pw")))).unwrap();
    let repo = name("test/app");
    let (head, body) = up
        .get_manifest(&repo, &reference("v1"), MAX)
        .await
        .expect("through the token dance");
    assert_eq!(head.digest, digest(&image.oci));
    assert_eq!(&body[..], &image.oci[..]);
    assert_eq!(tokens.requests(), 1);

    // The cached token goes along proactively: no second token request, for any call.
    let by_digest = Reference::Digest(digest(&image.list));
    assert_eq!(
        up.head_manifest(&repo, &by_digest).await.unwrap().digest,
        digest(&image.list)
    );
    let (_, body) = up.get_manifest(&repo, &reference("multi"), MAX).await.unwrap();
    assert_eq!(&body[..], &image.list[..]);
    let blob = up.get_blob(&repo, &digest(&image.layer)).await.unwrap();
    let got: Vec<bytes::Bytes> = blob.body.try_collect().await.unwrap();
    assert_eq!(got.concat(), image.layer);
    // Clones share the cache.
    up.clone()
        .head_manifest(&repo, &reference("docker"))
        .await
        .unwrap();
    assert_eq!(tokens.requests(), 1);

    // Another repository is another scope.
    let (_, body) = up
        .get_manifest(&name("test/other"), &reference("v1"), MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], &other.oci[..]);
    up.head_manifest(&name("test/other"), &reference("multi"))
        .await
        .unwrap();
    assert_eq!(tokens.requests(), 2);
    assert_eq!(
        tokens.scopes(),
        ["repository:test/app:pull", "repository:test/other:pull"]
    );
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_auth_errors() {
    let tokens = TokenServer::start(&[("alice", "s3cret-pw")]);
    let registry = Distribution::start(&tokens.distribution_auth());
    let push = tokens.issue(&["repository:test/app:pull,push"]);
    seed(&registry.url, "test/app", &PushAuth::Bearer(push)).await;
    let repo = name("test/app");

    let wrong = Upstream::new(config(&registry.url, Some(("alice", "wrong-pw")))).unwrap();
    let e = wrong
        .get_manifest(&repo, &reference("v1"), MAX)
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)) && !e.is_transient(), "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");

    let anonymous = Upstream::new(config(&registry.url, None)).unwrap();
    let e = anonymous
        .head_manifest(&repo, &reference("v1"))
        .await
        .unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)), "{e}");
    assert_eq!(tokens.requests(), 2);
}

#[tokio::test]
async fn anonymous_tokens_for_a_public_registry() {
    let tokens = TokenServer::start(&[]);
    let registry = Distribution::start(&tokens.distribution_auth());
    let push = tokens.issue(&["repository:library/alpine:pull,push"]);
    let image = seed(&registry.url, "library/alpine", &PushAuth::Bearer(push)).await;

    let mut cfg = config(&registry.url, None);
    cfg.library_prefix = true;
    let hub = Upstream::new(cfg).unwrap();
    let head = hub
        .head_manifest(&name("alpine"), &reference("multi"))
        .await
        .unwrap();
    assert_eq!(head.digest, digest(&image.list));
    let (_, body) = hub
        .get_manifest(&name("alpine"), &reference("v1"), MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], &image.oci[..]);
    assert_eq!(tokens.requests(), 1);
    assert_eq!(tokens.scopes(), ["repository:library/alpine:pull"]);
}

/// Pins the harness: distribution really verifies signatures, so the tests above are not
/// passing against a registry that accepts any token.
#[tokio::test]
async fn distribution_rejects_tokens_from_another_signer() {
    let tokens = TokenServer::start(&[]);
    let stranger = TokenServer::start(&[]);
    let registry = Distribution::start(&tokens.distribution_auth());
    let forged = stranger.issue(&["repository:test/app:pull,push"]);
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/test/app/blobs/uploads/", registry.url))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "{}", registry.log());
    let genuine = tokens.issue(&["repository:test/app:pull,push"]);
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/test/app/blobs/uploads/", registry.url))
        .bearer_auth(genuine)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", registry.log());
}
