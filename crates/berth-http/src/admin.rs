//! `/admin`: lifecycle runs on demand (what `berth gc`, `berth retention` and
//! `berth evict` call). Answers only clients on loopback addresses: triggering runs is an
//! operator's act, not a remote one. Every run takes `dry_run=true`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_oci::ErrorCode;
use berth_registry::integrity::ScrubOptions;
use berth_registry::lifecycle::{EvictionPolicy, GcOutcome, Grace, Pattern, RetentionRule};
use serde_json::{Value, json};

use crate::App;
use crate::error::ApiError;

/// Lifecycle settings from the configuration.
#[derive(Clone, Debug)]
pub struct LifecycleDefaults {
    pub grace: Grace,
    /// Scrub re-hash rate limit, bytes per second (0: unlimited).
    pub scrub_max_bytes_per_sec: u64,
    pub rules: Vec<RetentionRule>,
    pub eviction: EvictionPolicy,
}

#[derive(Clone, Copy)]
pub enum Run {
    Gc,
    Retention,
    Evict,
    Scrub,
}

fn loopback_only(peer: Option<SocketAddr>) -> Result<(), ApiError> {
    match peer {
        Some(p) if p.ip().to_canonical().is_loopback() => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            "the admin API answers only clients on this machine (loopback)",
        )),
    }
}

fn grace(q: &HashMap<String, String>, default: Grace) -> Result<Grace, ApiError> {
    let parse = |key: &str, d| match q.get(key) {
        None => Ok(d),
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("{key}={v:?} is not a duration like \"1h\": {e}"),
            )
        }),
    };
    Ok(Grace {
        hosted: parse("grace", default.hosted)?,
        cached: parse("cache_grace", default.cached)?,
    })
}

/// Most entries of each kind listed in an answer; the counts and bytes stay exact. A
/// collection of 50,000 blobs would otherwise build a response of tens of MiB.
const LISTED: usize = 10_000;

fn gc_json(out: &GcOutcome) -> Value {
    let manifests: Vec<_> = out
        .report
        .manifests
        .iter()
        .take(LISTED)
        .map(|(repo, digest, size)| json!({"repository": repo, "digest": digest, "size": size}))
        .collect();
    let blobs: Vec<_> = out
        .report
        .blobs
        .iter()
        .take(LISTED)
        .map(|(digest, size)| json!({"digest": digest, "size": size}))
        .collect();
    json!({
        "dry_run": out.dry_run,
        "manifests": manifests,
        "manifests_total": out.report.manifests.len(),
        "links": out.report.links,
        "blobs": blobs,
        "blobs_total": out.report.blobs.len(),
        "bytes_freed": out.bytes_freed,
        "took_ms": out.took.as_millis() as u64,
    })
}

fn tags_json(tags: &[(String, String)]) -> Value {
    tags.iter()
        .take(LISTED)
        .map(|(repo, tag)| json!({"repository": repo, "tag": tag}))
        .collect()
}

async fn run(app: &App, what: Run, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    let dry_run = matches!(q.get("dry_run").map(String::as_str), Some("1" | "true" | "yes"));
    let grace = grace(q, app.lifecycle.grace)?;
    let r = &app.registry;
    Ok(match what {
        Run::Gc => gc_json(&r.collect_garbage(grace, dry_run).await?),
        Run::Retention => {
            let out = r.apply_retention(&app.lifecycle.rules, grace, dry_run).await?;
            let mut v = gc_json(&out.gc);
            v["tags"] = tags_json(&out.tags);
            v["tags_total"] = json!(out.tags.len());
            v
        }
        Run::Scrub => {
            let repositories = match q.get("repo") {
                Some(p) => Some(Pattern::parse(p).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        format!("repo: {e}"),
                    )
                })?),
                None => None,
            };
            let opts = ScrubOptions {
                repositories,
                repair: !dry_run && matches!(q.get("repair").map(String::as_str), Some("1" | "true" | "yes")),
                max_bytes_per_sec: app.lifecycle.scrub_max_bytes_per_sec,
            };
            let out = r.scrub(&opts).await?;
            let problems: Vec<_> = out
                .problems
                .iter()
                .map(|p| {
                    json!({"kind": p.kind, "subject": p.subject, "detail": p.detail, "affected": p.affected,
                           "cached": p.cached, "repaired": p.repaired})
                })
                .collect();
            json!({
                "repair": opts.repair,
                "blobs_checked": out.blobs_checked,
                "bytes_hashed": out.bytes_hashed,
                "references_checked": out.references_checked,
                "tags_checked": out.tags_checked,
                "problems": problems,
                "took_ms": out.took.as_millis() as u64,
            })
        }
        Run::Evict => {
            let out = r.evict(app.lifecycle.eviction, grace, dry_run).await?;
            let mut v = gc_json(&out.gc);
            v["tags"] = tags_json(&out.images);
            v["tags_total"] = json!(out.images.len());
            v["cached_bytes_before"] = json!(out.cached_bytes_before);
            v
        }
    })
}

pub async fn lifecycle(
    State(app): State<App>,
    Query(q): Query<HashMap<String, String>>,
    what: Run,
    req: axum::extract::Request,
) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let result = match loopback_only(peer) {
        Ok(()) => run(&app, what, &q).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
