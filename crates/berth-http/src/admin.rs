//! `/admin`: lifecycle runs on demand (what `berth gc` calls). Answers only clients on
//! loopback addresses: triggering runs is an operator's act, not a remote one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_oci::ErrorCode;
use serde_json::json;

use crate::App;
use crate::error::ApiError;

/// Defaults of lifecycle runs, from the configuration.
#[derive(Clone, Debug)]
pub struct LifecycleDefaults {
    pub gc_grace: Duration,
    pub cache_grace: Duration,
}

fn loopback_only(peer: Option<SocketAddr>) -> Result<(), ApiError> {
    match peer {
        Some(p) if p.ip().is_loopback() || p.ip().to_canonical().is_loopback() => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            "the admin API answers only clients on this machine (loopback)",
        )),
    }
}

fn duration_param(q: &HashMap<String, String>, key: &str, default: Duration) -> Result<Duration, ApiError> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("{key}={v:?} is not a duration like \"1h\": {e}"),
            )
        }),
    }
}

pub async fn gc(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    req: axum::extract::Request,
) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let run = async {
        loopback_only(peer)?;
        let dry_run = matches!(q.get("dry_run").map(String::as_str), Some("1" | "true" | "yes"));
        let grace = duration_param(&q, "grace", app.lifecycle.gc_grace)?;
        let cache_grace = duration_param(&q, "cache_grace", app.lifecycle.cache_grace)?;
        let out = app.registry.collect_garbage(grace, cache_grace, dry_run).await?;
        let manifests: Vec<_> = out
            .report
            .manifests
            .iter()
            .map(|(repo, digest, size)| json!({"repository": repo, "digest": digest, "size": size}))
            .collect();
        let blobs: Vec<_> = out
            .report
            .blobs
            .iter()
            .map(|(digest, size)| json!({"digest": digest, "size": size}))
            .collect();
        Ok::<_, ApiError>(axum::Json(json!({
            "dry_run": out.dry_run,
            "grace_seconds": grace.as_secs(),
            "manifests": manifests,
            "links": out.report.links,
            "blobs": blobs,
            "bytes_freed": out.bytes_freed,
            "took_ms": out.took.as_millis() as u64,
        })))
    };
    match run.await {
        Ok(j) => j.into_response(),
        Err(e) => e.into_response(),
    }
}
