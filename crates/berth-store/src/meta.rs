//! The metadata store: what exists, split by concern. Every write that belongs together
//! is one transaction inside an implementation.

use async_trait::async_trait;
use berth_oci::{Digest, ManifestRef, RepoName, Tag, UploadId};

use crate::Result;

#[derive(Clone, Debug)]
pub struct UploadRow {
    pub id: UploadId,
    pub repo: RepoName,
    pub size: u64,
    pub started_at: i64,
    pub last_activity: i64,
    /// The hash state saved after exactly `size` bytes ([`UploadMeta::save_upload_state`]);
    /// `None` when none was saved for the current size.
    pub hash_state: Option<Vec<u8>>,
}

/// A manifest to record, with everything it references.
pub struct NewManifest<'a> {
    pub repo: &'a RepoName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a Digest>,
    /// The manifest's annotations as JSON, for the referrers API.
    pub annotations: Option<String>,
    pub body: &'a [u8],
    pub refs: &'a [ManifestRef],
    pub tag: Option<&'a Tag>,
    /// Hosted repositories require every reference to be present; a cache holds partial
    /// images (only the platforms that were pulled) by design.
    pub require_refs: bool,
    pub now: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PutManifest {
    Stored,
    /// Nothing was written: these required references are not present in the repository.
    Missing(Vec<Digest>),
}

#[derive(Clone, Debug)]
pub struct ManifestRow {
    pub digest: Digest,
    pub media_type: String,
    pub subject: Option<Digest>,
    pub body: Vec<u8>,
    /// For a lookup by tag: when the tag was last confirmed (pushed, or revalidated
    /// against the upstream of a cached repository).
    pub tag_checked_at: Option<i64>,
    /// When the manifest was last pulled (recorded at most about once a minute).
    pub last_pulled: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    /// JSON object, as stored.
    pub annotations: Option<String>,
}

/// The outcome of removing a manifest or a blob link from a repository.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    Done,
    NotFound,
    /// Refused: a manifest in the same repository still references it.
    ReferencedBy(Digest),
}

#[async_trait]
pub trait BlobMeta: Send + Sync {
    /// Records committed bytes, links them into `repo` and, when given, closes the upload
    /// that produced them; one transaction.
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload: Option<&UploadId>,
        now: i64,
    ) -> Result<()>;
    /// Size of a blob visible in `repo` (linked there).
    async fn repo_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>>;
    /// Size of a blob known anywhere in the registry.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Links a known blob into `repo`: from `from` if given (it must be linked there), else
    /// from anywhere. Returns the size, or `None` when there was nothing to link.
    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        now: i64,
    ) -> Result<Option<u64>>;
    /// Removes a blob's link from `repo` unless a manifest there references it; the bytes
    /// stay until garbage collection.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Removal>;
}

#[async_trait]
pub trait ManifestMeta: Send + Sync {
    /// Stores a manifest, its references and its tag, only if every required reference is
    /// present in the repository; one transaction.
    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<PutManifest>;
    async fn manifest_by_digest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRow>>;
    async fn manifest_by_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<ManifestRow>>;
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Records that the upstream confirmed a cached tag at `now`.
    async fn touch_tag(&self, repo: &RepoName, tag: &Tag, now: i64) -> Result<()>;
    /// Records `repo` as a cache of `upstream` (creating it if needed).
    async fn mark_cached(&self, repo: &RepoName, upstream: &str, now: i64) -> Result<()>;
    /// Deletes a manifest, its references and every tag pointing at it.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Removal>;
    async fn repo_exists(&self, repo: &RepoName) -> Result<bool>;
    /// Tag names after `last` in lexical order, at most `limit`.
    async fn tags(&self, repo: &RepoName, last: Option<&str>, limit: u32) -> Result<Vec<String>>;
    /// Names of repositories holding at least one manifest, after `last`, at most `limit`.
    async fn repositories(&self, last: Option<&str>, limit: u32) -> Result<Vec<String>>;
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>>;
}

#[async_trait]
pub trait UploadMeta: Send + Sync {
    async fn create_upload(&self, id: &UploadId, repo: &RepoName, now: i64) -> Result<()>;
    async fn upload(&self, id: &UploadId) -> Result<Option<UploadRow>>;
    /// Records the size and the activity; a hash state saved for another size stops
    /// being returned.
    async fn set_upload_size(&self, id: &UploadId, size: u64, now: i64) -> Result<()>;
    /// [`UploadMeta::set_upload_size`], and the hash state after exactly `size` bytes, so
    /// the next chunk can resume hashing in another process.
    async fn save_upload_state(&self, id: &UploadId, size: u64, hash_state: &[u8], now: i64) -> Result<()>;
    async fn delete_upload(&self, id: &UploadId) -> Result<bool>;
    /// Uploads with no activity since `before`.
    async fn uploads_idle_since(&self, before: i64) -> Result<Vec<UploadId>>;
}

/// A deletion decided by a lifecycle rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    Tag {
        repo: String,
        tag: String,
    },
    /// An untagged manifest.
    Manifest {
        repo: String,
        digest: Digest,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagInfo {
    pub name: String,
    pub digest: Digest,
    pub updated_at: i64,
    pub last_pulled: Option<i64>,
}

/// What a garbage collection removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifests no tag, recent push or live parent/subject keeps: (repository, digest, size).
    pub manifests: Vec<(String, Digest, u64)>,
    /// Repository links to blobs that no manifest in that repository uses.
    pub links: u64,
    /// Blobs no repository links and no manifest references; their bytes can go.
    pub blobs: Vec<(Digest, u64)>,
    /// Bytes held by cached repositories once this collection is done.
    pub cached_bytes_after: u64,
}

#[async_trait]
pub trait LifecycleMeta: Send + Sync {
    /// Marks and sweeps in one write transaction (rolled back for a dry run, so the dry
    /// run reports exactly what the real run would remove). Live: every tagged manifest,
    /// every manifest pushed at or after the cutoff of its repository's kind (`hosted`, or
    /// `cached` for caches), their children (transitively) and referrers. Repository links
    /// created before that cutoff that no manifest there uses go, then blobs that nothing
    /// links or references (a blob row is protected by its links; the later cutoff applies).
    /// `first`, deletions decided by retention or eviction, happen in the same
    /// transaction before the mark, so a dry run of them reports exactly what they free.
    async fn collect_garbage(
        &self,
        first: &[Deletion],
        hosted: i64,
        cached: i64,
        dry_run: bool,
    ) -> Result<GcReport>;
    /// Repositories and whether each is a cache.
    async fn repositories_by_kind(&self) -> Result<Vec<(String, bool)>>;
    /// Every tag of `repo` with its push time and the last pull of its manifest, most
    /// recently pushed first (ties: the later push first).
    async fn tag_details(&self, repo: &str) -> Result<Vec<TagInfo>>;
    /// Manifests of `repo` that no tag reaches (directly, as index children or as
    /// referrers), pushed before `before`.
    async fn untagged_before(&self, repo: &str, before: i64) -> Result<Vec<Digest>>;
    /// Records a pull of a manifest (for retention and eviction).
    async fn touch_pulled(&self, repo: &RepoName, digest: &Digest, now: i64) -> Result<()>;
    /// Bytes of blobs linked into cached repositories.
    async fn cached_bytes(&self) -> Result<u64>;
    /// Which of `digests` have a blob row (checked under the bytes lock before bytes are
    /// deleted, in case an upload recorded one again).
    async fn recorded_among(&self, digests: &[Digest]) -> Result<Vec<Digest>>;
}

/// One reference of a stored manifest, for integrity checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefRow {
    pub repo: String,
    pub parent: Digest,
    pub child: Digest,
    /// `config`, `layer` or `manifest`.
    pub kind: String,
    pub cached: bool,
}

/// Where a blob or manifest is used: a manifest in a repository, and the tags that reach
/// it (directly, or through an index that lists it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub repo: String,
    pub manifest: Digest,
    pub tags: Vec<String>,
}

#[async_trait]
pub trait IntegrityMeta: Send + Sync {
    /// Blob rows after `after` in digest order: (digest, size).
    async fn blobs_page(&self, after: Option<&Digest>, limit: u32) -> Result<Vec<(Digest, u64)>>;
    async fn mark_verified(&self, digest: &Digest, now: i64) -> Result<()>;
    /// Repositories linking a blob, and whether each is a cache.
    async fn links_of(&self, digest: &Digest) -> Result<Vec<(String, bool)>>;
    /// Manifest references after the given (repo, parent, child) position.
    async fn refs_page(&self, after: Option<(String, Digest, Digest)>, limit: u32) -> Result<Vec<RefRow>>;
    /// Every tag: (repo, tag, digest, cached).
    async fn all_tags(&self) -> Result<Vec<(String, String, Digest, bool)>>;
    /// Manifests that reference `digest` (as config, layer or child), with their tags.
    async fn usages(&self, digest: &Digest) -> Result<Vec<Usage>>;
    /// Forgets a blob whose bytes are gone or damaged: its row and every link to it.
    async fn drop_blob(&self, digest: &Digest) -> Result<()>;
    /// What is stored, by repository kind.
    async fn storage_stats(&self) -> Result<StorageStats>;
}

/// Stored objects by repository kind (a blob in both kinds counts in both).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub hosted_blobs: u64,
    pub hosted_bytes: u64,
    pub cached_blobs: u64,
    pub cached_bytes: u64,
    pub hosted_manifests: u64,
    pub cached_manifests: u64,
    pub uploads: u64,
}

/// Proof that a coordination lock is held; dropping it releases the lock (on PostgreSQL
/// within moments: the release runs on the runtime, or the lock's session closes).
/// [`LockGuard::release`] releases it before returning, for a lock whose next taker may be
/// the very client this request is answering (an upload's next chunk).
pub struct LockGuard {
    held: Held,
}

enum Held {
    Plain(#[allow(dead_code)] Box<dyn Send + Sync>),
    Releasable(Box<dyn Release>),
}

/// A lock whose release can be awaited (PostgreSQL's, released over its connection).
#[async_trait]
pub trait Release: Send + Sync {
    async fn release(self: Box<Self>);
}

impl LockGuard {
    /// A lock released when `held` is dropped.
    pub fn new(held: impl Send + Sync + 'static) -> LockGuard {
        LockGuard {
            held: Held::Plain(Box::new(held)),
        }
    }

    /// A lock whose release [`LockGuard::release`] can wait for.
    pub fn releasing(held: impl Release + 'static) -> LockGuard {
        LockGuard {
            held: Held::Releasable(Box::new(held)),
        }
    }

    /// Releases the lock and returns once it is released.
    pub async fn release(self) {
        match self.held {
            Held::Plain(held) => drop(held),
            Held::Releasable(held) => held.release().await,
        }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

/// Work that must happen once across every process sharing this store (replicas of one
/// registry). SQLite belongs to one process, so its locks are in-process; PostgreSQL's are
/// advisory locks, each on a connection of its own that the guard holds, so a replica that
/// dies releases its locks with its sessions.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Takes the lock of a job (`gc`, `retention`, `scrub`, ...) if nobody holds it;
    /// `None` when another holder (here or in another replica) has it.
    async fn try_lock_job(&self, job: &str) -> Result<Option<LockGuard>>;
    /// Waits for, then takes, the lock of the upstream fill of `digest`, so one fill per
    /// digest runs at a time across replicas. Dropping the future while waiting gives up.
    async fn lock_fill(&self, digest: &Digest) -> Result<LockGuard>;
    /// Waits for, then takes, the cross-process bytes locks of `stripes` (the registry's
    /// per-digest stripes), all held by one guard, so a blob's bytes are never deleted by
    /// one replica while another moves them into place. Taken in ascending order, whatever
    /// order they are given in, so two holders of overlapping sets cannot deadlock. A no-op
    /// where the store belongs to one process (SQLite): the registry's in-process stripes
    /// already cover it.
    async fn lock_bytes(&self, stripes: &[u32]) -> Result<LockGuard>;
    /// Takes the lock of the request writing to upload `id` if nobody holds it; `None` when
    /// a request in another process holds it. Within one process the caller asks once per
    /// upload at a time (the registry refuses a second writer in-process first), which is
    /// why it is a no-op (always taken) where the store belongs to one process, and why
    /// PostgreSQL may hold every upload lock of a process on one session.
    async fn try_lock_upload(&self, id: &UploadId) -> Result<Option<LockGuard>>;
}

/// One repository as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSummary {
    pub name: String,
    /// The upstream a cached repository mirrors; `None` for a hosted one.
    pub upstream: Option<String>,
    pub tags: u64,
    pub manifests: u64,
    /// Sum of the sizes of the distinct blobs linked into the repository.
    pub bytes: u64,
    /// Latest manifest push (or cache fill) time.
    pub last_push: Option<i64>,
    /// Latest recorded pull of any of its manifests.
    pub last_pull: Option<i64>,
}

/// A tag of a cached repository and when the upstream last confirmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedTag {
    pub repo: String,
    pub upstream: String,
    pub tag: String,
    pub digest: Digest,
    /// When the tag was stored or last moved.
    pub updated_at: i64,
    /// When the upstream last confirmed it (stored from it, or revalidated against it).
    pub checked_at: Option<i64>,
}

/// What browsing (the web UI) reads: aggregates computed by the store, so a listing of
/// thousands of repositories is one query, not one per repository.
#[async_trait]
pub trait BrowseMeta: Send + Sync {
    /// Every repository holding at least one manifest, by name.
    async fn repository_summaries(&self) -> Result<Vec<RepoSummary>>;
    /// Every tag of every cached repository, by repository and tag.
    async fn cached_tags(&self) -> Result<Vec<CachedTag>>;
}

/// What kind of value a column holds (NULL allowed in every kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    Int,
    Text,
    Bytes,
}

/// One value of a row being copied between metadata stores.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A table `berth migrate-storage` copies: its columns (the same in every backend) and
/// the order rows are read in (the primary key; for tags, creation order, which listings
/// of tags fall back on).
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColumnKind)],
}

use ColumnKind::{Bytes as B, Int as I, Text as T};

/// Every table that says what a registry holds, parents first. Upload sessions are not
/// copied: their bytes are half-made, and a client restarts an upload that is gone.
pub const COPIED_TABLES: &[Table] = &[
    Table {
        name: "repositories",
        columns: &[("name", T), ("kind", T), ("upstream", T), ("created_at", I)],
    },
    Table {
        name: "blobs",
        columns: &[
            ("digest", T),
            ("size", I),
            ("created_at", I),
            ("last_access", I),
            ("verified_at", I),
        ],
    },
    Table {
        name: "repo_blobs",
        columns: &[("repo", T), ("digest", T), ("created_at", I)],
    },
    Table {
        name: "manifests",
        columns: &[
            ("repo", T),
            ("digest", T),
            ("media_type", T),
            ("artifact_type", T),
            ("subject", T),
            ("annotations", T),
            ("size", I),
            ("body", B),
            ("pushed_at", I),
            ("last_pulled", I),
        ],
    },
    Table {
        name: "manifest_refs",
        columns: &[("repo", T), ("parent", T), ("child", T), ("kind", T)],
    },
    Table {
        name: "tags",
        columns: &[
            ("repo", T),
            ("name", T),
            ("digest", T),
            ("updated_at", I),
            ("upstream_checked_at", I),
        ],
    },
];

impl Table {
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How many leading columns make up the primary key.
    pub fn key_len(&self) -> usize {
        self.key().split(", ").count()
    }

    /// The primary key columns, in order (`ORDER BY` and conflict detection).
    pub fn key(&self) -> &'static str {
        match self.name {
            "repositories" => "name",
            "blobs" => "digest",
            "repo_blobs" => "repo, digest",
            "manifests" => "repo, digest",
            "manifest_refs" => "repo, parent, child, kind",
            "tags" => "repo, name",
            other => unreachable!("table {other} is not copied"),
        }
    }
}

/// Whole tables out of one metadata store and into another (`berth migrate-storage`),
/// with every column as stored: manifests' bytes, timestamps, tag creation order. The
/// source may be serving (a snapshot is one read transaction); the destination must not
/// be (its rows are replaced wholesale).
#[async_trait]
pub trait RowCopy: Send + Sync {
    /// A consistent view of every copied table as of one moment, however long it is
    /// read while writers go on: one read-only transaction (SQLite WAL, PostgreSQL
    /// `REPEATABLE READ`), rolled back when the snapshot is dropped.
    async fn snapshot(&self) -> Result<Box<dyn RowSnapshot>>;
    /// Starts the one transaction that replaces every row of [`COPIED_TABLES`]: they are
    /// emptied first, so what the rows given next leave out (moved tags, deleted
    /// manifests, collected blobs) is gone too once it commits. Upload sessions are kept.
    async fn replace_rows(&self) -> Result<Box<dyn RowReplace>>;
    async fn count_rows(&self, table: &Table) -> Result<u64>;
}

/// See [`RowCopy::snapshot`].
#[async_trait]
pub trait RowSnapshot: Send {
    /// Rows of `table` (one of [`COPIED_TABLES`]) from position `offset`, at most `limit`,
    /// in key order (tags: in the order they were created), values in column order.
    async fn rows(&mut self, table: &Table, offset: u64, limit: u32) -> Result<Vec<Vec<Cell>>>;
}

/// See [`RowCopy::replace_rows`]. Dropped without [`RowReplace::commit`], nothing changes.
#[async_trait]
pub trait RowReplace: Send {
    /// Inserts rows in the order given (tags keep their creation order).
    async fn insert(&mut self, table: &Table, rows: &[Vec<Cell>]) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Rows per INSERT statement of a [`RowReplace`]: at most 10 columns, so far below the
/// bind-parameter limits of SQLite (32,766) and PostgreSQL (65,535).
pub(crate) const INSERT_ROWS: usize = 200;

/// The ORDER BY of a snapshot read; `tag_order` is the backend's creation-order column.
pub(crate) fn export_order(table: &Table, tag_order: &'static str) -> &'static str {
    if table.name == "tags" {
        tag_order
    } else {
        table.key()
    }
}

/// Reads a row's columns as `table` declares them (a macro: the row types of SQLite and
/// PostgreSQL share no usable trait bound).
macro_rules! row_cells {
    ($table:expr, $row:expr) => {{
        use sqlx::Row as _;
        $table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| {
                Ok(match kind {
                    $crate::meta::ColumnKind::Int => $row
                        .try_get::<Option<i64>, _>(i)?
                        .map_or($crate::meta::Cell::Null, $crate::meta::Cell::Int),
                    $crate::meta::ColumnKind::Text => $row
                        .try_get::<Option<String>, _>(i)?
                        .map_or($crate::meta::Cell::Null, $crate::meta::Cell::Text),
                    $crate::meta::ColumnKind::Bytes => $row
                        .try_get::<Option<Vec<u8>>, _>(i)?
                        .map_or($crate::meta::Cell::Null, $crate::meta::Cell::Bytes),
                })
            })
            .collect::<$crate::Result<Vec<$crate::meta::Cell>>>()
    }};
}
pub(crate) use row_cells;

/// Binds a row's values to `$query` as `table` declares them; a value of the wrong kind
/// is an error naming the table and column.
macro_rules! bind_cells {
    ($query:expr, $table:expr, $row:expr) => {{
        let mut q = $query;
        if $row.len() != $table.columns.len() {
            return Err($crate::StoreError::Corrupt(format!(
                "a row of {} has {} values, not {}",
                $table.name,
                $row.len(),
                $table.columns.len()
            )));
        }
        for (cell, (column, kind)) in $row.iter().zip($table.columns) {
            use $crate::meta::{Cell, ColumnKind};
            q = match (kind, cell) {
                (ColumnKind::Int, Cell::Int(v)) => q.bind(Some(*v)),
                (ColumnKind::Int, Cell::Null) => q.bind(None::<i64>),
                (ColumnKind::Text, Cell::Text(v)) => q.bind(Some(v.as_str())),
                (ColumnKind::Text, Cell::Null) => q.bind(None::<&str>),
                (ColumnKind::Bytes, Cell::Bytes(v)) => q.bind(Some(v.as_slice())),
                (ColumnKind::Bytes, Cell::Null) => q.bind(None::<&[u8]>),
                (kind, cell) => {
                    return Err($crate::StoreError::Corrupt(format!(
                        "{}.{column}: a {kind:?} column given {cell:?}",
                        $table.name
                    )));
                }
            };
        }
        q
    }};
}
pub(crate) use bind_cells;

#[async_trait]
pub trait MetaStore:
    BlobMeta + ManifestMeta + UploadMeta + LifecycleMeta + IntegrityMeta + BrowseMeta + Coordination + RowCopy
{
    /// Proves the store answers (for readiness).
    async fn ping(&self) -> Result<()>;
    /// Whether other processes (replicas) may share this store, so that what one request
    /// leaves for the next (an upload's hash state) must be saved in it, not in memory.
    fn shared(&self) -> bool {
        false
    }
}

/// The web UI's listings, one query each, the same SQL on SQLite and PostgreSQL (sums are
/// cast back to BIGINT, which PostgreSQL would widen to NUMERIC).
pub(crate) const REPO_SUMMARIES: &str = "WITH
    m AS (SELECT repo, COUNT(*) AS n, MAX(pushed_at) AS pushed, MAX(last_pulled) AS pulled
          FROM manifests GROUP BY repo),
    t AS (SELECT repo, COUNT(*) AS n FROM tags GROUP BY repo),
    b AS (SELECT l.repo, CAST(SUM(b.size) AS BIGINT) AS bytes FROM repo_blobs l
          JOIN blobs b ON b.digest = l.digest GROUP BY l.repo)
    SELECT r.name, CASE r.kind WHEN 'cached' THEN COALESCE(r.upstream, '') END, COALESCE(t.n, 0), m.n,
           COALESCE(b.bytes, 0), m.pushed, m.pulled
    FROM repositories r JOIN m ON m.repo = r.name
    LEFT JOIN t ON t.repo = r.name LEFT JOIN b ON b.repo = r.name
    ORDER BY r.name";

pub(crate) const CACHED_TAGS: &str =
    "SELECT t.repo, COALESCE(r.upstream, ''), t.name, t.digest, t.updated_at, t.upstream_checked_at
     FROM tags t JOIN repositories r ON r.name = t.repo
     WHERE r.kind = 'cached' ORDER BY t.repo, t.name";

/// `BrowseMeta` for a store with a sqlx `pool` and a `parse_digest` in scope (a macro, as
/// [`row_cells`]: the row types share no usable trait bound).
macro_rules! browse_meta_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::meta::BrowseMeta for $store {
            async fn repository_summaries(&self) -> $crate::Result<Vec<$crate::RepoSummary>> {
                use sqlx::Row as _;
                let rows = sqlx::query($crate::meta::REPO_SUMMARIES)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| $crate::RepoSummary {
                        name: r.get(0),
                        upstream: r.get(1),
                        tags: r.get::<i64, _>(2) as u64,
                        manifests: r.get::<i64, _>(3) as u64,
                        bytes: r.get::<i64, _>(4) as u64,
                        last_push: r.get(5),
                        last_pull: r.get(6),
                    })
                    .collect())
            }

            async fn cached_tags(&self) -> $crate::Result<Vec<$crate::CachedTag>> {
                use sqlx::Row as _;
                let rows = sqlx::query($crate::meta::CACHED_TAGS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|r| {
                        Ok($crate::CachedTag {
                            repo: r.get(0),
                            upstream: r.get(1),
                            tag: r.get(2),
                            digest: parse_digest(r.get(3))?,
                            updated_at: r.get(4),
                            checked_at: r.get(5),
                        })
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use browse_meta_impl;
