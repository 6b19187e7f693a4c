//! Access control on the wire: who is asking (Basic, bearer token, or a trusted proxy's
//! header), the 401 challenge that sends clients to `/auth/token`, the 403 for callers
//! who are known but not allowed, and the token endpoint itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_auth::{AccessEntry, Action, Actions, Auth, AuthError, Presented, Principal, RepoKind, Scope};
use berth_oci::{ErrorCode, RepoName};
use berth_registry::cache::Located;
use serde_json::json;

use crate::error::ApiError;
use crate::{App, Transport};

/// Access control as configured: the auth layer and how clients reach berth.
#[derive(Clone, Debug)]
pub struct AccessControl {
    pub auth: Arc<Auth>,
    /// Base URL for the token realm; `None` to use each request's scheme and Host.
    pub public_url: Option<String>,
}

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/auth/token";

impl AccessControl {
    fn realm(&self, req_headers: &HeaderMap, uri: &axum::http::Uri, tls: bool) -> String {
        if let Some(base) = &self.public_url {
            return format!("{}{TOKEN_PATH}", base.trim_end_matches('/'));
        }
        let host = req_headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".into());
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{host}{TOKEN_PATH}")
    }
}

/// What the access check needs to know about a request, taken before its body is used.
pub struct Caller {
    pub who: Principal,
    realm: String,
}

fn kind_of(loc: &Located) -> RepoKind {
    match loc {
        Located::Hosted(_) => RepoKind::Hosted,
        Located::Cached(_) => RepoKind::Cached,
    }
}

fn remote(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

fn tls(req: &Request) -> bool {
    req.extensions().get::<Transport>().is_some_and(|t| t.tls)
}

/// What the access check reads from a request. Taken from it without holding the request
/// itself across an await (a request body is not `Sync`).
pub struct Facts<'a> {
    headers: &'a HeaderMap,
    uri: &'a axum::http::Uri,
    remote: Option<std::net::IpAddr>,
    tls: bool,
}

impl<'a> Facts<'a> {
    /// The same from a request's head (which, unlike the request, may be held across an await).
    pub fn of_parts(p: &'a axum::http::request::Parts) -> Facts<'a> {
        Facts {
            headers: &p.headers,
            uri: &p.uri,
            remote: p
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(a)| a.ip()),
            tls: p.extensions.get::<Transport>().is_some_and(|t| t.tls),
        }
    }

    pub fn of(req: &'a Request) -> Facts<'a> {
        Facts {
            headers: req.headers(),
            uri: req.uri(),
            remote: remote(req),
            tls: tls(req),
        }
    }
}

async fn principal(ac: &AccessControl, f: &Facts<'_>) -> Result<Principal, AuthError> {
    let h = f.headers;
    let get = |name: Option<&str>| name.and_then(|n| h.get(n)).and_then(|v| v.to_str().ok());
    ac.auth
        .authenticate(Presented {
            authorization: h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
            forwarded_user: get(ac.auth.forward_user_header()),
            forwarded_groups: get(ac.auth.forward_groups_header()),
            remote: f.remote,
        })
        .await
}

/// Who is asking; `Ok(None)` when access control is off. Wrong credentials are a 401.
pub async fn caller(app: &App, f: Facts<'_>) -> Result<Option<Caller>, ApiError> {
    let Some(ac) = &app.access else {
        return Ok(None);
    };
    let realm = ac.realm(f.headers, f.uri, f.tls);
    match principal(ac, &f).await {
        Ok(who) => Ok(Some(Caller { who, realm })),
        Err(e) => Err(refused(ac, &realm, e, None)),
    }
}

fn refused(ac: &AccessControl, realm: &str, e: AuthError, scope: Option<(&str, Actions)>) -> ApiError {
    match e {
        AuthError::Unauthorized {
            reason,
            invalid_token,
        } => {
            let challenge = ac
                .auth
                .challenge(realm, scope, invalid_token.then_some("invalid_token"));
            ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, reason)
                .header("www-authenticate", challenge)
        }
        e => {
            tracing::error!(error = %e, "authentication failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "authentication failed; the server log has the details",
            )
        }
    }
}

/// The 401 that sends an anonymous client to sign in.
pub fn sign_in(app: &App, caller: &Caller, scope: Option<(&str, Actions)>, reason: &str) -> ApiError {
    let ac = app
        .access
        .as_ref()
        .expect("callers exist only with access control");
    refused(
        ac,
        &caller.realm,
        AuthError::Unauthorized {
            reason: reason.to_string(),
            invalid_token: false,
        },
        scope,
    )
}

/// The actions a token request for `need` should ask for: a push also needs pull (clients
/// check for existing blobs), so the challenge names both.
fn scope_for(need: Action) -> Actions {
    match need {
        Action::Push => Actions::of(&[Action::Pull, Action::Push]),
        a => Actions::of(&[a]),
    }
}

impl Caller {
    /// What this caller may do on a located repository.
    pub fn allowed(&self, app: &App, loc: &Located) -> Actions {
        let ac = app
            .access
            .as_ref()
            .expect("callers exist only with access control");
        ac.auth.allowed(&self.who, loc.local().as_str(), kind_of(loc))
    }

    /// `Ok` when the caller may take `need` on the repository; otherwise the 401 (sign
    /// in, or get a token with more scope) or 403 (known, and not allowed).
    pub fn check(&self, app: &App, loc: &Located, need: Action) -> Result<(), ApiError> {
        let ac = app
            .access
            .as_ref()
            .expect("callers exist only with access control");
        let repo = loc.local().as_str();
        if self.allowed(app, loc).contains(need) {
            return Ok(());
        }
        let scope = Some((repo, scope_for(need)));
        let by_rules = ac.auth.rules_allow(&self.who, repo, kind_of(loc));
        if self.who.is_anonymous() {
            let msg = format!("authentication required to {} {repo}", need.as_str());
            return Err(sign_in(app, self, scope, &msg));
        }
        let name = self.who.name.as_deref().unwrap_or_default();
        if self.who.token.is_some() && by_rules.contains(need) {
            let challenge = ac.auth.challenge(&self.realm, scope, Some("insufficient_scope"));
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                format!(
                    "the token does not grant {} on {repo}; request one that does",
                    need.as_str()
                ),
            )
            .header("www-authenticate", challenge));
        }
        let may = if by_rules.is_empty() {
            "nothing".to_string()
        } else {
            by_rules.to_string()
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            format!("user {name:?} may not {} {repo} (allowed: {may})", need.as_str()),
        ))
    }
}

/// The action a request on a repository needs.
pub fn needed(route: &berth_oci::Route, m: &Method) -> Option<Action> {
    use berth_oci::Route as R;
    Some(match (route, m) {
        (R::Base | R::Catalog, _) => return None,
        (R::Manifest(..) | R::Blob(..), &Method::DELETE) => Action::Delete,
        (R::Manifest(..), &Method::PUT) => Action::Push,
        (R::UploadStart(_) | R::Upload(..), _) => Action::Push,
        _ => Action::Pull,
    })
}

/// `/auth/token`: checks Basic credentials (none means anonymous) and issues a token
/// granting, of the scopes asked for, what the access rules allow.
pub async fn token(State(app): State<App>, req: Request) -> Response {
    match issue(&app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn issue(app: &App, req: Request) -> Result<Response, ApiError> {
    let Some(ac) = app.access.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "access control is off on this registry; no token is needed",
        ));
    };
    let oauth = req.method() == Method::POST;
    // A GET names its caller in headers; read them before the request is taken apart.
    let from_headers = match oauth {
        false => Some(principal(&ac, &Facts::of(&req)).await),
        true => None,
    };
    let form: Vec<(String, String)> = if oauth {
        let body = axum::body::to_bytes(req.into_body(), 64 << 10)
            .await
            .map_err(|e| bad(format!("the token request body could not be read: {e}")))?;
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| bad(format!("the token request is not a form: {e}")))?
    } else {
        serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
            .map_err(|e| bad(format!("the token request's query does not parse: {e}")))?
    };
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(s) = field("service").filter(|s| *s != ac.auth.service()) {
        return Err(bad(format!(
            "this token service is {:?}, not {s:?}",
            ac.auth.service()
        )));
    }
    let scopes: Vec<&str> = if oauth {
        field("scope").map(|s| s.split(' ').collect()).unwrap_or_default()
    } else {
        form.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let who = if oauth {
        match field("grant_type") {
            Some("password") => {
                let (u, p) = (field("username").unwrap_or(""), field("password").unwrap_or(""));
                match ac
                    .auth
                    .check_password(u, p)
                    .await
                    .map_err(|e| token_refused(&ac, e))?
                {
                    Some(name) => ac.auth.principal_for(&name),
                    None => {
                        return Err(token_refused(
                            &ac,
                            AuthError::Unauthorized {
                                reason: "wrong user name or password".into(),
                                invalid_token: false,
                            },
                        ));
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "grant_type {other:?} is not supported; use \"password\" or GET with Basic credentials"
                )));
            }
        }
    } else {
        from_headers
            .expect("a GET was authenticated from its headers")
            .map_err(|e| token_refused(&ac, e))?
    };
    let mut access = Vec::new();
    for s in scopes.iter().filter(|s| !s.is_empty()) {
        let scope = Scope::parse(s).ok_or_else(|| bad(format!("scope {s:?} is not TYPE:NAME:ACTIONS")))?;
        let asked = if scope.actions.iter().any(|a| a == "*") {
            Actions::ALL
        } else {
            Actions::parse(
                &scope
                    .actions
                    .iter()
                    .filter(|a| Action::parse(a).is_some())
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(Actions::NONE)
        };
        let granted = match scope.kind.as_str() {
            "repository" => scope
                .name
                .parse::<RepoName>()
                .ok()
                .and_then(|n| app.registry.locate(&n, None).ok())
                .map(|loc| ac.auth.rules_allow(&who, loc.local().as_str(), kind_of(&loc)))
                .unwrap_or(Actions::NONE)
                .intersect(asked),
            _ => Actions::NONE,
        };
        access.push(AccessEntry {
            kind: scope.kind.clone(),
            name: scope.name.clone(),
            actions: granted.names().into_iter().map(str::to_string).collect(),
        });
    }
    let (token, expires_in, issued) = ac.auth.issue(&who, access).map_err(|e| token_refused(&ac, e))?;
    let issued_at =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(issued));
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": issued_at.to_string(),
    });
    let mut r = Response::new(Body::from(
        serde_json::to_vec(&body).expect("JSON values serialize"),
    ));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn bad(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, msg)
}

fn token_refused(ac: &AccessControl, e: AuthError) -> ApiError {
    match e {
        AuthError::Unauthorized { reason, .. } => {
            ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, reason).header(
                "www-authenticate",
                format!("Basic realm=\"{}\"", ac.auth.service()),
            )
        }
        e => {
            tracing::error!(error = %e, "token request failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the token could not be issued; the server log has the details",
            )
        }
    }
}
