//! Checks of the PostgreSQL metadata store that need more than one store: two pools on one
//! database stand for two replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use berth_store::postgres::PgMeta;
use berth_store::{Coordination, MetaStore};
use berth_testkit::postgres::PgCluster;

use crate::meta::{Man, blob, by_tag, commit, put_ok, repo};

async fn two_replicas() -> (String, PgMeta, PgMeta) {
    let url = tokio::task::spawn_blocking(|| PgCluster::shared().create_database())
        .await
        .unwrap();
    let a = PgMeta::connect(&url).await.expect("replica a");
    // The second connects to an already migrated database: the migration is a no-op.
    let b = PgMeta::connect(&url).await.expect("replica b");
    (url, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_job_lock_is_held_across_replicas() {
    let (_, a, b) = two_replicas().await;
    let held = a.try_lock_job("gc").await.unwrap().expect("a takes gc");
    assert!(
        b.try_lock_job("gc").await.unwrap().is_none(),
        "b is refused while a holds it"
    );
    assert!(
        b.try_lock_job("retention").await.unwrap().is_some(),
        "other jobs stay free"
    );
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.try_lock_job("gc").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got gc after a dropped it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fill_lock_admits_one_replica_at_a_time() {
    let (_, a, b) = two_replicas().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let digest = blob("one upstream fetch");
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (digest, inside, most) = (digest.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let _guard = store.lock_fill(&digest).await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("every waiter is admitted in turn")
            .unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
}

/// How many advisory locks are held in `url`'s database, and by how many sessions.
async fn advisory_locks(url: &str) -> (i64, i64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let row: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    row
}

/// Garbage collection on one replica and a commit of the same digest on another both
/// take the digest's bytes stripe: the second waits until the first lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bytes_locks_exclude_across_replicas() {
    let (url, a, b) = two_replicas().await;
    // Given unsorted and with a repeat, as a batch of a collection might be.
    let held = a.lock_bytes(&[40, 5, 63, 5]).await.unwrap();
    assert_eq!(
        advisory_locks(&url).await,
        (3, 1),
        "three stripes, held on one connection"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.lock_bytes(&[40]))
            .await
            .is_err(),
        "b must wait for a stripe a holds"
    );
    let other = tokio::time::timeout(Duration::from_secs(10), b.lock_bytes(&[6]))
        .await
        .expect("a stripe nobody holds is free")
        .unwrap();
    drop(other);
    let b = Arc::new(b);
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock_bytes(&[63, 40]).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "still waiting while a holds them");
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("granted once a released them")
        .unwrap();
    drop(got);
}

/// Two replicas taking overlapping sets of stripes in opposite orders never deadlock:
/// each set is taken in ascending order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bytes_locks_in_any_order_do_not_deadlock() {
    let (_, a, b) = two_replicas().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let set: Vec<u32> = if i % 2 == 0 { vec![1, 2, 3] } else { vec![3, 2, 1] };
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let _g = store.lock_bytes(&set).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("no deadlock")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upload_lock_is_held_across_replicas() {
    let (_, a, b) = two_replicas().await;
    let (one, two) = (
        berth_oci::UploadId::parse("7d1c0a5e-one").unwrap(),
        berth_oci::UploadId::parse("7d1c0a5e-two").unwrap(),
    );
    let held = a.try_lock_upload(&one).await.unwrap().expect("a takes it");
    assert!(
        b.try_lock_upload(&one).await.unwrap().is_none(),
        "b is refused while a writes"
    );
    assert!(
        b.try_lock_upload(&two).await.unwrap().is_some(),
        "another upload is free"
    );
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.try_lock_upload(&one).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got the upload after a let go"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_of_a_dead_replica_is_released() {
    // A replica that dies takes its sessions with it; here the guard's connection closes
    // with no runtime left to unlock politely.
    let (url, a, b) = two_replicas().await;
    let held = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let replica = rt.block_on(PgMeta::connect(&url)).unwrap();
        let guard = rt.block_on(replica.try_lock_job("scrub")).unwrap().expect("free");
        drop(rt);
        guard
    })
    .join()
    .unwrap();
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.try_lock_job("scrub").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dead holder's lock stayed held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_see_each_others_writes() {
    let (_, a, b) = two_replicas().await;
    let app = repo("team/app");
    let config = commit(&a, &app, "config", 3).await;
    let layer = commit(&b, &app, "layer", 4).await;
    let m = Man::image("shared", &config, &[&layer]);
    put_ok(&a, &app, &m, Some("v1")).await;
    assert_eq!(by_tag(&b, &app, "v1").await.unwrap().body, m.body);
    let b: &dyn MetaStore = &b;
    assert_eq!(b.blob_size(&config).await.unwrap(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connect_errors_name_what_failed() {
    let cluster = tokio::task::spawn_blocking(PgCluster::shared).await.unwrap();
    let wrong_password = format!("postgres://berth:wrong@127.0.0.1:{}/postgres", cluster.port);
    let err = PgMeta::connect(&wrong_password)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    let missing_db = cluster.url("no_such_database");
    let err = PgMeta::connect(&missing_db)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("no_such_database") && err.contains("does not exist"),
        "{err}"
    );
}

/// GC on one replica while another pushes: whatever the interleaving, no stored manifest
/// references a blob that is not linked in its repository (a push that lost its links to
/// the collection is refused as `Missing`, never half written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gc_on_one_replica_while_another_pushes() {
    use berth_store::{BlobMeta, IntegrityMeta, LifecycleMeta, PutManifest};
    let (_, a, b) = two_replicas().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (a, done) = (a.clone(), done.clone());
        tokio::spawn(async move {
            let mut runs = 0u32;
            while !done.load(Ordering::SeqCst) && runs < 500 {
                // Rows written at 10 are older than the cutoff, rows written at 5000 newer.
                a.collect_garbage(&[], 2000, 2000, false).await.expect("gc");
                runs += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            runs
        })
    };
    let app = repo("team/app");
    let (mut stored, mut refused) = (0, 0);
    for i in 0..30 {
        // Every other push writes its blobs after the cutoff (it must be stored); the rest
        // race the collection for their links.
        let now = if i % 2 == 0 { 5000 } else { 10 };
        let (config, layer) = (blob(&format!("config-{i}")), blob(&format!("layer-{i}")));
        b.commit_blob(&app, &config, 1, None, now).await.unwrap();
        b.commit_blob(&app, &layer, 2, None, now).await.unwrap();
        let m = Man::image(&format!("m{i}"), &config, &[&layer]);
        let t: berth_oci::Tag = format!("t{i}").parse().unwrap();
        let out = crate::meta::put(&*b, &app, &m, Some(&t), 1000).await;
        match out {
            PutManifest::Stored => stored += 1,
            PutManifest::Missing(_) => refused += 1,
        }
    }
    done.store(true, Ordering::SeqCst);
    let runs = tokio::time::timeout(Duration::from_secs(60), gc)
        .await
        .unwrap()
        .unwrap();
    assert!(
        runs > 0 && stored > 0,
        "runs {runs}, stored {stored}, refused {refused}"
    );
    let mut after = None;
    let mut checked = 0;
    loop {
        let page = a.refs_page(after.clone(), 100).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.repo.clone(), last.parent.clone(), last.child.clone()));
        for r in page {
            let repo = repo(&r.repo);
            assert!(
                a.repo_blob_size(&repo, &r.child).await.unwrap().is_some(),
                "{} references {} ({}), which is not linked",
                r.parent,
                r.child,
                r.kind
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        stored * 2,
        "every stored manifest kept its two references"
    );
    eprintln!("gc runs {runs}, pushes stored {stored}, refused {refused}");
}
