//! A private PostgreSQL 15 cluster for tests (Debian's `postgresql-15` binaries): `initdb`
//! into a temporary directory as the unprivileged `berth-test` user (PostgreSQL refuses to
//! run as root; the user is created when missing), listening on 127.0.0.1 on a free port
//! only, its socket inside that directory, `fsync=off`. Tests take a fresh database each
//! from one cluster per test process ([`PgCluster::shared`]).
//!
//! The postmaster is started through `setpriv --pdeathsig SIGQUIT` from a thread that
//! lives as long as the cluster, so it stops (immediate shutdown) when the cluster is
//! dropped or, for the shared one, when the test process exits however it exits.
//! Directories that dead test processes left behind are removed at the next start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const OS_USER: &str = "berth-test";
/// The cluster's superuser, with a password: tests can also check refused credentials.
pub const USER: &str = "berth";
pub const PASSWORD: &str = "berth-test-password";
const DIR_PREFIX: &str = "berth-pg-";

pub struct PgCluster {
    pub port: u16,
    dir: Option<tempfile::TempDir>,
    pid: u32,
    stop: mpsc::Sender<()>,
    stopped: Mutex<mpsc::Receiver<()>>,
    next_db: AtomicU32,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();

impl PgCluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(PgCluster::start)
    }

    /// A cluster of its own, stopped when dropped.
    pub fn start() -> PgCluster {
        remove_stale_dirs();
        let (uid, gid) = os_user();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("tempdir for PostgreSQL");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
        chown(dir.path(), uid, gid);
        chown(&pwfile, uid, gid);
        let data = dir.path().join("data");
        let out = as_test_user(Command::new(format!("{BIN}/initdb")), uid, None)
            .args(["-D".as_ref(), data.as_os_str()])
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb (is Debian's postgresql-15 installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port can be taken between our probe and the postmaster's bind: try again.
        for _ in 0..5 {
            let port = free_port();
            if let Some(mut cluster) = launch(&dir, &data, port, uid) {
                cluster.dir = Some(dir);
                return cluster;
            }
        }
        panic!(
            "PostgreSQL did not start; its log: {}",
            std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    /// `postgres://berth:PASSWORD@127.0.0.1:PORT/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh empty database and returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            self.next_db.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in `db` through `psql`, panicking with its output on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(format!("{BIN}/psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Ok(stopped) = self.stopped.lock() {
            let _ = stopped.recv_timeout(Duration::from_secs(15));
        }
        drop(self.dir.take());
    }
}

/// Starts the postmaster on `port` from a thread that owns it; `None` if it did not come
/// up (the port was taken, say).
fn launch(dir: &tempfile::TempDir, data: &Path, port: u16, uid: u32) -> Option<PgCluster> {
    let log = dir.path().join("postgres.log");
    let mut cmd = as_test_user(Command::new(format!("{BIN}/postgres")), uid, Some("SIGQUIT"));
    cmd.args(["-D".as_ref(), data.as_os_str()])
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg(format!("-cunix_socket_directories={}", dir.path().display()))
        // Throwaway data: durability only costs time here.
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create postgres.log"));
    let (started_tx, started_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (stopped_tx, stopped_rx) = mpsc::channel();
    // The parent-death signal follows the thread that spawned the child, so this thread
    // stays until the cluster is stopped (for the shared cluster: until the process ends).
    std::thread::spawn(move || {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = started_tx.send(Err(e));
                return;
            }
        };
        let _ = started_tx.send(Ok(child.id()));
        let _ = stop_rx.recv();
        // SIGQUIT: immediate shutdown, the postmaster takes its backends down with it.
        unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = stopped_tx.send(());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = stopped_tx.send(());
    });
    let pid = started_rx
        .recv()
        .expect("postgres launcher thread")
        .expect("spawn postgres (setpriv from util-linux)");
    let cluster = PgCluster {
        port,
        dir: None,
        pid,
        stop: stop_tx,
        stopped: Mutex::new(stopped_rx),
        next_db: AtomicU32::new(0),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ready = Command::new(format!("{BIN}/pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Some(cluster);
        }
        // Exited (port taken, say)? Then stop waiting.
        if unsafe { libc::kill(pid as i32, 0) } != 0 {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `cmd` run as the unprivileged test user when we are root (PostgreSQL refuses root),
/// as ourselves otherwise.
fn as_test_user(cmd: Command, uid: u32, pdeathsig: Option<&str>) -> Command {
    let program = cmd.get_program().to_owned();
    let mut wrapped = Command::new("setpriv");
    if uid != unsafe { libc::geteuid() } {
        wrapped.args(["--reuid", OS_USER, "--regid", OS_USER, "--init-groups"]);
    }
    if let Some(sig) = pdeathsig {
        wrapped.args(["--pdeathsig", sig]);
    }
    wrapped.arg("--").arg(program);
    // Keep PostgreSQL away from the caller's PG* settings and a root-only working directory.
    wrapped.current_dir("/").env_remove("PGDATA").env_remove("PGPORT");
    wrapped
}

/// (uid, gid) to run PostgreSQL as: ours unless we are root, else `berth-test` (created
/// when missing).
fn os_user() -> (u32, u32) {
    let me = unsafe { libc::geteuid() };
    if me != 0 {
        return (me, unsafe { libc::getegid() });
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, OS_USER]).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())?
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OS_USER,
            ])
            .status()
            .expect("run useradd");
        // Another test process may have created it meanwhile: check again below.
        if !status.success() && id("-u").is_none() {
            panic!("could not create the {OS_USER} user for PostgreSQL");
        }
    }
    (id("-u").expect("uid"), id("-g").expect("gid"))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Removes `berth-pg-<pid>-*` directories whose test process is gone (a shared cluster's
/// directory outlives its process: statics are never dropped).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
