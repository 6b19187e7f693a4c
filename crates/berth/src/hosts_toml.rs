//! `berth hosts-toml`: containerd mirror configuration for every configured upstream.
//!
//! containerd (with `config_path`, e.g. `/etc/containerd/certs.d`) reads
//! `<dir>/<registry host>/hosts.toml`; each file written here sends pulls of that
//! registry to berth first. containerd adds `?ns=<registry host>` to mirror requests,
//! which is how berth knows which upstream is meant.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::Config;

/// Writes one hosts.toml per upstream name and alias; returns the files written.
pub fn write(config: &Config, mirror: &str, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mirror = mirror.trim_end_matches('/');
    if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
        bail!("--mirror {mirror:?} must be a URL starting with http:// or https://");
    }
    if config.upstreams.is_empty() {
        bail!("the configuration has no [[upstream]]: nothing to mirror");
    }
    let mut written = Vec::new();
    for u in &config.upstreams {
        for host in std::iter::once(&u.name).chain(&u.aliases) {
            let dir = out.join(host);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join("hosts.toml");
            std::fs::write(&file, render(&u.url, mirror, host))
                .with_context(|| format!("writing {}", file.display()))?;
            written.push(file);
        }
    }
    Ok(written)
}

fn render(upstream_url: &str, mirror: &str, host: &str) -> String {
    format!(
        "# Written by `berth hosts-toml`: pull {host} images through berth at {mirror}.\n\
         # When berth does not answer, containerd falls back to the server below.\n\
         server = \"{upstream_url}\"\n\
         \n\
         [host.\"{mirror}\"]\n\
         \x20 capabilities = [\"pull\", \"resolve\"]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_name_and_alias() {
        let dir = std::env::temp_dir().join(format!("berth-hosts-{}", std::process::id()));
        let files = write(&Config::default(), "http://mirror.local:5000/", &dir).unwrap();
        assert_eq!(files.len(), 7, "{files:?}");
        let text = std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = &parsed["host"]["http://mirror.local:5000"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        assert!(write(&Config::default(), "mirror.local", &dir).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
