//! The index key: what keeps the local index private on disk.
//!
//! The index must answer "records of this patient / of this type / in this time window"
//! without the patient reference or the metadata in clear. So each record's metadata is
//! sealed (AES-256-GCM, bound to the record id), and the lookups go by keyed hashes
//! (HMAC-SHA-256 of the value under a domain tag): equal values give equal tags, but a
//! tag cannot be checked against a guess without the key, so a dictionary of MRNs or
//! media types tells an attacker with the disk nothing. Two subkeys are derived with
//! HKDF-SHA-256, one per use.
//!
//! The key itself lives in the keystore wrapped for the institution's certificate (see
//! [`crate::Keystore::index_key`]), so it opens with the same passphrase as the other
//! secrets.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use crate::padding::{pad, unpad};
use crate::{CryptoError, DataKey};

const HKDF_SALT: &[u8] = b"medmesh/index-key/v1";

/// Seals index values and computes the keyed hashes the index looks them up by.
pub struct IndexKey {
    seal: LessSafeKey,
    tag: hmac::Key,
}

impl IndexKey {
    /// The index key made from 32 secret bytes (a [`DataKey`]'s, as stored wrapped).
    pub fn new(secret: &DataKey) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret.as_bytes());
        let seal: UnboundKey = prk
            .expand(&[b"seal"], &AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA-256 output length")
            .into();
        let tag: hmac::Key = prk
            .expand(&[b"tag"], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA-256 output length")
            .into();
        Self {
            seal: LessSafeKey::new(seal),
            tag,
        }
    }

    /// The keyed hash of `value` as a lookup key of kind `domain` (e.g. `patient`),
    /// 128 bits as hex.
    pub fn tag(&self, domain: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.tag);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        hex::encode(&ctx.sign().as_ref()[..16])
    }

    /// Seals `value` bound to `context` (e.g. the record id): `nonce || ciphertext ||
    /// tag`, padded so its size hides the value's length.
    pub fn seal(&self, context: &[u8], value: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let mut buf = pad(value);
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| CryptoError::Sealed("AES-256-GCM seal failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what [`IndexKey::seal`] sealed under the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<{ aead::NONCE_LEN }>()
            .ok_or_else(|| CryptoError::Sealed("it is too short".into()))?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .seal
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| {
                CryptoError::Sealed(
                    "it does not authenticate: it was modified, belongs to another entry, \
                     or the index key is not this data dir's"
                        .into(),
                )
            })?;
        Ok(unpad(plain)?.to_vec())
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> IndexKey {
        IndexKey::new(&DataKey::generate().unwrap())
    }

    #[test]
    fn tags_are_keyed_and_separated_by_domain() {
        let (a, b) = (key(), key());
        assert_eq!(a.tag("patient", "MRN-1"), a.tag("patient", "MRN-1"));
        assert_ne!(a.tag("patient", "MRN-1"), a.tag("patient", "MRN-2"));
        assert_ne!(a.tag("patient", "MRN-1"), a.tag("type", "MRN-1"));
        assert_ne!(a.tag("patient", "MRN-1"), b.tag("patient", "MRN-1"));
        assert_eq!(a.tag("patient", "MRN-1").len(), 32);
        assert!(!a.tag("patient", "MRN-1").contains("MRN"));
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let k = key();
        let sealed = k.seal(b"record-a", b"MRN-0042 text/plain").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"MRN-0042"));
        assert_eq!(
            k.open(b"record-a", &sealed).unwrap(),
            b"MRN-0042 text/plain"
        );
        assert!(k.open(b"record-b", &sealed).is_err(), "context not bound");
        assert!(key().open(b"record-a", &sealed).is_err(), "key not bound");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open(b"record-a", &flipped).is_err());
        assert!(k.open(b"record-a", &sealed[..5]).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key()), "IndexKey(<redacted>)");
    }
}
