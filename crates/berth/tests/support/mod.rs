//! Plain HTTP for the API tests: every status is an answer, nothing is followed.

#![allow(dead_code)]

use std::collections::HashMap;

use sha2::Digest as _;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The first OCI error code of an error body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .allow_non_standard_methods(true)
            .build(),
    )
}

pub fn req(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    try_req(
        method,
        url,
        headers,
        body.map(|b| ureq::SendBody::from_owned_reader(std::io::Cursor::new(b.to_vec()))),
        body.map(|b| b.len()),
    )
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like [`req`], but a connection failure is an `Err` and the body may be any reader
/// (sent chunked when `len` is `None`).
pub fn try_req(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<ureq::SendBody<'static>>,
    len: Option<usize>,
) -> Result<Resp, String> {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if let Some(n) = len {
        b = b.header("content-length", n.to_string());
    }
    let agent = agent();
    let resp = match body {
        Some(body) => agent.run(b.body(body).unwrap()),
        None => agent.run(b.body(()).unwrap()),
    }
    .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        resp.into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| format!("{method} {url}: reading body: {e}"))?
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub fn get(url: &str) -> Resp {
    req("GET", url, &[], None)
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Uploads a blob in one request; asserts 201.
pub fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    let r = req(
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"),
        &[("content-type", "application/octet-stream")],
        Some(bytes),
    );
    assert_eq!(r.status, 201, "monolithic upload: {}", r.text());
    d
}

pub fn put_manifest(base: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
    req(
        "PUT",
        &format!("{base}/v2/{repo}/manifests/{reference}"),
        &[("content-type", media_type)],
        Some(body),
    )
}

/// Deterministic bytes that differ per seed.
pub fn bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut state = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// An OCI image manifest over a config and layers (pushed by the caller).
pub fn image_manifest(config: &(String, usize), layers: &[(String, usize)], extra: &str) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{n}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]{extra}}}"#,
        config.0,
        config.1,
        layers.join(",")
    )
    .into_bytes()
}

/// Pushes a config and `n` layers and a manifest under `tag`; returns (manifest digest, bytes).
pub fn push_image(base: &str, repo: &str, tag: &str, seed: u8, n: usize) -> (String, Vec<u8>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let c = push_blob(base, repo, &config);
    let layers: Vec<(String, usize)> = (0..n)
        .map(|i| {
            let b = bytes(seed.wrapping_add(i as u8 * 31), 1000 + i * 777);
            (push_blob(base, repo, &b), b.len())
        })
        .collect();
    let m = image_manifest(&(c, config.len()), &layers, "");
    let r = put_manifest(base, repo, tag, OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "manifest push: {}", r.text());
    (sha256(&m), m)
}

/// Runs a lifecycle command (`gc`, `retention`, `evict`) against a test server; asserts
/// success and returns what it printed.
pub fn lifecycle_cli(server: &berth_testkit::TestServer, job: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .args([job, "--server", &server.url("")])
        .args(extra)
        .output()
        .expect("run berth");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "berth {job}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// What a lifecycle command's output says was (or would be) deleted, without the verb.
pub fn deleted(out: &str) -> std::collections::BTreeSet<String> {
    out.lines()
        .filter_map(|l| {
            l.strip_prefix("would delete ")
                .or_else(|| l.strip_prefix("deleted "))
        })
        .map(str::to_string)
        .collect()
}
