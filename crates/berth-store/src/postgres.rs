//! The shared metadata store: PostgreSQL through sqlx, for several replicas over one
//! database.
//!
//! The guarantees are SQLite's. SQLite gets them by having one writer at a time; here
//! every multi-statement write runs `SERIALIZABLE` (so its outcome is that of some serial
//! order: a manifest row is written only if every reference it needs was present in the
//! same snapshot and stays so) and is retried when PostgreSQL reports a serialization
//! failure or a deadlock. Garbage collection is one long serializable transaction run
//! under an advisory lock that every write transaction takes shared and collection takes
//! exclusively, so a collection never loses to a stream of small writes and no write runs
//! alongside its mark and sweep; the dry run rolls that transaction back.

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, RepoName, Tag, UploadId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Postgres, Row, Transaction};

use crate::meta::*;
use crate::migrate;
use crate::{Deletion, StorageStats, TagInfo};
use crate::{Result, StoreError};

/// Connections per process for queries (coordination locks have their own).
const POOL_SIZE: u32 = 16;
/// How long the first connection may take at startup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of a write transaction that keeps losing serialization conflicts.
const MAX_ATTEMPTS: u32 = 20;

pub struct PgMeta {
    pool: PgPool,
    /// For coordination locks: each guard holds a connection of its own, outside the pool,
    /// so held or awaited locks never take the connections queries need.
    opts: PgConnectOptions,
    /// Lock connections whose lock was released cleanly, kept for the next lock (a new
    /// connection costs a TLS and SCRAM handshake). A connection whose wait was cancelled
    /// is closed instead, so no lock request outlives its caller.
    idle_locks: Arc<StdMutex<Vec<PgConnection>>>,
    /// The one session holding every upload lock of this process: they are only tried,
    /// never waited for, so they can share it (the registry never asks twice for one
    /// upload at once), where a connection per request writing to an upload would use up
    /// the server's connections under many concurrent pushes.
    upload_locks: Arc<tokio::sync::Mutex<UploadLocks>>,
}

/// The upload locks' session, and which one it is (a broken session is replaced; the locks
/// it held went with it, and must not be unlocked on its successor).
#[derive(Default)]
struct UploadLocks {
    conn: Option<PgConnection>,
    session: u64,
}

/// Lock connections kept idle at most.
const IDLE_LOCK_CONNECTIONS: usize = 8;

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored digest {s:?}: {e}")))
}

/// A 64-bit advisory lock key for `name` in `space`: the first 8 bytes of its SHA-256.
fn lock_key(space: &str, name: &str) -> i64 {
    let d = Digest::sha256_of(format!("berth/{space}/{name}").as_bytes());
    let hex = &d.to_string()["sha256:".len()..][..16];
    u64::from_str_radix(hex, 16).expect("hex digest") as i64
}

/// Taken shared by every write transaction and exclusively by garbage collection.
fn writes_key() -> i64 {
    lock_key("meta", "writes")
}

/// Whether PostgreSQL aborted a transaction only because of concurrent ones, so running it
/// again can succeed: serialization failure (40001) or deadlock (40P01).
fn is_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001") | Some("40P01"))
        }
        _ => false,
    }
}

/// Runs `once` until it does not fail with a conflict, at most [`MAX_ATTEMPTS`] times,
/// backing off a little longer (with jitter) each time.
async fn retrying<T, F, Fut>(mut once: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match once().await {
            Err(e) if is_conflict(&e) && attempt + 1 < MAX_ATTEMPTS => {
                attempt += 1;
                let jitter = u64::from(std::process::id() ^ attempt.wrapping_mul(2654435761)) % 5;
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2 + jitter)).await;
            }
            r => return r,
        }
    }
}

/// Where a connection string points, without its password, for error messages.
pub fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

/// [`describe`] for a connection string (`None` if it does not parse).
pub fn describe_url(url: &str) -> Option<String> {
    PgConnectOptions::from_str(url).ok().map(|o| describe(&o))
}

/// Checks that `url` is a PostgreSQL connection string sqlx accepts, without connecting.
pub fn check_url(url: &str) -> Result<()> {
    PgConnectOptions::from_str(url)?;
    Ok(())
}

impl PgMeta {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) and brings the schema up to
    /// date.
    pub async fn connect(url: &str) -> Result<PgMeta> {
        let opts = PgConnectOptions::from_str(url)?.application_name("berth");
        PgMeta::connect_with(opts).await
    }

    pub async fn connect_with(opts: PgConnectOptions) -> Result<PgMeta> {
        // One plain connection first: the pool retries until its timeout and then reports
        // only that it timed out, where this says why (refused, unknown host, credentials,
        // missing database).
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from PostgreSQL within {}s", CONNECT_TIMEOUT.as_secs()),
                )
            })??;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.clone())
            .await?;
        migrate_pg(&pool).await?;
        // Lock connections wait on purpose (a replica waiting for another's fill): that is
        // not a slow statement worth a warning.
        let opts = opts.disable_statement_logging();
        Ok(PgMeta {
            pool,
            opts,
            idle_locks: Arc::default(),
            upload_locks: Arc::default(),
        })
    }

    /// A serializable write transaction, holding the writes lock shared.
    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(writes_key())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn lock_connection(&self) -> Result<PgConnection> {
        loop {
            let idle = self.idle_locks.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut conn) = idle else {
                return Ok(PgConnection::connect_with(&self.opts).await?);
            };
            // One that went stale while idle (a server restart) is dropped, not used.
            if conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
    }

    /// Puts back a lock connection that holds no lock.
    fn keep_idle(&self, conn: PgConnection) {
        let mut idle = self.idle_locks.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_LOCK_CONNECTIONS {
            idle.push(conn);
        }
    }

    fn held(&self, conn: PgConnection, keys: Vec<i64>) -> LockGuard {
        LockGuard::releasing(PgLockHeld {
            conn: Some(conn),
            keys,
            idle: Arc::downgrade(&self.idle_locks),
        })
    }
}

/// Brings the schema up to date (see [`crate::migrate`]); replicas starting together take
/// turns on an advisory lock.
async fn migrate_pg(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key("meta", "migrate"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(migrate::CREATE_TABLE).execute(&mut *tx).await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for m in migrate::pending(migrate::POSTGRES, &applied)? {
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations(version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(migrate::now())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn ensure_repo(tx: &mut Transaction<'static, Postgres>, repo: &RepoName, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO repositories(name, kind, created_at) VALUES ($1, 'hosted', $2) ON CONFLICT DO NOTHING",
    )
    .bind(repo.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn link(
    tx: &mut Transaction<'static, Postgres>,
    repo: &RepoName,
    digest: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO repo_blobs(repo, digest, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(repo.as_str())
    .bind(digest)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const BLOB_PARENT: &str =
    "SELECT parent FROM manifest_refs WHERE repo = $1 AND child = $2 AND kind IN ('config', 'layer') LIMIT 1";
const MANIFEST_PARENT: &str =
    "SELECT parent FROM manifest_refs WHERE repo = $1 AND child = $2 AND kind = 'manifest' LIMIT 1";

async fn first_parent(
    tx: &mut Transaction<'static, Postgres>,
    query: &'static str,
    repo: &str,
    child: &str,
) -> Result<Option<Digest>> {
    let parent: Option<String> = sqlx::query_scalar(query)
        .bind(repo)
        .bind(child)
        .fetch_optional(&mut **tx)
        .await?;
    parent.as_deref().map(parse_digest).transpose()
}

fn manifest_row(row: PgRow) -> Result<ManifestRow> {
    let subject: Option<String> = row.get(2);
    Ok(ManifestRow {
        digest: parse_digest(row.get(0))?,
        media_type: row.get(1),
        subject: subject.as_deref().map(parse_digest).transpose()?,
        body: row.get(3),
        tag_checked_at: row.try_get(5).ok(),
        last_pulled: row.get(4),
    })
}

impl PgMeta {
    async fn commit_blob_once(
        &self,
        repo: &RepoName,
        d: &str,
        size: u64,
        upload: Option<&UploadId>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        ensure_repo(&mut tx, repo, now).await?;
        sqlx::query("INSERT INTO blobs(digest, size, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(d)
            .bind(size as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        link(&mut tx, repo, d, now).await?;
        if let Some(id) = upload {
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn link_blob_once(
        &self,
        repo: &RepoName,
        d: &str,
        from: Option<&RepoName>,
        now: i64,
    ) -> Result<Option<u64>> {
        let mut tx = self.write_tx().await?;
        let size: Option<i64> = match from {
            Some(from) => {
                sqlx::query_scalar(
                    "SELECT b.size FROM repo_blobs r JOIN blobs b ON b.digest = r.digest
                 WHERE r.repo = $1 AND r.digest = $2 FOR SHARE",
                )
                .bind(from.as_str())
                .bind(d)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => {
                sqlx::query_scalar("SELECT size FROM blobs WHERE digest = $1 FOR SHARE")
                    .bind(d)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        let Some(size) = size else {
            return Ok(None);
        };
        ensure_repo(&mut tx, repo, now).await?;
        link(&mut tx, repo, d, now).await?;
        tx.commit().await?;
        Ok(Some(size as u64))
    }

    async fn unlink_blob_once(&self, repo: &str, d: &str) -> Result<Removal> {
        let mut tx = self.write_tx().await?;
        let linked: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo = $1 AND digest = $2 FOR UPDATE")
                .bind(repo)
                .bind(d)
                .fetch_optional(&mut *tx)
                .await?;
        if linked.is_none() {
            return Ok(Removal::NotFound);
        }
        if let Some(p) = first_parent(&mut tx, BLOB_PARENT, repo, d).await? {
            return Ok(Removal::ReferencedBy(p));
        }
        let r = sqlx::query("DELETE FROM repo_blobs WHERE repo = $1 AND digest = $2")
            .bind(repo)
            .bind(d)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if r.rows_affected() > 0 {
            Removal::Done
        } else {
            Removal::NotFound
        })
    }
}

#[async_trait]
impl BlobMeta for PgMeta {
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload: Option<&UploadId>,
        now: i64,
    ) -> Result<()> {
        let d = digest.to_string();
        retrying(|| self.commit_blob_once(repo, &d, size, upload, now)).await
    }

    async fn repo_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repo_blobs r JOIN blobs b ON b.digest = r.digest WHERE r.repo = $1 AND r.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        now: i64,
    ) -> Result<Option<u64>> {
        let d = digest.to_string();
        retrying(|| self.link_blob_once(repo, &d, from, now)).await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Removal> {
        let d = digest.to_string();
        retrying(|| self.unlink_blob_once(repo.as_str(), &d)).await
    }
}

impl PgMeta {
    async fn put_manifest_once(&self, m: &NewManifest<'_>, d: &str) -> Result<PutManifest> {
        let repo = m.repo.as_str();
        let mut tx = self.write_tx().await?;
        let mut missing = Vec::new();
        for r in m.refs.iter().filter(|r| r.required && m.require_refs) {
            // FOR SHARE: a concurrent unlink or delete of what this manifest needs waits
            // for this transaction, then sees the new reference and refuses.
            let present: Option<i32> = if r.kind == berth_oci::RefKind::Manifest {
                sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2 FOR SHARE")
            } else {
                sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo = $1 AND digest = $2 FOR SHARE")
            }
            .bind(repo)
            .bind(r.digest.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if present.is_none() && !missing.contains(&r.digest) {
                missing.push(r.digest.clone());
            }
        }
        if !missing.is_empty() {
            return Ok(PutManifest::Missing(missing));
        }
        ensure_repo(&mut tx, m.repo, m.now).await?;
        let inserted = sqlx::query(
            "INSERT INTO manifests(repo, digest, media_type, artifact_type, subject, annotations, size, body, pushed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(repo)
        .bind(d)
        .bind(m.media_type)
        .bind(m.artifact_type)
        .bind(m.subject.map(|s| s.to_string()))
        .bind(m.annotations.as_deref())
        .bind(m.body.len() as i64)
        .bind(m.body)
        .bind(m.now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 && !m.refs.is_empty() {
            // One statement for every reference: an image with many layers is one round trip.
            let children: Vec<String> = m.refs.iter().map(|r| r.digest.to_string()).collect();
            let kinds: Vec<&str> = m.refs.iter().map(|r| r.kind.as_str()).collect();
            sqlx::query(
                "INSERT INTO manifest_refs(repo, parent, child, kind)
                 SELECT $1, $2, c, k FROM UNNEST($3::text[], $4::text[]) AS u(c, k) ON CONFLICT DO NOTHING",
            )
            .bind(repo)
            .bind(d)
            .bind(children)
            .bind(kinds)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(tag) = m.tag {
            sqlx::query(
                "INSERT INTO tags(repo, name, digest, updated_at, upstream_checked_at) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT(repo, name) DO UPDATE SET digest = excluded.digest,
                   updated_at = excluded.updated_at, upstream_checked_at = excluded.upstream_checked_at",
            )
            .bind(repo)
            .bind(tag.as_str())
            .bind(d)
            .bind(m.now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(PutManifest::Stored)
    }

    async fn delete_manifest_once(&self, repo: &str, d: &str) -> Result<Removal> {
        let mut tx = self.write_tx().await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2 FOR UPDATE")
                .bind(repo)
                .bind(d)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(Removal::NotFound);
        }
        if let Some(p) = first_parent(&mut tx, MANIFEST_PARENT, repo, d).await? {
            return Ok(Removal::ReferencedBy(p));
        }
        for stmt in [
            "DELETE FROM tags WHERE repo = $1 AND digest = $2",
            "DELETE FROM manifest_refs WHERE repo = $1 AND parent = $2",
            "DELETE FROM manifests WHERE repo = $1 AND digest = $2",
        ] {
            sqlx::query(stmt).bind(repo).bind(d).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Removal::Done)
    }
}

#[async_trait]
impl ManifestMeta for PgMeta {
    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<PutManifest> {
        let d = m.digest.to_string();
        retrying(|| self.put_manifest_once(&m, &d)).await
    }

    async fn manifest_by_digest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRow>> {
        sqlx::query(
            "SELECT digest, media_type, subject, body, last_pulled FROM manifests WHERE repo = $1 AND digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(manifest_row)
        .transpose()
    }

    async fn manifest_by_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<ManifestRow>> {
        sqlx::query(
            "SELECT m.digest, m.media_type, m.subject, m.body, m.last_pulled,
                    COALESCE(t.upstream_checked_at, t.updated_at) FROM tags t
             JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest
             WHERE t.repo = $1 AND t.name = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(manifest_row)
        .transpose()
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let r = sqlx::query("DELETE FROM tags WHERE repo = $1 AND name = $2")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn touch_tag(&self, repo: &RepoName, tag: &Tag, now: i64) -> Result<()> {
        sqlx::query("UPDATE tags SET upstream_checked_at = $1 WHERE repo = $2 AND name = $3")
            .bind(now)
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_cached(&self, repo: &RepoName, upstream: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO repositories(name, kind, upstream, created_at) VALUES ($1, 'cached', $2, $3)
             ON CONFLICT(name) DO UPDATE SET kind = 'cached', upstream = excluded.upstream",
        )
        .bind(repo.as_str())
        .bind(upstream)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Removal> {
        let d = digest.to_string();
        retrying(|| self.delete_manifest_once(repo.as_str(), &d)).await
    }

    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        let r: Option<i32> = sqlx::query_scalar("SELECT 1 FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM tags WHERE repo = $1 AND name > $2 ORDER BY name LIMIT $3")
                .bind(repo.as_str())
                .bind(last.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM repositories r WHERE name > $1
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo = r.name) ORDER BY name LIMIT $2",
        )
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
             WHERE repo = $1 AND subject = $2 AND ($3::text IS NULL OR artifact_type = $3) ORDER BY digest",
        )
        .bind(repo.as_str())
        .bind(subject.to_string())
        .bind(artifact_type)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Referrer {
                    digest: parse_digest(r.get(0))?,
                    media_type: r.get(1),
                    size: r.get::<i64, _>(2) as u64,
                    artifact_type: r.get(3),
                    annotations: r.get(4),
                })
            })
            .collect()
    }
}

#[async_trait]
impl UploadMeta for PgMeta {
    async fn create_upload(&self, id: &UploadId, repo: &RepoName, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads(id, repo, size, started_at, last_activity) VALUES ($1, $2, 0, $3, $3)",
        )
        .bind(id.as_str())
        .bind(repo.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn upload(&self, id: &UploadId) -> Result<Option<UploadRow>> {
        let row = sqlx::query(
            "SELECT repo, size, started_at, last_activity, CASE WHEN hash_size = size THEN hash_state END
             FROM uploads WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let repo: String = r.get(0);
            Ok(UploadRow {
                id: id.clone(),
                repo: repo
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("stored repository name {repo:?}: {e}")))?,
                size: r.get::<i64, _>(1) as u64,
                started_at: r.get(2),
                last_activity: r.get(3),
                hash_state: r.get(4),
            })
        })
        .transpose()
    }

    async fn set_upload_size(&self, id: &UploadId, size: u64, now: i64) -> Result<()> {
        sqlx::query("UPDATE uploads SET size = $1, last_activity = $2 WHERE id = $3")
            .bind(size as i64)
            .bind(now)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn save_upload_state(&self, id: &UploadId, size: u64, hash_state: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE uploads SET size = $1, hash_size = $1, hash_state = $2, last_activity = $3 WHERE id = $4",
        )
        .bind(size as i64)
        .bind(hash_state)
        .bind(now)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn uploads_idle_since(&self, before: i64) -> Result<Vec<UploadId>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM uploads WHERE last_activity < $1")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.iter().filter_map(|s| UploadId::parse(s)).collect())
    }
}

const CACHED_BYTES: &str = "SELECT SUM(size)::BIGINT FROM blobs WHERE digest IN
    (SELECT l.digest FROM repo_blobs l JOIN repositories k ON k.name = l.repo WHERE k.kind = 'cached')";

/// The mark, as in SQLite. PostgreSQL allows one self-reference in the recursive term, so
/// index children and referrers are reached through one lateral union.
const GC_MARK: &str = "INSERT INTO gc_live(repo, digest)
    WITH RECURSIVE live(repo, digest) AS (
        SELECT repo, digest FROM tags
        UNION SELECT m.repo, m.digest FROM manifests m LEFT JOIN repositories k ON k.name = m.repo
              WHERE m.pushed_at > CASE k.kind WHEN 'cached' THEN $2 ELSE $1 END
        UNION SELECT n.repo, n.digest FROM live l CROSS JOIN LATERAL (
              SELECT r.repo, r.child AS digest FROM manifest_refs r
                  WHERE r.repo = l.repo AND r.parent = l.digest AND r.kind = 'manifest'
              UNION ALL SELECT m.repo, m.digest FROM manifests m
                  WHERE m.repo = l.repo AND m.subject = l.digest) n
    )
    SELECT repo, digest FROM live ON CONFLICT DO NOTHING";
const GC_DEAD_MANIFESTS: &str = "SELECT repo, digest, size FROM manifests m
    WHERE NOT EXISTS (SELECT 1 FROM gc_live g WHERE g.repo = m.repo AND g.digest = m.digest)
    ORDER BY repo, digest";
const GC_SWEEP_REFS: &str = "DELETE FROM manifest_refs r
    WHERE NOT EXISTS (SELECT 1 FROM gc_live g WHERE g.repo = r.repo AND g.digest = r.parent)";
const GC_SWEEP_MANIFESTS: &str = "DELETE FROM manifests m
    WHERE NOT EXISTS (SELECT 1 FROM gc_live g WHERE g.repo = m.repo AND g.digest = m.digest)";
const GC_SWEEP_LINKS: &str = "DELETE FROM repo_blobs l
    WHERE created_at <= (SELECT CASE k.kind WHEN 'cached' THEN $2 ELSE $1 END
                        FROM repositories k WHERE k.name = l.repo)
    AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = l.repo AND r.child = l.digest)";
const GC_SWEEP_BLOBS: &str = "DELETE FROM blobs b WHERE created_at <= GREATEST($1, $2)
    AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
    AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = b.digest)
    RETURNING digest, size";

/// One attempt at a collection, in one serializable transaction on `conn`.
async fn gc_once(
    conn: &mut PgConnection,
    first: &[Deletion],
    hosted: i64,
    cached: i64,
    dry_run: bool,
) -> Result<GcReport> {
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
    let mut deleted_first = Vec::new();
    for d in first {
        match d {
            Deletion::Tag { repo, tag } => {
                sqlx::query("DELETE FROM tags WHERE repo = $1 AND name = $2")
                    .bind(repo)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
            }
            Deletion::Manifest { repo, digest } => {
                let size: Option<i64> = sqlx::query_scalar(
                    "DELETE FROM manifests WHERE repo = $1 AND digest = $2
                         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo = $1 AND t.digest = $2)
                         AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                                         WHERE r.repo = $1 AND r.child = $2 AND r.kind = 'manifest')
                         RETURNING size",
                )
                .bind(repo)
                .bind(digest.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(size) = size {
                    deleted_first.push((repo.clone(), digest.clone(), size as u64));
                }
            }
        }
    }
    sqlx::query(
        "CREATE TEMP TABLE gc_live(repo TEXT COLLATE \"C\" NOT NULL, digest TEXT COLLATE \"C\" NOT NULL,
             PRIMARY KEY(repo, digest)) ON COMMIT DROP",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(GC_MARK)
        .bind(hosted)
        .bind(cached)
        .execute(&mut *tx)
        .await?;
    // The mark's statistics, so the anti-joins below use its index on a large registry.
    sqlx::query("ANALYZE gc_live").execute(&mut *tx).await?;
    let mut report = GcReport {
        manifests: deleted_first,
        ..GcReport::default()
    };
    for row in sqlx::query(GC_DEAD_MANIFESTS).fetch_all(&mut *tx).await? {
        let repo: String = row.get(0);
        let digest = parse_digest(row.get(1))?;
        report.manifests.push((repo, digest, row.get::<i64, _>(2) as u64));
    }
    sqlx::query(GC_SWEEP_REFS).execute(&mut *tx).await?;
    sqlx::query(GC_SWEEP_MANIFESTS).execute(&mut *tx).await?;
    report.links = sqlx::query(GC_SWEEP_LINKS)
        .bind(hosted)
        .bind(cached)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for row in sqlx::query(GC_SWEEP_BLOBS)
        .bind(hosted)
        .bind(cached)
        .fetch_all(&mut *tx)
        .await?
    {
        report
            .blobs
            .push((parse_digest(row.get(0))?, row.get::<i64, _>(1) as u64));
    }
    report.blobs.sort();
    let cached: Option<i64> = sqlx::query_scalar(CACHED_BYTES).fetch_one(&mut *tx).await?;
    report.cached_bytes_after = cached.unwrap_or(0) as u64;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(report)
}

#[async_trait]
impl LifecycleMeta for PgMeta {
    async fn collect_garbage(
        &self,
        first: &[Deletion],
        hosted: i64,
        cached: i64,
        dry_run: bool,
    ) -> Result<GcReport> {
        // The writes lock, exclusive, on a connection of its own and taken before the
        // transaction begins, so the transaction's snapshot already holds every write that
        // finished before it and no write transaction (in any replica) runs alongside, as
        // SQLite's writers wait for its one write transaction. Only single-row timestamp
        // updates run alongside; one that touches a swept row aborts the attempt, and the
        // collection runs again under the same lock.
        let mut conn = self.lock_connection().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(writes_key())
            .execute(&mut conn)
            .await?;
        let mut attempt = 0;
        let report = loop {
            match gc_once(&mut conn, first, hosted, cached, dry_run).await {
                Err(e) if is_conflict(&e) && attempt + 1 < MAX_ATTEMPTS => attempt += 1,
                r => break r,
            }
        };
        let unlocked: std::result::Result<bool, _> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(writes_key())
            .fetch_one(&mut conn)
            .await;
        if let Ok(true) = unlocked {
            self.keep_idle(conn);
        } else {
            // Closing the session releases the lock whatever state it is in.
            let _ = conn.close().await;
        }
        report
    }

    async fn repositories_by_kind(&self) -> Result<Vec<(String, bool)>> {
        let rows = sqlx::query("SELECT name, kind = 'cached' FROM repositories ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn tag_details(&self, repo: &str) -> Result<Vec<TagInfo>> {
        let rows = sqlx::query(
            "SELECT t.name, t.digest, t.updated_at, m.last_pulled FROM tags t
             LEFT JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest
             WHERE t.repo = $1 ORDER BY t.updated_at DESC, t.seq DESC",
        )
        .bind(repo)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TagInfo {
                    name: r.get(0),
                    digest: parse_digest(r.get(1))?,
                    updated_at: r.get(2),
                    last_pulled: r.get(3),
                })
            })
            .collect()
    }

    async fn untagged_before(&self, repo: &str, before: i64) -> Result<Vec<Digest>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE live(digest) AS (
                 SELECT digest FROM tags WHERE repo = $1
                 UNION SELECT n.digest FROM live l CROSS JOIN LATERAL (
                     SELECT r.child AS digest FROM manifest_refs r
                         WHERE r.repo = $1 AND r.parent = l.digest AND r.kind = 'manifest'
                     UNION ALL SELECT m.digest FROM manifests m WHERE m.repo = $1 AND m.subject = l.digest) n
             )
             SELECT digest FROM manifests WHERE repo = $1 AND pushed_at < $2
             AND digest NOT IN (SELECT digest FROM live) ORDER BY digest",
        )
        .bind(repo)
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|d| parse_digest(d)).collect()
    }

    async fn touch_pulled(&self, repo: &RepoName, digest: &Digest, now: i64) -> Result<()> {
        sqlx::query("UPDATE manifests SET last_pulled = $1 WHERE repo = $2 AND digest = $3")
            .bind(now)
            .bind(repo.as_str())
            .bind(digest.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn cached_bytes(&self) -> Result<u64> {
        let n: Option<i64> = sqlx::query_scalar(CACHED_BYTES).fetch_one(&self.pool).await?;
        Ok(n.unwrap_or(0) as u64)
    }

    async fn recorded_among(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let list: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        let rows: Vec<String> = sqlx::query_scalar("SELECT digest FROM blobs WHERE digest = ANY($1)")
            .bind(list)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|d| parse_digest(d)).collect()
    }
}

impl PgMeta {
    async fn drop_blob_once(&self, d: &str) -> Result<()> {
        let mut tx = self.write_tx().await?;
        // The blob row first: a concurrent link_blob holds it FOR SHARE, so the links are
        // deleted only after that link is committed (and then deleted too).
        for stmt in [
            "DELETE FROM blobs WHERE digest = $1",
            "DELETE FROM repo_blobs WHERE digest = $1",
        ] {
            sqlx::query(stmt).bind(d).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl IntegrityMeta for PgMeta {
    async fn blobs_page(&self, after: Option<&Digest>, limit: u32) -> Result<Vec<(Digest, u64)>> {
        let rows = sqlx::query("SELECT digest, size FROM blobs WHERE digest > $1 ORDER BY digest LIMIT $2")
            .bind(after.map(|d| d.to_string()).unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((parse_digest(r.get(0))?, r.get::<i64, _>(1) as u64)))
            .collect()
    }

    async fn mark_verified(&self, digest: &Digest, now: i64) -> Result<()> {
        sqlx::query("UPDATE blobs SET verified_at = $1 WHERE digest = $2")
            .bind(now)
            .bind(digest.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn links_of(&self, digest: &Digest) -> Result<Vec<(String, bool)>> {
        let rows = sqlx::query(
            "SELECT l.repo, COALESCE(k.kind = 'cached', false) FROM repo_blobs l
             LEFT JOIN repositories k ON k.name = l.repo WHERE l.digest = $1 ORDER BY l.repo",
        )
        .bind(digest.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn refs_page(&self, after: Option<(String, Digest, Digest)>, limit: u32) -> Result<Vec<RefRow>> {
        let (repo, parent, child) = after
            .map(|(r, p, c)| (r, p.to_string(), c.to_string()))
            .unwrap_or_default();
        let rows = sqlx::query(
            "SELECT r.repo, r.parent, r.child, r.kind, COALESCE(k.kind = 'cached', false) FROM manifest_refs r
             LEFT JOIN repositories k ON k.name = r.repo
             WHERE (r.repo, r.parent, r.child) > ($1, $2, $3) ORDER BY r.repo, r.parent, r.child LIMIT $4",
        )
        .bind(repo)
        .bind(parent)
        .bind(child)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RefRow {
                    repo: r.get(0),
                    parent: parse_digest(r.get(1))?,
                    child: parse_digest(r.get(2))?,
                    kind: r.get(3),
                    cached: r.get(4),
                })
            })
            .collect()
    }

    async fn all_tags(&self) -> Result<Vec<(String, String, Digest, bool)>> {
        let rows = sqlx::query(
            "SELECT t.repo, t.name, t.digest, COALESCE(k.kind = 'cached', false) FROM tags t
             LEFT JOIN repositories k ON k.name = t.repo ORDER BY t.repo, t.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.get(0), r.get(1), parse_digest(r.get(2))?, r.get(3))))
            .collect()
    }

    async fn usages(&self, digest: &Digest) -> Result<Vec<Usage>> {
        let rows = sqlx::query(
            "SELECT r.repo, r.parent,
               (SELECT string_agg(name, ',') FROM (
                  SELECT t.name FROM tags t WHERE t.repo = r.repo AND t.digest = r.parent
                  UNION SELECT t.name FROM tags t JOIN manifest_refs i
                        ON i.repo = t.repo AND i.parent = t.digest AND i.kind = 'manifest'
                        WHERE i.repo = r.repo AND i.child = r.parent) n)
             FROM manifest_refs r WHERE r.child = $1 ORDER BY r.repo, r.parent",
        )
        .bind(digest.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let tags: Option<String> = r.get(2);
                Ok(Usage {
                    repo: r.get(0),
                    manifest: parse_digest(r.get(1))?,
                    tags: tags
                        .map(|t| t.split(',').map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn storage_stats(&self) -> Result<StorageStats> {
        let mut st = StorageStats::default();
        for kind in ["hosted", "cached"] {
            let row = sqlx::query(
                "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE digest IN
                 (SELECT l.digest FROM repo_blobs l JOIN repositories k ON k.name = l.repo WHERE k.kind = $1)",
            )
            .bind(kind)
            .fetch_one(&self.pool)
            .await?;
            let manifests: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM manifests m JOIN repositories k ON k.name = m.repo WHERE k.kind = $1",
            )
            .bind(kind)
            .fetch_one(&self.pool)
            .await?;
            let (blobs, bytes) = (row.get::<i64, _>(0) as u64, row.get::<i64, _>(1) as u64);
            if kind == "hosted" {
                (st.hosted_blobs, st.hosted_bytes, st.hosted_manifests) = (blobs, bytes, manifests as u64);
            } else {
                (st.cached_blobs, st.cached_bytes, st.cached_manifests) = (blobs, bytes, manifests as u64);
            }
        }
        st.uploads = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM uploads")
            .fetch_one(&self.pool)
            .await? as u64;
        Ok(st)
    }

    async fn drop_blob(&self, digest: &Digest) -> Result<()> {
        let d = digest.to_string();
        retrying(|| self.drop_blob_once(&d)).await
    }
}

/// Advisory locks held on a connection of their own. Dropping it unlocks them and puts the
/// connection back (or closes it) on the runtime; closing alone would release the locks too
/// (a session's advisory locks end with it), which is also what happens when a replica dies.
struct PgLockHeld {
    conn: Option<PgConnection>,
    keys: Vec<i64>,
    idle: Weak<StdMutex<Vec<PgConnection>>>,
}

/// Unlocks `keys` on `conn`, then keeps the connection for the next lock or closes it.
async fn unlock(mut conn: PgConnection, keys: Vec<i64>, idle: Weak<StdMutex<Vec<PgConnection>>>) {
    // Every key in one statement; true only if each was held and is released.
    let unlocked: std::result::Result<Option<bool>, _> =
        sqlx::query_scalar("SELECT bool_and(pg_advisory_unlock(k)) FROM unnest($1::bigint[]) AS k")
            .bind(&keys)
            .fetch_one(&mut conn)
            .await;
    match (unlocked, idle.upgrade()) {
        (Ok(Some(true)), Some(idle)) => {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < IDLE_LOCK_CONNECTIONS {
                idle.push(conn);
                return;
            }
        }
        (Err(e), _) => {
            tracing::warn!(error = %e, "releasing an advisory lock failed; closing its session releases it")
        }
        _ => {}
    }
    let _ = conn.close().await;
}

#[async_trait]
impl Release for PgLockHeld {
    async fn release(mut self: Box<Self>) {
        if let Some(conn) = self.conn.take() {
            let keys = std::mem::take(&mut self.keys);
            unlock(conn, keys, self.idle.clone()).await;
        }
    }
}

impl Drop for PgLockHeld {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let (keys, idle) = (std::mem::take(&mut self.keys), self.idle.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(unlock(conn, keys, idle));
        }
        // Without a runtime the connection is dropped here: its session ends and with it
        // the locks.
    }
}

#[async_trait]
impl Coordination for PgMeta {
    async fn try_lock_job(&self, job: &str) -> Result<Option<LockGuard>> {
        let key = lock_key("job", job);
        let mut conn = self.lock_connection().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            self.keep_idle(conn);
            return Ok(None);
        }
        Ok(Some(self.held(conn, vec![key])))
    }

    async fn lock_fill(&self, digest: &Digest) -> Result<LockGuard> {
        let key = lock_key("fill", &digest.to_string());
        // If this future is dropped while PostgreSQL makes it wait, the connection is
        // dropped with it, and the server forgets the request with the session.
        let mut conn = self.lock_connection().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await?;
        Ok(self.held(conn, vec![key]))
    }

    async fn lock_bytes(&self, stripes: &[u32]) -> Result<LockGuard> {
        let mut stripes = stripes.to_vec();
        stripes.sort_unstable();
        stripes.dedup();
        // One connection for the whole set (a batch of a collection may need every stripe),
        // one statement per stripe so they are taken strictly in order. If this future is
        // dropped while waiting, the connection goes with it and so do the locks taken so far.
        let mut conn = self.lock_connection().await?;
        let mut keys = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            let key = lock_key("bytes", &stripe.to_string());
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut conn)
                .await?;
            keys.push(key);
        }
        Ok(self.held(conn, keys))
    }

    async fn try_lock_upload(&self, id: &UploadId) -> Result<Option<LockGuard>> {
        let key = lock_key("upload", id.as_str());
        let mut locks = self.upload_locks.lock().await;
        if locks.conn.is_none() {
            locks.conn = Some(PgConnection::connect_with(&self.opts).await?);
            locks.session += 1;
        }
        let conn = locks.conn.as_mut().expect("connected above");
        let got = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(conn)
            .await;
        match got {
            Ok(true) => Ok(Some(LockGuard::releasing(UploadLockHeld {
                locks: Some(self.upload_locks.clone()),
                session: locks.session,
                key,
            }))),
            Ok(false) => Ok(None),
            Err(e) => {
                // Replaced at the next call; its locks end with it.
                locks.conn = None;
                Err(e.into())
            }
        }
    }
}

/// An upload lock held on the shared upload-locks session.
struct UploadLockHeld {
    locks: Option<Arc<tokio::sync::Mutex<UploadLocks>>>,
    session: u64,
    key: i64,
}

impl UploadLockHeld {
    async fn unlock(locks: Arc<tokio::sync::Mutex<UploadLocks>>, session: u64, key: i64) {
        let mut locks = locks.lock().await;
        if locks.session != session {
            return;
        }
        let Some(conn) = locks.conn.as_mut() else {
            return;
        };
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .fetch_one(conn)
            .await;
        if !matches!(unlocked, Ok(true)) {
            // Closing the session is the sure way to release it (with the other upload
            // locks of this process: a writer then loses only its protection).
            tracing::warn!(?unlocked, "releasing an upload lock failed; closing its session");
            locks.conn = None;
        }
    }
}

#[async_trait]
impl Release for UploadLockHeld {
    async fn release(mut self: Box<Self>) {
        if let Some(locks) = self.locks.take() {
            UploadLockHeld::unlock(locks, self.session, self.key).await;
        }
    }
}

impl Drop for UploadLockHeld {
    fn drop(&mut self) {
        let Some(locks) = self.locks.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(UploadLockHeld::unlock(locks, self.session, self.key));
        }
    }
}

browse_meta_impl!(PgMeta);

#[async_trait]
impl RowCopy for PgMeta {
    async fn snapshot(&self) -> Result<Box<dyn RowSnapshot>> {
        // REPEATABLE READ: every statement of the transaction sees the snapshot taken by
        // its first, while the replicas go on writing.
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        Ok(Box::new(PgRows(tx)))
    }

    async fn replace_rows(&self) -> Result<Box<dyn RowReplace>> {
        // One plain transaction: the destination serves nobody during a migration, so
        // TRUNCATE's exclusive lock costs nothing, and it is far quicker than DELETE on
        // large tables (and rolled back like it).
        let mut tx = self.pool.begin().await?;
        let tables = COPIED_TABLES
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {tables}")))
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgRows(tx)))
    }

    async fn count_rows(&self, table: &Table) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            table.name
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }
}

/// A snapshot or a replacement: one PostgreSQL transaction.
struct PgRows(Transaction<'static, Postgres>);

#[async_trait]
impl RowSnapshot for PgRows {
    async fn rows(&mut self, table: &Table, offset: u64, limit: u32) -> Result<Vec<Vec<Cell>>> {
        // Tags in `seq` order: the order they were created, which listings fall back on.
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT $1 OFFSET $2",
            table.column_list(),
            table.name,
            export_order(table, "seq")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .bind(offset as i64)
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(|r| row_cells!(table, r)).collect()
    }
}

#[async_trait]
impl RowReplace for PgRows {
    async fn insert(&mut self, table: &Table, rows: &[Vec<Cell>]) -> Result<()> {
        // Many rows per statement: a final pass (the stop) is mostly this. Rows of one
        // VALUES list take `seq` in list order, so tags keep their creation order.
        let n = table.columns.len();
        for chunk in rows.chunks(INSERT_ROWS) {
            let values = (0..chunk.len())
                .map(|r| {
                    let marks = (1..=n).map(|c| format!("${}", r * n + c)).collect::<Vec<_>>();
                    format!("({})", marks.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO {}({}) VALUES {values}",
                table.name,
                table.column_list()
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for row in chunk {
                q = bind_cells!(q, table, row);
            }
            q.execute(&mut *self.0).await?;
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}

#[async_trait]
impl MetaStore for PgMeta {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_space_and_name() {
        let a = lock_key("job", "gc");
        assert_eq!(a, lock_key("job", "gc"));
        assert_ne!(a, lock_key("job", "scrub"));
        assert_ne!(a, lock_key("fill", "gc"));
    }

    #[test]
    fn describe_leaves_the_password_out() {
        let opts = PgConnectOptions::from_str("postgres://berth:s3cret@db.example:6543/registry").unwrap();
        let shown = describe(&opts);
        assert_eq!(shown, "postgres://berth@db.example:6543/registry");
        assert!(!shown.contains("s3cret"));
    }
}
