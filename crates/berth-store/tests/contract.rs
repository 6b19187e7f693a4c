//! Contract tests for the storage traits.
//!
//! "Narrow traits, one contract suite each; every implementation passes the same tests."
//! Each suite in [`blob`] and [`meta`] is a set of async functions over `&dyn BlobStore` or
//! `&dyn MetaStore`. The macros below turn every suite function into one `#[tokio::test]`
//! per implementation, so a new backend (an S3 blob store, a PostgreSQL metadata store)
//! adds one `blob_store_contract!` or `meta_store_contract!` line and a constructor.
//! Checks that need to reach behind the trait (the files of the filesystem store) live in
//! [`fs_only`], [`s3_only`], [`sqlite_only`] and [`postgres_only`]. The blob suite runs on
//! the filesystem, on s3s-fs served inside the test process and on moto's server (a
//! separate Python process); the metadata suite on SQLite and PostgreSQL.

#[path = "contract/blob.rs"]
mod blob;
#[path = "contract/fs_only.rs"]
mod fs_only;
#[path = "contract/meta.rs"]
mod meta;
#[path = "contract/postgres_only.rs"]
mod postgres_only;
#[path = "contract/s3_only.rs"]
mod s3_only;
#[path = "contract/sqlite_only.rs"]
mod sqlite_only;

use std::any::Any;

use berth_store::fs::FsBlobStore;
use berth_store::postgres::PgMeta;
use berth_store::s3::{S3BlobStore, S3Settings};
use berth_store::sqlite::SqliteMeta;
use berth_store::{BlobStore, MetaStore};

/// Whatever a store needs kept alive for the length of a test (a temporary directory).
pub type Guard = Box<dyn Any + Send>;

/// Instantiates the whole [`blob`] suite for one implementation. `$make` is an async fn
/// returning `(Guard, Box<dyn BlobStore>)`, a fresh empty store per test.
macro_rules! blob_store_contract {
    ($backend:ident, $make:path) => {
        mod $backend {
            blob_store_contract!(@tests $make;
                upload_in_chunks_reports_size_and_sha256,
                append_resumes_from_returned_hash_state,
                append_at_offset_discards_the_tail,
                append_to_missing_upload_fails,
                hash_upload_rehashes_a_prefix,
                hash_upload_fails_when_area_is_short,
                commit_moves_upload_into_place,
                commit_of_missing_area_fails,
                open_streams_exact_ranges,
                empty_blob_round_trips,
                committing_same_digest_twice_keeps_bytes,
                missing_blob_is_none,
                abort_upload_removes_area_and_is_idempotent,
                upload_ids_lists_every_area,
                delete_is_idempotent,
                check_writable_succeeds,
                large_blob_round_trips_in_bounded_chunks,
            );
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_guard, store) = $make().await;
                crate::blob::$name(&*store).await;
            }
        )*
    };
}

/// Instantiates the whole [`meta`] suite for one implementation. `$make` is an async fn
/// returning `(Guard, Box<dyn MetaStore>)`, a fresh empty store per test.
macro_rules! meta_store_contract {
    ($backend:ident, $make:path) => {
        mod $backend {
            meta_store_contract!(@tests $make;
                commit_blob_is_visible_in_its_repo_only,
                commit_blob_is_idempotent,
                commit_blob_closes_its_upload,
                link_blob_from_a_repo_requires_a_link_there,
                link_blob_from_anywhere_needs_a_known_blob,
                unlink_blob_done_then_not_found,
                unlink_blob_refused_while_a_manifest_references_it,
                put_manifest_reports_each_missing_ref_once_and_writes_nothing,
                put_manifest_needs_refs_linked_in_the_same_repo,
                put_manifest_skips_non_required_refs,
                put_manifest_stores_exact_bytes,
                put_manifest_with_child_manifests,
                tag_upsert_moves_the_tag,
                re_put_of_same_manifest_is_idempotent,
                manifests_are_scoped_to_their_repo,
                delete_tag_removes_only_the_tag,
                delete_manifest_outcomes,
                delete_manifest_refused_while_an_index_lists_it,
                tags_paginate_in_lexical_order,
                repositories_list_only_repos_with_manifests,
                repository_summaries_aggregate_per_repository,
                cached_tags_list_only_cached_repositories,
                referrers_with_and_without_artifact_type,
                upload_rows_lifecycle,
                upload_hash_state_is_valid_for_its_size_only,
                uploads_idle_since_compares_last_activity,
                ping_succeeds,
                concurrent_put_manifest_to_distinct_tags,
                job_lock_is_exclusive_until_dropped,
                fill_lock_waits_for_the_holder,
                gc_sweeps_what_nothing_keeps_and_dry_run_matches,
                tag_details_and_untagged_before,
                touch_tag_moves_the_checked_time,
                integrity_queries_page_and_resolve,
            );
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn row_copy_into_a_fresh_store() {
                let (_from_guard, from) = $make().await;
                let (_to_guard, to) = $make().await;
                crate::meta::row_copy_into_a_fresh_store(&*from, &*to).await;
            }
        }
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_guard, store) = $make().await;
                crate::meta::$name(&*store).await;
            }
        )*
    };
}

// ---- Implementations under contract ----

pub async fn fs_blob_store() -> (Guard, Box<dyn BlobStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsBlobStore::open(dir.path()).await.expect("open FsBlobStore");
    (Box::new(dir), Box::new(store))
}

pub async fn sqlite_meta_store() -> (Guard, Box<dyn MetaStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteMeta::open(&dir.path().join("meta.db"))
        .await
        .expect("open SqliteMeta");
    (Box::new(dir), Box::new(store))
}

/// The S3 store on `server`, keys under `prefix`.
async fn s3_store(server: berth_testkit::s3::S3Server, prefix: &str) -> (Guard, Box<dyn BlobStore>) {
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: berth_testkit::s3::REGION.to_string(),
        bucket: server.bucket.clone(),
        prefix: prefix.to_string(),
        access_key_id: Some(berth_testkit::s3::ACCESS_KEY.to_string()),
        secret_access_key: Some(berth_testkit::s3::SECRET_KEY.to_string()),
        allow_http: true,
        // As over HTTPS; `contract/s3_only.rs` signs them.
        sign_payload: false,
    };
    let store = S3BlobStore::open(&settings)
        .await
        .unwrap_or_else(|e| panic!("open S3BlobStore on {}: {e}", server.kind));
    (Box::new(server), Box::new(store))
}

pub async fn s3s_blob_store() -> (Guard, Box<dyn BlobStore>) {
    s3_store(berth_testkit::s3::S3Server::s3s_fs(), "").await
}

pub async fn moto_blob_store() -> (Guard, Box<dyn BlobStore>) {
    let server = tokio::task::spawn_blocking(berth_testkit::s3::S3Server::moto)
        .await
        .expect("start moto");
    s3_store(server, "berth/registry").await
}

/// A fresh database in this test process's private PostgreSQL cluster
/// (`berth_testkit::postgres`), migrated by `PgMeta::connect`.
pub async fn postgres_meta_store() -> (Guard, Box<dyn MetaStore>) {
    let url = tokio::task::spawn_blocking(|| berth_testkit::postgres::PgCluster::shared().create_database())
        .await
        .expect("create a database");
    let store = PgMeta::connect(&url).await.expect("open PgMeta");
    (Box::new(()), Box::new(store))
}

blob_store_contract!(fs_blob, crate::fs_blob_store);
blob_store_contract!(s3s_blob, crate::s3s_blob_store);
blob_store_contract!(moto_blob, crate::moto_blob_store);
meta_store_contract!(sqlite_meta, crate::sqlite_meta_store);
meta_store_contract!(postgres_meta, crate::postgres_meta_store);

/// `berth migrate-storage` copies rows across backends: SQLite to PostgreSQL and back,
/// each step carrying every row as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_copy_sqlite_to_postgres_and_back() {
    let (_g1, sqlite) = sqlite_meta_store().await;
    let (_g2, pg) = postgres_meta_store().await;
    meta::row_copy_into_a_fresh_store(&*sqlite, &*pg).await;
    let (_g3, back) = sqlite_meta_store().await;
    // `pg` holds one more blob now (written after its copy): the round trip carries it too.
    meta::copy_rows(&*pg, &*back).await;
    for table in berth_store::COPIED_TABLES {
        assert_eq!(
            meta::all_rows(&*back, table).await,
            meta::all_rows(&*pg, table).await,
            "{} differs after PostgreSQL -> SQLite",
            table.name
        );
    }
}
