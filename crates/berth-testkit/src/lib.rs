//! Dev-only helpers for end-to-end tests: the real `berth` binary on a loopback port with
//! a temporary data directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `berth serve` process. Killed (SIGKILL) on drop.
pub struct TestServer {
    child: Option<Child>,
    bin: PathBuf,
    dir: tempfile::TempDir,
    extra_config: String,
    server_config: String,
    /// Under `BERTH_TEST_BACKEND=s3pg`: the bucket and database this server keeps its
    /// blobs and rows in, for its whole life (restarts included).
    backend: Option<Box<S3PgBackend>>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http` or `https`, as the server reported when it started.
    pub scheme: String,
}

impl TestServer {
    /// Starts `bin serve` on 127.0.0.1 with a fresh data directory. `extra_config` is TOML
    /// appended after `[server]`/`[storage]` (it may add other tables).
    pub fn start(bin: &str, extra_config: &str) -> TestServer {
        TestServer::start_on(bin, "127.0.0.1:0", extra_config)
    }

    /// Like [`TestServer::start`], listening on `listen` (e.g. `[::]:0` for dual-stack).
    pub fn start_on(bin: &str, listen: &str, extra_config: &str) -> TestServer {
        TestServer::launch(
            tempfile::tempdir().expect("tempdir"),
            bin,
            listen,
            "",
            extra_config,
        )
    }

    /// Like [`TestServer::start`] in `dir` (which the server then owns and removes), with
    /// `server_config` (lines such as `tls_cert = "..."`) added to the `[server]` table.
    /// Files the configuration names (certificates, say) can be written to `dir` first.
    pub fn start_in(
        dir: tempfile::TempDir,
        bin: &str,
        server_config: &str,
        extra_config: &str,
    ) -> TestServer {
        TestServer::launch(dir, bin, "127.0.0.1:0", server_config, extra_config)
    }

    fn launch(
        dir: tempfile::TempDir,
        bin: &str,
        listen: &str,
        server_config: &str,
        extra_config: &str,
    ) -> TestServer {
        let mut s = TestServer {
            child: None,
            bin: PathBuf::from(bin),
            dir,
            extra_config: extra_config.to_string(),
            server_config: server_config.to_string(),
            backend: None,
            addr: String::new(),
            scheme: String::new(),
        };
        // A test that picks its own storage (S3 or PostgreSQL tests) keeps it.
        let picks_storage = extra_config
            .lines()
            .any(|l| l.trim_start().starts_with("blobs") || l.trim_start().starts_with("metadata"));
        if backend_is_s3pg() && !picks_storage {
            s.backend = Some(Box::new(S3PgBackend::start(s.dir.path())));
        }
        s.spawn(listen);
        s
    }

    fn spawn(&mut self, listen: &str) {
        let config = self.dir.path().join("berth.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{listen}\"\nshutdown_timeout = \"5s\"\n{}\n[storage]\ndata_dir = \"{}\"\n{}{}\n{}",
                self.server_config,
                self.data_dir().display(),
                self.backend.as_ref().map(|b| b.storage_keys.as_str()).unwrap_or(""),
                self.extra_config,
                // `[storage.s3]` after whatever tables the test added: TOML allows a
                // sub-table to follow other tables.
                self.backend.as_ref().map(|b| b.s3_table.as_str()).unwrap_or(""),
            ),
        )
        .expect("write config");
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("berth listening on ")
                    && let Some((scheme, addr)) = url.split_once("://")
                {
                    let _ = tx.send((scheme.to_string(), addr.to_string()));
                }
            }
        });
        let (scheme, addr) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("berth did not report its address within 60s");
        self.scheme = scheme;
        self.addr = addr;
        self.child = Some(child);
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("address has a port")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where this server's blob files are: `blobs/<alg>/<2 hex>/<hex>` under it. The data
    /// directory, or under `BERTH_TEST_BACKEND=s3pg` the s3s-fs directory holding the
    /// bucket's objects under the server's prefix (same layout), so tests that look at or
    /// damage stored bytes work on both.
    pub fn blob_root(&self) -> PathBuf {
        match &self.backend {
            Some(b) => b
                ._s3
                .object_dir()
                .expect("s3s-fs keeps objects in files")
                .join(S3PG_PREFIX),
            None => self.data_dir(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then start again on the same port and data directory.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        let addr = self.addr.clone();
        self.spawn(&addr);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        terminate(self.child.take()?, within)
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; kills it otherwise.
/// Returns the exit status when it stopped in time.
pub fn terminate(mut child: Child, within: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// True when `BERTH_TEST_BACKEND=s3pg`: every [`TestServer`] (that does not pick its own
/// storage) keeps its blobs in an S3 bucket (s3s-fs, in the test process) and its metadata
/// in a fresh PostgreSQL database of the test process's cluster, instead of the data
/// directory's files and SQLite. `scripts/test-s3pg` runs the end-to-end suite this way.
pub fn backend_is_s3pg() -> bool {
    match std::env::var("BERTH_TEST_BACKEND").as_deref() {
        Ok("s3pg") => true,
        Ok("") | Ok("fs") | Err(_) => false,
        Ok(other) => panic!("BERTH_TEST_BACKEND={other:?}: expected \"s3pg\" or \"fs\""),
    }
}

/// For a test that reads or damages files in the data directory (blob files, upload
/// areas): under `BERTH_TEST_BACKEND=s3pg` those files do not exist, so it prints why it
/// is skipped and returns true. The same behaviour on S3 is covered by the blob store
/// contract suite and crates/berth/tests/s3.rs.
pub fn skip_on_s3pg(test: &str, why: &str) -> bool {
    if backend_is_s3pg() {
        eprintln!("SKIPPED under BERTH_TEST_BACKEND=s3pg: {test}: {why}");
        return true;
    }
    false
}

const S3PG_PREFIX: &str = "berth";

/// One server's S3 bucket (an s3s-fs server of its own, cheap: it runs in the test process)
/// and PostgreSQL database.
struct S3PgBackend {
    _s3: s3::S3Server,
    /// Dropped with the server (a database takes ~8 MB; a test file starts dozens).
    db: String,
    /// `blobs = "s3"` and `metadata = "postgres://..."`, inside `[storage]`.
    storage_keys: String,
    /// The `[storage.s3]` table.
    s3_table: String,
}

impl S3PgBackend {
    fn start(dir: &Path) -> S3PgBackend {
        let s3 = s3::S3Server::s3s_fs();
        let db = postgres::PgCluster::shared().create_database();
        let config = s3.berth_config(dir, S3PG_PREFIX);
        let (blobs, table) = config
            .split_once('\n')
            .expect("berth_config: blobs line, then the table");
        let name = db.rsplit('/').next().unwrap_or_default().to_string();
        S3PgBackend {
            db: name,
            storage_keys: format!("{blobs}\nmetadata = \"{db}\"\n"),
            s3_table: format!("{table}\n"),
            _s3: s3,
        }
    }
}

impl Drop for S3PgBackend {
    fn drop(&mut self) {
        // The server is already killed (TestServer::drop runs first).
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            postgres::PgCluster::shared().psql("postgres", &sql)
        }));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub mod clients;
pub mod fault;
pub mod images;
pub mod postgres;
pub mod s3;
pub mod seed;
pub mod token;
