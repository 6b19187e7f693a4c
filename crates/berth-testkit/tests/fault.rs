//! The fault-injecting upstream, seen through a real client (curl): every fault must be
//! visible on the wire, not emulated.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::fault::{Fault, FaultTarget, FaultUpstream, sha256_digest};

const REPO: &str = "library/nginx";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Got {
    /// curl's exit code
    code: i32,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stderr: String,
    elapsed: Duration,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl against `url` with `extra` arguments; always bounded by `--max-time`.
fn curl(url: &str, extra: &[&str]) -> Got {
    let dir = tempfile::tempdir().unwrap();
    let (hdr, body) = (dir.path().join("headers"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .args(extra);
    if !extra.contains(&"--max-time") {
        cmd.args(["--max-time", "8"]);
    }
    let start = Instant::now();
    let out = cmd.arg(url).output().expect("run curl");
    let elapsed = start.elapsed();
    let head = std::fs::read_to_string(&hdr).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Got {
        code: out.status.code().unwrap_or(-1),
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

fn blob_url(up: &FaultUpstream, digest: &str) -> String {
    format!("{}/v2/{REPO}/blobs/{digest}", up.url())
}

fn manifest_url(up: &FaultUpstream, reference: &str) -> String {
    format!("{}/v2/{REPO}/manifests/{reference}", up.url())
}

fn blob_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// An upstream holding one blob of `len` bytes; returns its digest.
fn with_blob(len: usize) -> (FaultUpstream, String, Vec<u8>) {
    let up = FaultUpstream::start();
    let bytes = blob_bytes(len);
    let digest = up.put_blob(REPO, bytes.clone());
    (up, digest, bytes)
}

#[test]
fn serves_ping_manifests_and_blobs_exactly() {
    let up = FaultUpstream::start();
    assert!(up.url().starts_with("http://127.0.0.1:"));
    assert_eq!(
        up.addr().port(),
        up.url().rsplit(':').next().unwrap().parse::<u16>().unwrap()
    );

    let ping = curl(&format!("{}/v2/", up.url()), &[]);
    assert_eq!((ping.code, ping.status), (0, 200));

    let blob = blob_bytes(100_000);
    let bd = up.put_blob(REPO, blob.clone());
    assert_eq!(bd, sha256_digest(&blob));
    let g = curl(&blob_url(&up, &bd), &[]);
    assert_eq!((g.code, g.status), (0, 200), "{}", g.stderr);
    assert_eq!(g.body, blob);
    assert_eq!(g.header("Docker-Content-Digest"), Some(bd.as_str()));
    assert_eq!(g.header("Content-Length"), Some("100000"));

    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let md = up.put_manifest(REPO, Some("1.25"), OCI_MANIFEST, manifest.clone());
    for reference in ["1.25", md.as_str()] {
        let g = curl(&manifest_url(&up, reference), &[]);
        assert_eq!((g.code, g.status), (0, 200), "{}", g.stderr);
        assert_eq!(g.body, manifest);
        assert_eq!(g.header("Content-Type"), Some(OCI_MANIFEST));
        assert_eq!(g.header("Docker-Content-Digest"), Some(md.as_str()));
        assert_eq!(
            g.header("Content-Length"),
            Some(manifest.len().to_string().as_str())
        );
    }

    // HEAD: the same headers, no body.
    let h = curl(&manifest_url(&up, "1.25"), &["-I"]);
    assert_eq!((h.code, h.status), (0, 200), "{}", h.stderr);
    assert_eq!(h.header("Docker-Content-Digest"), Some(md.as_str()));
    assert_eq!(
        h.header("Content-Length"),
        Some(manifest.len().to_string().as_str())
    );
    let h = curl(&blob_url(&up, &bd), &["-I"]);
    assert_eq!((h.code, h.status), (0, 200), "{}", h.stderr);
    assert_eq!(h.header("Content-Length"), Some("100000"));
    // On the wire, a HEAD response ends right after its headers.
    let mut s = TcpStream::connect(up.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "HEAD /v2/{REPO}/blobs/{bd} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "{raw}");

    // Unknown things: OCI errors.
    let g = curl(&manifest_url(&up, "nope"), &[]);
    assert_eq!(g.status, 404);
    assert!(String::from_utf8_lossy(&g.body).contains("MANIFEST_UNKNOWN"));
    let g = curl(&blob_url(&up, &sha256_digest(b"absent")), &[]);
    assert_eq!(g.status, 404);
    assert!(String::from_utf8_lossy(&g.body).contains("BLOB_UNKNOWN"));
    // Content is per repository.
    let g = curl(&format!("{}/v2/library/other/blobs/{bd}", up.url()), &[]);
    assert_eq!(g.status, 404);
}

#[test]
fn range_requests_get_206() {
    let (up, d, bytes) = with_blob(1000);
    let g = curl(&blob_url(&up, &d), &["-r", "10-19"]);
    assert_eq!((g.code, g.status), (0, 206), "{}", g.stderr);
    assert_eq!(g.body, &bytes[10..20]);
    assert_eq!(g.header("Content-Range"), Some("bytes 10-19/1000"));
    let g = curl(&blob_url(&up, &d), &["-r", "990-"]);
    assert_eq!((g.status, g.body.as_slice()), (206, &bytes[990..]));
    let g = curl(&blob_url(&up, &d), &["-r", "5000-"]);
    assert_eq!(g.status, 416);
}

#[test]
fn truncate_closes_after_n_bytes_with_full_content_length() {
    let (up, d, bytes) = with_blob(50_000);
    up.set_fault(FaultTarget::Blob(d.clone()), Fault::Truncate { after: 1000 });
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!(g.code, 18, "partial file expected: {}", g.stderr);
    assert_eq!(g.status, 200);
    assert_eq!(g.header("Content-Length"), Some("50000"));
    assert_eq!(g.body, &bytes[..1000]);
    // Persistent until cleared.
    assert_eq!(curl(&blob_url(&up, &d), &[]).code, 18);
    up.clear_faults();
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.body.len()), (0, 50_000));
}

#[test]
fn empty_body_200_is_a_partial_file() {
    let (up, d, _) = with_blob(4096);
    up.set_fault(FaultTarget::Blob(d.clone()), Fault::EmptyBody200);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!(g.code, 18, "{}", g.stderr);
    assert_eq!(g.status, 200);
    assert_eq!(g.header("Content-Length"), Some("4096"));
    assert!(g.body.is_empty());
}

#[test]
fn wrong_bytes_have_the_right_length_and_the_wrong_digest() {
    let (up, d, bytes) = with_blob(10_000);
    up.set_fault(FaultTarget::Blob(d.clone()), Fault::WrongBytes);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.status), (0, 200), "{}", g.stderr);
    assert_eq!(g.body.len(), bytes.len());
    assert_eq!(g.header("Docker-Content-Digest"), Some(d.as_str()));
    assert_ne!(sha256_digest(&g.body), d);
}

#[test]
fn reset_is_a_tcp_reset_before_any_response() {
    let (up, d, _) = with_blob(1000);
    up.set_fault(FaultTarget::Blob(d.clone()), Fault::Reset);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!(g.code, 56, "recv failure expected: {}", g.stderr);
    assert!(g.stderr.contains("reset"), "{}", g.stderr);
    assert_eq!(g.status, 0, "no response line may arrive");
    assert_eq!(
        up.requests("GET", &format!("/v2/{REPO}/blobs/{d}")),
        1,
        "the request was read"
    );

    // Raw socket: the read fails with ECONNRESET rather than returning EOF.
    let mut s = TcpStream::connect(up.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /v2/{REPO}/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn status_faults_send_oci_errors() {
    let (up, d, _) = with_blob(100);
    for code in [502u16, 503, 504, 429] {
        up.set_fault(FaultTarget::Blob(d.clone()), Fault::Status(code));
        let g = curl(&blob_url(&up, &d), &[]);
        assert_eq!((g.code, g.status), (0, code), "{}", g.stderr);
        let body = String::from_utf8_lossy(&g.body).into_owned();
        assert!(body.contains("\"errors\""), "{body}");
        if code == 429 {
            assert_eq!(g.header("Retry-After"), Some("1"));
            assert!(body.contains("TOOMANYREQUESTS"), "{body}");
        }
    }
    // HEAD is affected too.
    let g = curl(&blob_url(&up, &d), &["-I"]);
    assert_eq!(g.status, 429);
}

#[test]
fn stall_before_headers_sends_nothing() {
    let (up, d, bytes) = with_blob(100);
    up.set_fault(
        FaultTarget::Blob(d.clone()),
        Fault::StallBeforeHeaders(Duration::from_secs(5)),
    );
    let g = curl(&blob_url(&up, &d), &["--max-time", "1"]);
    assert_eq!(g.code, 28, "timeout expected: {}", g.stderr);
    assert_eq!(g.status, 0, "no headers may arrive");
    assert!(g.elapsed < Duration::from_secs(3));

    // A patient client gets the response after the stall.
    up.set_fault(
        FaultTarget::Blob(d.clone()),
        Fault::StallBeforeHeaders(Duration::from_millis(600)),
    );
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.body.as_slice()), (0, bytes.as_slice()), "{}", g.stderr);
    assert!(g.elapsed >= Duration::from_millis(600), "{:?}", g.elapsed);
}

#[test]
fn stall_mid_body_sends_headers_and_a_prefix_then_silence() {
    let (up, d, bytes) = with_blob(20_000);
    let fault = Fault::StallMidBody {
        after: 500,
        stall: Duration::from_secs(5),
    };
    up.set_fault(FaultTarget::Blob(d.clone()), fault);
    let g = curl(&blob_url(&up, &d), &["--max-time", "1"]);
    assert_eq!(g.code, 28, "timeout expected: {}", g.stderr);
    assert_eq!(g.status, 200);
    assert_eq!(g.body, &bytes[..500]);

    let fault = Fault::StallMidBody {
        after: 500,
        stall: Duration::from_millis(600),
    };
    up.set_fault(FaultTarget::Blob(d.clone()), fault);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.body.as_slice()), (0, bytes.as_slice()), "{}", g.stderr);
    assert!(g.elapsed >= Duration::from_millis(600), "{:?}", g.elapsed);
}

#[test]
fn slow_throttles_the_body() {
    let (up, d, bytes) = with_blob(3000);
    up.set_fault(FaultTarget::Blob(d.clone()), Fault::Slow { bytes_per_sec: 2000 });
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.body.as_slice()), (0, bytes.as_slice()), "{}", g.stderr);
    assert!(g.elapsed >= Duration::from_millis(1500), "{:?}", g.elapsed);
    assert!(g.elapsed < Duration::from_secs(5), "{:?}", g.elapsed);
}

#[test]
fn once_applies_once_and_head_does_not_consume_a_body_fault() {
    let (up, d, bytes) = with_blob(1000);
    up.set_fault(
        FaultTarget::Blob(d.clone()),
        Fault::Once(Box::new(Fault::Status(503))),
    );
    assert_eq!(curl(&blob_url(&up, &d), &[]).status, 503);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.status, g.body.as_slice()), (200, bytes.as_slice()));

    up.set_fault(
        FaultTarget::Blob(d.clone()),
        Fault::Once(Box::new(Fault::Truncate { after: 10 })),
    );
    assert_eq!(curl(&blob_url(&up, &d), &["-I"]).code, 0);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.body.len()), (18, 10), "{}", g.stderr);
    assert_eq!(curl(&blob_url(&up, &d), &[]).code, 0);
}

#[test]
fn targets_select_requests() {
    let up = FaultUpstream::start();
    let a = up.put_blob(REPO, b"aaaa".to_vec());
    let b = up.put_blob(REPO, b"bbbb".to_vec());
    let md = up.put_manifest(REPO, Some("latest"), OCI_MANIFEST, b"{}".to_vec());

    up.set_fault(FaultTarget::Blob(a.clone()), Fault::Status(502));
    assert_eq!(curl(&blob_url(&up, &a), &[]).status, 502);
    assert_eq!(curl(&blob_url(&up, &b), &[]).status, 200);
    assert_eq!(curl(&manifest_url(&up, "latest"), &[]).status, 200);
    up.clear_faults();

    // A manifest target by digest also matches a pull by a tag that resolves to it.
    up.set_fault(FaultTarget::Manifest(md.clone()), Fault::Status(504));
    assert_eq!(curl(&manifest_url(&up, "latest"), &[]).status, 504);
    assert_eq!(curl(&manifest_url(&up, &md), &[]).status, 504);
    assert_eq!(curl(&blob_url(&up, &a), &[]).status, 200);
    up.clear_faults();
    up.set_fault(FaultTarget::Manifest("latest".into()), Fault::Status(504));
    assert_eq!(curl(&manifest_url(&up, "latest"), &[]).status, 504);
    assert_eq!(curl(&manifest_url(&up, &md), &[]).status, 200);
    up.clear_faults();

    up.set_fault(FaultTarget::Path("/v2/".into()), Fault::Status(503));
    assert_eq!(curl(&format!("{}/v2/", up.url()), &[]).status, 503);
    assert_eq!(curl(&blob_url(&up, &a), &[]).status, 200);
    // Setting a fault for the same target replaces it.
    up.set_fault(FaultTarget::Path("/v2/".into()), Fault::Status(429));
    assert_eq!(curl(&format!("{}/v2/", up.url()), &[]).status, 429);
    up.clear_faults();

    up.set_fault(FaultTarget::Any, Fault::Status(503));
    assert_eq!(curl(&format!("{}/v2/", up.url()), &[]).status, 503);
    assert_eq!(curl(&blob_url(&up, &b), &[]).status, 503);
    up.clear_faults();
    assert_eq!(curl(&blob_url(&up, &b), &[]).status, 200);
}

#[test]
fn counts_requests_per_method_and_path() {
    let (up, d, _) = with_blob(100);
    let path = format!("/v2/{REPO}/blobs/{d}");
    assert_eq!(up.total_requests(), 0);
    curl(&blob_url(&up, &d), &[]);
    curl(&blob_url(&up, &d), &[]);
    curl(&blob_url(&up, &d), &["-I"]);
    curl(&format!("{}?ns=docker.io", blob_url(&up, &d)), &[]);
    curl(&format!("{}/v2/", up.url()), &[]);
    assert_eq!(
        up.requests("GET", &path),
        3,
        "the query string is not part of the path"
    );
    assert_eq!(up.requests("HEAD", &path), 1);
    assert_eq!(up.requests("GET", "/v2/"), 1);
    assert_eq!(up.requests("GET", "/v2/other"), 0);
    assert_eq!(up.total_requests(), 5);

    // Several requests on one keep-alive connection are each counted.
    let g = curl(&blob_url(&up, &d), &[&blob_url(&up, &d)]);
    assert_eq!(g.code, 0, "{}", g.stderr);
    assert_eq!(up.requests("GET", &path), 5);
}

#[test]
fn set_down_refuses_connections_and_drops_open_ones() {
    let (up, d, bytes) = with_blob(100);
    // An open keep-alive connection, idle between requests.
    let mut idle = TcpStream::connect(up.addr()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(curl(&blob_url(&up, &d), &[]).status, 200);

    up.set_down(true);
    let g = curl(&blob_url(&up, &d), &["--max-time", "3"]);
    assert_eq!(g.code, 7, "could not connect expected: {}", g.stderr);
    let err = TcpStream::connect_timeout(&up.addr(), Duration::from_secs(2)).expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut buf = [0u8; 8];
    let closed = matches!(idle.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "open connections are dropped");

    up.set_down(false);
    let g = curl(&blob_url(&up, &d), &[]);
    assert_eq!((g.code, g.body.as_slice()), (0, bytes.as_slice()), "{}", g.stderr);
}

#[test]
fn moving_a_tag_changes_the_served_digest() {
    let up = FaultUpstream::start();
    let v1 = up.put_manifest(REPO, Some("latest"), OCI_MANIFEST, br#"{"v":1}"#.to_vec());
    let v2 = up.put_manifest(REPO, None, OCI_MANIFEST, br#"{"v":2}"#.to_vec());
    assert_eq!(
        curl(&manifest_url(&up, "latest"), &[]).header("Docker-Content-Digest"),
        Some(v1.as_str())
    );
    up.set_tag(REPO, "latest", &v2);
    let g = curl(&manifest_url(&up, "latest"), &[]);
    assert_eq!(g.header("Docker-Content-Digest"), Some(v2.as_str()));
    assert_eq!(g.body, br#"{"v":2}"#);
    // The old manifest is still there by digest.
    assert_eq!(curl(&manifest_url(&up, &v1), &[]).status, 200);
}

#[test]
fn drop_stops_the_server() {
    let up = FaultUpstream::start();
    let mut open = TcpStream::connect(up.addr()).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(open, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (mut buf, mut got) = ([0u8; 512], Vec::new());
    while !got.ends_with(b"\r\n\r\n{}") {
        let n = open.read(&mut buf).unwrap();
        assert!(n > 0, "served while running");
        got.extend_from_slice(&buf[..n]);
    }
    drop(up);
    // (Not a connect attempt: a parallel test's server may already own the freed port.)
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "open connections are closed"
    );
}

#[tokio::test]
async fn usable_from_async_tests() {
    let (up, d, bytes) = with_blob(100);
    let url = blob_url(&up, &d);
    let g = tokio::task::spawn_blocking(move || curl(&url, &[]))
        .await
        .unwrap();
    assert_eq!(g.body, bytes);
    up.set_down(true);
    up.set_down(false);
    drop(up);
}
