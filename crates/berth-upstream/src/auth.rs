//! The pieces of the token dance that need no network: `WWW-Authenticate` challenges, the
//! token server's answer, and the per-scope token cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One challenge of a `WWW-Authenticate` header: a scheme (lowercased) and its parameters
/// (names lowercased, values unquoted).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 9110 11.6.1): one or more challenges separated by
/// commas, each `scheme [token68 | param=value, ...]`, values tokens or quoted strings with
/// `\` escapes (so a quoted scope may hold commas). Malformed tails are dropped, not fatal:
/// whatever parsed before them is still usable.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip_ws_and_commas();
        let Some(scheme) = p.token() else { break };
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        // Parameters follow until the next thing that is a bare token not followed by '='
        // (the next challenge's scheme).
        loop {
            p.skip_ws_and_commas();
            let save = p.i;
            let Some(name) = p.token() else { break };
            p.skip_ws();
            if !p.eat(b'=') {
                p.i = save; // a new scheme
                break;
            }
            p.skip_ws();
            if p.peek() == Some(b'=') || p.peek().is_none() || p.peek() == Some(b',') {
                // token68 such as `Basic abc==`, or `name=` with no value: skip it.
                while matches!(p.peek(), Some(b'=')) {
                    p.i += 1;
                }
                continue;
            }
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token()
            };
            match value {
                Some(v) => challenge.params.push((name.to_ascii_lowercase(), v)),
                None => {
                    out.push(challenge);
                    return out;
                }
            }
        }
        out.push(challenge);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// RFC 9110 `token` (plus `/` and `:`, which real realms and scopes use unquoted).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            let ok = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b);
            if !ok {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut v = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return Some(String::from_utf8_lossy(&v).into_owned()),
                b'\\' => {
                    let escaped = self.peek()?;
                    self.i += 1;
                    v.push(escaped);
                }
                _ => v.push(b),
            }
        }
        None // unterminated
    }
}

/// A token server's answer. Docker's spec names the field `token`, OAuth2 `access_token`;
/// servers send either or both.
#[derive(serde::Deserialize)]
pub(crate) struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Lifetime assumed when the token server names none (the distribution token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl TokenAnswer {
    /// The token and how long it lives.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token)?;
        if token.is_empty() {
            return None;
        }
        let lifetime = self
            .expires_in
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Some((token, lifetime))
    }
}

/// Bearer tokens by scope, each dropped a little before the token server said it expires
/// (a sixth of its lifetime, at most 30 s), so a request never leaves with a token that
/// dies on the way.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    token: String,
    use_until: Instant,
}

/// Beyond this many scopes, expired entries are swept on insert.
const SWEEP_ABOVE: usize = 256;

impl TokenCache {
    pub fn get(&self, scope: &str, now: Instant) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(scope)
            .filter(|c| now < c.use_until)
            .map(|c| c.token.clone())
    }

    pub fn put(&self, scope: &str, token: String, lifetime: Duration, now: Instant) {
        let margin = (lifetime / 6).min(Duration::from_secs(30));
        let use_until = now + (lifetime - margin);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= SWEEP_ABOVE {
            tokens.retain(|_, c| now < c.use_until);
        }
        tokens.insert(scope.to_string(), Cached { token, use_until });
    }

    pub fn forget(&self, scope: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, expect: &str) {
        let got = parse_challenges(header)
            .iter()
            .map(|c| {
                let params: Vec<String> = c.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}[{}]", c.scheme, params.join(" "))
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(got, expect, "parsing {header:?}");
    }

    #[test]
    fn challenges() {
        check(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/alpine:pull""#,
            "bearer[realm=https://auth.example/token service=registry.example scope=repository:library/alpine:pull]",
        );
        // Quoted commas, spaces around '=', escapes, unquoted values, case.
        check(
            r#"bearer Realm = "http://127.0.0.1:9/t" , scope="repository:a/b:pull,push", error=insufficient_scope, x="q\"uo\\te""#,
            r#"bearer[realm=http://127.0.0.1:9/t scope=repository:a/b:pull,push error=insufficient_scope x=q"uo\te]"#,
        );
        check(r#"Basic realm="Registry Realm""#, "basic[realm=Registry Realm]");
        // Several challenges in one header.
        check(
            r#"Basic realm="r", Bearer realm="https://t/", service="s""#,
            "basic[realm=r] bearer[realm=https://t/ service=s]",
        );
        // token68 and bare schemes.
        check("Negotiate abc123==, Basic realm=x", "negotiate[] basic[realm=x]");
        check("Basic", "basic[]");
        // Malformed: unterminated quote keeps what parsed before.
        check(
            r#"Bearer realm="https://t/",service="unterminated"#,
            "bearer[realm=https://t/]",
        );
        check("", "");
        check(" , ,", "");
    }

    #[test]
    fn token_answers() {
        let parse = |s: &str| serde_json::from_str::<TokenAnswer>(s).unwrap().into_token();
        assert_eq!(
            parse(r#"{"token":"a","expires_in":300}"#),
            Some(("a".into(), Duration::from_secs(300)))
        );
        assert_eq!(
            parse(r#"{"access_token":"b"}"#),
            Some(("b".into(), Duration::from_secs(60)))
        );
        assert_eq!(
            parse(r#"{"token":"","access_token":"c","expires_in":0}"#),
            Some(("c".into(), Duration::from_secs(60)))
        );
        assert_eq!(parse(r#"{"issued_at":"2024-01-01T00:00:00Z"}"#), None);
    }

    #[test]
    fn cache_expires_early() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        cache.put("repository:a:pull", "tok".into(), Duration::from_secs(60), t0);
        assert_eq!(cache.get("repository:a:pull", t0).as_deref(), Some("tok"));
        assert_eq!(cache.get("repository:b:pull", t0), None);
        assert!(
            cache
                .get("repository:a:pull", t0 + Duration::from_secs(49))
                .is_some()
        );
        assert!(
            cache
                .get("repository:a:pull", t0 + Duration::from_secs(50))
                .is_none()
        );
        cache.put("repository:a:pull", "long".into(), Duration::from_secs(3600), t0);
        assert!(
            cache
                .get("repository:a:pull", t0 + Duration::from_secs(3569))
                .is_some()
        );
        assert!(
            cache
                .get("repository:a:pull", t0 + Duration::from_secs(3570))
                .is_none()
        );
        cache.forget("repository:a:pull");
        assert_eq!(cache.get("repository:a:pull", t0), None);
    }
}
