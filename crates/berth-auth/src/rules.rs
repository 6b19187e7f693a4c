//! Access rules: which actions a principal may take on a repository.
//!
//! The first rule whose pattern (and kind) matches the repository decides; when rules
//! exist and none matches, nothing is allowed. A principal gets the anonymous clause's
//! actions, plus, when signed in, the authenticated clause's and those of its user name
//! and its groups.

use std::collections::BTreeMap;
use std::fmt;

use berth_oci::Pattern;

/// One thing a client can do to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(0b111);

    pub fn of(actions: &[Action]) -> Actions {
        Actions(actions.iter().fold(0, |m, a| m | a.bit()))
    }

    /// Parses a list such as `["pull", "push"]`; `*` means every action.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Actions, String> {
        let mut set = Actions::NONE;
        for item in items {
            let item = item.as_ref();
            if item == "*" {
                return Ok(Actions::ALL);
            }
            let a = Action::parse(item).ok_or_else(|| {
                format!("{item:?} is not an action; expected \"pull\", \"push\" or \"delete\"")
            })?;
            set = set.with(a);
        }
        Ok(set)
    }

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a.bit())
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn union(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }

    pub fn intersect(self, o: Actions) -> Actions {
        Actions(self.0 & o.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Action::as_str).collect()
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Whether a repository is pushed to berth or cached from an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoKind {
    Hosted,
    Cached,
}

/// Which repositories a rule covers, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFilter {
    Any,
    Hosted,
    Cached,
}

impl KindFilter {
    pub fn parse(s: &str) -> Result<KindFilter, String> {
        match s {
            "any" => Ok(KindFilter::Any),
            "hosted" => Ok(KindFilter::Hosted),
            "cached" => Ok(KindFilter::Cached),
            _ => Err(format!(
                "{s:?} is not a kind; expected \"any\", \"hosted\" or \"cached\""
            )),
        }
    }

    fn matches(self, k: RepoKind) -> bool {
        matches!(
            (self, k),
            (KindFilter::Any, _)
                | (KindFilter::Hosted, RepoKind::Hosted)
                | (KindFilter::Cached, RepoKind::Cached)
        )
    }
}

/// One `[[access]]` entry.
#[derive(Clone, Debug)]
pub struct Rule {
    pub repository: Pattern,
    pub kind: KindFilter,
    pub anonymous: Actions,
    pub authenticated: Actions,
    pub users: BTreeMap<String, Actions>,
    pub groups: BTreeMap<String, Actions>,
}

/// Who is asking, as far as rules care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject<'a> {
    Anonymous,
    User { name: &'a str, groups: &'a [String] },
}

impl Rule {
    fn grants(&self, who: &Subject<'_>) -> Actions {
        let mut set = self.anonymous;
        if let Subject::User { name, groups } = who {
            set = set.union(self.authenticated);
            if let Some(a) = self.users.get(*name) {
                set = set.union(*a);
            }
            for g in groups.iter() {
                if let Some(a) = self.groups.get(g) {
                    set = set.union(*a);
                }
            }
        }
        set
    }
}

/// The rule list; the defaults apply when the configuration names none.
#[derive(Clone, Debug)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Rules {
        if rules.is_empty() {
            Rules::defaults()
        } else {
            Rules(rules)
        }
    }

    /// Anyone may pull from the caches; signed-in users may also delete cache entries,
    /// and may pull, push and delete in hosted repositories.
    pub fn defaults() -> Rules {
        let all = Pattern::parse("**").expect("a valid glob");
        Rules(vec![
            Rule {
                repository: all.clone(),
                kind: KindFilter::Cached,
                anonymous: Actions::of(&[Action::Pull]),
                authenticated: Actions::of(&[Action::Pull, Action::Delete]),
                users: BTreeMap::new(),
                groups: BTreeMap::new(),
            },
            Rule {
                repository: all,
                kind: KindFilter::Hosted,
                anonymous: Actions::NONE,
                authenticated: Actions::ALL,
                users: BTreeMap::new(),
                groups: BTreeMap::new(),
            },
        ])
    }

    /// What `who` may do to `repo`: the first matching rule decides; no match, nothing.
    pub fn allowed(&self, who: &Subject<'_>, repo: &str, kind: RepoKind) -> Actions {
        self.0
            .iter()
            .find(|r| r.kind.matches(kind) && r.repository.matches(repo))
            .map(|r| r.grants(who))
            .unwrap_or(Actions::NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repo: &str, anon: &[&str], authd: &[&str], users: &[(&str, &[&str])]) -> Rule {
        Rule {
            repository: Pattern::parse(repo).unwrap(),
            kind: KindFilter::Any,
            anonymous: Actions::parse(anon).unwrap(),
            authenticated: Actions::parse(authd).unwrap(),
            users: users
                .iter()
                .map(|(u, a)| (u.to_string(), Actions::parse(a).unwrap()))
                .collect(),
            groups: [("admins".to_string(), Actions::ALL)].into(),
        }
    }

    #[test]
    fn first_match_wins_and_default_deny() {
        let rules = Rules::new(vec![
            rule("public/**", &["pull"], &[], &[]),
            rule("team/**", &[], &["pull"], &[("alice", &["push"])]),
        ]);
        let anon = Subject::Anonymous;
        let bob = Subject::User {
            name: "bob",
            groups: &[],
        };
        let alice = Subject::User {
            name: "alice",
            groups: &[],
        };
        let groups = ["admins".to_string()];
        let carol = Subject::User {
            name: "carol",
            groups: &groups,
        };
        let h = RepoKind::Hosted;
        assert_eq!(rules.allowed(&anon, "public/x", h), Actions::of(&[Action::Pull]));
        assert_eq!(rules.allowed(&bob, "public/x", h), Actions::of(&[Action::Pull]));
        assert_eq!(rules.allowed(&anon, "team/x", h), Actions::NONE);
        assert_eq!(rules.allowed(&bob, "team/x", h), Actions::of(&[Action::Pull]));
        assert_eq!(
            rules.allowed(&alice, "team/x", h),
            Actions::of(&[Action::Pull, Action::Push])
        );
        assert_eq!(rules.allowed(&carol, "team/x", h), Actions::ALL);
        assert_eq!(rules.allowed(&carol, "elsewhere", h), Actions::NONE);
    }

    #[test]
    fn defaults_split_hosted_and_cached() {
        let rules = Rules::new(Vec::new());
        let anon = Subject::Anonymous;
        let bob = Subject::User {
            name: "bob",
            groups: &[],
        };
        assert_eq!(
            rules.allowed(&anon, "docker.io/library/alpine", RepoKind::Cached),
            Actions::of(&[Action::Pull])
        );
        assert_eq!(rules.allowed(&anon, "team/app", RepoKind::Hosted), Actions::NONE);
        assert_eq!(rules.allowed(&bob, "team/app", RepoKind::Hosted), Actions::ALL);
        assert!(
            !rules
                .allowed(&bob, "docker.io/x", RepoKind::Cached)
                .contains(Action::Push)
        );
    }

    #[test]
    fn action_lists() {
        assert_eq!(Actions::parse(&["*"]).unwrap(), Actions::ALL);
        assert!(
            Actions::parse(&["pull", "write"])
                .unwrap_err()
                .contains("\"write\"")
        );
        assert_eq!(
            Actions::of(&[Action::Push, Action::Pull]).to_string(),
            "pull,push"
        );
    }
}
