//! The record index in `redb`: sealed metadata, secondary indexes, block reference
//! counts (the tables themselves are in [`crate::tables`]).
//!
//! Nothing about a patient is in clear here. A record's entry ([`IndexEntry`]) holds
//! its metadata sealed under the index key, bound to the record id; the patient and
//! type indexes are keyed by tags (keyed hashes, see [`IndexKey::tag`]) of the patient
//! reference and the media type. What the file still shows without the key: how many
//! records there are, when each was stored (the time index; block files' times show it
//! too), who owns each (public in its manifest), and which records share a patient or
//! a type, not which patient or type.
//!
//! Keys of the secondary indexes end with `(created, record_id)`, `created` in Unix
//! nanoseconds, so each lists records oldest first and a time window is one range
//! scan.

use medmesh_core::{Cid, ContentType, PatientRef, RecordId, RecordMeta};
use medmesh_crypto::IndexKey;
use redb::{ReadableTable, WriteTransaction};

use crate::tables::{
    BY_OWNER, BY_PATIENT, BY_TIME, BY_TYPE, CONSENT_LINKS, HELD, RECORDS, REFS, REPLICATION,
};
use crate::StoreError;

/// Tag domain of patient references.
const PATIENT_TAG: &str = "patient";
/// Tag domain of media types.
const TYPE_TAG: &str = "content-type";

/// Unix nanoseconds as an index key (u64 lasts until 2554; earlier than 1970 is 0).
pub(crate) fn time_key(t: &time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0)
}

/// A record's entry in `RECORDS`: what removal needs without the key, and the sealed
/// metadata. Stored in a small binary layout (see [`IndexEntry::encode`]): search
/// decodes one per record it returns, so it must cost little next to the AEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Owner fingerprint (public in the manifest anyway).
    pub owner: String,
    /// `created` as a time key.
    pub created: u64,
    /// Tag of the media type.
    pub type_tag: String,
    /// Tag of the patient reference, if the record has one.
    pub patient_tag: Option<String>,
    /// The metadata (JSON), sealed under the index key.
    pub sealed: Vec<u8>,
}

/// First byte of an encoded entry.
const ENTRY_VERSION: u8 = 1;

impl IndexEntry {
    fn new(key: &IndexKey, id: &RecordId, meta: &RecordMeta) -> Result<Self, StoreError> {
        let json = serde_json::to_vec(meta).expect("metadata serializes");
        Ok(Self {
            owner: meta.owner.to_string(),
            created: time_key(&meta.created),
            type_tag: type_tag(key, &meta.content_type),
            patient_tag: meta.patient.as_ref().map(|p| patient_tag(key, p)),
            sealed: key.seal(&id.cid().to_bytes(), &json)?,
        })
    }

    /// `version, created (u64 BE), then owner, type tag, patient tag as u8-length-
    /// prefixed text (length 0: no patient), then the sealed metadata`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 3 + 64 + 64 + self.sealed.len());
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.created.to_be_bytes());
        for text in [
            self.owner.as_str(),
            self.type_tag.as_str(),
            self.patient_tag.as_deref().unwrap_or(""),
        ] {
            out.push(u8::try_from(text.len()).expect("fingerprints and tags are short"));
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.sealed);
        out
    }

    fn decode(id: &RecordId, bytes: &[u8]) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("index entry of record {id} is unreadable"));
        let (&version, rest) = bytes.split_first().ok_or_else(bad)?;
        if version != ENTRY_VERSION {
            return Err(bad());
        }
        let (created, mut rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let mut texts = [String::new(), String::new(), String::new()];
        for text in &mut texts {
            let (&len, tail) = rest.split_first().ok_or_else(bad)?;
            let (value, tail) = tail.split_at_checked(len.into()).ok_or_else(bad)?;
            *text = std::str::from_utf8(value).map_err(|_| bad())?.to_string();
            rest = tail;
        }
        let [owner, type_tag, patient_tag] = texts;
        Ok(Self {
            owner,
            created: u64::from_be_bytes(*created),
            type_tag,
            patient_tag: (!patient_tag.is_empty()).then_some(patient_tag),
            sealed: rest.to_vec(),
        })
    }

    /// The metadata, opened with the index key.
    pub fn open(&self, key: &IndexKey, id: &RecordId) -> Result<RecordMeta, StoreError> {
        let unreadable = |reason: String| {
            StoreError::Corrupt(format!("metadata of record {id} is unreadable: {reason}"))
        };
        let json = key
            .open(&id.cid().to_bytes(), &self.sealed)
            .map_err(|e| unreadable(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| unreadable(e.to_string()))
    }
}

/// The tag the patient index files `patient` under.
pub(crate) fn patient_tag(key: &IndexKey, patient: &PatientRef) -> String {
    key.tag(PATIENT_TAG, patient.as_str())
}

/// The tag the type index files `content_type` under.
pub(crate) fn type_tag(key: &IndexKey, content_type: &ContentType) -> String {
    key.tag(TYPE_TAG, content_type.as_str())
}

/// Indexes one of this node's records and takes a reference on each of its blocks.
pub(crate) fn insert_record(
    txn: &WriteTransaction,
    key: &IndexKey,
    id: &RecordId,
    meta: &RecordMeta,
    blocks: &[Cid],
) -> Result<(), StoreError> {
    insert_entries(txn, key, id, meta)?;
    take_refs(txn, blocks)
}

/// Writes a record's entry and its secondary index entries (no block references).
pub(crate) fn insert_entries(
    txn: &WriteTransaction,
    key: &IndexKey,
    id: &RecordId,
    meta: &RecordMeta,
) -> Result<(), StoreError> {
    let record = id.to_string();
    let entry = IndexEntry::new(key, id, meta)?;
    txn.open_table(RECORDS)?
        .insert(record.as_str(), entry.encode().as_slice())?;
    let ms = entry.created;
    txn.open_table(BY_TIME)?.insert((ms, record.as_str()), ())?;
    txn.open_table(BY_OWNER)?
        .insert((entry.owner.as_str(), ms, record.as_str()), ())?;
    txn.open_table(BY_TYPE)?
        .insert((entry.type_tag.as_str(), ms, record.as_str()), ())?;
    if let Some(tag) = &entry.patient_tag {
        txn.open_table(BY_PATIENT)?
            .insert((tag.as_str(), ms, record.as_str()), ())?;
    }
    Ok(())
}

/// Takes a reference on each of `blocks`.
pub(crate) fn take_refs(txn: &WriteTransaction, blocks: &[Cid]) -> Result<(), StoreError> {
    let mut refs = txn.open_table(REFS)?;
    for cid in blocks {
        let k = cid.to_string();
        let n = refs.get(k.as_str())?.map(|v| v.value()).unwrap_or(0);
        refs.insert(k.as_str(), n + 1)?;
    }
    Ok(())
}

/// Removes a record (own or held) from the index; returns the blocks no record
/// references any more.
pub(crate) fn remove_record(
    txn: &WriteTransaction,
    id: &RecordId,
    entry: Option<&IndexEntry>,
    blocks: &[Cid],
) -> Result<Vec<Cid>, StoreError> {
    let record = id.to_string();
    txn.open_table(RECORDS)?.remove(record.as_str())?;
    txn.open_table(HELD)?.remove(record.as_str())?;
    txn.open_table(CONSENT_LINKS)?.remove(record.as_str())?;
    txn.open_table(REPLICATION)?.remove(record.as_str())?;
    if let Some(entry) = entry {
        let ms = entry.created;
        txn.open_table(BY_TIME)?.remove((ms, record.as_str()))?;
        txn.open_table(BY_OWNER)?
            .remove((entry.owner.as_str(), ms, record.as_str()))?;
        txn.open_table(BY_TYPE)?
            .remove((entry.type_tag.as_str(), ms, record.as_str()))?;
        if let Some(tag) = &entry.patient_tag {
            txn.open_table(BY_PATIENT)?
                .remove((tag.as_str(), ms, record.as_str()))?;
        }
    }
    let mut refs = txn.open_table(REFS)?;
    let mut unreferenced = Vec::new();
    for cid in blocks {
        let k = cid.to_string();
        let n = refs.get(k.as_str())?.map(|v| v.value()).unwrap_or(0);
        if n <= 1 {
            refs.remove(k.as_str())?;
            unreferenced.push(*cid);
        } else {
            refs.insert(k.as_str(), n - 1)?;
        }
    }
    Ok(unreferenced)
}

/// Reads a record's index entry from any transaction's `RECORDS` table.
pub(crate) fn get_entry(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &RecordId,
) -> Result<Option<IndexEntry>, StoreError> {
    let Some(v) = table.get(id.to_string().as_str())? else {
        return Ok(None);
    };
    parse_entry(id, v.value()).map(Some)
}

/// Parses a `RECORDS` value.
pub(crate) fn parse_entry(id: &RecordId, bytes: &[u8]) -> Result<IndexEntry, StoreError> {
    IndexEntry::decode(id, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let id = RecordId::from_manifest_cid(medmesh_core::cid_of(
            medmesh_core::Codec::DagCbor,
            b"entry",
        ))
        .unwrap();
        for patient_tag in [None, Some("ab".repeat(16))] {
            let entry = IndexEntry {
                owner: "AB".repeat(32),
                created: 1_700_000_000_000_000_000,
                type_tag: "cd".repeat(16),
                patient_tag,
                sealed: vec![9; 284],
            };
            let bytes = entry.encode();
            assert_eq!(IndexEntry::decode(&id, &bytes).unwrap(), entry);
            assert!(IndexEntry::decode(&id, &bytes[..20]).is_err());
            let mut other_version = bytes.clone();
            other_version[0] = 9;
            assert!(IndexEntry::decode(&id, &other_version).is_err());
        }
    }
}
