//! The HTTP face of berth.
//!
//! Architecture invariant: this is the only crate that knows status codes and headers.
//! Handlers parse the request with berth-oci, call the domain in berth-registry, and map
//! its answer (or its error, through [`error::ApiError`]) to the wire.

pub mod admin;
pub mod error;
mod v2;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use berth_registry::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: u16,
}

#[derive(Clone, Default)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl HttpMetrics {
    pub fn register(&self, r: &mut PromRegistry) {
        r.register(
            "berth_http_requests",
            "HTTP requests answered, by method and status",
            self.requests.clone(),
        );
    }
}

#[derive(Clone)]
pub struct App {
    pub registry: Arc<Registry>,
    pub metrics: HttpMetrics,
    /// Everything /metrics shows; registered by the binary at start.
    pub prometheus: Arc<PromRegistry>,
    pub lifecycle: admin::LifecycleDefaults,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v2", any(v2::dispatch))
        .route("/v2/", any(v2::dispatch))
        .route("/v2/{*rest}", any(v2::dispatch))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/admin/gc",
            axum::routing::post(|s, q, r| admin::lifecycle(s, q, admin::Run::Gc, r)),
        )
        .route(
            "/admin/retention",
            axum::routing::post(|s, q, r| admin::lifecycle(s, q, admin::Run::Retention, r)),
        )
        .route(
            "/admin/evict",
            axum::routing::post(|s, q, r| admin::lifecycle(s, q, admin::Run::Evict, r)),
        )
        .route(
            "/admin/scrub",
            axum::routing::post(|s, q, r| admin::lifecycle(s, q, admin::Run::Scrub, r)),
        )
        .layer(middleware::from_fn_with_state(app.clone(), access_log))
        .with_state(app)
}

/// One line per request (method, path, status, bytes, duration to the response head)
/// and one count.
async fn access_log(State(app): State<App>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    tracing::info!(target: "berth::access", %method, path, status, bytes, micros = start.elapsed().as_micros() as u64);
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.as_str().to_owned(),
            status,
        })
        .inc();
    resp
}

async fn readyz(State(app): State<App>) -> Response {
    match app.registry.ready().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
        }
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &app.prometheus) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics encoding failed: {e}\n"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod docs {
    use super::*;

    /// Every metric /metrics can show is in the metrics reference.
    #[test]
    fn reference_lists_every_metric() {
        let mut prom = PromRegistry::default();
        berth_registry::RegistryMetrics::default().register(&mut prom);
        HttpMetrics::default().register(&mut prom);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &prom).unwrap();
        let reference = include_str!("../../../docs/reference/metrics.md");
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 5, "{text}");
        for name in names {
            let wire = if text.contains(&format!("# TYPE {name} counter")) {
                format!("`{name}_total`")
            } else {
                format!("`{name}`")
            };
            assert!(
                reference.contains(&wire),
                "docs/reference/metrics.md lacks {wire}"
            );
        }
    }
}
