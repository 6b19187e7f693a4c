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
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
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
                    // moto takes unsigned requests: a bare PUT creates the bucket. Public
                    // read, so `moto_get` can read objects unsigned: moto gives an object
                    // made by CopyObject the bucket's ACL, and refuses anonymous reads of
                    // private ones.
                    let r = http::put_with(
                        &format!("{endpoint}/{bucket}"),
                        &[("x-amz-acl", "public-read")],
                        "application/xml",
                        b"",
                    )
                    .unwrap_or_else(|e| panic!("creating bucket on moto: {e}"));
                    assert_eq!(r.status, 200, "creating bucket on moto: {r}");
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

    /// The directory s3s-fs keeps objects in: `<root>/<bucket>/<key>` (None for moto).
    pub fn object_dir(&self) -> Option<PathBuf> {
        match &self.running {
            Running::InProcess { _root, .. } => Some(_root.path().join(&self.bucket)),
            Running::Moto(_) => None,
        }
    }

    /// Configuration lines for `berth serve` (appended inside `[storage]`, as
    /// [`crate::TestServer`] places extra configuration) keeping blobs in this bucket under
    /// `prefix`. The credentials go into files in `dir`, which the configuration names.
    pub fn berth_config(&self, dir: &std::path::Path, prefix: &str) -> String {
        let (key, secret) = (dir.join("s3-access-key"), dir.join("s3-secret-key"));
        std::fs::write(&key, format!("{ACCESS_KEY}\n")).expect("write access key file");
        std::fs::write(&secret, format!("{SECRET_KEY}\n")).expect("write secret key file");
        format!(
            "blobs = \"s3\"\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{REGION}\"\nbucket = \"{}\"\n\
             prefix = \"{prefix}\"\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n\
             allow_http = true\n",
            self.endpoint,
            self.bucket,
            key.display(),
            secret.display()
        )
    }

    /// Every key in the bucket under `prefix`, read without signing (moto only: s3s-fs
    /// checks signatures).
    pub fn moto_keys(&self, prefix: &str) -> Vec<String> {
        assert_eq!(self.kind, "moto", "unsigned listing needs moto");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..1000 {
            let mut url = format!("{}/{}?list-type=2&prefix={prefix}", self.endpoint, self.bucket);
            if let Some(t) = &token {
                url.push_str(&format!(
                    "&continuation-token={}",
                    t.replace('+', "%2B").replace('=', "%3D")
                ));
            }
            let r = http::get(&url, &[]).unwrap_or_else(|e| panic!("listing {url}: {e}"));
            assert_eq!(r.status, 200, "listing {url}: {r}");
            let xml = String::from_utf8_lossy(&r.body).into_owned();
            keys.extend(between(&xml, "<Key>", "</Key>"));
            token = between(&xml, "<NextContinuationToken>", "</NextContinuationToken>")
                .into_iter()
                .next();
            if token.is_none() {
                return keys;
            }
        }
        panic!("listing never ended");
    }

    /// An object's bytes, read without signing (moto only).
    pub fn moto_get(&self, key: &str) -> Vec<u8> {
        let url = format!("{}/{}/{key}", self.endpoint, self.bucket);
        let r = http::get(&url, &[]).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(r.status, 200, "GET {url}: {r}");
        r.body
    }
}

fn between(text: &str, open: &str, close: &str) -> Vec<String> {
    text.split(open)
        .skip(1)
        .filter_map(|s| s.split_once(close).map(|(v, _)| v.to_string()))
        .collect()
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
