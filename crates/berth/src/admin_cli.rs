//! Commands that act on a running server through its loopback admin API, so they share
//! the server's locks and its one-run-at-a-time rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, bail};

use crate::config::Config;

/// The URL of the server this configuration describes, as seen from this machine.
pub fn server_url(config: &Config) -> String {
    let addr = config.server.listen;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
}

/// Runs a lifecycle job (`gc`, `retention` or `evict`) on the server and prints what it
/// deleted or, with `dry_run`, would delete.
pub fn run(server: &str, job: &str, dry_run: bool, grace: Option<&str>) -> anyhow::Result<()> {
    let mut url = format!("{}/admin/{job}?dry_run={dry_run}", server.trim_end_matches('/'));
    if let Some(g) = grace {
        url.push_str(&format!("&grace={g}"));
    }
    let report = post(&url)?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let list = |k: &str| report[k].as_array().cloned().unwrap_or_default();
    for t in list("tags") {
        println!(
            "{verb} tag {}:{}",
            t["repository"].as_str().unwrap_or("?"),
            t["tag"].as_str().unwrap_or("?")
        );
    }
    for m in list("manifests") {
        println!(
            "{verb} manifest {}@{} ({} bytes)",
            m["repository"].as_str().unwrap_or("?"),
            m["digest"].as_str().unwrap_or("?"),
            m["size"]
        );
    }
    for b in list("blobs") {
        println!(
            "{verb} blob {} ({} bytes)",
            b["digest"].as_str().unwrap_or("?"),
            b["size"]
        );
    }
    println!(
        "{}{job}: {} tags, {} manifests, {} repository links, {} blobs; {} bytes {}",
        if dry_run { "dry run of " } else { "" },
        list("tags").len(),
        list("manifests").len(),
        report["links"],
        list("blobs").len(),
        report["bytes_freed"],
        if dry_run { "would be freed" } else { "freed" },
    );
    Ok(())
}

fn post(url: &str) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resp =
            reqwest::Client::new().post(url).send().await.with_context(|| {
                format!("cannot reach the berth server at {url}; is it running? (--server)")
            })?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.context("the server's answer is not JSON")?;
        if !status.is_success() {
            let msg = body["errors"][0]["message"].as_str().unwrap_or("no message");
            bail!("the server refused: HTTP {status}: {msg}");
        }
        Ok(body)
    })
}
