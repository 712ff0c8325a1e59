//! Every `redb` table of the store, in one place (as iroh-blobs' `tables.rs`).
//!
//! The modules that read and write the index import their tables from here and from
//! nowhere else, so no module needs another one's internals just to name a table, and
//! [`create_tables`] cannot forget one. Table names are part of the on-disk format:
//! renaming one orphans its data.

use redb::{TableDefinition, WriteTransaction};

use crate::StoreError;

/// Record id → its index entry (`IndexEntry` in its binary layout: the metadata sealed
/// under the index key, and the lookup tags the secondary indexes use).
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// `(created, record id)`: every record, oldest first.
pub(crate) const BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("records_by_time");
/// `(owner, created, record id)`: records by owning institution.
pub(crate) const BY_OWNER: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("records_by_owner");
/// `(patient tag, created, record id)`: records by patient (the tag is a keyed hash
/// of the patient reference, never the reference).
pub(crate) const BY_PATIENT: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("records_by_patient");
/// `(type tag, created, record id)`: records by media type (a keyed hash of it).
pub(crate) const BY_TYPE: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("records_by_type");
/// Record id → a record held here for another institution (`HeldRecord` as JSON): a
/// replica or a fetched copy, whose metadata this node cannot read. Not in `RECORDS`,
/// so it never shows in this node's listing or search.
pub(crate) const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held_records");
/// Block CID → number of stored records that reference it (a record pins its blocks).
pub(crate) const REFS: TableDefinition<&str, u64> = TableDefinition::new("block_refs");
/// Sequence number → audit entry (JSON), the hash-chained log.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Token id → API token (JSON, secret hashed).
pub(crate) const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
/// Record id → its consent link (JSON: patient wallet and scope salt).
pub(crate) const CONSENT_LINKS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("consent_links");
/// Record id → its replication settings (JSON).
pub(crate) const REPLICATION: TableDefinition<&str, &[u8]> = TableDefinition::new("replication");
/// Sequence number → a webhook message waiting for delivery (`OutboxEntry` as JSON:
/// its stable id, endpoint, body, attempts, next attempt).
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("webhook_outbox");
/// Idempotency key of a put → the record id it stored (`PutRequest::idempotency_key`).
pub(crate) const INGEST_KEYS: TableDefinition<&str, &str> = TableDefinition::new("ingest_keys");
/// Device id → the registered device (`DeviceRecord` as JSON, sealed under the index key:
/// it names the patient the device measures).
pub(crate) const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// The telemetry write-ahead log's progress: `checkpoint` (every entry up to this
/// sequence number is in records) and `flushing` (a flush in progress up to it), u64 BE.
pub(crate) const TELEMETRY: TableDefinition<&str, u64> = TableDefinition::new("telemetry");
/// Dataset id (the record id of its table) → its differential-privacy budget (JSON:
/// the totals and what queries have spent; written in the same transaction as each
/// query's audit entry).
pub(crate) const DP_BUDGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("dp_budgets");

/// Creates every table so readers never meet a missing one.
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(RECORDS)?;
    txn.open_table(BY_TIME)?;
    txn.open_table(BY_OWNER)?;
    txn.open_table(BY_PATIENT)?;
    txn.open_table(BY_TYPE)?;
    txn.open_table(REFS)?;
    txn.open_table(AUDIT)?;
    txn.open_table(API_TOKENS)?;
    txn.open_table(CONSENT_LINKS)?;
    txn.open_table(REPLICATION)?;
    txn.open_table(HELD)?;
    txn.open_table(OUTBOX)?;
    txn.open_table(INGEST_KEYS)?;
    txn.open_table(DEVICES)?;
    txn.open_table(TELEMETRY)?;
    txn.open_table(DP_BUDGETS)?;
    Ok(())
}
