use std::path::PathBuf;

use medmesh_core::CoreError;
use medmesh_crypto::CryptoError;
use thiserror::Error;

/// What can go wrong in the store. Every error a user can cause changes nothing.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No record with this id is stored here.
    #[error("no record {0} in this store (see `medmesh ls`)")]
    UnknownRecord(String),
    /// The operation reads or writes record metadata, and the index key is not
    /// unlocked (it opens with the institution's passphrase).
    #[error("the record index is locked: this needs the institution's passphrase (the index keeps metadata sealed under a key from the keystore)")]
    IndexLocked,
    /// The record is held here for another institution (a replica or a fetched copy):
    /// its metadata is sealed for its owner.
    #[error("record {record} is held here for institution {owner}; its metadata is sealed for its owner, so this node cannot show or search it")]
    HeldForOther {
        /// The record.
        record: String,
        /// Its owner's certificate fingerprint.
        owner: String,
    },
    /// No API token with this id.
    #[error("no token with id {0} (see `medmesh token list`)")]
    UnknownToken(String),
    /// No device with this id is registered.
    #[error("no device {0} is registered (see `medmesh device list`)")]
    UnknownDevice(String),
    /// A block the record needs is not stored here.
    #[error("block {cid} is missing from the store{}", .record.as_ref().map(|r| format!(" (needed by record {r})")).unwrap_or_default())]
    MissingBlock {
        /// The missing block.
        cid: String,
        /// The record that needs it.
        record: Option<String>,
    },
    /// A block's bytes do not match its CID, or a record does not decode.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// What the caller asks would replace something that must stay (a device id in
    /// use); nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// Input was refused before anything was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Another process holds the store.
    #[error("the store at {0} is in use by another medmesh process (is `medmesh node` running?)")]
    Locked(PathBuf),
    /// Domain validation failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Encryption, decryption, signature or key error.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Reading the input or writing the output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The index database failed.
    #[error("index database: {0}")]
    Index(#[from] redb::Error),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Index(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
