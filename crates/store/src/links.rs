//! Consent links: which patient wallet consents for a record, kept privately by the
//! owning institution. On chain a record's consent scope is a salted hash of its id, so
//! nobody can tell from the chain which record (or whose) a grant covers; the salt
//! lives here and is handed to the patient so they can sign grants for that scope.
//!
//! A link names the patient's wallet, so it is sealed under the index key like the
//! records' metadata (bound to the record id, under its own label): a copy of the data
//! dir does not tell which records belong to one wallet.

use std::collections::BTreeMap;

use medmesh_core::RecordId;
use redb::ReadableDatabase;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditAction, AuditEvent};
use crate::tables::{AUDIT, CONSENT_LINKS};
use crate::{Store, StoreError};

/// The patient wallet that consents for a record, and the salt of its on-chain scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentLink {
    /// The patient's Ethereum address, `0x` + 40 lower-case hex digits.
    pub patient: String,
    /// 32 random bytes, hex: the salt of the record's consent scope.
    pub salt: String,
}

fn normalize_address(address: &str) -> Result<String, StoreError> {
    let a = address.trim();
    let ok = a.len() == 42 && a.starts_with("0x") && a[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if !ok {
        return Err(StoreError::InvalidInput(format!(
            "`{address}` is not an Ethereum address (0x + 40 hex digits)"
        )));
    }
    Ok(a.to_ascii_lowercase())
}

impl Store {
    /// Links a record to the patient wallet that consents for it (with a fresh salt).
    /// Linking again to the same wallet returns the existing link; to another wallet is
    /// refused.
    pub fn link_patient(
        &self,
        id: &RecordId,
        patient: &str,
        actor: &str,
    ) -> Result<ConsentLink, StoreError> {
        let patient = normalize_address(patient)?;
        self.meta(id)?;
        if let Some(existing) = self.consent_link(id)? {
            if existing.patient == patient {
                return Ok(existing);
            }
            return Err(StoreError::InvalidInput(format!(
                "record {id} is already linked to patient {}; remove the record to change it",
                existing.patient
            )));
        }
        let mut salt = [0u8; 32];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| StoreError::Corrupt("the system random number generator failed".into()))?;
        let link = ConsentLink {
            patient,
            salt: hex::encode(salt),
        };
        let json = serde_json::to_vec(&link).expect("links serialize");
        let sealed = self.index_key()?.seal(&link_context(id), &json)?;
        let txn = self.db.begin_write()?;
        let key = id.to_string();
        txn.open_table(CONSENT_LINKS)?
            .insert(key.as_str(), sealed.as_slice())?;
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::ConsentLink,
                actor: actor.to_string(),
                subject: key,
                detail: BTreeMap::new(),
            },
        )?;
        txn.commit()?;
        Ok(link)
    }

    /// The consent link of a record, if any.
    pub fn consent_link(&self, id: &RecordId) -> Result<Option<ConsentLink>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONSENT_LINKS)?;
        let Some(v) = table.get(id.to_string().as_str())? else {
            return Ok(None);
        };
        let unreadable =
            |e: String| StoreError::Corrupt(format!("consent link of {id} is unreadable: {e}"));
        let json = self
            .index_key()?
            .open(&link_context(id), v.value())
            .map_err(|e| unreadable(e.to_string()))?;
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| unreadable(e.to_string()))
    }
}

/// What a link is sealed bound to: its record, under a label of its own (the record's
/// metadata is sealed under the same key, bound to the bare id).
fn link_context(id: &RecordId) -> Vec<u8> {
    let mut context = b"consent-link/".to_vec();
    context.extend_from_slice(&id.cid().to_bytes());
    context
}
