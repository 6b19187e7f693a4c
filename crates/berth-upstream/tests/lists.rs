//! Catalog and tag lists across `Link` pages, from a loopback server that answers each
//! page by its request path.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use berth_upstream::{Upstream, UpstreamConfig};

/// Answers `GET <path>` with the body and `Link` of the first page whose path matches,
/// 404 otherwise; stops after `requests` connections or 20 s.
fn pages(pages: Vec<(&'static str, &'static str, Option<&'static str>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        for conn in listener.incoming().take(requests) {
            let Ok(mut conn) = conn else { return };
            if Instant::now() > deadline {
                return;
            }
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split(' ').nth(1).unwrap_or_default().to_string();
            let answer = match pages.iter().find(|(p, _, _)| *p == path) {
                Some((_, body, link)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
                    body.len(),
                    link.map(|l| format!("Link: <{l}>; rel=\"next\"\r\n"))
                        .unwrap_or_default()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    url
}

fn upstream(url: &str) -> Upstream {
    Upstream::new(UpstreamConfig {
        name: "lists".into(),
        url: url.into(),
        username: None,
        password: None,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        library_prefix: false,
    })
    .unwrap()
}

#[tokio::test]
async fn catalog_and_tags_follow_link_pages_until_the_last() {
    let url = pages(
        vec![
            (
                "/v2/_catalog?n=1000",
                r#"{"repositories":["a","b"]}"#,
                Some("/v2/_catalog?n=1000&last=b"),
            ),
            ("/v2/_catalog?n=1000&last=b", r#"{"repositories":["c"]}"#, None),
            (
                "/v2/team/app/tags/list?n=1000",
                r#"{"name":"team/app","tags":["v1"]}"#,
                Some("/v2/team/app/tags/list?n=1000&last=v1"),
            ),
            (
                "/v2/team/app/tags/list?n=1000&last=v1",
                r#"{"name":"team/app","tags":["v2","v3"]}"#,
                Some("/v2/team/app/tags/list?n=1000&last=v3"),
            ),
            // An empty page ends the list even with a next link.
            (
                "/v2/team/app/tags/list?n=1000&last=v3",
                r#"{"name":"team/app","tags":null}"#,
                Some("/v2/team/app/tags/list?n=1000&last=v9"),
            ),
        ],
        5,
    );
    let up = upstream(&url);
    assert_eq!(up.catalog().await.unwrap(), ["a", "b", "c"]);
    let repo = "team/app".parse().unwrap();
    assert_eq!(up.tags(&repo).await.unwrap(), ["v1", "v2", "v3"]);
}

#[tokio::test]
async fn a_page_that_is_not_json_names_the_list() {
    let url = pages(
        vec![
            ("/v2/_catalog?n=1000", "not json", None),
            ("/v2/x/tags/list?n=1000", "{", None),
        ],
        2,
    );
    let up = upstream(&url);
    let e = up.catalog().await.unwrap_err().to_string();
    assert!(e.contains("catalog is not JSON"), "{e}");
    let e = up.tags(&"x".parse().unwrap()).await.unwrap_err().to_string();
    assert!(e.contains("tag list is not JSON"), "{e}");
}
