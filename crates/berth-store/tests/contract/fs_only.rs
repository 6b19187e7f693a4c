//! Checks of the filesystem blob store that reach behind the trait: its on-disk layout,
//! damage done to its files, and what opening the store does to the directories.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use berth_oci::{Algorithm, Digest, DigestHasher};
use berth_store::BlobStore;
use berth_store::fs::FsBlobStore;
use bytes::Bytes;

use crate::blob::{MAX_CHUNK, bytes_of, put_blob, range, read_bytes, read_items, uid};

/// `blobs/sha256/<first two hex>/<hex>`, spelled out independently of `blob_path`.
fn committed_file(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open committed file")
        .set_len(len)
        .expect("truncate committed file");
}

async fn fs_store() -> (tempfile::TempDir, FsBlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).await.unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_blob_layout_is_by_algorithm_and_hex_prefix() {
    let (dir, store) = fs_store().await;
    let data = bytes_of(200, 4000);
    let digest = put_blob(&store, "layout", &data).await;
    let path = committed_file(dir.path(), &digest);
    assert_eq!(store.blob_path(&digest), path);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(!dir.path().join("uploads").join("layout").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_truncated_blob_stream_errors_instead_of_ending_early() {
    let (dir, store) = fs_store().await;
    let data = bytes_of(201, 1000);
    let digest = put_blob(&store, "short", &data).await;
    truncate(&committed_file(dir.path(), &digest), 400);

    // All 1000 recorded bytes requested: the 400 present arrive, then an error.
    let (_, items) = read_items(&store, &digest, range(0, 999)).await;
    let ok: Vec<u8> = items
        .iter()
        .take_while(|i| i.is_ok())
        .flat_map(|i| i.as_ref().unwrap().to_vec())
        .collect();
    assert_eq!(ok, data[..400], "the bytes present are served as they are");
    assert!(
        items.last().is_some_and(|i| i.is_err()),
        "stream ended without an error after {} of 1000 bytes",
        ok.len()
    );
    let err = items.into_iter().find_map(|i| i.err()).unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);

    // A range entirely beyond what is left: no bytes, only the error.
    let (_, items) = read_items(&store, &digest, range(500, 999)).await;
    assert!(
        matches!(items.as_slice(), [Err(_)]),
        "expected a single error item, got {} items",
        items.len()
    );

    // A range inside what is left still reads fine.
    let (_, bytes) = read_bytes(&store, &digest, range(100, 399)).await;
    assert_eq!(bytes, data[100..400]);

    // stat reports what is really on disk, so the caller can compare with its records.
    assert_eq!(store.stat(&digest).await.unwrap(), Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_truncated_large_blob_errors_after_partial_chunk() {
    let (dir, store) = fs_store().await;
    let len = 3 * (1 << 20);
    let data = bytes_of(202, len);
    let digest = put_blob(&store, "short-large", &data).await;
    let cut = MAX_CHUNK + 90_000;
    truncate(&committed_file(dir.path(), &digest), cut as u64);

    let (_, items) = read_items(&store, &digest, range(0, len as u64 - 1)).await;
    let (ok, errs): (Vec<_>, Vec<_>) = items.into_iter().partition(|i| i.is_ok());
    let ok: Vec<Bytes> = ok.into_iter().map(|i| i.unwrap()).collect();
    assert!(ok.iter().all(|c| c.len() <= MAX_CHUNK));
    assert!(ok.concat() == data[..cut], "bytes before the cut differ");
    assert_eq!(errs.len(), 1, "exactly one error, at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_open_empties_tmp_but_keeps_uploads_and_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = bytes_of(203, 5000);
    let partial = bytes_of(204, 2500);
    let digest = {
        let store = FsBlobStore::open(root).await.unwrap();
        for d in ["blobs", "uploads", "tmp"] {
            assert!(root.join(d).is_dir(), "{d}/ created on open");
        }
        let digest = put_blob(&store, "done", &data).await;
        let id = uid("in-flight");
        store.create_upload(&id).await.unwrap();
        let mut sink = store
            .append(&id, 0, DigestHasher::new(Algorithm::Sha256))
            .await
            .unwrap();
        sink.write(Bytes::copy_from_slice(&partial)).await.unwrap();
        sink.finish().await.unwrap();
        digest
    };
    // Scratch left behind by a crash: a file and a nested directory.
    std::fs::write(root.join("tmp").join("scratch"), b"junk").unwrap();
    std::fs::create_dir_all(root.join("tmp").join("nested").join("deeper")).unwrap();
    std::fs::write(root.join("tmp").join("nested").join("deeper").join("f"), b"junk").unwrap();

    let store = FsBlobStore::open(root).await.unwrap();
    let tmp = root.join("tmp");
    assert!(tmp.is_dir(), "tmp/ exists after open");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "tmp/ is empty after open"
    );

    let ids: Vec<String> = store
        .upload_ids()
        .await
        .unwrap()
        .iter()
        .map(|i| i.as_str().to_string())
        .collect();
    assert_eq!(ids, ["in-flight"]);
    let h = store
        .hash_upload(&uid("in-flight"), 2500, DigestHasher::new(Algorithm::Sha256))
        .await
        .unwrap();
    assert_eq!(
        h.finish(),
        Digest::sha256_of(&partial),
        "upload area survives reopening"
    );
    assert_eq!(read_bytes(&store, &digest, None).await, (5000, data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_upload_ids_skips_foreign_file_names() {
    let (dir, store) = fs_store().await;
    store.create_upload(&uid("real-1")).await.unwrap();
    // Not an id this store issues: must not be reported (nor break the listing).
    std::fs::write(dir.path().join("uploads").join("not an id.part"), b"x").unwrap();
    let ids: Vec<String> = store
        .upload_ids()
        .await
        .unwrap()
        .iter()
        .map(|i| i.as_str().to_string())
        .collect();
    assert_eq!(ids, ["real-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_recommit_heals_a_damaged_blob() {
    // The registry answers "unknown" for a blob whose bytes are damaged, so the client
    // uploads it again: that commit must replace the damaged file.
    let (dir, store) = fs_store().await;
    let data = bytes_of(205, 70_000);
    let digest = put_blob(&store, "first", &data).await;
    truncate(&committed_file(dir.path(), &digest), 123);
    assert_eq!(store.stat(&digest).await.unwrap(), Some(123));
    assert_eq!(put_blob(&store, "second", &data).await, digest);
    assert_eq!(store.stat(&digest).await.unwrap(), Some(70_000));
    assert_eq!(read_bytes(&store, &digest, None).await, (70_000, data));
}
