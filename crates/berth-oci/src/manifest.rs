//! What a manifest references. Manifests are stored byte for byte as pushed; this module
//! only reads them to learn their references, subject and artifact type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Config,
    Layer,
    /// A child manifest of an index.
    Manifest,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Config => "config",
            RefKind::Layer => "layer",
            RefKind::Manifest => "manifest",
        }
    }
}

/// A reference from a manifest to a blob or child manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRef {
    pub kind: RefKind,
    pub digest: Digest,
    pub size: u64,
    /// Non-distributable layers need not be present in the registry.
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// `artifactType`, or for an image manifest without one, its config media type
    /// (what the referrers API reports).
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub refs: Vec<ManifestRef>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion is {0:?}; only schemaVersion 2 is supported")]
    SchemaVersion(Option<u64>),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    ContentTypeMismatch { header: String, body: String },
    #[error(
        "the manifest has no mediaType and the request no Content-Type; one of them must name the manifest type"
    )]
    NoMediaType,
    #[error(
        "manifest media type {0:?} is not supported; use an OCI image manifest or index, or a Docker schema 2 manifest or manifest list"
    )]
    Unsupported(String),
    #[error("a manifest of type {media_type} must have a {field:?} field")]
    MissingField { media_type: String, field: &'static str },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Reads a manifest as pushed with `content_type` (the request's Content-Type, if any).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    // JSON is UTF-8 (RFC 8259). serde_json skips the strings of fields it ignores without
    // checking their UTF-8, so without this a manifest with invalid bytes in, say, a
    // platform field would be stored and served although strict JSON parsers refuse it.
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError::Json(format!("not UTF-8: {e}")))?;
    let raw: Raw = serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type.map(media::essence).filter(|s| !s.is_empty());
    if matches!(
        header,
        Some(media::DOCKER_MANIFEST_V1 | media::DOCKER_MANIFEST_V1_SIGNED)
    ) {
        return Err(ManifestError::Unsupported(header.unwrap_or_default().to_string()));
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion(raw.schema_version));
    }
    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(ManifestError::ContentTypeMismatch {
                header: h.to_string(),
                body: b.to_string(),
            });
        }
        (_, Some(b)) => b.to_string(),
        (Some(h), None) => h.to_string(),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    let missing = |field| ManifestError::MissingField {
        media_type: media_type.clone(),
        field,
    };
    let mut refs = Vec::new();
    let push = |refs: &mut Vec<ManifestRef>, kind, d: &Descriptor| {
        refs.push(ManifestRef {
            kind,
            digest: d.digest.clone(),
            size: d.size,
            required: !(kind == RefKind::Layer && media::is_non_distributable(&d.media_type)),
        })
    };
    let artifact_type = match media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            let config = raw.config.as_ref().ok_or_else(|| missing("config"))?;
            push(&mut refs, RefKind::Config, config);
            for l in raw.layers.as_ref().ok_or_else(|| missing("layers"))? {
                push(&mut refs, RefKind::Layer, l);
            }
            raw.artifact_type
                .clone()
                .or_else(|| Some(config.media_type.clone()))
        }
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => {
            for m in raw.manifests.as_ref().ok_or_else(|| missing("manifests"))? {
                push(&mut refs, RefKind::Manifest, m);
            }
            raw.artifact_type.clone()
        }
        other => return Err(ManifestError::Unsupported(other.to_string())),
    };
    Ok(ParsedManifest {
        media_type,
        artifact_type,
        subject: raw.subject.map(|s| s.digest),
        annotations: raw.annotations,
        refs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const D2: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":0}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":2}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{D2}","size":2,"urls":["x"]}}],
            "subject":{{"mediaType":"{}","digest":"{D1}","size":1}}}}"#,
            media::OCI_MANIFEST,
            media::OCI_MANIFEST
        );
        let p = parse(m.as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(p.refs.len(), 3);
        assert_eq!(p.refs[0].kind, RefKind::Config);
        assert!(p.refs[1].required);
        assert!(!p.refs[2].required);
        assert_eq!(p.subject, Some(D1.parse().unwrap()));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        // Content-Type parameters are ignored; a mismatch is refused.
        assert!(
            parse(
                m.as_bytes(),
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8")
            )
            .is_ok()
        );
        assert!(matches!(
            parse(m.as_bytes(), Some(media::OCI_INDEX)),
            Err(ManifestError::ContentTypeMismatch { .. })
        ));
    }

    #[test]
    fn rejects() {
        assert!(matches!(parse(b"{", None), Err(ManifestError::Json(_))));
        assert!(matches!(
            parse(br#"{"schemaVersion":1}"#, Some(media::OCI_MANIFEST)),
            Err(ManifestError::SchemaVersion(Some(1)))
        ));
        assert_eq!(
            parse(br#"{"schemaVersion":2}"#, None),
            Err(ManifestError::NoMediaType)
        );
        assert!(matches!(
            parse(br#"{"schemaVersion":2}"#, Some("text/plain")),
            Err(ManifestError::Unsupported(_))
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2}"#, Some(media::OCI_MANIFEST)),
            Err(ManifestError::MissingField { field: "config", .. })
        ));
        let bad_digest =
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:nothex","size":1}]}"#;
        assert!(matches!(
            parse(bad_digest.as_bytes(), Some(media::OCI_INDEX)),
            Err(ManifestError::Json(_))
        ));
    }

    /// Found by the `manifest` fuzz target: invalid UTF-8 inside a field berth ignores
    /// (here a misspelt `platform`) was accepted, though the bytes are not JSON.
    #[test]
    fn invalid_utf8_in_an_ignored_field_is_refused() {
        let mut m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":7,"platfori":{{"architecture":"arm"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST
        )
        .into_bytes();
        m.push(0x87);
        m.extend_from_slice(br#"4"}}]}"#);
        assert!(matches!(parse(&m, None), Err(ManifestError::Json(e)) if e.contains("UTF-8")));
        // The same manifest with valid UTF-8 there is accepted.
        let ok = String::from_utf8_lossy(&m).into_owned();
        assert!(parse(ok.as_bytes(), None).is_ok());
    }

    #[test]
    fn index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":7,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
            media::DOCKER_MANIFEST_LIST,
            media::DOCKER_MANIFEST
        );
        let p = parse(m.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, media::DOCKER_MANIFEST_LIST);
        assert_eq!(p.refs[0].kind, RefKind::Manifest);
        assert_eq!(p.artifact_type, None);
    }
}
