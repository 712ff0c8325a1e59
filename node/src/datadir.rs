//! An initialised data dir, opened: its config, keystore and store, and the node's
//! services over them. Every command and `medmesh node` start here.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use medmesh_crypto::{Keystore, Passphrase};
use medmesh_service::{NodeKeys, NodeServices, ServiceSettings};
use medmesh_store::{Store, StoreError};

use crate::config::Config;

/// An initialised data dir, opened.
pub struct Node {
    /// `medmesh.toml`.
    pub config: Config,
    /// The institution's keys and the node identity.
    pub keystore: Keystore,
    /// Blocks and index (shared with the network when it runs).
    pub store: Arc<Store>,
}

impl Node {
    /// Opens config, keystore and store of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let config = Config::load(data_dir)?;
        let keystore = Keystore::open(&data_dir.join("keys"))?;
        let store = open_store(&data_dir.join("store"))?;
        Ok(Self {
            config,
            keystore,
            store: Arc::new(store),
        })
    }

    /// Unlocks the institution's signing and decryption keys with `passphrase`, and
    /// the store's index with them.
    pub fn unlock_keys(&self, passphrase: &Passphrase) -> Result<NodeKeys> {
        let secret = self.keystore.secret_keys()?;
        let mut decryptor = secret.unlock_decryption(passphrase)?;
        self.open_index(&mut decryptor)?;
        Ok(NodeKeys {
            certificate: self.keystore.certificate()?,
            signer: Mutex::new(secret.unlock_signing(passphrase)?),
            decryptor: Arc::new(Mutex::new(decryptor)),
        })
    }

    /// Unlocks only the store's index (its metadata is sealed under a key the
    /// institution's decryption key opens): what listing and inspecting need.
    pub fn unlock_index(&self, passphrase: &Passphrase) -> Result<()> {
        let mut decryptor = self.keystore.secret_keys()?.unlock_decryption(passphrase)?;
        self.open_index(&mut decryptor)
    }

    /// Gives the store its index key (made now if the index holds no record yet).
    fn open_index(&self, decryptor: &mut medmesh_crypto::UnlockedDecryptor) -> Result<()> {
        let empty = self.store.record_count()? == 0;
        self.store
            .unlock_index(self.keystore.index_key(decryptor, empty)?);
        Ok(())
    }

    /// The node's services over this data dir, with `keys` when the operation signs or
    /// decrypts (without them, those operations answer that the keys are locked).
    pub fn services(&self, keys: Option<NodeKeys>) -> NodeServices {
        let settings = ServiceSettings {
            chunk_size: self.config.store.chunk_size,
            ..ServiceSettings::default()
        };
        match keys {
            Some(keys) => NodeServices::new(self.store.clone(), Arc::new(keys), settings),
            None => NodeServices::without_keys(self.store.clone(), settings),
        }
    }
}

/// Runs a command's async work (the services are async) on a runtime of its own.
pub fn block_on<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(work)
}

/// How long a command waits for another medmesh process to release the store.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens the store, waiting briefly if another short-lived command holds it.
pub fn open_store(dir: &Path) -> Result<Store> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Store::open(dir) {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}
