//! Checks of the SQLite metadata store that reach behind the trait: the database file.

use berth_store::sqlite::SqliteMeta;
use berth_store::{BlobMeta, MetaStore, Removal};

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

/// A database made before versioned migrations (tables, no `schema_migrations`) opens as
/// schema version 1 and keeps its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_from_before_migrations_opens_as_version_1() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        // The statements the code before migrations ran at every start.
        sqlx::raw_sql(include_str!("../../migrations/sqlite/0001_initial.sql"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO blobs(digest, size, created_at) VALUES (?, 5, 1)")
            .bind(blob("old").to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let store = SqliteMeta::open(&path)
        .await
        .expect("open a pre-migration database");
    assert_eq!(store.blob_size(&blob("old")).await.unwrap(), Some(5));
    drop(store);
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    // Recorded as version 1, then brought up to date.
    assert_eq!(versions, [1, 2, 3]);
}
