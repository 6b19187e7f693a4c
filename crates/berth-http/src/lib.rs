//! The HTTP face of berth.
//!
//! Architecture invariant: this is the only crate that knows status codes and headers.
//! Handlers parse the request with berth-oci, call the domain in berth-registry, and map
//! its answer (or its error, through [`error::ApiError`]) to the wire.

pub mod admin;
pub mod auth;
pub mod error;
pub mod limits;
// Handlers return early with a page (`Result<_, Response>`); boxing it buys nothing.
#[allow(clippy::result_large_err)]
mod ui;
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
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as PromRegistry;

/// How a request reached berth; the listener puts one in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// The connection is TLS (URLs berth builds for the client are `https://`).
    pub tls: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: String,
}

/// Which endpoint a path is, for metric labels (a bounded set, never the raw path).
fn route_of(path: &str) -> &'static str {
    match path.strip_prefix("/v2") {
        Some("" | "/") => "base",
        Some(rest) => match berth_oci::Route::parse(rest.trim_start_matches('/')) {
            Ok(r) => r.kind(),
            Err(_) => "invalid",
        },
        None if path.starts_with("/admin/") => "admin",
        None if path == auth::TOKEN_PATH => "token",
        None if path == "/ui" || path.starts_with("/ui/") => "ui",
        None => match path {
            "/healthz" | "/readyz" => "health",
            "/metrics" => "metrics",
            _ => "other",
        },
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    bytes: Family<RouteLabels, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, r: &mut PromRegistry) {
        r.register(
            "berth_http_requests",
            "HTTP requests answered, by route, method and status",
            self.requests.clone(),
        );
        r.register(
            "berth_http_request_duration_seconds",
            "Time to the response head, by route and method",
            self.latency.clone(),
        );
        r.register(
            "berth_http_response_bytes",
            "Response body bytes announced (Content-Length), by route and method",
            self.bytes.clone(),
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
    /// `None` when access control is off.
    pub access: Option<auth::AccessControl>,
    /// Request rate, uploads in flight and body watch per client.
    pub limits: limits::HttpLimits,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v2", any(v2::dispatch))
        .route("/v2/", any(v2::dispatch))
        .route("/v2/{*rest}", any(v2::dispatch))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(auth::TOKEN_PATH, get(auth::token).post(auth::token))
        .merge(ui::routes())
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
        // Inside the access log, so refused requests are logged and counted too.
        .layer(middleware::from_fn_with_state(app.clone(), limits::enforce))
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
    let route = route_of(&path);
    let labels = RouteLabels {
        route,
        method: method.as_str().to_owned(),
    };
    app.metrics
        .latency
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    if let Some(n) = bytes.filter(|_| method != axum::http::Method::HEAD) {
        app.metrics.bytes.get_or_create(&labels).inc_by(n);
    }
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method: labels.method,
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
    if let Err(e) = app.registry.refresh_gauges().await {
        tracing::warn!(error = %e, "could not refresh the storage gauges");
    }
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
