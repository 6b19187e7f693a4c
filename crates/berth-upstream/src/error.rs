//! `UpstreamError`: what went wrong talking to a remote registry, and whether a cache may
//! serve a stale copy because of it.

use std::error::Error as _;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// An answer other than success, 401/403, 404 or 429. `code` and `message` come from
    /// the upstream's OCI error body when it sent one.
    #[error("upstream answered HTTP {status}{}: {message}", code_suffix(.code))]
    Status {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// 404: the upstream has no such repository, manifest or blob.
    #[error("not found upstream{}: {message}", code_suffix(.code))]
    NotFound { code: Option<String>, message: String },
    /// 429: the upstream is rate limiting us. `retry_after` is its `Retry-After` in
    /// seconds, when it sent one as a number.
    #[error("upstream is rate limiting requests (HTTP 429){}", retry_suffix(.retry_after))]
    TooManyRequests { retry_after: Option<Duration> },
    /// Connecting, waiting for an answer or for the next body chunk took too long.
    #[error("upstream timed out: {0}")]
    Timeout(String),
    /// The upstream could not be reached, or the connection broke before an answer.
    #[error("cannot reach upstream: {0}")]
    Connect(String),
    /// The connection broke or the body was cut short after the answer began.
    #[error("upstream body failed: {0}")]
    Body(String),
    /// The upstream (or its token server) refused us, or wants credentials we lack.
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    /// The configuration or the upstream's answer is unusable: bad URL, digest that does
    /// not match, unexpected media type, manifest too large.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// The upstream is down, slow, failing or rate limiting: a cache may serve what it has.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status >= 500,
            UpstreamError::TooManyRequests { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Connect(_)
            | UpstreamError::Body(_) => true,
            UpstreamError::NotFound { .. } | UpstreamError::Auth(_) | UpstreamError::Invalid(_) => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound { .. })
    }

    /// Classifies a reqwest error. Its message names the URL without its query (never
    /// credentials: they travel only in headers, `Upstream::new` rejects URLs with user
    /// info, and the query of a redirect to a CDN may hold a signature) and every cause,
    /// so "connection refused" or "incomplete body" is visible.
    pub(crate) fn from_reqwest(mut e: reqwest::Error) -> UpstreamError {
        if let Some(url) = e.url_mut() {
            url.set_query(None);
        }
        let mut msg = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            source = cause.source();
        }
        if e.is_timeout() {
            UpstreamError::Timeout(msg)
        } else if e.is_builder() {
            UpstreamError::Invalid(msg)
        } else if e.is_body() || e.is_decode() {
            UpstreamError::Body(msg)
        } else {
            // connect, request (reset before an answer), redirect loops: the upstream is
            // not answering usefully, which a cache treats as "down".
            UpstreamError::Connect(msg)
        }
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn retry_suffix(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {} s", d.as_secs()))
        .unwrap_or_default()
}

/// The first error of an OCI error body: `{"errors":[{"code":..,"message":..}]}`.
pub(crate) fn oci_error(body: &[u8]) -> Option<(Option<String>, String)> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    let first = body.errors.into_iter().next()?;
    let message = first.message.unwrap_or_default();
    Some((first.code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_or_not() {
        let status = |s| UpstreamError::Status {
            status: s,
            code: None,
            message: String::new(),
        };
        assert!(status(502).is_transient());
        assert!(!status(400).is_transient());
        assert!(UpstreamError::TooManyRequests { retry_after: None }.is_transient());
        assert!(UpstreamError::Timeout(String::new()).is_transient());
        assert!(!UpstreamError::Auth(String::new()).is_transient());
        let nf = UpstreamError::NotFound {
            code: None,
            message: String::new(),
        };
        assert!(nf.is_not_found() && !nf.is_transient());
    }

    #[test]
    fn messages() {
        let e = UpstreamError::Status {
            status: 400,
            code: Some("NAME_INVALID".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "upstream answered HTTP 400 NAME_INVALID: bad");
        let e = UpstreamError::TooManyRequests {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            e.to_string(),
            "upstream is rate limiting requests (HTTP 429), retry after 7 s"
        );
    }

    #[test]
    fn oci_error_bodies() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            oci_error(body),
            Some((Some("MANIFEST_UNKNOWN".into()), "manifest unknown".into()))
        );
        assert_eq!(oci_error(b"<html>502</html>"), None);
        assert_eq!(oci_error(br#"{"errors":[]}"#), None);
    }
}
