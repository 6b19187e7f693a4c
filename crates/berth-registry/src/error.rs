use berth_oci::{Digest, Reference, RepoName, UploadId};
use berth_store::StoreError;

/// Everything a registry operation can refuse or fail with. berth-http maps each variant
/// to an OCI error code, an HTTP status and this message.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    #[error("upload {0} is not known in this repository (finished, cancelled, expired or never started)")]
    UploadUnknown(UploadId),
    #[error("{0}")]
    UploadInvalid(String),
    #[error(
        "chunk starts at byte {got} but upload {id} holds {expected} bytes; send chunks in order, starting at {expected}"
    )]
    UploadOutOfOrder { id: UploadId, expected: u64, got: u64 },
    #[error("digest mismatch: the client said {expected}, the uploaded bytes hash to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("manifest {0} is not known in repository {1}")]
    ManifestUnknown(Reference, RepoName),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest references content that is not in this repository: {}", list(.0))]
    ManifestBlobUnknown(Vec<Digest>),
    #[error(
        "manifest is {size} bytes; this registry accepts manifests up to {limit} bytes ([limits] max_manifest_bytes)"
    )]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("manifest {child} is a child of index {parent} in this repository; delete the index first")]
    ManifestReferenced { child: Digest, parent: Digest },
    #[error("blob {blob} is used by manifest {manifest} in this repository; delete the manifest first")]
    BlobReferenced { blob: Digest, manifest: Digest },
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    #[error("requested range is outside the blob's {size} bytes")]
    RangeInvalid { size: u64 },
    /// Metadata says the blob exists, the bytes say otherwise. Logged and counted.
    #[error("blob {0} is recorded but its bytes are missing or damaged on disk; it cannot be served")]
    BlobDamaged(Digest),
    #[error(
        "repository {0} is a cache of an upstream registry and cannot be pushed to; push to a hosted repository"
    )]
    CacheReadOnly(RepoName),
    #[error(
        "no upstream registry is configured for {0:?}; berth only contacts the upstreams in its configuration"
    )]
    NoSuchUpstream(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("upstream {upstream} has no {what} {reference}")]
    UpstreamNotFound {
        upstream: String,
        what: &'static str,
        reference: String,
    },
    #[error("upstream {upstream} failed: {message}")]
    Upstream {
        upstream: String,
        status: Option<u16>,
        timeout: bool,
        message: String,
    },
    #[error("upstream {upstream} sent something invalid: {message}")]
    UpstreamInvalid { upstream: String, message: String },
    #[error(
        "this upload would grow past {limit} bytes, the largest blob this registry accepts (limits.max_blob_bytes); the upload session was removed"
    )]
    BlobTooLarge { limit: u64 },
    #[error(
        "{limit} blob fills from upstream registries are already running and this one waited {}s for a turn (limits.max_concurrent_fills); try again shortly",
        .waited.as_secs()
    )]
    FillsBusy {
        limit: usize,
        waited: std::time::Duration,
    },
    #[error(
        "another lifecycle run (garbage collection, retention, eviction or scrub) is in progress, here or on another replica; try again when it ends"
    )]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn list(d: &[Digest]) -> String {
    d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
