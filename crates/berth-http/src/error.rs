//! The one mapping from domain errors to the wire: OCI error code, HTTP status, message.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::route::path;
use berth_oci::{ErrorCode, RouteError};
use berth_registry::RegistryError;
use serde_json::json;

pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: serde_json::Value,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = detail;
        self
    }

    pub fn header(mut self, name: &'static str, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn unsupported(method: &axum::http::Method, what: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("{method} is not supported on {what}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"errors": [{"code": self.code.as_str(), "message": self.message, "detail": self.detail}]});
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let mut resp = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        use berth_oci::NameError;
        let msg = e.to_string();
        match e {
            RouteError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, msg),
            RouteError::UploadId(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown, msg)
            }
            RouteError::Name(NameError::Digest(_)) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, msg)
            }
            RouteError::Name(NameError::BadTag(_)) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::TagInvalid, msg)
            }
            RouteError::Name(_) => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, msg),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use ErrorCode as C;
        use RegistryError as E;
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            E::BlobUnknown(d) => {
                ApiError::new(S::NOT_FOUND, C::BlobUnknown, msg).detail(json!({"digest": d}))
            }
            E::BlobDamaged(d) => {
                ApiError::new(S::NOT_FOUND, C::BlobUnknown, msg).detail(json!({"digest": d}))
            }
            E::UploadUnknown(_) => ApiError::new(S::NOT_FOUND, C::BlobUploadUnknown, msg),
            E::UploadInvalid(_) => ApiError::new(S::BAD_REQUEST, C::BlobUploadInvalid, msg),
            E::UploadOutOfOrder { expected, .. } => {
                ApiError::new(S::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid, msg)
                    .header("range", format!("0-{}", expected.saturating_sub(1)))
            }
            E::DigestMismatch { expected, actual } => ApiError::new(S::BAD_REQUEST, C::DigestInvalid, msg)
                .detail(json!({"expected": expected, "actual": actual})),
            E::SizeInvalid(_) => ApiError::new(S::BAD_REQUEST, C::SizeInvalid, msg),
            E::ManifestUnknown(..) => ApiError::new(S::NOT_FOUND, C::ManifestUnknown, msg),
            E::ManifestInvalid(_) => ApiError::new(S::BAD_REQUEST, C::ManifestInvalid, msg),
            E::ManifestBlobUnknown(d) => {
                ApiError::new(S::BAD_REQUEST, C::ManifestBlobUnknown, msg).detail(json!({"missing": d}))
            }
            E::ManifestTooLarge { .. } => ApiError::new(S::PAYLOAD_TOO_LARGE, C::SizeInvalid, msg),
            E::ManifestReferenced { .. } | E::BlobReferenced { .. } => {
                ApiError::new(S::CONFLICT, C::Denied, msg)
            }
            E::NameUnknown(_) => ApiError::new(S::NOT_FOUND, C::NameUnknown, msg),
            E::RangeInvalid { size } => ApiError::new(S::RANGE_NOT_SATISFIABLE, C::RangeInvalid, msg)
                .header("content-range", format!("bytes */{size}")),
            E::CacheReadOnly(_) => ApiError::new(S::FORBIDDEN, C::Denied, msg),
            E::NoSuchUpstream(_) => ApiError::new(S::NOT_FOUND, C::NameUnknown, msg),
            E::NameInvalid(_) => ApiError::new(S::BAD_REQUEST, C::NameInvalid, msg),
            E::UpstreamNotFound { what: "blob", .. } => ApiError::new(S::NOT_FOUND, C::BlobUnknown, msg),
            E::UpstreamNotFound { .. } => ApiError::new(S::NOT_FOUND, C::ManifestUnknown, msg),
            E::Upstream {
                status: Some(429), ..
            } => ApiError::new(S::TOO_MANY_REQUESTS, C::TooManyRequests, msg),
            E::Upstream { timeout: true, .. } => ApiError::new(S::GATEWAY_TIMEOUT, C::Unavailable, msg),
            E::Upstream { .. } | E::UpstreamInvalid { .. } => {
                ApiError::new(S::BAD_GATEWAY, C::Unavailable, msg)
            }
            E::Busy => ApiError::new(S::CONFLICT, C::Unavailable, msg),
            E::BlobTooLarge { limit } => {
                ApiError::new(S::PAYLOAD_TOO_LARGE, C::SizeInvalid, msg).detail(json!({"limit": limit}))
            }
            // About as long as this fill waited: turns free up as running fills end.
            E::FillsBusy { waited, .. } => ApiError::new(S::TOO_MANY_REQUESTS, C::TooManyRequests, msg)
                .header("retry-after", crate::limits::retry_after(waited)),
            E::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    C::Internal,
                    "internal storage error; the server log has the details",
                )
            }
        }
    }
}

/// Errors about an upload say where the upload is, so a client can ask for its state.
pub fn at_upload(e: RegistryError, name: &berth_oci::RepoName, id: &berth_oci::UploadId) -> ApiError {
    let keep_session = matches!(
        e,
        RegistryError::UploadOutOfOrder { .. } | RegistryError::UploadInvalid(_)
    );
    let api = ApiError::from(e);
    if keep_session {
        api.header("location", path::upload(name, id))
            .header("docker-upload-uuid", id.to_string())
    } else {
        api
    }
}
