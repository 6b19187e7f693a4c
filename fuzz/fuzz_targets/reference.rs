//! `<reference>` of `/v2/<name>/manifests/<reference>`: a tag or a digest. Whatever
//! parses must print back to the same text, re-parse equal, and obey the tag grammar.
#![no_main]

use berth_oci::{Reference, Tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tag) = s.parse::<Tag>() {
        let b = tag.as_str().as_bytes();
        assert_eq!(tag.as_str(), s);
        assert!(!b.is_empty() && b.len() <= 128, "tag of length {}", b.len());
        assert!(b[0] != b'.' && b[0] != b'-', "tag {s:?} starts with a separator");
        assert!(
            b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')),
            "tag {s:?} has a character outside [A-Za-z0-9_.-]"
        );
        // A tag is never a path component that climbs out.
        assert!(s != "." && s != "..");
        assert_eq!(s.parse::<Reference>(), Ok(Reference::Tag(tag)));
    }
    if let Ok(r) = s.parse::<Reference>() {
        let printed = r.to_string();
        assert_eq!(printed, s, "reference prints differently from its input");
        assert_eq!(printed.parse::<Reference>().as_ref(), Ok(&r));
        match &r {
            Reference::Tag(t) => assert_eq!(s.parse::<Tag>().as_ref(), Ok(t)),
            Reference::Digest(d) => assert_eq!(s.parse().as_ref(), Ok(d)),
        }
    }
});
