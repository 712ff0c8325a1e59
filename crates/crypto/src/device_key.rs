//! Device keys: how a bedside monitor or a wearable proves that a reading is its own.
//!
//! A device is registered with a public key; every message it publishes is signed over
//! the bytes `medmesh_core::device_message::signed_bytes` names. Falcon-512 (NIST's
//! lattice signature, FN-DSA) is the default: post-quantum, with small signatures
//! (≤ 752 bytes) and verification cheap enough for thousands of messages a second.
//! Ed25519 is accepted for devices whose firmware cannot run Falcon.
//!
//! Verification is all the node needs; [`DeviceSigner`] exists for device simulators,
//! benchmarks and tests.

use pqcrypto_falcon::falcon512;
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _};
use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};

use crate::CryptoError;

/// A device's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceAlgorithm {
    /// Falcon-512 (the default).
    #[serde(rename = "falcon-512")]
    Falcon512,
    /// Ed25519, for devices that cannot do Falcon.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl DeviceAlgorithm {
    /// Its name as configured and shown (`falcon-512`, `ed25519`).
    pub fn name(self) -> &'static str {
        match self {
            DeviceAlgorithm::Falcon512 => "falcon-512",
            DeviceAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// The algorithm named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "falcon-512" | "falcon512" => Some(DeviceAlgorithm::Falcon512),
            "ed25519" => Some(DeviceAlgorithm::Ed25519),
            _ => None,
        }
    }

    /// Size of its public keys in bytes.
    pub fn public_key_len(self) -> usize {
        match self {
            DeviceAlgorithm::Falcon512 => falcon512::public_key_bytes(),
            DeviceAlgorithm::Ed25519 => 32,
        }
    }
}

impl std::fmt::Display for DeviceAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A registered device's public key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePublicKey {
    algorithm: DeviceAlgorithm,
    #[serde(with = "hex_bytes")]
    bytes: Vec<u8>,
}

impl DevicePublicKey {
    /// The key `bytes` of `algorithm`, checked to be one.
    pub fn new(algorithm: DeviceAlgorithm, bytes: Vec<u8>) -> Result<Self, CryptoError> {
        let expected = algorithm.public_key_len();
        if bytes.len() != expected {
            return Err(CryptoError::DeviceKey(format!(
                "a {algorithm} public key is {expected} bytes, this one is {}",
                bytes.len()
            )));
        }
        if algorithm == DeviceAlgorithm::Falcon512 {
            falcon512::PublicKey::from_bytes(&bytes)
                .map_err(|e| CryptoError::DeviceKey(format!("not a Falcon-512 key: {e}")))?;
        }
        Ok(Self { algorithm, bytes })
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> DeviceAlgorithm {
        self.algorithm
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A short fingerprint (SHA-256, first 16 bytes as hex) to show and audit.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        hex::encode(&digest.as_ref()[..16])
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self.algorithm {
            DeviceAlgorithm::Falcon512 => {
                let (Ok(key), Ok(sig)) = (
                    falcon512::PublicKey::from_bytes(&self.bytes),
                    falcon512::DetachedSignature::from_bytes(signature),
                ) else {
                    return false;
                };
                falcon512::verify_detached_signature(&sig, message, &key).is_ok()
            }
            DeviceAlgorithm::Ed25519 => {
                signature::UnparsedPublicKey::new(&signature::ED25519, &self.bytes)
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

impl std::fmt::Debug for DevicePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DevicePublicKey({} {})",
            self.algorithm,
            self.fingerprint()
        )
    }
}

/// A device's signing key, for simulators, benchmarks and tests (real devices keep
/// theirs in their own secure element).
pub struct DeviceSigner {
    inner: SignerKey,
    public: DevicePublicKey,
}

enum SignerKey {
    Falcon(Box<falcon512::SecretKey>),
    Ed25519(signature::Ed25519KeyPair),
}

impl DeviceSigner {
    /// A fresh key pair of `algorithm`.
    pub fn generate(algorithm: DeviceAlgorithm) -> Result<Self, CryptoError> {
        match algorithm {
            DeviceAlgorithm::Falcon512 => {
                let (public, secret) = falcon512::keypair();
                Ok(Self {
                    public: DevicePublicKey::new(algorithm, public.as_bytes().to_vec())?,
                    inner: SignerKey::Falcon(Box::new(secret)),
                })
            }
            DeviceAlgorithm::Ed25519 => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| CryptoError::Random)?;
                let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .map_err(|e| CryptoError::DeviceKey(e.to_string()))?;
                Ok(Self {
                    public: DevicePublicKey::new(algorithm, pair.public_key().as_ref().to_vec())?,
                    inner: SignerKey::Ed25519(pair),
                })
            }
        }
    }

    /// Its public key, to register.
    pub fn public_key(&self) -> &DevicePublicKey {
        &self.public
    }

    /// A signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.inner {
            SignerKey::Falcon(secret) => falcon512::detached_sign(message, secret)
                .as_bytes()
                .to_vec(),
            SignerKey::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_algorithms_sign_and_verify_and_refuse_what_is_not_theirs() {
        for algorithm in [DeviceAlgorithm::Falcon512, DeviceAlgorithm::Ed25519] {
            let signer = DeviceSigner::generate(algorithm).unwrap();
            let other = DeviceSigner::generate(algorithm).unwrap();
            let key = signer.public_key();
            assert_eq!(key.as_bytes().len(), algorithm.public_key_len());
            let sig = signer.sign(b"reading");
            assert!(key.verify(b"reading", &sig), "{algorithm}");
            assert!(!key.verify(b"readinG", &sig), "{algorithm}: other message");
            assert!(
                !other.public_key().verify(b"reading", &sig),
                "{algorithm}: other key"
            );
            let mut flipped = sig.clone();
            flipped[sig.len() / 2] ^= 1;
            assert!(
                !key.verify(b"reading", &flipped),
                "{algorithm}: flipped bit"
            );
            assert!(!key.verify(b"reading", &[]), "{algorithm}: empty signature");
            assert!(!key.verify(b"reading", &[0u8; 4000]), "{algorithm}: junk");
        }
    }

    #[test]
    fn keys_of_the_wrong_size_are_refused_and_serde_round_trips() {
        let err = DevicePublicKey::new(DeviceAlgorithm::Falcon512, vec![0; 32]).unwrap_err();
        assert!(err.to_string().contains("897 bytes"), "{err}");
        assert!(DevicePublicKey::new(DeviceAlgorithm::Ed25519, vec![0; 31]).is_err());
        let key = DeviceSigner::generate(DeviceAlgorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone();
        let json = serde_json::to_string(&key).unwrap();
        assert!(json.contains("\"ed25519\""), "{json}");
        assert_eq!(serde_json::from_str::<DevicePublicKey>(&json).unwrap(), key);
        assert_eq!(
            DeviceAlgorithm::from_name("Falcon-512"),
            Some(DeviceAlgorithm::Falcon512)
        );
        assert_eq!(DeviceAlgorithm::from_name("rsa"), None);
    }
}
