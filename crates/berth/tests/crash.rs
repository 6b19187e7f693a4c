//! SIGKILL in the middle of uploads and manifest pushes, restart on the same data
//! directory: every committed image is intact and no partial blob is visible or stored.

mod support;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::TestServer;
use support::*;

/// A body that trickles out, so the kill lands while it is being received.
struct Slow {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.data.len() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(3));
        let n = buf.len().min(32 * 1024).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[derive(Clone)]
struct Committed {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
}

fn verify(base: &str, c: &Committed) {
    let g = get(&format!("{base}/v2/{}/manifests/{}", c.repo, c.tag));
    assert_eq!(g.status, 200, "{}:{} lost: {}", c.repo, c.tag, g.text());
    assert_eq!(g.body, c.manifest, "{}:{} changed", c.repo, c.tag);
    let m: serde_json::Value = serde_json::from_slice(&c.manifest).unwrap();
    let mut refs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    refs.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string()),
    );
    for d in refs {
        let b = get(&format!("{base}/v2/{}/blobs/{d}", c.repo));
        assert_eq!(b.status, 200, "{}: blob {d} lost", c.repo);
        assert_eq!(sha256(&b.body), d, "{}: blob {d} damaged", c.repo);
    }
}

#[test]
fn sigkill_during_uploads_and_pushes_loses_nothing_committed() {
    let mut server = TestServer::start(BIN, "");
    let base = server.url("");
    let committed = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3u8 {
        let (_, m) = push_image(&base, "stable/app", &format!("v{i}"), 100 + i, 3);
        committed.lock().unwrap().push(Committed {
            repo: "stable/app".into(),
            tag: format!("v{i}"),
            manifest: m,
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let in_flight: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    // Slow monolithic uploads that the kill interrupts.
    for w in 0..3u8 {
        let (base, stop, in_flight) = (base.clone(), stop.clone(), in_flight.clone());
        workers.push(std::thread::spawn(move || {
            let mut seed = w;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let data = bytes(seed.wrapping_mul(7), 4 << 20);
                let d = sha256(&data);
                in_flight.lock().unwrap().push(d.clone());
                let body = ureq::SendBody::from_owned_reader(Slow { data, pos: 0 });
                let url = format!("{base}/v2/flight/blobs/uploads/?digest={d}");
                if try_req("POST", &url, &[], Some(body), None).is_err() {
                    return;
                }
                seed = seed.wrapping_add(3);
            }
        }));
    }
    // Chunked uploads.
    for w in 0..2u8 {
        let (base, stop) = (base.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok(s) = try_req(
                    "POST",
                    &format!("{base}/v2/chunks/blobs/uploads/"),
                    &[],
                    None,
                    None,
                ) else {
                    return;
                };
                let loc = s.header("location").unwrap_or_default().to_string();
                let data = bytes(200u8.wrapping_add(w * 50).wrapping_add(i), 1 << 20);
                for (k, part) in data.chunks(256 * 1024).enumerate() {
                    let range = format!("{}-{}", k * 256 * 1024, k * 256 * 1024 + part.len() - 1);
                    let body = ureq::SendBody::from_owned_reader(std::io::Cursor::new(part.to_vec()));
                    if try_req(
                        "PATCH",
                        &format!("{base}{loc}"),
                        &[("content-range", &range)],
                        Some(body),
                        Some(part.len()),
                    )
                    .is_err()
                    {
                        return;
                    }
                }
                let url = format!("{base}{loc}?digest={}", sha256(&data));
                if try_req("PUT", &url, &[], None, None).is_err() {
                    return;
                }
                i = i.wrapping_add(1);
            }
        }));
    }
    // Whole-image pushes; an image counts as committed only after its 201.
    for w in 0..2u8 {
        let (base, stop, committed) = (base.clone(), stop.clone(), committed.clone());
        workers.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let repo = format!("busy/w{w}");
                let tag = format!("t{i}");
                let result = std::panic::catch_unwind(|| push_image(&base, &repo, &tag, w * 100 + i, 2));
                match result {
                    Ok((_, manifest)) => committed.lock().unwrap().push(Committed { repo, tag, manifest }),
                    Err(_) => return,
                }
                i = i.wrapping_add(1);
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(1500));
    server.kill_and_restart();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }

    let base = server.url("");
    assert_eq!(get(&format!("{base}/readyz")).status, 200);
    let committed = committed.lock().unwrap().clone();
    assert!(
        committed.len() > 3,
        "the pushers committed nothing before the kill"
    );
    for c in &committed {
        verify(&base, c);
    }
    // Interrupted uploads are either complete and correct, or absent: never partial.
    for d in in_flight.lock().unwrap().iter() {
        let r = get(&format!("{base}/v2/flight/blobs/{d}"));
        assert!(
            r.status == 404 || sha256(&r.body) == *d,
            "blob {d} served partial ({} bytes)",
            r.body.len()
        );
    }
    // On disk: every stored blob hashes to its name; scratch space is empty.
    let mut checked = 0;
    for dir in std::fs::read_dir(server.blob_root().join("blobs/sha256")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            assert_eq!(
                sha256(&std::fs::read(&f).unwrap()),
                format!("sha256:{name}"),
                "partial blob file {f:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    // Scratch space is the data directory's tmp/ (S3 keeps none: uploads are objects).
    if !berth_testkit::backend_is_s3pg() {
        assert_eq!(
            std::fs::read_dir(server.data_dir().join("tmp")).unwrap().count(),
            0
        );
    }
    // And the registry takes new work.
    let (_, m) = push_image(&base, "after/crash", "ok", 250, 1);
    verify(
        &base,
        &Committed {
            repo: "after/crash".into(),
            tag: "ok".into(),
            manifest: m,
        },
    );
}
