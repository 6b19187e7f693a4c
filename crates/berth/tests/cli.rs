//! The binary's own surface: configuration commands, dual-stack listening, graceful stop.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use support::*;

fn berth(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run berth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_default_prints_a_file_that_checks() {
    let (ok, text, _) = berth(&["config", "default"]);
    assert!(ok);
    for key in [
        "listen = \"[::]:5000\"",
        "data_dir = \"./berth-data\"",
        "max_manifest_bytes = 4194304",
    ] {
        assert!(text.contains(key), "default config lacks {key}");
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("berth.toml");
    std::fs::write(&f, &text).unwrap();
    let (ok, out, err) = berth(&["config", "check", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(": ok"));
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    for (text, expect) in [
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        ("[server]\nlistn = \"[::]:5000\"\n", "unknown field `listn`"),
        ("[limits]\nmax_manifest_bytes = -1\n", "limits.max_manifest_bytes"),
        (
            "[limits]\nmax_manifest_bytes = 999999999\n",
            "limits.max_manifest_bytes",
        ),
        ("[uploads]\nexpire_after = \"whenever\"\n", "uploads.expire_after"),
        ("[server\n", "TOML parse error"),
    ] {
        std::fs::write(&f, text).unwrap();
        let (ok, _, err) = berth(&["config", "check", f.to_str().unwrap()]);
        assert!(!ok, "{text:?} was accepted");
        assert!(err.contains(expect), "{text:?}: {err}");
        // serve refuses the same file before it binds anything.
        let (ok, _, err) = berth(&["serve", "--config", f.to_str().unwrap()]);
        assert!(!ok && err.contains(expect), "{err}");
    }
}

#[test]
fn wildcard_listen_is_dual_stack() {
    let s = TestServer::start_on(BIN, "[::]:0", "");
    let port = s.port();
    for host in ["127.0.0.1", "[::1]", "localhost"] {
        let r = get(&format!("http://{host}:{port}/v2/"));
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(
            get(&format!("http://{host}:{port}/healthz")).status,
            200,
            "{host}"
        );
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut s = TestServer::start(BIN, "");
    let base = s.url("");
    let data = bytes(42, 2 << 20);
    let d = sha256(&data);
    // An upload that takes about a second to send.
    let uploader = {
        let (base, d, data) = (base.clone(), d.clone(), data.clone());
        std::thread::spawn(move || {
            struct Slow(std::io::Cursor<Vec<u8>>);
            impl std::io::Read for Slow {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    std::thread::sleep(Duration::from_millis(15));
                    let n = buf.len().min(32 * 1024);
                    self.0.read(&mut buf[..n])
                }
            }
            let body = ureq::SendBody::from_owned_reader(Slow(std::io::Cursor::new(data)));
            try_req(
                "POST",
                &format!("{base}/v2/grace/blobs/uploads/?digest={d}"),
                &[],
                Some(body),
                None,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = s
        .terminate(Duration::from_secs(10))
        .expect("berth did not exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let r = uploader.join().unwrap().expect("in-flight upload was cut off");
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    // Stopped: nothing listens any more.
    assert!(std::net::TcpStream::connect(&s.addr).is_err());
    // The upload that finished during shutdown is there after a restart.
    s.kill_and_restart();
    assert_eq!(get(&format!("{}/v2/grace/blobs/{d}", s.url(""))).body, data);
}
