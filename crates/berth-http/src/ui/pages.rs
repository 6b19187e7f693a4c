//! The overview, the cache and health pages, and dry runs of GC and retention.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use berth_auth::Action;
use berth_registry::RegistryError;
use berth_registry::integrity::Problem;
use berth_registry::lifecycle::GcOutcome;

use super::chart::{self, Bar};
use super::view::{self, Chrome, Size, When, enc, short};
use super::{Viewer, failed, forbidden, html, message, same_origin, viewer};
use crate::App;

/// Repositories named in the storage chart of the overview.
const TOP_REPOS: usize = 10;
/// Entries of each kind listed in a dry run's result.
const LISTED: usize = 200;

pub(crate) struct RunRow {
    job: &'static str,
    when: When,
    took: String,
    ok: bool,
    text: String,
}

pub(crate) struct ProblemRow {
    kind: &'static str,
    subject: String,
    detail: String,
    /// Affected images the viewer may see, with links to their repositories.
    affected: Vec<(String, String)>,
    cached: bool,
    repaired: Option<String>,
}

pub(crate) struct VerifyRow {
    when: When,
    image: String,
    link: String,
    result: &'static str,
    problems: String,
}

pub(crate) struct ProbeRow {
    when: When,
    reference: String,
    link: String,
    ok: bool,
    summary: String,
    problems: String,
}

struct Health {
    ready: Result<(), String>,
    hosted: Size,
    cached: Size,
    chart: String,
    runs: Vec<RunRow>,
    problems: Vec<ProblemRow>,
    /// Problems whose affected images the viewer may not see.
    hidden_problems: usize,
    verifications: Vec<VerifyRow>,
    verified_ok: u64,
    verified_failed: u64,
    /// The server's own probes (`[probe]`), those the viewer may see.
    probes: Vec<ProbeRow>,
}

fn run_rows(app: &App) -> Vec<RunRow> {
    let last = app.registry.last_runs();
    [
        ("garbage collection", last.gc),
        ("retention", last.retention),
        ("eviction", last.evict),
        ("scrub", last.scrub),
    ]
    .into_iter()
    .map(|(job, r)| match r {
        None => RunRow {
            job,
            when: view::when(None),
            took: "—".into(),
            ok: true,
            text: "no run since the server started".into(),
        },
        Some(r) => RunRow {
            job,
            when: view::when(Some(r.at)),
            took: format!("{:.1} s", r.took.as_secs_f64()),
            ok: r.outcome.is_ok(),
            text: match r.outcome {
                Ok(s) => s,
                Err(e) => format!("failed: {e}"),
            },
        },
    })
    .collect()
}

/// `repo:tag` or `repo@digest` -> the repository.
fn repo_of(affected: &str) -> &str {
    let cut = affected
        .rfind('@')
        .or_else(|| affected.rfind(':').filter(|i| !affected[*i..].contains('/')));
    cut.map_or(affected, |i| &affected[..i])
}

fn problem_rows(app: &App, v: &Viewer, problems: Vec<Problem>) -> (Vec<ProblemRow>, usize) {
    let mut rows = Vec::new();
    let mut hidden = 0;
    for p in problems {
        let affected: Vec<(String, String)> = p
            .affected
            .iter()
            .filter(|a| v.sees(app, repo_of(a)))
            .map(|a| (a.clone(), format!("/ui/repos/{}", enc(repo_of(a)))))
            .collect();
        // A problem touching only what the viewer may not see is counted, not shown.
        if affected.is_empty() && !(v.may_dry_run() && p.affected.is_empty()) {
            hidden += 1;
            continue;
        }
        rows.push(ProblemRow {
            kind: p.kind,
            subject: p.subject,
            detail: p.detail,
            affected,
            cached: p.cached,
            repaired: p.repaired,
        });
    }
    (rows, hidden)
}

async fn collect_health(app: &App, v: &Viewer) -> Result<Health, Response> {
    let reg = &app.registry;
    let st = reg.storage_stats().await.map_err(failed)?;
    let chart = chart::bars(
        "Storage by repository kind",
        &[
            Bar {
                label: "hosted".into(),
                value: st.hosted_bytes as f64,
                text: view::size(st.hosted_bytes).human,
                class: "hosted",
            },
            Bar {
                label: "cached".into(),
                value: st.cached_bytes as f64,
                text: view::size(st.cached_bytes).human,
                class: "cached",
            },
        ],
        None,
    );
    let last = reg.last_runs();
    let (problems, hidden_problems) = problem_rows(app, v, last.scrub_problems);
    let verifications = last
        .verifications
        .into_iter()
        .filter(|x| v.sees(app, &x.repo))
        .map(|x| VerifyRow {
            when: view::when(Some(x.at)),
            image: match &x.tag {
                Some(t) => format!("{}:{t}", x.repo),
                None => format!("{}@{}", x.repo, short(&x.digest.to_string())),
            },
            link: format!("/ui/repos/{}/-/manifests/{}", enc(&x.repo), x.digest),
            result: x.result,
            problems: x.problems.join("; "),
        })
        .collect();
    let probes = last
        .probes
        .into_iter()
        .filter(|p| v.sees(app, &p.repo))
        .map(|p| ProbeRow {
            when: view::when(Some(p.at)),
            link: format!("/ui/repos/{}", enc(&p.repo)),
            reference: p.reference,
            ok: p.problems.is_empty(),
            summary: p.summary,
            problems: p.problems.join("; "),
        })
        .collect();
    let m = reg.metrics();
    Ok(Health {
        ready: reg.ready().await.map_err(|e| e.to_string()),
        hosted: view::size(st.hosted_bytes),
        cached: view::size(st.cached_bytes),
        chart,
        runs: run_rows(app),
        problems,
        hidden_problems,
        verifications,
        verified_ok: m.push_verifications_of("ok"),
        verified_failed: m.push_verifications_of("failed") + m.push_verifications_of("error"),
        probes,
    })
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    h: Health,
    repos: usize,
    tags: u64,
    repo_chart: String,
    upstreams: usize,
}

/// `/ui/`: health at a glance, storage, the last runs, integrity problems.
pub(crate) async fn overview(State(app): State<App>, req: Parts) -> Response {
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let h = match collect_health(&app, &v).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let mut repos = match app.registry.repository_summaries().await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    repos.retain(|r| v.sees(&app, &r.name));
    let tags = repos.iter().map(|r| r.tags).sum();
    let count = repos.len();
    repos.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    let bars: Vec<Bar> = repos
        .iter()
        .take(TOP_REPOS)
        .map(|r| Bar {
            label: r.name.clone(),
            value: r.bytes as f64,
            text: view::size(r.bytes).human,
            class: if r.upstream.is_some() { "cached" } else { "hosted" },
        })
        .collect();
    let page = OverviewPage {
        chrome: Chrome::new("Overview", "overview", &v),
        repo_chart: chart::bars("Largest repositories", &bars, None),
        h,
        repos: count,
        tags,
        upstreams: app.registry.upstreams().len(),
    };
    html(page.render())
}

#[derive(Template)]
#[template(path = "ui/health.html")]
struct HealthPage {
    chrome: Chrome,
    h: Health,
    may_dry_run: bool,
}

/// `/ui/health`: storage, the last runs, integrity problems, push verifications.
async fn health_page(app: &App, v: &Viewer) -> Response {
    let h = match collect_health(app, v).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let page = HealthPage {
        chrome: Chrome::new("Health", "health", v),
        h,
        may_dry_run: v.may_dry_run(),
    };
    html(page.render())
}

pub(crate) async fn health(State(app): State<App>, req: Parts) -> Response {
    match viewer(&app, &req).await {
        Ok(v) => health_page(&app, &v).await,
        Err(r) => r,
    }
}

pub(crate) struct UpstreamRow {
    name: String,
    ratio: String,
    hits: u64,
    misses: u64,
    stale: u64,
    revalidated: u64,
    errors: u64,
    error_detail: String,
    from_cache: Size,
    fetched: Size,
    ttl: String,
}

pub(crate) struct FreshRow {
    repo: String,
    link: String,
    tag: String,
    digest_short: String,
    digest: String,
    checked: When,
    fresh: bool,
}

#[derive(Template)]
#[template(path = "ui/cache.html")]
struct CachePage {
    chrome: Chrome,
    upstreams: Vec<UpstreamRow>,
    ratio_chart: String,
    bytes_chart: String,
    fresh: Vec<FreshRow>,
}

/// `/ui/cache`: per upstream, what the cache saved and what failed; each cached tag's age.
pub(crate) async fn cache(State(app): State<App>, req: Parts) -> Response {
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let m = app.registry.metrics();
    let mut upstreams = Vec::new();
    let (mut ratio_bars, mut byte_bars) = (Vec::new(), Vec::new());
    for s in app.registry.upstreams() {
        let n = s.name.as_str();
        let c = |kind, result| m.cache_count(n, kind, result);
        // Hits: answered without fetching a body from the upstream (a revalidation asks
        // it only for a digest). Misses: a body was fetched (or joined while fetching).
        let hits =
            c("manifest", "hit") + c("manifest", "revalidated") + c("manifest", "stale") + c("blob", "hit");
        let misses =
            c("manifest", "miss") + c("manifest", "moved") + c("blob", "miss") + c("blob", "coalesced");
        let errors = m.upstream_errors_of(n);
        let ratio = if hits + misses == 0 {
            None
        } else {
            Some(hits as f64 / (hits + misses) as f64)
        };
        let (from_cache, fetched) = (m.cache_bytes_of(n, "cache"), m.cache_bytes_of(n, "upstream"));
        ratio_bars.push(Bar {
            label: n.to_string(),
            value: ratio.unwrap_or(0.0),
            text: ratio.map_or("no requests".into(), |r| format!("{:.1} %", r * 100.0)),
            class: if ratio.unwrap_or(1.0) >= 0.5 { "ok" } else { "warn" },
        });
        byte_bars.push(Bar {
            label: format!("{n} from cache"),
            value: from_cache as f64,
            text: view::size(from_cache).human,
            class: "ok",
        });
        byte_bars.push(Bar {
            label: format!("{n} fetched"),
            value: fetched as f64,
            text: view::size(fetched).human,
            class: "cached",
        });
        upstreams.push(UpstreamRow {
            name: n.to_string(),
            ratio: ratio.map_or("—".into(), |r| format!("{:.1} %", r * 100.0)),
            hits,
            misses,
            stale: c("manifest", "stale"),
            revalidated: c("manifest", "revalidated"),
            errors: errors.iter().map(|e| e.1).sum(),
            error_detail: errors
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            from_cache: view::size(from_cache),
            fetched: view::size(fetched),
            ttl: humantime::format_duration(s.manifest_ttl).to_string(),
        });
    }
    let now = view::now();
    let tags = match app.registry.cached_tags().await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let ttl_of = |up: &str| {
        app.registry
            .upstreams()
            .iter()
            .find(|s| s.name == up)
            .map(|s| s.manifest_ttl.as_secs() as i64)
    };
    let fresh = tags
        .into_iter()
        .filter(|t| v.sees(&app, &t.repo))
        .map(|t| {
            let checked = t.checked_at.unwrap_or(t.updated_at);
            let d = t.digest.to_string();
            FreshRow {
                link: format!("/ui/repos/{}", enc(&t.repo)),
                fresh: ttl_of(&t.upstream).is_some_and(|ttl| now - checked < ttl),
                repo: t.repo,
                tag: t.tag,
                digest_short: short(&d),
                digest: d,
                checked: view::when(Some(checked)),
            }
        })
        .collect();
    let page = CachePage {
        chrome: Chrome::new("Cache", "cache", &v),
        ratio_chart: chart::bars("Cache hit ratio per upstream", &ratio_bars, Some(1.0)),
        bytes_chart: chart::bars("Bytes served from the cache and fetched", &byte_bars, None),
        upstreams,
        fresh,
    };
    html(page.render())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    Gc,
    Retention,
}

fn job(s: &str) -> Option<Job> {
    match s {
        "gc" => Some(Job::Gc),
        "retention" => Some(Job::Retention),
        _ => None,
    }
}

fn job_title(j: Job) -> &'static str {
    match j {
        Job::Gc => "Garbage collection (dry run)",
        Job::Retention => "Retention (dry run)",
    }
}

pub(crate) struct Gone {
    what: String,
    link: String,
    size: Size,
}

#[derive(Template)]
#[template(path = "ui/run.html")]
struct RunPage {
    chrome: Chrome,
    heading: &'static str,
    action: String,
    ran: bool,
    summary: String,
    tags: Vec<Gone>,
    tags_total: usize,
    manifests: Vec<Gone>,
    manifests_total: usize,
    blobs_total: usize,
    bytes: Size,
    rules: usize,
}

fn refuse_dry_run(v: &Viewer) -> Option<Response> {
    if v.may_dry_run() {
        return None;
    }
    Some(forbidden(if v.access_control() {
        "Sign in to run a dry run; it is shown only to users who may delete in every repository it touches."
    } else {
        "With access control off, dry runs can be started only from this machine (loopback), like the admin API."
    }))
}

/// GET `/ui/runs/{gc|retention}`: what a dry run is, and the button to start one.
pub(crate) async fn run_form(State(app): State<App>, Path(j): Path<String>, req: Parts) -> Response {
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(j) = job(&j) else {
        return super::not_found();
    };
    if let Some(r) = refuse_dry_run(&v) {
        return r;
    }
    let page = RunPage {
        chrome: Chrome::new(job_title(j), "health", &v),
        heading: job_title(j),
        action: format!("/ui/runs/{}", if j == Job::Gc { "gc" } else { "retention" }),
        ran: false,
        summary: String::new(),
        tags: vec![],
        tags_total: 0,
        manifests: vec![],
        manifests_total: 0,
        blobs_total: 0,
        bytes: view::size(0),
        rules: app.lifecycle.rules.len(),
    };
    html(page.render())
}

/// POST `/ui/runs/{gc|retention}`: a dry run (never a real one from the UI), shown only
/// if the caller may delete in every repository it would touch.
pub(crate) async fn run_dry(State(app): State<App>, Path(j): Path<String>, req: Parts) -> Response {
    if let Err(r) = same_origin(&req.headers) {
        return r;
    }
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(j) = job(&j) else {
        return super::not_found();
    };
    if let Some(r) = refuse_dry_run(&v) {
        return r;
    }
    let grace = app.lifecycle.grace;
    let (gc, tags): (GcOutcome, Vec<(String, String)>) = match j {
        Job::Gc => match app.registry.collect_garbage(grace, true).await {
            Ok(o) => (o, vec![]),
            Err(e) => return run_failed(e),
        },
        Job::Retention => match app
            .registry
            .apply_retention(&app.lifecycle.rules, grace, true)
            .await
        {
            Ok(o) => (o.gc, o.tags),
            Err(e) => return run_failed(e),
        },
    };
    let touched = gc
        .report
        .manifests
        .iter()
        .map(|(r, ..)| r.as_str())
        .chain(tags.iter().map(|(r, _)| r.as_str()));
    for repo in touched {
        let may = repo
            .parse()
            .ok()
            .and_then(|n| app.registry.locate(&n, None).ok())
            .is_some_and(|loc| v.may(&app, &loc, Action::Delete));
        if !may {
            return forbidden(
                "This run would touch repositories you may not delete in; its result is shown only to \
                 users who may delete in all of them.",
            );
        }
    }
    let page = RunPage {
        chrome: Chrome::new(job_title(j), "health", &v),
        heading: job_title(j),
        action: format!("/ui/runs/{}", if j == Job::Gc { "gc" } else { "retention" }),
        ran: true,
        summary: match j {
            Job::Gc => gc.summary(),
            Job::Retention => format!("{} tags would be deleted; then {}", tags.len(), gc.summary()),
        },
        tags_total: tags.len(),
        tags: tags
            .iter()
            .take(LISTED)
            .map(|(r, t)| Gone {
                what: format!("{r}:{t}"),
                link: format!("/ui/repos/{}", enc(r)),
                size: view::size(0),
            })
            .collect(),
        manifests_total: gc.report.manifests.len(),
        manifests: gc
            .report
            .manifests
            .iter()
            .take(LISTED)
            .map(|(r, d, s)| Gone {
                what: format!("{r}@{d}"),
                link: format!("/ui/repos/{}/-/manifests/{d}", enc(r)),
                size: view::size(*s),
            })
            .collect(),
        blobs_total: gc.report.blobs.len(),
        bytes: view::size(gc.bytes_freed),
        rules: app.lifecycle.rules.len(),
    };
    html(page.render())
}

fn run_failed(e: RegistryError) -> Response {
    match e {
        RegistryError::Busy => message(
            StatusCode::CONFLICT,
            "Busy",
            "Another lifecycle run is in progress; try again when it has finished.",
            Some("/ui/health"),
        ),
        e => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::repo_of;

    #[test]
    fn affected_images_name_their_repository() {
        assert_eq!(repo_of("team/app:v1"), "team/app");
        assert_eq!(repo_of("team/app@sha256:abc"), "team/app");
        assert_eq!(repo_of("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(repo_of("team/app"), "team/app");
    }
}
