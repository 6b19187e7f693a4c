//! Digests name files on disk (`blobs/<alg>/<2 hex>/<hex>`) and rows. Anything that
//! parses must print back to the same string, re-parse equal, read the same through
//! serde, and have a hex part that is only lowercase hex of the algorithm's length.
#![no_main]

use berth_oci::{Algorithm, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = s.parse::<Digest>();
    // serde (manifest descriptors) and FromStr (paths, headers) must agree.
    let via_serde = serde_json::from_value::<Digest>(serde_json::Value::String(s.to_string()));
    assert_eq!(
        parsed.is_ok(),
        via_serde.is_ok(),
        "FromStr and serde disagree on {s:?}"
    );
    let Ok(d) = parsed else {
        return;
    };
    assert_eq!(via_serde.ok().as_ref(), Some(&d));
    let printed = d.to_string();
    assert_eq!(printed, s, "digest prints differently from its input");
    assert_eq!(printed.parse::<Digest>().as_ref(), Ok(&d));
    assert_eq!(format!("{d:?}"), printed);
    let hex_len = match d.algorithm() {
        Algorithm::Sha256 => 64,
        Algorithm::Sha512 => 128,
    };
    assert_eq!(d.hex().len(), hex_len);
    assert!(d.hex().bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(printed, format!("{}:{}", d.algorithm().as_str(), d.hex()));
    let json = serde_json::to_string(&d).expect("a digest serializes");
    assert_eq!(serde_json::from_str::<Digest>(&json).ok().as_ref(), Some(&d));
});
