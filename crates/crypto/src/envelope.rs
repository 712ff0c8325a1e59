//! Chunked record encryption with AES-256-GCM.
//!
//! Nonce of chunk `i`: 4 zero bytes followed by `i` as a big-endian u64. The data key is
//! fresh per record, so a counter nonce never repeats under one key.
//! Associated data of chunk `i`: `"medmesh/chunk/v1"`, the record's random envelope id,
//! `i`, and a final-chunk flag. A chunk moved to another position, another record, or
//! presented as the last one when it is not fails authentication; so does a record
//! whose final chunk was cut off (no chunk carries the flag).
//!
//! The record's metadata is sealed in its manifest under a second key derived from the
//! data key (HKDF-SHA-256), with a random nonce and associated data naming the envelope
//! id and the owner: it never shares a key or a nonce with a chunk, and cannot be moved
//! to another record's manifest. It is padded (see `padding`) so its size does not tell
//! how long the patient reference is.

use medmesh_core::{
    AeadAlgorithm, EnvelopeHeader, InstitutionId, RecordMeta, SealedMeta, ENVELOPE_VERSION,
};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::padding::{pad, unpad};
use crate::CryptoError;

/// Bytes the AEAD tag adds to each chunk.
pub const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8; 16] = b"medmesh/chunk/v1";
const ENVELOPE_ID_LEN: usize = 16;
const META_DOMAIN: &[u8] = b"medmesh/meta/v2";

/// A record's 256-bit data key. Zeroed on drop, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| CryptoError::Random)?;
        Ok(Self(key))
    }

    /// Wraps key bytes (e.g. just unwrapped).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            CryptoError::Unwrap(format!("data key is {} bytes, expected 32", bytes.len()))
        })?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// The raw key, for wrapping.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Seals and opens the chunks of one record. Cheap to share between threads.
pub struct RecordCipher {
    key: LessSafeKey,
    meta_key: LessSafeKey,
    envelope_id: [u8; ENVELOPE_ID_LEN],
}

impl RecordCipher {
    /// A new envelope header with a random id, for a record about to be written.
    pub fn new_header(chunk_size: u32) -> Result<EnvelopeHeader, CryptoError> {
        let mut envelope_id = [0u8; ENVELOPE_ID_LEN];
        SystemRandom::new()
            .fill(&mut envelope_id)
            .map_err(|_| CryptoError::Random)?;
        Ok(EnvelopeHeader {
            version: ENVELOPE_VERSION,
            aead: AeadAlgorithm::Aes256Gcm,
            chunk_size,
            envelope_id: envelope_id.to_vec(),
        })
    }

    /// The cipher for the record described by `header`.
    pub fn new(key: &DataKey, header: &EnvelopeHeader) -> Result<Self, CryptoError> {
        if header.version != ENVELOPE_VERSION {
            return Err(CryptoError::Unwrap(format!(
                "envelope version {} is not supported",
                header.version
            )));
        }
        let AeadAlgorithm::Aes256Gcm = header.aead;
        let envelope_id: [u8; ENVELOPE_ID_LEN] =
            header.envelope_id.as_slice().try_into().map_err(|_| {
                CryptoError::Unwrap(format!(
                    "envelope id is {} bytes, expected {ENVELOPE_ID_LEN}",
                    header.envelope_id.len()
                ))
            })?;
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes())
            .map_err(|_| CryptoError::Unwrap("AES-256-GCM rejected the key".into()))?;
        let meta_key: UnboundKey = hkdf::Salt::new(hkdf::HKDF_SHA256, META_DOMAIN)
            .extract(key.as_bytes())
            .expand(&[b"manifest-meta"], &AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA-256 output length")
            .into();
        Ok(Self {
            key: LessSafeKey::new(unbound),
            meta_key: LessSafeKey::new(meta_key),
            envelope_id,
        })
    }

    /// Seals a record's metadata for its manifest.
    pub fn seal_meta(&self, meta: &RecordMeta) -> Result<SealedMeta, CryptoError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let json = serde_json::to_vec(meta).expect("metadata serializes");
        let mut buf = pad(&json);
        self.meta_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.meta_aad(&meta.owner)),
                &mut buf,
            )
            .map_err(|_| CryptoError::Sealed("AES-256-GCM seal failed".into()))?;
        Ok(SealedMeta {
            aead: AeadAlgorithm::Aes256Gcm,
            nonce: nonce.to_vec(),
            ciphertext: buf,
        })
    }

    /// Opens the metadata sealed in a manifest owned by `owner`.
    pub fn open_meta(
        &self,
        sealed: &SealedMeta,
        owner: &InstitutionId,
    ) -> Result<RecordMeta, CryptoError> {
        let AeadAlgorithm::Aes256Gcm = sealed.aead;
        let nonce: [u8; aead::NONCE_LEN] = sealed.nonce.as_slice().try_into().map_err(|_| {
            CryptoError::Sealed(format!("its nonce is {} bytes", sealed.nonce.len()))
        })?;
        let mut buf = sealed.ciphertext.clone();
        let plain = self
            .meta_key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.meta_aad(owner)),
                &mut buf,
            )
            .map_err(|_| {
                CryptoError::Sealed(
                    "it does not authenticate: it was modified or moved from another record".into(),
                )
            })?;
        let meta: RecordMeta = serde_json::from_slice(unpad(plain)?)
            .map_err(|e| CryptoError::Sealed(format!("it is not record metadata: {e}")))?;
        if &meta.owner != owner {
            return Err(CryptoError::Sealed(format!(
                "it names {} as owner, the manifest {owner}",
                meta.owner
            )));
        }
        Ok(meta)
    }

    fn meta_aad(&self, owner: &InstitutionId) -> Vec<u8> {
        let mut aad = META_DOMAIN.to_vec();
        aad.extend_from_slice(&self.envelope_id);
        aad.extend_from_slice(owner.as_str().as_bytes());
        aad
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal_chunk(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let aad = self.aad(index, last);
        self.key
            .seal_in_place_append_tag(nonce(index), Aad::from(&aad[..]), buf)
            .map_err(|_| CryptoError::OpenPgp("AES-256-GCM seal failed".into()))
    }

    /// Authenticates and decrypts `buf` in place; returns the plaintext part.
    pub fn open_chunk<'a>(
        &self,
        index: u64,
        last: bool,
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        let aad = self.aad(index, last);
        self.key
            .open_in_place(nonce(index), Aad::from(&aad[..]), buf)
            .map_err(|_| CryptoError::ChunkAuthentication { index })
    }

    fn aad(&self, index: u64, last: bool) -> [u8; 16 + ENVELOPE_ID_LEN + 8 + 1] {
        let mut aad = [0u8; 16 + ENVELOPE_ID_LEN + 8 + 1];
        aad[..16].copy_from_slice(AAD_DOMAIN);
        aad[16..32].copy_from_slice(&self.envelope_id);
        aad[32..40].copy_from_slice(&index.to_be_bytes());
        aad[40] = u8::from(last);
        aad
    }
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> RecordCipher {
        let header = RecordCipher::new_header(1024).unwrap();
        RecordCipher::new(&DataKey::generate().unwrap(), &header).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let c = cipher();
        let mut buf = b"observation".to_vec();
        c.seal_chunk(3, true, &mut buf).unwrap();
        assert_eq!(buf.len(), 11 + TAG_LEN);
        assert_ne!(&buf[..11], b"observation");
        assert_eq!(c.open_chunk(3, true, &mut buf).unwrap(), b"observation");
    }

    #[test]
    fn position_flag_record_and_bits_are_bound() {
        let c = cipher();
        let mut sealed = b"chunk".to_vec();
        c.seal_chunk(1, false, &mut sealed).unwrap();

        let wrong_index = c.open_chunk(2, false, &mut sealed.clone()).unwrap_err();
        assert!(matches!(
            wrong_index,
            CryptoError::ChunkAuthentication { index: 2 }
        ));
        assert!(
            c.open_chunk(1, true, &mut sealed.clone()).is_err(),
            "last flag not bound"
        );
        assert!(
            cipher().open_chunk(1, false, &mut sealed.clone()).is_err(),
            "key not bound"
        );
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(c.open_chunk(1, false, &mut flipped).is_err());
        assert!(c.open_chunk(1, false, &mut sealed).is_ok());
    }

    #[test]
    fn same_key_other_envelope_id_fails() {
        let key = DataKey::generate().unwrap();
        let a = RecordCipher::new(&key, &RecordCipher::new_header(1024).unwrap()).unwrap();
        let b = RecordCipher::new(&key, &RecordCipher::new_header(1024).unwrap()).unwrap();
        let mut buf = b"x".to_vec();
        a.seal_chunk(0, true, &mut buf).unwrap();
        assert!(b.open_chunk(0, true, &mut buf).is_err());
    }

    #[test]
    fn metadata_seals_apart_from_chunks_and_is_bound_to_the_record() {
        let key = DataKey::generate().unwrap();
        let header = RecordCipher::new_header(1024).unwrap();
        let c = RecordCipher::new(&key, &header).unwrap();
        let owner = InstitutionId::new(&"AB".repeat(32)).unwrap();
        let meta = RecordMeta {
            content_type: "application/fhir+json".parse().unwrap(),
            size: 42,
            created: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            owner: owner.clone(),
            patient: Some(medmesh_core::PatientRef::new("MRN-MARKER-77").unwrap()),
        };
        let sealed = c.seal_meta(&meta).unwrap();
        for clear in [&b"MRN-MARKER-77"[..], b"fhir", b"2023"] {
            assert!(!sealed.ciphertext.windows(clear.len()).any(|w| w == clear));
        }
        assert_eq!(sealed.ciphertext.len() % 128, 16, "padded, plus the tag");
        assert_eq!(c.open_meta(&sealed, &owner).unwrap(), meta);
        let other_owner = InstitutionId::new(&"CD".repeat(32)).unwrap();
        assert!(
            c.open_meta(&sealed, &other_owner).is_err(),
            "owner not bound"
        );
        let other_record = RecordCipher::new(&key, &RecordCipher::new_header(1024).unwrap());
        assert!(
            other_record.unwrap().open_meta(&sealed, &owner).is_err(),
            "envelope not bound"
        );
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(c.open_meta(&flipped, &owner).is_err());
    }

    #[test]
    fn data_key_debug_is_redacted() {
        let k = DataKey::generate().unwrap();
        assert_eq!(format!("{k:?}"), "DataKey(<redacted>)");
    }
}
