//! The [`MetaStore`] contract: every implementation must pass each function here.

use berth_oci::{Digest, ManifestRef, RefKind, RepoName, Tag, UploadId};
use berth_store::{
    COPIED_TABLES, Cell, ManifestRow, MetaStore, NewManifest, PutManifest, Removal, RowSnapshot, Table,
};
use futures_util::future::join_all;

pub const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SBOM: &str = "application/vnd.example.sbom+json";
const SIG: &str = "application/vnd.example.signature";

pub fn repo(s: &str) -> RepoName {
    s.parse().expect("valid repository name")
}

pub fn tag(s: &str) -> Tag {
    s.parse().expect("valid tag")
}

pub fn uid(s: &str) -> UploadId {
    UploadId::parse(s).expect("valid upload id")
}

/// The digest of a blob named `name` (its content is the name).
pub fn blob(name: &str) -> Digest {
    Digest::sha256_of(name.as_bytes())
}

fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
    v.sort();
    v
}

fn r(kind: RefKind, digest: &Digest, required: bool) -> ManifestRef {
    ManifestRef {
        kind,
        digest: digest.clone(),
        size: 1,
        required,
    }
}

/// A manifest to push: its bytes, digest and everything `NewManifest` carries.
#[derive(Clone)]
pub struct Man {
    pub body: Vec<u8>,
    pub digest: Digest,
    media_type: &'static str,
    artifact_type: Option<&'static str>,
    subject: Option<Digest>,
    annotations: Option<String>,
    refs: Vec<ManifestRef>,
}

impl Man {
    fn from_body(body: Vec<u8>, media_type: &'static str, refs: Vec<ManifestRef>) -> Man {
        Man {
            digest: Digest::sha256_of(&body),
            body,
            media_type,
            artifact_type: None,
            subject: None,
            annotations: None,
            refs,
        }
    }

    /// An image manifest (distinct per `name`) with required config and layers.
    pub fn image(name: &str, config: &Digest, layers: &[&Digest]) -> Man {
        let mut refs = vec![r(RefKind::Config, config, true)];
        refs.extend(layers.iter().map(|l| r(RefKind::Layer, l, true)));
        Man::with_refs(name, IMAGE, refs)
    }

    /// A manifest whose body is built from `name` and its refs.
    pub fn with_refs(name: &str, media_type: &'static str, refs: Vec<ManifestRef>) -> Man {
        let listed: Vec<String> = refs.iter().map(|r| format!("\"{}\"", r.digest)).collect();
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{media_type}\",\"name\":\"{name}\",\"refs\":[{}]}}",
            listed.join(",")
        );
        Man::from_body(body.into_bytes(), media_type, refs)
    }

    /// An index listing `children` as (required) child manifests.
    fn index(name: &str, children: &[&Digest]) -> Man {
        let refs = children.iter().map(|c| r(RefKind::Manifest, c, true)).collect();
        Man::with_refs(name, INDEX, refs)
    }

    /// A referrer artifact (no refs) pointing at `subject`.
    fn referrer(
        name: &str,
        subject: &Digest,
        artifact_type: Option<&'static str>,
        annotations: Option<&str>,
    ) -> Man {
        let mut m = Man::with_refs(name, IMAGE, vec![]);
        m.subject = Some(subject.clone());
        m.artifact_type = artifact_type;
        m.annotations = annotations.map(str::to_string);
        m
    }
}

pub async fn put(
    store: &dyn MetaStore,
    repo: &RepoName,
    m: &Man,
    tag: Option<&Tag>,
    now: i64,
) -> PutManifest {
    store
        .put_manifest(NewManifest {
            repo,
            digest: &m.digest,
            media_type: m.media_type,
            artifact_type: m.artifact_type,
            subject: m.subject.as_ref(),
            annotations: m.annotations.clone(),
            body: &m.body,
            refs: &m.refs,
            tag,
            // Hosted-repository semantics: every required reference must be present.
            require_refs: true,
            now,
        })
        .await
        .expect("put_manifest")
}

pub async fn put_ok(store: &dyn MetaStore, repo: &RepoName, m: &Man, tag: Option<&str>) {
    let t = tag.map(self::tag);
    assert_eq!(put(store, repo, m, t.as_ref(), 1000).await, PutManifest::Stored);
}

pub async fn commit(store: &dyn MetaStore, repo: &RepoName, name: &str, size: u64) -> Digest {
    let d = blob(name);
    store
        .commit_blob(repo, &d, size, None, 10)
        .await
        .expect("commit_blob");
    d
}

pub async fn by_digest(store: &dyn MetaStore, repo: &RepoName, d: &Digest) -> Option<ManifestRow> {
    store
        .manifest_by_digest(repo, d)
        .await
        .expect("manifest_by_digest")
}

pub async fn by_tag(store: &dyn MetaStore, repo: &RepoName, t: &str) -> Option<ManifestRow> {
    store
        .manifest_by_tag(repo, &tag(t))
        .await
        .expect("manifest_by_tag")
}

/// The digest of the manifest `t` points at.
async fn tagged(store: &dyn MetaStore, repo: &RepoName, t: &str) -> Option<Digest> {
    by_tag(store, repo, t).await.map(|m| m.digest)
}

pub async fn tags(store: &dyn MetaStore, repo: &RepoName) -> Vec<String> {
    store.tags(repo, None, 1000).await.expect("tags")
}

pub async fn repos(store: &dyn MetaStore) -> Vec<String> {
    store.repositories(None, 1000).await.expect("repositories")
}

pub fn assert_row(row: &ManifestRow, m: &Man) {
    assert_eq!(row.digest, m.digest);
    assert_eq!(row.media_type, m.media_type);
    assert_eq!(row.subject, m.subject);
    assert!(row.body == m.body, "stored body differs from the pushed bytes");
}

// ---- Blobs ----

pub async fn commit_blob_is_visible_in_its_repo_only(store: &dyn MetaStore) {
    let (a, b) = (repo("alpha"), repo("beta"));
    assert!(!store.repo_exists(&a).await.unwrap());
    let d = blob("layer-1");
    store.commit_blob(&a, &d, 1234, None, 10).await.unwrap();
    assert_eq!(store.repo_blob_size(&a, &d).await.unwrap(), Some(1234));
    assert_eq!(store.blob_size(&d).await.unwrap(), Some(1234));
    assert_eq!(store.repo_blob_size(&b, &d).await.unwrap(), None);
    assert_eq!(store.blob_size(&blob("never")).await.unwrap(), None);
    assert_eq!(store.repo_blob_size(&a, &blob("never")).await.unwrap(), None);
    assert!(
        store.repo_exists(&a).await.unwrap(),
        "pushing a blob creates the repository"
    );
    assert!(!store.repo_exists(&b).await.unwrap());
    assert!(
        repos(store).await.is_empty(),
        "a repository without manifests is not listed"
    );
}

pub async fn commit_blob_is_idempotent(store: &dyn MetaStore) {
    let (a, b) = (repo("alpha"), repo("beta"));
    let d = blob("layer-1");
    store.commit_blob(&a, &d, 77, None, 10).await.unwrap();
    store
        .commit_blob(&a, &d, 77, None, 20)
        .await
        .expect("committing again is fine");
    store.commit_blob(&b, &d, 77, None, 30).await.unwrap();
    assert_eq!(store.repo_blob_size(&a, &d).await.unwrap(), Some(77));
    assert_eq!(store.repo_blob_size(&b, &d).await.unwrap(), Some(77));
    assert_eq!(store.blob_size(&d).await.unwrap(), Some(77));
}

pub async fn commit_blob_closes_its_upload(store: &dyn MetaStore) {
    let a = repo("alpha");
    let (u1, u2) = (uid("upload-1"), uid("upload-2"));
    store.create_upload(&u1, &a, 100).await.unwrap();
    store.create_upload(&u2, &a, 100).await.unwrap();
    let d = blob("from-upload-1");
    store.commit_blob(&a, &d, 5, Some(&u1), 200).await.unwrap();
    assert!(
        store.upload(&u1).await.unwrap().is_none(),
        "the upload row went with the commit"
    );
    assert!(!store.delete_upload(&u1).await.unwrap());
    assert_eq!(store.repo_blob_size(&a, &d).await.unwrap(), Some(5));
    assert!(
        store.upload(&u2).await.unwrap().is_some(),
        "other uploads are untouched"
    );
    let idle: Vec<String> = store
        .uploads_idle_since(i64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|u| u.as_str().to_string())
        .collect();
    assert_eq!(idle, ["upload-2"]);
}

pub async fn link_blob_from_a_repo_requires_a_link_there(store: &dyn MetaStore) {
    let (src, dst, other, third) = (repo("src"), repo("dst"), repo("other"), repo("third"));
    let d = commit(store, &src, "shared", 4242).await;
    assert_eq!(store.link_blob(&dst, &d, Some(&other), 20).await.unwrap(), None);
    assert_eq!(store.repo_blob_size(&dst, &d).await.unwrap(), None);
    assert!(
        !store.repo_exists(&dst).await.unwrap(),
        "a failed link writes nothing"
    );

    assert_eq!(
        store.link_blob(&dst, &d, Some(&src), 20).await.unwrap(),
        Some(4242)
    );
    assert_eq!(store.repo_blob_size(&dst, &d).await.unwrap(), Some(4242));
    assert!(store.repo_exists(&dst).await.unwrap());
    assert_eq!(
        store.link_blob(&dst, &d, Some(&src), 30).await.unwrap(),
        Some(4242),
        "again"
    );
    assert_eq!(
        store.link_blob(&third, &d, Some(&dst), 30).await.unwrap(),
        Some(4242),
        "chained"
    );
    assert_eq!(
        store
            .link_blob(&dst, &blob("unknown"), Some(&src), 30)
            .await
            .unwrap(),
        None
    );

    assert_eq!(store.unlink_blob(&src, &d).await.unwrap(), Removal::Done);
    assert_eq!(
        store.link_blob(&other, &d, Some(&src), 40).await.unwrap(),
        None,
        "src no longer has it"
    );
    assert_eq!(store.repo_blob_size(&other, &d).await.unwrap(), None);
}

pub async fn link_blob_from_anywhere_needs_a_known_blob(store: &dyn MetaStore) {
    let (src, dst) = (repo("src"), repo("dst"));
    assert_eq!(
        store.link_blob(&dst, &blob("unknown"), None, 20).await.unwrap(),
        None
    );
    assert!(!store.repo_exists(&dst).await.unwrap());
    let d = commit(store, &src, "shared", 99).await;
    assert_eq!(store.link_blob(&dst, &d, None, 20).await.unwrap(), Some(99));
    assert_eq!(store.repo_blob_size(&dst, &d).await.unwrap(), Some(99));
    // The blob is still known after every link is gone (bytes stay until GC).
    assert_eq!(store.unlink_blob(&src, &d).await.unwrap(), Removal::Done);
    assert_eq!(store.unlink_blob(&dst, &d).await.unwrap(), Removal::Done);
    assert_eq!(store.blob_size(&d).await.unwrap(), Some(99));
    assert_eq!(store.link_blob(&src, &d, None, 30).await.unwrap(), Some(99));
    assert_eq!(store.repo_blob_size(&src, &d).await.unwrap(), Some(99));
}

pub async fn unlink_blob_done_then_not_found(store: &dyn MetaStore) {
    let (a, b, c) = (repo("alpha"), repo("beta"), repo("gamma"));
    let d = commit(store, &a, "layer", 10).await;
    store.commit_blob(&b, &d, 10, None, 10).await.unwrap();
    assert_eq!(store.unlink_blob(&a, &d).await.unwrap(), Removal::Done);
    assert_eq!(store.repo_blob_size(&a, &d).await.unwrap(), None);
    assert_eq!(
        store.repo_blob_size(&b, &d).await.unwrap(),
        Some(10),
        "other repos keep it"
    );
    assert_eq!(
        store.blob_size(&d).await.unwrap(),
        Some(10),
        "the blob stays known"
    );
    assert_eq!(store.unlink_blob(&a, &d).await.unwrap(), Removal::NotFound);
    assert_eq!(store.unlink_blob(&c, &d).await.unwrap(), Removal::NotFound);
    assert_eq!(
        store.unlink_blob(&b, &blob("unknown")).await.unwrap(),
        Removal::NotFound
    );
}

pub async fn unlink_blob_refused_while_a_manifest_references_it(store: &dyn MetaStore) {
    let (a, b) = (repo("alpha"), repo("beta"));
    let config = commit(store, &a, "config", 100).await;
    let layer = commit(store, &a, "layer", 2000).await;
    let spare = commit(store, &a, "spare", 5).await;
    store.commit_blob(&b, &layer, 2000, None, 10).await.unwrap();
    let m = Man::image("app", &config, &[&layer]);
    put_ok(store, &a, &m, Some("v1")).await;

    assert_eq!(
        store.unlink_blob(&a, &config).await.unwrap(),
        Removal::ReferencedBy(m.digest.clone())
    );
    assert_eq!(
        store.unlink_blob(&a, &layer).await.unwrap(),
        Removal::ReferencedBy(m.digest.clone())
    );
    assert_eq!(
        store.repo_blob_size(&a, &config).await.unwrap(),
        Some(100),
        "refusal keeps the link"
    );
    assert_eq!(store.repo_blob_size(&a, &layer).await.unwrap(), Some(2000));
    assert_eq!(
        store.unlink_blob(&a, &spare).await.unwrap(),
        Removal::Done,
        "unreferenced"
    );
    assert_eq!(
        store.unlink_blob(&b, &layer).await.unwrap(),
        Removal::Done,
        "a manifest in another repository does not protect the link"
    );

    assert_eq!(store.delete_manifest(&a, &m.digest).await.unwrap(), Removal::Done);
    assert_eq!(store.unlink_blob(&a, &config).await.unwrap(), Removal::Done);
    assert_eq!(store.unlink_blob(&a, &layer).await.unwrap(), Removal::Done);
}

// ---- Manifests ----

pub async fn put_manifest_reports_each_missing_ref_once_and_writes_nothing(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 10).await;
    let (l1, l2, foreign, child) = (blob("l1"), blob("l2"), blob("foreign"), blob("child"));
    let subject = blob("subject");
    let refs = vec![
        r(RefKind::Config, &config, true),
        r(RefKind::Layer, &l1, true),
        r(RefKind::Layer, &l1, true),
        r(RefKind::Layer, &l2, true),
        r(RefKind::Layer, &foreign, false),
        r(RefKind::Manifest, &child, true),
        r(RefKind::Layer, &l2, true),
    ];
    let mut m = Man::with_refs("incomplete", IMAGE, refs);
    m.subject = Some(subject.clone());
    m.artifact_type = Some(SBOM);
    let got = put(store, &app, &m, Some(&tag("v1")), 1000).await;
    let PutManifest::Missing(missing) = got else {
        panic!("expected Missing, got {got:?}");
    };
    assert_eq!(missing.len(), 3, "each missing reference once: {missing:?}");
    assert_eq!(sorted(missing), sorted(vec![l1, l2, child]));

    assert!(
        by_digest(store, &app, &m.digest).await.is_none(),
        "nothing was written"
    );
    assert!(by_tag(store, &app, "v1").await.is_none());
    assert!(tags(store, &app).await.is_empty());
    assert!(repos(store).await.is_empty());
    assert!(store.referrers(&app, &subject, None).await.unwrap().is_empty());
    assert_eq!(
        store.delete_manifest(&app, &m.digest).await.unwrap(),
        Removal::NotFound
    );
    assert_eq!(
        store.unlink_blob(&app, &config).await.unwrap(),
        Removal::Done,
        "no refs were kept"
    );

    // In a repository nothing was pushed to yet, not even the repository appears.
    let fresh = repo("fresh");
    let got = put(store, &fresh, &m, Some(&tag("v1")), 1000).await;
    assert!(
        matches!(got, PutManifest::Missing(ref v) if v.len() == 4),
        "{got:?}"
    );
    assert!(!store.repo_exists(&fresh).await.unwrap());
}

pub async fn put_manifest_needs_refs_linked_in_the_same_repo(store: &dyn MetaStore) {
    let (app, other) = (repo("app"), repo("other"));
    let config = commit(store, &other, "config", 10).await;
    let layer = commit(store, &other, "layer", 20).await;
    let child = Man::image("child", &config, &[&layer]);
    put_ok(store, &other, &child, None).await;

    let m = Man::image("app", &config, &[&layer]);
    let PutManifest::Missing(missing) = put(store, &app, &m, None, 1000).await else {
        panic!("blobs known only in another repository are missing here");
    };
    assert_eq!(sorted(missing), sorted(vec![config.clone(), layer.clone()]));
    let idx = Man::index("idx", &[&child.digest]);
    assert_eq!(
        put(store, &app, &idx, None, 1000).await,
        PutManifest::Missing(vec![child.digest.clone()]),
        "a child manifest in another repository is missing here"
    );

    store.link_blob(&app, &config, Some(&other), 20).await.unwrap();
    store.link_blob(&app, &layer, Some(&other), 20).await.unwrap();
    put_ok(store, &app, &m, None).await;
    assert_row(&by_digest(store, &app, &m.digest).await.unwrap(), &m);
}

pub async fn put_manifest_skips_non_required_refs(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 10).await;
    let foreign = blob("windows-base-layer");
    let m = Man::with_refs(
        "foreign-layers",
        IMAGE,
        vec![
            r(RefKind::Config, &config, true),
            r(RefKind::Layer, &foreign, false),
        ],
    );
    assert_eq!(
        put(store, &app, &m, Some(&tag("win")), 1000).await,
        PutManifest::Stored
    );
    assert_row(&by_tag(store, &app, "win").await.unwrap(), &m);
    assert_eq!(
        store.repo_blob_size(&app, &foreign).await.unwrap(),
        None,
        "nothing linked"
    );
}

pub async fn put_manifest_stores_exact_bytes(store: &dyn MetaStore) {
    let app = repo("app");
    // Formatting, escapes, non-ASCII and even non-UTF-8 bytes survive untouched.
    let mut body = b"{\n  \"schemaVersion\" : 2 ,\r\n\t\"note\": \"caf\xc3\xa9 \\u00e9 \\\"q\\\"\"".to_vec();
    body.extend_from_slice(&[0x00, 0xff, 0xfe, b' ']);
    body.extend(std::iter::repeat_n(b' ', 100_000));
    body.extend_from_slice(b"}\n\n");
    let m = Man::from_body(
        body,
        "application/vnd.docker.distribution.manifest.v2+json",
        vec![],
    );
    assert_eq!(
        put(store, &app, &m, Some(&tag("exact")), 1000).await,
        PutManifest::Stored
    );
    assert_row(&by_digest(store, &app, &m.digest).await.unwrap(), &m);
    assert_row(&by_tag(store, &app, "exact").await.unwrap(), &m);

    let with_subject = Man::referrer("sig", &m.digest, Some(SIG), None);
    put_ok(store, &app, &with_subject, None).await;
    let row = by_digest(store, &app, &with_subject.digest).await.unwrap();
    assert_eq!(row.subject, Some(m.digest.clone()));
    assert_row(&row, &with_subject);
}

pub async fn put_manifest_with_child_manifests(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 10).await;
    let amd64 = Man::image("amd64", &config, &[]);
    let arm64 = Man::image("arm64", &config, &[]);
    put_ok(store, &app, &amd64, None).await;
    let idx = Man::index("multi", &[&amd64.digest, &arm64.digest]);
    assert_eq!(
        put(store, &app, &idx, Some(&tag("multi")), 1000).await,
        PutManifest::Missing(vec![arm64.digest.clone()])
    );
    // A blob with the child's digest does not stand in for the child manifest.
    store.commit_blob(&app, &arm64.digest, 3, None, 10).await.unwrap();
    assert!(matches!(
        put(store, &app, &idx, None, 1000).await,
        PutManifest::Missing(_)
    ));
    put_ok(store, &app, &arm64, None).await;
    put_ok(store, &app, &idx, Some("multi")).await;
    assert_row(&by_tag(store, &app, "multi").await.unwrap(), &idx);
}

pub async fn tag_upsert_moves_the_tag(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 10).await;
    let (m1, m2) = (Man::image("one", &config, &[]), Man::image("two", &config, &[]));
    put_ok(store, &app, &m1, Some("latest")).await;
    assert_eq!(tagged(store, &app, "latest").await, Some(m1.digest.clone()));
    put_ok(store, &app, &m2, Some("latest")).await;
    assert_eq!(tagged(store, &app, "latest").await, Some(m2.digest.clone()));
    assert_row(&by_digest(store, &app, &m1.digest).await.unwrap(), &m1);
    assert_eq!(tags(store, &app).await, ["latest"]);
    // Deleting the manifest the tag used to name leaves the moved tag alone.
    assert_eq!(
        store.delete_manifest(&app, &m1.digest).await.unwrap(),
        Removal::Done
    );
    assert_eq!(tagged(store, &app, "latest").await, Some(m2.digest.clone()));
}

pub async fn re_put_of_same_manifest_is_idempotent(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 10).await;
    let layer = commit(store, &app, "layer", 10).await;
    let subject = Man::image("subject", &config, &[]);
    put_ok(store, &app, &subject, None).await;
    let mut m = Man::image("app", &config, &[&layer]);
    m.subject = Some(subject.digest.clone());
    m.artifact_type = Some(SBOM);
    for _ in 0..3 {
        put_ok(store, &app, &m, Some("v1")).await;
    }
    assert_eq!(tags(store, &app).await, ["v1"]);
    put_ok(store, &app, &m, Some("v2")).await;
    put_ok(store, &app, &m, None).await;
    assert_eq!(tags(store, &app).await, ["v1", "v2"]);
    assert_eq!(tagged(store, &app, "v1").await, Some(m.digest.clone()));
    assert_eq!(tagged(store, &app, "v2").await, Some(m.digest.clone()));
    assert_row(&by_digest(store, &app, &m.digest).await.unwrap(), &m);
    let refs = store.referrers(&app, &subject.digest, None).await.unwrap();
    assert_eq!(refs.len(), 1, "one referrer, however often pushed");
    assert_eq!(
        store.unlink_blob(&app, &layer).await.unwrap(),
        Removal::ReferencedBy(m.digest.clone())
    );

    assert_eq!(
        store.delete_manifest(&app, &m.digest).await.unwrap(),
        Removal::Done
    );
    assert!(by_digest(store, &app, &m.digest).await.is_none());
    assert!(tags(store, &app).await.is_empty());
    assert_eq!(
        store.unlink_blob(&app, &layer).await.unwrap(),
        Removal::Done,
        "no refs left over"
    );
}

pub async fn manifests_are_scoped_to_their_repo(store: &dyn MetaStore) {
    let (a, b) = (repo("alpha"), repo("beta"));
    let m = Man::with_refs("scoped", IMAGE, vec![]);
    put_ok(store, &a, &m, Some("t")).await;
    put_ok(store, &b, &Man::with_refs("other", IMAGE, vec![]), Some("u")).await;
    assert!(by_digest(store, &b, &m.digest).await.is_none());
    assert!(by_tag(store, &b, "t").await.is_none());
    assert_eq!(tags(store, &b).await, ["u"]);
    assert_eq!(
        store.delete_manifest(&b, &m.digest).await.unwrap(),
        Removal::NotFound
    );
    assert!(!store.delete_tag(&b, &tag("t")).await.unwrap());
    assert_row(&by_digest(store, &a, &m.digest).await.unwrap(), &m);
    assert_row(&by_tag(store, &a, "t").await.unwrap(), &m);
    assert!(store.repo_exists(&a).await.unwrap());
    assert!(!store.repo_exists(&repo("gamma")).await.unwrap());
}

pub async fn delete_tag_removes_only_the_tag(store: &dyn MetaStore) {
    let app = repo("app");
    let m = Man::with_refs("tagged-twice", IMAGE, vec![]);
    put_ok(store, &app, &m, Some("t1")).await;
    put_ok(store, &app, &m, Some("t2")).await;
    assert!(store.delete_tag(&app, &tag("t1")).await.unwrap());
    assert!(!store.delete_tag(&app, &tag("t1")).await.unwrap(), "already gone");
    assert!(!store.delete_tag(&app, &tag("never")).await.unwrap());
    assert!(by_tag(store, &app, "t1").await.is_none());
    assert_row(&by_tag(store, &app, "t2").await.unwrap(), &m);
    assert_row(&by_digest(store, &app, &m.digest).await.unwrap(), &m);
    assert_eq!(tags(store, &app).await, ["t2"]);
    assert!(store.delete_tag(&app, &tag("t2")).await.unwrap());
    assert!(tags(store, &app).await.is_empty());
    assert_eq!(repos(store).await, ["app"], "an untagged manifest still counts");
}

pub async fn delete_manifest_outcomes(store: &dyn MetaStore) {
    let app = repo("app");
    assert_eq!(
        store.delete_manifest(&repo("nowhere"), &blob("x")).await.unwrap(),
        Removal::NotFound
    );
    let m = Man::with_refs("doomed", IMAGE, vec![]);
    let keep = Man::with_refs("kept", IMAGE, vec![]);
    put_ok(store, &app, &m, Some("t1")).await;
    put_ok(store, &app, &m, Some("t2")).await;
    put_ok(store, &app, &keep, Some("t3")).await;
    assert_eq!(
        store.delete_manifest(&app, &blob("x")).await.unwrap(),
        Removal::NotFound
    );

    assert_eq!(
        store.delete_manifest(&app, &m.digest).await.unwrap(),
        Removal::Done
    );
    assert!(by_digest(store, &app, &m.digest).await.is_none());
    assert!(
        by_tag(store, &app, "t1").await.is_none(),
        "its tags vanish with it"
    );
    assert!(by_tag(store, &app, "t2").await.is_none());
    assert_eq!(tags(store, &app).await, ["t3"]);
    assert_eq!(
        store.delete_manifest(&app, &m.digest).await.unwrap(),
        Removal::NotFound
    );
    assert_row(&by_tag(store, &app, "t3").await.unwrap(), &keep);

    // Pushing it again after deletion works like the first time.
    put_ok(store, &app, &m, Some("t1")).await;
    assert_row(&by_tag(store, &app, "t1").await.unwrap(), &m);
}

pub async fn delete_manifest_refused_while_an_index_lists_it(store: &dyn MetaStore) {
    let (a, b) = (repo("alpha"), repo("beta"));
    let (c1, c2) = (
        Man::with_refs("child-1", IMAGE, vec![]),
        Man::with_refs("child-2", IMAGE, vec![]),
    );
    put_ok(store, &a, &c1, None).await;
    put_ok(store, &a, &c2, None).await;
    put_ok(store, &b, &c1, None).await;
    let idx = Man::index("idx", &[&c1.digest, &c2.digest]);
    put_ok(store, &a, &idx, Some("multi")).await;

    assert_eq!(
        store.delete_manifest(&a, &c1.digest).await.unwrap(),
        Removal::ReferencedBy(idx.digest.clone())
    );
    assert_eq!(
        store.delete_manifest(&a, &c2.digest).await.unwrap(),
        Removal::ReferencedBy(idx.digest.clone())
    );
    assert_row(&by_digest(store, &a, &c1.digest).await.unwrap(), &c1);
    assert_eq!(
        store.delete_manifest(&b, &c1.digest).await.unwrap(),
        Removal::Done,
        "an index in another repository does not protect it"
    );

    assert_eq!(
        store.delete_manifest(&a, &idx.digest).await.unwrap(),
        Removal::Done
    );
    assert!(by_tag(store, &a, "multi").await.is_none());
    assert_eq!(
        store.delete_manifest(&a, &c1.digest).await.unwrap(),
        Removal::Done
    );
    assert_eq!(
        store.delete_manifest(&a, &c2.digest).await.unwrap(),
        Removal::Done
    );
}

// ---- Listings ----

pub async fn tags_paginate_in_lexical_order(store: &dyn MetaStore) {
    let (app, other) = (repo("app"), repo("other"));
    let (m1, m2) = (
        Man::with_refs("m1", IMAGE, vec![]),
        Man::with_refs("m2", IMAGE, vec![]),
    );
    let names = ["v2", "latest", "A", "v10", "_x", "v1.0", "1.0"];
    for (i, t) in names.iter().enumerate() {
        put_ok(store, &app, if i % 2 == 0 { &m1 } else { &m2 }, Some(t)).await;
    }
    put_ok(store, &other, &m1, Some("zzz")).await;
    put_ok(store, &other, &m1, Some("0")).await;
    let all = ["1.0", "A", "_x", "latest", "v1.0", "v10", "v2"];

    assert_eq!(store.tags(&app, None, 100).await.unwrap(), all);
    assert_eq!(store.tags(&app, None, 3).await.unwrap(), all[..3]);
    assert_eq!(store.tags(&app, Some("_x"), 2).await.unwrap(), ["latest", "v1.0"]);
    assert_eq!(
        store.tags(&app, Some("m"), 10).await.unwrap(),
        ["v1.0", "v10", "v2"],
        "`last` need not exist"
    );
    assert!(store.tags(&app, Some("v2"), 10).await.unwrap().is_empty());
    assert!(store.tags(&app, None, 0).await.unwrap().is_empty());
    assert_eq!(
        store.tags(&app, None, u32::MAX).await.unwrap(),
        all,
        "a huge limit"
    );
    assert!(store.tags(&repo("nowhere"), None, 10).await.unwrap().is_empty());

    // Paging through with `last` visits every tag exactly once.
    let (mut seen, mut last) = (Vec::new(), None::<String>);
    loop {
        let page = store.tags(&app, last.as_deref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        last = page.last().cloned();
        seen.extend(page);
    }
    assert_eq!(seen, all);
}

pub async fn repositories_list_only_repos_with_manifests(store: &dyn MetaStore) {
    for name in ["c", "a", "b/app", "b"] {
        put_ok(
            store,
            &repo(name),
            &Man::with_refs(name, IMAGE, vec![]),
            Some("v1"),
        )
        .await;
    }
    commit(store, &repo("blobonly"), "layer", 1).await;
    store
        .link_blob(&repo("linked"), &blob("layer"), None, 10)
        .await
        .unwrap();
    store
        .create_upload(&uid("u1"), &repo("uploadonly"), 10)
        .await
        .unwrap();
    let incomplete = Man::image("incomplete", &blob("nope"), &[]);
    assert!(matches!(
        put(store, &repo("failed"), &incomplete, None, 10).await,
        PutManifest::Missing(_)
    ));

    assert_eq!(repos(store).await, ["a", "b", "b/app", "c"]);
    assert_eq!(store.repositories(None, 2).await.unwrap(), ["a", "b"]);
    assert_eq!(store.repositories(Some("b"), 10).await.unwrap(), ["b/app", "c"]);
    assert_eq!(store.repositories(Some("b/app"), 1).await.unwrap(), ["c"]);
    assert_eq!(
        store.repositories(Some("aa"), 10).await.unwrap(),
        ["b", "b/app", "c"]
    );
    assert!(store.repositories(Some("c"), 10).await.unwrap().is_empty());
    assert!(store.repositories(None, 0).await.unwrap().is_empty());

    let only = Man::with_refs("c", IMAGE, vec![]);
    assert_eq!(
        store.delete_manifest(&repo("c"), &only.digest).await.unwrap(),
        Removal::Done
    );
    assert_eq!(
        repos(store).await,
        ["a", "b", "b/app"],
        "no manifest left, not listed"
    );
}

pub async fn repository_summaries_aggregate_per_repository(store: &dyn MetaStore) {
    let app = repo("team/app");
    let (c, l1, l2) = (
        commit(store, &app, "cfg", 100).await,
        commit(store, &app, "l1", 1000).await,
        commit(store, &app, "l2", 10_000).await,
    );
    let v1 = Man::image("v1", &c, &[&l1]);
    let v2 = Man::image("v2", &c, &[&l1, &l2]);
    assert_eq!(
        put(store, &app, &v1, Some(&tag("v1")), 500).await,
        PutManifest::Stored
    );
    assert_eq!(
        put(store, &app, &v2, Some(&tag("v2")), 700).await,
        PutManifest::Stored
    );
    // A second tag on the same manifest counts as a tag, its blobs once.
    assert_eq!(
        put(store, &app, &v2, Some(&tag("latest")), 800).await,
        PutManifest::Stored
    );
    store.touch_pulled(&app, &v1.digest, 900).await.unwrap();
    // A cached repository sharing a blob counts it too; a repository with blobs only is absent.
    let cached = repo("docker.io/library/x");
    store.mark_cached(&cached, "docker.io", 10).await.unwrap();
    store.link_blob(&cached, &l1, None, 10).await.unwrap();
    put_ok(store, &cached, &Man::image("x", &l1, &[]), Some("latest")).await;
    commit(store, &repo("blobonly"), "other", 5).await;

    let all = store.repository_summaries().await.unwrap();
    let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["docker.io/library/x", "team/app"]);
    let (x, a) = (&all[0], &all[1]);
    assert_eq!(
        (a.upstream.as_deref(), a.tags, a.manifests, a.bytes),
        (None, 3, 2, 11_100)
    );
    assert_eq!((a.last_push, a.last_pull), (Some(700), Some(900)));
    assert_eq!(
        (x.upstream.as_deref(), x.tags, x.manifests, x.bytes, x.last_pull),
        (Some("docker.io"), 1, 1, 1000, None)
    );
    store.delete_tag(&app, &tag("latest")).await.unwrap();
    let after = store.repository_summaries().await.unwrap();
    assert_eq!(after[1].tags, 2);
}

pub async fn cached_tags_list_only_cached_repositories(store: &dyn MetaStore) {
    let cached = repo("ghcr.io/o/img");
    store.mark_cached(&cached, "ghcr.io", 10).await.unwrap();
    let (a, b) = (
        Man::with_refs("a", IMAGE, vec![]),
        Man::with_refs("b", IMAGE, vec![]),
    );
    put_ok(store, &cached, &a, Some("v1")).await;
    put_ok(store, &cached, &b, Some("latest")).await;
    put_ok(store, &repo("hosted"), &a, Some("v1")).await;
    store.touch_tag(&cached, &tag("v1"), 2000).await.unwrap();
    let t = store.cached_tags().await.unwrap();
    let seen: Vec<_> = t
        .iter()
        .map(|t| (t.repo.as_str(), t.upstream.as_str(), t.tag.as_str(), t.checked_at))
        .collect();
    assert_eq!(
        seen,
        [
            ("ghcr.io/o/img", "ghcr.io", "latest", Some(1000)),
            ("ghcr.io/o/img", "ghcr.io", "v1", Some(2000)),
        ]
    );
    assert_eq!(t[1].digest, a.digest);
    assert_eq!(t[1].updated_at, 1000);
}

pub async fn referrers_with_and_without_artifact_type(store: &dyn MetaStore) {
    let (a, b) = (repo("alpha"), repo("beta"));
    let subject = Man::with_refs("subject", IMAGE, vec![]);
    put_ok(store, &a, &subject, Some("v1")).await;
    let s = &subject.digest;
    let ann = r#"{"org.opencontainers.image.created":"2024-01-01T00:00:00Z","x":"é"}"#;
    let sbom1 = Man::referrer("sbom-1", s, Some(SBOM), Some(ann));
    let sbom2 = Man::referrer("sbom-2", s, Some(SBOM), Some(r#"{"n":"2"}"#));
    let mut sig = Man::referrer("sig", s, Some(SIG), None);
    sig.media_type = INDEX;
    let plain = Man::referrer("no-type", s, None, None);
    let elsewhere = Man::referrer("other-subject", &blob("other"), Some(SBOM), None);
    let other_repo = Man::referrer("in-beta", s, Some(SBOM), None);
    for m in [&sbom1, &sbom2, &sig, &plain, &elsewhere] {
        put_ok(store, &a, m, None).await;
    }
    put_ok(store, &b, &other_repo, None).await;

    let check = |got: Vec<berth_store::Referrer>, want: &[&Man]| {
        let mut got: Vec<_> = got
            .into_iter()
            .map(|r| (r.digest, r.media_type, r.size, r.artifact_type, r.annotations))
            .collect();
        got.sort();
        let mut want: Vec<_> = want
            .iter()
            .map(|m| {
                (
                    m.digest.clone(),
                    m.media_type.to_string(),
                    m.body.len() as u64,
                    m.artifact_type.map(str::to_string),
                    m.annotations.clone(),
                )
            })
            .collect();
        want.sort();
        assert_eq!(got, want);
    };
    check(
        store.referrers(&a, s, None).await.unwrap(),
        &[&sbom1, &sbom2, &sig, &plain],
    );
    check(
        store.referrers(&a, s, Some(SBOM)).await.unwrap(),
        &[&sbom1, &sbom2],
    );
    check(store.referrers(&a, s, Some(SIG)).await.unwrap(), &[&sig]);
    check(
        store.referrers(&a, s, Some("application/unknown")).await.unwrap(),
        &[],
    );
    check(store.referrers(&a, &blob("nothing"), None).await.unwrap(), &[]);
    check(store.referrers(&b, s, None).await.unwrap(), &[&other_repo]);

    assert_eq!(
        store.delete_manifest(&a, &sbom1.digest).await.unwrap(),
        Removal::Done
    );
    check(store.referrers(&a, s, Some(SBOM)).await.unwrap(), &[&sbom2]);
}

// ---- Uploads ----

pub async fn upload_rows_lifecycle(store: &dyn MetaStore) {
    let a = repo("team/app");
    let u = uid("0b7c9e2a-upload");
    assert!(store.upload(&u).await.unwrap().is_none());
    store.create_upload(&u, &a, 100).await.unwrap();
    let row = store.upload(&u).await.unwrap().expect("created");
    assert_eq!(row.id, u);
    assert_eq!(row.repo, a);
    assert_eq!((row.size, row.started_at, row.last_activity), (0, 100, 100));

    store.set_upload_size(&u, 4096, 150).await.unwrap();
    let row = store.upload(&u).await.unwrap().unwrap();
    assert_eq!((row.size, row.started_at, row.last_activity), (4096, 100, 150));
    store.set_upload_size(&u, 5_000_000_000, 160).await.unwrap();
    let row = store.upload(&u).await.unwrap().unwrap();
    assert_eq!(
        (row.size, row.last_activity),
        (5_000_000_000, 160),
        "sizes beyond 32 bits"
    );

    assert!(store.upload(&uid("other")).await.unwrap().is_none());
    assert!(
        repos(store).await.is_empty(),
        "an upload alone creates no listed repository"
    );
    assert!(store.delete_upload(&u).await.unwrap());
    assert!(!store.delete_upload(&u).await.unwrap());
    assert!(store.upload(&u).await.unwrap().is_none());
    // A late size update for a deleted upload does not bring its row back.
    let _ = store.set_upload_size(&u, 10, 170).await;
    assert!(store.upload(&u).await.unwrap().is_none());
    assert!(store.uploads_idle_since(i64::MAX).await.unwrap().is_empty());
}

/// A saved hash state comes back only while the row's size is the size it was saved at.
pub async fn upload_hash_state_is_valid_for_its_size_only(store: &dyn MetaStore) {
    let a = repo("app");
    let u = uid("hash-state");
    store.create_upload(&u, &a, 100).await.unwrap();
    assert_eq!(store.upload(&u).await.unwrap().unwrap().hash_state, None);
    let state: Vec<u8> = (0..=255).collect();
    store.save_upload_state(&u, 4096, &state, 110).await.unwrap();
    let row = store.upload(&u).await.unwrap().unwrap();
    assert_eq!((row.size, row.last_activity), (4096, 110));
    assert_eq!(row.hash_state.as_deref(), Some(&state[..]));
    // Touching the session at the same size keeps it.
    store.set_upload_size(&u, 4096, 120).await.unwrap();
    let row = store.upload(&u).await.unwrap().unwrap();
    assert_eq!(
        row.hash_state.as_deref(),
        Some(&state[..]),
        "same size: still valid"
    );
    // Bytes appended without a saved state make it stale.
    store.set_upload_size(&u, 5_000_000_000, 130).await.unwrap();
    let row = store.upload(&u).await.unwrap().unwrap();
    assert_eq!(
        (row.size, row.hash_state),
        (5_000_000_000, None),
        "stale after a size change"
    );
    store
        .save_upload_state(&u, 5_000_000_001, b"later", 140)
        .await
        .unwrap();
    let row = store.upload(&u).await.unwrap().unwrap();
    assert_eq!(
        (row.size, row.hash_state.as_deref()),
        (5_000_000_001, Some(&b"later"[..]))
    );
}

pub async fn uploads_idle_since_compares_last_activity(store: &dyn MetaStore) {
    let a = repo("app");
    let (u1, u2, u3) = (uid("u1"), uid("u2"), uid("u3"));
    store.create_upload(&u1, &a, 100).await.unwrap();
    store.create_upload(&u2, &a, 100).await.unwrap();
    store.set_upload_size(&u2, 10, 200).await.unwrap();
    store.create_upload(&u3, &a, 300).await.unwrap();
    let idle = |before: i64| async move {
        let mut ids: Vec<String> = store
            .uploads_idle_since(before)
            .await
            .unwrap()
            .iter()
            .map(|u| u.as_str().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert!(idle(100).await.is_empty(), "activity at `before` is not idle");
    assert_eq!(idle(101).await, ["u1"]);
    assert_eq!(idle(200).await, ["u1"], "u2 was active at 200");
    assert_eq!(idle(201).await, ["u1", "u2"]);
    assert_eq!(idle(1000).await, ["u1", "u2", "u3"]);
    store.delete_upload(&u1).await.unwrap();
    assert_eq!(idle(1000).await, ["u2", "u3"]);
}

// ---- Health and concurrency ----

pub async fn ping_succeeds(store: &dyn MetaStore) {
    store.ping().await.unwrap();
    commit(store, &repo("app"), "layer", 1).await;
    store.ping().await.expect("still answers after writes");
}

pub async fn concurrent_put_manifest_to_distinct_tags(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 10).await;
    let layer = commit(store, &app, "layer", 10).await;
    let ms: Vec<Man> = (0..20)
        .map(|i| Man::image(&format!("concurrent-{i}"), &config, &[&layer]))
        .collect();
    let names: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let tags_: Vec<Tag> = names.iter().map(|n| tag(n)).collect();
    let results = join_all(
        ms.iter()
            .zip(&tags_)
            .map(|(m, t)| put(store, &app, m, Some(t), 1000)),
    )
    .await;
    assert!(results.iter().all(|r| *r == PutManifest::Stored), "{results:?}");
    assert_eq!(tags(store, &app).await, names);
    for (m, n) in ms.iter().zip(&names) {
        assert_row(&by_tag(store, &app, n).await.unwrap(), m);
    }

    // Writers of every kind at once, each in its own repository: blob, link, manifest.
    let results = join_all((0..20).map(|i| async move {
        let r = repo(&format!("team/r{i:02}"));
        let cfg = commit(store, &r, &format!("cfg-{i}"), 7).await;
        store.link_blob(&r, &blob("layer"), None, 20).await.unwrap();
        let m = Man::image(&format!("r{i}"), &cfg, &[&blob("layer")]);
        (put(store, &r, &m, Some(&tag("latest")), 30).await, r, m)
    }))
    .await;
    for (outcome, r, m) in &results {
        assert_eq!(*outcome, PutManifest::Stored);
        assert_row(&by_tag(store, r, "latest").await.unwrap(), m);
    }
    assert_eq!(repos(store).await.len(), 21);
}

// ---- Coordination ----

pub async fn job_lock_is_exclusive_until_dropped(store: &dyn MetaStore) {
    let gc = store
        .try_lock_job("gc")
        .await
        .unwrap()
        .expect("a free job lock is taken");
    assert!(store.try_lock_job("gc").await.unwrap().is_none(), "held: refused");
    let scrub = store.try_lock_job("scrub").await.unwrap();
    assert!(scrub.is_some(), "other jobs are independent");
    drop(gc);
    // A PostgreSQL guard releases on the runtime, within moments of the drop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if store.try_lock_job("gc").await.unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gc lock not released after drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub async fn fill_lock_waits_for_the_holder(store: &dyn MetaStore) {
    use std::time::Duration;
    let (a, b) = (blob("fill-a"), blob("fill-b"));
    let held = store.lock_fill(&a).await.unwrap();
    // Another digest is independent.
    let other = tokio::time::timeout(Duration::from_secs(10), store.lock_fill(&b))
        .await
        .expect("another digest's lock is free")
        .unwrap();
    drop(other);
    // The same digest waits while it is held...
    assert!(
        tokio::time::timeout(Duration::from_millis(300), store.lock_fill(&a))
            .await
            .is_err(),
        "a held fill lock must make others wait"
    );
    // ...and is granted once it is released.
    drop(held);
    let again = tokio::time::timeout(Duration::from_secs(10), store.lock_fill(&a))
        .await
        .expect("granted after the holder dropped it")
        .unwrap();
    drop(again);
}

// ---- Lifecycle ----

pub async fn gc_sweeps_what_nothing_keeps_and_dry_run_matches(store: &dyn MetaStore) {
    use berth_store::Deletion;
    let app = repo("app");
    let cache = repo("docker.io/library/cached");
    let config = commit(store, &app, "config", 1).await;
    let (l1, l2, l3) = (
        commit(store, &app, "l1", 10).await,
        commit(store, &app, "l2", 20).await,
        commit(store, &app, "l3", 30).await,
    );
    let orphan = commit(store, &app, "orphan", 40).await;
    let tagged = Man::image("tagged", &config, &[&l1]);
    let child = Man::image("child", &config, &[&l2]);
    let dead = Man::image("dead", &config, &[&l3]);
    let sig = Man::referrer("sig", &tagged.digest, Some(SIG), None);
    put_ok(store, &app, &tagged, Some("v1")).await;
    put_ok(store, &app, &child, None).await;
    put_ok(store, &app, &dead, None).await;
    put_ok(store, &app, &sig, None).await;
    let idx = Man::index("idx", &[&child.digest]);
    put_ok(store, &app, &idx, Some("all")).await;
    // A recent push (after the cutoff) is live though untagged.
    let recent = Man::with_refs("recent", IMAGE, vec![]);
    put(store, &app, &recent, None, 5000).await;
    // A cached repository with its own cutoff.
    store.mark_cached(&cache, "docker.io", 10).await.unwrap();
    store
        .commit_blob(&cache, &blob("cached-layer"), 100, None, 10)
        .await
        .unwrap();
    assert_eq!(store.cached_bytes().await.unwrap(), 100);
    assert_eq!(
        store.repositories_by_kind().await.unwrap(),
        [
            ("app".to_string(), false),
            ("docker.io/library/cached".to_string(), true)
        ]
    );

    let dry = store.collect_garbage(&[], 2000, 5, true).await.unwrap();
    assert_eq!(
        dry.manifests,
        [("app".to_string(), dead.digest.clone(), dead.body.len() as u64)]
    );
    assert_eq!(dry.links, 2, "l3 and the orphan lose their links in app");
    assert_eq!(
        dry.blobs,
        sorted_pairs(vec![(l3.clone(), 30), (orphan.clone(), 40)])
    );
    assert_eq!(
        dry.cached_bytes_after, 100,
        "the cached link is newer than its cutoff"
    );
    assert!(
        by_digest(store, &app, &dead.digest).await.is_some(),
        "a dry run changes nothing"
    );
    assert_eq!(store.blob_size(&l3).await.unwrap(), Some(30));

    let real = store.collect_garbage(&[], 2000, 5, false).await.unwrap();
    assert_eq!(real, dry, "the dry run reports exactly what the real run removes");
    assert!(by_digest(store, &app, &dead.digest).await.is_none());
    for kept in [&tagged, &child, &idx, &sig, &recent] {
        assert!(
            by_digest(store, &app, &kept.digest).await.is_some(),
            "kept {}",
            kept.digest
        );
    }
    assert_eq!(store.blob_size(&l3).await.unwrap(), None);
    assert_eq!(store.blob_size(&orphan).await.unwrap(), None);
    assert_eq!(store.repo_blob_size(&app, &l1).await.unwrap(), Some(10));
    assert_eq!(
        store
            .recorded_among(&[l1.clone(), l3.clone(), orphan.clone()])
            .await
            .unwrap(),
        vec![l1.clone()]
    );

    // Deletions decided by a rule come first, in the same transaction: the tag goes, then
    // the manifest it kept, its referrer and their now unused blob.
    let report = store
        .collect_garbage(
            &[Deletion::Tag {
                repo: "app".into(),
                tag: "v1".into(),
            }],
            2000,
            2000,
            false,
        )
        .await
        .unwrap();
    let removed: Vec<Digest> = report.manifests.iter().map(|(_, d, _)| d.clone()).collect();
    assert_eq!(
        sorted(removed),
        sorted(vec![tagged.digest.clone(), sig.digest.clone()])
    );
    // l1 (config is still used by child) and the cached layer, whose link is older than
    // the cached cutoff now.
    assert_eq!(
        report.blobs,
        sorted_pairs(vec![(l1.clone(), 10), (blob("cached-layer"), 100)])
    );
    assert_eq!(report.cached_bytes_after, 0);
    // An untagged manifest listed by a live index is not deleted by a rule.
    let refused = store
        .collect_garbage(
            &[Deletion::Manifest {
                repo: "app".into(),
                digest: child.digest.clone(),
            }],
            0,
            0,
            true,
        )
        .await
        .unwrap();
    assert!(refused.manifests.is_empty(), "{refused:?}");
}

fn sorted_pairs(mut v: Vec<(Digest, u64)>) -> Vec<(Digest, u64)> {
    v.sort();
    v
}

pub async fn tag_details_and_untagged_before(store: &dyn MetaStore) {
    let app = repo("app");
    let config = commit(store, &app, "config", 1).await;
    let a = Man::image("a", &config, &[]);
    let b = Man::image("b", &config, &[]);
    let old = Man::image("old", &config, &[]);
    let child = Man::image("child", &config, &[]);
    put(store, &app, &a, Some(&tag("first")), 100).await;
    put(store, &app, &b, Some(&tag("second")), 100).await;
    put(store, &app, &a, Some(&tag("newest")), 300).await;
    put(store, &app, &old, None, 50).await;
    put(store, &app, &child, None, 50).await;
    let idx = Man::index("idx", &[&child.digest]);
    put(store, &app, &idx, Some(&tag("idx")), 60).await;
    store.touch_pulled(&app, &a.digest, 700).await.unwrap();
    let details = store.tag_details("app").await.unwrap();
    let names: Vec<&str> = details.iter().map(|t| t.name.as_str()).collect();
    // Most recent push first; equal times: the later push first.
    assert_eq!(names, ["newest", "second", "first", "idx"]);
    assert_eq!(details[0].digest, a.digest);
    assert_eq!((details[0].updated_at, details[0].last_pulled), (300, Some(700)));
    assert_eq!(details[1].last_pulled, None);
    // Only `old` is unreachable from a tag; `child` is kept by the tagged index.
    assert_eq!(
        store.untagged_before("app", 1000).await.unwrap(),
        vec![old.digest.clone()]
    );
    assert!(
        store.untagged_before("app", 50).await.unwrap().is_empty(),
        "pushed at 50, not before"
    );
}

pub async fn touch_tag_moves_the_checked_time(store: &dyn MetaStore) {
    let app = repo("docker.io/library/app");
    store.mark_cached(&app, "docker.io", 1).await.unwrap();
    let m = Man::with_refs("cached", IMAGE, vec![]);
    put(store, &app, &m, Some(&tag("latest")), 100).await;
    assert_eq!(
        by_tag(store, &app, "latest").await.unwrap().tag_checked_at,
        Some(100)
    );
    store.touch_tag(&app, &tag("latest"), 900).await.unwrap();
    assert_eq!(
        by_tag(store, &app, "latest").await.unwrap().tag_checked_at,
        Some(900)
    );
    assert_eq!(
        store.repositories_by_kind().await.unwrap(),
        [(app.to_string(), true)]
    );
}

// ---- Integrity ----

pub async fn integrity_queries_page_and_resolve(store: &dyn MetaStore) {
    let (app, other) = (repo("app"), repo("other"));
    let cache = repo("docker.io/x");
    store.mark_cached(&cache, "docker.io", 1).await.unwrap();
    let config = commit(store, &app, "config", 5).await;
    let layer = commit(store, &app, "layer", 7).await;
    store.link_blob(&other, &layer, Some(&app), 20).await.unwrap();
    store.link_blob(&cache, &layer, None, 20).await.unwrap();
    let img = Man::image("img", &config, &[&layer]);
    put_ok(store, &app, &img, Some("v1")).await;
    let idx = Man::index("idx", &[&img.digest]);
    put_ok(store, &app, &idx, Some("multi")).await;
    store.create_upload(&uid("u1"), &app, 1).await.unwrap();

    // Blobs in digest order, a page at a time.
    let mut all = Vec::new();
    let mut after: Option<Digest> = None;
    loop {
        let page = store.blobs_page(after.as_ref(), 1).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        all.extend(page);
    }
    assert_eq!(all, sorted_pairs(vec![(config.clone(), 5), (layer.clone(), 7)]));
    store.mark_verified(&layer, 99).await.unwrap();

    assert_eq!(
        store.links_of(&layer).await.unwrap(),
        [
            ("app".to_string(), false),
            ("docker.io/x".to_string(), true),
            ("other".to_string(), false)
        ]
    );

    // Every reference, paged by (repo, parent, child).
    let mut refs = Vec::new();
    let mut after = None;
    loop {
        let page = store.refs_page(after.clone(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.repo.clone(), last.parent.clone(), last.child.clone()));
        refs.extend(page);
    }
    assert_eq!(refs.len(), 3, "{refs:?}");
    assert!(
        refs.iter()
            .any(|r| r.parent == idx.digest && r.child == img.digest && r.kind == "manifest")
    );
    assert!(
        refs.iter()
            .any(|r| r.parent == img.digest && r.child == layer && r.kind == "layer")
    );
    assert!(refs.iter().all(|r| r.repo == "app" && !r.cached));

    assert_eq!(
        store.all_tags().await.unwrap(),
        [
            ("app".to_string(), "multi".to_string(), idx.digest.clone(), false),
            ("app".to_string(), "v1".to_string(), img.digest.clone(), false)
        ]
    );

    // The layer is used by `img`, reached by its own tag and through the index's.
    let usages = store.usages(&layer).await.unwrap();
    assert_eq!(usages.len(), 1);
    assert_eq!(
        (usages[0].repo.as_str(), &usages[0].manifest),
        ("app", &img.digest)
    );
    let mut tags_ = usages[0].tags.clone();
    tags_.sort();
    assert_eq!(tags_, ["multi", "v1"]);
    assert!(store.usages(&blob("unused")).await.unwrap().is_empty());

    let st = store.storage_stats().await.unwrap();
    assert_eq!(
        (st.hosted_blobs, st.hosted_bytes, st.hosted_manifests),
        (2, 12, 2)
    );
    assert_eq!((st.cached_blobs, st.cached_bytes, st.cached_manifests), (1, 7, 0));
    assert_eq!(st.uploads, 1);

    store.drop_blob(&layer).await.unwrap();
    assert_eq!(store.blob_size(&layer).await.unwrap(), None);
    assert!(store.links_of(&layer).await.unwrap().is_empty());
    assert_eq!(store.repo_blob_size(&other, &layer).await.unwrap(), None);
}

// ---- Row copy (berth migrate-storage) ----

/// Fills `store` with one of everything a copy must carry: hosted and cached repositories,
/// blobs with access and verification times, an image and an index with references,
/// tags created out of lexical order, a pull time, an upload session (not copied).
pub async fn fill_for_copy(store: &dyn MetaStore) {
    let app = repo("copy/app");
    let config = commit(store, &app, "copy-config", 7).await;
    let layer = commit(store, &app, "copy-layer", 9).await;
    let image = Man::image("copy-img", &config, &[&layer]);
    put(store, &app, &image, Some(&tag("zeta")), 1001).await;
    put(store, &app, &image, Some(&tag("alpha")), 1002).await;
    let index = Man::with_refs(
        "copy-index",
        INDEX,
        vec![r(RefKind::Manifest, &image.digest, true)],
    );
    put(store, &app, &index, Some(&tag("multi")), 1003).await;
    store
        .touch_pulled(&app, &image.digest, 1500)
        .await
        .expect("touch_pulled");
    store.mark_verified(&layer, 1600).await.expect("mark_verified");
    let cached = repo("up.test/library/x");
    store
        .mark_cached(&cached, "up.test", 1100)
        .await
        .expect("mark_cached");
    let cl = blob("copy-cached-layer");
    store
        .commit_blob(&cached, &cl, 5, None, 1101)
        .await
        .expect("commit_blob");
    let cm = Man::image("copy-cached", &cl, &[&cl]);
    assert_eq!(
        store
            .put_manifest(NewManifest {
                repo: &cached,
                digest: &cm.digest,
                media_type: IMAGE,
                artifact_type: None,
                subject: None,
                annotations: Some("{\"k\":\"v\"}".into()),
                body: &cm.body,
                refs: &cm.refs,
                tag: Some(&tag("latest")),
                require_refs: false,
                now: 1102,
            })
            .await
            .expect("put_manifest"),
        PutManifest::Stored
    );
    store
        .touch_tag(&cached, &tag("latest"), 1200)
        .await
        .expect("touch_tag");
    store
        .create_upload(&uid("0b1e5b9e-1e4a-4d0e-9a39-5ad1d1f0c0de"), &app, 1300)
        .await
        .expect("create_upload");
}

/// Every row of `table` in `snap`, read two at a time (so paging is exercised).
pub async fn snapshot_rows(snap: &mut dyn RowSnapshot, table: &Table) -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    for _ in 0..10_000 {
        let page = snap
            .rows(table, rows.len() as u64, 2)
            .await
            .unwrap_or_else(|e| panic!("snapshot rows({}): {e}", table.name));
        if page.is_empty() {
            return rows;
        }
        rows.extend(page);
    }
    panic!("export of {} never ended", table.name);
}

/// Every row of `table` in `store` now.
pub async fn all_rows(store: &dyn MetaStore, table: &Table) -> Vec<Vec<Cell>> {
    let mut snap = store.snapshot().await.expect("snapshot");
    snapshot_rows(&mut *snap, table).await
}

/// Replaces every table of `to` with a snapshot of `from`, a few rows at a time; returns
/// the rows written.
pub async fn copy_rows(from: &dyn MetaStore, to: &dyn MetaStore) -> u64 {
    let mut snap = from.snapshot().await.expect("snapshot");
    let mut replace = to.replace_rows().await.expect("replace_rows");
    let mut written = 0;
    for table in COPIED_TABLES {
        let rows = snapshot_rows(&mut *snap, table).await;
        for chunk in rows.chunks(3) {
            replace
                .insert(table, chunk)
                .await
                .unwrap_or_else(|e| panic!("insert({}): {e}", table.name));
        }
        written += rows.len() as u64;
    }
    replace.commit().await.expect("commit the replacement");
    written
}

/// A copy carries every row as stored (bytes, times, tag creation order), answers the
/// queries a registry makes as the source does; a snapshot does not see writes made after
/// it; a second copy reflects the source's deletions and moved tags, and a replacement
/// dropped before its commit changes nothing.
pub async fn row_copy_into_a_fresh_store(from: &dyn MetaStore, to: &dyn MetaStore) {
    fill_for_copy(from).await;
    let mut total = 0;
    for table in COPIED_TABLES {
        let n = from.count_rows(table).await.expect("count_rows");
        assert!(n > 0, "{} is empty: the fill misses it", table.name);
        total += n;
    }
    assert_eq!(copy_rows(from, to).await, total);
    for table in COPIED_TABLES {
        assert_eq!(
            all_rows(to, table).await,
            all_rows(from, table).await,
            "{} differs after the copy",
            table.name
        );
        assert_eq!(
            to.count_rows(table).await.unwrap(),
            from.count_rows(table).await.unwrap()
        );
    }
    assert_eq!(copy_rows(from, to).await, total, "a second copy wrote other rows");
    for table in COPIED_TABLES {
        assert_eq!(all_rows(to, table).await, all_rows(from, table).await);
    }

    // A snapshot keeps what it saw while the store takes writes.
    let app = repo("copy/app");
    let mut snap = from.snapshot().await.expect("snapshot");
    let seen_tags = snapshot_rows(&mut *snap, &COPIED_TABLES[5]).await;
    let late = commit(from, &app, "copy-late", 4).await;
    assert!(from.delete_tag(&app, &tag("alpha")).await.unwrap());
    assert_eq!(snapshot_rows(&mut *snap, &COPIED_TABLES[5]).await, seen_tags);
    let blobs_seen = snapshot_rows(&mut *snap, &COPIED_TABLES[1]).await;
    assert!(
        !blobs_seen.iter().any(|r| r[0] == Cell::Text(late.to_string())),
        "the snapshot sees a blob committed after it"
    );
    drop(snap);

    // A replacement that is dropped, not committed, leaves the destination as it was.
    {
        let mut r = to.replace_rows().await.expect("replace_rows");
        r.insert(&COPIED_TABLES[0], &[]).await.unwrap();
    }
    assert_eq!(all_rows(to, &COPIED_TABLES[5]).await, seen_tags);

    // The second pass: the deleted tag is gone, the new blob is there.
    copy_rows(from, to).await;
    assert_eq!(tags(to, &app).await, tags(from, &app).await);
    assert!(!tags(to, &app).await.contains(&"alpha".to_string()));
    assert_eq!(to.blob_size(&late).await.unwrap(), Some(4));
    for table in COPIED_TABLES {
        assert_eq!(all_rows(to, table).await, all_rows(from, table).await);
    }
    // What a registry reads, read back from the copy.
    for t in ["zeta", "multi"] {
        let (a, b) = (
            by_tag(from, &app, t).await.unwrap(),
            by_tag(to, &app, t).await.unwrap(),
        );
        assert_eq!(
            (a.digest, a.body, a.tag_checked_at, a.last_pulled),
            (b.digest, b.body, b.tag_checked_at, b.last_pulled)
        );
    }
    assert_eq!(tags(to, &app).await, tags(from, &app).await);
    assert_eq!(
        to.tag_details("copy/app").await.unwrap(),
        from.tag_details("copy/app").await.unwrap()
    );
    assert_eq!(
        to.repositories_by_kind().await.unwrap(),
        from.repositories_by_kind().await.unwrap()
    );
    assert_eq!(to.cached_tags().await.unwrap(), from.cached_tags().await.unwrap());
    assert_eq!(to.storage_stats().await.unwrap().hosted_blobs, 3);
    assert_eq!(
        to.blobs_page(None, 100).await.unwrap(),
        from.blobs_page(None, 100).await.unwrap()
    );
    assert_eq!(
        to.repo_blob_size(&app, &blob("copy-layer")).await.unwrap(),
        Some(9)
    );
    assert!(
        to.uploads_idle_since(i64::MAX).await.unwrap().is_empty(),
        "upload sessions are not copied"
    );
    // The copy takes writes as usual afterwards.
    let more = commit(to, &app, "copy-after", 3).await;
    assert_eq!(to.blob_size(&more).await.unwrap(), Some(3));
}
