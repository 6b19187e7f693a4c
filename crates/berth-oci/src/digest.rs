//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. The hex part is lowercase and of the algorithm's length, so it is
/// safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form <algorithm>:<hex>")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} has a hex part of the wrong length or with characters other than 0-9a-f")]
    BadHex(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = DigestHasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish()
    }

    /// The digest of `bytes` with this digest's algorithm.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        let mut h = DigestHasher::new(self.algorithm);
        h.update(bytes);
        h.finish() == *self
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "" => return Err(DigestError::Malformed(s.to_string())),
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_string())),
        };
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadHex(s.to_string()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing for either algorithm; the state can be cloned, so an upload can be
/// hashed across several requests.
///
/// Two kinds. The default ([`DigestHasher::new`]) is ring's: its assembly (AVX2/SSSE3, or
/// SHA extensions where the CPU has them) hashes about twice as fast as the pure-Rust
/// `sha2` on CPUs without SHA extensions, and hashing bounds upload speed. Its state cannot
/// leave the process. The resumable kind ([`DigestHasher::resumable`]) is `sha2`'s, whose
/// state can be saved between requests ([`DigestHasher::save`]) and restored by another
/// process ([`DigestHasher::restore`]): what replicas sharing one database need, so that a
/// chunk arriving at another replica does not re-read the whole upload.
#[derive(Clone)]
pub struct DigestHasher {
    algorithm: Algorithm,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Ring(ring::digest::Context),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// First byte of a saved state: bumped whenever its layout changes (a new major version of
/// `sha2`, whose serialized state is stable only within one), so an old state is refused
/// and the upload re-hashed instead of resumed from garbage.
const STATE_FORMAT: u8 = 1;

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        let alg = match algorithm {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
        };
        DigestHasher {
            algorithm,
            kind: Kind::Ring(ring::digest::Context::new(alg)),
        }
    }

    /// A hasher whose state [`DigestHasher::save`] can write out (slower than
    /// [`DigestHasher::new`] on CPUs without SHA extensions).
    pub fn resumable(algorithm: Algorithm) -> Self {
        use sha2::Digest as _;
        let kind = match algorithm {
            Algorithm::Sha256 => Kind::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Kind::Sha512(sha2::Sha512::new()),
        };
        DigestHasher { algorithm, kind }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether [`DigestHasher::save`] can write this hasher's state out.
    pub fn is_resumable(&self) -> bool {
        !matches!(self.kind, Kind::Ring(_))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match &mut self.kind {
            Kind::Ring(c) => c.update(bytes),
            Kind::Sha256(h) => h.update(bytes),
            Kind::Sha512(h) => h.update(bytes),
        }
    }

    /// The state so far, for [`DigestHasher::restore`]; `None` for ring's kind. The bytes
    /// say nothing about how many bytes were hashed: whoever keeps them keeps that too.
    pub fn save(&self) -> Option<Vec<u8>> {
        use sha2::digest::common::hazmat::SerializableState;
        let (tag, state) = match &self.kind {
            Kind::Ring(_) => return None,
            Kind::Sha256(h) => (b'2', h.serialize().to_vec()),
            Kind::Sha512(h) => (b'5', h.serialize().to_vec()),
        };
        let mut out = Vec::with_capacity(2 + state.len());
        out.extend_from_slice(&[STATE_FORMAT, tag]);
        out.extend_from_slice(&state);
        Some(out)
    }

    /// A resumable hasher in the state [`DigestHasher::save`] wrote; `None` when the bytes
    /// are not a saved state of `algorithm` in this version's format.
    pub fn restore(algorithm: Algorithm, saved: &[u8]) -> Option<Self> {
        use sha2::digest::common::hazmat::SerializableState;
        let (&[format, tag], state) = saved.split_first_chunk::<2>()?;
        if format != STATE_FORMAT {
            return None;
        }
        let kind = match (algorithm, tag) {
            (Algorithm::Sha256, b'2') => {
                Kind::Sha256(sha2::Sha256::deserialize(state.try_into().ok()?).ok()?)
            }
            (Algorithm::Sha512, b'5') => {
                Kind::Sha512(sha2::Sha512::deserialize(state.try_into().ok()?).ok()?)
            }
            _ => return None,
        };
        Some(DigestHasher { algorithm, kind })
    }

    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        let hex = match self.kind {
            Kind::Ring(c) => hex::encode(c.finish().as_ref()),
            Kind::Sha256(h) => hex::encode(h.finalize()),
            Kind::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest {
            algorithm: self.algorithm,
            hex,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d: Digest = empty.parse().unwrap();
        assert_eq!(d.to_string(), empty);
        assert_eq!(Digest::sha256_of(b""), d);
        assert!(d.matches(b""));
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} should be rejected");
        }
        let mut h = DigestHasher::new(Algorithm::Sha512);
        h.update(b"abc");
        let d512 = h.finish();
        assert_eq!(d512.hex().len(), 128);
        assert_eq!(d512.to_string().parse::<Digest>().unwrap(), d512);
    }

    /// A state saved anywhere in the stream (inside a block, at a block boundary, before
    /// any byte) and restored gives the digest of hashing everything in one pass, which is
    /// ring's digest.
    #[test]
    fn saved_state_resumes_to_the_same_digest() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut one_pass = DigestHasher::new(alg);
            one_pass.update(&data);
            let expected = one_pass.finish();
            for cut in [0, 1, 63, 64, 65, 127, 128, 129, 1000, 4999, 5000] {
                let mut first = DigestHasher::resumable(alg);
                assert!(first.is_resumable());
                first.update(&data[..cut]);
                let saved = first.save().expect("a resumable hasher saves");
                let mut second = DigestHasher::restore(alg, &saved).expect("its own state restores");
                second.update(&data[cut..]);
                assert_eq!(second.finish(), expected, "{alg:?} cut at {cut}");
            }
            assert!(DigestHasher::new(alg).save().is_none());
        }
        let saved = DigestHasher::resumable(Algorithm::Sha256).save().unwrap();
        assert!(DigestHasher::restore(Algorithm::Sha512, &saved).is_none());
        assert!(DigestHasher::restore(Algorithm::Sha256, &saved[..saved.len() - 1]).is_none());
        assert!(DigestHasher::restore(Algorithm::Sha256, &[]).is_none());
        let mut other_format = saved.clone();
        other_format[0] ^= 0xff;
        assert!(DigestHasher::restore(Algorithm::Sha256, &other_format).is_none());
    }
}
