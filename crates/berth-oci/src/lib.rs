//! The OCI Distribution protocol, spelled once.
//!
//! Architecture invariant: this crate does no I/O and depends on no runtime. Every
//! other crate receives names, digests and references already parsed by these types,
//! so nothing unvalidated can reach a path on disk or a SQL row.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod media;
pub mod name;
pub mod pattern;
pub mod route;

pub use digest::{Algorithm, Digest, DigestHasher};
pub use error::ErrorCode;
pub use manifest::{Descriptor, ManifestError, ManifestRef, ParsedManifest, RefKind};
pub use name::{NameError, Reference, RepoName, Tag};
pub use pattern::Pattern;
pub use route::{Route, RouteError, UploadId};
