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
    let url = format!("{}/admin/{job}", server.trim_end_matches('/'));
    let mut params = vec![("dry_run", dry_run.to_string())];
    params.extend(grace.map(|g| ("grace", g.to_string())));
    let report = post(&url, &params)?;
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
    let total = |k: &str| {
        report[format!("{k}_total")]
            .as_u64()
            .unwrap_or(list(k).len() as u64)
    };
    if ["tags", "manifests", "blobs"]
        .iter()
        .any(|k| total(k) > list(k).len() as u64)
    {
        println!("(the lists above are the first entries; the counts below are complete)");
    }
    println!(
        "{}{job}: {} tags, {} manifests, {} repository links, {} blobs; {} bytes {}",
        if dry_run { "dry run of " } else { "" },
        total("tags"),
        total("manifests"),
        report["links"],
        total("blobs"),
        report["bytes_freed"],
        if dry_run { "would be freed" } else { "freed" },
    );
    Ok(())
}

fn post(url: &str, params: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
    let url =
        reqwest::Url::parse_with_params(url, params).with_context(|| format!("bad server URL {url}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(url.clone())
            .send()
            .await
            .with_context(|| format!("cannot reach the berth server at {url}; is it running? (--server)"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.context("the server's answer is not JSON")?;
        if !status.is_success() {
            let msg = body["errors"][0]["message"].as_str().unwrap_or("no message");
            bail!("the server refused: HTTP {status}: {msg}");
        }
        Ok(body)
    })
}

/// Runs a scrub on the server and prints every problem with who it affects. Fails (exit
/// status 1) when damage remains.
pub fn scrub(server: &str, repair: bool, dry_run: bool, repo: Option<&str>) -> anyhow::Result<()> {
    let url = format!("{}/admin/scrub", server.trim_end_matches('/'));
    let mut params = vec![
        ("repair", (repair && !dry_run).to_string()),
        ("dry_run", dry_run.to_string()),
    ];
    params.extend(repo.map(|r| ("repo", r.to_string())));
    let report = post(&url, &params)?;
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    let mut remaining = 0;
    for p in &problems {
        let affected: Vec<&str> = p["affected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let scope = if p["cached"].as_bool() == Some(true) {
            "cached"
        } else {
            "HOSTED"
        };
        println!(
            "DAMAGE ({scope}) {} {}: {}; affects {}",
            p["kind"].as_str().unwrap_or("?"),
            p["subject"].as_str().unwrap_or("?"),
            p["detail"].as_str().unwrap_or(""),
            if affected.is_empty() {
                "nothing tagged".to_string()
            } else {
                affected.join(", ")
            }
        );
        match p["repaired"].as_str() {
            Some(done) => println!("  repair: {done}"),
            None => remaining += 1,
        }
        if p["repaired"]
            .as_str()
            .is_some_and(|d| d.contains("hosted damage") || d.contains("could not"))
        {
            remaining += 1;
        }
    }
    println!(
        "scrub: {} blobs ({} bytes re-hashed), {} references, {} tags checked; {} problems{}",
        report["blobs_checked"],
        report["bytes_hashed"],
        report["references_checked"],
        report["tags_checked"],
        problems.len(),
        if report["repair"].as_bool() == Some(true) {
            ", repair ran"
        } else {
            ""
        }
    );
    if remaining > 0 {
        anyhow::bail!("{remaining} problems remain");
    }
    Ok(())
}
