//! Institution keys: post-quantum OpenPGP certificates, data-key wrapping, manifest
//! signatures.
//!
//! Certificates use the RFC 9580 profile (v6 keys) with the `MLDSA65_Ed25519` cipher
//! suite: the primary key and the signing subkey are ML-DSA-65+Ed25519, the encryption
//! subkey ML-KEM-768+X25519 (RFC 9980). A data key wrapped for such a certificate stays
//! safe unless both the classical and the post-quantum half are broken.

use std::io::Write;
use std::sync::OnceLock;

use medmesh_core::{
    InstitutionId, KeyWrap, KeyWrapAlgorithm, Manifest, ManifestBody, ManifestSignature,
    SignatureAlgorithm,
};
use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::crypto::{KeyPair, SessionKey};
use openpgp::packet::{signature::SignatureBuilder, Packet, Signature, PKESK, SKESK};
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message};
use openpgp::serialize::SerializeInto;
use openpgp::types::{PublicKeyAlgorithm, SignatureType, SymmetricAlgorithm};
use openpgp::{Cert, Fingerprint, KeyHandle, Profile};

use crate::{CryptoError, DataKey, Passphrase};

fn policy() -> &'static StandardPolicy<'static> {
    static POLICY: OnceLock<StandardPolicy<'static>> = OnceLock::new();
    POLICY.get_or_init(StandardPolicy::new)
}

/// Public half of an institution's (or researcher's) certificate.
#[derive(Clone, Debug)]
pub struct Certificate {
    cert: Cert,
}

impl Certificate {
    /// Parses an armored or binary certificate and checks it has a valid
    /// post-quantum encryption subkey and signing key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let cert = Cert::from_bytes(bytes)
            .map_err(|e| CryptoError::Certificate(format!("cannot parse it: {e}")))?;
        Self::from_cert(cert.strip_secret_key_material())
    }

    fn from_cert(cert: Cert) -> Result<Self, CryptoError> {
        let valid = cert
            .with_policy(policy(), None)
            .map_err(|e| CryptoError::Certificate(format!("not valid under policy: {e}")))?;
        let has_pq_encryption = valid
            .keys()
            .alive()
            .revoked(false)
            .for_transport_encryption()
            .any(|k| k.key().pk_algo() == PublicKeyAlgorithm::MLKEM768_X25519);
        if !has_pq_encryption {
            return Err(CryptoError::Certificate(format!(
                "{} has no live ML-KEM-768+X25519 encryption subkey; \
                 medmesh wraps data keys only for post-quantum keys",
                cert.fingerprint()
            )));
        }
        Ok(Self { cert })
    }

    /// The certificate's fingerprint, which names the institution.
    pub fn id(&self) -> InstitutionId {
        InstitutionId::new(&self.cert.fingerprint().to_hex()).expect("fingerprints are hex")
    }

    /// ASCII-armored export (public parts only).
    pub fn to_armored(&self) -> Result<Vec<u8>, CryptoError> {
        self.cert.armored().to_vec().map_err(CryptoError::openpgp)
    }

    /// Wraps `key` for this certificate's encryption subkey(s) as an OpenPGP message.
    pub fn wrap(&self, key: &DataKey) -> Result<KeyWrap, CryptoError> {
        let valid = self
            .cert
            .with_policy(policy(), None)
            .map_err(CryptoError::openpgp)?;
        let recipients = valid
            .keys()
            .supported()
            .alive()
            .revoked(false)
            .for_transport_encryption();
        let mut message = Vec::new();
        {
            let sink = Message::new(&mut message);
            let encryptor = Encryptor::for_recipients(sink, recipients)
                .build()
                .map_err(CryptoError::openpgp)?;
            let mut literal = LiteralWriter::new(encryptor)
                .build()
                .map_err(CryptoError::openpgp)?;
            literal
                .write_all(key.as_bytes())
                .map_err(CryptoError::openpgp)?;
            literal.finalize().map_err(CryptoError::openpgp)?;
        }
        Ok(KeyWrap {
            recipient: self.id(),
            algorithm: KeyWrapAlgorithm::OpenPgpMlKem768X25519,
            message,
        })
    }

    /// Checks the owner's signature over a manifest body.
    pub fn verify_manifest(&self, manifest: &Manifest) -> Result<(), CryptoError> {
        let bad = |reason: String| CryptoError::BadSignature {
            signer: self.cert.fingerprint().to_hex(),
            reason,
        };
        let ManifestSignature {
            signer,
            algorithm: SignatureAlgorithm::OpenPgpMlDsa65Ed25519,
            signature,
        } = &manifest.signature;
        if signer != &self.id() {
            return Err(bad(format!("the manifest says it was signed by {signer}")));
        }
        let message = manifest
            .body
            .signing_bytes()
            .map_err(|e| bad(e.to_string()))?;
        let sig = match Packet::from_bytes(signature.as_slice()) {
            Ok(Packet::Signature(sig)) => sig,
            Ok(other) => {
                return Err(bad(format!(
                    "expected a signature packet, found {}",
                    other.tag()
                )))
            }
            Err(e) => return Err(bad(format!("unreadable signature: {e}"))),
        };
        let valid = self
            .cert
            .with_policy(policy(), None)
            .map_err(|e| bad(e.to_string()))?;
        let mut last_error = String::from("no live signing key");
        for key in valid.keys().alive().revoked(false).for_signing() {
            match sig.verify_message(key.key(), &message) {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(bad(last_error))
    }
}

/// An institution's certificate with its secret keys, still locked by the passphrase.
pub struct SecretKeys {
    tsk: Cert,
}

impl SecretKeys {
    /// Generates a new institution certificate (RFC 9580, ML-DSA-65+Ed25519 signing,
    /// ML-KEM-768+X25519 encryption), secrets locked with `passphrase`.
    pub fn generate(user_id: &str, passphrase: &Passphrase) -> Result<Self, CryptoError> {
        let (tsk, _revocation) = CertBuilder::new()
            .set_profile(Profile::RFC9580)
            .map_err(CryptoError::openpgp)?
            .set_cipher_suite(CipherSuite::MLDSA65_Ed25519)
            .add_userid(user_id)
            .add_signing_subkey()
            .add_transport_encryption_subkey()
            .add_storage_encryption_subkey()
            .set_password(Some(passphrase.to_password()))
            .generate()
            .map_err(CryptoError::openpgp)?;
        Ok(Self { tsk })
    }

    /// Parses a transferable secret key (armored or binary).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let tsk = Cert::from_bytes(bytes)
            .map_err(|e| CryptoError::Certificate(format!("cannot parse the secret key: {e}")))?;
        if !tsk.is_tsk() {
            return Err(CryptoError::Certificate(
                "the key file holds no secret key material".into(),
            ));
        }
        Ok(Self { tsk })
    }

    /// ASCII-armored export including the (passphrase-locked) secrets.
    pub fn to_armored(&self) -> Result<Vec<u8>, CryptoError> {
        self.tsk
            .as_tsk()
            .armored()
            .to_vec()
            .map_err(CryptoError::openpgp)
    }

    /// The public certificate.
    pub fn certificate(&self) -> Result<Certificate, CryptoError> {
        Certificate::from_cert(self.tsk.clone().strip_secret_key_material())
    }

    /// Unlocks the encryption subkeys, to unwrap data keys.
    pub fn unlock_decryption(
        &self,
        passphrase: &Passphrase,
    ) -> Result<UnlockedDecryptor, CryptoError> {
        let valid = self
            .tsk
            .with_policy(policy(), None)
            .map_err(CryptoError::openpgp)?;
        let password = passphrase.to_password();
        let mut keys = Vec::new();
        for ka in valid.keys().secret().for_transport_encryption() {
            let key = ka.key().clone();
            let key = if key.has_unencrypted_secret() {
                key
            } else {
                key.decrypt_secret(&password)
                    .map_err(|_| CryptoError::WrongPassphrase)?
            };
            keys.push(key.into_keypair().map_err(CryptoError::openpgp)?);
        }
        if keys.is_empty() {
            return Err(CryptoError::Certificate(
                "no secret encryption subkey".into(),
            ));
        }
        Ok(UnlockedDecryptor {
            id: self.certificate()?.id(),
            keys,
        })
    }

    /// Unlocks the signing subkey, to sign manifests.
    pub fn unlock_signing(&self, passphrase: &Passphrase) -> Result<UnlockedSigner, CryptoError> {
        let valid = self
            .tsk
            .with_policy(policy(), None)
            .map_err(CryptoError::openpgp)?;
        let ka = valid
            .keys()
            .secret()
            .alive()
            .revoked(false)
            .for_signing()
            .next()
            .ok_or_else(|| CryptoError::Certificate("no live secret signing key".into()))?;
        let key = ka.key().clone();
        let key = if key.has_unencrypted_secret() {
            key
        } else {
            key.decrypt_secret(&passphrase.to_password())
                .map_err(|_| CryptoError::WrongPassphrase)?
        };
        Ok(UnlockedSigner {
            id: self.certificate()?.id(),
            keypair: key.into_keypair().map_err(CryptoError::openpgp)?,
        })
    }
}

/// Secret encryption subkeys, unlocked: can unwrap data keys addressed to us.
pub struct UnlockedDecryptor {
    id: InstitutionId,
    keys: Vec<KeyPair>,
}

impl UnlockedDecryptor {
    /// Unwraps the record's data key from the wrap addressed to us.
    pub fn unwrap_key(&mut self, body: &ManifestBody) -> Result<DataKey, CryptoError> {
        let wrap = body
            .key_wrap_for(&self.id)
            .ok_or_else(|| CryptoError::NotARecipient {
                ours: self.id.to_string(),
                wrapped_for: body
                    .key_wraps
                    .iter()
                    .map(|w| w.recipient.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        self.unwrap(wrap)
    }

    /// Unwraps a key wrapped for us outside a manifest (the keystore's index key).
    pub fn unwrap(&mut self, wrap: &KeyWrap) -> Result<DataKey, CryptoError> {
        let KeyWrapAlgorithm::OpenPgpMlKem768X25519 = wrap.algorithm;
        let helper = UnwrapHelper {
            keys: &mut self.keys,
        };
        let mut decryptor = DecryptorBuilder::from_bytes(&wrap.message)
            .map_err(|e| CryptoError::Unwrap(e.to_string()))?
            .with_policy(policy(), None, helper)
            .map_err(|e| CryptoError::Unwrap(e.to_string()))?;
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(32));
        std::io::copy(&mut decryptor, &mut *plain)
            .map_err(|e| CryptoError::Unwrap(e.to_string()))?;
        DataKey::from_bytes(&plain)
    }
}

/// The signing subkey, unlocked: signs manifests.
pub struct UnlockedSigner {
    id: InstitutionId,
    keypair: KeyPair,
}

impl UnlockedSigner {
    /// The signer's institution id (certificate fingerprint).
    pub fn id(&self) -> &InstitutionId {
        &self.id
    }

    /// Signs a manifest body.
    pub fn sign_manifest(&mut self, body: ManifestBody) -> Result<Manifest, CryptoError> {
        let message = body.signing_bytes().map_err(CryptoError::openpgp)?;
        let sig: Signature = SignatureBuilder::new(SignatureType::Binary)
            .sign_message(&mut self.keypair, &message)
            .map_err(CryptoError::openpgp)?;
        let signature = Packet::from(sig).to_vec().map_err(CryptoError::openpgp)?;
        Ok(Manifest {
            body,
            signature: ManifestSignature {
                signer: self.id.clone(),
                algorithm: SignatureAlgorithm::OpenPgpMlDsa65Ed25519,
                signature,
            },
        })
    }
}

struct UnwrapHelper<'a> {
    keys: &'a mut [KeyPair],
}

impl VerificationHelper for UnwrapHelper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }

    fn check(&mut self, _structure: MessageStructure) -> openpgp::Result<()> {
        // The wrap is authenticated by the manifest signature, not by its own.
        Ok(())
    }
}

impl DecryptionHelper for UnwrapHelper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        for pkesk in pkesks {
            for pair in self.keys.iter_mut() {
                let ours: Fingerprint = pair.public().fingerprint();
                let addressed = pkesk
                    .recipient()
                    .map(|r| r.aliases(KeyHandle::from(&ours)))
                    .unwrap_or(true);
                if !addressed {
                    continue;
                }
                if let Some((algo, sk)) = pkesk.decrypt(pair, sym_algo) {
                    if decrypt(algo, &sk) {
                        return Ok(None);
                    }
                }
            }
        }
        Err(
            openpgp::Error::InvalidOperation("no PKESK could be decrypted with our keys".into())
                .into(),
        )
    }
}
