//! `Route::parse` sees every raw (still percent-encoded) path after `/v2/`. It must never
//! panic; any name it yields must be a valid `RepoName` without `..`, `.` or empty
//! components; and the path the client side builds for a parsed route must parse back to
//! the same route.
#![no_main]

use berth_oci::route::path;
use berth_oci::{RepoName, Route, UploadId};
use libfuzzer_sys::fuzz_target;

fn build(route: &Route) -> String {
    match route {
        Route::Base => "/v2/".to_string(),
        Route::Catalog => path::CATALOG.to_string(),
        Route::TagsList(n) => path::tags(n),
        Route::Manifest(n, r) => path::manifest(n, r),
        Route::Blob(n, d) => path::blob(n, d),
        Route::UploadStart(n) => path::uploads(n),
        Route::Upload(n, id) => path::upload(n, id),
        Route::Referrers(n, d) => path::referrers(n, d),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(rest) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(route) = Route::parse(rest) else {
        return;
    };
    let _ = route.kind();
    if let Some(name) = route.name() {
        let s = name.as_str();
        assert_eq!(s.parse::<RepoName>().as_ref(), Ok(name));
        for c in s.split('/') {
            assert!(
                !c.is_empty() && c != "." && c != "..",
                "component {c:?} of {s:?} from {rest:?}"
            );
            assert!(!c.contains('\\') && !c.contains('%') && !c.contains('\0'));
        }
        // The name is the path's own text, not something decoded or invented.
        assert!(rest.starts_with(s), "name {s:?} is not a prefix of {rest:?}");
    }
    if let Route::Upload(_, id) = &route {
        assert_eq!(UploadId::parse(id.as_str()).as_ref(), Some(id));
        assert!(id.as_str() != "." && id.as_str() != "..");
    }
    let built = build(&route);
    let again = Route::parse(built.strip_prefix("/v2/").expect("paths start with /v2/"))
        .unwrap_or_else(|e| panic!("{rest:?} parsed to {route:?}, whose path {built:?} does not parse: {e}"));
    assert_eq!(again, route, "{rest:?} -> {built:?}");
});
