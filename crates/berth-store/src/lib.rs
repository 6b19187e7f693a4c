//! Bytes and rows.
//!
//! Architecture invariants:
//! - [`BlobStore`] holds bytes addressed by digest; [`MetaStore`] holds the rows that say
//!   what exists. A `blobs` row is written only after the BlobStore has committed bytes
//!   that hashed to its digest.
//! - Nothing here knows HTTP. Both traits are implemented once per backend (filesystem
//!   and SQLite today) and every implementation must pass the contract tests in this crate.

pub mod blob;
pub mod fs;
pub mod meta;
pub mod sqlite;

pub use blob::{BlobRead, BlobSink, BlobStore, ByteRange, UploadReader};
pub use meta::{
    BlobMeta, BrowseMeta, CachedTag, Deletion, GcReport, IntegrityMeta, LifecycleMeta, ManifestMeta,
    ManifestRow, MetaStore, NewManifest, PutManifest, RefRow, Referrer, Removal, RepoSummary, StorageStats,
    TagInfo, UploadMeta, UploadRow, Usage,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
