//! Bytes and rows.
//!
//! Architecture invariants:
//! - [`BlobStore`] holds bytes addressed by digest; [`MetaStore`] holds the rows that say
//!   what exists. A `blobs` row is written only after the BlobStore has committed bytes
//!   that hashed to its digest.
//! - Nothing here knows HTTP. Both traits are implemented once per backend (blobs: the
//!   filesystem and S3; rows: SQLite and PostgreSQL) and every implementation must pass
//!   the contract tests in this crate.
//! - Both metadata backends take their schema from `migrations/<backend>/` through
//!   [`migrate`]; neither creates a table anywhere else.

pub mod blob;
pub mod fs;
pub mod meta;
mod migrate;
pub mod postgres;
pub mod s3;
pub mod sqlite;

pub use blob::{BlobRead, BlobSink, BlobStore, ByteRange, UploadReader};
pub use meta::{
    BlobMeta, BrowseMeta, COPIED_TABLES, CachedTag, Cell, ColumnKind, Coordination, Deletion, GcReport,
    IntegrityMeta, LifecycleMeta, LockGuard, ManifestMeta, ManifestRow, MetaStore, NewManifest, PutManifest,
    RefRow, Referrer, Removal, RepoSummary, RowCopy, RowReplace, RowSnapshot, StorageStats, Table, TagInfo,
    UploadMeta, UploadRow, Usage,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("metadata schema: {0}")]
    Schema(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
