//! Moving images: from any source (a registry, an OCI layout directory, an OCI or
//! `docker save` archive) to any destination (a registry, a layout, an archive), byte for
//! byte, digests preserved.
//!
//! The engine ([`copy`]) only knows the two traits below; each transport implements
//! them. Manifests are never re-serialised: what the source served is what the
//! destination receives.

pub mod archive;
pub mod creds;
pub mod docker_archive;
pub mod engine;
pub mod layout;
pub mod mirror;
pub mod progress;
pub mod reference;
pub mod registry;

use std::pin::Pin;

use berth_oci::{Descriptor, Digest};
use bytes::Bytes;
use futures_util::Stream;

pub use engine::{CopyOptions, CopyReport, Platform, copy, copy_image};
pub use progress::{Event, Observer};
pub use reference::{ImageRef, RegistryRef};

/// A blob's bytes as they arrive.
pub type BlobReader = Pin<Box<dyn Stream<Item = Result<Bytes, TransferError>> + Send>>;

/// A manifest exactly as stored at the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// What went wrong, with where: which side, which object, and the status when a
/// registry answered.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// `what` names the object (`blob sha256:...`, `manifest team/app:v1`); `at` the
    /// registry, layout or archive.
    #[error("{at}: {what}: {reason}")]
    Failed {
        at: String,
        what: String,
        reason: String,
        status: Option<u16>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("interrupted")]
    Interrupted,
}

/// Where images come from.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// For messages: `registry.example:5000/team/app`, `oci:/tmp/layout`.
    fn describe(&self) -> String;
    /// The manifest a tag or digest names.
    async fn manifest(&self, reference: &str) -> Result<Manifest, TransferError>;
    /// A blob's bytes from `offset` on (0 for all of them).
    async fn blob(&self, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader, TransferError>;
    /// Manifests whose `subject` is `digest` (the referrers API, or what a layout holds).
    async fn referrers(&self, _digest: &Digest) -> Result<Vec<Descriptor>, TransferError> {
        Ok(Vec::new())
    }
}

/// Where images go.
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    fn describe(&self) -> String;
    /// Whether the destination already holds the blob (then it is not sent).
    async fn has_blob(&self, digest: &Digest) -> Result<bool, TransferError>;
    /// Stores a blob; `progress` is told the bytes sent so far. Implementations resume a
    /// partly sent blob when they can (and then read the source from that offset).
    async fn put_blob(
        &self,
        source: &dyn Source,
        desc: &Descriptor,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), TransferError>;
    /// The offset the last `put_blob` of `digest` continued a partly sent upload from,
    /// if it did (for progress reports).
    fn resumed_from(&self, _digest: &Digest) -> Option<u64> {
        None
    }
    async fn has_manifest(&self, digest: &Digest) -> Result<bool, TransferError>;
    /// Stores a manifest under its digest and, when `tag` is given, that tag.
    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<(), TransferError>;
    /// Called once after everything was stored (an archive writes its index and closes).
    async fn finish(&self) -> Result<(), TransferError> {
        Ok(())
    }
}
