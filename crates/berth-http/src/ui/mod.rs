//! `/ui`: the web UI, server-rendered HTML from askama templates (compiled, auto-escaped),
//! one embedded stylesheet, charts as inline SVG, a few lines of progressive JavaScript
//! (copy buttons). Every page works without JavaScript.
//!
//! Access is decided exactly as for `/v2`: the same [`crate::auth::caller`] (Basic, bearer,
//! or a trusted proxy's user header) and the same `Auth::allowed`. A repository the
//! caller may not pull does not exist here (404, and absent from every list and chart).
//! Deleting needs `delete` on the repository. Dry runs of GC and retention need, with
//! access control off, a client on loopback (like `/admin`); with it on, a signed-in user
//! who may delete in every repository the run would touch (checked on the run's report).
//! Every POST must come from a page of this origin (`Origin`, or else `Referer`, names
//! the request's `Host`), so another site cannot make a signed-in browser delete.

mod chart;
mod pages;
mod repos;
mod view;

use std::net::SocketAddr;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use berth_auth::Action;
use berth_registry::cache::Located;

use crate::auth::{Caller, Facts};
use crate::{App, Transport};

/// The routes under `/ui`.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(login))
        .route("/ui/static/berth.css", get(stylesheet))
        .route("/ui/repos", get(repos::list))
        .route("/ui/repos/{*rest}", get(repos::get_page).post(repos::post_action))
        .route("/ui/cache", get(pages::cache))
        .route("/ui/health", get(pages::health))
        .route("/ui/runs/{job}", get(pages::run_form).post(pages::run_dry))
}

const CSS: &str = include_str!("berth.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

/// Who is looking, and from where.
pub(crate) struct Viewer {
    /// `None` when access control is off.
    caller: Option<Caller>,
    loopback: bool,
    /// `Host` as the client sent it (for pull commands and the same-origin check).
    host: String,
    tls: bool,
}

impl Viewer {
    pub(crate) fn may(&self, app: &App, loc: &Located, action: Action) -> bool {
        match &self.caller {
            None => true,
            Some(c) => c.allowed(app, loc).contains(action),
        }
    }

    /// Whether `name` (a repository's local name) is visible: the caller may pull it.
    pub(crate) fn sees(&self, app: &App, name: &str) -> bool {
        if self.caller.is_none() {
            return true;
        }
        name.parse()
            .ok()
            .and_then(|n| app.registry.locate(&n, None).ok())
            .is_some_and(|loc| self.may(app, &loc, Action::Pull))
    }

    pub(crate) fn user(&self) -> Option<&str> {
        self.caller.as_ref().and_then(|c| c.who.name.as_deref())
    }

    /// May start dry runs at all (the report is checked per repository afterwards).
    pub(crate) fn may_dry_run(&self) -> bool {
        match &self.caller {
            None => self.loopback,
            Some(c) => !c.who.is_anonymous(),
        }
    }

    pub(crate) fn access_control(&self) -> bool {
        self.caller.is_some()
    }
}

/// The viewer of a request; wrong credentials are a 401 page that asks again.
pub(crate) async fn viewer(app: &App, req: &Parts) -> Result<Viewer, Response> {
    let caller = crate::auth::caller(app, Facts::of_parts(req))
        .await
        .map_err(|e| sign_in_page(&format!("Signing in failed: {}", e.message)))?;
    let peer = req.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    Ok(Viewer {
        caller,
        loopback: peer.is_some_and(|p| p.ip().to_canonical().is_loopback()),
        host: host_of(&req.headers),
        tls: req.extensions.get::<Transport>().is_some_and(|t| t.tls),
    })
}

fn host_of(h: &HeaderMap) -> String {
    h.get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string()
}

/// `/ui/login`: a browser asked to sign in gets the Basic challenge until it sends
/// credentials that are right, and remembers them for the pages under `/ui/`.
async fn login(State(app): State<App>, req: Parts) -> Response {
    if app.access.is_none() {
        return Redirect::to("/ui/").into_response();
    }
    // Signed in: right Basic credentials, or a trusted proxy's forwarded user.
    match viewer(&app, &req).await {
        Ok(v) if v.user().is_some() => Redirect::to("/ui/").into_response(),
        Ok(_) => sign_in_page("Sign in with your registry user name and password."),
        Err(r) => r,
    }
}

#[derive(Template)]
#[template(path = "ui/message.html")]
struct MessagePage {
    chrome: view::Chrome,
    heading: String,
    text: String,
    back: Option<String>,
}

fn sign_in_page(text: &str) -> Response {
    let mut r = message(StatusCode::UNAUTHORIZED, "Sign in", text, Some("/ui/"));
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\", charset=\"UTF-8\""),
    );
    r
}

/// A page with one message: errors, refusals, "not found".
pub(crate) fn message(status: StatusCode, heading: &str, text: &str, back: Option<&str>) -> Response {
    let page = MessagePage {
        chrome: view::Chrome::bare(heading),
        heading: heading.to_string(),
        text: text.to_string(),
        back: back.map(str::to_string),
    };
    (status, html(page.render())).into_response()
}

pub(crate) fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page, or you may not see it.",
        Some("/ui/repos"),
    )
}

pub(crate) fn html(r: askama::Result<String>) -> Response {
    match r {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a UI template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered\n",
            )
                .into_response()
        }
    }
}

/// Errors of the domain as a page: what failed, in words.
pub(crate) fn failed(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "a UI page failed");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something failed",
        &e.to_string(),
        Some("/ui/"),
    )
}

/// POSTs must come from this origin: a form on another site cannot act with the
/// credentials a browser remembers for this one.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let host = host_of(headers);
    let from = |v: &str| {
        let rest = v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"))
            .unwrap_or("");
        rest.split('/').next() == Some(host.as_str())
    };
    let ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => from(o),
        None => headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(from),
    };
    if ok {
        Ok(())
    } else {
        Err(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This action must be sent from a page of this registry (the Origin or Referer header \
             does not name this host).",
            Some("/ui/"),
        ))
    }
}

pub(crate) fn forbidden(text: &str) -> Response {
    message(StatusCode::FORBIDDEN, "Not allowed", text, Some("/ui/"))
}
