//! The OCI Distribution API of hosted repositories, end to end: the real binary on a
//! loopback port, driven over real HTTP, every endpoint and its error paths.

mod support;

use berth_testkit::TestServer;
use support::*;

fn server() -> (TestServer, String) {
    let s = TestServer::start(BIN, "");
    let base = s.url("");
    (s, base)
}

#[test]
fn base_health_ready_and_metrics() {
    let (_s, b) = server();
    let r = get(&format!("{b}/v2/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    assert_eq!(get(&format!("{b}/v2")).status, 200);
    assert_eq!(get(&format!("{b}/healthz")).status, 200);
    let ready = get(&format!("{b}/readyz"));
    assert_eq!(ready.status, 200, "{}", ready.text());
    let m = get(&format!("{b}/metrics")).text();
    assert!(
        m.contains("berth_http_requests_total{route=\"base\",method=\"GET\",status=\"200\"}"),
        "{m}"
    );
}

#[test]
fn monolithic_upload_and_blob_reads() {
    let (_s, b) = server();
    let data = bytes(1, 100_000);
    let d = push_blob(&b, "team/app", &data);
    let head = req("HEAD", &format!("{b}/v2/team/app/blobs/{d}"), &[], None);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100000"));
    assert_eq!(head.header("docker-content-digest"), Some(d.as_str()));
    let full = get(&format!("{b}/v2/team/app/blobs/{d}"));
    assert_eq!(full.status, 200);
    assert_eq!(full.body, data);

    // Ranges: closed, open, suffix, clamped, unsatisfiable.
    let range = |h: &str| {
        req(
            "GET",
            &format!("{b}/v2/team/app/blobs/{d}"),
            &[("range", h)],
            None,
        )
    };
    let r = range("bytes=10-19");
    assert_eq!((r.status, &r.body[..]), (206, &data[10..20]));
    assert_eq!(r.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(range("bytes=99990-").body, &data[99990..]);
    assert_eq!(range("bytes=-5").body, &data[99995..]);
    assert_eq!(range("bytes=99999-200000").body, &data[99999..]);
    let r = range("bytes=100000-");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */100000"));

    // Another repository does not see it; unknown digests are BLOB_UNKNOWN.
    let r = get(&format!("{b}/v2/other/blobs/{d}"));
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UNKNOWN"));
    let r = req(
        "HEAD",
        &format!("{b}/v2/team/app/blobs/{}", sha256(b"nope")),
        &[],
        None,
    );
    assert_eq!(r.status, 404);

    // A digest that does not match the bytes is refused and nothing is stored.
    let wrong = sha256(b"something else");
    let r = req(
        "POST",
        &format!("{b}/v2/team/app/blobs/uploads/?digest={wrong}"),
        &[],
        Some(&data),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "DIGEST_INVALID"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("hash to"), "{}", r.text());
    assert_eq!(
        req("HEAD", &format!("{b}/v2/team/app/blobs/{wrong}"), &[], None).status,
        404
    );

    // Malformed digests.
    for bad in [
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:..%2F..%2Fetc%2Fpasswd",
    ] {
        let r = get(&format!("{b}/v2/team/app/blobs/{bad}"));
        assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"), "{bad}");
        let r = req(
            "POST",
            &format!("{b}/v2/team/app/blobs/uploads/?digest={bad}"),
            &[],
            Some(b"x"),
        );
        assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"), "{bad}");
    }

    // sha512 digests are accepted.
    if !berth_testkit::skip_on_s3pg(
        "monolithic_upload_and_blob_reads, its sha512 part",
        "s3s-fs names a multipart upload's metadata file after the base64 of the object key, \
         which for a sha512 blob key is longer than a file name may be (ENAMETOOLONG)",
    ) {
        use sha2::Digest as _;
        let d512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
        let r = req(
            "POST",
            &format!("{b}/v2/team/app/blobs/uploads/?digest={d512}"),
            &[],
            Some(&data),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(get(&format!("{b}/v2/team/app/blobs/{d512}")).body, data);
    }

    // Blob DELETE removes it from the repository.
    assert_eq!(
        req("DELETE", &format!("{b}/v2/team/app/blobs/{d}"), &[], None).status,
        202
    );
    assert_eq!(get(&format!("{b}/v2/team/app/blobs/{d}")).status, 404);
    let r = req("DELETE", &format!("{b}/v2/team/app/blobs/{d}"), &[], None);
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UNKNOWN"));
}

#[test]
fn chunked_upload_status_order_and_cancel() {
    let (_s, b) = server();
    let data = bytes(2, 300_000);
    let d = sha256(&data);
    let start = req("POST", &format!("{b}/v2/app/blobs/uploads/"), &[], None);
    assert_eq!(start.status, 202);
    assert_eq!(start.header("range"), Some("0-0"));
    let loc = start.header("location").unwrap().to_string();
    assert!(loc.starts_with("/v2/app/blobs/uploads/"), "{loc}");
    let uuid = start.header("docker-upload-uuid").unwrap().to_string();
    assert!(loc.ends_with(&uuid));
    let url = format!("{b}{loc}");

    let r = req(
        "PATCH",
        &url,
        &[("content-range", "0-99999")],
        Some(&data[..100_000]),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("range"), Some("0-99999"));
    // Status.
    let r = get(&url);
    assert_eq!((r.status, r.header("range")), (204, Some("0-99999")));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    // Out of order: 416 with the current state, and the upload is unchanged.
    let r = req(
        "PATCH",
        &url,
        &[("content-range", "200000-299999")],
        Some(&data[200_000..]),
    );
    assert_eq!(r.status, 416, "{}", r.text());
    assert_eq!(r.header("range"), Some("0-99999"));
    assert_eq!(r.header("location"), Some(loc.as_str()));
    // Announced length that does not match the body.
    let r = req(
        "PATCH",
        &url,
        &[("content-range", "100000-100009")],
        Some(&data[100_000..100_005]),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "SIZE_INVALID"),
        "{}",
        r.text()
    );
    // The refused chunk left nothing behind; a PATCH without Content-Range appends.
    assert_eq!(get(&url).header("range"), Some("0-99999"));
    let r = req("PATCH", &url, &[], Some(&data[100_000..200_000]));
    assert_eq!(r.header("range"), Some("0-199999"));
    // PUT without a digest is refused; with the last chunk and digest it completes.
    let r = req("PUT", &url, &[], None);
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    let r = req("PUT", &format!("{url}?digest={d}"), &[], Some(&data[200_000..]));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some(format!("/v2/app/blobs/{d}").as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(get(&format!("{b}/v2/app/blobs/{d}")).body, data);
    // The session is gone.
    let r = get(&url);
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // Cancel.
    let loc2 = req("POST", &format!("{b}/v2/app/blobs/uploads/"), &[], None)
        .header("location")
        .unwrap()
        .to_string();
    req("PATCH", &format!("{b}{loc2}"), &[], Some(b"partial"));
    assert_eq!(req("DELETE", &format!("{b}{loc2}"), &[], None).status, 204);
    assert_eq!(get(&format!("{b}{loc2}")).status, 404);
    // Unknown, malformed, and other-repository upload ids.
    let r = req(
        "PATCH",
        &format!("{b}/v2/app/blobs/uploads/00000000-0000-0000-0000-000000000000"),
        &[],
        Some(b"x"),
    );
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let r = get(&format!("{b}/v2/app/blobs/uploads/not_an_id!"));
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let loc3 = req("POST", &format!("{b}/v2/app/blobs/uploads/"), &[], None)
        .header("upload-check-placeholder")
        .map(str::to_string);
    assert!(loc3.is_none());
    let start = req("POST", &format!("{b}/v2/app/blobs/uploads/"), &[], None);
    let id = start.header("docker-upload-uuid").unwrap();
    let r = get(&format!("{b}/v2/elsewhere/blobs/uploads/{id}"));
    assert_eq!((r.status, r.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // A digest mismatch at the end refuses the blob.
    let loc4 = req("POST", &format!("{b}/v2/app/blobs/uploads/"), &[], None)
        .header("location")
        .unwrap()
        .to_string();
    let r = req(
        "PUT",
        &format!("{b}{loc4}?digest={}", sha256(b"other")),
        &[],
        Some(b"these bytes"),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
}

#[test]
fn mount_with_and_without_from() {
    let (_s, b) = server();
    let data = bytes(3, 5000);
    let d = push_blob(&b, "src/repo", &data);
    let r = req(
        "POST",
        &format!("{b}/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"),
        &[],
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/dst/repo/blobs/{d}").as_str())
    );
    assert_eq!(get(&format!("{b}/v2/dst/repo/blobs/{d}")).body, data);
    // Without from: the blob is known to the registry, so it is linked.
    let r = req(
        "POST",
        &format!("{b}/v2/third/blobs/uploads/?mount={d}"),
        &[],
        None,
    );
    assert_eq!(r.status, 201);
    // From a repository that does not hold it: an ordinary upload session starts.
    let r = req(
        "POST",
        &format!("{b}/v2/fourth/blobs/uploads/?mount={d}&from=nothing/here"),
        &[],
        None,
    );
    assert_eq!(r.status, 202);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/v2/fourth/blobs/uploads/")
    );
    // An unknown blob: a session too.
    let r = req(
        "POST",
        &format!("{b}/v2/fourth/blobs/uploads/?mount={}", sha256(b"zz")),
        &[],
        None,
    );
    assert_eq!(r.status, 202);
    let r = req(
        "POST",
        &format!("{b}/v2/fourth/blobs/uploads/?mount={d}&from=Bad_Name"),
        &[],
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (400, "NAME_INVALID"));
}

#[test]
fn manifests_push_pull_delete_and_validation() {
    let (_s, b) = server();
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let layer = bytes(4, 20_000);
    let c = push_blob(&b, "app", config);
    let l = push_blob(&b, "app", &layer);
    // Odd whitespace proves bytes are kept as pushed, never re-serialized.
    let mut m = image_manifest(&(c.clone(), config.len()), &[(l.clone(), layer.len())], "");
    m.splice(1..1, b"\n   ".iter().copied());
    let md = sha256(&m);

    let r = put_manifest(&b, "app", "v1", OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/app/manifests/{md}").as_str())
    );
    assert_eq!(r.header("docker-content-digest"), Some(md.as_str()));
    for reference in ["v1", md.as_str()] {
        let g = get(&format!("{b}/v2/app/manifests/{reference}"));
        assert_eq!(g.status, 200);
        assert_eq!(g.body, m);
        assert_eq!(g.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(g.header("docker-content-digest"), Some(md.as_str()));
        let h = req("HEAD", &format!("{b}/v2/app/manifests/{reference}"), &[], None);
        assert_eq!(h.status, 200);
        assert_eq!(h.header("content-length"), Some(m.len().to_string().as_str()));
    }
    // By digest: the digest must match.
    let r = put_manifest(&b, "app", &sha256(b"x"), OCI_MANIFEST, &m);
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(put_manifest(&b, "app", &md, OCI_MANIFEST, &m).status, 201);

    // Missing references, in this repository.
    let r = put_manifest(&b, "elsewhere", "v1", OCI_MANIFEST, &m);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN"),
        "{}",
        r.text()
    );
    assert!(r.text().contains(&c) && r.text().contains(&l), "{}", r.text());
    // Invalid JSON, wrong Content-Type, missing fields, unsupported types.
    for (ct, body, code) in [
        (OCI_MANIFEST, &b"{not json"[..], "MANIFEST_INVALID"),
        (OCI_INDEX, &m[..], "MANIFEST_INVALID"),
        ("text/plain", br#"{"schemaVersion":2}"#, "MANIFEST_INVALID"),
        (
            OCI_MANIFEST,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            "MANIFEST_INVALID",
        ),
        (
            "application/vnd.docker.distribution.manifest.v1+json",
            br#"{"schemaVersion":1}"#,
            "MANIFEST_INVALID",
        ),
    ] {
        let r = put_manifest(&b, "app", "bad", ct, body);
        assert_eq!(
            (r.status, r.code()),
            (400, code.to_string()),
            "{ct}: {}",
            r.text()
        );
        assert!(!r.json()["errors"][0]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(get(&format!("{b}/v2/app/manifests/bad")).status, 404);
    // Too large: refused from the declared length, before the body is read ...
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&_s.addr).unwrap();
        write!(
            tcp,
            "PUT /v2/app/manifests/big HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            5 << 20
        )
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("SIZE_INVALID") && answer.contains("max_manifest_bytes"),
            "{answer}"
        );
    }
    // Bad tags and references.
    let r = put_manifest(&b, "app", "-bad", OCI_MANIFEST, &m);
    assert_eq!((r.status, r.code().as_str()), (400, "TAG_INVALID"));

    // Index over the manifest; a missing child is refused.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{md}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        m.len()
    );
    let missing = index.replace(&md, &sha256(b"no such manifest"));
    let r = put_manifest(&b, "app", "multi", OCI_INDEX, missing.as_bytes());
    assert_eq!((r.status, r.code().as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));
    let r = put_manifest(&b, "app", "multi", OCI_INDEX, index.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let id = sha256(index.as_bytes());
    // Nor can a blob a stored manifest uses.
    let r = req("DELETE", &format!("{b}/v2/app/blobs/{l}"), &[], None);
    assert_eq!((r.status, r.code().as_str()), (409, "DENIED"), "{}", r.text());
    assert!(r.text().contains(&md), "{}", r.text());
    assert_eq!(get(&format!("{b}/v2/app/blobs/{l}")).body, layer);
    // A child of a live index cannot be deleted out from under it.
    let r = req("DELETE", &format!("{b}/v2/app/manifests/{md}"), &[], None);
    assert_eq!((r.status, r.code().as_str()), (409, "DENIED"), "{}", r.text());
    assert_eq!(get(&format!("{b}/v2/app/manifests/{md}")).status, 200);

    // DELETE of a tag removes only the tag.
    assert_eq!(
        req("DELETE", &format!("{b}/v2/app/manifests/multi"), &[], None).status,
        202
    );
    assert_eq!(
        get(&format!("{b}/v2/app/manifests/multi")).code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(get(&format!("{b}/v2/app/manifests/{id}")).status, 200);
    // DELETE by digest removes the manifest and its tags.
    assert_eq!(
        req("DELETE", &format!("{b}/v2/app/manifests/{id}"), &[], None).status,
        202
    );
    assert_eq!(get(&format!("{b}/v2/app/manifests/{id}")).status, 404);
    assert_eq!(
        req("DELETE", &format!("{b}/v2/app/manifests/{md}"), &[], None).status,
        202
    );
    let r = get(&format!("{b}/v2/app/manifests/v1"));
    assert_eq!((r.status, r.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = req("DELETE", &format!("{b}/v2/app/manifests/{md}"), &[], None);
    assert_eq!((r.status, r.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = get(&format!("{b}/v2/never/pushed/manifests/latest"));
    assert_eq!((r.status, r.code().as_str()), (404, "NAME_UNKNOWN"));
}

#[test]
fn docker_schema2_manifest_and_list_kept_byte_for_byte() {
    let (_s, b) = server();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let c = push_blob(&b, "d", config);
    let layer = bytes(5, 3000);
    let l = push_blob(&b, "d", &layer);
    let m = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {{\"mediaType\": \"application/vnd.docker.container.image.v1+json\", \"size\": {}, \"digest\": \"{c}\"}},\n   \"layers\": [{{\"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\", \"size\": {}, \"digest\": \"{l}\"}}]\n}}",
        config.len(),
        layer.len()
    );
    let r = put_manifest(&b, "d", "amd64", DOCKER_MANIFEST, m.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let md = sha256(m.as_bytes());
    let list = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{DOCKER_LIST}\",\"manifests\":[{{\"mediaType\":\"{DOCKER_MANIFEST}\",\"size\":{},\"digest\":\"{md}\",\"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}}}}]}}",
        m.len()
    );
    let r = put_manifest(&b, "d", "latest", DOCKER_LIST, list.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let g = get(&format!("{b}/v2/d/manifests/latest"));
    assert_eq!(g.body, list.as_bytes());
    assert_eq!(g.header("content-type"), Some(DOCKER_LIST));
    assert_eq!(
        g.header("docker-content-digest"),
        Some(sha256(list.as_bytes()).as_str())
    );
    let g = get(&format!("{b}/v2/d/manifests/{md}"));
    assert_eq!(
        (g.body.as_slice(), g.header("content-type")),
        (m.as_bytes(), Some(DOCKER_MANIFEST))
    );
    // Manifests can be fetched through the blob endpoint too.
    assert_eq!(get(&format!("{b}/v2/d/blobs/{md}")).body, m.as_bytes());
}

#[test]
fn tags_and_catalog_paginate_with_links() {
    let (_s, b) = server();
    let (_d, m) = push_image(&b, "p/one", "c", 6, 1);
    for t in ["a", "b", "d", "e"] {
        assert_eq!(put_manifest(&b, "p/one", t, OCI_MANIFEST, &m).status, 201);
    }
    push_image(&b, "p/two", "x", 7, 1);
    push_image(&b, "p/three", "x", 8, 1);

    let all = get(&format!("{b}/v2/p/one/tags/list")).json();
    assert_eq!(all["name"], "p/one");
    assert_eq!(all["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));
    let r = get(&format!("{b}/v2/p/one/tags/list?n=2"));
    assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/p/one/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let r = get(&format!("{b}/v2/p/one/tags/list?n=2&last=b"));
    assert_eq!(r.json()["tags"], serde_json::json!(["c", "d"]));
    let r = get(&format!("{b}/v2/p/one/tags/list?n=2&last=d"));
    assert_eq!(r.json()["tags"], serde_json::json!(["e"]));
    assert_eq!(r.header("link"), None);
    let r = get(&format!("{b}/v2/p/one/tags/list?n=0"));
    assert_eq!(r.json()["tags"], serde_json::json!([]));
    let r = get(&format!("{b}/v2/p/one/tags/list?n=lots"));
    assert_eq!((r.status, r.code().as_str()), (400, "PAGINATION_NUMBER_INVALID"));
    let r = get(&format!("{b}/v2/p/none/tags/list"));
    assert_eq!((r.status, r.code().as_str()), (404, "NAME_UNKNOWN"));

    let r = get(&format!("{b}/v2/_catalog"));
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["p/one", "p/three", "p/two"])
    );
    let r = get(&format!("{b}/v2/_catalog?n=1"));
    assert_eq!(r.json()["repositories"], serde_json::json!(["p/one"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?n=1&last=p/one>; rel=\"next\"")
    );
    let r = get(&format!("{b}/v2/_catalog?n=5&last=p/one"));
    assert_eq!(r.json()["repositories"], serde_json::json!(["p/three", "p/two"]));
}

#[test]
fn referrers_and_subject() {
    let (_s, b) = server();
    let (subject, m) = push_image(&b, "r", "v1", 9, 1);
    let empty = push_blob(&b, "r", b"{}");
    let artifact = |kind: &str, note: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{kind}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}},"annotations":{{"note":"{note}"}}}}"#,
            m.len()
        )
    };
    let none = get(&format!("{b}/v2/r/referrers/{subject}"));
    assert_eq!(none.status, 200);
    assert_eq!(none.header("content-type"), Some(OCI_INDEX));
    assert_eq!(none.json()["manifests"], serde_json::json!([]));

    let sig = artifact("application/vnd.example.signature", "sig");
    let sbom = artifact("application/vnd.example.sbom", "sbom");
    for a in [&sig, &sbom] {
        let d = sha256(a.as_bytes());
        let r = put_manifest(&b, "r", &d, OCI_MANIFEST, a.as_bytes());
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("oci-subject"), Some(subject.as_str()));
        let g = get(&format!("{b}/v2/r/manifests/{d}"));
        assert_eq!(g.header("oci-subject"), Some(subject.as_str()));
    }
    let all = get(&format!("{b}/v2/r/referrers/{subject}"));
    let list = all.json();
    assert_eq!(list["schemaVersion"], 2);
    assert_eq!(list["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(all.header("oci-filters-applied"), None);
    let f = get(&format!(
        "{b}/v2/r/referrers/{subject}?artifactType=application/vnd.example.sbom"
    ));
    assert_eq!(f.header("oci-filters-applied"), Some("artifactType"));
    let only = &f.json()["manifests"];
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["digest"], sha256(sbom.as_bytes()));
    assert_eq!(only[0]["artifactType"], "application/vnd.example.sbom");
    assert_eq!(only[0]["annotations"]["note"], "sbom");
    assert_eq!(only[0]["size"], sbom.len());

    // A subject that is not (yet) in the registry is allowed, as the spec requires.
    let orphan = artifact("application/vnd.example.signature", "early").replace(&subject, &sha256(b"later"));
    let r = put_manifest(&b, "r", "early", OCI_MANIFEST, orphan.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&format!("{b}/v2/r/referrers/{}", sha256(b"later")));
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
    let r = get(&format!("{b}/v2/r/referrers/sha256:bad"));
    assert_eq!((r.status, r.code().as_str()), (400, "DIGEST_INVALID"));
}

#[test]
fn bad_names_paths_and_methods() {
    let (_s, b) = server();
    for path in [
        "/v2/UPPER/manifests/latest",
        "/v2/a/../b/manifests/latest",
        "/v2/a%2F..%2Fb/manifests/latest",
        "/v2/a//b/tags/list",
        "/v2/-a/blobs/uploads/",
    ] {
        let r = get(&format!("{b}{path}"));
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "NAME_INVALID"),
            "{path}: {}",
            r.text()
        );
    }
    let long = "a".repeat(256);
    assert_eq!(get(&format!("{b}/v2/{long}/tags/list")).code(), "NAME_INVALID");
    let r = get(&format!("{b}/v2/a/whatever"));
    assert_eq!(r.status, 404);
    let r = req("POST", &format!("{b}/v2/a/manifests/latest"), &[], None);
    assert_eq!((r.status, r.code().as_str()), (405, "UNSUPPORTED"));
    let r = req("PUT", &format!("{b}/v2/a/tags/list"), &[], None);
    assert_eq!(r.status, 405);
    // Nothing above created anything.
    assert_eq!(
        get(&format!("{b}/v2/_catalog")).json()["repositories"],
        serde_json::json!([])
    );
}

#[test]
fn damaged_bytes_on_disk_are_never_served_as_success() {
    let (s, b) = server();
    let data = bytes(10, 50_000);
    let d = push_blob(&b, "dmg", &data);
    let hex = d.strip_prefix("sha256:").unwrap();
    let file = s.blob_root().join("blobs/sha256").join(&hex[..2]).join(hex);
    // Truncated on disk (the field-notes "200 with 0 bytes" case).
    std::fs::write(&file, &data[..100]).unwrap();
    let r = get(&format!("{b}/v2/dmg/blobs/{d}"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "BLOB_UNKNOWN"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("missing or damaged"));
    assert_eq!(
        req("HEAD", &format!("{b}/v2/dmg/blobs/{d}"), &[], None).status,
        404
    );
    // Gone entirely.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(get(&format!("{b}/v2/dmg/blobs/{d}")).status, 404);
    let m = get(&format!("{b}/metrics")).text();
    assert!(
        m.contains("berth_blob_read_errors_total{problem=\"missing\"}"),
        "{m}"
    );
    assert!(
        m.contains("berth_blob_read_errors_total{problem=\"size_mismatch\"}"),
        "{m}"
    );
    // The client's answer to a 404 is to upload again, which heals it.
    push_blob(&b, "dmg", &data);
    assert_eq!(get(&format!("{b}/v2/dmg/blobs/{d}")).body, data);
}

#[test]
fn idle_upload_sessions_expire() {
    let s = TestServer::start(
        BIN,
        "[uploads]\nexpire_after = \"1s\"\nexpire_interval = \"500ms\"\n",
    );
    let b = s.url("");
    let loc = req("POST", &format!("{b}/v2/idle/blobs/uploads/"), &[], None)
        .header("location")
        .unwrap()
        .to_string();
    req("PATCH", &format!("{b}{loc}"), &[], Some(b"some bytes"));
    assert_eq!(get(&format!("{b}{loc}")).status, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&format!("{b}{loc}")).status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle upload was never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // No upload area is left: no directory on the filesystem, no object in S3 (where
    // s3s-fs may leave empty directories behind, so files are counted).
    fn files(d: &std::path::Path) -> usize {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| if e.path().is_dir() { files(&e.path()) } else { 1 })
            .sum()
    }
    if berth_testkit::backend_is_s3pg() {
        assert_eq!(files(&s.blob_root().join("uploads")), 0);
    } else {
        assert_eq!(
            std::fs::read_dir(s.data_dir().join("uploads")).unwrap().count(),
            0
        );
    }
    assert!(
        get(&format!("{b}/metrics"))
            .text()
            .contains("berth_uploads_expired_total 1")
    );
}
