//! Repository and tag patterns, shared by retention rules and access rules.

/// A repository or tag pattern: a glob (`*` any characters but `/`, `**` any characters,
/// `?` one character) or, written `/.../`, a regular expression.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn parse(s: &str) -> std::result::Result<Pattern, String> {
        let body = match s.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
            Some(re) if !re.is_empty() => re.to_string(),
            _ => {
                let mut re = String::from("^");
                let mut chars = s.chars().peekable();
                while let Some(c) = chars.next() {
                    match c {
                        '*' if chars.peek() == Some(&'*') => {
                            chars.next();
                            re.push_str(".*");
                        }
                        '*' => re.push_str("[^/]*"),
                        '?' => re.push_str("[^/]"),
                        c => re.push_str(&regex::escape(&c.to_string())),
                    }
                }
                re.push('$');
                re
            }
        };
        let regex = regex::Regex::new(&body).map_err(|e| format!("{s:?} is not a valid pattern: {e}"))?;
        Ok(Pattern {
            source: s.to_string(),
            regex,
        })
    }

    pub fn matches(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn globs_and_regexes() {
        let p = Pattern::parse("team/*").unwrap();
        assert!(p.matches("team/a") && !p.matches("team/a/b") && !p.matches("other/team/a"));
        assert!(Pattern::parse("team/**").unwrap().matches("team/a/b"));
        assert!(Pattern::parse("v?").unwrap().matches("v1"));
        assert!(Pattern::parse("/^v[0-9]+$/").unwrap().matches("v12"));
        assert!(Pattern::parse("/(/").is_err());
    }
}
