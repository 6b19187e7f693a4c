//! What `berth copy` and `berth mirror` are pointed at: a registry reference or a local
//! OCI layout or archive.

use std::path::PathBuf;

use berth_oci::{Digest, RepoName, Tag};

/// One side of a copy, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `host[:port]/repo[:tag][@digest]` (a `docker://` prefix is tolerated).
    Registry(RegistryRef),
    /// `oci:DIR[:tag]`: an OCI image layout directory.
    OciDir { path: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:tag]`: a tar of an OCI image layout.
    OciArchive { path: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:ref]`: what `docker save` writes.
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]` as given.
    pub host: String,
    /// localhost or a loopback address: plain HTTP.
    pub loopback: bool,
    pub repo: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// What to ask the source for: the digest when given (as docker does for
    /// `repo:tag@digest`), else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".into(),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Registry(r) => {
                write!(f, "{}/{}", r.host, r.repo)?;
                if let Some(t) = &r.tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = &r.digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::OciDir { path, tag } => write!(f, "oci:{}{}", path.display(), suffix(tag)),
            ImageRef::OciArchive { path, tag } => write!(f, "oci-archive:{}{}", path.display(), suffix(tag)),
            ImageRef::DockerArchive { path, reference } => {
                write!(f, "docker-archive:{}{}", path.display(), suffix(reference))
            }
        }
    }
}

fn suffix(tag: &Option<String>) -> String {
    tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
}

const FORM: &str = "expected host[:port]/repo[:tag|@sha256:...], oci:DIR[:tag], oci-archive:FILE[:tag] or docker-archive:FILE";

impl std::str::FromStr for ImageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<ImageRef, String> {
        for (prefix, kind) in [("oci:", 0), ("oci-archive:", 1), ("docker-archive:", 2)] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (path, tag) = split_path_tag(rest);
                if path.is_empty() {
                    return Err(format!("{s:?}: no path after {prefix}"));
                }
                let path = PathBuf::from(path);
                return Ok(match kind {
                    0 => ImageRef::OciDir { path, tag },
                    1 => ImageRef::OciArchive { path, tag },
                    _ => ImageRef::DockerArchive { path, reference: tag },
                });
            }
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        parse_registry(rest)
            .map(ImageRef::Registry)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

/// `path[:tag]`: the tag is what follows the last `:` when it holds no `/` (so
/// `/tmp/a:b/c` is a path).
fn split_path_tag(s: &str) -> (&str, Option<String>) {
    match s.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() && !path.is_empty() => {
            (path, Some(tag.to_string()))
        }
        _ => (s, None),
    }
}

/// `host[:port]/repo[:tag][@digest]`. The first component must be a registry host.
pub fn parse_registry(s: &str) -> Result<RegistryRef, String> {
    let (host, rest) = s.split_once('/').ok_or_else(|| FORM.to_string())?;
    let (host, loopback) = parse_host(host)?;
    let (name, digest) = match rest.split_once('@') {
        Some((name, d)) => (name, Some(d.parse::<Digest>().map_err(|e| e.to_string())?)),
        None => (rest, None),
    };
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) => (n, Some(t.parse::<Tag>().map_err(|e| e.to_string())?)),
        None => (name, None),
    };
    let repo: RepoName = name.parse().map_err(|e| format!("{e}"))?;
    Ok(RegistryRef {
        host,
        loopback,
        repo,
        tag,
        digest,
    })
}

/// `host[:port]` of an image reference: checked, and whether it is a loopback host (plain
/// HTTP). The host must look like one (a '.', a ':port', or localhost), so `team/app` is
/// not mistaken for host `team`.
pub fn parse_host(host: &str) -> Result<(String, bool), String> {
    let loopback = check_host_port(host)?;
    if !(host.contains('.') || host.contains(':') || host.eq_ignore_ascii_case("localhost")) {
        return Err(format!(
            "{host:?} is not a registry host (a host has a '.' or a ':port', or is localhost); {FORM}"
        ));
    }
    Ok((host.to_string(), loopback))
}

/// `host[:port]` alone (no user, path, query or fragment): whether it is a loopback host.
pub fn check_host_port(host: &str) -> Result<bool, String> {
    let url =
        reqwest::Url::parse(&format!("http://{host}")).map_err(|e| format!("registry host {host:?}: {e}"))?;
    let host_name = url.host_str().unwrap_or_default();
    if host_name.is_empty()
        || url.path() != "/"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!("registry host {host:?} is not host[:port]"));
    }
    Ok(host_name.eq_ignore_ascii_case("localhost")
        || host_name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match input.parse::<ImageRef>() {
            Ok(ImageRef::Registry(r)) => format!(
                "registry {} {} loopback={} tag={:?} digest={}",
                r.host,
                r.repo,
                r.loopback,
                r.tag.map(|t| t.to_string()),
                r.digest.map(|d| d.to_string()).unwrap_or_default()
            ),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error: {e}"),
        };
        assert!(
            got.contains(expect),
            "{input:?} parsed to {got}, expected {expect}"
        );
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references() {
        check(
            "127.0.0.1:5000/a/b:v1",
            "registry 127.0.0.1:5000 a/b loopback=true tag=Some(\"v1\")",
        );
        check(
            "docker://localhost/a",
            "registry localhost a loopback=true tag=None",
        );
        check("registry.example/team/app", "loopback=false tag=None");
        check(
            &format!("[::1]:5000/a@{D}"),
            &format!("loopback=true tag=None digest={D}"),
        );
        check(
            &format!("r.example/a:v1@{D}"),
            &format!("tag=Some(\"v1\") digest={D}"),
        );
        check(
            "oci:/tmp/layout:v1",
            "OciDir { path: \"/tmp/layout\", tag: Some(\"v1\") }",
        );
        check("oci:/tmp/layout", "OciDir { path: \"/tmp/layout\", tag: None }");
        check("oci:/tmp/a:b/c", "OciDir { path: \"/tmp/a:b/c\", tag: None }");
        check(
            "oci-archive:x.tar:t",
            "OciArchive { path: \"x.tar\", tag: Some(\"t\") }",
        );
        check(
            "docker-archive:x.tar",
            "DockerArchive { path: \"x.tar\", reference: None }",
        );
        check("alpine:3", "error");
        check("library/alpine", "is not a registry host");
        check("r.example/A", "error");
        check("r.example/a:-bad", "error");
        check("oci:", "error: \"oci:\": no path");
        check("http://u:p@x/a", "error");
    }
}
