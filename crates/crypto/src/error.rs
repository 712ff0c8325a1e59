use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong in medmesh cryptography. Messages say what to do.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// A chunk failed AEAD authentication.
    #[error(
        "chunk {index} failed authentication: it was modified, reordered or truncated, \
         or the data key is wrong"
    )]
    ChunkAuthentication {
        /// Position of the chunk in the record.
        index: u64,
    },
    /// The manifest's signature does not verify.
    #[error("manifest signature does not verify against certificate {signer}: {reason}")]
    BadSignature {
        /// Fingerprint of the certificate checked.
        signer: String,
        /// Why.
        reason: String,
    },
    /// None of our keys can unwrap the data key.
    #[error("the data key is not wrapped for this institution's key {ours} (wrapped for: {wrapped_for})")]
    NotARecipient {
        /// Our certificate's fingerprint.
        ours: String,
        /// Who it is wrapped for.
        wrapped_for: String,
    },
    /// Unwrapping failed although the wrap names us (wrong key or damaged message).
    #[error("could not unwrap the data key: {0}")]
    Unwrap(String),
    /// A sealed value (record metadata, an index entry) cannot be opened.
    #[error("sealed metadata cannot be opened: {0}")]
    Sealed(String),
    /// The passphrase does not unlock the secret keys.
    #[error("wrong passphrase: it does not unlock the institution's secret keys")]
    WrongPassphrase,
    /// A passphrase is unusable.
    #[error("unusable passphrase: {0}")]
    BadPassphrase(String),
    /// A certificate lacks what medmesh needs or cannot be parsed.
    #[error("certificate problem: {0}")]
    Certificate(String),
    /// A device public key is unusable.
    #[error("device key: {0}")]
    DeviceKey(String),
    /// The OS random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// An OpenPGP operation failed.
    #[error("OpenPGP error: {0}")]
    OpenPgp(String),
    /// The keystore is missing, incomplete or has unsafe permissions.
    #[error("keystore {path}: {reason}")]
    Keystore {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// File I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl CryptoError {
    pub(crate) fn openpgp(e: impl std::fmt::Display) -> Self {
        CryptoError::OpenPgp(e.to_string())
    }
}
