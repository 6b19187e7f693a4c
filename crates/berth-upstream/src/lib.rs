//! The client berth uses to talk to remote registries: the pull-through cache and
//! `berth probe`, `berth copy` and `berth mirror`.
//!
//! ```text
//! Upstream::new(UpstreamConfig) -> Result<Upstream, UpstreamError>     cheap to clone
//!   .name() -> &str
//!   .remote_repo(&RepoName) -> Result<RepoName, UpstreamError>      library/ mapping
//!   .head_manifest(&RepoName, &Reference) -> ManifestHead           digest, media type, size
//!   .get_manifest(&RepoName, &Reference, max_bytes) -> (ManifestHead, Bytes)
//!   .get_blob(&RepoName, &Digest) -> BlobStream { size, body }      streamed, never buffered
//!   .head_blob(&RepoName, &Digest) -> u64                           size, without the bytes
//!   .pushing() -> Upstream                      same registry, tokens for pull,push
//!   .get_blob_from(repo, digest, offset) -> BlobStream              Range: bytes=offset-
//!   .blob_exists / .manifest_exists -> Option<..>                   HEAD, 404 is None
//!   .start_upload(repo, mount) -> UploadStart::{Mounted, Session(url)}
//!   .upload_status(repo, url) -> Option<u64>    bytes held; None: session lost
//!   .upload_chunk(repo, url, offset, len, body) -> next url        PATCH + Content-Range
//!   .finish_upload(repo, url, digest, offset, len, body)           PUT ?digest=
//!   .put_manifest(repo, reference, media_type, bytes) -> PushedManifest
//!   .referrers(repo, digest, max) -> Option<Bytes>                 404 is None
//!   .catalog() / .tags(repo) -> Vec<String>                        Link pages followed
//! BlobStream::next_chunk() -> Option<Result<Bytes, UpstreamError>>
//! UpstreamError::{is_transient, is_not_found}
//! ```
//!
//! What callers can rely on:
//! - **Bytes as the upstream stores them.** Manifest requests accept exactly
//!   [`berth_oci::media::MANIFEST_TYPES`] (OCI manifest and index, Docker schema2 manifest
//!   and manifest list), so the upstream never converts and digests stay byte for byte.
//!   A manifest whose `Content-Type` is not one of them is [`UpstreamError::Invalid`].
//! - **Manifests are verified.** The bytes `get_manifest` returns hash to the reference
//!   when it is a digest, and to the upstream's `Docker-Content-Digest` when it sends one;
//!   any disagreement is [`UpstreamError::Invalid`]. The returned digest is the manifest's
//!   digest (sha256 of the bytes when the upstream names none).
//! - **Blobs are not verified here**: `get_blob` streams the body as it arrives, and the
//!   caller hashes it on its way to the store (which it must do anyway). What this crate
//!   guarantees is that a body never ends cleanly when it is short: fewer (or more) bytes
//!   than `Content-Length`, a stall longer than `read_timeout`, or a dropped connection
//!   end the stream with an error.
//! - **Time is bounded.** `connect_timeout` bounds each connect; `read_timeout` bounds the
//!   silence between two reads (headers or body chunks); `request_timeout` bounds a whole
//!   non-streaming call, token dance included, and for `get_blob` everything up to the
//!   response headers.
//! - **Auth.** Requests go anonymous first. A `401` is answered once: a `Bearer`
//!   challenge (realm, service, scope) fetches a token from the realm (with Basic
//!   credentials when configured) and retries; a `Basic` challenge retries with the
//!   configured credentials. Tokens are cached per scope (`repository:<remote repo>:pull`)
//!   until shortly before they expire and sent proactively on later requests; a Basic
//!   upstream gets credentials proactively once it has asked for them. Credentials and
//!   tokens are never logged nor put in an error message.
//! - **Errors say whether to serve stale.** [`UpstreamError::is_transient`] is true for an
//!   upstream that is down, slow, failing (5xx) or rate limiting (429).
//!
//! Architecture invariant: this crate knows HTTP only as a client; it decides nothing
//! about what is stored. Paths are built from validated names by `berth_oci::route::path`.

mod auth;
mod client;
mod error;
mod push;

pub use client::{BlobStream, ManifestHead, Upstream, UpstreamConfig};
pub use error::UpstreamError;
pub use push::{PushedManifest, UploadStart};
