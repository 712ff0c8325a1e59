//! The institution's keys, unlocked once when the node starts.

use std::sync::{Arc, Mutex};

use medmesh_crypto::{Certificate, UnlockedDecryptor, UnlockedSigner};

/// The institution's keys, unlocked once at node start.
pub struct NodeKeys {
    /// Public certificate (owner of the records this node writes).
    pub certificate: Certificate,
    /// Signs manifests; locked only for the signature itself.
    pub signer: Mutex<UnlockedSigner>,
    /// Unwraps data keys; locked only while a record is opened (shared with key release).
    pub decryptor: Arc<Mutex<UnlockedDecryptor>>,
}
