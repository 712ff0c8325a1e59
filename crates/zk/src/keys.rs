//! Proving and verifying keys: generated from a published seed (reproducible, and
//! therefore **insecure**: whoever knows the seed can forge proofs — fine for a testnet,
//! not for production, where the keys come from a multi-party ceremony; see
//! `docs/zk.md`), the verifying keys published in `crates/zk/keys/`, the proving keys
//! cached on disk because generating the largest takes minutes.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ark_bn254::Bn254;
use ark_groth16::{Groth16, ProvingKey, VerifyingKey};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use ark_snark::CircuitSpecificSetupSNARK;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::circuit::KAnonCircuit;
use crate::{Shape, ZkError};

/// The seed's prefix; the shape is appended. Published, so the setup is reproducible.
const SEED_DOMAIN: &str = "medmesh zk k-anonymity testnet setup v1 (insecure: the seed is public)";

/// The seed of `shape`'s setup.
pub fn setup_seed(shape: Shape) -> [u8; 32] {
    let text = format!(
        "{SEED_DOMAIN} rows={} classes={}",
        shape.rows, shape.classes
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().try_into().expect("32 bytes")
}

/// Generates `shape`'s keys from its published seed.
pub fn setup(shape: Shape) -> Result<ProvingKey<Bn254>, ZkError> {
    let mut rng = ChaCha20Rng::from_seed(setup_seed(shape));
    let circuit = KAnonCircuit {
        shape,
        witness: None,
    };
    let (pk, _) = Groth16::<Bn254>::setup(circuit, &mut rng)?;
    Ok(pk)
}

/// The published verifying key of `shape`.
pub fn published_verifying_key(shape: Shape) -> Result<VerifyingKey<Bn254>, ZkError> {
    let bytes: &[u8] = match shape {
        Shape::ROWS_64 => include_bytes!("../keys/kanon-64.vk"),
        Shape::ROWS_4K => include_bytes!("../keys/kanon-4096.vk"),
        Shape::ROWS_16K => include_bytes!("../keys/kanon-16384.vk"),
        Shape::ROWS_32K => include_bytes!("../keys/kanon-32768.vk"),
        other => return Err(ZkError::UnknownShape(other)),
    };
    if bytes.is_empty() {
        return Err(ZkError::UnknownShape(shape));
    }
    VerifyingKey::deserialize_compressed(bytes).map_err(|source| ZkError::Decode {
        what: "published verifying key",
        source,
    })
}

/// A verifying key's published form (compressed points).
pub fn verifying_key_bytes(vk: &VerifyingKey<Bn254>) -> Vec<u8> {
    let mut out = Vec::new();
    vk.serialize_compressed(&mut out)
        .expect("serializing into memory");
    out
}

/// Proving keys on disk under one directory, generated on first use and checked
/// against the published verifying keys.
pub struct KeyStore {
    dir: PathBuf,
    /// Per shape, the key once loaded; its lock is held while a key is read or
    /// generated, so one process does that once per shape.
    loaded: Mutex<HashMap<Shape, Arc<KeySlot>>>,
}

/// One shape's key, once loaded.
type KeySlot = Mutex<Option<Arc<ProvingKey<Bn254>>>>;

impl KeyStore {
    /// Keys under `dir` (created when a key is first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KeyStore {
            dir: dir.into(),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Where `shape`'s proving key is kept.
    pub fn path(&self, shape: Shape) -> PathBuf {
        self.dir.join(format!("kanon-{}.pk", shape.rows))
    }

    /// Forgets `shape`'s proving key, in memory and on disk (after
    /// [`ZkError::ProofRejected`]: the next use generates it anew).
    pub fn forget(&self, shape: Shape) -> Result<(), ZkError> {
        self.loaded.lock().expect("key cache").remove(&shape);
        let path = self.path(shape);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ZkError::Io { path, source: e }),
        }
    }

    /// `shape`'s proving key: from memory, from disk, or generated (and written).
    pub fn proving_key(&self, shape: Shape) -> Result<Arc<ProvingKey<Bn254>>, ZkError> {
        let slot = self
            .loaded
            .lock()
            .expect("key cache")
            .entry(shape)
            .or_default()
            .clone();
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = slot.as_ref() {
            return Ok(key.clone());
        }
        let published = published_verifying_key(shape)?;
        let path = self.path(shape);
        let key = match read_key(&path) {
            Ok(key) if key.vk == published => key,
            found => {
                if let Err(e) = found {
                    tracing::debug!(path = %path.display(), error = %e, "no usable proving key");
                }
                tracing::info!(%shape, "generating the proving key from the published seed (once; about a minute for the largest circuit)");
                let key = setup(shape)?;
                if key.vk != published {
                    return Err(ZkError::KeyMismatch(shape));
                }
                write_key(&path, &key)?;
                key
            }
        };
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ZkError + '_ {
    move |source| ZkError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_key(path: &Path) -> Result<ProvingKey<Bn254>, ZkError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    // Uncompressed and unchecked: decompressing and subgroup-checking millions of points
    // takes minutes, and a damaged key only makes proofs that do not verify.
    ProvingKey::deserialize_with_mode(BufReader::new(file), Compress::No, Validate::No).map_err(
        |source| ZkError::Decode {
            what: "proving key",
            source,
        },
    )
}

/// Temporary key files older than this were left by a writer that died (the largest
/// key is written in seconds).
const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the temporary key files under `dir` that a crashed writer left (hundreds of
/// megabytes each); a failure to is only logged.
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if name.to_string_lossy().starts_with(PARTIAL_PREFIX) && stale {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale partial key file");
            }
        }
    }
}

/// The prefix of temporary key files.
const PARTIAL_PREFIX: &str = ".kanon-partial-";

/// Writes `key` to `path` through a temporary file of its own in the same directory
/// (renamed into place once synced): a reader never sees half a key, and processes
/// writing at once do not truncate each other's.
fn write_key(path: &Path, key: &ProvingKey<Bn254>) -> Result<(), ZkError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    remove_stale_partials(dir);
    let partial = tempfile::Builder::new()
        .prefix(PARTIAL_PREFIX)
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    let mut writer = BufWriter::new(partial.as_file());
    key.serialize_with_mode(&mut writer, Compress::No)
        .map_err(|source| ZkError::Decode {
            what: "proving key",
            source,
        })?;
    writer.flush().map_err(io_error(partial.path()))?;
    drop(writer);
    partial
        .as_file()
        .sync_all()
        .map_err(io_error(partial.path()))?;
    partial.persist(path).map(|_| ()).map_err(|e| ZkError::Io {
        path: path.to_owned(),
        source: e.error,
    })
}
