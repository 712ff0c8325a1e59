//! An initialised data dir, opened: its config, keystore and store. Every command and
//! `medmesh node` start here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use medmesh_crypto::Keystore;
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
