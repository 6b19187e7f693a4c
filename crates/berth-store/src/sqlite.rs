//! The embedded metadata store: SQLite in WAL mode through sqlx.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use berth_oci::{Digest, RepoName, Tag, UploadId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::meta::*;
use crate::migrate;
use crate::{Deletion, StorageStats, TagInfo};
use crate::{Result, StoreError};

pub struct SqliteMeta {
    /// Reads (read-only connections).
    pool: SqlitePool,
    /// Writes: one connection, so writers queue here, not on the readers' pool.
    writer: SqlitePool,
    /// One SQLite file belongs to one process, so coordination stays in it.
    jobs: Arc<StdMutex<HashSet<String>>>,
    fills: Arc<StdMutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>>,
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored digest {s:?}: {e}")))
}

impl SqliteMeta {
    /// Opens (creating) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteMeta> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed push survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false)
            // 1 MiB of page cache per connection instead of 2: metadata is small and hot.
            .pragma("cache_size", "-1024")
            // After a large write (a collection) the WAL is cut back to 64 MiB at the next
            // checkpoint instead of keeping its peak size forever.
            .pragma("journal_size_limit", "67108864");
        // SQLite has one writer at a time. Writes queue on a pool of their own, so a long
        // write (a garbage collection) never takes the connections reads need: in WAL
        // mode reads go on while it runs.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(120))
            .connect_with(opts.clone())
            .await?;
        migrate(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(6)
            .min_connections(1)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteMeta {
            pool,
            writer,
            jobs: Arc::default(),
            fills: Arc::default(),
        })
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        // IMMEDIATE takes the write lock up front, so a read-then-write transaction never
        // fails half way on a lock upgrade.
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Brings the schema up to date (see [`crate::migrate`]). A database created before
/// versioned migrations has the tables of version 1 and no `schema_migrations`: it is
/// recorded as version 1 without running anything.
async fn migrate(writer: &SqlitePool) -> Result<()> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
    )
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(migrate::CREATE_TABLE).execute(&mut *tx).await?;
    if recorded.is_none() {
        let legacy: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'blobs'")
                .fetch_optional(&mut *tx)
                .await?;
        if legacy.is_some() {
            sqlx::query("INSERT INTO schema_migrations(version, name, applied_at) VALUES (1, ?, ?)")
                .bind(migrate::SQLITE[0].name)
                .bind(migrate::now())
                .execute(&mut *tx)
                .await?;
        }
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for m in migrate::pending(migrate::SQLITE, &applied)? {
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, ?, ?)")
            .bind(m.version)
            .bind(m.name)
            .bind(migrate::now())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn ensure_repo(tx: &mut Transaction<'static, Sqlite>, repo: &RepoName, now: i64) -> Result<()> {
    sqlx::query("INSERT OR IGNORE INTO repositories(name, kind, created_at) VALUES (?, 'hosted', ?)")
        .bind(repo.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn link(tx: &mut Transaction<'static, Sqlite>, repo: &RepoName, digest: &str, now: i64) -> Result<()> {
    sqlx::query("INSERT OR IGNORE INTO repo_blobs(repo, digest, created_at) VALUES (?, ?, ?)")
        .bind(repo.as_str())
        .bind(digest)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const BLOB_PARENT: &str =
    "SELECT parent FROM manifest_refs WHERE repo = ? AND child = ? AND kind IN ('config', 'layer') LIMIT 1";
const MANIFEST_PARENT: &str =
    "SELECT parent FROM manifest_refs WHERE repo = ? AND child = ? AND kind = 'manifest' LIMIT 1";

/// A manifest in `repo` that references `child` (as `query` defines references).
async fn first_parent(
    tx: &mut Transaction<'static, Sqlite>,
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

fn manifest_row(row: sqlx::sqlite::SqliteRow) -> Result<ManifestRow> {
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

#[async_trait]
impl BlobMeta for SqliteMeta {
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload: Option<&UploadId>,
        now: i64,
    ) -> Result<()> {
        let d = digest.to_string();
        let mut tx = self.write_tx().await?;
        ensure_repo(&mut tx, repo, now).await?;
        sqlx::query("INSERT OR IGNORE INTO blobs(digest, size, created_at) VALUES (?, ?, ?)")
            .bind(&d)
            .bind(size as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        link(&mut tx, repo, &d, now).await?;
        if let Some(id) = upload {
            sqlx::query("DELETE FROM uploads WHERE id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn repo_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM repo_blobs r JOIN blobs b ON b.digest = r.digest WHERE r.repo = ? AND r.digest = ?",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = ?")
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        now: i64,
    ) -> Result<Option<u64>> {
        let d = digest.to_string();
        let mut tx = self.write_tx().await?;
        let size: Option<i64> = match from {
            Some(from) => sqlx::query_scalar(
                "SELECT b.size FROM repo_blobs r JOIN blobs b ON b.digest = r.digest WHERE r.repo = ? AND r.digest = ?",
            )
            .bind(from.as_str())
            .bind(&d)
            .fetch_optional(&mut *tx)
            .await?,
            None => sqlx::query_scalar("SELECT size FROM blobs WHERE digest = ?")
                .bind(&d)
                .fetch_optional(&mut *tx)
                .await?,
        };
        let Some(size) = size else {
            return Ok(None);
        };
        ensure_repo(&mut tx, repo, now).await?;
        link(&mut tx, repo, &d, now).await?;
        tx.commit().await?;
        Ok(Some(size as u64))
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Removal> {
        let (repo, d) = (repo.as_str(), digest.to_string());
        let mut tx = self.write_tx().await?;
        let linked: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?")
                .bind(repo)
                .bind(&d)
                .fetch_optional(&mut *tx)
                .await?;
        if linked.is_none() {
            return Ok(Removal::NotFound);
        }
        if let Some(p) = first_parent(&mut tx, BLOB_PARENT, repo, &d).await? {
            return Ok(Removal::ReferencedBy(p));
        }
        let r = sqlx::query("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(&d)
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
impl ManifestMeta for SqliteMeta {
    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<PutManifest> {
        let repo = m.repo.as_str();
        let d = m.digest.to_string();
        let mut tx = self.write_tx().await?;
        let mut missing = Vec::new();
        for r in m.refs.iter().filter(|r| r.required && m.require_refs) {
            let present: Option<i64> = if r.kind == berth_oci::RefKind::Manifest {
                sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo = ? AND digest = ?")
            } else {
                sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?")
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
            "INSERT OR IGNORE INTO manifests(repo, digest, media_type, artifact_type, subject, annotations, size, body, pushed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(repo)
        .bind(&d)
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
        if inserted > 0 {
            for r in m.refs {
                sqlx::query(
                    "INSERT OR IGNORE INTO manifest_refs(repo, parent, child, kind) VALUES (?, ?, ?, ?)",
                )
                .bind(repo)
                .bind(&d)
                .bind(r.digest.to_string())
                .bind(r.kind.as_str())
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(tag) = m.tag {
            sqlx::query(
                "INSERT INTO tags(repo, name, digest, updated_at, upstream_checked_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT(repo, name) DO UPDATE SET digest = excluded.digest,
                   updated_at = excluded.updated_at, upstream_checked_at = excluded.upstream_checked_at",
            )
            .bind(repo)
            .bind(tag.as_str())
            .bind(&d)
            .bind(m.now)
            .bind(m.now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(PutManifest::Stored)
    }

    async fn manifest_by_digest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRow>> {
        sqlx::query("SELECT digest, media_type, subject, body, last_pulled FROM manifests WHERE repo = ? AND digest = ?")
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
             WHERE t.repo = ? AND t.name = ?",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(manifest_row)
        .transpose()
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let r = sqlx::query("DELETE FROM tags WHERE repo = ? AND name = ?")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn touch_tag(&self, repo: &RepoName, tag: &Tag, now: i64) -> Result<()> {
        sqlx::query("UPDATE tags SET upstream_checked_at = ? WHERE repo = ? AND name = ?")
            .bind(now)
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn mark_cached(&self, repo: &RepoName, upstream: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO repositories(name, kind, upstream, created_at) VALUES (?, 'cached', ?, ?)
             ON CONFLICT(name) DO UPDATE SET kind = 'cached', upstream = excluded.upstream",
        )
        .bind(repo.as_str())
        .bind(upstream)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Removal> {
        let (repo, d) = (repo.as_str(), digest.to_string());
        let mut tx = self.write_tx().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(&d)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(Removal::NotFound);
        }
        if let Some(p) = first_parent(&mut tx, MANIFEST_PARENT, repo, &d).await? {
            return Ok(Removal::ReferencedBy(p));
        }
        for stmt in [
            "DELETE FROM tags WHERE repo = ? AND digest = ?",
            "DELETE FROM manifest_refs WHERE repo = ? AND parent = ?",
            "DELETE FROM manifests WHERE repo = ? AND digest = ?",
        ] {
            sqlx::query(stmt).bind(repo).bind(&d).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Removal::Done)
    }

    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        let r: Option<i64> = sqlx::query_scalar("SELECT 1 FROM repositories WHERE name = ?")
            .bind(repo.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    async fn tags(&self, repo: &RepoName, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM tags WHERE repo = ? AND name > ? ORDER BY name LIMIT ?")
                .bind(repo.as_str())
                .bind(last.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM repositories r WHERE name > ?
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo = r.name) ORDER BY name LIMIT ?",
        )
        .bind(last.unwrap_or(""))
        .bind(limit as i64)
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
             WHERE repo = ? AND subject = ? AND (? IS NULL OR artifact_type = ?) ORDER BY digest",
        )
        .bind(repo.as_str())
        .bind(subject.to_string())
        .bind(artifact_type)
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
impl UploadMeta for SqliteMeta {
    async fn create_upload(&self, id: &UploadId, repo: &RepoName, now: i64) -> Result<()> {
        sqlx::query("INSERT INTO uploads(id, repo, size, started_at, last_activity) VALUES (?, ?, 0, ?, ?)")
            .bind(id.as_str())
            .bind(repo.as_str())
            .bind(now)
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn upload(&self, id: &UploadId) -> Result<Option<UploadRow>> {
        let row = sqlx::query(
            "SELECT repo, size, started_at, last_activity, CASE WHEN hash_size = size THEN hash_state END
             FROM uploads WHERE id = ?",
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
        sqlx::query("UPDATE uploads SET size = ?, last_activity = ? WHERE id = ?")
            .bind(size as i64)
            .bind(now)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn save_upload_state(&self, id: &UploadId, size: u64, hash_state: &[u8], now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE uploads SET size = ?, hash_size = ?, hash_state = ?, last_activity = ? WHERE id = ?",
        )
        .bind(size as i64)
        .bind(size as i64)
        .bind(hash_state)
        .bind(now)
        .bind(id.as_str())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn uploads_idle_since(&self, before: i64) -> Result<Vec<UploadId>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM uploads WHERE last_activity < ?")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.iter().filter_map(|s| UploadId::parse(s)).collect())
    }
}

/// Bytes of blobs linked into cached repositories (what `cache.max_bytes` budgets).
const CACHED_BYTES: &str = "SELECT SUM(size) FROM blobs WHERE digest IN
    (SELECT l.digest FROM repo_blobs l JOIN repositories k ON k.name = l.repo WHERE k.kind = 'cached')";

/// The mark: everything reachable from tags, recent pushes, index children and referrers.
const GC_MARK: &str = "INSERT OR IGNORE INTO temp.gc_live(repo, digest)
    WITH RECURSIVE live(repo, digest) AS (
        SELECT repo, digest FROM tags
        UNION SELECT m.repo, m.digest FROM manifests m LEFT JOIN repositories k ON k.name = m.repo
              WHERE m.pushed_at > CASE k.kind WHEN 'cached' THEN ?2 ELSE ?1 END
        UNION SELECT r.repo, r.child FROM manifest_refs r
              JOIN live l ON r.repo = l.repo AND r.parent = l.digest WHERE r.kind = 'manifest'
        UNION SELECT m.repo, m.digest FROM manifests m
              JOIN live l ON m.repo = l.repo AND m.subject = l.digest
    )
    SELECT repo, digest FROM live";
const GC_DEAD_MANIFESTS: &str = "SELECT repo, digest, size FROM manifests m
    WHERE NOT EXISTS (SELECT 1 FROM temp.gc_live g WHERE g.repo = m.repo AND g.digest = m.digest)
    ORDER BY repo, digest";
const GC_SWEEP_REFS: &str = "DELETE FROM manifest_refs
    WHERE NOT EXISTS (SELECT 1 FROM temp.gc_live g WHERE g.repo = manifest_refs.repo AND g.digest = manifest_refs.parent)";
const GC_SWEEP_MANIFESTS: &str = "DELETE FROM manifests
    WHERE NOT EXISTS (SELECT 1 FROM temp.gc_live g WHERE g.repo = manifests.repo AND g.digest = manifests.digest)";
const GC_SWEEP_LINKS: &str = "DELETE FROM repo_blobs
    WHERE created_at <= (SELECT CASE k.kind WHEN 'cached' THEN ?2 ELSE ?1 END
                        FROM repositories k WHERE k.name = repo_blobs.repo)
    AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = repo_blobs.repo AND r.child = repo_blobs.digest)";
const GC_DEAD_BLOBS: &str = "SELECT digest, size FROM blobs b WHERE created_at <= MAX(?1, ?2)
    AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = b.digest)
    AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = b.digest)
    ORDER BY digest";
const GC_SWEEP_BLOBS: &str = "DELETE FROM blobs WHERE created_at <= MAX(?1, ?2)
    AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = blobs.digest)
    AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = blobs.digest)";

#[async_trait]
impl LifecycleMeta for SqliteMeta {
    async fn collect_garbage(
        &self,
        first: &[Deletion],
        hosted: i64,
        cached: i64,
        dry_run: bool,
    ) -> Result<GcReport> {
        let mut tx = self.write_tx().await?;
        let mut deleted_first = Vec::new();
        for d in first {
            match d {
                Deletion::Tag { repo, tag } => {
                    sqlx::query("DELETE FROM tags WHERE repo = ? AND name = ?")
                        .bind(repo)
                        .bind(tag)
                        .execute(&mut *tx)
                        .await?;
                }
                Deletion::Manifest { repo, digest } => {
                    // Only if untagged and no manifest lists it as a child.
                    let size: Option<i64> = sqlx::query_scalar(
                        "DELETE FROM manifests WHERE repo = ?1 AND digest = ?2
                         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo = ?1 AND t.digest = ?2)
                         AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                                         WHERE r.repo = ?1 AND r.child = ?2 AND r.kind = 'manifest')
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
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS gc_live(repo TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY(repo, digest))")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM temp.gc_live").execute(&mut *tx).await?;
        sqlx::query(GC_MARK)
            .bind(hosted)
            .bind(cached)
            .execute(&mut *tx)
            .await?;
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
        for row in sqlx::query(GC_DEAD_BLOBS)
            .bind(hosted)
            .bind(cached)
            .fetch_all(&mut *tx)
            .await?
        {
            report
                .blobs
                .push((parse_digest(row.get(0))?, row.get::<i64, _>(1) as u64));
        }
        sqlx::query(GC_SWEEP_BLOBS)
            .bind(hosted)
            .bind(cached)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM temp.gc_live").execute(&mut *tx).await?;
        let cached: Option<i64> = sqlx::query_scalar(CACHED_BYTES).fetch_one(&mut *tx).await?;
        report.cached_bytes_after = cached.unwrap_or(0) as u64;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(report)
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
             WHERE t.repo = ? ORDER BY t.updated_at DESC, t.rowid DESC",
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
                 SELECT digest FROM tags WHERE repo = ?1
                 UNION SELECT r.child FROM manifest_refs r JOIN live l ON r.parent = l.digest
                       WHERE r.repo = ?1 AND r.kind = 'manifest'
                 UNION SELECT m.digest FROM manifests m JOIN live l ON m.subject = l.digest WHERE m.repo = ?1
             )
             SELECT digest FROM manifests WHERE repo = ?1 AND pushed_at < ?2
             AND digest NOT IN (SELECT digest FROM live) ORDER BY digest",
        )
        .bind(repo)
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|d| parse_digest(d)).collect()
    }

    async fn touch_pulled(&self, repo: &RepoName, digest: &Digest, now: i64) -> Result<()> {
        sqlx::query("UPDATE manifests SET last_pulled = ? WHERE repo = ? AND digest = ?")
            .bind(now)
            .bind(repo.as_str())
            .bind(digest.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn cached_bytes(&self) -> Result<u64> {
        let n: Option<i64> = sqlx::query_scalar(CACHED_BYTES).fetch_one(&self.pool).await?;
        Ok(n.unwrap_or(0) as u64)
    }

    async fn recorded_among(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let list = serde_json::to_string(digests).expect("digests serialize");
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT digest FROM blobs WHERE digest IN (SELECT value FROM json_each(?))")
                .bind(list)
                .fetch_all(&self.writer)
                .await?;
        rows.iter().map(|d| parse_digest(d)).collect()
    }
}

#[async_trait]
impl IntegrityMeta for SqliteMeta {
    async fn blobs_page(&self, after: Option<&Digest>, limit: u32) -> Result<Vec<(Digest, u64)>> {
        let rows = sqlx::query("SELECT digest, size FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?")
            .bind(after.map(|d| d.to_string()).unwrap_or_default())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((parse_digest(r.get(0))?, r.get::<i64, _>(1) as u64)))
            .collect()
    }

    async fn mark_verified(&self, digest: &Digest, now: i64) -> Result<()> {
        sqlx::query("UPDATE blobs SET verified_at = ? WHERE digest = ?")
            .bind(now)
            .bind(digest.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn links_of(&self, digest: &Digest) -> Result<Vec<(String, bool)>> {
        let rows = sqlx::query(
            "SELECT l.repo, COALESCE(k.kind = 'cached', 0) FROM repo_blobs l
             LEFT JOIN repositories k ON k.name = l.repo WHERE l.digest = ? ORDER BY l.repo",
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
            "SELECT r.repo, r.parent, r.child, r.kind, COALESCE(k.kind = 'cached', 0) FROM manifest_refs r
             LEFT JOIN repositories k ON k.name = r.repo
             WHERE (r.repo, r.parent, r.child) > (?, ?, ?) ORDER BY r.repo, r.parent, r.child LIMIT ?",
        )
        .bind(repo)
        .bind(parent)
        .bind(child)
        .bind(limit as i64)
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
            "SELECT t.repo, t.name, t.digest, COALESCE(k.kind = 'cached', 0) FROM tags t
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
               (SELECT group_concat(name, ',') FROM (
                  SELECT t.name FROM tags t WHERE t.repo = r.repo AND t.digest = r.parent
                  UNION SELECT t.name FROM tags t JOIN manifest_refs i
                        ON i.repo = t.repo AND i.parent = t.digest AND i.kind = 'manifest'
                        WHERE i.repo = r.repo AND i.child = r.parent))
             FROM manifest_refs r WHERE r.child = ? ORDER BY r.repo, r.parent",
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
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE digest IN
                 (SELECT l.digest FROM repo_blobs l JOIN repositories k ON k.name = l.repo WHERE k.kind = ?)",
            )
            .bind(kind)
            .fetch_one(&self.pool)
            .await?;
            let manifests: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM manifests m JOIN repositories k ON k.name = m.repo WHERE k.kind = ?",
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
        let mut tx = self.write_tx().await?;
        for stmt in [
            "DELETE FROM repo_blobs WHERE digest = ?",
            "DELETE FROM blobs WHERE digest = ?",
        ] {
            sqlx::query(stmt).bind(&d).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

browse_meta_impl!(SqliteMeta);

#[async_trait]
impl RowCopy for SqliteMeta {
    async fn snapshot(&self) -> Result<Box<dyn RowSnapshot>> {
        // A deferred transaction on a read-only connection: in WAL mode its first read
        // fixes what it sees, and the server's writers go on meanwhile.
        Ok(Box::new(SqliteRows(self.pool.begin().await?)))
    }

    async fn replace_rows(&self) -> Result<Box<dyn RowReplace>> {
        let mut tx = self.write_tx().await?;
        for table in COPIED_TABLES.iter().rev() {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", table.name)))
                .execute(&mut *tx)
                .await?;
        }
        Ok(Box::new(SqliteRows(tx)))
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

/// A snapshot or a replacement: one SQLite transaction.
struct SqliteRows(Transaction<'static, Sqlite>);

#[async_trait]
impl RowSnapshot for SqliteRows {
    async fn rows(&mut self, table: &Table, offset: u64, limit: u32) -> Result<Vec<Vec<Cell>>> {
        // Tags in rowid order: the order they were created, which listings fall back on.
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {} LIMIT ? OFFSET ?",
            table.column_list(),
            table.name,
            export_order(table, "rowid")
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
impl RowReplace for SqliteRows {
    async fn insert(&mut self, table: &Table, rows: &[Vec<Cell>]) -> Result<()> {
        // Many rows per statement: a final pass (the stop) is mostly this. SQLite takes
        // up to 32,766 parameters.
        for chunk in rows.chunks(INSERT_ROWS) {
            let row = format!("({})", vec!["?"; table.columns.len()].join(", "));
            let sql = format!(
                "INSERT INTO {}({}) VALUES {}",
                table.name,
                table.column_list(),
                vec![row; chunk.len()].join(", ")
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
impl MetaStore for SqliteMeta {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Held while a job runs; forgets the name on drop.
struct JobHeld {
    jobs: Arc<StdMutex<HashSet<String>>>,
    name: String,
}

impl Drop for JobHeld {
    fn drop(&mut self) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

#[async_trait]
impl Coordination for SqliteMeta {
    async fn try_lock_job(&self, job: &str) -> Result<Option<LockGuard>> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if !jobs.insert(job.to_string()) {
            return Ok(None);
        }
        Ok(Some(LockGuard::new(JobHeld {
            jobs: self.jobs.clone(),
            name: job.to_string(),
        })))
    }

    async fn lock_fill(&self, digest: &Digest) -> Result<LockGuard> {
        let lock = {
            let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
            // Entries whose lock nobody holds or waits for are dropped as we go, so the map
            // stays as small as the fills in flight.
            fills.retain(|_, w| w.strong_count() > 0);
            match fills.get(digest).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    fills.insert(digest.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        Ok(LockGuard::new(lock.lock_owned().await))
    }

    async fn lock_bytes(&self, _stripes: &[u32]) -> Result<LockGuard> {
        Ok(LockGuard::new(()))
    }

    async fn try_lock_upload(&self, _id: &UploadId) -> Result<Option<LockGuard>> {
        Ok(Some(LockGuard::new(())))
    }
}
