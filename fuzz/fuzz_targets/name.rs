//! Repository names. Whatever parses must print back to the same text, obey the
//! component grammar (never empty, `.` or `..`, nothing but `[a-z0-9._-]` between `/`),
//! and survive being put into every `/v2` path and parsed back out of it.
#![no_main]

use berth_oci::route::path;
use berth_oci::{Digest, Reference, RepoName, Route, UploadId};
use libfuzzer_sys::fuzz_target;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn reparse(p: &str) -> Route {
    let rest = p.strip_prefix("/v2/").expect("paths start with /v2/");
    Route::parse(rest).unwrap_or_else(|e| panic!("built path {p:?} does not parse: {e}"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = s.parse::<RepoName>() else {
        return;
    };
    assert_eq!(name.as_str(), s);
    assert_eq!(name.to_string().parse::<RepoName>().as_ref(), Ok(&name));
    assert!(s.len() <= berth_oci::name::MAX_NAME_LEN);
    for c in s.split('/') {
        assert!(!c.is_empty() && c != "." && c != "..", "component {c:?} of {s:?}");
        assert!(
            c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')),
            "component {c:?} of {s:?} has a character outside [a-z0-9._-]"
        );
    }
    let digest: Digest = D.parse().unwrap();
    let tag = Reference::Tag("latest".parse().unwrap());
    let id = UploadId::parse("0f1e2d3c-aaaa-bbbb").unwrap();
    assert_eq!(
        reparse(&path::manifest(&name, &tag)),
        Route::Manifest(name.clone(), tag.clone())
    );
    let by_digest = Reference::Digest(digest.clone());
    assert_eq!(
        reparse(&path::manifest(&name, &by_digest)),
        Route::Manifest(name.clone(), by_digest)
    );
    assert_eq!(
        reparse(&path::blob(&name, &digest)),
        Route::Blob(name.clone(), digest.clone())
    );
    assert_eq!(reparse(&path::uploads(&name)), Route::UploadStart(name.clone()));
    assert_eq!(
        reparse(&path::upload(&name, &id)),
        Route::Upload(name.clone(), id)
    );
    assert_eq!(reparse(&path::tags(&name)), Route::TagsList(name.clone()));
    assert_eq!(
        reparse(&path::referrers(&name, &digest)),
        Route::Referrers(name, digest)
    );
});
