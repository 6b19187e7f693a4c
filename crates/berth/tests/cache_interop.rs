//! The pull-through cache with real parts on loopback: the berth binary in front of CNCF
//! distribution (`docker-registry`, anonymous or behind the testkit's token server) as
//! upstreams, pulled through by skopeo and by containerd (`ctr`, configured with the
//! hosts.toml files `berth hosts-toml` writes).
//!
//! Every test starts its own processes on free loopback ports with temporary directories;
//! nothing else is contacted. The clients must be installed (`apt-get install -y skopeo
//! containerd docker-registry`); a missing client fails the test, it never skips.
//! `BERTH_INTEROP_DEBUG=1` makes skopeo log its HTTP traffic into failure messages;
//! `BERTH_TEST_LOG=debug` shows berth's log.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::{Containerd, Skopeo, docker_ref, free_port, http, push_image_set_http, run};
use berth_testkit::images::{
    Flavor, ImageSet, OciLayout, assert_dir_holds_set, assert_layout_holds_set, sha256_digest,
};
use berth_testkit::token::TokenServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// CNCF distribution (`docker-registry serve`) on a free loopback port with its access log
/// kept, so a test can count the requests it answered. Killed on drop.
struct Dist {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    addr: String,
}

impl Dist {
    /// Anonymous access.
    fn start() -> Dist {
        Dist::start_with_auth("")
    }

    /// `auth` is the body of distribution's `auth:` section (empty: anonymous).
    fn start_with_auth(auth: &str) -> Dist {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last_err = String::new();
        // A port that was free a moment ago may be taken by the time distribution binds it.
        for _ in 0..4 {
            let addr = format!("127.0.0.1:{}", free_port());
            match spawn_distribution(dir.path(), &addr, auth) {
                Ok(child) => {
                    return Dist {
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

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The access log (one line per request, Apache combined format).
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Requests answered so far whose request line is `METHOD <path containing fragment>`.
    fn requests(&self, method: &str, fragment: &str) -> usize {
        let start = format!("\"{method} ");
        self.access_log()
            .lines()
            .filter_map(|l| l.split_once(&start).map(|(_, rest)| rest))
            .filter(|rest| rest.split(' ').next().is_some_and(|path| path.contains(fragment)))
            .count()
    }

    /// Every request line (`METHOD PATH`) answered so far, for failure messages.
    fn request_lines(&self) -> Vec<String> {
        self.access_log()
            .lines()
            .filter_map(|l| l.split('"').nth(1).map(str::to_string))
            .collect()
    }

    /// Requests for blobs (GET or HEAD) answered so far.
    fn blob_requests(&self) -> usize {
        self.requests("GET", "/blobs/") + self.requests("HEAD", "/blobs/")
    }

    /// SIGKILL to our own child, by its PID, and wait until the port refuses connections.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let addr: SocketAddr = self.addr.parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
            "something still answers on {} after distribution was killed",
            self.addr
        );
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_distribution(dir: &Path, addr: &str, auth: &str) -> Result<Child, String> {
    let bin = berth_testkit::clients::require("docker-registry");
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("auth:\n{auth}")
    };
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: berth-cache-interop\n{auth}",
            dir.join("data").display()
        ),
    )
    .expect("write config.yml");
    // distribution writes its access log to stdout and everything else to stderr.
    let access = std::fs::File::create(dir.join("access.log")).expect("access.log");
    let log_path = dir.join("registry.log");
    let log = std::fs::File::create(&log_path).expect("registry.log");
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg(&config);
    // distribution reads every REGISTRY_* variable as a configuration override.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(access)
        .stderr(log)
        .spawn()
        .expect("spawn docker-registry");
    let sock: SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("exited with {st} on {addr}:\n{log}"));
        }
        // Any HTTP answer will do (401 when behind the token server).
        if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok()
            && http::get(&format!("http://{addr}/v2/"), &[]).is_ok()
        {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("no answer on {addr} within 20s:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `[[upstream]]` table.
fn upstream_toml(name: &str, url: &str, extra: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

fn oci_dir(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn dir_ref(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

/// The repositories berth's catalog lists.
fn catalog(berth: &TestServer) -> Vec<String> {
    let r = http::must_get(&berth.url("/v2/_catalog"), &[]);
    assert_eq!(r.status, 200, "GET /v2/_catalog:\n{r}");
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("catalog ({e}):\n{r}"));
    v["repositories"]
        .as_array()
        .unwrap_or_else(|| panic!("no repositories array:\n{r}"))
        .iter()
        .map(|n| n.as_str().expect("repository name").to_string())
        .collect()
}

/// Whether berth's blob store holds `digest` (looked up on disk, so the check itself cannot
/// fill the cache).
fn stored(berth: &TestServer, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    berth
        .blob_root()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .is_file()
}

#[test]
fn distribution_behind_token_server_as_upstream() {
    let skopeo = Skopeo::new();
    let tokens = TokenServer::start(&[("user", "pass")]);
    let dist = Dist::start_with_auth(&tokens.distribution_auth());
    let tmp = tempfile::tempdir().unwrap();

    // Seed distribution the way a person would: skopeo with credentials, which it trades
    // for a token at the token server.
    let set = ImageSet::multi_platform(Flavor::Oci, "cache-token");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    let repo = "test/app";
    skopeo.copy(
        &oci_dir(&tmp.path().join("src"), "v1"),
        &docker_ref(&dist.addr, repo, "v1"),
        &["--all", "--dest-creds", "user:pass"],
    );
    let seeded = tokens.requests();
    assert!(seeded > 0, "skopeo pushed without asking the token server");
    // Anonymous clients are refused: the upstream really needs the credentials.
    let anon = http::must_get(&format!("{}/v2/{repo}/manifests/v1", dist.url()), &[]);
    assert_eq!(anon.status, 401, "anonymous GET at distribution:\n{anon}");

    let password = tmp.path().join("password");
    std::fs::write(&password, "pass\n").unwrap();
    let berth = TestServer::start(
        BIN,
        &upstream_toml(
            "dist.test",
            &dist.url(),
            &format!(
                "username = \"user\"\npassword_file = \"{}\"\nmanifest_ttl = \"5m\"",
                password.display()
            ),
        ),
    );

    let out1 = tmp.path().join("out1");
    skopeo.copy_all(
        &docker_ref(&berth.addr, &format!("dist.test/{repo}"), "v1"),
        &oci_dir(&out1, "v1"),
    );
    // The index, both children, configs and layers: byte for byte, original digests.
    assert_layout_holds_set(&OciLayout::open(&out1), "v1", &set);

    let asked = tokens.requests() - seeded;
    assert!(asked > 0, "berth never asked the token server for a token");
    let scopes = tokens.scopes();
    assert!(
        scopes.iter().any(|s| s == &format!("repository:{repo}:pull")),
        "no pull scope for {repo} was asked for: {scopes:?}"
    );
    let blobs_after_first = dist.blob_requests();
    assert!(
        blobs_after_first > 0,
        "distribution served no blob, so the copy did not go through it:\n{:#?}",
        dist.request_lines()
    );
    for b in set.blobs() {
        assert!(stored(&berth, &b.digest), "{} is not in berth's store", b.digest);
    }

    // A second full copy through berth: blobs (and, younger than manifest_ttl, the tag
    // and the children by digest) come from the cache; distribution hears nothing.
    let before = dist.request_lines();
    let tokens_before = tokens.requests();
    let out2 = tmp.path().join("out2");
    skopeo.copy_all(
        &docker_ref(&berth.addr, &format!("dist.test/{repo}"), "v1"),
        &oci_dir(&out2, "v1"),
    );
    assert_layout_holds_set(&OciLayout::open(&out2), "v1", &set);
    let after = dist.request_lines();
    assert_eq!(
        dist.blob_requests(),
        blobs_after_first,
        "blobs were fetched again from distribution; new requests: {:#?}",
        &after[before.len()..]
    );
    assert_eq!(
        after.len(),
        before.len(),
        "a second copy within manifest_ttl reached distribution: {:#?}",
        &after[before.len()..]
    );
    assert_eq!(tokens.requests(), tokens_before, "a token was asked for again");
    assert_eq!(catalog(&berth), vec![format!("dist.test/{repo}")]);
}

#[test]
fn containerd_pulls_through_hosts_toml_with_no_fallback() {
    let dist = Dist::start();
    let all = ImageSet::multi_platform(Flavor::Oci, "cache-containerd-all");
    let single = ImageSet::multi_platform(Flavor::Docker, "cache-containerd-one");
    push_image_set_http(&dist.url(), "test/app", "v1", &all);
    push_image_set_http(&dist.url(), "test/single", "v1", &single);
    let berth = TestServer::start(BIN, &upstream_toml("dist.test", &dist.url(), ""));
    let tmp = tempfile::tempdir().unwrap();

    // hosts.toml from the real binary, for a configuration whose upstream URL nothing
    // answers on (the discard port on loopback): containerd's `server` fallback cannot
    // work, so a pull succeeds only through the mirror, berth.
    let unreachable = "127.0.0.1:9";
    assert!(
        TcpStream::connect_timeout(&unreachable.parse().unwrap(), Duration::from_millis(500)).is_err(),
        "something listens on {unreachable}; the no-fallback premise does not hold"
    );
    let config = tmp.path().join("hosts-toml.toml");
    std::fs::write(
        &config,
        upstream_toml("dist.test", &format!("http://{unreachable}"), ""),
    )
    .unwrap();
    let certs_d = tmp.path().join("certs.d");
    let mirror = format!("http://{}", berth.addr);
    let out = run(
        Command::new(BIN)
            .arg("hosts-toml")
            .arg("--mirror")
            .arg(&mirror)
            .arg("--out")
            .arg(&certs_d)
            .arg("--config")
            .arg(&config)
            .env_remove("BERTH_CONFIG"),
        Duration::from_secs(30),
    )
    .ok();
    let hosts_toml: PathBuf = certs_d.join("dist.test").join("hosts.toml");
    assert!(
        out.stdout_str().contains(hosts_toml.to_str().unwrap()),
        "{} not reported:\n{out}",
        hosts_toml.display()
    );
    let text = std::fs::read_to_string(&hosts_toml).unwrap();
    let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(
        parsed["server"].as_str(),
        Some(format!("http://{unreachable}").as_str()),
        "{text}"
    );
    assert!(
        parsed["host"].get(&mirror).is_some(),
        "no [host.\"{mirror}\"]:\n{text}"
    );

    let ctrd = Containerd::start();
    let hosts_dir = certs_d.to_str().unwrap();
    let debug = |args: &[&str]| {
        // On failure, pull again with the HTTP exchange dumped, for the report.
        let out = ctrd.try_ctr(args);
        if !out.success() {
            let mut dump = vec!["--debug"];
            dump.extend_from_slice(args);
            dump.insert(dump.iter().position(|a| *a == "pull").unwrap() + 1, "--http-dump");
            let again = ctrd.try_ctr(&dump);
            panic!("{out}\n\n=== again with --debug --http-dump ===\n{again}");
        }
        out
    };

    // Every platform, into containerd's content store (verified by digest there).
    debug(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        hosts_dir,
        "--all-platforms",
        "dist.test/test/app:v1",
    ]);
    let ls = ctrd.ctr(&["images", "ls"]);
    let row = ls
        .stdout_str()
        .lines()
        .find(|l| l.split_whitespace().next() == Some("dist.test/test/app:v1"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("dist.test/test/app:v1 not listed:\n{ls}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields.get(2), Some(&all.index.digest.as_str()), "{row}");
    for b in all.all_blobs() {
        assert_eq!(ctrd.content(&b.digest), b.data, "content {}", b.digest);
    }
    assert!(
        catalog(&berth).contains(&"dist.test/test/app".to_string()),
        "{:?}",
        catalog(&berth)
    );

    // One platform, unpacked: containerd checks the layers against the config's diff_ids
    // and reports the ChainID. (Another image, so nothing comes from containerd's store.)
    let arm64 = single.image("arm64");
    let out = debug(&[
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        hosts_dir,
        "--platform",
        "linux/arm64",
        "--print-chainid",
        "dist.test/test/single:v1",
    ]);
    assert!(
        out.stdout_str()
            .contains(&format!("image chain ID: {}", arm64.chain_id())),
        "chain ID {} not reported:\n{out}",
        arm64.chain_id()
    );
    for b in arm64.blobs() {
        assert!(stored(&berth, &b.digest), "{} did not go through berth", b.digest);
    }
    let mut repos = catalog(&berth);
    repos.sort_unstable();
    assert_eq!(repos, vec!["dist.test/test/app", "dist.test/test/single"]);
}

#[test]
fn skopeo_pulls_through_the_path_prefix_docker_list() {
    let skopeo = Skopeo::new();
    let mut dist = Dist::start();
    let set = ImageSet::multi_platform(Flavor::Docker, "cache-docker-list");
    push_image_set_http(&dist.url(), "test/list", "v1", &set);
    let berth = TestServer::start(
        BIN,
        &upstream_toml("dist.test", &dist.url(), "manifest_ttl = \"5m\""),
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = docker_ref(&berth.addr, "dist.test/test/list", "v1");

    let first = tmp.path().join("first");
    skopeo.copy_all(&src, &dir_ref(&first));
    assert_dir_holds_set(&first, &set);
    assert!(dist.blob_requests() > 0, "{:#?}", dist.request_lines());

    // The upstream is gone: everything already pulled is served from the cache, by tag and
    // by digest.
    dist.kill();
    let second = tmp.path().join("second");
    skopeo.copy_all(&src, &dir_ref(&second));
    assert_dir_holds_set(&second, &set);
    let by_digest = tmp.path().join("by-digest");
    skopeo.copy_all(
        &docker_ref(&berth.addr, "dist.test/test/list", &set.index.digest),
        &dir_ref(&by_digest),
    );
    assert_dir_holds_set(&by_digest, &set);
    for img in &set.images {
        let raw = skopeo.inspect_raw(&docker_ref(
            &berth.addr,
            "dist.test/test/list",
            &img.manifest.digest,
        ));
        assert_eq!(raw, img.manifest.data, "child {}", img.manifest.digest);
    }
}

#[test]
fn two_real_upstreams_at_once() {
    let one = Dist::start();
    let two = Dist::start();
    // The same repository name at both upstreams, with different content: each prefix must
    // reach its own upstream.
    let repo = "shared/app";
    let set_one = ImageSet::multi_platform(Flavor::Oci, "cache-upstream-one");
    let set_two = ImageSet::multi_platform(Flavor::Docker, "cache-upstream-two");
    push_image_set_http(&one.url(), repo, "v1", &set_one);
    push_image_set_http(&two.url(), repo, "v1", &set_two);
    // A repository only the second upstream has.
    let only_two = ImageSet::multi_platform(Flavor::Oci, "cache-upstream-two-only");
    push_image_set_http(&two.url(), "only/two", "v1", &only_two);
    let berth = TestServer::start(
        BIN,
        &format!(
            "{}{}",
            upstream_toml("one.test", &one.url(), ""),
            upstream_toml("two.test", &two.url(), "")
        ),
    );
    let tmp = tempfile::tempdir().unwrap();

    // Both at once, from two skopeo processes.
    let (out_one, out_two, out_only) = (
        tmp.path().join("one"),
        tmp.path().join("two"),
        tmp.path().join("only-two"),
    );
    std::thread::scope(|s| {
        let pulls = [
            ("one.test/shared/app", oci_dir(&out_one, "v1")),
            ("two.test/shared/app", dir_ref(&out_two)),
            ("two.test/only/two", oci_dir(&out_only, "v1")),
        ];
        let handles: Vec<_> = pulls
            .into_iter()
            .map(|(name, dst)| {
                let src = docker_ref(&berth.addr, name, "v1");
                s.spawn(move || Skopeo::new().copy_all(&src, &dst))
            })
            .collect();
        for h in handles {
            h.join().expect("a skopeo copy failed");
        }
    });
    assert_layout_holds_set(&OciLayout::open(&out_one), "v1", &set_one);
    assert_dir_holds_set(&out_two, &set_two);
    assert_layout_holds_set(&OciLayout::open(&out_only), "v1", &only_two);

    // Each upstream was asked only for what it holds.
    assert!(
        one.requests("GET", "/v2/shared/app/") > 0,
        "{:#?}",
        one.request_lines()
    );
    assert!(
        two.requests("GET", "/v2/shared/app/") > 0,
        "{:#?}",
        two.request_lines()
    );
    assert_eq!(
        one.requests("GET", "/v2/only/two/"),
        0,
        "{:#?}",
        one.request_lines()
    );
    for b in set_one.blobs() {
        assert_eq!(
            two.requests("GET", &b.digest),
            0,
            "{} asked of two.test",
            b.digest
        );
    }
    for b in set_two.blobs() {
        assert_eq!(
            one.requests("GET", &b.digest),
            0,
            "{} asked of one.test",
            b.digest
        );
    }

    // containerd's mirror form reaches the same cached repositories.
    let accept = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ];
    for (ns, set) in [("one.test", &set_one), ("two.test", &set_two)] {
        let r = http::must_get(&berth.url(&format!("/v2/{repo}/manifests/v1?ns={ns}")), &accept);
        assert_eq!(r.status, 200, "?ns={ns}:\n{r}");
        assert_eq!(sha256_digest(&r.body), set.index.digest, "?ns={ns}");
    }
    // The first upstream does not have the second one's repository.
    let r = http::must_get(&berth.url("/v2/one.test/only/two/manifests/v1"), &accept);
    assert_eq!(r.status, 404, "one.test/only/two:\n{r}");

    let mut repos = catalog(&berth);
    repos.sort_unstable();
    assert_eq!(
        repos,
        vec!["one.test/shared/app", "two.test/only/two", "two.test/shared/app"]
    );
}
