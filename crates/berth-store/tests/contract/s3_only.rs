//! Checks of the S3 blob store that reach behind the trait: the server really refuses a
//! conditional create over an existing object, racing commits, what a commit leaves in the
//! bucket, startup errors, presigned URLs. Each runs on s3s-fs and on moto.

use std::time::Duration;

use berth_oci::{Algorithm, Digest, DigestHasher};
use berth_store::BlobStore;
use berth_store::s3::{S3BlobStore, S3Settings};
use berth_testkit::s3::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};
use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3CopyIfNotExists};
use object_store::path::Path;
use object_store::{CopyMode, CopyOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::blob::{bytes_of, put_blob, read_bytes, uid};

fn settings(server: &S3Server, prefix: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: REGION.to_string(),
        bucket: server.bucket.clone(),
        prefix: prefix.to_string(),
        access_key_id: Some(ACCESS_KEY.to_string()),
        secret_access_key: Some(SECRET_KEY.to_string()),
        allow_http: true,
        // Signed bodies, as over plain HTTP; the contract suite runs unsigned.
        sign_payload: true,
    }
}

async fn start(kind: &str) -> S3Server {
    match kind {
        "moto" => tokio::task::spawn_blocking(S3Server::moto).await.unwrap(),
        _ => S3Server::s3s_fs(),
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod s3s_fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("s3s-fs").await;
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("moto").await;
                }
            )*
        }
    };
}

on_both!(
    server_refuses_conditional_create_over_an_existing_object,
    racing_commits_of_one_digest_all_succeed_and_keep_the_bytes,
    missing_bucket_and_unreachable_endpoint_are_named_at_open,
    presigned_url_fetches_the_blob,
    upload_reader_keeps_reading_after_commit,
    quarantine_moves_the_blob_out_of_service,
    open_verified_withholds_the_end_of_damaged_bytes,
    one_request_is_one_object_and_commits_leave_only_the_blob,
);

/// Conditional creates, asked of the server itself: `PutMode::Create` and a
/// `CopyMode::Create` copy both fail with "already exists" when the key is taken. Commits
/// do not use them (content-addressed keys make a racing overwrite harmless, see s3.rs),
/// but anything that must not clobber an object can rely on both servers for it.
async fn server_refuses_conditional_create_over_an_existing_object(kind: &str) {
    let server = start(kind).await;
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_region(REGION)
        .with_bucket_name(&server.bucket)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
        .build()
        .unwrap();
    let (a, b, taken) = (Path::from("a"), Path::from("b"), Path::from("taken"));
    s3.put(&a, PutPayload::from_static(b"first")).await.unwrap();
    s3.put(&b, PutPayload::from_static(b"second")).await.unwrap();
    s3.put(&taken, PutPayload::from_static(b"kept")).await.unwrap();
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let put = s3
        .put_opts(&taken, PutPayload::from_static(b"clobber"), create)
        .await;
    assert!(
        matches!(put, Err(object_store::Error::AlreadyExists { .. })),
        "{kind}: conditional PUT over an existing key: {put:?}"
    );
    let copy = CopyOptions {
        mode: CopyMode::Create,
        ..Default::default()
    };
    let copied = s3.copy_opts(&a, &taken, copy.clone()).await;
    assert!(
        matches!(copied, Err(object_store::Error::AlreadyExists { .. })),
        "{kind}: conditional copy over an existing key: {copied:?}"
    );
    assert_eq!(s3.get(&taken).await.unwrap().bytes().await.unwrap(), "kept");
    // And onto a free key it copies.
    let fresh = Path::from("fresh");
    s3.copy_opts(&b, &fresh, copy).await.unwrap();
    assert_eq!(s3.get(&fresh).await.unwrap().bytes().await.unwrap(), "second");
}

/// Two stores on one bucket (two replicas) and many uploads of one layer commit at once:
/// every commit succeeds and the blob holds the layer's bytes.
async fn racing_commits_of_one_digest_all_succeed_and_keep_the_bytes(kind: &str) {
    let server = start(kind).await;
    let a = S3BlobStore::open(&settings(&server, "race")).await.unwrap();
    let b = S3BlobStore::open(&settings(&server, "race")).await.unwrap();
    let data = bytes_of(500, 300_000);
    let digest = Digest::sha256_of(&data);
    let mut ids = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { &a } else { &b };
        let id = uid(&format!("race-{i}"));
        store.create_upload(&id).await.unwrap();
        // Some uploads in two requests, so their commit composes parts first.
        let cut = if i % 3 == 0 { 100_000 } else { data.len() };
        let mut sink = store
            .append(&id, 0, DigestHasher::new(Algorithm::Sha256))
            .await
            .unwrap();
        sink.write(Bytes::copy_from_slice(&data[..cut])).await.unwrap();
        let (n, h) = sink.finish().await.unwrap();
        let mut sink = store.append(&id, n, h).await.unwrap();
        sink.write(Bytes::copy_from_slice(&data[cut..])).await.unwrap();
        let (n, h) = sink.finish().await.unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h.finish(), digest);
        ids.push(id);
    }
    let commits = ids.iter().enumerate().map(|(i, id)| {
        let store = if i % 2 == 0 { &a } else { &b };
        store.commit_upload(id, &digest)
    });
    for (i, r) in futures_util::future::join_all(commits)
        .await
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("{kind}: commit {i} of the same digest failed: {e}"));
    }
    assert_eq!(a.stat(&digest).await.unwrap(), Some(data.len() as u64));
    assert!(
        read_bytes(&b, &digest, None).await.1 == data,
        "{kind}: blob bytes differ"
    );
    assert!(a.upload_ids().await.unwrap().is_empty(), "every area is gone");
}

async fn missing_bucket_and_unreachable_endpoint_are_named_at_open(kind: &str) {
    let server = start(kind).await;
    let mut s = settings(&server, "");
    s.bucket = "no-such-bucket".into();
    let e = S3BlobStore::open(&s)
        .await
        .err()
        .expect("missing bucket refused")
        .to_string();
    assert!(
        e.contains("\"no-such-bucket\"") && e.contains(&server.endpoint) && e.contains("does not exist"),
        "{kind}: {e}"
    );
    assert!(!e.contains(SECRET_KEY), "the secret leaked: {e}");

    if kind == "s3s-fs" {
        // moto accepts any credentials; s3s checks the signature.
        let mut s = settings(&server, "");
        s.secret_access_key = Some("wrong-secret-value".into());
        let e = S3BlobStore::open(&s)
            .await
            .err()
            .expect("bad credentials refused")
            .to_string();
        assert!(
            e.contains("refused the credentials") && e.contains(&server.endpoint),
            "{kind}: {e}"
        );
        assert!(!e.contains("wrong-secret-value"), "the secret leaked: {e}");
    }

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut s = settings(&server, "");
    s.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    let e = S3BlobStore::open(&s)
        .await
        .err()
        .expect("unreachable endpoint refused")
        .to_string();
    assert!(
        e.contains("cannot be reached") && e.contains(&format!("127.0.0.1:{port}")),
        "{kind}: {e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
}

async fn presigned_url_fetches_the_blob(kind: &str) {
    let server = start(kind).await;
    let store = S3BlobStore::open(&settings(&server, "signed")).await.unwrap();
    let data = bytes_of(510, 70_000);
    let digest = put_blob(&store, "up-signed", &data).await;
    let url = store
        .presigned_get(&digest, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(url.starts_with(&server.endpoint), "{url}");
    assert!(!url.contains(SECRET_KEY), "the secret is in the URL");
    let got = tokio::task::spawn_blocking(move || berth_testkit::clients::http::get(&url, &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, 200, "{kind}: {got:?}");
    assert!(got.body == data, "{kind}: presigned GET returned other bytes");
}

/// A cache fill's readers read the upload area; the commit removes it, and their reads
/// continue from the blob.
async fn upload_reader_keeps_reading_after_commit(kind: &str) {
    let server = start(kind).await;
    let store = S3BlobStore::open(&settings(&server, "")).await.unwrap();
    let data = bytes_of(520, 50_000);
    let id = uid("up-fill");
    store.create_upload(&id).await.unwrap();
    let mut sink = store
        .append(&id, 0, DigestHasher::new(Algorithm::Sha256))
        .await
        .unwrap();
    let progress = sink.progress();
    sink.write(Bytes::copy_from_slice(&data[..20_000])).await.unwrap();
    let (n, h) = sink.finish().await.unwrap();
    assert_eq!(*progress.borrow(), 20_000, "progress counts stored bytes");
    let reader = store.read_upload(&id).await.unwrap();
    assert!(reader.read_at(0, 1000).await.unwrap() == data[..1000]);
    let mut sink = store.append(&id, n, h).await.unwrap();
    sink.write(Bytes::copy_from_slice(&data[20_000..])).await.unwrap();
    let (_, h) = sink.finish().await.unwrap();
    // The reader sees bytes appended after it opened (a read may stop short at a part's
    // end, like a short pread).
    let first = reader.read_at(19_990, 100).await.unwrap();
    assert!(first.len() == 10 && first == data[19_990..20_000]);
    assert!(reader.read_at(20_000, 90).await.unwrap() == data[20_000..20_090]);
    store.commit_upload(&id, &h.finish()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let b = reader.read_at(got.len() as u64, 16_384).await.unwrap();
        assert!(
            !b.is_empty(),
            "{kind}: reader ended at {} after the commit",
            got.len()
        );
        got.extend_from_slice(&b);
    }
    assert!(got == data, "{kind}: bytes read across the commit differ");
    assert!(reader.read_at(data.len() as u64, 10).await.unwrap().is_empty());
}

async fn quarantine_moves_the_blob_out_of_service(kind: &str) {
    let server = start(kind).await;
    let store = S3BlobStore::open(&settings(&server, "q")).await.unwrap();
    let digest = put_blob(&store, "up-q", &bytes_of(530, 1000)).await;
    assert!(store.quarantine(&digest).await.unwrap());
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(
        !store.quarantine(&digest).await.unwrap(),
        "nothing left to quarantine"
    );
}

/// Bytes damaged in the bucket: `open_verified` ends in `InvalidData` and withholds the
/// last chunk.
async fn open_verified_withholds_the_end_of_damaged_bytes(kind: &str) {
    let server = start(kind).await;
    let store = S3BlobStore::open(&settings(&server, "v")).await.unwrap();
    let data = bytes_of(540, 1_500_000);
    let digest = put_blob(&store, "up-v", &data).await;
    let read = store.open_verified(&digest).await.unwrap().unwrap();
    let items: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(read.body).await;
    let good: Vec<u8> = items.into_iter().map(|i| i.unwrap()).collect::<Vec<_>>().concat();
    assert!(good == data);

    // Overwrite the blob object with other bytes of the same length.
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_region(REGION)
        .with_bucket_name(&server.bucket)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .build()
        .unwrap();
    let mut bad = data.clone();
    bad[1_000_000] ^= 1;
    s3.put(&Path::from(store.blob_key(&digest)), PutPayload::from(bad))
        .await
        .unwrap();
    let read = store.open_verified(&digest).await.unwrap().unwrap();
    let items: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(read.body).await;
    let last = items.last().expect("some items");
    assert!(
        matches!(last, Err(e) if e.kind() == std::io::ErrorKind::InvalidData),
        "{kind}: damaged bytes must end in InvalidData"
    );
    let served: usize = items
        .iter()
        .filter_map(|i| i.as_ref().ok())
        .map(|b| b.len())
        .sum();
    assert!(served < data.len(), "{kind}: the last chunk was withheld");
}

/// Every object under `prefix`, as (key, size), sorted.
async fn objects(server: &S3Server, prefix: &str) -> Vec<(String, u64)> {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_region(REGION)
        .with_bucket_name(&server.bucket)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .build()
        .unwrap();
    let mut all: Vec<(String, u64)> =
        futures_util::TryStreamExt::try_collect::<Vec<_>>(s3.list(Some(&Path::from(prefix))))
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
    all.sort();
    all
}

/// A push in one request (here larger than a multipart part) is one object in the upload
/// area, however large, so its commit is one server-side copy; an upload in two requests
/// is streamed into the blob at commit. Either way nothing but the blob is left behind
/// (no intermediate composition).
async fn one_request_is_one_object_and_commits_leave_only_the_blob(kind: &str) {
    let server = start(kind).await;
    let store = S3BlobStore::open(&settings(&server, "one")).await.unwrap();
    let data = bytes_of(550, (9 << 20) + 123);
    let digest = Digest::sha256_of(&data);

    let id = uid("up-one");
    store.create_upload(&id).await.unwrap();
    let mut sink = store
        .append(&id, 0, DigestHasher::new(Algorithm::Sha256))
        .await
        .unwrap();
    for c in data.chunks(1 << 20) {
        sink.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let (n, h) = sink.finish().await.unwrap();
    assert_eq!((n, h.finish()), (data.len() as u64, digest.clone()));
    let area = objects(&server, "one/uploads/up-one").await;
    let parts: Vec<_> = area.iter().filter(|(k, _)| k.contains("/p-")).collect();
    assert!(
        parts.len() == 1 && parts[0].1 == data.len() as u64,
        "{kind}: one request, one object: {area:?}"
    );
    store.commit_upload(&id, &digest).await.unwrap();
    assert_eq!(
        objects(&server, "one").await,
        vec![(store.blob_key(&digest), data.len() as u64)],
        "{kind}: only the blob is left"
    );
    assert!(
        read_bytes(&store, &digest, None).await.1 == data,
        "{kind}: copied bytes differ"
    );

    // Two requests: two objects, streamed into the blob at commit.
    let other = bytes_of(551, (6 << 20) + 7);
    let other_digest = Digest::sha256_of(&other);
    let id = uid("up-two");
    store.create_upload(&id).await.unwrap();
    let mut h = DigestHasher::new(Algorithm::Sha256);
    let mut at = 0;
    for piece in [&other[..5 << 20], &other[5 << 20..]] {
        let mut sink = store.append(&id, at, h).await.unwrap();
        sink.write(Bytes::copy_from_slice(piece)).await.unwrap();
        (at, h) = sink.finish().await.unwrap();
    }
    assert_eq!(h.finish(), other_digest);
    store.commit_upload(&id, &other_digest).await.unwrap();
    let mut want = vec![
        (store.blob_key(&digest), data.len() as u64),
        (store.blob_key(&other_digest), other.len() as u64),
    ];
    want.sort();
    assert_eq!(
        objects(&server, "one").await,
        want,
        "{kind}: only the blobs are left"
    );
    assert!(
        read_bytes(&store, &other_digest, None).await.1 == other,
        "{kind}: streamed bytes differ"
    );
}
