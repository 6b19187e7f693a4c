//! Real registry clients driven from tests: skopeo, podman, containerd (`ctr`), CNCF
//! distribution (`docker-registry`, as a reference upstream) and a tiny blocking HTTP client.
//!
//! Every wrapper fails loudly: a client that is not installed panics in [`require`] (the
//! test command installs them; tests never skip), and a command that fails panics with its
//! full command line, stdout and stderr.
//!
//! Set `BERTH_INTEROP_DEBUG=1` to pass `--debug`/`--log-level=debug` to skopeo and podman
//! (their HTTP traffic then shows up in a failing test's panic message).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::images::{Blob, Image, ImageSet};

/// Panics with a clear message unless `cmd` is an executable on `PATH`.
pub fn require(cmd: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(cmd);
        if let Ok(md) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "`{cmd}` is not installed (not found on PATH). The interop tests need the real \
         clients: apt-get install -y skopeo podman containerd docker-registry"
    );
}

fn debug_enabled() -> bool {
    std::env::var("BERTH_INTEROP_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The result of a command that ran to completion (successfully or not).
#[derive(Debug)]
pub struct Output {
    pub cmdline: String,
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Panics (showing everything) unless the command succeeded.
    pub fn ok(self) -> Output {
        if !self.success() {
            panic!("{self}");
        }
        self
    }
    /// Panics (showing everything) unless the command failed.
    pub fn failed(self) -> Output {
        if self.success() {
            panic!("expected failure, but it succeeded:\n{self}");
        }
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n[{}]\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// Runs `cmd` to completion with a time limit, capturing stdout and stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let cmdline = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .map(|a| if a.contains(' ') || a.is_empty() {
                format!("'{a}'")
            } else {
                a.into_owned()
            })
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
            panic!("`{cmdline}` did not finish within {timeout:?}; stderr so far:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        cmdline,
        status,
        stdout: t_out.join().unwrap(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// `docker://HOST:PORT/REPO:TAG` (or `@sha256:...` when `reference` is a digest).
pub fn docker_ref(addr: &str, repo: &str, reference: &str) -> String {
    if reference.starts_with("sha256:") {
        format!("docker://{addr}/{repo}@{reference}")
    } else {
        format!("docker://{addr}/{repo}:{reference}")
    }
}

/// skopeo against plain-HTTP loopback registries.
pub struct Skopeo {
    bin: PathBuf,
    debug: bool,
}

impl Default for Skopeo {
    fn default() -> Self {
        Self::new()
    }
}

impl Skopeo {
    pub fn new() -> Skopeo {
        Skopeo {
            bin: require("skopeo"),
            debug: debug_enabled(),
        }
    }

    /// Always pass `--debug` (stderr then logs every HTTP request skopeo makes).
    pub fn with_debug(mut self) -> Skopeo {
        self.debug = true;
        self
    }

    /// A `skopeo` command with the global flags (`--insecure-policy`, optional `--debug`).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--insecure-policy");
        if self.debug {
            c.arg("--debug");
        }
        // Never pick up credentials from the environment or the machine.
        c.env("REGISTRY_AUTH_FILE", "/nonexistent/berth-interop-auth.json");
        c
    }

    /// Runs `skopeo ARGS` and returns its output whatever the exit status.
    pub fn try_run(&self, args: &[&str]) -> Output {
        let mut c = self.command();
        c.args(args);
        run(&mut c, CLIENT_TIMEOUT)
    }

    /// `skopeo copy` with TLS verification off on both sides plus `extra` flags.
    pub fn try_copy(&self, src: &str, dst: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--retry-times=0",
        ];
        args.extend_from_slice(extra);
        args.push(src);
        args.push(dst);
        self.try_run(&args)
    }

    /// `skopeo copy --preserve-digests [extra] SRC DST`, panicking on failure.
    pub fn copy(&self, src: &str, dst: &str, extra: &[&str]) -> Output {
        let mut e = vec!["--preserve-digests"];
        e.extend_from_slice(extra);
        self.try_copy(src, dst, &e).ok()
    }

    /// `skopeo copy --all --preserve-digests SRC DST`, panicking on failure.
    pub fn copy_all(&self, src: &str, dst: &str) -> Output {
        self.copy(src, dst, &["--all"])
    }

    /// `skopeo inspect --raw IMAGE`: the manifest bytes exactly as served.
    pub fn try_inspect_raw(&self, image: &str) -> Output {
        self.try_run(&["inspect", "--tls-verify=false", "--retry-times=0", "--raw", image])
    }

    pub fn inspect_raw(&self, image: &str) -> Vec<u8> {
        self.try_inspect_raw(image).ok().stdout
    }

    /// `skopeo inspect [extra] IMAGE` parsed as JSON.
    pub fn inspect(&self, image: &str, extra: &[&str]) -> Value {
        let mut args = vec!["inspect", "--tls-verify=false", "--retry-times=0"];
        args.extend_from_slice(extra);
        args.push(image);
        let out = self.try_run(&args).ok();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("skopeo inspect output is not JSON ({e}):\n{out}"))
    }

    /// `skopeo inspect --config --raw IMAGE`: the config blob bytes.
    pub fn inspect_config_raw(&self, image: &str, extra: &[&str]) -> Vec<u8> {
        let mut args = vec![
            "inspect",
            "--tls-verify=false",
            "--retry-times=0",
            "--config",
            "--raw",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        self.try_run(&args).ok().stdout
    }

    /// `skopeo list-tags docker://HOST/REPO`: the tags, in the order the registry gave them.
    pub fn list_tags(&self, repo_ref: &str) -> Vec<String> {
        let out = self
            .try_run(&["list-tags", "--tls-verify=false", "--retry-times=0", repo_ref])
            .ok();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("list-tags output is not JSON ({e}):\n{out}"));
        v["Tags"]
            .as_array()
            .unwrap_or_else(|| panic!("no Tags array:\n{out}"))
            .iter()
            .map(|t| t.as_str().expect("tag string").to_string())
            .collect()
    }

    /// `skopeo sync --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false
    /// [extra] SRC DST` (`extra` names the transports: `--src docker --dest dir`).
    pub fn sync(&self, extra: &[&str], src: &str, dst: &str) -> Output {
        let mut args = vec![
            "sync",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ];
        args.extend_from_slice(extra);
        args.push(src);
        args.push(dst);
        self.try_run(&args).ok()
    }

    pub fn try_delete(&self, image: &str) -> Output {
        self.try_run(&["delete", "--tls-verify=false", "--retry-times=0", image])
    }

    pub fn delete(&self, image: &str) -> Output {
        self.try_delete(image).ok()
    }
}

/// podman as root with its own throw-away storage (vfs) under a temporary directory, which
/// is simply removed on drop (vfs layers are plain directories; pulls and pushes leave no
/// processes or mounts behind).
pub struct Podman {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Podman {
        let bin = require("podman");
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["root", "runroot", "tmp", "xdg"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        // An empty containers.conf so that the machine's configuration cannot interfere.
        std::fs::write(dir.path().join("containers.conf"), "[engine]\n").expect("write conf");
        // No credentials: an empty auth file (podman insists that REGISTRY_AUTH_FILE exists).
        std::fs::write(dir.path().join("auth.json"), "{\"auths\":{}}\n").expect("write auth");
        Podman { bin, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `podman` command with the global flags that keep it self-contained.
    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(&self.bin);
        c.arg("--storage-driver=vfs")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--cgroup-manager=cgroupfs")
            .arg("--events-backend=file")
            .arg(if debug_enabled() {
                "--log-level=debug"
            } else {
                "--log-level=error"
            })
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("TMPDIR", d.join("tmp"));
        c
    }

    pub fn try_run(&self, args: &[&str]) -> Output {
        let mut c = self.command();
        c.args(args);
        run(&mut c, CLIENT_TIMEOUT)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.try_run(args).ok()
    }

    /// `podman pull --tls-verify=false IMAGE` (any transport: `oci:DIR:TAG`, `HOST/REPO:TAG`).
    /// Returns the image ID podman printed.
    pub fn pull(&self, image: &str) -> String {
        let out = self.run(&["pull", "--tls-verify=false", "--quiet", image]);
        out.stdout_str().trim().to_string()
    }

    /// `podman push --tls-verify=false IMAGE DEST`, returning the pushed manifest digest (from
    /// `--digestfile`).
    pub fn push(&self, image: &str, dest: &str, extra: &[&str]) -> String {
        let digestfile = self.dir.path().join("digest");
        let _ = std::fs::remove_file(&digestfile);
        let df = digestfile.to_str().unwrap().to_string();
        let mut args = vec!["push", "--tls-verify=false", "--digestfile", &df];
        args.extend_from_slice(extra);
        args.push(image);
        args.push(dest);
        self.run(&args);
        std::fs::read_to_string(&digestfile)
            .expect("podman push wrote no --digestfile")
            .trim()
            .to_string()
    }

    /// Loads an OCI image layout into podman's storage (`podman pull oci:DIR:TAG`) and returns
    /// the image ID. podman names the image after the layout's path, which must be a valid
    /// lowercase repository name, so the layout is passed relative to its parent directory:
    /// its last path component must be lowercase.
    pub fn load_oci_layout(&self, layout: &Path, tag: &str) -> String {
        let name = layout
            .file_name()
            .and_then(|n| n.to_str())
            .expect("layout directory name");
        assert!(
            !name.chars().any(|c| c.is_ascii_uppercase()),
            "podman needs a lowercase layout directory name, got {name:?}"
        );
        let mut c = self.command();
        c.current_dir(layout.parent().expect("layout parent"))
            .args(["pull", "--quiet"])
            .arg(format!("oci:{name}:{tag}"));
        let out = run(&mut c, CLIENT_TIMEOUT).ok();
        out.stdout_str().trim().to_string()
    }

    pub fn tag(&self, image: &str, new_name: &str) {
        self.run(&["tag", image, new_name]);
    }

    pub fn rmi(&self, images: &[&str]) {
        let mut args = vec!["rmi", "--force"];
        args.extend_from_slice(images);
        self.run(&args);
    }

    /// `podman image inspect IMAGE` (the first element).
    pub fn image_inspect(&self, image: &str) -> Value {
        let out = self.run(&["image", "inspect", image]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("image inspect output is not JSON ({e}):\n{out}"));
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_else(|| panic!("image inspect returned no image:\n{out}"))
    }

    /// IDs of all local images.
    pub fn image_ids(&self) -> Vec<String> {
        let out = self.run(&["images", "--no-trunc", "--quiet"]);
        out.stdout_str()
            .lines()
            .map(|l| l.trim().trim_start_matches("sha256:").to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// A private containerd daemon (root, state and socket in a temporary directory, CRI off)
/// driven with `ctr`. Killed on drop.
pub struct Containerd {
    child: Option<Child>,
    ctr: PathBuf,
    dir: tempfile::TempDir,
}

impl Default for Containerd {
    fn default() -> Self {
        Self::start()
    }
}

impl Containerd {
    pub fn start() -> Containerd {
        let bin = require("containerd");
        let ctr = require("ctr");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.tracing\", \
                 \"io.containerd.tracing.processor.v1.otlp\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display(),
            ),
        )
        .expect("write containerd config");
        let log = d.join("containerd.log");
        let mut child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("containerd.log"))
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            child: None,
            ctr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "containerd exited with {st}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if c.dir.path().join("containerd.sock").exists() && c.try_ctr(&["version"]).success() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "containerd did not come up within 30s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.child = Some(child);
        c
    }

    /// `ctr --address SOCK --namespace berth-interop ARGS`, whatever the exit status.
    pub fn try_ctr(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.ctr);
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["--namespace", "berth-interop"])
            .args(args);
        run(&mut c, CLIENT_TIMEOUT)
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.try_ctr(args).ok()
    }

    /// `ctr content get DIGEST`: a blob from containerd's content store.
    pub fn content(&self, digest: &str) -> Vec<u8> {
        self.ctr(&["content", "get", digest]).stdout
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap()
        .port()
}

/// The registry an interop test drives: berth, or CNCF distribution when
/// `BERTH_INTEROP_TARGET=distribution` (to check the tests themselves against the
/// reference implementation).
pub enum Target {
    Berth(crate::TestServer),
    Distribution(Distribution),
}

impl Target {
    /// Starts the target; `berth_bin` is the test's `env!("CARGO_BIN_EXE_berth")`.
    pub fn start(berth_bin: &str) -> Target {
        match std::env::var("BERTH_INTEROP_TARGET").as_deref() {
            Ok("distribution") => Target::Distribution(Distribution::start()),
            Ok("berth") | Err(_) => Target::Berth(crate::TestServer::start(berth_bin, "")),
            Ok(other) => panic!("BERTH_INTEROP_TARGET={other}: expected berth or distribution"),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        match self {
            Target::Berth(s) => &s.addr,
            Target::Distribution(d) => &d.addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn is_distribution(&self) -> bool {
        matches!(self, Target::Distribution(_))
    }

    /// SIGKILL and restart on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        match self {
            Target::Berth(s) => s.kill_and_restart(),
            Target::Distribution(d) => d.kill_and_restart(),
        }
    }
}

/// CNCF distribution (`docker-registry serve`) on a free loopback port with a temporary
/// storage directory and deletes enabled: a reference registry speaking the same API.
pub struct Distribution {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Distribution {
    pub fn start() -> Distribution {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last_err = String::new();
        for _ in 0..4 {
            let addr = format!("127.0.0.1:{}", free_port());
            match Self::spawn(dir.path(), &addr) {
                Ok(child) => {
                    return Distribution {
                        child: Some(child),
                        dir,
                        addr,
                    };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    /// Starts `docker-registry serve` on `addr` with storage under `dir`, waiting until
    /// `/v2/` answers.
    fn spawn(dir: &Path, addr: &str) -> Result<Child, String> {
        let bin = require("docker-registry");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: berth-interop-test\n",
                dir.join("data").display()
            ),
        )
        .expect("write config.yml");
        let log = dir.join("registry.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg(&config);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("registry.log"))
            .spawn()
            .expect("spawn docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("exited with {st} on {addr}:\n{log}"));
            }
            if let Ok(r) = http::get(&format!("http://{addr}/v2/"), &[])
                && r.status == 200
            {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("no answer on {addr} within 20s:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then start again on the same port and storage.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let child = Self::spawn(self.dir.path(), &self.addr)
            .unwrap_or_else(|e| panic!("docker-registry did not restart: {e}"));
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal blocking HTTP client (plain HTTP only) for pushing test content directly and for
/// checking what a registry answers.
pub mod http {
    use std::sync::OnceLock;
    use std::time::Duration;

    #[derive(Debug, Clone)]
    pub struct Response {
        pub status: u16,
        /// Lower-cased names.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<&str> {
            let name = name.to_ascii_lowercase();
            self.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        }
        pub fn body_str(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    impl std::fmt::Display for Response {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            writeln!(f, "HTTP {}", self.status)?;
            for (k, v) in &self.headers {
                writeln!(f, "{k}: {v}")?;
            }
            let body = String::from_utf8_lossy(&self.body);
            let body: String = body.chars().take(2000).collect();
            write!(f, "\n{body}")
        }
    }

    fn agent() -> &'static ureq::Agent {
        static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
        AGENT.get_or_init(|| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                // Loopback only: never through a proxy from the environment.
                .proxy(None)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into()
        })
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Response, String> {
        let mut r = r.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// GET with the given `Accept` values (none: no Accept header beyond the default).
    pub fn get(url: &str, accept: &[&str]) -> Result<Response, String> {
        let mut req = agent().get(url);
        if !accept.is_empty() {
            req = req.header("Accept", accept.join(", "));
        }
        finish(req.call())
    }

    /// GET with arbitrary request headers (`Range`, say).
    pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        let mut req = agent().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        finish(req.call())
    }

    pub fn head(url: &str, accept: &[&str]) -> Result<Response, String> {
        let mut req = agent().head(url);
        if !accept.is_empty() {
            req = req.header("Accept", accept.join(", "));
        }
        finish(req.call())
    }

    pub fn delete(url: &str) -> Result<Response, String> {
        finish(agent().delete(url).call())
    }

    pub fn put(url: &str, content_type: &str, body: &[u8]) -> Result<Response, String> {
        finish(agent().put(url).header("Content-Type", content_type).send(body))
    }

    /// PUT with arbitrary request headers besides the body's `Content-Type`.
    pub fn put_with(
        url: &str,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, String> {
        let mut req = agent().put(url).header("Content-Type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        finish(req.send(body))
    }

    pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, String> {
        finish(agent().post(url).header("Content-Type", content_type).send(body))
    }

    /// Like [`get`] but panics on a transport error.
    pub fn must_get(url: &str, accept: &[&str]) -> Response {
        get(url, accept).unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }
}

/// Turns a `Location` header (absolute or relative) into an absolute URL.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{}{}", base.trim_end_matches('/'), location)
    }
}

/// Uploads `blob` to `base` (`http://HOST:PORT`) repository `repo`: a monolithic
/// `POST /v2/REPO/blobs/uploads/?digest=` with the body, falling back to POST + PUT for
/// registries (like distribution) that answer the POST with 202 and an upload session.
pub fn push_blob(base: &str, repo: &str, blob: &Blob) {
    let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={}", blob.digest);
    let r = http::post(&url, "application/octet-stream", &blob.data)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    match r.status {
        201 => {}
        202 => {
            let loc = r
                .header("location")
                .unwrap_or_else(|| panic!("POST {url}: 202 without Location:\n{r}"));
            let loc = absolute(base, loc);
            let sep = if loc.contains('?') { '&' } else { '?' };
            let put_url = format!("{loc}{sep}digest={}", blob.digest);
            let r = http::put(&put_url, "application/octet-stream", &blob.data)
                .unwrap_or_else(|e| panic!("PUT {put_url}: {e}"));
            assert_eq!(r.status, 201, "PUT {put_url}:\n{r}");
        }
        _ => panic!("POST {url}:\n{r}"),
    }
}

/// `PUT /v2/REPO/manifests/REFERENCE` with the manifest's own media type; returns the
/// `Docker-Content-Digest` the registry answered with.
pub fn push_manifest(base: &str, repo: &str, reference: &str, manifest: &Blob) -> String {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let r =
        http::put(&url, &manifest.media_type, &manifest.data).unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert_eq!(r.status, 201, "PUT {url}:\n{r}");
    r.header("docker-content-digest")
        .unwrap_or(&manifest.digest)
        .to_string()
}

/// Pushes `image` (blobs, then the manifest under `tag`) over plain HTTP.
pub fn push_image_http(base: &str, repo: &str, tag: &str, image: &Image) {
    for b in image.blobs() {
        push_blob(base, repo, b);
    }
    let d = push_manifest(base, repo, tag, &image.manifest);
    assert_eq!(d, image.manifest.digest, "digest the registry reported");
}

/// Pushes a whole multi-platform set over plain HTTP: blobs, each child manifest by digest,
/// then the index/list under `tag`.
pub fn push_image_set_http(base: &str, repo: &str, tag: &str, set: &ImageSet) {
    for b in set.blobs() {
        push_blob(base, repo, b);
    }
    for img in &set.images {
        let d = push_manifest(base, repo, &img.manifest.digest, &img.manifest);
        assert_eq!(d, img.manifest.digest, "child digest the registry reported");
    }
    let d = push_manifest(base, repo, tag, &set.index);
    assert_eq!(d, set.index.digest, "index digest the registry reported");
}
