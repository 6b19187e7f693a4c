//! What templates print: sizes, times and digests formatted in Rust, so templates only
//! place strings (askama escapes each one).

use std::time::{SystemTime, UNIX_EPOCH};

/// The frame of every page: title, navigation, who is signed in.
pub(crate) struct Chrome {
    pub title: String,
    /// `overview`, `repos`, `cache`, `health` (the highlighted tab), or empty.
    pub nav: &'static str,
    pub user: Option<String>,
    /// Access control is on (the "sign in" link makes sense).
    pub sign_in: bool,
}

impl Chrome {
    pub(crate) fn new(title: impl Into<String>, nav: &'static str, v: &super::Viewer) -> Chrome {
        Chrome {
            title: title.into(),
            nav,
            user: v.user().map(str::to_string),
            sign_in: v.access_control(),
        }
    }

    pub(crate) fn bare(title: &str) -> Chrome {
        Chrome {
            title: title.to_string(),
            nav: "",
            user: None,
            sign_in: false,
        }
    }
}

/// A byte count for people, with the exact number kept for the title attribute.
#[derive(Clone, Debug)]
pub(crate) struct Size {
    pub human: String,
    pub exact: u64,
}

pub(crate) fn size(n: u64) -> Size {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let human = if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    };
    Size { human, exact: n }
}

/// A point in time: "5 min ago" and the exact UTC time.
#[derive(Clone, Debug)]
pub(crate) struct When {
    pub ago: String,
    pub exact: String,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

pub(crate) fn when(t: Option<i64>) -> When {
    match t {
        None => When {
            ago: "never".into(),
            exact: String::new(),
        },
        Some(t) => When {
            ago: format!("{} ago", age(now() - t)),
            exact: humantime::format_rfc3339_seconds(
                UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
            )
            .to_string(),
        },
    }
}

/// `sha256:0123456789ab` (12 hex digits), for tables; the full digest goes in titles,
/// links and copy buttons.
pub(crate) fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_string(),
    }
}

/// Percent-encodes what goes into a query string or path segment of a link.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Escapes text placed into SVG built outside a template.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A short label for a media type (`OCI index`, `Docker manifest`), the full type in titles.
pub(crate) fn kind_of_media(mt: &str) -> &'static str {
    match mt {
        "application/vnd.oci.image.index.v1+json" => "OCI index",
        "application/vnd.oci.image.manifest.v1+json" => "OCI manifest",
        "application/vnd.docker.distribution.manifest.list.v2+json" => "Docker list",
        "application/vnd.docker.distribution.manifest.v2+json" => "Docker manifest",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(0).human, "0 B");
        assert_eq!(size(1023).human, "1023 B");
        assert_eq!(size(1536).human, "1.5 KiB");
        assert_eq!(size(20 << 20).human, "20 MiB");
    }

    #[test]
    fn links_and_svg_text_are_escaped() {
        assert_eq!(enc("a b&c"), "a%20b%26c");
        assert_eq!(esc("<x y=\"1\">"), "&lt;x y=&quot;1&quot;&gt;");
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab");
    }
}
