//! Upstreams that misbehave below HTTP: silence, stalls, short bodies; and answers that are
//! well-formed HTTP but wrong. Each case is a tiny loopback server with a canned answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_oci::{Digest, Reference, RepoName, media};
use berth_upstream::{Upstream, UpstreamConfig, UpstreamError};
use futures_util::StreamExt;

/// After the canned bytes: close the connection, or hold it open (silently) until the
/// server is dropped or 20 s have passed.
#[derive(Clone, Copy)]
enum Then {
    Close,
    Hold,
}

/// A loopback server answering every connection with the same bytes. Stops on drop.
struct Canned {
    url: String,
    stop: Arc<AtomicBool>,
}

impl Canned {
    fn start(answer: Vec<u8>, then: Then) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (answer, stopped) = (answer.clone(), stopped.clone());
                        std::thread::spawn(move || serve(conn, &answer, then, &stopped, deadline));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Canned { url, stop }
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut conn: TcpStream, answer: &[u8], then: Then, stop: &AtomicBool, deadline: Instant) {
    // Read the request head (bounded), so the client is not reset while still sending.
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if conn.write_all(answer).is_err() {
        return;
    }
    let _ = conn.flush();
    if let Then::Hold = then {
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn http_answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn upstream(url: &str, read_timeout: u64, request_timeout: u64) -> Upstream {
    Upstream::new(UpstreamConfig {
        name: "faulty".into(),
        url: url.into(),
        username: None,
        password: None,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(read_timeout),
        request_timeout: Duration::from_secs(request_timeout),
        library_prefix: false,
    })
    .unwrap()
}

fn repo() -> RepoName {
    "test/app".parse().unwrap()
}

fn tag() -> Reference {
    "v1".parse().unwrap()
}

fn any_digest() -> Digest {
    Digest::sha256_of(b"blob")
}

fn assert_within(start: Instant, min: f64, max: f64) {
    let took = start.elapsed().as_secs_f64();
    assert!(
        took >= min && took <= max,
        "took {took:.2} s, expected {min}..{max} s"
    );
}

#[tokio::test]
async fn a_silent_upstream_times_out_on_read() {
    let server = Canned::start(Vec::new(), Then::Hold);
    let up = upstream(&server.url, 1, 5);
    let start = Instant::now();
    let e = up.head_manifest(&repo(), &tag()).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Timeout(_)) && e.is_transient(), "{e}");
    assert_within(start, 0.9, 3.0);
}

#[tokio::test]
async fn a_silent_upstream_times_out_overall() {
    let server = Canned::start(Vec::new(), Then::Hold);
    let up = upstream(&server.url, 10, 1);
    let start = Instant::now();
    let e = up.get_manifest(&repo(), &tag(), 1 << 20).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Timeout(_)), "{e}");
    assert_within(start, 0.9, 3.0);
    // get_blob waits for headers no longer than request_timeout either.
    let start = Instant::now();
    let e = up.get_blob(&repo(), &any_digest()).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Timeout(_)), "{e}");
    assert_within(start, 0.9, 3.0);
}

#[tokio::test]
async fn a_closed_port_is_a_transient_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = upstream(&format!("http://127.0.0.1:{port}"), 1, 2);
    let e = up.head_manifest(&repo(), &tag()).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Connect(_)) && e.is_transient(), "{e}");
}

/// Collects a blob stream: the bytes that arrived and the error it ended with, if any.
async fn drain(up: &Upstream) -> (Option<u64>, usize, Option<UpstreamError>) {
    let blob = up.get_blob(&repo(), &any_digest()).await.expect("headers arrive");
    let mut body = blob.body;
    let mut got = 0;
    for _ in 0..10_000 {
        match body.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => {
                assert!(body.next().await.is_none(), "the stream ends after its error");
                return (blob.size, got, Some(e));
            }
            None => return (blob.size, got, None),
        }
    }
    panic!("the stream did not end");
}

#[tokio::test]
async fn a_body_that_stalls_ends_in_an_error() {
    let announced = 1 << 20;
    let answer = http_answer(
        "200 OK",
        &[
            ("Content-Length", &announced.to_string()),
            ("Content-Type", "application/octet-stream"),
        ],
        &[7u8; 64 * 1024],
    );
    let server = Canned::start(answer, Then::Hold);
    let up = upstream(&server.url, 1, 5);
    let start = Instant::now();
    let (size, got, err) = drain(&up).await;
    assert_eq!(size, Some(announced));
    assert_eq!(got, 64 * 1024);
    let e = err.expect("a stalled body must not end cleanly");
    assert!(
        matches!(e, UpstreamError::Timeout(_) | UpstreamError::Body(_)) && e.is_transient(),
        "{e}"
    );
    assert_within(start, 0.9, 3.0);
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_ends_in_an_error() {
    let answer = http_answer("200 OK", &[("Content-Length", "1000")], &[1u8; 500]);
    let server = Canned::start(answer, Then::Close);
    let up = upstream(&server.url, 5, 5);
    let (size, got, err) = drain(&up).await;
    assert_eq!(size, Some(1000));
    assert!(got <= 500);
    let e = err.expect("a short body must not end cleanly");
    assert!(matches!(e, UpstreamError::Body(_)), "{e}");
}

#[tokio::test]
async fn a_body_without_length_ends_cleanly_when_the_server_closes() {
    // HTTP/1.0-style: no Content-Length, the end of the connection ends the body.
    let answer = http_answer("200 OK", &[("Connection", "close")], &[3u8; 1000]);
    let server = Canned::start(answer, Then::Close);
    let up = upstream(&server.url, 5, 5);
    let (size, got, err) = drain(&up).await;
    assert_eq!((size, got), (None, 1000));
    assert!(err.is_none(), "{err:?}");
}

async fn manifest_error(answer: Vec<u8>) -> UpstreamError {
    let server = Canned::start(answer, Then::Close);
    let up = upstream(&server.url, 5, 5);
    up.get_manifest(&repo(), &tag(), 1 << 20).await.unwrap_err()
}

#[tokio::test]
async fn a_digest_header_that_disagrees_with_the_bytes_is_invalid() {
    let body = br#"{"schemaVersion":2}"#;
    let other = Digest::sha256_of(b"something else").to_string();
    let answer = http_answer(
        "200 OK",
        &[
            ("Content-Type", media::OCI_MANIFEST),
            ("Docker-Content-Digest", &other),
            ("Content-Length", &body.len().to_string()),
        ],
        body,
    );
    let e = manifest_error(answer).await;
    assert!(matches!(e, UpstreamError::Invalid(_)) && !e.is_transient(), "{e}");
}

#[tokio::test]
async fn bytes_that_do_not_hash_to_the_digest_asked_for_are_invalid() {
    let body = br#"{"schemaVersion":2}"#;
    let answer = http_answer(
        "200 OK",
        &[
            ("Content-Type", media::OCI_MANIFEST),
            ("Content-Length", &body.len().to_string()),
        ],
        body,
    );
    let server = Canned::start(answer, Then::Close);
    let up = upstream(&server.url, 5, 5);
    let asked = Reference::Digest(Digest::sha256_of(b"another manifest"));
    let e = up.get_manifest(&repo(), &asked, 1 << 20).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Invalid(_)), "{e}");
}

#[tokio::test]
async fn a_manifest_that_is_not_a_manifest_type_is_invalid() {
    let body = b"<html>login</html>";
    let answer = http_answer(
        "200 OK",
        &[
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", &body.len().to_string()),
        ],
        body,
    );
    let e = manifest_error(answer).await;
    assert!(matches!(e, UpstreamError::Invalid(_)), "{e}");
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient() {
    let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"backend down"}]}"#;
    let answer = http_answer(
        "503 Service Unavailable",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &body.len().to_string()),
        ],
        body,
    );
    let e = manifest_error(answer).await;
    match &e {
        UpstreamError::Status {
            status: 503,
            code,
            message,
        } => {
            assert_eq!(code.as_deref(), Some("UNAVAILABLE"));
            assert_eq!(message, "backend down");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_transient());

    let answer = http_answer(
        "429 Too Many Requests",
        &[("Retry-After", "7"), ("Content-Length", "0")],
        b"",
    );
    let e = manifest_error(answer).await;
    assert!(
        matches!(e, UpstreamError::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(7)),
        "{e:?}"
    );
    assert!(e.is_transient());

    let answer = http_answer("400 Bad Request", &[("Content-Length", "0")], b"");
    let e = manifest_error(answer).await;
    assert!(
        matches!(e, UpstreamError::Status { status: 400, .. }) && !e.is_transient(),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_401_without_a_challenge_is_an_auth_error() {
    let answer = http_answer("401 Unauthorized", &[("Content-Length", "0")], b"");
    let e = manifest_error(answer).await;
    assert!(matches!(e, UpstreamError::Auth(_)), "{e:?}");
}

#[tokio::test]
async fn token_server_failures_are_auth_errors_or_transient_never_not_found() {
    for (token_status, transient) in [("404 Not Found", false), ("503 Service Unavailable", true)] {
        let token_server = Canned::start(
            http_answer(token_status, &[("Content-Length", "0")], b""),
            Then::Close,
        );
        let challenge = format!(
            "Bearer realm=\"{}/token\",service=\"s\",scope=\"repository:test/app:pull\"",
            token_server.url
        );
        let registry = Canned::start(
            http_answer(
                "401 Unauthorized",
                &[("WWW-Authenticate", &challenge), ("Content-Length", "0")],
                b"",
            ),
            Then::Close,
        );
        let e = upstream(&registry.url, 5, 5)
            .head_manifest(&repo(), &tag())
            .await
            .unwrap_err();
        assert!(!e.is_not_found(), "{e:?}");
        assert_eq!(e.is_transient(), transient, "{e:?}");
        if !transient {
            assert!(matches!(e, UpstreamError::Auth(_)), "{e:?}");
        }
    }
}
