//! CNCF distribution 2.8 (`docker-registry serve`) on a loopback port with a temporary
//! storage directory, and a small image pushed to it over plain HTTP.
#![allow(dead_code)] // each test crate uses part of it

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_oci::{Digest, media};
use berth_upstream::UpstreamConfig;

/// A running `docker-registry serve`. Killed on drop.
pub struct Distribution {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl Distribution {
    /// Starts distribution; `auth` is the body of its `auth:` section (empty for none).
    pub fn start(auth: &str) -> Distribution {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let auth = if auth.is_empty() {
            String::new()
        } else {
            format!("auth:\n{auth}")
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-upstream-tests\n{auth}",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config_path);
        // distribution reads every REGISTRY_* variable as a config override.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Distribution {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        registry.wait_ready(SocketAddr::from(([127, 0, 0, 1], port)));
        registry
    }

    fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for _ in 0..300 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {addr}:\n{}", self.log());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An htpasswd file (bcrypt) for distribution's `auth: htpasswd:`; returns the section body.
pub fn htpasswd(dir: &Path, user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_result(password, 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoY);
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{user}:{hash}\n")).expect("write htpasswd");
    format!(
        "  htpasswd:\n    realm: berth-test\n    path: {}\n",
        path.display()
    )
}

/// Client settings for tests: generous timeouts unless a test says otherwise.
pub fn config(url: &str, credentials: Option<(&str, &str)>) -> UpstreamConfig {
    UpstreamConfig {
        name: "test".into(),
        url: url.into(),
        username: credentials.map(|c| c.0.to_string()),
        password: credentials.map(|c| c.1.to_string()),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        library_prefix: false,
    }
}

pub enum PushAuth {
    None,
    Basic(String, String),
    Bearer(String),
}

/// What [`seed`] pushed, byte for byte.
pub struct Image {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    /// OCI manifest, tagged `v1`.
    pub oci: Vec<u8>,
    /// Docker schema2 manifest, tagged `docker`.
    pub docker: Vec<u8>,
    /// Docker manifest list pointing at `docker`, tagged `multi`.
    pub list: Vec<u8>,
}

pub fn digest(bytes: &[u8]) -> Digest {
    Digest::sha256_of(bytes)
}

/// Pushes a config blob, a 300 KiB layer, an OCI manifest (`v1`), a Docker schema2
/// manifest (`docker`) and a Docker manifest list (`multi`) to `repo`.
pub async fn seed(url: &str, repo: &str, auth: &PushAuth) -> Image {
    let http = reqwest::Client::new();
    let mut state: u64 = repo.len() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let layer: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer).to_string()]},
    }))
    .unwrap();
    push_blob(&http, url, repo, auth, &config).await;
    push_blob(&http, url, repo, auth, &layer).await;

    let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({"mediaType": media_type, "digest": digest(bytes).to_string(), "size": bytes.len()});
    let oci = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))
    .unwrap();
    push_manifest(&http, url, repo, auth, "v1", media::OCI_MANIFEST, &oci).await;

    // Pretty-printed: distribution must keep these bytes exactly, whitespace included.
    let docker = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer)],
    }))
    .unwrap();
    push_manifest(&http, url, repo, auth, "docker", media::DOCKER_MANIFEST, &docker).await;

    let mut child = descriptor(media::DOCKER_MANIFEST, &docker);
    child["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let list = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST_LIST,
        "manifests": [child],
    }))
    .unwrap();
    push_manifest(
        &http,
        url,
        repo,
        auth,
        "multi",
        media::DOCKER_MANIFEST_LIST,
        &list,
    )
    .await;

    Image {
        config,
        layer,
        oci,
        docker,
        list,
    }
}

fn authorize(req: reqwest::RequestBuilder, auth: &PushAuth) -> reqwest::RequestBuilder {
    match auth {
        PushAuth::None => req,
        PushAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
        PushAuth::Bearer(t) => req.bearer_auth(t),
    }
}

async fn push_blob(http: &reqwest::Client, url: &str, repo: &str, auth: &PushAuth, bytes: &[u8]) {
    let start = authorize(http.post(format!("{url}/v2/{repo}/blobs/uploads/")), auth)
        .send()
        .await
        .expect("start upload");
    assert_eq!(start.status(), 202, "start upload: {:?}", start.text().await);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with('/') {
        format!("{url}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = authorize(http.put(format!("{location}{sep}digest={}", digest(bytes))), auth)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("finish upload");
    assert_eq!(put.status(), 201, "finish upload: {:?}", put.text().await);
}

async fn push_manifest(
    http: &reqwest::Client,
    url: &str,
    repo: &str,
    auth: &PushAuth,
    tag: &str,
    media_type: &str,
    bytes: &[u8],
) {
    let put = authorize(http.put(format!("{url}/v2/{repo}/manifests/{tag}")), auth)
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("push manifest");
    assert_eq!(put.status(), 201, "push manifest {tag}: {:?}", put.text().await);
}
