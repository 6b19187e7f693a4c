//! Credentials for one registry: a flag, an environment variable, or the auth files
//! docker and podman write.

use std::path::PathBuf;

use base64::Engine as _;

/// `USER:PASS` as given on the command line or in the environment.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err("credentials must be USER:PASSWORD".into()),
    }
}

/// The credentials for `host`: `flag` (`USER:PASS`), else the environment variable
/// `env_var`, else the first auth file that names the host: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`,
/// `~/.docker/config.json`. `None`: anonymous.
pub fn resolve(host: &str, flag: Option<&str>, env_var: &str) -> Result<Option<(String, String)>, String> {
    if let Some(f) = flag {
        return parse_pair(f).map(Some);
    }
    if let Ok(v) = std::env::var(env_var)
        && !v.is_empty()
    {
        return parse_pair(&v).map(Some).map_err(|e| format!("{env_var}: {e}"));
    }
    for file in auth_files() {
        let Ok(text) = std::fs::read(&file) else { continue };
        match from_auth_file(&text, host) {
            Ok(Some(c)) => return Ok(Some(c)),
            Ok(None) => {}
            Err(e) => return Err(format!("{}: {e}", file.display())),
        }
    }
    Ok(None)
}

fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut out = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        out.push(f);
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        out.push(d.join("containers/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        out.push(d.join("config.json"));
    }
    if let Some(h) = env("HOME") {
        out.push(h.join(".docker/config.json"));
    }
    out
}

/// `auths.<host>.auth` (base64 `USER:PASS`) of a docker `config.json` or containers
/// `auth.json`; keys may carry a scheme and a path (`https://host/v1/`).
pub fn from_auth_file(text: &[u8], host: &str) -> Result<Option<(String, String)>, String> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
    }
    let file: File = serde_json::from_slice(text).map_err(|e| format!("not a JSON auth file: {e}"))?;
    for (key, entry) in file.auths {
        let k = key.split_once("://").map_or(key.as_str(), |(_, r)| r);
        let k = k.split('/').next().unwrap_or_default();
        if !k.eq_ignore_ascii_case(host) {
            continue;
        }
        let Some(auth) = entry.auth.filter(|a| !a.is_empty()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?;
        let pair = String::from_utf8(decoded).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
        return parse_pair(&pair)
            .map(Some)
            .map_err(|e| format!("auths.{key}.auth: {e}"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_by_host() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let text = format!(
            r#"{{"auths":{{"https://reg.example/v1/":{{"auth":"{b64}"}},"127.0.0.1:5000":{{"auth":"{b64}"}},"other":{{}}}}}}"#
        );
        let want = Some(("alice".to_string(), "s3:cret".to_string()));
        assert_eq!(from_auth_file(text.as_bytes(), "reg.example").unwrap(), want);
        assert_eq!(from_auth_file(text.as_bytes(), "127.0.0.1:5000").unwrap(), want);
        assert_eq!(from_auth_file(text.as_bytes(), "127.0.0.1:5001").unwrap(), None);
        assert_eq!(from_auth_file(text.as_bytes(), "other").unwrap(), None);
        assert!(from_auth_file(b"{", "x").is_err());
        assert_eq!(parse_pair("u:").unwrap(), ("u".into(), String::new()));
        assert!(parse_pair(":p").is_err());
    }
}
