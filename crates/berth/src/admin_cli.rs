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

pub fn gc(server: &str, dry_run: bool, grace: Option<&str>) -> anyhow::Result<()> {
    let mut url = format!("{}/admin/gc?dry_run={dry_run}", server.trim_end_matches('/'));
    if let Some(g) = grace {
        url.push_str(&format!("&grace={g}"));
    }
    let report = post(&url)?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for m in report["manifests"].as_array().into_iter().flatten() {
        println!(
            "{verb} manifest {}@{} ({} bytes)",
            m["repository"].as_str().unwrap_or("?"),
            m["digest"].as_str().unwrap_or("?"),
            m["size"]
        );
    }
    for b in report["blobs"].as_array().into_iter().flatten() {
        println!(
            "{verb} blob {} ({} bytes)",
            b["digest"].as_str().unwrap_or("?"),
            b["size"]
        );
    }
    let count = |k: &str| report[k].as_array().map(Vec::len).unwrap_or(0);
    println!(
        "{}: {} manifests, {} repository links, {} blobs; {} bytes {}",
        if dry_run { "dry run" } else { "garbage collected" },
        count("manifests"),
        report["links"],
        count("blobs"),
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
