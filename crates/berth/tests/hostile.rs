//! Hostile input against the real server: malformed and oversized request heads, stalled
//! clients, names and digests built to escape or confuse, thousands of idle connections,
//! and TLS with a certificate replaced under a running server. Every test ends by checking
//! that the server still serves (GET /v2/ and a blob pushed before the abuse).

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::Skopeo;
use berth_testkit::images::{Flavor, Image, Platform};
use support::{BIN, bytes, get, push_blob, req, sha256};

/// A digest that is well formed and names nothing.
const NOTHING: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// An answer read off a raw connection.
struct Raw {
    status: u16,
    body: Vec<u8>,
}

impl Raw {
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)));
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
}

/// Sends `request` as is on a new connection (from another thread, so a server that
/// answers before reading everything is seen) and reads until the server closes.
fn raw(addr: &str, request: &[u8]) -> Raw {
    try_raw(addr, request).unwrap_or_else(|text| panic!("no HTTP status in the answer: {text:?}"))
}

/// [`raw`], with an answer that is not HTTP as an `Err` holding it.
fn try_raw(addr: &str, request: &[u8]) -> Result<Raw, String> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let request = request.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&request);
    });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    drop(s);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out);
    let Some(status) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
    else {
        return Err(text.into_owned());
    };
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    Ok(Raw { status, body })
}

/// A request with `Connection: close`, so the answer ends with the connection.
fn request(method: &str, target: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} ").into_bytes();
    r.extend_from_slice(target);
    r.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.extend_from_slice(body);
    r
}

/// The server answers the base endpoint and serves `digest` from `repo` as `expected`.
fn still_serves(s: &TestServer, repo: &str, digest: &str, expected: &[u8]) {
    assert_eq!(get(&s.url("/v2/")).status, 200, "GET /v2/ after the abuse");
    let r = get(&s.url(&format!("/v2/{repo}/blobs/{digest}")));
    assert_eq!(r.status, 200, "blob after the abuse: {}", r.text());
    assert!(r.body == expected, "blob bytes changed");
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn malformed_request_heads_get_400_and_the_server_keeps_serving() {
    let s = TestServer::start(BIN, "");
    let blob = bytes(1, 5000);
    let d = push_blob(&s.url(""), "hostile/heads", &blob);
    let cases: &[(&str, &[u8])] = &[
        (
            "header without a colon",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        ),
        (
            "control byte in a header name",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-\x01: a\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Name: a\r\n\r\n",
        ),
        (
            "control byte in the method",
            b"G\x01T /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        ("no version", b"GET /v2/\r\nHost: x\r\n\r\n"),
        ("unknown version", b"GET /v2/ HTTP/7.3\r\nHost: x\r\n\r\n"),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
        ),
        (
            "two content lengths",
            b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
    ];
    for (what, bytes) in cases {
        let r = raw(&s.addr, bytes);
        assert_eq!(r.status, 400, "{what}: {}", String::from_utf8_lossy(&r.body));
        still_serves(&s, "hostile/heads", &d, &blob);
    }
}

#[test]
fn a_one_mebibyte_header_gets_431_and_the_server_keeps_serving() {
    let s = TestServer::start(BIN, "");
    let blob = bytes(2, 5000);
    let d = push_blob(&s.url(""), "hostile/big", &blob);
    let mut head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 1 << 20));
    head.extend_from_slice(b"\r\n\r\n");
    let r = raw(&s.addr, &head);
    assert_eq!(r.status, 431);
    // Many headers adding up to more than the limit, each small.
    let mut head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..90 {
        head.extend_from_slice(format!("X-H{i}: {}\r\n", "b".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert_eq!(raw(&s.addr, &head).status, 431);
    still_serves(&s, "hostile/big", &d, &blob);
    // Just under the limit is fine.
    let ok = req("GET", &s.url("/v2/"), &[("x-fits", &"c".repeat(60_000))], None);
    assert_eq!(ok.status, 200);
}

/// Reads from `s` until the server closes it; returns how long that took from `since`.
fn closed_after(mut s: TcpStream, since: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return since.elapsed(),
            Err(e) => panic!("the server did not close the connection within 10 s: {e}"),
        }
    }
}

#[test]
fn stalled_and_idle_clients_are_disconnected_after_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir, BIN, "header_timeout = \"1s\"", "");
    let blob = bytes(3, 5000);
    let d = push_blob(&s.url(""), "hostile/slow", &blob);
    let within = |what: &str, t: Duration| {
        println!("{what}: closed after {t:?}");
        assert!(
            t >= Duration::from_millis(900) && t < Duration::from_secs(4),
            "{what}: closed after {t:?}, expected about 1 s"
        );
    };

    // Half a request head, then nothing.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let t = Instant::now();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: loc").unwrap();
    within("half a head", closed_after(c, t));

    // A head dribbled one byte every 200 ms: the timeout counts the whole head.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let t = Instant::now();
    let mut cut = None;
    for b in b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if c.write_all(&[*b]).is_err() {
            cut = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if t.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let cut = cut.unwrap_or_else(|| closed_after(c, t));
    println!("dribbled head: cut after {cut:?}");
    assert!(
        cut < Duration::from_secs(4),
        "a dribbling client was served for {cut:?}"
    );

    // Nothing at all.
    let c = TcpStream::connect(&s.addr).unwrap();
    within("silent connection", closed_after(c, Instant::now()));

    // Keep-alive: one request answered, then idle.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    within("idle keep-alive connection", closed_after(c, Instant::now()));

    still_serves(&s, "hostile/slow", &d, &blob);
}

#[test]
fn names_that_escape_or_break_the_grammar_are_name_invalid_and_touch_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let parent_etc = root.parent().unwrap().join("etc").exists();
    let s = TestServer::start_in(dir, BIN, "", "");
    let blob = bytes(4, 5000);
    let d = push_blob(&s.url(""), "hostile/names", &blob);
    let before = tree(&root);

    let long = format!("{}/{}", "a".repeat(200), "b".repeat(100));
    let blob_path = |name: &str| format!("/v2/{name}/blobs/{NOTHING}").into_bytes();
    let cases: Vec<(&str, &str, Vec<u8>, &[u8])> = vec![
        ("percent-encoded invalid UTF-8", "GET", blob_path("%ff"), b""),
        (
            "percent-encoded invalid UTF-8 mid-name",
            "GET",
            b"/v2/a%ff%fe/manifests/latest".to_vec(),
            b"",
        ),
        ("dot-dot segments", "GET", blob_path("a/../../etc"), b""),
        (
            "dot-dot segments to a tag list",
            "GET",
            b"/v2/../../../etc/tags/list".to_vec(),
            b"",
        ),
        ("encoded dot-dot", "GET", blob_path("%2e%2e/%2e%2e/etc"), b""),
        (
            "encoded dot-dot, upper case",
            "GET",
            b"/v2/a/%2E%2E/b/manifests/latest".to_vec(),
            b"",
        ),
        (
            "encoded slash and dot-dot",
            "PUT",
            b"/v2/..%2f..%2fetc/manifests/latest".to_vec(),
            b"{}",
        ),
        (
            "dot-dot upload",
            "POST",
            b"/v2/a/../../etc/blobs/uploads/".to_vec(),
            b"",
        ),
        (
            "dot-dot monolithic upload",
            "POST",
            format!("/v2/a/../../tmp/blobs/uploads/?digest={}", sha256(b"x")).into_bytes(),
            b"x",
        ),
        ("upper case", "GET", b"/v2/Library/Nginx/tags/list".to_vec(), b""),
        (
            "upper case upload",
            "POST",
            b"/v2/Hostile/blobs/uploads/".to_vec(),
            b"",
        ),
        (
            "longer than 255",
            "GET",
            format!("/v2/{long}/tags/list").into_bytes(),
            b"",
        ),
        ("empty component", "GET", blob_path("a//b"), b""),
        ("leading separator", "GET", blob_path("-a"), b""),
    ];
    for (what, method, target, body) in &cases {
        let r = raw(&s.addr, &request(method, target, body));
        assert_eq!(r.status, 400, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.code(), "NAME_INVALID", "{what}");
    }
    // Raw bytes that are not ASCII never reach a handler: hyper refuses the request line.
    for target in [
        &b"/v2/a\xff\xfe/blobs/uploads/"[..],
        b"/v2/\xc3\xa9t\xc3\xa9/tags/list",
    ] {
        let r = raw(&s.addr, &request("GET", target, b""));
        assert_eq!(r.status, 400, "raw bytes {target:?}");
    }

    assert_eq!(
        tree(&root),
        before,
        "files appeared or vanished around the data directory"
    );
    assert_eq!(root.parent().unwrap().join("etc").exists(), parent_etc);
    still_serves(&s, "hostile/names", &d, &blob);
}

#[test]
fn malformed_and_mismatched_digests_are_digest_invalid_and_store_nothing() {
    let s = TestServer::start(BIN, "");
    let base = s.url("");
    let repo = "hostile/digests";
    let blob = bytes(5, 5000);
    let d = push_blob(&base, repo, &blob);
    let blob_files = || tree(&s.data_dir().join("blobs"));
    let stored = blob_files();

    let bad = [
        "sha256:zz",
        "sha256:abc",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha256:{}0", &d[7..]),
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha999:abcd",
        "sha256",
        "",
    ];
    for digest in bad {
        let get = req("GET", &s.url(&format!("/v2/{repo}/blobs/{digest}")), &[], None);
        assert_eq!(get.status, 400, "GET {digest}: {}", get.text());
        assert_eq!(get.code(), "DIGEST_INVALID", "GET {digest}");
        let head = req("HEAD", &s.url(&format!("/v2/{repo}/blobs/{digest}")), &[], None);
        assert_eq!(head.status, 400, "HEAD {digest}");

        // The same digest closing an upload.
        let start = req("POST", &s.url(&format!("/v2/{repo}/blobs/uploads/")), &[], None);
        assert_eq!(start.status, 202, "{}", start.text());
        let loc = start.header("location").unwrap().to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = req(
            "PUT",
            &s.url(&format!("{loc}{sep}digest={digest}")),
            &[("content-type", "application/octet-stream")],
            Some(b"some bytes"),
        );
        assert_eq!(put.status, 400, "PUT ?digest={digest}: {}", put.text());
        assert_eq!(put.code(), "DIGEST_INVALID", "PUT ?digest={digest}");

        // And a monolithic upload.
        let post = req(
            "POST",
            &s.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")),
            &[("content-type", "application/octet-stream")],
            Some(b"some bytes"),
        );
        assert_eq!(post.status, 400, "POST ?digest={digest}: {}", post.text());
        assert_eq!(post.code(), "DIGEST_INVALID", "POST ?digest={digest}");
    }

    // Well-formed digests the bytes do not hash to.
    let sent = bytes(6, 70_000);
    let claimed = sha256(b"something else entirely");
    let start = req("POST", &s.url(&format!("/v2/{repo}/blobs/uploads/")), &[], None);
    let loc = start.header("location").unwrap().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = req(
        "PUT",
        &s.url(&format!("{loc}{sep}digest={claimed}")),
        &[("content-type", "application/octet-stream")],
        Some(&sent),
    );
    assert_eq!(put.status, 400, "{}", put.text());
    assert_eq!(put.code(), "DIGEST_INVALID");
    let post = req(
        "POST",
        &s.url(&format!("/v2/{repo}/blobs/uploads/?digest={claimed}")),
        &[("content-type", "application/octet-stream")],
        Some(&sent),
    );
    assert_eq!(post.status, 400, "{}", post.text());
    assert_eq!(post.code(), "DIGEST_INVALID");
    for digest in [claimed, sha256(&sent)] {
        let r = req("HEAD", &s.url(&format!("/v2/{repo}/blobs/{digest}")), &[], None);
        assert_eq!(r.status, 404, "{digest} must not exist");
    }
    assert_eq!(blob_files(), stored, "blob files appeared after refused uploads");
    still_serves(&s, repo, &d, &blob);
}

/// Raises this process's open files limit to its hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Polls `check` every 50 ms for at most `within`.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[test]
fn ten_thousand_idle_connections_do_not_stop_real_requests() {
    let began = Instant::now();
    let limit = raise_nofile();
    // Leave room for the other tests running in this process.
    let n = 10_000usize.min(limit.saturating_sub(2_000) as usize);
    println!("open files limit {limit}: opening {n} idle connections");
    assert!(
        n >= 1_000,
        "the open files hard limit ({limit}) is too low for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    // Long enough that no idle connection is cut while the test runs.
    let s = TestServer::start_in(dir, BIN, "header_timeout = \"120s\"", "");
    let pid = s.pid();
    let repo = "hostile/many";
    let blob = bytes(7, 10_000);
    let d = push_blob(&s.url(""), repo, &blob);
    let rss_before = rss_kib(pid);
    let fds_before = open_fds(pid);

    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(TcpStream::connect(&s.addr).unwrap_or_else(|e| panic!("connection {i}: {e}")));
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "opening connections is too slow"
        );
    }
    let opened = began.elapsed();
    // A few descriptors counted before may have been transient (the push's connection).
    let expected = fds_before + n - 8;
    assert!(
        eventually(Duration::from_secs(15), || open_fds(pid) >= expected),
        "berth holds {} descriptors, expected at least {expected}",
        open_fds(pid),
    );
    println!(
        "{n} connections open after {opened:?}; berth holds {} descriptors",
        open_fds(pid)
    );

    let t = Instant::now();
    assert_eq!(get(&s.url("/v2/")).status, 200);
    let base_latency = t.elapsed();
    let t = Instant::now();
    let other = bytes(8, 100_000);
    let od = push_blob(&s.url(""), repo, &other);
    let pulled = get(&s.url(&format!("/v2/{repo}/blobs/{od}")));
    let push_pull = t.elapsed();
    assert_eq!(pulled.status, 200);
    assert!(pulled.body == other);
    let rss_open = rss_kib(pid);
    println!(
        "with {n} idle connections: GET /v2/ {base_latency:?}, push+pull of 100 kB {push_pull:?}, \
         RSS {rss_open} KiB (before {rss_before} KiB)"
    );
    assert!(
        base_latency < Duration::from_secs(2),
        "GET /v2/ took {base_latency:?}"
    );
    assert!(push_pull < Duration::from_secs(5), "push+pull took {push_pull:?}");

    drop(conns);
    assert!(
        eventually(Duration::from_secs(15), || open_fds(pid) < fds_before + 100),
        "berth still holds {} descriptors after the clients left",
        open_fds(pid)
    );
    let rss_after = rss_kib(pid);
    println!("after the connections closed: RSS {rss_after} KiB");
    // Idle connections cost a task and buffers each, not megabytes.
    assert!(
        rss_open < rss_before + 256 * 1024,
        "RSS grew from {rss_before} to {rss_open} KiB"
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS stayed at {rss_after} KiB"
    );
    still_serves(&s, repo, &d, &blob);
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "took {:?}",
        began.elapsed()
    );
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_the_accept_loop() {
    let s = TestServer::start(BIN, "");
    let pid = s.pid();
    let repo = "hostile/emfile";
    let blob = bytes(9, 5000);
    let d = push_blob(&s.url(""), repo, &blob);
    // Leave berth a handful of descriptors beyond what it holds now, then take them all.
    let limit = open_fds(pid) + 8;
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(&s.addr).unwrap()).collect();
    assert!(
        eventually(Duration::from_secs(5), || open_fds(pid) >= limit),
        "berth holds {} descriptors, expected to reach its limit {limit}",
        open_fds(pid)
    );
    // Accepts now fail with EMFILE: a new request waits in the kernel's queue.
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    let t = Instant::now();
    let serves = || try_raw(&s.addr, &request("GET", b"/v2/", b"")).is_ok_and(|r| r.status == 200);
    assert!(
        eventually(Duration::from_secs(10), serves),
        "the server does not serve after running out of descriptors"
    );
    println!("serving again {:?} after the descriptors were freed", t.elapsed());
    still_serves(&s, repo, &d, &blob);
}

#[test]
fn connections_over_max_connections_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir, BIN, "max_connections = 3", "");
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&s.addr).unwrap()).collect();
    // Let the server count them.
    std::thread::sleep(Duration::from_millis(300));
    let over = TcpStream::connect(&s.addr).unwrap();
    let t = closed_after(over, Instant::now());
    assert!(
        t < Duration::from_secs(2),
        "the fourth connection stayed open {t:?}"
    );
    drop(held);
    let serves = || try_raw(&s.addr, &request("GET", b"/v2/", b"")).is_ok_and(|r| r.status == 200);
    assert!(
        eventually(Duration::from_secs(5), serves),
        "the server does not serve once the held connections closed"
    );
}

/// A CA and leaf certificates it signs for localhost and 127.0.0.1.
struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth hostile test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Writes a leaf certificate named `cn` and its key to `cert`/`key`, each replaced in
    /// one rename so the server never reads half a file.
    fn write_leaf(&self, cn: &str, serial: u64, cert: &Path, key: &Path) {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.serial_number = Some(serial.into());
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        for (path, text) in [(key, leaf_key.serialize_pem()), (cert, leaf.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run command");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The subject of the certificate a new TLS connection to `addr` is shown.
fn peer_subject(addr: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl x509");
    x509.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tls_serves_h2_to_verifying_clients_and_follows_a_replaced_certificate() {
    let skopeo = Skopeo::new();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    pki.write_leaf("berth-one", 1001, &cert, &key);
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca.crt"), &pki.ca_pem).unwrap();
    let ca_file = ca_dir.join("ca.crt");
    let work = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(
        dir,
        BIN,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nheader_timeout = \"2s\"",
            cert.display(),
            key.display()
        ),
        "",
    );
    assert_eq!(s.scheme, "https");
    let pid = s.pid();
    let addr = s.addr.clone();
    let url = |path: &str| s.url(path);
    assert!(url("/v2/").starts_with("https://"));

    // HTTP/2 by ALPN, and HTTP/1.1 for clients that ask for it, both verifying the chain.
    let curl = |extra: &[&str], path: &str| {
        run(Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&ca_file)
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .args(extra)
            .arg(url(path)))
    };
    assert_eq!(curl(&["--http2"], "/v2/"), (true, "2 200".to_string()));
    assert_eq!(curl(&["--http1.1"], "/v2/"), (true, "1.1 200".to_string()));
    // Plain HTTP on the TLS port is refused by the handshake, not served.
    let (ok, _) = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
        .arg(format!("http://{addr}/v2/")));
    assert!(!ok, "plain HTTP was answered on the TLS port");
    // A silent client is cut after header_timeout, handshake or not.
    let c = TcpStream::connect(&addr).unwrap();
    let t = closed_after(c, Instant::now());
    assert!(t < Duration::from_secs(5), "silent TLS client kept {t:?}");

    // skopeo pushes and pulls over verified HTTPS.
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "hostile-tls", 2);
    let src = work.path().join("src");
    img.write_oci_layout(&src, "v1");
    let dest = format!("docker://{addr}/hostile/tls:v1");
    let ca_arg = ca_dir.display().to_string();
    skopeo
        .try_run(&[
            "copy",
            "--retry-times=0",
            "--dest-cert-dir",
            &ca_arg,
            &format!("oci:{}:v1", src.display()),
            &dest,
        ])
        .ok();
    let pulled = work.path().join("pulled");
    skopeo
        .try_run(&[
            "copy",
            "--retry-times=0",
            "--src-cert-dir",
            &ca_arg,
            &dest,
            &format!("oci:{}:v1", pulled.display()),
        ])
        .ok();
    let raw_manifest = skopeo
        .try_run(&["inspect", "--raw", "--cert-dir", &ca_arg, &dest])
        .ok()
        .stdout;
    assert_eq!(sha256(&raw_manifest), img.manifest_digest());
    // Without the CA the same client refuses the server: the certificate really is checked.
    skopeo
        .try_run(&["inspect", "--raw", "--retry-times=0", &dest])
        .failed();

    // Replace the certificate; new connections see the new one, the process is the same.
    let first = peer_subject(&addr);
    assert!(first.contains("berth-one"), "{first}");
    let files = s.dir().to_path_buf();
    pki.write_leaf("berth-two", 2002, &files.join("cert.pem"), &files.join("key.pem"));
    let t = Instant::now();
    let mut now = String::new();
    let switched = eventually(Duration::from_secs(8), || {
        now = peer_subject(&addr);
        now.contains("berth-two")
    });
    assert!(switched, "still {now} 8 s after the files changed (was {first})");
    println!(
        "certificate replaced: {first:?} -> {now:?} after {:?}",
        t.elapsed()
    );
    assert_eq!(s.pid(), pid);
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the server restarted"
    );
    assert_eq!(curl(&["--http2"], "/v2/"), (true, "2 200".to_string()));

    // A broken replacement keeps the current certificate.
    std::fs::write(
        files.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let kept = peer_subject(&addr);
    assert!(kept.contains("berth-two"), "{kept}");
    let (ok, out) = curl(
        &["--http2"],
        &format!("/v2/hostile/tls/manifests/{}", img.manifest_digest()),
    );
    assert!(ok && out == "2 200", "{out}");
}

#[test]
fn startup_with_missing_or_bad_pem_files_names_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    pki.write_leaf("berth-start", 7, &cert, &key);
    let other_key = dir.path().join("other-key.pem");
    let other_cert = dir.path().join("other-cert.pem");
    pki.write_leaf("berth-other", 8, &other_cert, &other_key);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (&missing, &key, "server.tls_cert", &missing),
        (&cert, &missing, "server.tls_key", &missing),
        (&garbage, &key, "server.tls_cert", &garbage),
        (&cert, &garbage, "server.tls_key", &garbage),
        (&cert, &other_key, "server.tls_key", &other_key),
    ];
    for (c, k, key_name, file) in cases {
        let config = dir.path().join("berth.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[storage]\ndata_dir = \"{}\"\n",
                c.display(),
                k.display(),
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let (ok, out) = run(Command::new(BIN).args(["serve", "--config"]).arg(&config));
        assert!(!ok, "berth started with {c:?} and {k:?}: {out}");
        assert!(
            out.contains(key_name) && out.contains(&file.display().to_string()),
            "the error should name {key_name} and {}: {out}",
            file.display()
        );
        assert!(!out.contains("berth listening"), "{out}");
    }
}
