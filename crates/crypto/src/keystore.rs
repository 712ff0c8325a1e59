//! The keystore: an institution's keys and the node's identity, on disk.
//!
//! ```text
//! keys/institution.pgp       certificate + secret keys, secrets locked by the passphrase (0600)
//! keys/institution.cert.asc  public certificate, what `medmesh keys export` prints (0644)
//! keys/node.key              node identity: Ed25519 seed, hex (0600, unencrypted so the
//!                            node can start unattended, as libp2p nodes do)
//! keys/index.key             the index key, wrapped for the institution's certificate
//!                            (0600): opens with the passphrase, as the secret keys do
//! ```
//!
//! Secret files are created 0600 and refused when group- or world-readable.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cid::multibase::{self, Base};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sequoia_openpgp::crypto::Password;
use zeroize::Zeroizing;

use crate::{Certificate, CryptoError, DataKey, IndexKey, SecretKeys, UnlockedDecryptor};

const INSTITUTION_TSK: &str = "institution.pgp";
const INSTITUTION_CERT: &str = "institution.cert.asc";
const NODE_KEY: &str = "node.key";
const INDEX_KEY: &str = "index.key";

/// The secret that unlocks an institution's keys. Zeroed on drop; `Debug` prints
/// nothing of it, so it cannot leak into logs.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Shortest passphrase accepted when creating keys.
    pub const MIN_NEW_LEN: usize = 8;

    /// Wraps a passphrase; it must not be empty.
    pub fn new(passphrase: String) -> Result<Self, CryptoError> {
        let passphrase = Zeroizing::new(passphrase);
        if passphrase.is_empty() {
            return Err(CryptoError::BadPassphrase("it is empty".into()));
        }
        Ok(Self(passphrase))
    }

    /// Reads a passphrase from the first line of a file.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        let line = text.lines().next().unwrap_or_default();
        Self::new(line.to_string())
    }

    /// Checks the passphrase is strong enough to protect new keys.
    pub fn check_new(&self) -> Result<(), CryptoError> {
        if self.0.chars().count() < Self::MIN_NEW_LEN {
            return Err(CryptoError::BadPassphrase(format!(
                "it must be at least {} characters long",
                Self::MIN_NEW_LEN
            )));
        }
        Ok(())
    }

    pub(crate) fn to_password(&self) -> Password {
        Password::from(self.0.as_str())
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// The node's libp2p identity: an Ed25519 key.
pub struct NodeIdentity {
    seed: Zeroizing<[u8; 32]>,
}

impl NodeIdentity {
    /// A fresh identity.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(seed.as_mut())
            .map_err(|_| CryptoError::Random)?;
        Ok(Self { seed })
    }

    /// The 32-byte Ed25519 seed (secret).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The libp2p PeerId (`12D3KooW…`): identity multihash of the protobuf-encoded
    /// Ed25519 public key, base58btc.
    pub fn peer_id(&self) -> String {
        let pair = Ed25519KeyPair::from_seed_unchecked(self.seed.as_ref())
            .expect("a 32-byte seed is a valid Ed25519 key");
        // PublicKey { Type = Ed25519 (1), Data = 32 bytes } in protobuf.
        let mut encoded = vec![0x08, 0x01, 0x12, 0x20];
        encoded.extend_from_slice(pair.public_key().as_ref());
        // Identity multihash: code 0x00, length 36.
        let mut multihash = vec![0x00, encoded.len() as u8];
        multihash.extend_from_slice(&encoded);
        let text = multibase::encode(Base::Base58Btc, &multihash);
        text[1..].to_string() // drop the multibase prefix 'z'
    }
}

/// The keys of one node, in `DATA_DIR/keys`.
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// Generates institution keys and a node identity into `dir`, which must not
    /// already hold keys.
    pub fn create(
        dir: &Path,
        institution: &str,
        passphrase: &Passphrase,
    ) -> Result<Self, CryptoError> {
        passphrase.check_new()?;
        if dir.join(INSTITUTION_TSK).exists() {
            return Err(CryptoError::Keystore {
                path: dir.join(INSTITUTION_TSK),
                reason: "keys already exist; refusing to overwrite them".into(),
            });
        }
        create_private_dir(dir)?;
        let secret = SecretKeys::generate(institution, passphrase)?;
        let node = NodeIdentity::generate()?;
        write_new_file(
            &dir.join(NODE_KEY),
            hex_encode(node.seed()).as_bytes(),
            0o600,
        )?;
        write_new_file(
            &dir.join(INSTITUTION_CERT),
            &secret.certificate()?.to_armored()?,
            0o644,
        )?;
        write_new_file(&dir.join(INSTITUTION_TSK), &secret.to_armored()?, 0o600)?;
        tracing::info!(dir = %dir.display(), "created institution keys and node identity");
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing keystore.
    pub fn open(dir: &Path) -> Result<Self, CryptoError> {
        for name in [INSTITUTION_TSK, INSTITUTION_CERT, NODE_KEY] {
            if !dir.join(name).is_file() {
                return Err(CryptoError::Keystore {
                    path: dir.join(name),
                    reason: "missing; run `medmesh init` to create a node".into(),
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The institution's public certificate.
    pub fn certificate(&self) -> Result<Certificate, CryptoError> {
        Certificate::from_bytes(&read(&self.dir.join(INSTITUTION_CERT))?)
    }

    /// The institution's secret keys (still locked).
    pub fn secret_keys(&self) -> Result<SecretKeys, CryptoError> {
        let path = self.dir.join(INSTITUTION_TSK);
        check_private(&path)?;
        SecretKeys::from_bytes(&Zeroizing::new(read(&path)?))
    }

    /// The index key, unwrapped with the institution's decryption key. Made on first
    /// use when `may_create` (the caller knows the index holds nothing sealed yet: a
    /// data dir created before the index was sealed has no key); of two processes
    /// making it at once, one writes it and both use that one. A missing key of an
    /// index that holds records is an error: a new key would open none of them.
    pub fn index_key(
        &self,
        decryptor: &mut UnlockedDecryptor,
        may_create: bool,
    ) -> Result<IndexKey, CryptoError> {
        static TEMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.dir.join(INDEX_KEY);
        if !path.exists() {
            if !may_create {
                return Err(CryptoError::Keystore {
                    path,
                    reason: "missing, but the index holds records sealed under it; restore \
                             the file from the backup of this data dir"
                        .into(),
                });
            }
            // Written whole under a temporary name, then linked into place: a reader
            // never sees half a key, and a link that finds one already there loses.
            let wrap = self.certificate()?.wrap(&DataKey::generate()?)?;
            let temp = self.dir.join(format!(
                ".{INDEX_KEY}.tmp-{}-{}",
                std::process::id(),
                TEMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = fs::remove_file(&temp);
            write_new_file(&temp, &wrap.message, 0o600)?;
            let linked = fs::hard_link(&temp, &path);
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => {
                    // The link must survive a crash before anything is sealed under it.
                    fs::File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io_err(&self.dir))?;
                    tracing::info!(path = %path.display(), "created the index key");
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        check_private(&path)?;
        let wrap = medmesh_core::KeyWrap {
            recipient: self.certificate()?.id(),
            algorithm: medmesh_core::KeyWrapAlgorithm::OpenPgpMlKem768X25519,
            message: read(&path)?,
        };
        let secret = decryptor.unwrap(&wrap).map_err(|e| CryptoError::Keystore {
            path: path.clone(),
            reason: format!("cannot be opened with the institution's key: {e}"),
        })?;
        Ok(IndexKey::new(&secret))
    }

    /// The node's identity.
    pub fn node_identity(&self) -> Result<NodeIdentity, CryptoError> {
        let path = self.dir.join(NODE_KEY);
        check_private(&path)?;
        let text = Zeroizing::new(read(&path)?);
        let corrupt = || CryptoError::Keystore {
            path: path.clone(),
            reason: "not a 64-hex-digit Ed25519 seed".into(),
        };
        let hex = std::str::from_utf8(&text).map_err(|_| corrupt())?.trim();
        let mut seed = Zeroizing::new([0u8; 32]);
        if hex.len() != 64 {
            return Err(corrupt());
        }
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| corrupt())?;
        }
        Ok(NodeIdentity { seed })
    }
}

fn hex_encode(bytes: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn read(path: &Path) -> Result<Vec<u8>, CryptoError> {
    fs::read(path).map_err(|source| CryptoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CryptoError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Refuses secret files others can read, as ssh does.
pub fn check_private(path: &Path) -> Result<(), CryptoError> {
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CryptoError::Keystore {
            path: path.to_path_buf(),
            reason: format!(
                "permissions {:04o} are too open for a secret key; run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            ),
        });
    }
    Ok(())
}

/// Writes a file that must not exist yet, durably (fsync file, then directory).
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CryptoError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_debug_is_redacted_and_short_ones_are_refused() {
        let p = Passphrase::new("correct horse".into()).unwrap();
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
        assert!(Passphrase::new(String::new()).is_err());
        assert!(Passphrase::new("short".into())
            .unwrap()
            .check_new()
            .is_err());
    }

    #[test]
    fn peer_id_has_libp2p_ed25519_form() {
        let id = NodeIdentity::generate().unwrap();
        let peer = id.peer_id();
        assert!(peer.starts_with("12D3KooW"), "{peer}");
        assert_eq!(peer, id.peer_id());
        assert_ne!(peer, NodeIdentity::generate().unwrap().peer_id());
    }
}
