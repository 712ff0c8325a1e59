//! The manifest block: what a record is made of and who can open it.
//!
//! Encoded as DAG-CBOR so any IPLD tool can walk from a record to its chunks. The
//! signature covers the DAG-CBOR encoding of [`ManifestBody`]; every algorithm is named
//! by id and every structure carries a version, so an algorithm can be replaced without
//! breaking old records.
//!
//! A manifest is a public block: any peer (any IPFS node) can fetch it by CID. So it
//! holds in clear only what a peer needs to move and check blocks (chunk CIDs, the
//! envelope header, key wraps by recipient fingerprint, the owner's fingerprint and
//! signature); the record's metadata (patient reference, media type, size, creation
//! time) is [`SealedMeta`], encrypted under a key derived from the record's data key.

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::{cid_of, Codec, CoreError, InstitutionId, RecordId};

/// Version of the manifest structure. Version 1 carried the metadata in clear; it is
/// refused (nothing was deployed with it).
pub const MANIFEST_VERSION: u32 = 2;
/// Version of the chunk envelope (nonce and associated-data layout).
pub const ENVELOPE_VERSION: u32 = 1;

/// Bulk encryption of chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AeadAlgorithm {
    /// AES-256-GCM, 96-bit nonces, 128-bit tags.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// How a record's data key is wrapped for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyWrapAlgorithm {
    /// An OpenPGP message (RFC 9580, PKESK v6) to an ML-KEM-768+X25519 subkey.
    #[serde(rename = "openpgp-pkesk6-mlkem768-x25519")]
    OpenPgpMlKem768X25519,
}

/// How the manifest is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureAlgorithm {
    /// A v6 OpenPGP signature by an ML-DSA-65+Ed25519 key.
    #[serde(rename = "openpgp-sig6-mldsa65-ed25519")]
    OpenPgpMlDsa65Ed25519,
}

/// Parameters of the chunk encryption, fixed per record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeHeader {
    /// [`ENVELOPE_VERSION`] when written.
    pub version: u32,
    /// The AEAD used for every chunk.
    pub aead: AeadAlgorithm,
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Random id bound into every chunk's associated data.
    #[serde(with = "serde_bytes")]
    pub envelope_id: Vec<u8>,
}

/// A record's data key, wrapped for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWrap {
    /// Fingerprint of the recipient's certificate.
    pub recipient: InstitutionId,
    /// How [`KeyWrap::message`] was made.
    pub algorithm: KeyWrapAlgorithm,
    /// The wrapped key.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
}

/// A record's metadata ([`RecordMeta`]), encrypted: readable only with the data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMeta {
    /// The AEAD used (its key is derived from the data key, apart from the chunks').
    pub aead: AeadAlgorithm,
    /// The AEAD nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// The padded, encrypted metadata and its tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// The signed part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBody {
    /// [`MANIFEST_VERSION`] when written.
    pub version: u32,
    /// The institution that owns the record and signs the manifest.
    pub owner: InstitutionId,
    /// The record's metadata, sealed under its data key.
    pub meta: SealedMeta,
    /// Chunk encryption parameters.
    pub envelope: EnvelopeHeader,
    /// Encrypted chunk blocks, in order (raw codec).
    pub chunks: Vec<Cid>,
    /// The data key, wrapped for each recipient.
    pub key_wraps: Vec<KeyWrap>,
}

/// The owner's signature over a [`ManifestBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSignature {
    /// Fingerprint of the signing certificate.
    pub signer: InstitutionId,
    /// How [`ManifestSignature::signature`] was made.
    pub algorithm: SignatureAlgorithm,
    /// The signature packet.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A record's manifest block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// What is signed.
    pub body: ManifestBody,
    /// The owner's signature over `body`.
    pub signature: ManifestSignature,
}

impl ManifestBody {
    /// The bytes the owner signs: the DAG-CBOR encoding of the body.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, CoreError> {
        serde_ipld_dagcbor::to_vec(self).map_err(|e| CoreError::MalformedManifest(e.to_string()))
    }

    /// The wrap addressed to `recipient`, if any.
    pub fn key_wrap_for(&self, recipient: &InstitutionId) -> Option<&KeyWrap> {
        self.key_wraps.iter().find(|w| &w.recipient == recipient)
    }
}

impl Manifest {
    /// Encodes the manifest block (DAG-CBOR).
    pub fn encode(&self) -> Result<Vec<u8>, CoreError> {
        serde_ipld_dagcbor::to_vec(self).map_err(|e| CoreError::MalformedManifest(e.to_string()))
    }

    /// Decodes a manifest block, checking its version.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        // The version first, from a lenient view: a manifest of another version fails
        // with a message about its version, not about a missing field.
        #[derive(Deserialize)]
        struct Versioned {
            body: VersionOnly,
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let versioned: Versioned = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| CoreError::MalformedManifest(e.to_string()))?;
        if versioned.body.version == 1 {
            return Err(CoreError::MalformedManifest(
                "manifest version 1 kept the record's metadata (patient reference, type, size, \
                 time) in clear and is not read any more; this node reads version 2, which \
                 seals it: ingest the record again from its source"
                    .into(),
            ));
        }
        if versioned.body.version != MANIFEST_VERSION {
            return Err(CoreError::MalformedManifest(format!(
                "manifest version {} is not supported (this node reads version {MANIFEST_VERSION})",
                versioned.body.version
            )));
        }
        let manifest: Manifest = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| CoreError::MalformedManifest(e.to_string()))?;
        if manifest.body.version != MANIFEST_VERSION {
            return Err(CoreError::MalformedManifest(format!(
                "manifest version {} is not supported (this node reads version {MANIFEST_VERSION})",
                manifest.body.version
            )));
        }
        if manifest.body.envelope.version != ENVELOPE_VERSION {
            return Err(CoreError::MalformedManifest(format!(
                "envelope version {} is not supported (this node reads version {ENVELOPE_VERSION})",
                manifest.body.envelope.version
            )));
        }
        if manifest.body.owner != manifest.signature.signer {
            return Err(CoreError::MalformedManifest(format!(
                "it names {} as owner but is signed by {}",
                manifest.body.owner, manifest.signature.signer
            )));
        }
        if manifest.body.chunks.is_empty() {
            return Err(CoreError::MalformedManifest(
                "it lists no chunks (even an empty record has one)".into(),
            ));
        }
        Ok(manifest)
    }

    /// Encodes the block and returns it with the record id it is stored under.
    pub fn to_block(&self) -> Result<(RecordId, Vec<u8>), CoreError> {
        let bytes = self.encode()?;
        let id = RecordId::from_manifest_cid(cid_of(Codec::DagCbor, &bytes))?;
        Ok((id, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            body: ManifestBody {
                version: MANIFEST_VERSION,
                owner: InstitutionId::new(&"AB".repeat(32)).unwrap(),
                meta: SealedMeta {
                    aead: AeadAlgorithm::Aes256Gcm,
                    nonce: vec![3; 12],
                    ciphertext: vec![4; 144],
                },
                envelope: EnvelopeHeader {
                    version: ENVELOPE_VERSION,
                    aead: AeadAlgorithm::Aes256Gcm,
                    chunk_size: 262_144,
                    envelope_id: vec![7; 16],
                },
                chunks: vec![cid_of(Codec::Raw, b"c0")],
                key_wraps: vec![KeyWrap {
                    recipient: InstitutionId::new(&"AB".repeat(32)).unwrap(),
                    algorithm: KeyWrapAlgorithm::OpenPgpMlKem768X25519,
                    message: vec![1, 2, 3],
                }],
            },
            signature: ManifestSignature {
                signer: InstitutionId::new(&"AB".repeat(32)).unwrap(),
                algorithm: SignatureAlgorithm::OpenPgpMlDsa65Ed25519,
                signature: vec![9; 4],
            },
        }
    }

    #[test]
    fn manifest_round_trips_and_links_chunks_as_cids() {
        let m = sample();
        let (id, bytes) = m.to_block().unwrap();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        // DAG-CBOR links are tag 42 (0xd8 0x2a): IPLD tools can walk to the chunks.
        assert!(bytes.windows(2).any(|w| w == [0xd8, 0x2a]));
        assert_eq!(id.cid().codec(), Codec::DagCbor.code());
    }

    #[test]
    fn decode_rejects_future_versions_and_garbage() {
        let mut m = sample();
        m.body.version = 99;
        let err = Manifest::decode(&m.encode().unwrap()).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        assert!(Manifest::decode(b"\xff\x00garbage").is_err());
    }

    #[test]
    fn decode_refuses_version_1_with_its_reason() {
        // Version 1's body had `meta` in clear and no `owner`: decoding must still
        // say which version it is, not which field is missing.
        #[derive(Serialize)]
        struct V1Body {
            version: u32,
            meta: std::collections::BTreeMap<String, String>,
        }
        #[derive(Serialize)]
        struct V1 {
            body: V1Body,
        }
        let bytes = serde_ipld_dagcbor::to_vec(&V1 {
            body: V1Body {
                version: 1,
                meta: [("patient".to_string(), "MRN-1".to_string())].into(),
            },
        })
        .unwrap();
        let err = Manifest::decode(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("version 1") && err.contains("ingest the record again"),
            "{err}"
        );
    }

    #[test]
    fn decode_refuses_an_owner_other_than_the_signer() {
        let mut m = sample();
        m.signature.signer = InstitutionId::new(&"CD".repeat(32)).unwrap();
        let err = Manifest::decode(&m.encode().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("as owner but is signed by"), "{err}");
    }
}
