//! The [`BlobStore`] contract: every implementation must pass each function here.

use std::collections::BTreeSet;

use berth_oci::{Algorithm, Digest, DigestHasher, UploadId};
use berth_store::{BlobStore, ByteRange};
use bytes::Bytes;
use futures_util::StreamExt;

/// The most bytes one item of a read stream may carry (the filesystem store's read chunk;
/// every implementation keeps per-download memory bounded by the same figure).
pub const MAX_CHUNK: usize = berth_store::fs::READ_CHUNK;

/// Deterministic bytes, different for every `seed` (xorshift, so no two blobs in a test
/// share content or a digest).
pub fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

pub fn uid(s: &str) -> UploadId {
    UploadId::parse(s).expect("valid upload id")
}

fn sha256() -> DigestHasher {
    DigestHasher::new(Algorithm::Sha256)
}

fn hasher_over(bytes: &[u8]) -> DigestHasher {
    let mut h = sha256();
    h.update(bytes);
    h
}

/// Appends `chunks` at `offset` in one sink, starting from `hasher`; returns what
/// `finish` reports.
async fn append(
    store: &dyn BlobStore,
    id: &UploadId,
    offset: u64,
    hasher: DigestHasher,
    chunks: &[&[u8]],
) -> (u64, DigestHasher) {
    let mut sink = store.append(id, offset, hasher).await.expect("append");
    for c in chunks {
        sink.write(Bytes::copy_from_slice(c)).await.expect("sink write");
    }
    sink.finish().await.expect("sink finish")
}

/// Uploads `data` in one request and commits it; returns its digest.
pub async fn put_blob(store: &dyn BlobStore, id: &str, data: &[u8]) -> Digest {
    let id = uid(id);
    store.create_upload(&id).await.expect("create_upload");
    let (size, h) = append(store, &id, 0, sha256(), &[data]).await;
    assert_eq!(size, data.len() as u64);
    let digest = h.finish();
    assert_eq!(digest, Digest::sha256_of(data));
    store.commit_upload(&id, &digest).await.expect("commit_upload");
    digest
}

/// Every item of a read stream, errors included.
pub async fn read_items(
    store: &dyn BlobStore,
    digest: &Digest,
    range: Option<ByteRange>,
) -> (u64, Vec<std::io::Result<Bytes>>) {
    let read = store
        .open(digest, range)
        .await
        .expect("open")
        .expect("blob is present");
    (read.size, read.body.collect().await)
}

/// The chunks of a read that must succeed.
pub async fn read_chunks(
    store: &dyn BlobStore,
    digest: &Digest,
    range: Option<ByteRange>,
) -> (u64, Vec<Bytes>) {
    let (size, items) = read_items(store, digest, range).await;
    let chunks = items
        .into_iter()
        .map(|c| c.expect("stream item"))
        .collect::<Vec<_>>();
    for c in &chunks {
        assert!(
            c.len() <= MAX_CHUNK,
            "a chunk of {} bytes exceeds {MAX_CHUNK}",
            c.len()
        );
    }
    (size, chunks)
}

pub async fn read_bytes(store: &dyn BlobStore, digest: &Digest, range: Option<ByteRange>) -> (u64, Vec<u8>) {
    let (size, chunks) = read_chunks(store, digest, range).await;
    (size, chunks.concat())
}

pub fn range(start: u64, end: u64) -> Option<ByteRange> {
    Some(ByteRange { start, end })
}

async fn id_set(store: &dyn BlobStore) -> BTreeSet<String> {
    store
        .upload_ids()
        .await
        .expect("upload_ids")
        .iter()
        .map(|i| i.as_str().to_string())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// ---- The suite ----

pub async fn upload_in_chunks_reports_size_and_sha256(store: &dyn BlobStore) {
    let parts = [
        bytes_of(1, 1000),
        bytes_of(2, 1),
        bytes_of(3, 70_001),
        bytes_of(4, 4096),
    ];
    let all = parts.concat();
    let id = uid("up-chunks");
    store.create_upload(&id).await.unwrap();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let (size, h) = append(store, &id, 0, sha256(), &refs).await;
    assert_eq!(size, all.len() as u64);
    assert_eq!(h.finish(), Digest::sha256_of(&all));
    // Nothing is a blob until committed.
    assert_eq!(store.stat(&Digest::sha256_of(&all)).await.unwrap(), None);
    assert!(
        store
            .open(&Digest::sha256_of(&all), None)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn append_resumes_from_returned_hash_state(store: &dyn BlobStore) {
    // Three PATCH requests: each starts where the previous one ended, with its hasher.
    let (a, b, c) = (bytes_of(10, 3000), bytes_of(11, 17), bytes_of(12, 9000));
    let id = uid("up-resume");
    store.create_upload(&id).await.unwrap();
    let (s1, h1) = append(store, &id, 0, sha256(), &[&a]).await;
    assert_eq!(s1, 3000);
    let (s2, h2) = append(store, &id, s1, h1, &[&b]).await;
    assert_eq!(s2, 3017);
    let (s3, h3) = append(store, &id, s2, h2, &[&c[..4000], &c[4000..]]).await;
    assert_eq!(s3, 12_017);
    let all = [a, b, c].concat();
    let digest = h3.finish();
    assert_eq!(digest, Digest::sha256_of(&all));
    store.commit_upload(&id, &digest).await.unwrap();
    assert_eq!(read_bytes(store, &digest, None).await, (all.len() as u64, all));
}

pub async fn append_at_offset_discards_the_tail(store: &dyn BlobStore) {
    // An interrupted request left 100 bytes; only the first 50 were acknowledged.
    let first = bytes_of(20, 100);
    let again = bytes_of(21, 30);
    let id = uid("up-interrupted");
    store.create_upload(&id).await.unwrap();
    let (size, _) = append(store, &id, 0, sha256(), &[&first]).await;
    assert_eq!(size, 100);

    let (size, h) = append(store, &id, 50, hasher_over(&first[..50]), &[&again]).await;
    assert_eq!(size, 80, "50 kept bytes + 30 new ones");
    let expected = [&first[..50], &again[..]].concat();
    let digest = h.finish();
    assert_eq!(digest, Digest::sha256_of(&expected));
    // The area itself holds exactly those bytes, nothing of the discarded tail.
    let rehash = store.hash_upload(&id, 80, sha256()).await.unwrap();
    assert_eq!(rehash.finish(), digest);
    assert!(
        store.hash_upload(&id, 81, sha256()).await.is_err(),
        "tail was not discarded"
    );
    store.commit_upload(&id, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(80));
    assert_eq!(read_bytes(store, &digest, None).await, (80, expected));

    // Appending at offset 0 of a used area starts over.
    let id = uid("up-restart");
    store.create_upload(&id).await.unwrap();
    append(store, &id, 0, sha256(), &[&bytes_of(22, 500)]).await;
    let fresh = bytes_of(23, 10);
    let (size, h) = append(store, &id, 0, sha256(), &[&fresh]).await;
    assert_eq!(size, 10);
    assert_eq!(h.finish(), Digest::sha256_of(&fresh));
}

pub async fn append_to_missing_upload_fails(store: &dyn BlobStore) {
    assert!(store.append(&uid("never-created"), 0, sha256()).await.is_err());
    assert!(
        id_set(store).await.is_empty(),
        "a failed append must not create an area"
    );
}

pub async fn hash_upload_rehashes_a_prefix(store: &dyn BlobStore) {
    let data = bytes_of(30, 200_000);
    let id = uid("up-rehash");
    store.create_upload(&id).await.unwrap();
    append(store, &id, 0, sha256(), &[&data]).await;
    for len in [0usize, 1, 120, 199_999, 200_000] {
        let h = store.hash_upload(&id, len as u64, sha256()).await.unwrap();
        assert_eq!(
            h.finish(),
            Digest::sha256_of(&data[..len]),
            "prefix of {len} bytes"
        );
    }
    // The hasher passed in is continued, not replaced.
    let prefix = b"already hashed elsewhere";
    let h = store.hash_upload(&id, 1000, hasher_over(prefix)).await.unwrap();
    assert_eq!(
        h.finish(),
        Digest::sha256_of(&[&prefix[..], &data[..1000]].concat())
    );
}

pub async fn hash_upload_fails_when_area_is_short(store: &dyn BlobStore) {
    let data = bytes_of(31, 64);
    let id = uid("up-short");
    store.create_upload(&id).await.unwrap();
    append(store, &id, 0, sha256(), &[&data]).await;
    assert!(store.hash_upload(&id, 65, sha256()).await.is_err());
    assert!(store.hash_upload(&id, 1 << 20, sha256()).await.is_err());
    assert!(
        store
            .hash_upload(&uid("no-such-area"), 0, sha256())
            .await
            .is_err()
    );
    // The failed calls changed nothing.
    let h = store.hash_upload(&id, 64, sha256()).await.unwrap();
    assert_eq!(h.finish(), Digest::sha256_of(&data));
}

pub async fn commit_moves_upload_into_place(store: &dyn BlobStore) {
    let data = bytes_of(40, 12_345);
    let id = uid("up-commit");
    store.create_upload(&id).await.unwrap();
    store.create_upload(&uid("up-bystander")).await.unwrap();
    let (size, h) = append(store, &id, 0, sha256(), &[&data[..5000], &data[5000..]]).await;
    let digest = h.finish();
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    store.commit_upload(&id, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(size));
    assert_eq!(
        id_set(store).await,
        set(&["up-bystander"]),
        "the committed area is gone"
    );
    let (whole_size, bytes) = read_bytes(store, &digest, None).await;
    assert_eq!(whole_size, 12_345);
    assert!(bytes == data, "stored bytes differ from uploaded ones");
    assert!(
        store.append(&id, 0, sha256()).await.is_err(),
        "the area no longer exists"
    );
}

pub async fn commit_of_missing_area_fails(store: &dyn BlobStore) {
    let digest = Digest::sha256_of(b"never uploaded");
    assert!(store.commit_upload(&uid("no-such-area"), &digest).await.is_err());
    assert_eq!(store.stat(&digest).await.unwrap(), None, "no blob appears");
    assert!(store.open(&digest, None).await.unwrap().is_none());
}

pub async fn open_streams_exact_ranges(store: &dyn BlobStore) {
    let data = bytes_of(50, 10_000);
    let digest = put_blob(store, "up-ranges", &data).await;
    let n = data.len() as u64;
    for (start, end) in [
        (0, 0),
        (1, 1),
        (4321, 6789),
        (n - 1, n - 1),
        (0, n - 1),
        (n - 2, n - 1),
    ] {
        let (size, bytes) = read_bytes(store, &digest, range(start, end)).await;
        assert_eq!(size, n, "size is the whole blob's, not the range's");
        assert_eq!(bytes.len() as u64, end - start + 1, "range {start}-{end}");
        assert!(
            bytes == data[start as usize..=end as usize],
            "range {start}-{end} returned other bytes"
        );
    }
}

pub async fn empty_blob_round_trips(store: &dyn BlobStore) {
    let digest = put_blob(store, "up-empty", b"").await;
    assert_eq!(digest, Digest::sha256_of(b""));
    assert_eq!(store.stat(&digest).await.unwrap(), Some(0));
    let (size, items) = read_items(store, &digest, None).await;
    assert_eq!(size, 0);
    assert!(
        items.iter().all(|i| matches!(i, Ok(b) if b.is_empty())),
        "empty blob stream yields no bytes and no error"
    );
}

pub async fn committing_same_digest_twice_keeps_bytes(store: &dyn BlobStore) {
    // Two clients push the same layer concurrently; both commits succeed.
    let data = bytes_of(60, 3333);
    let d1 = put_blob(store, "up-twice-1", &data).await;
    let d2 = put_blob(store, "up-twice-2", &data).await;
    assert_eq!(d1, d2);
    assert_eq!(store.stat(&d1).await.unwrap(), Some(3333));
    assert_eq!(read_bytes(store, &d1, None).await, (3333, data));
    assert!(id_set(store).await.is_empty());
}

pub async fn missing_blob_is_none(store: &dyn BlobStore) {
    let present = put_blob(store, "up-present", &bytes_of(70, 10)).await;
    let missing = Digest::sha256_of(b"never stored");
    assert_eq!(store.stat(&missing).await.unwrap(), None);
    assert!(store.open(&missing, None).await.unwrap().is_none());
    assert!(store.open(&missing, range(0, 0)).await.unwrap().is_none());
    assert_eq!(store.stat(&present).await.unwrap(), Some(10));
}

pub async fn abort_upload_removes_area_and_is_idempotent(store: &dyn BlobStore) {
    let id = uid("up-abort");
    store.create_upload(&id).await.unwrap();
    append(store, &id, 0, sha256(), &[&bytes_of(80, 777)]).await;
    store.create_upload(&uid("up-keep")).await.unwrap();
    store.abort_upload(&id).await.unwrap();
    assert_eq!(id_set(store).await, set(&["up-keep"]));
    assert!(store.hash_upload(&id, 0, sha256()).await.is_err(), "area is gone");
    assert!(store.append(&id, 0, sha256()).await.is_err(), "area is gone");
    store.abort_upload(&id).await.expect("aborting twice is fine");
    store
        .abort_upload(&uid("never-created"))
        .await
        .expect("aborting a missing area is fine");
    assert_eq!(id_set(store).await, set(&["up-keep"]));
}

pub async fn upload_ids_lists_every_area(store: &dyn BlobStore) {
    assert!(id_set(store).await.is_empty());
    for id in ["a1", "B-2", "c-3-long-0123456789abcdef"] {
        store.create_upload(&uid(id)).await.unwrap();
    }
    append(store, &uid("a1"), 0, sha256(), &[b"abc"]).await;
    assert_eq!(
        id_set(store).await,
        set(&["a1", "B-2", "c-3-long-0123456789abcdef"])
    );
    store.abort_upload(&uid("B-2")).await.unwrap();
    store
        .commit_upload(&uid("a1"), &Digest::sha256_of(b"abc"))
        .await
        .unwrap();
    assert_eq!(id_set(store).await, set(&["c-3-long-0123456789abcdef"]));
    // Creating an existing area again leaves a single entry.
    store
        .create_upload(&uid("c-3-long-0123456789abcdef"))
        .await
        .unwrap();
    assert_eq!(store.upload_ids().await.unwrap().len(), 1);
}

pub async fn delete_is_idempotent(store: &dyn BlobStore) {
    let keep = put_blob(store, "up-keep", &bytes_of(90, 100)).await;
    let gone = put_blob(store, "up-gone", &bytes_of(91, 100)).await;
    store.delete(&gone).await.unwrap();
    assert_eq!(store.stat(&gone).await.unwrap(), None);
    assert!(store.open(&gone, None).await.unwrap().is_none());
    store.delete(&gone).await.expect("deleting twice is fine");
    store
        .delete(&Digest::sha256_of(b"never stored"))
        .await
        .expect("deleting a missing blob is fine");
    assert_eq!(store.stat(&keep).await.unwrap(), Some(100));
    assert_eq!(read_bytes(store, &keep, None).await.1, bytes_of(90, 100));
}

pub async fn check_writable_succeeds(store: &dyn BlobStore) {
    store.check_writable().await.unwrap();
    store.check_writable().await.expect("repeatable");
    assert!(
        id_set(store).await.is_empty(),
        "the probe leaves no upload area behind"
    );
}

pub async fn large_blob_round_trips_in_bounded_chunks(store: &dyn BlobStore) {
    let len = 3 * (1 << 20) + 12_345;
    let data = bytes_of(100, len);
    let id = uid("up-large");
    store.create_upload(&id).await.unwrap();
    let uneven: Vec<&[u8]> = data.chunks(100_003).collect();
    let (size, h) = append(store, &id, 0, sha256(), &uneven).await;
    assert_eq!(size, len as u64);
    let digest = h.finish();
    assert_eq!(digest, Digest::sha256_of(&data));
    store.commit_upload(&id, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(len as u64));

    let (whole, chunks) = read_chunks(store, &digest, None).await;
    assert_eq!(whole, len as u64);
    assert!(chunks.len() >= len.div_ceil(MAX_CHUNK), "{} chunks", chunks.len());
    assert!(chunks.concat() == data, "large blob bytes differ");

    // A range spanning two chunk boundaries, and the tail.
    let (s, e) = (MAX_CHUNK as u64 - 7, 2 * MAX_CHUNK as u64 + 9);
    let (_, bytes) = read_bytes(store, &digest, range(s, e)).await;
    assert!(
        bytes == data[s as usize..=e as usize],
        "cross-chunk range differs"
    );
    let (s, e) = (len as u64 - MAX_CHUNK as u64 - 1, len as u64 - 1);
    let (_, bytes) = read_bytes(store, &digest, range(s, e)).await;
    assert!(bytes == data[s as usize..], "tail range differs");
}
