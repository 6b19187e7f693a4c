//! `Upstream::head_blob` (a blob's size without its bytes) and `BlobStream::next_chunk`,
//! against CNCF distribution over plain HTTP on loopback and against canned answers.

mod cncf;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use berth_oci::RepoName;
use berth_upstream::{Upstream, UpstreamError};
use cncf::{Distribution, PushAuth, config, digest, htpasswd, seed};

fn name(s: &str) -> RepoName {
    s.parse().unwrap()
}

#[tokio::test]
async fn head_blob_gives_the_size_of_present_blobs() {
    let registry = Distribution::start("");
    let image = seed(&registry.url, "test/app", &PushAuth::None).await;
    let up = Upstream::new(config(&registry.url, None)).unwrap();
    let repo = name("test/app");

    for bytes in [&image.layer, &image.config] {
        let size = up.head_blob(&repo, &digest(bytes)).await.expect("head_blob");
        assert_eq!(size, bytes.len() as u64);
    }

    // Read back with next_chunk: the same bytes, then None.
    let mut blob = up.get_blob(&repo, &digest(&image.layer)).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = blob.next_chunk().await {
        got.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(got, image.layer);
    assert!(blob.next_chunk().await.is_none());
}

#[tokio::test]
async fn head_blob_of_a_missing_blob_or_repository_is_not_found() {
    let registry = Distribution::start("");
    let image = seed(&registry.url, "test/app", &PushAuth::None).await;
    let up = Upstream::new(config(&registry.url, None)).unwrap();

    let e = up
        .head_blob(&name("test/app"), &digest(b"never pushed"))
        .await
        .unwrap_err();
    assert!(e.is_not_found() && !e.is_transient(), "{e}");
    let e = up
        .head_blob(&name("no/such"), &digest(&image.layer))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn head_blob_answers_a_basic_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let auth = htpasswd(dir.path(), "alice", "s3cret");
    let registry = Distribution::start(&auth);
    let image = seed(
        &registry.url,
        "test/app",
        &PushAuth::Basic("alice".into(), "s3cret".into()),
    )
    .await;
    let repo = name("test/app");
    let d = digest(&image.layer);

    let anonymous = Upstream::new(config(&registry.url, None)).unwrap();
    let e = anonymous.head_blob(&repo, &d).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)), "{e}");

    let up = Upstream::new(config(&registry.url, Some(("alice", "s3cret")))).unwrap();
    assert_eq!(up.head_blob(&repo, &d).await.unwrap(), image.layer.len() as u64);

    let wrong = Upstream::new(config(&registry.url, Some(("alice", "nope")))).unwrap();
    let e = wrong.head_blob(&repo, &d).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Auth(_)), "{e}");
    assert!(!e.to_string().contains("nope"), "{e}");
}

/// A loopback server answering up to `n` connections with `answer`, each after reading
/// the request head; gives up after 10 s.
fn canned(answer: String, n: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < n && Instant::now() < deadline {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(answer.as_bytes());
            let _ = conn.flush();
        }
    });
    url
}

#[tokio::test]
async fn head_blob_refuses_answers_it_cannot_trust() {
    let asked = digest(b"asked");
    let other = digest(b"other");
    let repo = name("test/app");

    // The upstream names another digest.
    let url = canned(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDocker-Content-Digest: {other}\r\nConnection: close\r\n\r\n"
        ),
        1,
    );
    let up = Upstream::new(config(&url, None)).unwrap();
    let e = up.head_blob(&repo, &asked).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Invalid(_)), "{e}");
    assert!(e.to_string().contains(&other.to_string()), "{e}");

    // No Content-Length: the size is unknown.
    let url = canned(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".into(),
        1,
    );
    let up = Upstream::new(config(&url, None)).unwrap();
    let e = up.head_blob(&repo, &asked).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Invalid(_)), "{e}");

    // The same digest named back is fine; a 5xx is transient.
    let url = canned(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDocker-Content-Digest: {asked}\r\nConnection: close\r\n\r\n"
        ),
        1,
    );
    let up = Upstream::new(config(&url, None)).unwrap();
    assert_eq!(up.head_blob(&repo, &asked).await.unwrap(), 5);
    let url = canned(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        1,
    );
    let up = Upstream::new(config(&url, None)).unwrap();
    let e = up.head_blob(&repo, &asked).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}
