//! S3-compatible servers for tests, on loopback: s3s-fs inside the test process, or moto's
//! server (Python, from PyPI; `scripts/test` installs it into /var/cache/berth-venv) as a
//! second, independent implementation. Each starts with one empty bucket and stops on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::clients::http;

/// Credentials the servers accept (s3s checks signatures with them; moto accepts any).
pub const ACCESS_KEY: &str = "berth-test-access";
pub const SECRET_KEY: &str = "berth-test-secret-key";
pub const REGION: &str = "us-east-1";

enum Running {
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        _root: tempfile::TempDir,
    },
    Moto(Child),
}

/// A running S3 server with one bucket.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    /// `s3s-fs` or `moto`.
    pub kind: &'static str,
    running: Running,
}

impl S3Server {
    /// s3s-fs served with hyper on a loopback port, on a runtime of its own (so it serves
    /// sync tests and outlives any test runtime), checking signatures with [`ACCESS_KEY`].
    pub fn s3s_fs() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir for s3s-fs");
        let bucket = "berth-test".to_string();
        std::fs::create_dir(root.path().join(&bucket)).expect("bucket directory");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind s3s-fs");
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs FileSystem");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("s3s-fs runtime");
            rt.block_on(async move {
                let mut b = s3s::service::S3ServiceBuilder::new(fs);
                b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = b.build();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        r = listener.accept() => match r {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => break,
                    };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
            // Open connections end with the runtime.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        S3Server {
            endpoint,
            bucket,
            kind: "s3s-fs",
            running: Running::InProcess {
                stop: Some(stop),
                thread: Some(thread),
                _root: root,
            },
        }
    }

    /// moto's server on a free loopback port, with an empty bucket. Panics, saying how to
    /// install it, when moto is missing: a contract test that cannot run must not pass.
    pub fn moto() -> S3Server {
        let bin = moto_server();
        let started = Instant::now();
        // A port picked by binding :0 can be taken before moto binds it: retry a few times.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let endpoint = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if http::get(&format!("{endpoint}/moto-api/"), &[]).is_ok() {
                    let bucket = "berth-test".to_string();
                    // moto takes unsigned requests: a bare PUT creates the bucket.
                    let r = http::put(&format!("{endpoint}/{bucket}"), "application/xml", b"")
                        .unwrap_or_else(|e| panic!("creating bucket on moto: {e}"));
                    assert_eq!(r.status, 200, "creating bucket on moto: {r:?}");
                    return S3Server {
                        endpoint,
                        bucket,
                        kind: "moto",
                        running: Running::Moto(child),
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto_server ({}) did not answer within {:?}",
            bin.display(),
            started.elapsed()
        );
    }

    /// TOML for berth's `[storage.s3]` table reaching this server, with the credentials
    /// in the environment variables `BERTH_TEST_S3_KEY` / `BERTH_TEST_S3_SECRET` (see
    /// [`S3Server::env`]).
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage.s3]\nendpoint = \"{}\"\nregion = \"{REGION}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\n\
             access_key_id_env = \"BERTH_TEST_S3_KEY\"\nsecret_access_key_env = \"BERTH_TEST_S3_SECRET\"\n\
             allow_http = true\n",
            self.endpoint, self.bucket
        )
    }

    /// The environment [`S3Server::storage_toml`] refers to.
    pub fn env() -> [(&'static str, &'static str); 2] {
        [("BERTH_TEST_S3_KEY", ACCESS_KEY), ("BERTH_TEST_S3_SECRET", SECRET_KEY)]
    }
}

/// Where moto's server is: `$BERTH_MOTO_SERVER`, the venv scripts/test installs, or PATH.
pub fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from("/var/cache/berth-venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "moto_server not found: run scripts/test (it installs moto[server] into \
             /var/cache/berth-venv) or set BERTH_MOTO_SERVER"
        )
    })
}

impl Drop for S3Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::InProcess { stop, thread, .. } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Running::Moto(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
