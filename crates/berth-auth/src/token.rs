//! Registry tokens: short-lived JWTs (ES256) in the shape of the Docker token flow, each
//! naming its subject and the actions it grants per repository.
//!
//! The signing key is an ECDSA P-256 private key in a PEM file (PKCS#8 or SEC1, as
//! `openssl genpkey` or `openssl ecparam -genkey` write them). When none is configured,
//! berth generates one on first start and keeps it in the data directory, so tokens
//! survive restarts.

use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// Who issues the tokens (the `iss` claim).
pub const ISSUER: &str = "berth";

/// One grant in a token: a resource and the actions allowed on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

/// The key pair tokens are signed and checked with.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// A short fingerprint of the public key, sent as `kid`.
    kid: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Reads the key at `path`, or, when `generate` is set and the file does not exist,
    /// creates one there (mode 0600).
    pub fn load_or_generate(path: &Path, generate: bool) -> Result<TokenKeys, AuthError> {
        let shown = path.display();
        match std::fs::read(path) {
            Ok(pem) => {
                TokenKeys::from_pem(&pem).map_err(|e| AuthError::Config(format!("token key {shown}: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
                let pem = generate_pem().map_err(AuthError::Config)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| AuthError::Config(format!("creating {}: {e}", dir.display())))?;
                }
                write_private(path, pem.as_bytes())
                    .map_err(|e| AuthError::Config(format!("writing token key {shown}: {e}")))?;
                tracing::info!(path = %shown, "generated a token signing key");
                TokenKeys::from_pem(pem.as_bytes()).map_err(AuthError::Config)
            }
            Err(e) => Err(AuthError::Config(format!("reading token key {shown}: {e}"))),
        }
    }

    pub fn from_pem(pem: &[u8]) -> Result<TokenKeys, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key ({e}); expected an ECDSA P-256 key"))?;
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der())
            .map_err(|_| "not an ECDSA P-256 private key (ES256 needs one)".to_string())?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| "could not re-encode the key".to_string())?;
        let public = pair.public_key().as_ref().to_vec();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        Ok(TokenKeys {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            decoding: DecodingKey::from_ec_der(&public),
            kid,
        })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| AuthError::Internal(e.to_string()))
    }

    /// Checks signature, issuer, audience and time; the reason when it does not hold.
    pub fn verify(&self, token: &str, service: &str) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[service]);
        v.validate_nbf = true;
        v.leeway = 2;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    "the token was issued for another service".to_string()
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "the token's signature does not verify".to_string()
                }
                _ => format!("the token is not valid: {e}"),
            })
    }
}

fn generate_pem() -> Result<String, String> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| "could not generate a token signing key".to_string())?;
    let der = pair
        .private_key()
        .as_der()
        .map_err(|_| "could not encode the token signing key")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: "berth".into(),
            exp,
            nbf: 0,
            iat: 0,
            jti: "1".into(),
            access: vec![AccessEntry {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }],
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn generated_key_persists_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/token-key.pem");
        let keys = TokenKeys::load_or_generate(&path, true).unwrap();
        let again = TokenKeys::load_or_generate(&path, false).unwrap();
        assert_eq!(keys.kid, again.kid);
        let fresh = claims(now() + 60);
        let t = keys.sign(&fresh).unwrap();
        assert_eq!(again.verify(&t, "berth").unwrap(), fresh);
        assert!(again.verify(&t, "other").unwrap_err().contains("another service"));
        let old = keys.sign(&claims(now() - 3600)).unwrap();
        assert!(keys.verify(&old, "berth").unwrap_err().contains("expired"));
        let other = TokenKeys::load_or_generate(&dir.path().join("k2.pem"), true).unwrap();
        assert!(other.verify(&t, "berth").unwrap_err().contains("signature"));
        assert!(TokenKeys::load_or_generate(&dir.path().join("missing.pem"), false).is_err());
        assert!(
            TokenKeys::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
        );
    }
}
