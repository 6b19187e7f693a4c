//! Configuration: an embedded default file with a comment on every key, overridden key by
//! key by the user's TOML. Unknown keys and bad values are refused with their path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

/// The default configuration, as printed by `berth config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub uploads: Uploads,
    #[serde(default)]
    pub gc: Gc,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub cache: Cache,
    #[serde(default)]
    pub scrub: Scrub,
    #[serde(default = "default_upstreams", rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default, rename = "access")]
    pub access: Vec<AccessRule>,
    #[serde(default)]
    pub probe: Probe,
}

/// `[probe]`: images the server pulls through its own API on a schedule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Probe {
    pub references: Vec<String>,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    pub verify: bool,
    pub username: String,
    pub password_env: String,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            references: Vec::new(),
            interval: Duration::from_secs(15 * 60),
            verify: false,
            username: String::new(),
            password_env: String::new(),
        }
    }
}

impl Probe {
    /// The probe user's password, from `password_env`.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        if self.password_env.is_empty() {
            return Ok(None);
        }
        std::env::var(&self.password_env).map(Some).with_context(|| {
            format!(
                "probe.password_env: environment variable {} is not set",
                self.password_env
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub htpasswd: PathBuf,
    pub groups: BTreeMap<String, Vec<String>>,
    pub forward_user_header: String,
    pub forward_groups_header: String,
    pub trusted_proxies: Vec<String>,
    pub token_key: PathBuf,
    #[serde(deserialize_with = "duration")]
    pub token_ttl: Duration,
    pub service: String,
    pub public_url: String,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            htpasswd: PathBuf::new(),
            groups: BTreeMap::new(),
            forward_user_header: String::new(),
            forward_groups_header: String::new(),
            trusted_proxies: Vec::new(),
            token_key: PathBuf::new(),
            token_ttl: Duration::from_secs(300),
            service: "berth".into(),
            public_url: String::new(),
        }
    }
}

/// One `[[access]]` rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub repository: String,
    #[serde(default = "any_kind")]
    pub kind: String,
    #[serde(default)]
    pub anonymous: Vec<String>,
    #[serde(default)]
    pub authenticated: Vec<String>,
    #[serde(default)]
    pub users: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

fn any_kind() -> String {
    "any".into()
}

impl AccessRule {
    pub fn to_rule(&self) -> Result<berth_auth::Rule, String> {
        use berth_auth::Actions;
        let map = |m: &BTreeMap<String, Vec<String>>, what: &str| {
            m.iter()
                .map(|(k, v)| {
                    Actions::parse(v)
                        .map(|a| (k.clone(), a))
                        .map_err(|e| format!("{what}.{k}: {e}"))
                })
                .collect::<Result<BTreeMap<_, _>, String>>()
        };
        Ok(berth_auth::Rule {
            repository: berth_oci::Pattern::parse(&self.repository)
                .map_err(|e| format!("repository: {e}"))?,
            kind: berth_auth::KindFilter::parse(&self.kind).map_err(|e| format!("kind: {e}"))?,
            anonymous: Actions::parse(&self.anonymous).map_err(|e| format!("anonymous: {e}"))?,
            authenticated: Actions::parse(&self.authenticated).map_err(|e| format!("authenticated: {e}"))?,
            users: map(&self.users, "users")?,
            groups: map(&self.groups, "groups")?,
        })
    }
}

impl Config {
    /// Access control is on when berth has a way to know users, or rules to apply.
    pub fn auth_enabled(&self) -> bool {
        !self.auth.htpasswd.as_os_str().is_empty()
            || !self.auth.forward_user_header.is_empty()
            || !self.access.is_empty()
    }

    /// The auth layer's configuration, or `None` when access control is off.
    pub fn auth_config(&self) -> anyhow::Result<Option<berth_auth::AuthConfig>> {
        if !self.auth_enabled() {
            return Ok(None);
        }
        let a = &self.auth;
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let generate = a.token_key.as_os_str().is_empty();
        Ok(Some(berth_auth::AuthConfig {
            htpasswd: (!a.htpasswd.as_os_str().is_empty()).then(|| a.htpasswd.clone()),
            groups: a.groups.clone(),
            forward_user_header: nonempty(&a.forward_user_header),
            forward_groups_header: nonempty(&a.forward_groups_header),
            trusted_proxies: a
                .trusted_proxies
                .iter()
                .map(|c| berth_auth::Cidr::parse(c).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?,
            token_key: if generate {
                self.storage.data_dir.join("auth").join("token-key.pem")
            } else {
                a.token_key.clone()
            },
            generate_token_key: generate,
            token_ttl: a.token_ttl,
            service: a.service.clone(),
            rules: self
                .access
                .iter()
                .map(|r| r.to_rule().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?,
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gc {
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
    #[serde(deserialize_with = "duration")]
    pub cache_grace: Duration,
    #[serde(deserialize_with = "schedule")]
    pub schedule: Schedule,
}

impl Gc {
    pub fn grace(&self) -> berth_registry::lifecycle::Grace {
        berth_registry::lifecycle::Grace {
            hosted: self.grace,
            cached: self.cache_grace,
        }
    }
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            grace: Duration::from_secs(3600),
            cache_grace: Duration::from_secs(600),
            schedule: Schedule::DailyAt(3, 0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    #[serde(deserialize_with = "schedule")]
    pub schedule: Schedule,
    #[serde(rename = "rule")]
    pub rules: Vec<RetentionRule>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            schedule: Schedule::DailyAt(2, 0),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub repositories: String,
    #[serde(default)]
    pub keep_last: Option<usize>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub keep_pulled_within: Option<Duration>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub delete_untagged_after: Option<Duration>,
}

impl RetentionRule {
    pub fn to_rule(&self) -> Result<berth_registry::lifecycle::RetentionRule, String> {
        use berth_registry::lifecycle::Pattern;
        Ok(berth_registry::lifecycle::RetentionRule {
            repositories: Pattern::parse(&self.repositories)?,
            keep_last: self.keep_last,
            keep_pulled_within: self.keep_pulled_within,
            keep_tags: self
                .keep_tags
                .iter()
                .map(|t| Pattern::parse(t))
                .collect::<Result<_, _>>()?,
            delete_untagged_after: self.delete_untagged_after,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    pub max_bytes: u64,
    #[serde(deserialize_with = "optional_duration")]
    pub evict_unpulled_after: Option<Duration>,
    #[serde(deserialize_with = "schedule")]
    pub schedule: Schedule,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            max_bytes: 0,
            evict_unpulled_after: None,
            schedule: Schedule::Every(Duration::from_secs(3600)),
        }
    }
}

impl Cache {
    pub fn policy(&self) -> berth_registry::lifecycle::EvictionPolicy {
        berth_registry::lifecycle::EvictionPolicy {
            max_bytes: (self.max_bytes > 0).then_some(self.max_bytes),
            evict_unpulled_after: self.evict_unpulled_after,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scrub {
    #[serde(deserialize_with = "schedule")]
    pub schedule: Schedule,
    pub max_bytes_per_sec: u64,
    pub verify_after_push: bool,
}

impl Default for Scrub {
    fn default() -> Self {
        Scrub {
            schedule: Schedule::DailyAt(4, 0),
            max_bytes_per_sec: 0,
            verify_after_push: true,
        }
    }
}

/// A duration, or "off".
fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "off" {
        return Ok(None);
    }
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not \"off\" or a duration like \"7d\": {e}")))
}

/// When a job runs inside the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Off,
    Every(Duration),
    /// Hour and minute, UTC.
    DailyAt(u32, u32),
}

impl Schedule {
    /// Parses "off", "6h" or "daily 03:00".
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(Schedule::Off);
        }
        if let Some(t) = s.strip_prefix("daily ") {
            let (h, m) = t.trim().split_once(':').ok_or("a daily time is written HH:MM")?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| "bad hour")?,
                m.parse().map_err(|_| "bad minute")?,
            );
            if h > 23 || m > 59 {
                return Err(format!("{t:?} is not a time of day"));
            }
            return Ok(Schedule::DailyAt(h, m));
        }
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(Schedule::Every(d)),
            _ => Err(format!(
                "{s:?} is not \"off\", an interval like \"6h\" or \"daily 03:00\""
            )),
        }
    }

    /// How long from `now` (Unix seconds) until the next run; `None` when off.
    pub fn next_in(&self, now: u64) -> Option<Duration> {
        match *self {
            Schedule::Off => None,
            Schedule::Every(d) => Some(d),
            Schedule::DailyAt(h, m) => {
                let day = 86_400;
                let at = (h * 3600 + m * 60) as u64;
                let since_midnight = now % day;
                let wait = if at > since_midnight {
                    at - since_midnight
                } else {
                    day - since_midnight + at
                };
                Some(Duration::from_secs(wait))
            }
        }
    }
}

fn schedule<'de, D: Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
    let s = String::deserialize(d)?;
    Schedule::parse(&s).map_err(serde::de::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: Server::default(),
            storage: Storage::default(),
            limits: Limits::default(),
            uploads: Uploads::default(),
            gc: Gc::default(),
            retention: Retention::default(),
            cache: Cache::default(),
            scrub: Scrub::default(),
            upstreams: default_upstreams(),
            auth: Auth::default(),
            access: Vec::new(),
            probe: Probe::default(),
        }
    }
}

/// One `[[upstream]]`: a registry served as a pull-through cache.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "ttl", deserialize_with = "duration")]
    pub manifest_ttl: Duration,
    #[serde(default = "stale", deserialize_with = "duration")]
    pub stale_if_error: Duration,
    #[serde(default = "connect", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "read", deserialize_with = "duration")]
    pub read_timeout: Duration,
}

fn ttl() -> Duration {
    Duration::from_secs(300)
}
fn stale() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn connect() -> Duration {
    Duration::from_secs(5)
}
fn read() -> Duration {
    Duration::from_secs(30)
}

/// The upstreams of the embedded default file: the list is written once, there.
fn default_upstreams() -> Vec<Upstream> {
    #[derive(Deserialize)]
    struct Only {
        upstream: Vec<Upstream>,
    }
    #[derive(Deserialize)]
    struct File {
        #[serde(flatten)]
        only: Only,
        #[serde(flatten)]
        _rest: toml::Table,
    }
    toml::from_str::<File>(DEFAULT_TOML)
        .expect("the embedded default configuration parses")
        .only
        .upstream
}

impl Upstream {
    /// The password from `password_file` or `password_env`, if configured.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        let key = format!("upstream {:?}", self.name);
        match (&self.password_file, &self.password_env) {
            (Some(f), None) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("{key}: reading password_file {}", f.display()))?;
                Ok(Some(text.lines().next().unwrap_or("").to_string()))
            }
            (None, Some(var)) => std::env::var(var)
                .map(Some)
                .with_context(|| format!("{key}: environment variable {var} (password_env) is not set")),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => bail!("{key}: set password_file or password_env, not both"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    pub log: String,
    /// PEM certificate chain; empty means plain HTTP.
    pub tls_cert: PathBuf,
    /// PEM private key for `tls_cert`.
    pub tls_key: PathBuf,
    pub max_header_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// 0 means unlimited.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub verify_on_read: bool,
    /// Where blob bytes live.
    pub blobs: BlobBackend,
    pub s3: S3,
    /// "" or "sqlite": `<data_dir>/berth.db`; a `postgres://` URL: that database.
    pub metadata: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// Files under `data_dir`.
    Fs,
    /// An S3-compatible bucket, `[storage.s3]`.
    S3,
}

/// `[storage.s3]`: the bucket blob bytes live in when `storage.blobs = "s3"`. Credentials
/// are named (an environment variable or a file), never written here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3 {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id_env: String,
    pub access_key_id_file: PathBuf,
    pub secret_access_key_env: String,
    pub secret_access_key_file: PathBuf,
    pub allow_http: bool,
    /// `None`: sign request bodies only over plain HTTP (as the AWS SDKs do).
    pub sign_payload: Option<bool>,
    pub redirect: bool,
    #[serde(deserialize_with = "duration")]
    pub presign_ttl: Duration,
}

impl Default for S3 {
    fn default() -> Self {
        S3 {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id_env: String::new(),
            access_key_id_file: PathBuf::new(),
            secret_access_key_env: String::new(),
            secret_access_key_file: PathBuf::new(),
            allow_http: false,
            sign_payload: None,
            redirect: false,
            presign_ttl: Duration::from_secs(300),
        }
    }
}

impl S3 {
    /// The store's settings with the credentials read from where the configuration
    /// points. Errors name the key and the variable or file, never the value.
    pub fn settings(&self) -> anyhow::Result<berth_store::s3::S3Settings> {
        fn secret(key: &str, env: &str, file: &std::path::Path) -> anyhow::Result<Option<String>> {
            match (env.is_empty(), file.as_os_str().is_empty()) {
                (true, true) => Ok(None),
                (false, true) => std::env::var(env)
                    .map(Some)
                    .with_context(|| format!("storage.s3.{key}_env: environment variable {env} is not set")),
                (true, false) => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("storage.s3.{key}_file: reading {}", file.display()))?;
                    Ok(Some(text.lines().next().unwrap_or("").trim().to_string()))
                }
                (false, false) => bail!("storage.s3: set {key}_env or {key}_file, not both"),
            }
        }
        Ok(berth_store::s3::S3Settings {
            endpoint: (!self.endpoint.is_empty()).then(|| self.endpoint.trim_end_matches('/').to_string()),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.trim_matches('/').to_string(),
            access_key_id: secret("access_key_id", &self.access_key_id_env, &self.access_key_id_file)?,
            secret_access_key: secret(
                "secret_access_key",
                &self.secret_access_key_env,
                &self.secret_access_key_file,
            )?,
            allow_http: self.allow_http,
            sign_payload: self
                .sign_payload
                .unwrap_or_else(|| self.endpoint.starts_with("http://")),
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.bucket.is_empty() {
            bail!("storage.s3.bucket: must be set when storage.blobs = \"s3\"");
        }
        let e = &self.endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            bail!("storage.s3.endpoint: {e:?} must start with http:// or https://");
        }
        if e.starts_with("http://") && !self.allow_http {
            bail!("storage.s3.endpoint: {e:?} is plain HTTP; set storage.s3.allow_http = true to allow it");
        }
        if self.region.is_empty() {
            bail!("storage.s3.region: must not be empty");
        }
        let p = self.prefix.trim_matches('/');
        if !p.is_empty() && p.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            bail!(
                "storage.s3.prefix: {:?} has an empty, `.` or `..` segment",
                self.prefix
            );
        }
        for (key, env, file) in [
            ("access_key_id", &self.access_key_id_env, &self.access_key_id_file),
            (
                "secret_access_key",
                &self.secret_access_key_env,
                &self.secret_access_key_file,
            ),
        ] {
            if !env.is_empty() && !file.as_os_str().is_empty() {
                bail!("storage.s3: set {key}_env or {key}_file, not both");
            }
        }
        // S3 signs URLs for at most seven days.
        if self.presign_ttl.is_zero() || self.presign_ttl > Duration::from_secs(7 * 24 * 3600) {
            bail!("storage.s3.presign_ttl: must be between 1s and 7 days");
        }
        Ok(())
    }
}

/// Where the metadata store lives, from `storage.metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    Sqlite(PathBuf),
    /// A connection string (it may hold a password: never print it).
    Postgres(String),
}

impl Storage {
    pub fn metadata(&self) -> Metadata {
        match self.metadata.as_str() {
            "" | "sqlite" => Metadata::Sqlite(self.data_dir.join("berth.db")),
            url => Metadata::Postgres(url.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    /// Requests per second per client IP to /v2 and /auth; 0 is unlimited.
    pub requests_per_second: u32,
    /// Requests above the rate a client may make at once; 0 is twice the rate.
    pub request_burst: u32,
    /// Upload requests with a body in flight per client IP; 0 is unlimited.
    pub max_uploads_per_client: u32,
    /// Largest blob an upload may create; 0 is unlimited.
    pub max_blob_bytes: u64,
    /// A request body that sends nothing this long is cut off; "0s" never cuts.
    #[serde(deserialize_with = "duration")]
    pub body_idle_timeout: Duration,
    /// Upstream blob fills at once, across upstreams; 0 is unlimited.
    pub max_concurrent_fills: u32,
    /// How long a fill waits for a turn before the pull gets 429.
    #[serde(deserialize_with = "duration")]
    pub fill_queue_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    #[serde(deserialize_with = "duration")]
    pub expire_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub expire_interval: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "[::]:5000".parse().expect("valid address"),
            shutdown_timeout: Duration::from_secs(30),
            log: "info".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            max_header_bytes: 65536,
            header_timeout: Duration::from_secs(30),
            max_connections: 0,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("./berth-data"),
            verify_on_read: true,
            blobs: BlobBackend::Fs,
            s3: S3::default(),
            metadata: String::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
            requests_per_second: 0,
            request_burst: 0,
            max_uploads_per_client: 32,
            max_blob_bytes: 0,
            body_idle_timeout: Duration::from_secs(60),
            max_concurrent_fills: 64,
            fill_queue_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            expire_after: Duration::from_secs(24 * 3600),
            expire_interval: Duration::from_secs(600),
        }
    }
}

/// Durations are written the human way: "30s", "5m", "1h 30m", "7d".
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"30s\", \"5m\" or \"2h\": {e}"
        ))
    })
}

impl Config {
    /// Parses a configuration file's text; errors name the key and what it expects.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let de = toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // toml's own message carries the line and column; keep it after the key path.
            anyhow::anyhow!("{path}: {}", inner.message().trim())
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let m = self.limits.max_manifest_bytes;
        if !(1024..=64 << 20).contains(&m) {
            bail!("limits.max_manifest_bytes: {m} is out of range; expected 1024 to 67108864 bytes");
        }
        if self.limits.request_burst > 0 && self.limits.requests_per_second == 0 {
            bail!("limits.request_burst: set without limits.requests_per_second, which is 0 (no rate limit)");
        }
        let h = self.server.max_header_bytes;
        if !(8192..=1 << 20).contains(&h) {
            bail!("server.max_header_bytes: {h} is out of range; expected 8192 to 1048576 bytes");
        }
        if self.server.tls_cert.as_os_str().is_empty() != self.server.tls_key.as_os_str().is_empty() {
            bail!("server.tls_cert and server.tls_key: set both (TLS on) or neither (plain HTTP)");
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            bail!("storage.data_dir: must not be empty");
        }
        if self.storage.blobs == BlobBackend::S3 {
            self.storage.s3.validate()?;
        }
        // The value is never echoed: a connection string may carry a password.
        if let Metadata::Postgres(url) = self.storage.metadata() {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                bail!(
                    "storage.metadata: expected \"sqlite\" or a postgres://user:password@host:port/database URL"
                );
            }
            berth_store::postgres::check_url(&url)
                .map_err(|e| anyhow::anyhow!("storage.metadata: not a valid PostgreSQL URL: {e}"))?;
        }
        for (key, d) in [
            ("server.shutdown_timeout", self.server.shutdown_timeout),
            ("server.header_timeout", self.server.header_timeout),
            ("uploads.expire_after", self.uploads.expire_after),
            ("uploads.expire_interval", self.uploads.expire_interval),
        ] {
            if d.is_zero() {
                bail!("{key}: must be longer than zero");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = format!("upstream[{i}]");
            for n in std::iter::once(&u.name).chain(&u.aliases) {
                let ok = !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
                    && n.parse::<berth_oci::RepoName>().is_ok();
                if !ok {
                    bail!("{at}.name/aliases: {n:?} is not a lowercase host name like \"docker.io\"");
                }
                if !seen.insert(n.clone()) {
                    bail!("{at}: {n:?} names two upstreams; names and aliases must be unique");
                }
            }
            if !(u.url.starts_with("http://") || u.url.starts_with("https://")) {
                bail!("{at}.url: {:?} must start with http:// or https://", u.url);
            }
            if u.username.is_none() && (u.password_file.is_some() || u.password_env.is_some()) {
                bail!("{at}: a password is set without a username");
            }
            if u.password_file.is_some() && u.password_env.is_some() {
                bail!("{at}: set password_file or password_env, not both");
            }
            for (key, d) in [
                ("manifest_ttl", u.manifest_ttl),
                ("connect_timeout", u.connect_timeout),
                ("read_timeout", u.read_timeout),
            ] {
                if d.is_zero() {
                    bail!("{at}.{key}: must be longer than zero");
                }
            }
        }
        for (i, r) in self.retention.rules.iter().enumerate() {
            if let Err(e) = r.to_rule() {
                bail!("retention.rule[{i}]: {e}");
            }
        }
        for (i, r) in self.access.iter().enumerate() {
            if let Err(e) = r.to_rule() {
                bail!("access[{i}].{e}");
            }
        }
        for (i, c) in self.auth.trusted_proxies.iter().enumerate() {
            if let Err(e) = berth_auth::Cidr::parse(c) {
                bail!("auth.trusted_proxies[{i}]: {e}");
            }
        }
        if !self.auth.forward_user_header.is_empty() && self.auth.trusted_proxies.is_empty() {
            bail!(
                "auth.forward_user_header: set auth.trusted_proxies too; the header is believed only from them"
            );
        }
        for (key, h) in [
            ("auth.forward_user_header", &self.auth.forward_user_header),
            ("auth.forward_groups_header", &self.auth.forward_groups_header),
        ] {
            if !h.is_empty() && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                bail!("{key}: {h:?} is not an HTTP header name");
            }
        }
        for (i, r) in self.probe.references.iter().enumerate() {
            if let Err(e) = crate::probe::parse_local(r) {
                bail!("probe.references[{i}]: {e}");
            }
        }
        if self.probe.interval.is_zero() {
            bail!("probe.interval: must be longer than zero");
        }
        if self.probe.username.is_empty() != self.probe.password_env.is_empty() {
            bail!("probe.username and probe.password_env: set both (a user the rules let pull) or neither");
        }
        if self.auth.token_ttl.is_zero() {
            bail!("auth.token_ttl: must be longer than zero");
        }
        if self.auth.service.is_empty() || self.auth.service.contains('"') {
            bail!("auth.service: must be non-empty, without quotes");
        }
        let url = &self.auth.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            bail!("auth.public_url: {url:?} must start with http:// or https://");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.server.log) {
            bail!("server.log: {:?} is not a log filter: {e}", self.server.log);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_default() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    /// Every key is explained where it first appears (later [[upstream]] entries repeat
    /// the keys of the first).
    #[test]
    fn every_key_has_a_comment() {
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        let mut table = "";
        let mut seen = std::collections::HashSet::new();
        for (i, l) in lines.iter().enumerate() {
            if l.starts_with('[') {
                table = l.trim_matches(['[', ']']);
            } else if let Some((key, _)) = l.split_once(" = ").filter(|_| !l.starts_with('#'))
                && seen.insert(format!("{table}.{key}"))
            {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "key without a comment: {l}"
                );
            }
        }
    }

    #[test]
    fn retention_and_cache() {
        let c = Config::parse(
            "[retention]\nschedule = \"off\"\n[[retention.rule]]\nrepositories = \"team/**\"\nkeep_last = 5\nkeep_tags = [\"latest\", \"/^v[0-9]+$/\"]\ndelete_untagged_after = \"7d\"\n[cache]\nmax_bytes = 1000\nevict_unpulled_after = \"30d\"\n",
        )
        .unwrap();
        let rule = c.retention.rules[0].to_rule().unwrap();
        assert!(rule.repositories.matches("team/a/b") && rule.keep_tags[1].matches("v12"));
        assert_eq!(c.cache.policy().max_bytes, Some(1000));
        assert!(err("[[retention.rule]]\nrepositories = \"/(/\"").starts_with("retention.rule[0]:"));
        assert!(
            err("[[retention.rule]]\nrepositories = \"x\"\nkeep_lats = 1")
                .contains("unknown field `keep_lats`")
        );
        assert!(err("[cache]\nevict_unpulled_after = \"later\"").starts_with("cache.evict_unpulled_after:"));
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::parse("off"), Ok(Schedule::Off));
        assert_eq!(
            Schedule::parse("6h"),
            Ok(Schedule::Every(Duration::from_secs(6 * 3600)))
        );
        assert_eq!(Schedule::parse("daily 03:30"), Ok(Schedule::DailyAt(3, 30)));
        assert!(Schedule::parse("daily 25:00").is_err());
        assert!(Schedule::parse("sometimes").is_err());
        // 02:00 UTC -> 03:30 is 90 minutes away; 04:00 -> next day's 03:30.
        let d = Schedule::DailyAt(3, 30);
        assert_eq!(d.next_in(2 * 3600), Some(Duration::from_secs(5400)));
        assert_eq!(d.next_in(4 * 3600), Some(Duration::from_secs(86_400 - 1800)));
        assert!(err("[gc]\nschedule = \"hourly\"").starts_with("gc.schedule:"));
    }

    #[test]
    fn upstreams_default_and_replace() {
        let names: Vec<String> = Config::default()
            .upstreams
            .iter()
            .map(|u| u.name.clone())
            .collect();
        assert_eq!(
            names,
            ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io"]
        );
        let one = "[[upstream]]\nname = \"local.test\"\nurl = \"http://127.0.0.1:1\"\n";
        let c = Config::parse(one).unwrap();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].manifest_ttl, Duration::from_secs(300));
        let u = |extra: &str| format!("[[upstream]]\nname = \"a.io\"\nurl = \"http://x\"\n{extra}");
        assert!(err("[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"").starts_with("upstream[0].url:"));
        assert!(err("[[upstream]]\nname = \"Bad\"\nurl = \"http://x\"").starts_with("upstream[0].name"));
        assert!(err(&u("[[upstream]]\nname = \"a.io\"\nurl = \"http://y\"")).contains("unique"));
        let e = err(&u("manifest_ttl = \"never\""));
        assert!(
            e.starts_with("upstream[0].manifest_ttl:") || e.starts_with("upstream.manifest_ttl"),
            "{e}"
        );
        assert!(err(&u("password_env = \"X\"")).contains("without a username"));
        assert!(err(&u("colour = \"blue\"")).contains("unknown field `colour`"));
    }

    #[test]
    fn storage_metadata_selects_the_backend() {
        let c =
            |v: &str| Config::parse(&format!("[storage]\ndata_dir = \"/d\"\nmetadata = \"{v}\"")).unwrap();
        let sqlite = Metadata::Sqlite(PathBuf::from("/d/berth.db"));
        assert_eq!(
            Config::default().storage.metadata(),
            Metadata::Sqlite(PathBuf::from("./berth-data/berth.db"))
        );
        assert_eq!(c("").storage.metadata(), sqlite);
        assert_eq!(c("sqlite").storage.metadata(), sqlite);
        let url = "postgres://berth:pw@db.example:5432/registry";
        assert_eq!(c(url).storage.metadata(), Metadata::Postgres(url.to_string()));
        // Errors never repeat the value: it may hold a password.
        for bad in ["mysql://u:hunter2@h/db", "postgres://u:hunter2@h:notaport/db"] {
            let e = err(&format!("[storage]\nmetadata = \"{bad}\""));
            assert!(e.starts_with("storage.metadata:"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err("[server]\nlisten = \"nope\"").starts_with("server.listen:"),
            "{}",
            err("[server]\nlisten = \"nope\"")
        );
        assert!(err("[server]\nlisen = \"[::]:1\"").contains("unknown field `lisen`"));
        assert!(err("[storage]\ndata_dir = 5").starts_with("storage.data_dir:"));
        assert!(err("[uploads]\nexpire_after = \"soon\"").starts_with("uploads.expire_after:"));
        assert!(err("[limits]\nmax_manifest_bytes = 10").starts_with("limits.max_manifest_bytes:"));
        assert!(err("[nope]\nx = 1").contains("unknown field `nope`"));
        assert!(err("[storage]\nmetadata = \"mysql://u:hunter2@h/db\"").starts_with("storage.metadata:"));
        assert!(err("[server]\nlog = \"[[[\"").starts_with("server.log:"));
    }

    #[test]
    fn s3_keys() {
        let s3 = |extra: &str| format!("[storage]\nblobs = \"s3\"\n[storage.s3]\nbucket = \"b\"\n{extra}");
        assert!(err("[storage]\nblobs = \"s3\"").starts_with("storage.s3.bucket:"));
        assert!(err("[storage]\nblobs = \"nfs\"").starts_with("storage.blobs:"));
        assert!(err(&s3("endpoint = \"ftp://x\"")).starts_with("storage.s3.endpoint:"));
        assert!(err(&s3("endpoint = \"http://x:9000\"")).contains("allow_http"));
        assert!(err(&s3("prefix = \"a//b\"")).starts_with("storage.s3.prefix:"));
        assert!(err(&s3("presign_ttl = \"8d\"")).starts_with("storage.s3.presign_ttl:"));
        assert!(err(&s3("secret_access_key = \"x\"")).contains("unknown field `secret_access_key`"));
        assert!(err(&s3("access_key_id_env = \"A\"\naccess_key_id_file = \"f\"")).contains("not both"));
        let c = Config::parse(&s3(
            "endpoint = \"http://127.0.0.1:9000/\"\nallow_http = true\nprefix = \"/reg/\"\n\
             access_key_id_env = \"BERTH_CONFIG_TEST_UNSET_VARIABLE\"\nredirect = true",
        ))
        .unwrap();
        assert_eq!(c.storage.blobs, BlobBackend::S3);
        assert!(c.storage.s3.redirect);
        assert_eq!(c.storage.s3.presign_ttl, Duration::from_secs(300));
        let e = c.storage.s3.settings().unwrap_err().to_string();
        assert!(e.contains("BERTH_CONFIG_TEST_UNSET_VARIABLE"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
        let mut s = c.storage.s3.clone();
        s.access_key_id_env.clear();
        s.secret_access_key_file = dir.path().join("secret");
        let settings = s.settings().unwrap();
        assert_eq!(settings.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(settings.prefix, "reg");
        assert!(
            !format!("{settings:?}").contains("s3cr3t"),
            "Debug shows the secret"
        );
        // Request bodies are signed over plain HTTP unless told otherwise, never over HTTPS.
        assert!(settings.sign_payload, "plain HTTP signs by default");
        s.sign_payload = Some(false);
        assert!(!s.settings().unwrap().sign_payload);
        s.sign_payload = None;
        s.endpoint = "https://s3.example".into();
        assert!(!s.settings().unwrap().sign_payload, "HTTPS needs no payload hash");
        let c = Config::parse(&s3("sign_payload = true")).unwrap();
        assert!(c.storage.s3.settings().unwrap().sign_payload);
    }

    #[test]
    fn listener_keys() {
        assert!(err("[server]\ntls_cert = \"c.pem\"").starts_with("server.tls_cert and server.tls_key:"));
        assert!(err("[server]\ntls_key = \"k.pem\"").starts_with("server.tls_cert and server.tls_key:"));
        assert!(err("[server]\nmax_header_bytes = 100").starts_with("server.max_header_bytes:"));
        assert!(err("[server]\nmax_header_bytes = 2000000").starts_with("server.max_header_bytes:"));
        assert!(err("[server]\nheader_timeout = \"0s\"").starts_with("server.header_timeout:"));
        let c = Config::parse(
            "[server]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nmax_connections = 5\nheader_timeout = \"2s\"",
        )
        .unwrap();
        assert_eq!(c.server.tls_cert, std::path::PathBuf::from("c.pem"));
        assert_eq!(c.server.max_connections, 5);
        assert_eq!(c.server.header_timeout, Duration::from_secs(2));
        assert_eq!(c.server.max_header_bytes, 65536);
    }
}

#[cfg(test)]
mod docs {
    /// Every key of the default configuration is in the configuration reference.
    #[test]
    fn reference_lists_every_key() {
        let reference = include_str!("../../../docs/reference/config.md");
        let mut table = "";
        for line in super::DEFAULT_TOML.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                table = line.trim_matches(['[', ']']);
            } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
                let path = format!("`{table}.{key}`");
                assert!(reference.contains(&path), "docs/reference/config.md lacks {path}");
            }
        }
    }
}
