//! Checks of the SQLite metadata store that reach behind the trait: the database file.

use berth_store::sqlite::SqliteMeta;
use berth_store::{MetaStore, Removal};

use crate::meta::{IMAGE, Man, assert_row, blob, by_digest, by_tag, commit, put_ok, repo, repos, tags, uid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let app = repo("team/app");
    let m = Man::image("persisted", &blob("config"), &[&blob("layer")]);
    let index = Man::with_refs("unrelated", IMAGE, vec![]);
    {
        let store = SqliteMeta::open(&path).await.unwrap();
        let store: &dyn MetaStore = &store;
        commit(store, &app, "config", 11).await;
        commit(store, &app, "layer", 22).await;
        put_ok(store, &app, &m, Some("v1")).await;
        put_ok(store, &app, &index, None).await;
        store.create_upload(&uid("pending"), &app, 500).await.unwrap();
        store.set_upload_size(&uid("pending"), 64, 600).await.unwrap();
    }
    let store = SqliteMeta::open(&path)
        .await
        .expect("reopen an existing database");
    let store: &dyn MetaStore = &store;
    assert_eq!(
        store.repo_blob_size(&app, &blob("config")).await.unwrap(),
        Some(11)
    );
    assert_eq!(store.blob_size(&blob("layer")).await.unwrap(), Some(22));
    assert_row(&by_tag(store, &app, "v1").await.unwrap(), &m);
    assert_row(&by_digest(store, &app, &index.digest).await.unwrap(), &index);
    assert_eq!(tags(store, &app).await, ["v1"]);
    assert_eq!(repos(store).await, ["team/app"]);
    let row = store
        .upload(&uid("pending"))
        .await
        .unwrap()
        .expect("upload row survives");
    assert_eq!((row.size, row.started_at, row.last_activity), (64, 500, 600));
    assert_eq!(
        store.unlink_blob(&app, &blob("layer")).await.unwrap(),
        Removal::ReferencedBy(m.digest.clone()),
        "manifest references survive too"
    );
    // Still writable after reopening.
    let again = Man::with_refs("after-reopen", IMAGE, vec![]);
    put_ok(store, &app, &again, Some("v2")).await;
    assert_eq!(tags(store, &app).await, ["v1", "v2"]);
}
