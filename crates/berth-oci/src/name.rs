//! Repository names, tags and references, validated against the distribution spec grammar.
//!
//! name      = component ("/" component)*
//! component = [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag       = [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//!
//! A component can never be `.` or `..`, nor contain `/` or `\`, so a name used as a
//! path cannot leave the directory it is joined to.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted (CNCF distribution uses the same bound).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty")]
    EmptyName,
    #[error("repository name is {0} characters long; at most 255 are allowed")]
    NameTooLong(usize),
    #[error(
        "repository name {0:?} is invalid: each '/'-separated component must be lowercase letters and digits, \
         separated by '.', '_', '__' or dashes, and must start and end with a letter or digit"
    )]
    BadName(String),
    #[error(
        "tag {0:?} is invalid: a tag is 1 to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    BadTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-"; must be followed by alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::EmptyName);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong(s.len()));
        }
        if !s.split('/').all(valid_component) {
            return Err(NameError::BadName(s.to_string()));
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::BadTag(s.to_string()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The `<reference>` of `/v2/<name>/manifests/<reference>`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => fmt::Display::fmt(t, f),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "library/nginx", "a.b_c__d---e/f0", "x/y/z", "my-org/my.repo"] {
            assert!(good.parse::<RepoName>().is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a/./b", "a___b", "-a", "a-", "a..b", "a\\b", "a b",
            "a%2fb", ".hidden",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            "a".repeat(256).parse::<RepoName>(),
            Err(NameError::NameTooLong(256))
        );
    }

    #[test]
    fn tags_and_references() {
        for good in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(good.parse::<Tag>().is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
        assert!(matches!("latest".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }
}
