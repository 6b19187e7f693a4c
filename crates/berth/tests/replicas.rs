//! Three berth replicas on loopback sharing one PostgreSQL database (the testkit's private
//! cluster) and one S3 bucket (s3s-fs inside this test process); the test spreads the
//! requests over them itself. Pushes through one replica pull through the others; a
//! chunked upload hops replicas, resuming the hash state saved between chunks, and a
//! second writer on another replica is refused; 16 cold pulls across replicas fetch from the upstream
//! once; SIGKILL mid-fill and mid-upload loses nothing acknowledged; GC on one replica
//! fails no pull on the others, and a second lifecycle run elsewhere gets 409.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use berth_testkit::clients::{Skopeo, docker_ref};
use berth_testkit::fault::{Fault, FaultTarget, FaultUpstream};
use berth_testkit::images::{Flavor, ImageSet, OciLayout, assert_layout_holds_set};
use berth_testkit::postgres::PgCluster;
use berth_testkit::s3::S3Server;
use support::*;

const UPSTREAM_REPO: &str = "lib/app";

/// Three replicas over one database and one bucket; `extra` is further TOML tables.
struct Replicas {
    servers: Vec<TestServer>,
    db: String,
    _s3: S3Server,
}

impl Replicas {
    fn start(extra: &str) -> Replicas {
        let s3 = S3Server::s3s_fs();
        let cluster = PgCluster::shared();
        let url = cluster.create_database();
        let db = url.rsplit('/').next().unwrap().to_string();
        let servers = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let config = format!(
                    "metadata = \"{url}\"\n{}{extra}",
                    s3.berth_config(dir.path(), "replicas")
                );
                TestServer::start_in(dir, BIN, "", &config)
            })
            .collect();
        Replicas { servers, db, _s3: s3 }
    }

    fn base(&self, i: usize) -> String {
        self.servers[i % 3].url("")
    }
}

fn upstream_toml(up: &FaultUpstream, read_timeout: &str) -> String {
    format!(
        "[[upstream]]\nname = \"up.test\"\nurl = \"{}\"\nmanifest_ttl = \"5m\"\nconnect_timeout = \"1s\"\nread_timeout = \"{read_timeout}\"\n",
        up.url()
    )
}

/// The path of an upload session from a POST's `Location` (absolute URL or path).
fn session_path(location: &str) -> String {
    match location.find("/v2/") {
        Some(i) => location[i..].to_string(),
        None => panic!("Location without /v2/: {location}"),
    }
}

fn with_query(path: &str, q: &str) -> String {
    if path.contains('?') {
        format!("{path}&{q}")
    } else {
        format!("{path}?{q}")
    }
}

fn start_session(base: &str, repo: &str) -> String {
    let r = req("POST", &format!("{base}/v2/{repo}/blobs/uploads/"), &[], None);
    assert_eq!(r.status, 202, "POST upload: {}", r.text());
    session_path(r.header("location").expect("Location"))
}

/// PATCH one chunk at `start`; returns the session path the response names.
fn patch(base: &str, session: &str, start: usize, chunk: &[u8]) -> String {
    let range = format!("{start}-{}", start + chunk.len() - 1);
    let r = req(
        "PATCH",
        &format!("{base}{session}"),
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", &range),
        ],
        Some(chunk),
    );
    assert_eq!(r.status, 202, "PATCH {range} on {base}: {}", r.text());
    assert_eq!(
        r.header("range"),
        Some(format!("0-{}", start + chunk.len() - 1).as_str()),
        "Range after PATCH on {base}"
    );
    session_path(r.header("location").expect("Location"))
}

/// The bytes a session holds, as `GET` on the session reports (`Range: 0-N`).
fn session_size(base: &str, session: &str) -> usize {
    let r = get(&format!("{base}{session}"));
    assert_eq!(r.status, 204, "upload status on {base}: {}", r.text());
    let range = r.header("range").expect("Range");
    range.strip_prefix("0-").unwrap().parse::<usize>().unwrap() + 1
}

fn finish(base: &str, session: &str, digest: &str, last: &[u8]) {
    let r = req(
        "PUT",
        &format!("{base}{}", with_query(session, &format!("digest={digest}"))),
        &[("content-type", "application/octet-stream")],
        Some(last),
    );
    assert_eq!(r.status, 201, "PUT ?digest= on {base}: {}", r.text());
}

fn assert_blob(base: &str, repo: &str, digest: &str, want: &[u8]) {
    let r = get(&format!("{base}/v2/{repo}/blobs/{digest}"));
    assert_eq!(r.status, 200, "GET blob {digest} on {base}: {}", r.text());
    assert_eq!(sha256(&r.body), digest, "blob {digest} on {base}");
    assert!(r.body == want, "blob {digest} on {base}: bytes differ");
}

/// A pull by hand: the manifest by tag, then every blob it names, each re-hashed.
fn pull_image(base: &str, repo: &str, tag: &str, manifest_digest: &str) -> Result<(), String> {
    let r = try_req(
        "GET",
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        &[("accept", OCI_MANIFEST)],
        None,
        None,
    )?;
    if r.status != 200 || sha256(&r.body) != manifest_digest {
        return Err(format!(
            "manifest {repo}:{tag} on {base}: {} {}",
            r.status,
            r.text()
        ));
    }
    let m = r.json();
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    for l in m["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in blobs {
        let b = try_req("GET", &format!("{base}/v2/{repo}/blobs/{d}"), &[], None, None)?;
        if b.status != 200 || sha256(&b.body) != d {
            return Err(format!("blob {d} of {repo}:{tag} on {base}: {}", b.status));
        }
    }
    Ok(())
}

#[test]
fn skopeo_push_through_one_replica_pulls_through_the_others() {
    let started = Instant::now();
    let rs = Replicas::start("");
    let skopeo = Skopeo::new();
    let tmp = tempfile::tempdir().unwrap();
    let set = ImageSet::multi_platform(Flavor::Oci, "replicas");
    set.write_oci_layout(&tmp.path().join("src"), "v1");
    let oci = |dir: &str, tag: &str| format!("oci:{}:{tag}", tmp.path().join(dir).display());
    skopeo.copy_all(
        &oci("src", "v1"),
        &docker_ref(&rs.servers[0].addr, "team/multi", "v1"),
    );
    for (i, out) in [(1, "out2"), (2, "out3")] {
        skopeo.copy_all(
            &docker_ref(&rs.servers[i].addr, "team/multi", "v1"),
            &oci(out, "out"),
        );
        assert_layout_holds_set(&OciLayout::open(&tmp.path().join(out)), "out", &set);
    }
    // The tag answers the same on every replica, byte for byte.
    let answers: Vec<(u16, Option<String>, Vec<u8>)> = (0..3)
        .map(|i| {
            let r = req(
                "GET",
                &format!("{}/v2/team/multi/manifests/v1", rs.base(i)),
                &[("accept", OCI_INDEX)],
                None,
            );
            (
                r.status,
                r.header("docker-content-digest").map(str::to_string),
                r.body,
            )
        })
        .collect();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.0, 200, "replica {}", i + 1);
        assert_eq!(a.1.as_deref(), Some(set.index_digest()), "replica {}", i + 1);
        assert_eq!(sha256(&a.2), set.index_digest(), "replica {}", i + 1);
    }
    eprintln!("push/pull across replicas: {:?}", started.elapsed());
}

#[test]
fn a_chunked_upload_hops_replicas() {
    let started = Instant::now();
    let rs = Replicas::start("");
    let repo = "team/chunked";
    // Chunks of a few MiB, so parts span S3 multipart pieces; every hop after the first
    // lands on a replica without the session's hash state, or with a stale one.
    let data = bytes(42, (11 << 20) + 12345);
    let digest = sha256(&data);
    let cuts = [0, 3 << 20, 6 << 20, (9 << 20) + 7, data.len()];
    let chunk = |i: usize| &data[cuts[i]..cuts[i + 1]];
    let mut session = start_session(&rs.base(0), repo);
    session = patch(&rs.base(1), &session, cuts[0], chunk(0));
    session = patch(&rs.base(0), &session, cuts[1], chunk(1));
    // Replica 2 saved the state after chunk 0; the session has moved on since.
    session = patch(&rs.base(1), &session, cuts[2], chunk(2));
    assert_eq!(session_size(&rs.base(2), &session), cuts[3]);
    finish(&rs.base(2), &session, &digest, chunk(3));
    for i in 0..3 {
        assert_blob(&rs.base(i), repo, &digest, &data);
    }

    // A wrong digest is refused whichever replica finishes, and the session is gone on all.
    let mut s = start_session(&rs.base(2), repo);
    s = patch(&rs.base(0), &s, 0, &data[..1000]);
    let wrong = sha256(b"something else");
    let r = req(
        "PUT",
        &format!("{}{}", rs.base(1), with_query(&s, &format!("digest={wrong}"))),
        &[],
        Some(&data[1000..2000]),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "DIGEST_INVALID");
    for i in 0..3 {
        assert_eq!(
            get(&format!("{}{s}", rs.base(i))).status,
            404,
            "replica {}",
            i + 1
        );
    }
    eprintln!("chunked upload across replicas: {:?}", started.elapsed());
}

/// The value of `berth_upload_appends_total{hash="<hash>"}` summed over the replicas.
fn upload_appends(rs: &Replicas, hash: &str) -> u64 {
    let line_start = format!("berth_upload_appends_total{{hash=\"{hash}\"}} ");
    (0..3)
        .map(|i| {
            let r = get(&format!("{}/metrics", rs.base(i)));
            assert_eq!(r.status, 200, "metrics of replica {}: {}", i + 1, r.text());
            r.text()
                .lines()
                .find_map(|l| l.strip_prefix(&line_start))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        })
        .sum()
}

/// Issue 9: the hash state is saved between chunks, so a chunked upload sent round-robin
/// over the replicas never reads its bytes back to re-hash them (which made such uploads
/// read O(n^2) bytes).
#[test]
fn round_robin_chunks_resume_the_saved_hash_state() {
    let rs = Replicas::start("");
    let repo = "team/round-robin";
    const CHUNKS: usize = 12;
    let data = bytes(43, CHUNKS * (256 << 10) + 777);
    let digest = sha256(&data);
    let size = data.len().div_ceil(CHUNKS);
    let started = Instant::now();
    let mut session = start_session(&rs.base(0), repo);
    let mut at = 0;
    for i in 0..CHUNKS {
        let end = (at + size).min(data.len());
        session = patch(&rs.base(i), &session, at, &data[at..end]);
        at = end;
    }
    assert_eq!(at, data.len());
    // Closed on the replica that took the last chunk: its own state, from memory.
    finish(&rs.base(CHUNKS - 1), &session, &digest, &[]);
    eprintln!(
        "{CHUNKS} chunks of {} KiB round-robin over 3 replicas: {:?}",
        size >> 10,
        started.elapsed()
    );
    for i in 0..3 {
        assert_blob(&rs.base(i), repo, &digest, &data);
    }
    let counts: Vec<u64> = ["new", "saved", "memory", "rehashed"]
        .iter()
        .map(|h| upload_appends(&rs, h))
        .collect();
    assert_eq!(
        counts,
        [1, CHUNKS as u64 - 1, 1, 0],
        "appends by hash state origin (new, saved, memory, rehashed)"
    );
}

/// Sends the head of a PATCH of `body` at `start` and `sent` of its bytes, and leaves the
/// request open: a slow client still writing.
fn open_patch(addr: &str, session: &str, start: usize, body: &[u8], sent: usize) -> std::net::TcpStream {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "PATCH {session} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Range: {start}-{}\r\nContent-Length: {}\r\n\r\n",
        start + body.len() - 1,
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..sent]).unwrap();
    conn.flush().unwrap();
    conn
}

/// The status of the response on a raw connection.
fn read_status(conn: &mut std::net::TcpStream) -> u16 {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 << 10, "response head too long");
        match conn.read(&mut byte).unwrap() {
            0 => panic!("connection closed before a response"),
            _ => head.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("response head {head:?}"))
}

/// Issue 9: one upload written by two requests at once on two replicas is refused as it
/// is on one replica, and the upload completes correctly afterwards.
#[test]
fn a_second_writer_on_another_replica_is_refused() {
    let rs = Replicas::start("");
    let repo = "team/two-writers";
    let data = bytes(44, 3 << 20);
    let digest = sha256(&data);
    let session = start_session(&rs.base(0), repo);
    let session = patch(&rs.base(1), &session, 0, &data[..1 << 20]);
    let rest = &data[1 << 20..];
    let mut slow = open_patch(&rs.servers[0].addr, &session, 1 << 20, rest, 256 << 10);
    // Time for its head to reach the handler, which claims the session first thing (a
    // probe claiming it at that very moment would make the slow PATCH the refused one).
    std::thread::sleep(Duration::from_millis(300));

    // A probe whose range is wrong, so it changes nothing if it gets through: 416 until
    // the slow PATCH has claimed the session, then refused as a second writer.
    let probe = |base: &str| {
        req(
            "PATCH",
            &format!("{base}{session}"),
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", "999999-1000000"),
            ],
            Some(&[0u8, 1]),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let on_the_same = loop {
        let r = probe(&rs.base(0));
        if r.status != 416 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the slow PATCH never claimed the session"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // What one replica answers a second writer...
    assert_eq!(on_the_same.status, 400, "{}", on_the_same.text());
    assert_eq!(on_the_same.code(), "BLOB_UPLOAD_INVALID");
    assert!(
        on_the_same.text().contains("another request is writing"),
        "{}",
        on_the_same.text()
    );
    // ...every other replica answers too, for a write at the right offset and for the PUT
    // that would close the upload.
    for i in [1, 2] {
        let r = probe(&rs.base(i));
        assert_eq!(
            (r.status, r.code()),
            (400, on_the_same.code()),
            "replica {}: {}",
            i + 1,
            r.text()
        );
        let r = req(
            "PATCH",
            &format!("{}{session}", rs.base(i)),
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", &format!("{}-{}", 1 << 20, (1 << 20) + 999)),
            ],
            // Small: refused before its body is read, a large body would meet a closed
            // connection instead of the answer.
            Some(&data[1 << 20..(1 << 20) + 1000]),
        );
        assert_eq!(
            (r.status, r.code()),
            (400, on_the_same.code()),
            "replica {}: {}",
            i + 1,
            r.text()
        );
        assert!(r.text().contains("another request is writing"), "{}", r.text());
        let r = req(
            "PUT",
            &format!(
                "{}{}",
                rs.base(i),
                with_query(&session, &format!("digest={digest}"))
            ),
            &[("content-type", "application/octet-stream")],
            Some(&[]),
        );
        assert_eq!(
            (r.status, r.code()),
            (400, on_the_same.code()),
            "replica {}: {}",
            i + 1,
            r.text()
        );
    }
    // The slow writer finishes its chunk; the refused ones changed nothing.
    slow.write_all(&rest[256 << 10..]).unwrap();
    slow.flush().unwrap();
    assert_eq!(read_status(&mut slow), 202, "the slow PATCH");
    drop(slow);
    assert_eq!(session_size(&rs.base(2), &session), data.len());
    finish(&rs.base(2), &session, &digest, &[]);
    for i in 0..3 {
        assert_blob(&rs.base(i), repo, &digest, &data);
    }
}

#[test]
fn sixteen_cold_pulls_across_replicas_fetch_once() {
    let up = FaultUpstream::start();
    let rs = Replicas::start(&upstream_toml(&up, "10s"));
    let layer = bytes(7, 6 << 20);
    let l = up.put_blob(UPSTREAM_REPO, layer.clone());
    // Paced so the fill lasts about two seconds and every pull arrives while it runs.
    up.set_fault(
        FaultTarget::Blob(l.clone()),
        Fault::Slow {
            bytes_per_sec: 3 << 20,
        },
    );
    let barrier = Arc::new(Barrier::new(16));
    let started = Instant::now();
    let pulls: Vec<_> = (0..16)
        .map(|i| {
            let url = format!("{}/v2/up.test/{UPSTREAM_REPO}/blobs/{l}", rs.base(i));
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let r = try_req("GET", &url, &[], None, None);
                (i, r)
            })
        })
        .collect();
    for p in pulls {
        let (i, r) = p.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("pull {i} (replica {}): {e}", i % 3 + 1));
        assert_eq!(r.status, 200, "pull {i}: {}", r.text());
        assert!(r.body == layer, "pull {i} (replica {}): wrong bytes", i % 3 + 1);
    }
    let took = started.elapsed();
    let fetches = up.requests("GET", &format!("/v2/{UPSTREAM_REPO}/blobs/{l}"));
    assert_eq!(fetches, 1, "upstream blob GETs for 16 pulls over 3 replicas");
    // Every replica serves it from the shared store now, without asking the upstream.
    for i in 0..3 {
        assert_blob(&rs.base(i), &format!("up.test/{UPSTREAM_REPO}"), &l, &layer);
    }
    assert_eq!(up.requests("GET", &format!("/v2/{UPSTREAM_REPO}/blobs/{l}")), 1);
    eprintln!("16 cold pulls over 3 replicas of a 6 MiB blob: {took:?}, {fetches} upstream fetch");
}

#[test]
fn sigkill_mid_fill_and_mid_upload_loses_nothing_acknowledged() {
    let up = FaultUpstream::start();
    let mut rs = Replicas::start(&upstream_toml(&up, "60s"));
    let started = Instant::now();
    // Acknowledged before the kill: two images pushed through the replica that dies.
    let acked: Vec<(String, String)> = (0..2)
        .map(|i| {
            let tag = format!("v{i}");
            let (d, _) = push_image(&rs.base(0), "team/acked", &tag, 60 + i as u8, 3);
            (tag, d)
        })
        .collect();

    // Mid-fill: replica 1 fetches a blob whose upstream stalls half way.
    let layer = bytes(9, 2 << 20);
    let l = up.put_blob(UPSTREAM_REPO, layer.clone());
    let upstream_path = format!("/v2/{UPSTREAM_REPO}/blobs/{l}");
    up.set_fault(
        FaultTarget::Blob(l.clone()),
        Fault::Once(Box::new(Fault::StallMidBody {
            after: 1 << 20,
            stall: Duration::from_secs(60),
        })),
    );
    // Addresses stay the same across the restart below.
    let bases: Vec<String> = (0..3).map(|i| rs.base(i)).collect();
    let cached_url = |i: usize| format!("{}/v2/up.test/{UPSTREAM_REPO}/blobs/{l}", bases[i]);
    let stalled = {
        let url = cached_url(0);
        std::thread::spawn(move || try_req("GET", &url, &[], None, None))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.requests("GET", &upstream_path) == 0 {
        assert!(Instant::now() < deadline, "replica 1 never asked the upstream");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Mid-upload: one chunk acknowledged, the next one half sent when the kill comes.
    let data = bytes(11, 3 << 20);
    let digest = sha256(&data);
    let half = data.len() / 2;
    let session = start_session(&rs.base(0), "team/killed");
    let session = patch(&rs.base(0), &session, 0, &data[..half]);
    let mut partial = std::net::TcpStream::connect(&rs.servers[0].addr).unwrap();
    write!(
        partial,
        "PATCH {session} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Range: {half}-{}\r\nContent-Length: {}\r\n\r\n",
        rs.servers[0].addr,
        data.len() - 1,
        data.len() - half
    )
    .unwrap();
    partial.write_all(&data[half..half + (512 << 10)]).unwrap();
    partial.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    rs.servers[0].kill();
    let _ = stalled.join().unwrap(); // its connection died with the replica; any answer is fine
    drop(partial);
    let killed_at = Instant::now();

    // The others serve on: what was acknowledged pulls and verifies.
    for i in 1..3 {
        for (tag, d) in &acked {
            pull_image(&rs.base(i), "team/acked", tag, d).unwrap();
        }
    }
    // The blob whose fill died is fetched again (the dead replica's fill lock went with
    // its PostgreSQL session), once.
    let r = get(&cached_url(1));
    assert_eq!(r.status, 200, "pull after the filling replica died: {}", r.text());
    assert!(r.body == layer, "wrong bytes after the filling replica died");
    let refill = killed_at.elapsed();
    assert!(
        refill < Duration::from_secs(20),
        "the dead replica's fill lock held the pull for {refill:?}"
    );
    assert_eq!(
        up.requests("GET", &upstream_path),
        2,
        "one more fetch after the kill"
    );
    assert_blob(&rs.base(2), &format!("up.test/{UPSTREAM_REPO}"), &l, &layer);

    // The upload holds exactly the acknowledged chunk; another replica resumes it there
    // and a third finishes it.
    assert_eq!(
        session_size(&rs.base(1), &session),
        half,
        "acknowledged bytes of the upload"
    );
    let session = patch(&rs.base(1), &session, half, &data[half..half + (1 << 20)]);
    finish(&rs.base(2), &session, &digest, &data[half + (1 << 20)..]);
    assert_blob(&rs.base(1), "team/killed", &digest, &data);

    // A session open on replica 2 survives replica 1's restart (its recovery deletes only
    // what no row knows) and continues there.
    let other = bytes(12, 1 << 20);
    let other_digest = sha256(&other);
    let open = start_session(&rs.base(1), "team/open");
    let open = patch(&rs.base(1), &open, 0, &other[..1000]);
    rs.servers[0].kill_and_restart();
    let open = patch(&rs.base(0), &open, 1000, &other[1000..5000]);
    finish(&rs.base(2), &open, &other_digest, &other[5000..]);
    assert_blob(&rs.base(0), "team/open", &other_digest, &other);

    // After its restart the killed replica serves everything, from the shared stores.
    for (tag, d) in &acked {
        pull_image(&rs.base(0), "team/acked", tag, d).unwrap();
    }
    assert_blob(&rs.base(0), &format!("up.test/{UPSTREAM_REPO}"), &l, &layer);
    assert_eq!(up.requests("GET", &upstream_path), 2);
    eprintln!(
        "kill mid-fill and mid-upload: refill after the kill {refill:?}; whole test {:?}",
        started.elapsed()
    );
}

#[test]
fn gc_on_one_replica_fails_no_pull_on_the_others() {
    // Scrub throttled, so a scrub holds the lifecycle lock for seconds (the 409 below).
    let rs = Replicas::start("[scrub]\nmax_bytes_per_sec = 1000000\n");
    let images: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            let (repo, tag) = (format!("team/app{i}"), "stable".to_string());
            let (d, _) = push_image(&rs.base(0), &repo, &tag, 80 + i as u8, 4);
            (repo, tag, d)
        })
        .collect();
    let images = Arc::new(images);
    let stop = Arc::new(AtomicBool::new(false));
    let (pulls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let loops: Vec<_> = [1usize, 2, 1, 2]
        .into_iter()
        .map(|replica| {
            let base = rs.base(replica);
            let (images, stop, pulls, failures) =
                (images.clone(), stop.clone(), pulls.clone(), failures.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let (repo, tag, d) = &images[n % images.len()];
                    if let Err(e) = pull_image(&base, repo, tag, d) {
                        failures.lock().unwrap().push(e);
                    }
                    pulls.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();

    // Real work for each collection: images pushed, then untagged, through replica 1.
    let started = Instant::now();
    let mut collected = 0;
    for round in 0..6u8 {
        let (d, _) = push_image(&rs.base(0), "team/junk", "tmp", 120 + round, 3);
        let r = req(
            "DELETE",
            &format!("{}/v2/team/junk/manifests/{d}", rs.base(0)),
            &[],
            None,
        );
        assert_eq!(r.status, 202, "{}", r.text());
        let r = req("POST", &format!("{}/admin/gc?grace=0s", rs.base(0)), &[], None);
        assert_eq!(r.status, 200, "GC round {round}: {}", r.text());
        collected += r.json()["blobs"].as_array().map_or(0, Vec::len);
    }
    // GCs started on two replicas at the same moment: one runs, or they take turns;
    // never both at once, and nothing else goes wrong.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let both: Vec<_> = [rs.base(0), rs.base(1)]
            .into_iter()
            .map(|base| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    req("POST", &format!("{base}/admin/gc?grace=0s"), &[], None).status
                })
            })
            .collect();
        for s in both {
            statuses.push(s.join().unwrap());
        }
    }
    let gc_took = started.elapsed();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "GCs racing on two replicas: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");

    // A lifecycle run holding the lock on replica 1 (a throttled scrub of ~1 s per MB):
    // GC asked of replicas 2 and 3 meanwhile gets 409, and runs once the lock is free.
    // Bytes for the scrub to hash (a blob row of its own; the GCs above are done).
    push_blob(&rs.base(0), "team/big", &bytes(99, 3 << 20));
    let scrub = {
        let base = rs.base(0);
        std::thread::spawn(move || req("POST", &format!("{base}/admin/scrub"), &[], None))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let cluster = PgCluster::shared();
    while cluster.psql(
        &rs.db,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'",
    ) == "0"
    {
        assert!(Instant::now() < deadline, "the scrub never took its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in [1, 2] {
        let r = req("POST", &format!("{}/admin/gc", rs.base(i)), &[], None);
        assert_eq!(
            r.status,
            409,
            "GC on replica {} during the scrub: {}",
            i + 1,
            r.text()
        );
        assert!(r.text().contains("another replica"), "{}", r.text());
    }
    let s = scrub.join().unwrap();
    assert_eq!(s.status, 200, "scrub: {}", s.text());
    assert_eq!(
        s.json()["problems"].as_array().map(Vec::len),
        Some(0),
        "{}",
        s.text()
    );
    let r = req("POST", &format!("{}/admin/gc", rs.base(1)), &[], None);
    assert_eq!(r.status, 200, "GC on replica 2 after the scrub: {}", r.text());

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let pulls = pulls.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {pulls} pulls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(pulls >= 20, "only {pulls} pulls ran alongside the collections");
    assert!(
        collected >= 6 * 3,
        "the collections removed only {collected} blobs"
    );
    // Everything tagged still pulls everywhere.
    for i in 0..3 {
        for (repo, tag, d) in images.iter() {
            pull_image(&rs.base(i), repo, tag, d).unwrap();
        }
    }
    eprintln!(
        "GC under load: {pulls} pulls on replicas 2 and 3, 0 failed; {collected} blobs collected; racing GC statuses {statuses:?}; {gc_took:?}"
    );
}
