//! parse -> display -> parse is the identity for digests, repository names, tags and
//! references: for every string the grammar admits (generated from the grammar itself,
//! so the parsers are also checked to accept all of it) and for every arbitrary string
//! a parser happens to accept.

use berth_oci::name::MAX_NAME_LEN;
use berth_oci::{Digest, Reference, RepoName, Tag};
use proptest::prelude::*;

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`, the spec's component grammar.
fn component() -> impl Strategy<Value = String> {
    let sep = prop_oneof![
        Just(".".to_string()),
        Just("_".to_string()),
        Just("__".to_string()),
        "-{1,3}"
    ];
    (
        "[a-z0-9]{1,8}",
        proptest::collection::vec((sep, "[a-z0-9]{1,8}"), 0..4),
    )
        .prop_map(|(head, rest)| {
            let mut c = head;
            for (s, a) in rest {
                c.push_str(&s);
                c.push_str(&a);
            }
            c
        })
}

fn grammar_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(component(), 1..6).prop_map(|v| v.join("/")),
        // Around the length limit.
        "[a-z0-9]{240,270}",
    ]
}

fn grammar_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
    ]
}

/// Arbitrary text and text close to each grammar, so acceptance by accident is tried too.
fn anything() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9._/:-]{0,40}",
        "(sha256|sha512|SHA256|md5|):[0-9a-fA-F]{60,130}",
        "[a-z0-9._/-]{200,300}",
    ]
}

fn roundtrip<T>(s: &str) -> Result<(), TestCaseError>
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let printed = v.to_string();
        prop_assert_eq!(&printed, s);
        let again = printed.parse::<T>();
        prop_assert!(again.as_ref().ok() == Some(&v), "{:?} re-parsed differently", s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn grammar_names_parse_and_round_trip(s in grammar_name()) {
        let parsed = s.parse::<RepoName>();
        prop_assert_eq!(parsed.is_ok(), s.len() <= MAX_NAME_LEN, "{:?}: {:?}", s, parsed);
        roundtrip::<RepoName>(&s)?;
    }

    #[test]
    fn grammar_tags_parse_and_round_trip(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
        prop_assert!(s.parse::<Tag>().is_ok(), "{:?}", s);
        roundtrip::<Tag>(&s)?;
        roundtrip::<Reference>(&s)?;
        prop_assert!(matches!(s.parse::<Reference>(), Ok(Reference::Tag(_))));
    }

    #[test]
    fn grammar_digests_parse_and_round_trip(s in grammar_digest()) {
        prop_assert!(s.parse::<Digest>().is_ok(), "{:?}", s);
        roundtrip::<Digest>(&s)?;
        roundtrip::<Reference>(&s)?;
        prop_assert!(matches!(s.parse::<Reference>(), Ok(Reference::Digest(_))));
    }

    #[test]
    fn whatever_parses_round_trips(s in anything()) {
        roundtrip::<RepoName>(&s)?;
        roundtrip::<Tag>(&s)?;
        roundtrip::<Digest>(&s)?;
        roundtrip::<Reference>(&s)?;
    }
}
