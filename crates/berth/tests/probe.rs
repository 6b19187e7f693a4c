//! `berth probe` (the real binary) against berth and against CNCF distribution
//! (`docker-registry`), with multi-platform images pushed by skopeo: healthy images pass,
//! a deleted child manifest, a deleted blob file, a truncated blob and same-size corrupted
//! bytes are each named with the path to them; credentials through a token server; the
//! periodic mode's metrics and its clean stop.
//!
//! Every process runs on loopback with temporary directories and is stopped by its PID.
//! skopeo and docker-registry must be installed; a missing one fails the test.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::{Distribution, Output, Skopeo, free_port, http, push_image_set_http, run};
use berth_testkit::images::{Flavor, ImageSet};
use berth_testkit::token::TokenServer;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// `berth probe ARGS` to completion (bounded), with `env` set.
fn probe_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("probe").args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, Duration::from_secs(120))
}

fn probe(args: &[&str]) -> Output {
    probe_env(args, &[])
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Pushes `set` with skopeo (`copy --all --preserve-digests` from an OCI layout).
fn skopeo_push(set: &ImageSet, addr: &str, repo_tag: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    set.write_oci_layout(&layout, "src");
    let mut e = vec!["--all"];
    e.extend_from_slice(extra);
    Skopeo::new().copy(
        &format!("oci:{}:src", layout.display()),
        &format!("docker://{addr}/{repo_tag}"),
        &e,
    );
}

/// The `ok` line a full pull of `set` gives: every manifest and unique blob, their bytes.
fn ok_line(reference: &str, set: &ImageSet) -> String {
    let blobs = set.blobs();
    let manifests = 1 + set.images.len();
    let bytes: usize = blobs.iter().map(|b| b.size()).sum::<usize>()
        + set.index.size()
        + set.images.iter().map(|i| i.manifest.size()).sum::<usize>();
    format!(
        "ok {reference} ({manifests} manifests, {} blobs, {bytes} bytes)",
        blobs.len()
    )
}

/// Where berth keeps a blob's bytes.
fn berth_blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    data_dir.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// Where distribution's filesystem driver keeps a blob's bytes.
fn distribution_blob_file(root: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    root.join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[test]
fn healthy_indexes_pass_and_damage_is_named_with_its_path() {
    let berth = TestServer::start(BIN, "");
    let dist = Distribution::start();
    let set = ImageSet::multi_platform(Flavor::Oci, "probe-main");
    skopeo_push(&set, &berth.addr, "probe/app:v1", &[]);
    skopeo_push(&set, &dist.addr, "probe/app:v1", &[]);
    let in_berth = format!("{}/probe/app:v1", berth.addr);
    let in_dist = format!("{}/probe/app:v1", dist.addr);

    // Both healthy, in one run: a line each, in order, exit 0.
    let out = probe(&[&in_berth, &in_dist]).ok();
    let lines: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        vec![ok_line(&in_berth, &set), ok_line(&in_dist, &set)],
        "{out}"
    );
    // By digest, and with every blob fetched and hashed.
    let by_digest = format!("{}/probe/app@{}", berth.addr, set.index_digest());
    let out = probe(&["--verify", &by_digest, &in_dist]).ok();
    assert_eq!(
        out.stdout_str().lines().collect::<Vec<_>>(),
        vec![ok_line(&by_digest, &set), ok_line(&in_dist, &set)],
        "{out}"
    );
    // A tag that does not exist fails; the healthy reference beside it still passes.
    let missing = format!("{}/probe/app:nope", berth.addr);
    let out = probe(&[&missing, &in_berth]);
    assert_eq!(code(&out), 1, "{out}");
    let stdout = out.stdout_str();
    assert!(
        stdout.contains(&format!("FAIL {missing}: manifest: manifest missing")),
        "{out}"
    );
    assert!(stdout.contains(&ok_line(&in_berth, &set)), "{out}");

    // distribution: delete the amd64 child while the index still names it.
    let amd64 = set.image("amd64");
    let arm64 = set.image("arm64");
    let r = http::delete(&dist.url(&format!("/v2/probe/app/manifests/{}", amd64.manifest.digest))).unwrap();
    assert_eq!(r.status, 202, "DELETE child in distribution:\n{r}");
    let out = probe(&[&in_dist]);
    assert_eq!(code(&out), 1, "{out}");
    let stdout = out.stdout_str();
    assert!(stdout.starts_with(&format!("FAIL {in_dist}: ")), "{out}");
    assert!(
        stdout.contains(&format!(
            "{} (linux/amd64): child manifest missing",
            amd64.manifest.digest
        )),
        "{out}"
    );
    assert!(
        !stdout.contains(&arm64.manifest.digest),
        "only amd64 is damaged:\n{out}"
    );

    // berth: delete the bytes of the arm64 config (berth then answers 404 for it).
    let config = &arm64.config.digest;
    let file = berth_blob_file(&berth.blob_root(), config);
    std::fs::remove_file(&file).unwrap_or_else(|e| panic!("remove {}: {e}", file.display()));
    let out = probe(&[&in_berth]);
    assert_eq!(code(&out), 1, "{out}");
    let stdout = out.stdout_str();
    assert!(
        stdout.contains(&format!(
            "{} (linux/arm64/v8) -> config {config}: HEAD: blob missing",
            arm64.manifest.digest
        )),
        "{out}"
    );
    assert!(
        !stdout.contains(&amd64.manifest.digest),
        "only arm64 is damaged:\n{out}"
    );
}

#[test]
fn verify_catches_wrong_bytes_and_head_catches_wrong_sizes() {
    let berth = TestServer::start(BIN, "");
    let dist = Distribution::start();
    let set = ImageSet::multi_platform(Flavor::Docker, "probe-verify");
    push_image_set_http(&berth.url(""), "probe/list", "v1", &set);
    push_image_set_http(&dist.url(""), "probe/list", "v1", &set);
    let in_berth = format!("{}/probe/list:v1", berth.addr);
    let in_dist = format!("{}/probe/list:v1", dist.addr);
    probe(&["--verify", &in_berth, &in_dist]).ok();

    // distribution: a layer's bytes replaced by others of the same size. HEAD cannot
    // tell; --verify hashes them.
    let layer = &set.image("amd64").layers[0].blob;
    let flipped: Vec<u8> = layer.data.iter().map(|b| !b).collect();
    std::fs::write(distribution_blob_file(dist.dir(), &layer.digest), &flipped).unwrap();
    probe(&[&in_dist]).ok();
    let out = probe(&["--verify", &in_dist]);
    assert_eq!(code(&out), 1, "{out}");
    assert!(
        out.stdout_str().contains(&format!(
            "(linux/amd64) -> layer {}: digest mismatch: the bytes hash to {}",
            layer.digest,
            berth_testkit::images::sha256_digest(&flipped)
        )),
        "{out}"
    );

    // distribution: another layer cut short. HEAD reports the size the disk has.
    let short = &set.image("arm64").layers[0].blob;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(distribution_blob_file(dist.dir(), &short.digest))
        .unwrap();
    f.set_len(short.data.len() as u64 - 10).unwrap();
    drop(f);
    let out = probe(&[&in_dist]);
    assert_eq!(code(&out), 1, "{out}");
    assert!(
        out.stdout_str().contains(&format!(
            "(linux/arm64/v8) -> layer {}: size mismatch: the manifest says {} bytes, the registry has {}",
            short.digest,
            short.data.len(),
            short.data.len() - 10
        )),
        "{out}"
    );

    // berth: same-size wrong bytes. However berth reacts (it may refuse to serve them),
    // --verify fails and names the layer.
    let file = berth_blob_file(&berth.blob_root(), &layer.digest);
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&file, perms).unwrap();
    std::fs::write(&file, &flipped).unwrap();
    let out = probe(&["--verify", &in_berth]);
    assert_eq!(code(&out), 1, "{out}");
    assert!(
        out.stdout_str()
            .contains(&format!("(linux/amd64) -> layer {}: ", layer.digest)),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for args in [
        vec![],
        vec!["no-host-here"],
        vec!["127.0.0.1:1/Bad:v1"],
        vec!["127.0.0.1:1/app@sha256:short"],
        vec!["--interval", "0s", "127.0.0.1:1/app:v1"],
        vec!["--listen", "127.0.0.1:0", "127.0.0.1:1/app:v1"],
        vec!["--username", "u", "127.0.0.1:1/app:v1"],
        vec!["--password-env", "P", "127.0.0.1:1/app:v1"],
        vec![
            "--username",
            "u",
            "--password-env",
            "BERTH_PROBE_TEST_UNSET",
            "127.0.0.1:1/app:v1",
        ],
        vec![
            "--username",
            "u",
            "--password-file",
            "/nonexistent/berth-probe-password",
            "127.0.0.1:1/app:v1",
        ],
    ] {
        let out = probe(&args);
        assert_eq!(code(&out), 2, "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    // Nothing answers: a failure, not a usage error.
    let out = probe(&[&format!("127.0.0.1:{}/app@{d}", free_port())]);
    assert_eq!(code(&out), 1, "{out}");
    assert!(out.stdout_str().contains("manifest: cannot reach"), "{out}");
}

/// CNCF distribution behind `auth` (the body of its `auth:` section). Killed on drop.
struct AuthDist {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl AuthDist {
    fn start(auth: &str) -> AuthDist {
        let bin = berth_testkit::clients::require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  secret: berth-probe-test\nauth:\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut d = AuthDist {
            child,
            _dir: dir,
            addr,
        };
        let sock: SocketAddr = d.addr.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                let log = std::fs::read_to_string(d._dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry exited with {st}:\n{log}");
            }
            if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok()
                && http::get(&format!("http://{}/v2/", d.addr), &[]).is_ok()
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AuthDist {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn credentials_reach_a_registry_behind_a_token_server() {
    let tokens = TokenServer::start(&[("prober", "pr0be-pw")]);
    let dist = AuthDist::start(&tokens.distribution_auth());
    let set = ImageSet::multi_platform(Flavor::Oci, "probe-auth");
    skopeo_push(
        &set,
        &dist.addr,
        "probe/private:v1",
        &["--dest-creds", "prober:pr0be-pw"],
    );
    let reference = format!("{}/probe/private:v1", dist.addr);

    // Anonymous: refused, and said so.
    let out = probe(&[&reference]);
    assert_eq!(code(&out), 1, "{out}");
    assert!(out.stdout_str().contains("authentication failed"), "{out}");

    // From an environment variable, and from a file.
    let env = [("BERTH_PROBE_TEST_PW", "pr0be-pw")];
    let args = [
        "--verify",
        "--username",
        "prober",
        "--password-env",
        "BERTH_PROBE_TEST_PW",
        &reference,
    ];
    let out = probe_env(&args, &env).ok();
    assert_eq!(out.stdout_str().trim(), ok_line(&reference, &set), "{out}");
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pr0be-pw\n").unwrap();
    let out = probe(&[
        "--username",
        "prober",
        "--password-file",
        pw.to_str().unwrap(),
        &reference,
    ])
    .ok();
    assert_eq!(out.stdout_str().trim(), ok_line(&reference, &set), "{out}");

    // A wrong password: a failure that never shows the password.
    std::fs::write(&pw, "wrong-pw").unwrap();
    let out = probe(&[
        "--username",
        "prober",
        "--password-file",
        pw.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(code(&out), 1, "{out}");
    assert!(!format!("{out}").contains("wrong-pw"), "{out}");
}

/// A `berth probe --interval ...` process; killed by its PID on drop if still running.
struct Periodic {
    child: Option<Child>,
    metrics_url: String,
}

impl Periodic {
    fn start(args: &[&str]) -> Periodic {
        let mut child = Command::new(BIN)
            .arg("probe")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth probe");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("berth probe: metrics on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let mut p = Periodic {
            child: Some(child),
            metrics_url: String::new(),
        };
        p.metrics_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("berth probe did not report its metrics address within 30 s");
        p
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM by PID; the exit status, if it came within `within`.
    fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        berth_testkit::terminate(self.child.take()?, within)
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the sample `series` (name and labels exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn periodic_mode_serves_metrics_and_stops_on_sigterm() {
    let dist = Distribution::start();
    let set = ImageSet::multi_platform(Flavor::Oci, "probe-periodic");
    skopeo_push(&set, &dist.addr, "probe/app:v1", &[]);
    let damaged = format!("{}/probe/app:v1", dist.addr);
    let healthy = format!("{}/probe/app@{}", dist.addr, set.image("arm64").manifest.digest);
    let r = http::delete(&dist.url(&format!(
        "/v2/probe/app/manifests/{}",
        set.image("amd64").manifest.digest
    )))
    .unwrap();
    assert_eq!(r.status, 202, "DELETE child in distribution:\n{r}");

    let mut p = Periodic::start(&["--interval", "1s", "--listen", "127.0.0.1:0", &damaged, &healthy]);
    assert!(p.pid() > 0);
    let fail = format!(r#"berth_probe_runs_total{{reference="{damaged}",result="fail"}}"#);
    let ok = format!(r#"berth_probe_runs_total{{reference="{healthy}",result="ok"}}"#);
    // Two runs of each, so the interval really repeats.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let r = http::get(&p.metrics_url, &[]);
        if let Ok(r) = &r
            && r.status == 200
        {
            let text = r.body_str();
            if sample(&text, &fail).unwrap_or(0.0) >= 2.0 && sample(&text, &ok).unwrap_or(0.0) >= 2.0 {
                break text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no two runs of each within 60 s; last scrape:\n{r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let problems = |reference: &str| {
        sample(
            &text,
            &format!(r#"berth_probe_problems{{reference="{reference}"}}"#),
        )
    };
    assert!(problems(&damaged).unwrap_or(0.0) > 0.0, "{text}");
    assert_eq!(problems(&healthy), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!(r#"berth_probe_runs_total{{reference="{damaged}",result="ok"}}"#)
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"berth_probe_runs_total{{reference="{healthy}",result="fail"}}"#)
        ),
        Some(0.0),
        "{text}"
    );
    let last_success = |reference: &str| {
        sample(
            &text,
            &format!(r#"berth_probe_last_success_timestamp_seconds{{reference="{reference}"}}"#),
        )
    };
    assert_eq!(last_success(&damaged), None, "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = last_success(&healthy).unwrap_or_else(|| panic!("no last success:\n{text}"));
    assert!(
        (now - 120.0..=now + 1.0).contains(&at),
        "{at} vs now {now}\n{text}"
    );
    for reference in [&damaged, &healthy] {
        let d = sample(
            &text,
            &format!(r#"berth_probe_duration_seconds{{reference="{reference}"}}"#),
        )
        .unwrap_or_else(|| panic!("no duration for {reference}:\n{text}"));
        assert!((0.0..60.0).contains(&d), "{d}\n{text}");
    }

    let status = p.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "berth probe did not stop cleanly on SIGTERM: {status:?}"
    );
}

/// The server's own prober (`[probe]`): a missing image, then a healthy one, then a
/// damaged one, each shown on the health page within a few probe intervals.
#[test]
fn the_servers_own_probe_shows_on_the_health_page() {
    let berth = TestServer::start(
        BIN,
        "[probe]\nreferences = [\"probed/app:v1\"]\ninterval = \"1s\"\nverify = true\n",
    );
    let health = || {
        let r = http::get(&berth.url("/ui/health"), &[]).expect("GET /ui/health");
        assert_eq!(r.status, 200);
        r.body_str()
    };
    let until = |what: &str, wanted: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = health();
            if wanted(&page) {
                return page;
            }
            assert!(Instant::now() < deadline, "{what} not shown within 20 s:\n{page}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // Not pushed yet: the probe fails and says so.
    until("the failed probe of a missing image", &|p| {
        p.contains("probed/app:v1") && p.contains("failed (")
    });
    let set = ImageSet::multi_platform(Flavor::Oci, "server-probe");
    skopeo_push(&set, &berth.addr, "probed/app:v1", &[]);
    let manifests = 1 + set.images.len();
    until("the healthy probe", &|p| {
        p.contains(&format!("ok ({manifests} manifests, "))
    });
    // A layer damaged on disk: the next full pull through the API catches it.
    let victim = &set.images[0].layers[0].blob.digest;
    std::fs::write(berth_blob_file(&berth.blob_root(), victim), b"rotten").unwrap();
    let page = until("the damaged layer", &|p| {
        p.contains("failed (") && p.contains(victim.as_str())
    });
    assert!(page.contains("probed/app:v1"), "{page}");
}
