//! Request-level limits against the real binary: the per-client request rate, uploads in
//! flight per client, `max_blob_bytes` (declared, chunked and endless bodies), stalled
//! bodies, and the cap on concurrent upstream fills.
//!
//! Slow and endless bodies are written by hand on a `TcpStream`, from a thread of their
//! own while the test reads the answer, so a server that answers early and closes is seen
//! answering rather than as a failed write.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::fault::{Fault, FaultTarget, FaultUpstream};
use support::*;

const MIB: usize = 1 << 20;

fn server(limits: &str) -> (TestServer, String) {
    let s = TestServer::start(BIN, &format!("[limits]\n{limits}\n"));
    let b = s.url("");
    (s, b)
}

/// A response read off a raw connection.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Opens a connection and sends a request head (`Host` and `Connection: close` added).
fn send_head(s: &TestServer, method: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut t = TcpStream::connect(&s.addr).expect("connect");
    t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    t.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        s.addr
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    t.write_all(head.as_bytes()).expect("send head");
    t
}

/// Reads one response (body by `Content-Length`, or to the end of the connection).
fn read_response(t: &TcpStream) -> Result<Raw, String> {
    let mut r = BufReader::new(t);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("status line: {e}"))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| format!("header: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        }
        None => {
            let _ = r.read_to_end(&mut body);
        }
    }
    Ok(Raw {
        status,
        headers,
        body,
    })
}

/// Starts an upload session; returns its `Location` path.
fn start_session(b: &str, repo: &str) -> String {
    let r = req("POST", &format!("{b}/v2/{repo}/blobs/uploads/"), &[], None);
    assert_eq!(r.status, 202, "{}", r.text());
    r.header("location").expect("location").to_string()
}

/// Bytes held under the data directory, the metadata database excepted.
fn stored_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if !p.file_name().unwrap().to_string_lossy().starts_with("berth.db") {
                total += m.len();
            }
        }
    }
    total
}

#[test]
fn request_rate_per_client() {
    let (_s, b) = server("requests_per_second = 5\nrequest_burst = 5");
    let start = Instant::now();
    let (mut ok, mut refused) = (0, Vec::new());
    for _ in 0..20 {
        let r = get(&format!("{b}/v2/"));
        match r.status {
            200 => ok += 1,
            429 => refused.push(r),
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    let took = start.elapsed().as_secs_f64();
    // The burst, plus what refilled at 5/s while the loop ran.
    let most = 5 + (took * 5.0).ceil() as usize;
    assert!(
        ok >= 5 && ok <= most,
        "{ok} of 20 answered in {took:.2}s, expected 5 to {most}"
    );
    let r = refused.first().expect("some requests were refused");
    assert_eq!(r.code(), "TOOMANYREQUESTS", "{}", r.text());
    let message = r.json()["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("5 requests per second"), "{message}");
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(wait >= 1, "Retry-After {wait}");

    // Health, readiness and metrics are never limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..10 {
            assert_eq!(get(&format!("{b}{path}")).status, 200, "{path}");
        }
    }
    std::thread::sleep(Duration::from_secs(wait));
    let r = get(&format!("{b}/v2/"));
    assert_eq!(r.status, 200, "after Retry-After: {}", r.text());
    // The refusals were logged and counted like any answer.
    let metrics = get(&format!("{b}/metrics")).text();
    assert!(
        metrics.contains("berth_http_requests_total{route=\"base\",method=\"GET\",status=\"429\"}"),
        "{metrics}"
    );
}

/// Behind a trusted proxy each forwarded client has its own bucket; a client that is not a
/// trusted proxy cannot pick its bucket by writing `X-Forwarded-For`.
#[test]
fn clients_behind_a_trusted_proxy_are_limited_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("htpasswd");
    std::fs::write(&users, "").unwrap();
    let proxied = |trusted: &str| {
        TestServer::start(
            BIN,
            &format!(
                "[limits]\nrequests_per_second = 1\nrequest_burst = 3\n[auth]\nhtpasswd = \"{}\"\ntrusted_proxies = [\"{trusted}\"]\n[[access]]\nrepository = \"**\"\nanonymous = [\"pull\"]\n",
                users.display()
            ),
        )
    };
    let tags = |s: &TestServer, xff: &str| {
        req("GET", &s.url("/v2/_catalog"), &[("x-forwarded-for", xff)], None).status
    };
    let s = proxied("127.0.0.0/8");
    let first: Vec<u16> = (0..5).map(|_| tags(&s, "198.51.100.1, 127.0.0.2")).collect();
    assert_eq!(first.iter().filter(|c| **c == 200).count(), 3, "{first:?}");
    assert_eq!(first.last(), Some(&429), "{first:?}");
    // Another client through the same proxy still has its whole burst.
    assert_eq!(tags(&s, "198.51.100.2"), 200);
    drop(s);
    let s = proxied("10.0.0.0/8");
    let spoofed: Vec<u16> = (0..5).map(|i| tags(&s, &format!("198.51.100.{i}"))).collect();
    assert_eq!(
        spoofed.last(),
        Some(&429),
        "X-Forwarded-For from an untrusted peer: {spoofed:?}"
    );
}

/// A PATCH that announces 100 bytes and sends 10: in flight until the rest comes.
/// Returns once the server holds it (it has not answered 100 ms after the head; a 429
/// because a probe of the test held the slot at that moment is sent again).
fn slow_patch(s: &TestServer, location: &str) -> TcpStream {
    for _ in 0..50 {
        let mut t = send_head(
            s,
            "PATCH",
            location,
            &[
                ("content-type", "application/octet-stream"),
                ("content-length", "100"),
            ],
        );
        t.write_all(&[7u8; 10]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        t.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        let answered = !matches!(t.peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        t.set_nonblocking(false).unwrap();
        if !answered {
            return t;
        }
        let r = read_response(&t).unwrap();
        assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    }
    panic!("the slow PATCH was never let in");
}

/// Monolithic uploads until one is refused with 429 (the slow ones are in flight once
/// the server has read their heads); panics after 10 s.
fn until_refused(b: &str, seed: u8) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0u8.. {
        let data = bytes(seed.wrapping_add(i), 1000);
        let r = req(
            "POST",
            &format!("{b}/v2/lim/up/blobs/uploads/?digest={}", sha256(&data)),
            &[],
            Some(&data),
        );
        if r.status == 429 {
            return r;
        }
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    unreachable!()
}

/// Monolithic uploads until one is accepted; panics after 10 s.
fn until_accepted(b: &str, seed: u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let data = bytes(seed, 1000);
        let r = req(
            "POST",
            &format!("{b}/v2/lim/up/blobs/uploads/?digest={}", sha256(&data)),
            &[],
            Some(&data),
        );
        if r.status == 201 {
            return;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(Instant::now() < deadline, "no slot came free");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn uploads_in_flight_per_client() {
    let (s, b) = server("max_uploads_per_client = 2");
    let (la, lb, lc) = (
        start_session(&b, "lim/up"),
        start_session(&b, "lim/up"),
        start_session(&b, "lim/up"),
    );
    let mut a = slow_patch(&s, &la);
    let bconn = slow_patch(&s, &lb);
    let r = until_refused(&b, 1);
    assert_eq!(r.code(), "TOOMANYREQUESTS", "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("max_uploads_per_client"), "{}", r.text());
    // Starting a session or reading one carries no body: not counted.
    assert_eq!(req("GET", &format!("{b}{la}"), &[], None).status, 204);

    // The first finishes: a new upload is accepted.
    a.write_all(&[7u8; 90]).unwrap();
    let done = read_response(&a).unwrap();
    assert_eq!(done.status, 202, "{}", String::from_utf8_lossy(&done.body));
    assert_eq!(done.header("range"), Some("0-99"));
    until_accepted(&b, 50);

    // Two in flight again (b and c)...
    let c = slow_patch(&s, &lc);
    until_refused(&b, 100);
    // ...then b's client goes away mid-upload: its slot is released.
    bconn.shutdown(Shutdown::Both).unwrap();
    drop(bconn);
    until_accepted(&b, 150);
    drop(c);
    // The disconnected upload kept nothing of the cut request and can go on.
    let st = req("GET", &format!("{b}{lb}"), &[], None);
    assert_eq!(st.status, 204);
    assert_eq!(st.header("range"), Some("0-0"));
}

/// Sends `body` (already framed) from a thread while reading the answer; returns the
/// answer and how many body bytes were written before the writer stopped (and whether
/// it stopped on an error).
fn send_and_read(
    t: TcpStream,
    body: impl FnOnce(&mut TcpStream) -> (u64, bool) + Send + 'static,
) -> (Result<Raw, String>, u64, bool) {
    let mut w = t.try_clone().unwrap();
    let writer = std::thread::spawn(move || body(&mut w));
    let resp = read_response(&t);
    // The answer is in: stop the writer if it is still going.
    let _ = t.shutdown(Shutdown::Both);
    let (sent, failed) = writer.join().unwrap();
    (resp, sent, failed)
}

/// Writes `total` bytes in 64 KiB pieces (chunked-encoded when `chunked`), for at most
/// `within`; returns (bytes written, whether a write failed).
fn pour(t: &mut TcpStream, total: u64, chunked: bool, within: Duration) -> (u64, bool) {
    let piece = vec![0x5au8; 64 << 10];
    let deadline = Instant::now() + within;
    let mut sent = 0u64;
    while sent < total && Instant::now() < deadline {
        let n = (total - sent).min(piece.len() as u64) as usize;
        let res = if chunked {
            t.write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|_| t.write_all(&piece[..n]))
                .and_then(|_| t.write_all(b"\r\n"))
        } else {
            t.write_all(&piece[..n])
        };
        if res.is_err() {
            return (sent, true);
        }
        sent += n as u64;
    }
    if chunked && t.write_all(b"0\r\n\r\n").is_err() {
        return (sent, true);
    }
    (sent, false)
}

#[test]
fn blob_size_limit() {
    let (s, b) = server(&format!("max_blob_bytes = {MIB}"));
    let data = bytes(9, 2 * MIB);
    let digest = sha256(&data);

    // Monolithic, declared too large: refused before any byte is read.
    let t = send_head(
        &s,
        "POST",
        &format!("/v2/lim/big/blobs/uploads/?digest={digest}"),
        &[("content-length", &data.len().to_string())],
    );
    let r = read_response(&t).unwrap();
    assert_eq!((r.status, r.code().as_str()), (413, "SIZE_INVALID"));
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_blob_bytes"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["errors"][0]["detail"]["limit"], MIB);

    // Monolithic, chunked (no length given): cut at the limit while it streams.
    let t = send_head(
        &s,
        "POST",
        &format!("/v2/lim/big/blobs/uploads/?digest={digest}"),
        &[("transfer-encoding", "chunked")],
    );
    let (r, _, _) = send_and_read(t, |w| pour(w, 2 * MIB as u64, true, Duration::from_secs(10)));
    let r = r.unwrap();
    assert_eq!((r.status, r.code().as_str()), (413, "SIZE_INVALID"));
    assert_eq!(get(&format!("{b}/v2/lim/big/blobs/{digest}")).status, 404);

    // Chunked PATCHes: the session's total counts. 600 KiB is accepted, 600 more is not,
    // and the session is gone with its bytes.
    let loc = start_session(&b, "lim/big");
    let first = &data[..600 << 10];
    let r = req(
        "PATCH",
        &format!("{b}{loc}"),
        &[("content-type", "application/octet-stream")],
        Some(first),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let t = send_head(
        &s,
        "PATCH",
        &loc,
        &[
            ("content-type", "application/octet-stream"),
            ("content-length", &(600 << 10).to_string()),
        ],
    );
    let (r, _, _) = send_and_read(t, |w| pour(w, 600 << 10, false, Duration::from_secs(10)));
    let r = r.unwrap();
    assert_eq!((r.status, r.code().as_str()), (413, "SIZE_INVALID"));
    let st = req("GET", &format!("{b}{loc}"), &[], None);
    assert_eq!((st.status, st.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    // A Content-Range past the limit is refused up front.
    let loc = start_session(&b, "lim/big");
    let t = send_head(
        &s,
        "PATCH",
        &loc,
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", &format!("0-{MIB}")),
            ("content-length", "10"),
        ],
    );
    let r = read_response(&t).unwrap();
    assert_eq!((r.status, r.code().as_str()), (413, "SIZE_INVALID"));

    // An endless chunked body is cut off at the limit: the data directory does not grow
    // past it, and the writer is stopped long before it is done.
    let before = stored_bytes(&s.blob_root());
    let loc = start_session(&b, "lim/big");
    let t = send_head(
        &s,
        "PATCH",
        &loc,
        &[
            ("content-type", "application/octet-stream"),
            ("transfer-encoding", "chunked"),
        ],
    );
    let started = Instant::now();
    let (r, sent, _) = send_and_read(t, |w| pour(w, 64 * MIB as u64, true, Duration::from_secs(10)));
    let r = r.unwrap();
    assert_eq!((r.status, r.code().as_str()), (413, "SIZE_INVALID"));
    assert!(
        sent < 64 * MIB as u64,
        "the body was read to its end ({sent} bytes)"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let grew = stored_bytes(&s.blob_root()).saturating_sub(before);
    assert!(grew <= MIB as u64, "the data directory grew by {grew} bytes");

    // The server goes on serving, and blobs up to the limit are accepted.
    assert_eq!(get(&format!("{b}/v2/")).status, 200);
    let ok = bytes(3, MIB);
    let d = push_blob(&b, "lim/big", &ok);
    assert_eq!(get(&format!("{b}/v2/lim/big/blobs/{d}")).body, ok);
}

#[test]
fn stalled_body_is_cut_off() {
    let (s, b) = server("body_idle_timeout = \"1s\"");
    let loc = start_session(&b, "lim/idle");
    let data = bytes(4, 100);
    let r = req(
        "PATCH",
        &format!("{b}{loc}"),
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", "0-4"),
        ],
        Some(&data[..5]),
    );
    assert_eq!(r.status, 202, "{}", r.text());

    // 10 of 50 announced bytes, then nothing.
    let mut t = send_head(
        &s,
        "PATCH",
        &loc,
        &[
            ("content-type", "application/octet-stream"),
            ("content-length", "50"),
        ],
    );
    let started = Instant::now();
    t.write_all(&data[5..15]).unwrap();
    let r = read_response(&t).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "BLOB_UPLOAD_INVALID");
    let message = r.json()["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(message.contains("body_idle_timeout"), "{message}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut off after {took:?}"
    );
    assert_eq!(r.header("location"), Some(loc.as_str()));

    // The session holds what earlier requests committed and resumes from there.
    let st = req("GET", &format!("{b}{loc}"), &[], None);
    assert_eq!((st.status, st.header("range")), (204, Some("0-4")));
    let r = req(
        "PATCH",
        &format!("{b}{loc}"),
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", "5-99"),
        ],
        Some(&data[5..]),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let d = sha256(&data);
    let r = req("PUT", &format!("{b}{loc}?digest={d}"), &[], None);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get(&format!("{b}/v2/lim/idle/blobs/{d}")).body, data);
    // A quiet but well-behaved client (slower than nothing, quicker than the timeout).
    let data2 = bytes(5, 3000);
    let d2 = sha256(&data2);
    let t = send_head(
        &s,
        "POST",
        &format!("/v2/lim/idle/blobs/uploads/?digest={d2}"),
        &[("content-length", "3000")],
    );
    let (r, _, _) = send_and_read(t, move |w| {
        for part in data2.chunks(1000) {
            std::thread::sleep(Duration::from_millis(400));
            if w.write_all(part).is_err() {
                return (0, true);
            }
        }
        (3000, false)
    });
    assert_eq!(r.unwrap().status, 201);
}

#[test]
fn concurrent_fills_are_capped() {
    let up = FaultUpstream::start();
    let a = bytes(11, 200_000);
    let bb = bytes(12, 1000);
    let (da, db) = (
        up.put_blob("lib/app", a.clone()),
        up.put_blob("lib/app", bb.clone()),
    );
    up.set_fault(
        FaultTarget::Blob(da.clone()),
        Fault::StallBeforeHeaders(Duration::from_secs(4)),
    );
    let s = TestServer::start(
        BIN,
        &format!(
            "[limits]\nmax_concurrent_fills = 1\nfill_queue_timeout = \"1s\"\n[[upstream]]\nname = \"up.test\"\nurl = \"{}\"\nconnect_timeout = \"1s\"\nread_timeout = \"10s\"\n",
            up.url()
        ),
    );
    let b = s.url("");
    let url = |d: &str| format!("{b}/v2/up.test/lib/app/blobs/{d}");

    let first = std::thread::spawn({
        let u = url(&da);
        move || get(&u)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.requests("GET", &format!("/v2/lib/app/blobs/{da}")) == 0 {
        assert!(
            Instant::now() < deadline,
            "the fill of A never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second reader of A joins the fill in progress: it needs no turn.
    let second = std::thread::spawn({
        let u = url(&da);
        move || get(&u)
    });
    // B needs a fill of its own and there is no turn: refused after the queue timeout.
    let started = Instant::now();
    let r = get(&url(&db));
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "TOOMANYREQUESTS"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("max_concurrent_fills"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "refused after {took:?}"
    );
    assert_eq!(up.requests("GET", &format!("/v2/lib/app/blobs/{db}")), 0);

    for h in [first, second] {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body, a);
    }
    assert_eq!(up.requests("GET", &format!("/v2/lib/app/blobs/{da}")), 1);
    // With the turn free again, B fills.
    let r = get(&url(&db));
    assert_eq!((r.status, r.body.as_slice()), (200, bb.as_slice()));
    let metrics = get(&format!("{b}/metrics")).text();
    assert!(
        metrics.contains("berth_cache_fills_total{upstream=\"up.test\",result=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_cache_fills_waiting{upstream=\"up.test\"} 0"),
        "{metrics}"
    );
}

#[test]
fn skopeo_push_with_default_limits() {
    use berth_testkit::clients::{Skopeo, docker_ref};
    use berth_testkit::images::{Flavor, Image, Platform};
    let s = TestServer::start(BIN, "");
    let tmp = tempfile::tempdir().unwrap();
    let img = Image::build(Flavor::Oci, Platform::linux_amd64(), "limits", 2);
    img.write_oci_layout(&tmp.path().join("src"), "src");
    let skopeo = Skopeo::new();
    skopeo.copy(
        &format!("oci:{}:src", tmp.path().join("src").display()),
        &docker_ref(&s.addr, "lim/skopeo", "v1"),
        &[],
    );
    let r = get(&s.url("/v2/lim/skopeo/tags/list"));
    assert_eq!(r.json()["tags"], serde_json::json!(["v1"]));
}
