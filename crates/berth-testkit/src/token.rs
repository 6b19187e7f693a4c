//! A token server for the registry Bearer flow that CNCF distribution 2.8 accepts
//! (`auth: token:`), on a loopback port, for tests of upstream clients.
//!
//! It signs ES256 JWTs with a fresh key whose self-signed certificate is both the
//! registry's `rootcertbundle` and the token header's `x5c` chain (distribution verifies
//! `x5c` against the bundle). It grants every scope asked for to anyone who presents the
//! configured Basic credentials (to everyone if none are configured) and counts requests,
//! so tests can assert that clients cache tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The `service` the registry must be configured with (the tokens' audience).
pub const SERVICE: &str = "berth-test-registry";
/// The `issuer` the registry must be configured with.
pub const ISSUER: &str = "berth-testkit-token-server";
/// Lifetime of issued tokens, in seconds.
pub const EXPIRES_IN: u64 = 300;

/// A running token server. Stopped on drop.
pub struct TokenServer {
    addr: SocketAddr,
    issuer: Arc<Issuer>,
    bundle: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Issuer {
    /// Accepted `Authorization` header values (`Basic base64(user:password)`); empty
    /// means anonymous requests get tokens too.
    accepted: Vec<String>,
    key: EncodingKey,
    /// The certificate, base64 DER, for the `x5c` header.
    x5c: String,
    requests: AtomicUsize,
    scopes: Mutex<Vec<String>>,
    next_id: AtomicU64,
}

impl TokenServer {
    /// Starts a token server on `127.0.0.1:0` that accepts `users` (user, password) pairs
    /// or, if there are none, anyone.
    pub fn start(users: &[(&str, &str)]) -> TokenServer {
        let certified = rcgen::generate_simple_self_signed(vec!["berth-testkit-token-signer".to_string()])
            .expect("generate the token signing certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("token-root.pem");
        std::fs::write(&bundle, certified.cert.pem()).expect("write the root cert bundle");
        let issuer = Arc::new(Issuer {
            accepted: users
                .iter()
                .map(|(u, p)| format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))))
                .collect(),
            key: EncodingKey::from_ec_der(&certified.signing_key.serialize_der()),
            x5c: STANDARD.encode(certified.cert.der()),
            requests: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(issuer.clone());
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    // Not graceful: dropping the runtime ends every connection at once, so a
                    // test never waits on a client that keeps one open.
                    tokio::select! {
                        r = axum::serve(listener, app) => r.expect("token server"),
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the token server thread");
        TokenServer {
            addr,
            issuer,
            bundle,
            _dir: dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The `realm` to configure in the registry: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM file to configure as the registry's `rootcertbundle`.
    pub fn rootcertbundle(&self) -> &Path {
        &self.bundle
    }

    /// The body of distribution's `auth:` section (YAML, indented two spaces).
    pub fn distribution_auth(&self) -> String {
        format!(
            "  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.bundle.display()
        )
    }

    /// How many token requests arrived (granted or not).
    pub fn requests(&self) -> usize {
        self.issuer.requests.load(Ordering::SeqCst)
    }

    /// Every scope asked for, in order of arrival.
    pub fn scopes(&self) -> Vec<String> {
        self.issuer.scopes.lock().unwrap().clone()
    }

    /// A token for `scopes` (e.g. `repository:a/b:pull,push`) without an HTTP round trip,
    /// for seeding a registry; not counted in [`TokenServer::requests`].
    pub fn issue(&self, scopes: &[&str]) -> String {
        self.issuer.sign("seed", scopes.iter().copied())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(serde::Serialize)]
struct Claims {
    iss: &'static str,
    sub: String,
    aud: &'static str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

#[derive(serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

impl Issuer {
    fn sign<'a>(&self, subject: &str, scopes: impl Iterator<Item = &'a str>) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = Claims {
            iss: ISSUER,
            sub: subject.to_string(),
            aud: SERVICE,
            exp: now + EXPIRES_IN,
            nbf: now,
            iat: now,
            jti: format!("t{}", self.next_id.fetch_add(1, Ordering::SeqCst)),
            access: scopes.filter_map(access).collect(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.x5c = Some(vec![self.x5c.clone()]);
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign a token")
    }
}

/// `type:name:actions` (the name may not contain ':', the actions are comma-separated).
fn access(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions.split(',').map(str::to_string).collect(),
    })
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    issuer.requests.fetch_add(1, Ordering::SeqCst);
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    issuer.scopes.lock().unwrap().extend(scopes.iter().cloned());
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let subject = match auth {
        Some(a) if issuer.accepted.iter().any(|ok| ok == a) => "user",
        _ if issuer.accepted.is_empty() => "",
        _ => {
            let mut resp = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"details": "incorrect username or password"}),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth-testkit\""),
            );
            return resp;
        }
    };
    let token = issuer.sign(subject, scopes.iter().map(String::as_str));
    json(
        StatusCode::OK,
        serde_json::json!({"token": token, "access_token": token, "expires_in": EXPIRES_IN}),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
