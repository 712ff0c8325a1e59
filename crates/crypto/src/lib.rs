//! medmesh cryptography behind one API, so an algorithm can be replaced without
//! touching callers:
//!
//! - [`envelope`]: records are encrypted in chunks with AES-256-GCM (`ring`) under a
//!   fresh 256-bit [`DataKey`]; each chunk's nonce and associated data bind it to its
//!   record and position, so chunks verify on their own and cannot be reordered or
//!   truncated.
//! - [`keys`]: institutions hold post-quantum OpenPGP certificates (RFC 9580 profile,
//!   ML-DSA-65+Ed25519 signing, ML-KEM-768+X25519 encryption). Data keys are wrapped
//!   for recipients as OpenPGP messages; manifests are signed.
//! - [`IndexKey`]: seals the local index's metadata and keys its lookup hashes, so the
//!   index on disk names no patient.
//! - [`keystore`]: the on-disk home of those keys, secrets protected by a passphrase.
//! - [`device_key`]: the Falcon-512 (or Ed25519) keys medical devices sign readings with.
//! - [`eth`]: Ethereum wallet signatures (EIP-191 `personal_sign`) of patients and
//!   researchers.
//!
//! Bulk data never goes through OpenPGP (about 0.1 GB/s): OpenPGP wraps keys, `ring`
//! encrypts data.

pub mod device_key;
pub mod envelope;
mod error;
pub mod eth;
mod index_key;
pub mod keys;
pub mod keystore;
mod padding;

pub use device_key::{DeviceAlgorithm, DevicePublicKey, DeviceSigner};
pub use envelope::{DataKey, RecordCipher};
pub use error::CryptoError;
pub use index_key::IndexKey;
pub use keys::{Certificate, SecretKeys, UnlockedDecryptor, UnlockedSigner};
pub use keystore::{Keystore, NodeIdentity, Passphrase};
