//! Helpers shared by medmesh tests and benchmarks. Synthetic data only: never real
//! patient data.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use medmesh_crypto::{DataKey, IndexKey, Passphrase, SecretKeys};

#[cfg(feature = "chain")]
pub mod chain;
#[cfg(feature = "zk")]
pub mod datasets;
#[cfg(feature = "net")]
pub mod hostile;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "node")]
pub mod node;

/// The passphrase of [`institution`] keys.
pub const PASSPHRASE: &str = "test passphrase 1";

/// [`PASSPHRASE`] as a [`Passphrase`].
pub fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE.into()).expect("non-empty")
}

/// Secret keys of test institution `n` (0 or 1), generated once per test binary
/// (post-quantum key generation is the slow part of a test's setup).
pub fn institution(n: usize) -> SecretKeys {
    static KEYS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        ["Test Hospital", "Other Lab"]
            .iter()
            .map(|name| {
                SecretKeys::generate(name, &passphrase())
                    .and_then(|k| k.to_armored())
                    .expect("test key generation")
            })
            .collect()
    });
    SecretKeys::from_bytes(&keys[n]).expect("test keys parse")
}

/// The index key of test stores: fixed, so a test that reopens a store reads it again
/// (nodes keep theirs in the keystore, see `Keystore::index_key`).
pub fn index_key() -> IndexKey {
    IndexKey::new(&DataKey::from_bytes(&[0x5a; 32]).expect("32 bytes"))
}

/// Deterministic pseudo-random bytes (xorshift64): incompressible like real images, and
/// the same for the same seed so failures reproduce.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A free local TCP port (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Every regular file below `dir`, recursively (empty if `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `shared/data/<rel>` beside the repository (the project's synthetic test data).
/// Panics with a clear message if it is missing.
pub fn shared_data(rel: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel);
    assert!(
        path.exists(),
        "test data {} is missing: it ships in the shared/ folder beside the repository",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_seeded() {
        assert_eq!(noise(100, 1), noise(100, 1));
        assert_ne!(noise(100, 1), noise(100, 2));
        assert_eq!(noise(13, 5).len(), 13);
    }
}
