//! Domain types shared by every medmesh crate: record ids, record metadata, manifests
//! and the errors a user can cause with them. No I/O happens here.
//!
//! A record is stored as encrypted chunk blocks plus one manifest block; the manifest's
//! CID is the record's [`RecordId`]. See `docs/architecture.md`.

pub mod bounded;
mod cid_util;
mod content_type;
pub mod device_message;
mod error;
mod manifest;
pub mod news2;
mod record;
pub mod siwe;
mod transfer;
pub mod vitals;

pub use cid_util::{cid_of, verify_cid, Codec, MAX_BLOCK_SIZE};
pub use content_type::ContentType;
pub use error::CoreError;
pub use manifest::{
    AeadAlgorithm, EnvelopeHeader, KeyWrap, KeyWrapAlgorithm, Manifest, ManifestBody,
    ManifestSignature, SealedMeta, SignatureAlgorithm, ENVELOPE_VERSION, MANIFEST_VERSION,
};
pub use record::{InstitutionId, PatientRef, RecordId, RecordMeta};
pub use transfer::{FetchReport, PeerInfo, ReplicaOutcome, Transfer};

/// Re-exported so callers name one `Cid` type.
pub use cid::Cid;
