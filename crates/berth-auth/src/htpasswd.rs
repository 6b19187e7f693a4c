//! The htpasswd file: `name:bcrypt-hash` lines, as `htpasswd -B` writes them.
//!
//! Only bcrypt is accepted: the other formats htpasswd can write (MD5-crypt `$apr1$`,
//! `{SHA}`, crypt(3), plain text) are too cheap to brute-force, so a file holding one
//! is refused with the line and the user named.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::AuthError;

/// The users of one htpasswd file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: BTreeMap<String, String>,
}

/// A valid bcrypt hash no password matches in practice, checked for unknown users so
/// that a wrong name costs as much time as a wrong password.
const DUMMY_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

impl Htpasswd {
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n}: expected NAME:HASH"))?;
            if name.is_empty() {
                return Err(format!("line {n}: the user name is empty"));
            }
            let kind = if hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$") {
                None
            } else if hash.starts_with("$apr1$") {
                Some("an MD5 ($apr1$)")
            } else if hash.starts_with("{SHA}") {
                Some("a SHA-1 ({SHA})")
            } else if hash.starts_with("$1$") || hash.starts_with("$5$") || hash.starts_with("$6$") {
                Some("a crypt(3)")
            } else {
                Some("an unrecognised or plain-text")
            };
            if let Some(kind) = kind {
                return Err(format!(
                    "line {n}: user {name:?} has {kind} password hash; berth accepts bcrypt only \
                     (create it with `berth users add` or `htpasswd -B`)"
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!("line {n}: user {name:?} has a malformed bcrypt hash"));
            }
            if users.insert(name.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {n}: user {name:?} appears twice"));
            }
        }
        Ok(Htpasswd { users })
    }

    pub fn load(path: &Path) -> Result<Htpasswd, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Config(format!("reading htpasswd file {}: {e}", path.display())))?;
        Htpasswd::parse(&text)
            .map_err(|e| AuthError::Config(format!("htpasswd file {}: {e}", path.display())))
    }

    /// Checks a password; slow on purpose (bcrypt), so call it off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.users.get(name) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Adds or replaces a user with a bcrypt hash of `password` at `cost`.
    pub fn set(&mut self, name: &str, password: &str, cost: u32) -> Result<(), String> {
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(format!(
                "{name:?} is not a user name: it must be non-empty, with no ':' or spaces"
            ));
        }
        if password.is_empty() {
            return Err("the password is empty".into());
        }
        let hash = bcrypt::hash(password, cost).map_err(|e| format!("hashing the password: {e}"))?;
        self.users.insert(name.to_string(), hash);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.users.remove(name).is_some()
    }

    pub fn to_text(&self) -> String {
        self.users.iter().map(|(n, h)| format!("{n}:{h}\n")).collect()
    }

    /// Writes the file atomically (temporary file, fsync, rename), readable by its owner only.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("htpasswd"),
            std::process::id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(self.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_only_with_clear_errors() {
        let mut h = Htpasswd::default();
        h.set("alice", "s3cret", 4).unwrap();
        let parsed = Htpasswd::parse(&format!("# users\n\n{}", h.to_text())).unwrap();
        assert!(parsed.verify("alice", "s3cret"));
        assert!(!parsed.verify("alice", "wrong"));
        assert!(!parsed.verify("mallory", "s3cret"));
        let md5 = Htpasswd::parse("bob:$apr1$abc$defghijklmnopqrstuv\n").unwrap_err();
        assert!(
            md5.contains("line 1") && md5.contains("\"bob\"") && md5.contains("bcrypt only"),
            "{md5}"
        );
        assert!(Htpasswd::parse("carol:{SHA}abc=").unwrap_err().contains("SHA-1"));
        assert!(Htpasswd::parse("dave:plain").unwrap_err().contains("plain-text"));
        assert!(Htpasswd::parse("nocolon").unwrap_err().contains("NAME:HASH"));
        assert!(
            Htpasswd::parse("eve:$2y$10$short")
                .unwrap_err()
                .contains("malformed")
        );
        assert!(h.set("a:b", "x", 4).is_err() && h.set("x", "", 4).is_err());
    }

    #[test]
    fn save_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let mut h = Htpasswd::default();
        h.set("alice", "pw", 4).unwrap();
        h.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = Htpasswd::load(&path).unwrap();
        assert_eq!(back, h);
        assert!(h.remove("alice") && !h.remove("alice"));
    }
}
