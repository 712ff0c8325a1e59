//! Record identity and metadata.

use std::fmt;
use std::str::FromStr;

use cid::Cid;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::{Codec, ContentType, CoreError};

/// A record's id: the CIDv1 of its manifest block (dag-cbor, sha2-256).
///
/// Shown and parsed as the usual base32 text form (`bafyrei…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, example = "bafyreidsvr2dooaaqhs7pkoape6s7sj5di6lxfpvgbu7kb2zj5cphq53ba")
)]
pub struct RecordId(Cid);

impl RecordId {
    /// Wraps the CID of a manifest block.
    pub fn from_manifest_cid(cid: Cid) -> Result<Self, CoreError> {
        if cid.version() != cid::Version::V1 || cid.codec() != Codec::DagCbor.code() {
            return Err(CoreError::InvalidRecordId {
                input: cid.to_string(),
                reason: "a record id is the CIDv1 of a dag-cbor manifest".into(),
            });
        }
        Ok(Self(cid))
    }

    /// The manifest block's CID.
    pub fn cid(&self) -> &Cid {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RecordId {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cid = Cid::from_str(s.trim()).map_err(|e| CoreError::InvalidRecordId {
            input: s.to_string(),
            reason: e.to_string(),
        })?;
        Self::from_manifest_cid(cid).map_err(|_| CoreError::InvalidRecordId {
            input: s.to_string(),
            reason: "this CID is not a dag-cbor CIDv1 (it may be a chunk, not a record)".into(),
        })
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The institution that owns a record: for now the hex fingerprint of its OpenPGP
/// certificate (the chain's `NodeRegistry` binds it to an Ethereum account).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct InstitutionId(String);

impl InstitutionId {
    /// Validates a hex fingerprint (v4: 40 hex digits, v6: 64), stored upper-case.
    pub fn new(fingerprint_hex: &str) -> Result<Self, CoreError> {
        let s = fingerprint_hex.trim();
        let ok = matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(CoreError::InvalidInstitutionId(fingerprint_hex.to_string()));
        }
        Ok(Self(s.to_ascii_uppercase()))
    }

    /// The fingerprint as upper-case hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstitutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstitutionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A patient reference the institution controls (an MRN or a pseudonym), never a
/// wallet address in clear.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "MRN-0042"))]
pub struct PatientRef(String);

impl PatientRef {
    /// Longest accepted reference, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates a reference: 1–128 bytes, no control characters.
    pub fn new(reference: &str) -> Result<Self, CoreError> {
        let s = reference.trim();
        if s.is_empty() {
            return Err(CoreError::InvalidPatientRef("it is empty".into()));
        }
        if s.len() > Self::MAX_LEN {
            return Err(CoreError::InvalidPatientRef(format!(
                "it is {} bytes long; the limit is {}",
                s.len(),
                Self::MAX_LEN
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(CoreError::InvalidPatientRef(
                "it contains control characters".into(),
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The reference text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PatientRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What is known about a record without decrypting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordMeta {
    /// Media type of the plaintext, e.g. `application/fhir+json`.
    pub content_type: ContentType,
    /// Plaintext size in bytes.
    pub size: u64,
    /// When the record was ingested.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// The institution that owns the record and holds its key.
    pub owner: InstitutionId,
    /// The patient the record is about, if the institution gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<PatientRef>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid_of;

    #[test]
    fn record_id_round_trips_through_text_and_json() {
        let cid = cid_of(Codec::DagCbor, b"manifest");
        let id = RecordId::from_manifest_cid(cid).unwrap();
        let parsed: RecordId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<RecordId>(&json).unwrap(), id);
    }

    #[test]
    fn record_id_rejects_garbage_and_chunk_cids() {
        let err = "not-a-cid".parse::<RecordId>().unwrap_err();
        assert!(err.to_string().contains("not-a-cid"));
        let chunk = cid_of(Codec::Raw, b"chunk").to_string();
        let err = chunk.parse::<RecordId>().unwrap_err();
        assert!(err.to_string().contains("may be a chunk"), "{err}");
    }

    #[test]
    fn patient_ref_validation() {
        assert!(PatientRef::new("MRN-0042").is_ok());
        assert!(PatientRef::new("  ").is_err());
        assert!(PatientRef::new("a\nb").is_err());
        assert!(PatientRef::new(&"x".repeat(129)).is_err());
    }

    #[test]
    fn institution_id_validation() {
        assert!(InstitutionId::new(&"ab".repeat(32)).is_ok());
        assert_eq!(
            InstitutionId::new(&"ab".repeat(20)).unwrap().as_str(),
            "AB".repeat(20)
        );
        assert!(InstitutionId::new("xyz").is_err());
    }
}
