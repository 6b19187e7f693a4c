//! Configuration: an embedded default file with a comment on every key, overridden key by
//! key by the user's TOML. Unknown keys and bad values are refused with their path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

/// The default configuration, as printed by `berth config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub uploads: Uploads,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_manifest_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    #[serde(deserialize_with = "duration")]
    pub expire_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub expire_interval: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "[::]:5000".parse().expect("valid address"),
            shutdown_timeout: Duration::from_secs(30),
            log: "info".into(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("./berth-data"),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 4 << 20,
        }
    }
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            expire_after: Duration::from_secs(24 * 3600),
            expire_interval: Duration::from_secs(600),
        }
    }
}

/// Durations are written the human way: "30s", "5m", "1h 30m", "7d".
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"30s\", \"5m\" or \"2h\": {e}"
        ))
    })
}

impl Config {
    /// Parses a configuration file's text; errors name the key and what it expects.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let de = toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // toml's own message carries the line and column; keep it after the key path.
            anyhow::anyhow!("{path}: {}", inner.message().trim())
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let m = self.limits.max_manifest_bytes;
        if !(1024..=64 << 20).contains(&m) {
            bail!("limits.max_manifest_bytes: {m} is out of range; expected 1024 to 67108864 bytes");
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            bail!("storage.data_dir: must not be empty");
        }
        for (key, d) in [
            ("server.shutdown_timeout", self.server.shutdown_timeout),
            ("uploads.expire_after", self.uploads.expire_after),
            ("uploads.expire_interval", self.uploads.expire_interval),
        ] {
            if d.is_zero() {
                bail!("{key}: must be longer than zero");
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.server.log) {
            bail!("server.log: {:?} is not a log filter: {e}", self.server.log);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_default() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_key_has_a_comment() {
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains(" = ") && !l.starts_with('#') {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "key without a comment: {l}"
                );
            }
        }
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err("[server]\nlisten = \"nope\"").starts_with("server.listen:"),
            "{}",
            err("[server]\nlisten = \"nope\"")
        );
        assert!(err("[server]\nlisen = \"[::]:1\"").contains("unknown field `lisen`"));
        assert!(err("[storage]\ndata_dir = 5").starts_with("storage.data_dir:"));
        assert!(err("[uploads]\nexpire_after = \"soon\"").starts_with("uploads.expire_after:"));
        assert!(err("[limits]\nmax_manifest_bytes = 10").starts_with("limits.max_manifest_bytes:"));
        assert!(err("[nope]\nx = 1").contains("unknown field `nope`"));
        assert!(err("[server]\nlog = \"[[[\"").starts_with("server.log:"));
    }
}

#[cfg(test)]
mod docs {
    /// Every key of the default configuration is in the configuration reference.
    #[test]
    fn reference_lists_every_key() {
        let reference = include_str!("../../../docs/reference/config.md");
        let mut table = "";
        for line in super::DEFAULT_TOML.lines() {
            let line = line.trim();
            if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = t;
            } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
                let path = format!("`{table}.{key}`");
                assert!(reference.contains(&path), "docs/reference/config.md lacks {path}");
            }
        }
    }
}
