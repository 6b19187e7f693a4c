//! Manifest bytes and Content-Type headers come straight from clients and upstreams.
//! `manifest::parse` must never panic, and what it accepts must be consistent: a
//! supported media type agreeing with the header, refs matching the JSON's own
//! `config`/`layers`/`manifests` in order, `required` false only for non-distributable
//! layers, and the same answer every time.
#![no_main]

use berth_oci::manifest::{self, RefKind};
use berth_oci::media;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Content types the first byte picks from; anything else takes the text up to the first
/// newline as the header, so the fuzzer explores both known and arbitrary media types.
const TYPES: [Option<&str>; 9] = [
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_MANIFEST_LIST),
    Some(media::DOCKER_MANIFEST_V1),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some(""),
    Some("text/plain"),
];

fn split(data: &[u8]) -> Option<(Option<&str>, &[u8])> {
    let (&first, rest) = data.split_first()?;
    if let Some(t) = TYPES.get(first as usize) {
        return Some((*t, rest));
    }
    let nl = rest.iter().position(|&b| b == b'\n')?;
    Some((Some(std::str::from_utf8(&rest[..nl]).ok()?), &rest[nl + 1..]))
}

fuzz_target!(|data: &[u8]| {
    let Some((content_type, body)) = split(data) else {
        return;
    };
    let result = manifest::parse(body, content_type);
    assert_eq!(
        manifest::parse(body, content_type),
        result,
        "parse is not deterministic"
    );
    let Ok(m) = result else {
        return;
    };
    assert!(
        media::MANIFEST_TYPES.contains(&m.media_type.as_str()),
        "accepted unsupported media type {:?}",
        m.media_type
    );
    if let Some(h) = content_type.map(media::essence).filter(|h| !h.is_empty()) {
        assert_eq!(
            h, m.media_type,
            "accepted a body that disagrees with its Content-Type"
        );
    }
    assert!(
        std::str::from_utf8(body).is_ok(),
        "accepted a manifest that is not UTF-8"
    );
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // The JSON grammar admits lone surrogate escapes ("\ud800") that no Rust string
        // can hold, and numbers (1e99999) no f64 can. serde_json decodes escapes and
        // numbers only in values it reads, and berth does not read fields it ignores,
        // so such a value may sit in one (Go and Python read them). Anything else Value
        // refuses, berth must have refused too.
        Err(e)
            if ["surrogate", "hex escape", "number out of range"]
                .iter()
                .any(|w| e.to_string().contains(w)) =>
        {
            return;
        }
        Err(e) => panic!("accepted a manifest that is not JSON: {e}"),
    };
    assert_eq!(json["schemaVersion"], 2);
    if let Some(body_type) = json.get("mediaType") {
        assert_eq!(body_type.as_str(), Some(m.media_type.as_str()));
    }
    let descriptors = |field: &str| -> Vec<Value> {
        json[field]
            .as_array()
            .cloned()
            .expect("accepted manifest has the array")
    };
    let expected: Vec<(RefKind, Value)> = if media::is_index(&m.media_type) {
        assert!(m.refs.iter().all(|r| r.kind == RefKind::Manifest));
        descriptors("manifests")
            .into_iter()
            .map(|d| (RefKind::Manifest, d))
            .collect()
    } else {
        let config = json["config"].clone();
        assert!(config.is_object(), "accepted image manifest without a config");
        assert_eq!(
            m.artifact_type.as_deref(),
            json["artifactType"].as_str().or(config["mediaType"].as_str())
        );
        std::iter::once((RefKind::Config, config))
            .chain(descriptors("layers").into_iter().map(|d| (RefKind::Layer, d)))
            .collect()
    };
    assert_eq!(m.refs.len(), expected.len());
    for (r, (kind, d)) in m.refs.iter().zip(&expected) {
        assert_eq!(r.kind, *kind);
        assert_eq!(Some(r.digest.to_string().as_str()), d["digest"].as_str());
        assert_eq!(r.digest.to_string().parse().as_ref(), Ok(&r.digest));
        assert_eq!(Some(r.size), d["size"].as_u64());
        let mt = d["mediaType"].as_str().expect("descriptor has a mediaType");
        let non_distributable = *kind == RefKind::Layer && media::is_non_distributable(mt);
        assert_eq!(r.required, !non_distributable);
    }
    match (&m.subject, json.get("subject")) {
        (Some(s), Some(j)) => assert_eq!(Some(s.to_string().as_str()), j["digest"].as_str()),
        (None, None) => {}
        (None, Some(j)) => assert!(j.is_null(), "subject {j} dropped"),
        (Some(s), None) => panic!("subject {s} invented"),
    }
});
