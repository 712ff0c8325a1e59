//! The record index in `redb`: metadata, secondary indexes, block reference counts
//! (the tables themselves are in [`crate::tables`]).
//!
//! Keys of the secondary indexes end with `(created, record_id)`, `created` in Unix
//! nanoseconds, so each lists
//! records oldest first and a time window is one range scan.

use medmesh_core::{Cid, RecordId, RecordMeta};
use redb::{ReadableTable, WriteTransaction};

use crate::tables::{
    BY_OWNER, BY_PATIENT, BY_TIME, BY_TYPE, CONSENT_LINKS, RECORDS, REFS, REPLICATION,
};
use crate::StoreError;

/// Unix nanoseconds as an index key (u64 lasts until 2554; earlier than 1970 is 0).
pub(crate) fn time_key(t: &time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0)
}

/// Indexes a record and takes a reference on each of its blocks.
pub(crate) fn insert_record(
    txn: &WriteTransaction,
    id: &RecordId,
    meta: &RecordMeta,
    blocks: &[Cid],
) -> Result<(), StoreError> {
    let key = id.to_string();
    let ms = time_key(&meta.created);
    let json = serde_json::to_vec(meta).expect("metadata serializes");
    txn.open_table(RECORDS)?
        .insert(key.as_str(), json.as_slice())?;
    txn.open_table(BY_TIME)?.insert((ms, key.as_str()), ())?;
    txn.open_table(BY_OWNER)?
        .insert((meta.owner.as_str(), ms, key.as_str()), ())?;
    txn.open_table(BY_TYPE)?
        .insert((meta.content_type.as_str(), ms, key.as_str()), ())?;
    if let Some(p) = &meta.patient {
        txn.open_table(BY_PATIENT)?
            .insert((p.as_str(), ms, key.as_str()), ())?;
    }
    let mut refs = txn.open_table(REFS)?;
    for cid in blocks {
        let k = cid.to_string();
        let n = refs.get(k.as_str())?.map(|v| v.value()).unwrap_or(0);
        refs.insert(k.as_str(), n + 1)?;
    }
    Ok(())
}

/// Removes a record from the index; returns the blocks no record references any more.
pub(crate) fn remove_record(
    txn: &WriteTransaction,
    id: &RecordId,
    meta: &RecordMeta,
    blocks: &[Cid],
) -> Result<Vec<Cid>, StoreError> {
    let key = id.to_string();
    let ms = time_key(&meta.created);
    txn.open_table(RECORDS)?.remove(key.as_str())?;
    txn.open_table(CONSENT_LINKS)?.remove(key.as_str())?;
    txn.open_table(REPLICATION)?.remove(key.as_str())?;
    txn.open_table(BY_TIME)?.remove((ms, key.as_str()))?;
    txn.open_table(BY_OWNER)?
        .remove((meta.owner.as_str(), ms, key.as_str()))?;
    txn.open_table(BY_TYPE)?
        .remove((meta.content_type.as_str(), ms, key.as_str()))?;
    if let Some(p) = &meta.patient {
        txn.open_table(BY_PATIENT)?
            .remove((p.as_str(), ms, key.as_str()))?;
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

/// Reads a record's metadata from any transaction's `RECORDS` table.
pub(crate) fn get_meta(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &RecordId,
) -> Result<Option<RecordMeta>, StoreError> {
    let Some(v) = table.get(id.to_string().as_str())? else {
        return Ok(None);
    };
    serde_json::from_slice(v.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("metadata of record {id} is unreadable: {e}")))
}
