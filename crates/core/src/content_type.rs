//! Media types of record plaintext, and sniffing them from the first bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::CoreError;

/// A media type such as `application/fhir+json`, validated and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "application/fhir+json")
)]
pub struct ContentType(String);

impl ContentType {
    /// FHIR R4 resources and bundles in JSON.
    pub const FHIR_JSON: &'static str = "application/fhir+json";
    /// FHIR bulk-data NDJSON.
    pub const FHIR_NDJSON: &'static str = "application/fhir+ndjson";
    /// HL7 v2 pipe-delimited messages.
    pub const HL7_V2: &'static str = "application/hl7-v2";
    /// DICOM Part 10 files.
    pub const DICOM: &'static str = "application/dicom";
    /// Anything else.
    pub const OCTET_STREAM: &'static str = "application/octet-stream";

    /// Guesses the type from a file's first bytes (at least 132 for DICOM).
    pub fn sniff(head: &[u8]) -> Self {
        let text = trim_ascii_start(head);
        let known = if head.len() >= 132 && &head[128..132] == b"DICM" {
            Self::DICOM
        } else if text.starts_with(b"MSH|") {
            Self::HL7_V2
        } else if text.starts_with(b"{") && contains(text, b"\"resourceType\"") {
            // One resource per line and several lines: bulk NDJSON.
            let first_line_end = text.iter().position(|&b| b == b'\n');
            match first_line_end {
                Some(end) if trim_ascii_start(&text[end..]).starts_with(b"{") => Self::FHIR_NDJSON,
                _ => Self::FHIR_JSON,
            }
        } else {
            Self::OCTET_STREAM
        };
        Self(known.to_string())
    }

    /// The media type text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn trim_ascii_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl FromStr for ContentType {
    type Err = CoreError;

    /// Accepts `type/subtype` (with optional `+suffix` and parameters), 1–127 bytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let essence = s.split(';').next().unwrap_or_default().trim();
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        let valid = s.len() < 128
            && matches!(essence.split_once('/'), Some((ty, sub)) if token(ty) && token(sub))
            && !s.chars().any(char::is_control);
        if !valid {
            return Err(CoreError::InvalidContentType(s.to_string()));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ContentType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_medical_formats() {
        assert_eq!(
            ContentType::sniff(b"MSH|^~\\&|EPIC|").as_str(),
            ContentType::HL7_V2
        );
        assert_eq!(
            ContentType::sniff(b" {\"resourceType\": \"Bundle\"}").as_str(),
            ContentType::FHIR_JSON
        );
        assert_eq!(
            ContentType::sniff(b"{\"resourceType\":\"Patient\"}\n{\"resourceType\":\"Patient\"}\n")
                .as_str(),
            ContentType::FHIR_NDJSON
        );
        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM\x02\x00");
        assert_eq!(ContentType::sniff(&dicom).as_str(), ContentType::DICOM);
        assert_eq!(
            ContentType::sniff(b"\x00\x01").as_str(),
            ContentType::OCTET_STREAM
        );
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "Application/FHIR+json; fhirVersion=4.0"
                .parse::<ContentType>()
                .unwrap()
                .as_str(),
            "application/fhir+json; fhirversion=4.0"
        );
        for bad in ["", "fhir", "a/", "/b", "a/b c", "a/\u{1}b"] {
            assert!(bad.parse::<ContentType>().is_err(), "{bad:?} accepted");
        }
    }
}
