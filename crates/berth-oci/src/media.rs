//! Media types and header names of the distribution protocol.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// The manifest media types berth stores and serves.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Layers that registries need not hold (they name URLs elsewhere).
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
}

/// The media type part of a Content-Type header, without parameters.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

pub mod header {
    pub const API_VERSION: &str = "docker-distribution-api-version";
    pub const API_VERSION_VALUE: &str = "registry/2.0";
    pub const CONTENT_DIGEST: &str = "docker-content-digest";
    pub const UPLOAD_UUID: &str = "docker-upload-uuid";
    pub const OCI_SUBJECT: &str = "oci-subject";
    pub const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
    pub const OCI_CHUNK_MIN_LENGTH: &str = "oci-chunk-min-length";
    /// On answers from a cached repository: the upstream it mirrors.
    pub const OCI_NAMESPACE: &str = "oci-namespace";
}
