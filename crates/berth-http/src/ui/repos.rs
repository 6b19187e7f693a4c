//! Repository pages: the list, one repository's tags, one manifest, and deleting a tag or
//! a manifest (a confirmation page, then a POST).

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use berth_auth::Action;
use berth_oci::{Digest, Reference, RepoName, Tag};
use berth_registry::cache::Located;
use berth_registry::{Registry, RegistryError, StoredManifest};
use serde_json::Value;

use super::view::{self, Chrome, Size, When, enc, short};
use super::{Viewer, failed, forbidden, html, message, not_found, same_origin, viewer};
use crate::App;

/// Rows per page of the repository list and of a repository's tags.
const PAGE: usize = 50;
/// Largest image config read to summarize it.
const MAX_CONFIG: u64 = 1 << 20;

pub(crate) struct RepoRow {
    name: String,
    link: String,
    upstream: Option<String>,
    tags: u64,
    size: Size,
    pushed: When,
    pulled: When,
}

pub(crate) struct SortLink {
    label: &'static str,
    href: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "ui/repos.html")]
struct ListPage {
    chrome: Chrome,
    q: String,
    rows: Vec<RepoRow>,
    /// Repositories matching (visible and matching the search).
    total: usize,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
    sorts: Vec<SortLink>,
}

fn list_href(q: &str, sort: &str, page: usize) -> String {
    let mut h = format!("/ui/repos?sort={sort}");
    if !q.is_empty() {
        h.push_str(&format!("&q={}", enc(q)));
    }
    if page > 1 {
        h.push_str(&format!("&page={page}"));
    }
    h
}

/// `/ui/repos?q=&sort=name|size|pushed|pulled&page=`: the repositories the caller may pull.
pub(crate) async fn list(
    State(app): State<App>,
    Query(p): Query<HashMap<String, String>>,
    req: Parts,
) -> Response {
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = p.get("q").map(|s| s.trim().to_string()).unwrap_or_default();
    let sort = p
        .get("sort")
        .map(String::as_str)
        .filter(|s| matches!(*s, "size" | "pushed" | "pulled"))
        .unwrap_or("name");
    let mut all = match app.registry.repository_summaries().await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let needle = q.to_lowercase();
    all.retain(|s| (needle.is_empty() || s.name.contains(&needle)) && v.sees(&app, &s.name));
    match sort {
        "size" => all.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name))),
        "pushed" => all.sort_by(|a, b| b.last_push.cmp(&a.last_push).then_with(|| a.name.cmp(&b.name))),
        "pulled" => all.sort_by(|a, b| b.last_pull.cmp(&a.last_pull).then_with(|| a.name.cmp(&b.name))),
        _ => {} // the store lists by name
    }
    let total = all.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = p
        .get("page")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let rows = all
        .into_iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .map(|s| RepoRow {
            link: format!("/ui/repos/{}", enc(&s.name)),
            name: s.name,
            upstream: s.upstream,
            tags: s.tags,
            size: view::size(s.bytes),
            pushed: view::when(s.last_push),
            pulled: view::when(s.last_pull),
        })
        .collect();
    let sorts = [
        ("name", "name"),
        ("size", "size"),
        ("last push", "pushed"),
        ("last pull", "pulled"),
    ]
    .into_iter()
    .map(|(label, key)| SortLink {
        label,
        href: list_href(&q, key, 1),
        active: key == sort,
    })
    .collect();
    let page_view = ListPage {
        chrome: Chrome::new("Repositories", "repos", &v),
        prev: (page > 1).then(|| list_href(&q, sort, page - 1)),
        next: (page < pages).then(|| list_href(&q, sort, page + 1)),
        q,
        rows,
        total,
        page,
        pages,
        sorts,
    };
    html(page_view.render())
}

/// A pull command for one client.
pub(crate) struct Cmd {
    client: &'static str,
    text: String,
}

fn pull_commands(v: &Viewer, repo: &str, reference: &str) -> Vec<Cmd> {
    let sep = if reference.contains(':') { "@" } else { ":" };
    let image = format!("{}/{repo}{sep}{reference}", v.host);
    let (podman_flag, ctr_flag) = if v.tls {
        ("", "")
    } else {
        (" --tls-verify=false", " --plain-http")
    };
    vec![
        Cmd {
            client: "docker",
            text: format!("docker pull {image}"),
        },
        Cmd {
            client: "podman",
            text: format!("podman pull{podman_flag} {image}"),
        },
        Cmd {
            client: "containerd",
            text: format!("ctr images pull{ctr_flag} {image}"),
        },
    ]
}

/// What a manifest amounts to: the platforms it runs on and the bytes a pull fetches.
struct Facts {
    platforms: Vec<String>,
    size: u64,
}

fn platform_of(p: &Value) -> Option<String> {
    let os = p["os"].as_str()?;
    let arch = p["architecture"].as_str()?;
    if os == "unknown" && arch == "unknown" {
        return None; // attestation manifests in buildx indexes
    }
    Some(match p["variant"].as_str() {
        Some(var) => format!("{os}/{arch}/{var}"),
        None => format!("{os}/{arch}"),
    })
}

fn is_index(body: &Value) -> bool {
    body["manifests"].is_array()
}

fn image_bytes(body: &Value) -> u64 {
    let layers: u64 = body["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum())
        .unwrap_or(0);
    body["config"]["size"].as_u64().unwrap_or(0) + layers
}

async fn config_of(reg: &Arc<Registry>, repo: &RepoName, body: &Value) -> Option<Value> {
    let d: Digest = body["config"]["digest"].as_str()?.parse().ok()?;
    let bytes = reg.small_blob(repo, &d, MAX_CONFIG).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

async fn facts(reg: &Arc<Registry>, repo: &RepoName, m: &StoredManifest) -> Facts {
    let body: Value = serde_json::from_slice(&m.body).unwrap_or(Value::Null);
    if is_index(&body) {
        let mut platforms = Vec::new();
        let mut size = 0;
        for child in body["manifests"].as_array().into_iter().flatten() {
            if let Some(p) = platform_of(&child["platform"]) {
                platforms.push(p);
            }
            let stored = match child["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) {
                Some(d) => reg.peek_manifest(repo, &d).await.ok().flatten(),
                None => None,
            };
            if let Some(c) = stored {
                let b: Value = serde_json::from_slice(&c.body).unwrap_or(Value::Null);
                size += image_bytes(&b);
            }
        }
        return Facts { platforms, size };
    }
    let platforms = match config_of(reg, repo, &body).await {
        Some(c) => platform_of(&c).into_iter().collect(),
        None => Vec::new(),
    };
    Facts {
        platforms,
        size: image_bytes(&body),
    }
}

pub(crate) struct TagRow {
    name: String,
    digest: String,
    digest_short: String,
    manifest_link: String,
    media_type: String,
    media_kind: &'static str,
    platforms: String,
    size: Size,
    pushed: When,
    pulled: When,
    by_tag: Vec<Cmd>,
    by_digest: Vec<Cmd>,
    delete_link: String,
}

#[derive(Template)]
#[template(path = "ui/repo.html")]
struct RepoPage {
    chrome: Chrome,
    name: String,
    upstream: Option<String>,
    may_delete: bool,
    rows: Vec<TagRow>,
    total: usize,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
}

/// What a path under `/ui/repos/` names.
enum Target {
    Repo(RepoName),
    Manifest(RepoName, Digest),
    DeleteTag(RepoName, Tag),
    DeleteManifest(RepoName, Digest),
}

fn target(rest: &str) -> Option<Target> {
    // `-` alone is not a valid name component, so `/-/` cannot be part of a name.
    let (name, action) = match rest.split_once("/-/") {
        Some((n, a)) => (n, Some(a)),
        None => (rest.trim_end_matches('/'), None),
    };
    let name: RepoName = name.parse().ok()?;
    Some(match action {
        None => Target::Repo(name),
        Some(a) => match a.split_once('/')? {
            ("manifests", d) => Target::Manifest(name, d.parse().ok()?),
            ("delete", what) => match what.split_once('/')? {
                ("tags", t) => Target::DeleteTag(name, t.parse().ok()?),
                ("manifests", d) => Target::DeleteManifest(name, d.parse().ok()?),
                _ => return None,
            },
            _ => return None,
        },
    })
}

fn repo_link(name: &RepoName) -> String {
    format!("/ui/repos/{}", enc(name.as_str()))
}

fn manifest_link(name: &RepoName, digest: &str) -> String {
    format!("/ui/repos/{}/-/manifests/{digest}", enc(name.as_str()))
}

/// The repository if the viewer may pull it; otherwise it does not exist for them.
fn visible(app: &App, v: &Viewer, name: &RepoName) -> Option<Located> {
    let loc = app.registry.locate(name, None).ok()?;
    v.may(app, &loc, Action::Pull).then_some(loc)
}

pub(crate) async fn get_page(
    State(app): State<App>,
    Path(rest): Path<String>,
    Query(p): Query<HashMap<String, String>>,
    req: Parts,
) -> Response {
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(t) = target(&rest) else {
        return not_found();
    };
    let name = match &t {
        Target::Repo(n) | Target::Manifest(n, _) | Target::DeleteTag(n, _) | Target::DeleteManifest(n, _) => {
            n
        }
    };
    let Some(loc) = visible(&app, &v, name) else {
        return not_found();
    };
    let result = match t {
        Target::Repo(_) => repo_page(&app, &v, &loc, &p).await,
        Target::Manifest(_, d) => manifest_page(&app, &v, &loc, &d).await,
        Target::DeleteTag(_, tag) => confirm_page(&app, &v, &loc, Reference::Tag(tag)).await,
        Target::DeleteManifest(_, d) => confirm_page(&app, &v, &loc, Reference::Digest(d)).await,
    };
    result.unwrap_or_else(|r| r)
}

fn not_found_or(e: RegistryError) -> Response {
    match e {
        RegistryError::NameUnknown(_) | RegistryError::ManifestUnknown(..) => not_found(),
        e => failed(e),
    }
}

async fn repo_page(
    app: &App,
    v: &Viewer,
    loc: &Located,
    p: &HashMap<String, String>,
) -> Result<Response, Response> {
    let name = loc.local();
    let reg = &app.registry;
    // Exists at all (a repository with no tags left still has a page).
    reg.tags(name, Some(1), None).await.map_err(not_found_or)?;
    let tags = reg.tag_details(name).await.map_err(failed)?;
    let total = tags.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = p
        .get("page")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let mut rows = Vec::new();
    for t in tags.into_iter().skip((page - 1) * PAGE).take(PAGE) {
        let Some(m) = reg.peek_manifest(name, &t.digest).await.map_err(failed)? else {
            continue; // deleted since the listing
        };
        let f = facts(reg, name, &m).await;
        let d = t.digest.to_string();
        rows.push(TagRow {
            by_tag: pull_commands(v, name.as_str(), &t.name),
            by_digest: pull_commands(v, name.as_str(), &d),
            delete_link: format!("{}/-/delete/tags/{}", repo_link(name), enc(&t.name)),
            manifest_link: manifest_link(name, &d),
            digest_short: short(&d),
            media_kind: view::kind_of_media(&m.media_type),
            media_type: m.media_type,
            platforms: if f.platforms.is_empty() {
                "—".into()
            } else {
                f.platforms.join(", ")
            },
            size: view::size(f.size),
            pushed: view::when(Some(t.updated_at)),
            pulled: view::when(t.last_pulled),
            name: t.name,
            digest: d,
        });
    }
    let link = repo_link(name);
    let page_view = RepoPage {
        chrome: Chrome::new(name.as_str(), "repos", v),
        name: name.to_string(),
        upstream: loc.cached().map(|c| c.source.name.clone()),
        may_delete: v.may(app, loc, Action::Delete),
        rows,
        total,
        page,
        pages,
        prev: (page > 1).then(|| format!("{link}?page={}", page - 1)),
        next: (page < pages).then(|| format!("{link}?page={}", page + 1)),
    };
    Ok(html(page_view.render()))
}

pub(crate) struct Row {
    digest: String,
    digest_short: String,
    link: Option<String>,
    media_type: String,
    size: Size,
    /// Platform (index children) or artifact type (referrers).
    note: String,
    present: bool,
}

pub(crate) struct ConfigView {
    architecture: String,
    os: String,
    created: String,
    entrypoint: String,
    cmd: String,
    labels: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "ui/manifest.html")]
struct ManifestPage {
    chrome: Chrome,
    repo: String,
    repo_link: String,
    digest: String,
    media_type: String,
    media_kind: &'static str,
    artifact_type: Option<String>,
    manifest_size: Size,
    total: Size,
    platforms: String,
    tags: Vec<String>,
    config: Option<ConfigView>,
    config_digest: Option<String>,
    layers: Vec<Row>,
    children: Vec<Row>,
    referrers: Vec<Row>,
    subject: Option<Row>,
    annotations: Vec<(String, String)>,
    pull: Vec<Cmd>,
    may_delete: bool,
    delete_link: String,
}

fn words(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "—".into(),
    }
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
            )
        })
        .collect();
    out.sort();
    out
}

fn blob_row(d: &Value) -> Row {
    let digest = d["digest"].as_str().unwrap_or("").to_string();
    Row {
        digest_short: short(&digest),
        digest,
        link: None,
        media_type: d["mediaType"].as_str().unwrap_or("").to_string(),
        size: view::size(d["size"].as_u64().unwrap_or(0)),
        note: String::new(),
        present: true,
    }
}

async fn manifest_page(app: &App, v: &Viewer, loc: &Located, digest: &Digest) -> Result<Response, Response> {
    let name = loc.local();
    let reg = &app.registry;
    let m = reg
        .peek_manifest(name, digest)
        .await
        .map_err(failed)?
        .ok_or_else(not_found)?;
    let body: Value = serde_json::from_slice(&m.body).unwrap_or(Value::Null);
    let d = digest.to_string();
    let f = facts(reg, name, &m).await;
    let tags = reg
        .tag_details(name)
        .await
        .map_err(failed)?
        .into_iter()
        .filter(|t| t.digest == *digest)
        .map(|t| t.name)
        .collect();
    let mut children = Vec::new();
    for c in body["manifests"].as_array().into_iter().flatten() {
        let mut row = blob_row(c);
        let cd: Option<Digest> = row.digest.parse().ok();
        row.present = match &cd {
            Some(cd) => reg.peek_manifest(name, cd).await.map_err(failed)?.is_some(),
            None => false,
        };
        row.link = row.present.then(|| manifest_link(name, &row.digest));
        row.note = platform_of(&c["platform"]).unwrap_or_else(|| {
            c["annotations"]["vnd.docker.reference.type"]
                .as_str()
                .unwrap_or("—")
                .to_string()
        });
        children.push(row);
    }
    let layers = body["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(blob_row)
        .collect();
    let config = match config_of(reg, name, &body).await {
        Some(c) if !is_index(&body) => Some(ConfigView {
            architecture: c["architecture"].as_str().unwrap_or("—").to_string(),
            os: c["os"].as_str().unwrap_or("—").to_string(),
            created: c["created"].as_str().unwrap_or("—").to_string(),
            entrypoint: words(&c["config"]["Entrypoint"]),
            cmd: words(&c["config"]["Cmd"]),
            labels: pairs(&c["config"]["Labels"]),
        }),
        _ => None,
    };
    let referrers = reg
        .referrers(name, digest, None)
        .await
        .map_err(failed)?
        .into_iter()
        .map(|r| {
            let rd = r.digest.to_string();
            Row {
                digest_short: short(&rd),
                link: Some(manifest_link(name, &rd)),
                digest: rd,
                media_type: r.media_type,
                size: view::size(r.size),
                note: r.artifact_type.unwrap_or_else(|| "—".into()),
                present: true,
            }
        })
        .collect();
    let subject = body.get("subject").filter(|s| s.is_object()).map(|s| {
        let mut row = blob_row(s);
        row.link = Some(manifest_link(name, &row.digest));
        row
    });
    let page = ManifestPage {
        chrome: Chrome::new(format!("{name}@{}", short(&d)), "repos", v),
        repo: name.to_string(),
        repo_link: repo_link(name),
        media_kind: view::kind_of_media(&m.media_type),
        media_type: m.media_type.clone(),
        artifact_type: body["artifactType"].as_str().map(str::to_string),
        manifest_size: view::size(m.body.len() as u64),
        total: view::size(f.size),
        platforms: f.platforms.join(", "),
        tags,
        config_digest: body["config"]["digest"].as_str().map(str::to_string),
        config,
        layers,
        children,
        referrers,
        subject,
        annotations: pairs(&body["annotations"]),
        pull: pull_commands(v, name.as_str(), &d),
        may_delete: v.may(app, loc, Action::Delete),
        delete_link: format!("{}/-/delete/manifests/{d}", repo_link(name)),
        digest: d,
    };
    Ok(html(page.render()))
}

#[derive(Template)]
#[template(path = "ui/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    heading: String,
    what: String,
    consequences: Vec<String>,
    action: String,
    back: String,
}

async fn confirm_page(app: &App, v: &Viewer, loc: &Located, r: Reference) -> Result<Response, Response> {
    let name = loc.local();
    if !v.may(app, loc, Action::Delete) {
        return Err(forbidden(&format!("You may not delete in {name}.")));
    }
    let reg = &app.registry;
    let tags = reg.tag_details(name).await.map_err(failed)?;
    let (heading, what, consequences, action) = match &r {
        Reference::Tag(t) => {
            let Some(info) = tags.iter().find(|i| i.name == t.as_str()) else {
                return Err(not_found());
            };
            (
                "Delete a tag".to_string(),
                format!("{name}:{t}"),
                vec![
                    format!(
                        "The tag {t} goes; the manifest {} stays until garbage collection removes what no tag reaches.",
                        info.digest
                    ),
                    "Clients pulling this tag get “manifest unknown” from then on.".to_string(),
                ],
                format!("{}/-/delete/tags/{}", repo_link(name), enc(t.as_str())),
            )
        }
        Reference::Digest(d) => {
            if reg.peek_manifest(name, d).await.map_err(failed)?.is_none() {
                return Err(not_found());
            }
            let on: Vec<String> = tags
                .iter()
                .filter(|i| i.digest == *d)
                .map(|i| i.name.clone())
                .collect();
            let mut c = vec![format!("The manifest {d} goes from {name}.")];
            if !on.is_empty() {
                c.push(format!("So do the tags pointing at it: {}.", on.join(", ")));
            }
            c.push("Blobs only it used are removed by the next garbage collection.".to_string());
            (
                "Delete a manifest".to_string(),
                format!("{name}@{d}"),
                c,
                format!("{}/-/delete/manifests/{d}", repo_link(name)),
            )
        }
    };
    let page = ConfirmPage {
        chrome: Chrome::new(heading.clone(), "repos", v),
        heading,
        what,
        consequences,
        action,
        back: repo_link(name),
    };
    Ok(html(page.render()))
}

/// POST `/ui/repos/NAME/-/delete/...`: deletes, exactly as `DELETE /v2/NAME/manifests/REF`.
pub(crate) async fn post_action(State(app): State<App>, Path(rest): Path<String>, req: Parts) -> Response {
    if let Err(r) = same_origin(&req.headers) {
        return r;
    }
    let v = match viewer(&app, &req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (name, reference) = match target(&rest) {
        Some(Target::DeleteTag(n, t)) => (n, Reference::Tag(t)),
        Some(Target::DeleteManifest(n, d)) => (n, Reference::Digest(d)),
        _ => return not_found(),
    };
    let loc = match app.registry.locate(&name, None) {
        Ok(l) => l,
        Err(_) => return not_found(),
    };
    // Refused before anything is looked up: the answer says nothing about what exists.
    if !v.may(&app, &loc, Action::Delete) {
        return forbidden(&format!("You may not delete in {name}."));
    }
    let local = loc.local().clone();
    match app.registry.delete_manifest(&local, &reference).await {
        Ok(()) => {
            tracing::info!(repo = %local, %reference, user = v.user().unwrap_or("-"), "deleted from the web UI");
            Redirect::to(&repo_link(&local)).into_response()
        }
        Err(e @ RegistryError::ManifestReferenced { .. }) => message(
            StatusCode::CONFLICT,
            "Not deleted",
            &format!("{e}. Delete the index first."),
            Some(&repo_link(&local)),
        ),
        Err(e) => not_found_or(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_repos_name_what_they_show() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        assert!(matches!(target("team/app"), Some(Target::Repo(n)) if n.as_str() == "team/app"));
        assert!(matches!(
            target(&format!("team/app/-/manifests/{d}")),
            Some(Target::Manifest(..))
        ));
        assert!(matches!(target("a/-/delete/tags/v1"), Some(Target::DeleteTag(_, t)) if t.as_str() == "v1"));
        assert!(matches!(
            target(&format!("a/-/delete/manifests/{d}")),
            Some(Target::DeleteManifest(..))
        ));
        assert!(target("a/-/delete/blobs/x").is_none());
        assert!(target("Upper/case").is_none());
        assert!(target("a/-/manifests/notadigest").is_none());
    }
}
