//! Who may do what, decided in one place.
//!
//! A request names its caller in one of three ways: Basic credentials checked against the
//! htpasswd file, a bearer token berth issued at `/auth/token`, or a user-name header set
//! by a trusted single-sign-on proxy. [`Auth::authenticate`] turns that into a
//! [`Principal`]; [`Auth::allowed`] says which actions the access rules (and the token's
//! grants) give it on a repository. Bcrypt is slow by design, so checked credentials and
//! tokens are remembered for a minute: the cost of auth on a busy registry is a hash of
//! the header, not a bcrypt per request.

pub mod htpasswd;
pub mod rules;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use sha2::Digest as _;

pub use htpasswd::Htpasswd;
pub use rules::{Action, Actions, KindFilter, RepoKind, Rule, Rules, Subject};
pub use token::{AccessEntry, Claims, TokenKeys};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad configuration or files; fatal at startup.
    #[error("{0}")]
    Config(String),
    /// The credentials or token are wrong; the client gets 401 with a challenge.
    #[error("{reason}")]
    Unauthorized { reason: String, invalid_token: bool },
    #[error("internal error: {0}")]
    Internal(String),
}

/// A network and prefix length (`10.0.0.0/8`), or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or network like \"10.0.0.0/8\"");
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let keep = |bits: u32, n: u8| {
            if n == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - n as u32))
            }
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                keep(net.into(), self.prefix) == keep(ip.into(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix as u32)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Everything the auth layer is configured with.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub htpasswd: Option<PathBuf>,
    /// Group name -> member user names.
    pub groups: BTreeMap<String, Vec<String>>,
    pub forward_user_header: Option<String>,
    pub forward_groups_header: Option<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub token_key: PathBuf,
    /// Create `token_key` when it does not exist (the data-directory default).
    pub generate_token_key: bool,
    pub token_ttl: Duration,
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    pub rules: Vec<Rule>,
}

/// Who is asking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// `None` for anonymous callers.
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// The token the request carried, whose grants bound what it may do.
    pub token: Option<Arc<Claims>>,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal::default()
    }

    pub fn is_anonymous(&self) -> bool {
        self.name.is_none()
    }

    pub fn subject(&self) -> Subject<'_> {
        match &self.name {
            None => Subject::Anonymous,
            Some(name) => Subject::User {
                name,
                groups: &self.groups,
            },
        }
    }
}

/// What a request presented.
#[derive(Clone, Copy, Debug, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The configured forward-auth user header, if present.
    pub forwarded_user: Option<&'a str>,
    pub forwarded_groups: Option<&'a str>,
    /// The peer address of the connection.
    pub remote: Option<IpAddr>,
}

/// One `scope` of a token request: `repository:NAME:pull,push`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// A small map of recent answers keyed by a hash, each valid until its deadline.
struct Recent<V> {
    map: Mutex<HashMap<[u8; 32], (Instant, V)>>,
    cap: usize,
}

impl<V: Clone> Recent<V> {
    fn new(cap: usize) -> Recent<V> {
        Recent {
            map: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn get(&self, k: &[u8; 32]) -> Option<V> {
        let map = self.map.lock().expect("auth cache lock");
        map.get(k)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn put(&self, k: [u8; 32], until: Instant, v: V) {
        let mut map = self.map.lock().expect("auth cache lock");
        if map.len() >= self.cap {
            let now = Instant::now();
            map.retain(|_, (u, _)| *u > now);
            if map.len() >= self.cap {
                map.clear();
            }
        }
        map.insert(k, (until, v));
    }

    fn clear(&self) {
        self.map.lock().expect("auth cache lock").clear();
    }
}

/// How long a checked password (right or wrong) is remembered.
const REMEMBER: Duration = Duration::from_secs(60);

pub struct Auth {
    cfg: AuthConfig,
    users: RwLock<Arc<Htpasswd>>,
    /// Bumped when the htpasswd file is reloaded, so remembered answers are dropped.
    generation: AtomicU64,
    keys: TokenKeys,
    rules: Rules,
    basic: Recent<Option<String>>,
    tokens: Recent<Arc<Claims>>,
    /// Bcrypt runs at most this many at a time, so a flood of guesses cannot take every core.
    bcrypt: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("service", &self.cfg.service)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    pub fn new(cfg: AuthConfig) -> Result<Auth, AuthError> {
        let users = match &cfg.htpasswd {
            Some(p) => Htpasswd::load(p)?,
            None => Htpasswd::default(),
        };
        let keys = TokenKeys::load_or_generate(&cfg.token_key, cfg.generate_token_key)?;
        Ok(Auth {
            rules: Rules::new(cfg.rules.clone()),
            cfg,
            users: RwLock::new(Arc::new(users)),
            generation: AtomicU64::new(0),
            keys,
            basic: Recent::new(10_000),
            tokens: Recent::new(10_000),
            bcrypt: tokio::sync::Semaphore::new(2),
        })
    }

    pub fn service(&self) -> &str {
        &self.cfg.service
    }

    pub fn token_ttl(&self) -> Duration {
        self.cfg.token_ttl
    }

    pub fn forward_user_header(&self) -> Option<&str> {
        self.cfg.forward_user_header.as_deref()
    }

    pub fn forward_groups_header(&self) -> Option<&str> {
        self.cfg.forward_groups_header.as_deref()
    }

    /// Whether `ip` is one of `auth.trusted_proxies`.
    pub fn trusted_proxy(&self, ip: IpAddr) -> bool {
        self.cfg.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    fn users(&self) -> Arc<Htpasswd> {
        self.users.read().expect("users lock").clone()
    }

    /// Re-reads the htpasswd file. A file that no longer parses leaves the users as they
    /// were and returns the reason.
    pub fn reload_users(&self) -> Result<usize, AuthError> {
        let Some(path) = &self.cfg.htpasswd else {
            return Ok(0);
        };
        let users = Htpasswd::load(path)?;
        let n = users.names().count();
        *self.users.write().expect("users lock") = Arc::new(users);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.basic.clear();
        Ok(n)
    }

    /// Watches the htpasswd file and reloads it when its size or modification time
    /// changes (checked every `every`).
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) {
        let Some(path) = self.cfg.htpasswd.clone() else {
            return;
        };
        let auth = Arc::downgrade(self);
        let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
        tokio::spawn(async move {
            let mut last = stamp(&path);
            loop {
                tokio::time::sleep(every).await;
                let Some(auth) = auth.upgrade() else { return };
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                match auth.reload_users() {
                    Ok(n) => tracing::info!(file = %path.display(), users = n, "reloaded the htpasswd file"),
                    Err(e) => {
                        tracing::warn!(error = %e, "the htpasswd file changed but cannot be used; keeping the previous users")
                    }
                }
            }
        });
    }

    fn groups_of(&self, name: &str) -> Vec<String> {
        self.cfg
            .groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == name))
            .map(|(g, _)| g.clone())
            .collect()
    }

    /// The principal of a signed-in user (with the groups the configuration gives it).
    pub fn principal_for(&self, name: &str) -> Principal {
        self.user(name.to_string(), None)
    }

    fn user(&self, name: String, token: Option<Arc<Claims>>) -> Principal {
        Principal {
            groups: self.groups_of(&name),
            name: Some(name),
            token,
        }
    }

    /// Who presented what. Wrong credentials and bad tokens are errors (401); no
    /// credentials at all is the anonymous principal.
    pub async fn authenticate(&self, p: Presented<'_>) -> Result<Principal, AuthError> {
        if let (Some(user), Some(remote)) = (p.forwarded_user, p.remote)
            && !user.is_empty()
            && self.cfg.trusted_proxies.iter().any(|c| c.contains(remote))
        {
            let mut principal = self.user(user.to_string(), None);
            if let Some(gs) = p.forwarded_groups {
                principal.groups.extend(
                    gs.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string),
                );
            }
            return Ok(principal);
        }
        let Some(h) = p.authorization.map(str::trim) else {
            return Ok(Principal::anonymous());
        };
        let (scheme, value) = h.split_once(' ').unwrap_or((h, ""));
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, pass) = decode_basic(value).ok_or_else(|| AuthError::Unauthorized {
                reason: "the Basic credentials are not base64 of USER:PASSWORD".into(),
                invalid_token: false,
            })?;
            return match self.check_password(&user, &pass).await? {
                Some(name) => Ok(self.user(name, None)),
                None => Err(AuthError::Unauthorized {
                    reason: "wrong user name or password".into(),
                    invalid_token: false,
                }),
            };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let claims = self.check_token(value)?;
            return Ok(match claims.sub.as_str() {
                "" => Principal {
                    token: Some(claims),
                    ..Principal::anonymous()
                },
                name => self.user(name.to_string(), Some(claims)),
            });
        }
        Err(AuthError::Unauthorized {
            reason: format!("the {scheme:?} authorization scheme is not supported; use Basic or Bearer"),
            invalid_token: false,
        })
    }

    /// The user name when the password is right; remembered for a minute either way.
    pub async fn check_password(&self, user: &str, pass: &str) -> Result<Option<String>, AuthError> {
        let mut h = sha2::Sha256::new();
        h.update(self.generation.load(Ordering::Relaxed).to_le_bytes());
        h.update(user.as_bytes());
        h.update([0]);
        h.update(pass.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Some(v) = self.basic.get(&key) {
            return Ok(v);
        }
        let _permit = self
            .bcrypt
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        // Someone with the same credentials may have finished while we waited.
        if let Some(v) = self.basic.get(&key) {
            return Ok(v);
        }
        let users = self.users();
        let (u, p) = (user.to_string(), pass.to_string());
        let ok = tokio::task::spawn_blocking(move || users.verify(&u, &p))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let v = ok.then(|| user.to_string());
        self.basic.put(key, Instant::now() + REMEMBER, v.clone());
        Ok(v)
    }

    fn check_token(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = now_secs();
        if let Some(c) = self.tokens.get(&key)
            && c.exp > now
        {
            return Ok(c);
        }
        let claims =
            self.keys
                .verify(token, &self.cfg.service)
                .map_err(|reason| AuthError::Unauthorized {
                    reason,
                    invalid_token: true,
                })?;
        let claims = Arc::new(claims);
        let left = Duration::from_secs(claims.exp.saturating_sub(now)).min(REMEMBER);
        self.tokens.put(key, Instant::now() + left, claims.clone());
        Ok(claims)
    }

    /// What the access rules alone give `who` on `repo`.
    pub fn rules_allow(&self, who: &Principal, repo: &str, kind: RepoKind) -> Actions {
        self.rules.allowed(&who.subject(), repo, kind)
    }

    /// What `who` may do on `repo`: the rules, narrowed to the token's grants when the
    /// request came with a token.
    pub fn allowed(&self, who: &Principal, repo: &str, kind: RepoKind) -> Actions {
        let by_rules = self.rules_allow(who, repo, kind);
        match &who.token {
            None => by_rules,
            Some(t) => by_rules.intersect(granted(t, "repository", repo)),
        }
    }

    /// Signs a token for `who` carrying `access`; returns it with its lifetime in seconds.
    pub fn issue(&self, who: &Principal, access: Vec<AccessEntry>) -> Result<(String, u64, u64), AuthError> {
        let now = now_secs();
        let ttl = self.cfg.token_ttl.as_secs().max(1);
        let claims = Claims {
            iss: token::ISSUER.into(),
            sub: who.name.clone().unwrap_or_default(),
            aud: self.cfg.service.clone(),
            exp: now + ttl,
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        Ok((self.keys.sign(&claims)?, ttl, now))
    }

    /// The `WWW-Authenticate` value sending a client to the token endpoint at `realm`.
    pub fn challenge(&self, realm: &str, scope: Option<(&str, Actions)>, error: Option<&str>) -> String {
        let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.cfg.service);
        if let Some((repo, actions)) = scope {
            v.push_str(&format!(",scope=\"repository:{repo}:{actions}\""));
        }
        if let Some(e) = error {
            v.push_str(&format!(",error=\"{e}\""));
        }
        v
    }
}

/// The actions a token grants on one resource.
fn granted(t: &Claims, kind: &str, name: &str) -> Actions {
    t.access
        .iter()
        .filter(|a| a.kind == kind && a.name == name)
        .map(|a| Actions::parse(&a.actions).unwrap_or(Actions::NONE))
        .fold(Actions::NONE, Actions::union)
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    fn auth(dir: &std::path::Path) -> Auth {
        let mut h = Htpasswd::default();
        h.set("alice", "pw", 4).unwrap();
        h.save(&dir.join("htpasswd")).unwrap();
        Auth::new(AuthConfig {
            htpasswd: Some(dir.join("htpasswd")),
            groups: [("admins".to_string(), vec!["alice".to_string()])].into(),
            forward_user_header: Some("X-Forwarded-User".into()),
            forward_groups_header: None,
            trusted_proxies: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            token_key: dir.join("key.pem"),
            generate_token_key: true,
            token_ttl: Duration::from_secs(60),
            service: "berth".into(),
            rules: Vec::new(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn basic_tokens_and_forwarding() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path());
        let ok = basic("alice", "pw");
        let p = a
            .authenticate(Presented {
                authorization: Some(&ok),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(p.name.as_deref(), Some("alice"));
        assert_eq!(p.groups, ["admins"]);
        let bad = basic("alice", "nope");
        let e = a
            .authenticate(Presented {
                authorization: Some(&bad),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            AuthError::Unauthorized {
                invalid_token: false,
                ..
            }
        ));

        let grant = AccessEntry {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        };
        let (t, ttl, _) = a.issue(&p, vec![grant]).unwrap();
        assert_eq!(ttl, 60);
        let bearer = format!("Bearer {t}");
        let tp = a
            .authenticate(Presented {
                authorization: Some(&bearer),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(tp.name.as_deref(), Some("alice"));
        assert_eq!(
            a.allowed(&tp, "team/app", RepoKind::Hosted),
            Actions::of(&[Action::Pull])
        );
        assert_eq!(a.allowed(&tp, "team/other", RepoKind::Hosted), Actions::NONE);
        assert_eq!(a.allowed(&p, "team/other", RepoKind::Hosted), Actions::ALL);
        let forged = format!("Bearer {}x", t);
        assert!(matches!(
            a.authenticate(Presented {
                authorization: Some(&forged),
                ..Default::default()
            })
            .await,
            Err(AuthError::Unauthorized {
                invalid_token: true,
                ..
            })
        ));

        // The forwarded user counts only from a trusted proxy.
        let from = |ip: &str| Presented {
            forwarded_user: Some("bob"),
            remote: Some(ip.parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            a.authenticate(from("10.1.2.3")).await.unwrap().name.as_deref(),
            Some("bob")
        );
        assert!(a.authenticate(from("192.168.1.1")).await.unwrap().is_anonymous());
        assert!(
            a.authenticate(from("::ffff:10.0.0.1"))
                .await
                .unwrap()
                .name
                .is_some()
        );
    }

    #[tokio::test]
    async fn reload_drops_remembered_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path());
        assert!(a.check_password("alice", "pw").await.unwrap().is_some());
        let mut h = Htpasswd::default();
        h.set("alice", "new", 4).unwrap();
        h.save(&dir.path().join("htpasswd")).unwrap();
        assert_eq!(a.reload_users().unwrap(), 1);
        assert!(a.check_password("alice", "pw").await.unwrap().is_none());
        assert!(a.check_password("alice", "new").await.unwrap().is_some());
        std::fs::write(dir.path().join("htpasswd"), "alice:plain\n").unwrap();
        assert!(a.reload_users().is_err());
        assert!(a.check_password("alice", "new").await.unwrap().is_some());
    }

    #[test]
    fn scopes_and_networks() {
        assert_eq!(
            Scope::parse("repository:team/app:pull,push"),
            Some(Scope {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into(), "push".into()]
            })
        );
        assert_eq!(Scope::parse("registry:catalog:*").unwrap().name, "catalog");
        assert!(Scope::parse("nonsense").is_none());
        let c = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(c.contains("192.168.4.5".parse().unwrap()) && !c.contains("192.169.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err() && Cidr::parse("host").is_err());
    }
}
