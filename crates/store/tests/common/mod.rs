//! Shared fixtures: one institution key pair per test binary (key generation and
//! passphrase stretching are the slow part), a fresh store per test.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use medmesh_core::{Cid, ContentType, RecordId};
use medmesh_crypto::{Certificate, UnlockedDecryptor, UnlockedSigner};
use medmesh_store::{PutRequest, Store, DEFAULT_CHUNK_SIZE};
pub use medmesh_testkit::{files_under, institution, noise, passphrase as pass, shared_data};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub cert: Certificate,
    pub signer: Mutex<UnlockedSigner>,
    pub decryptor: UnlockedDecryptor,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.unlock_index(medmesh_testkit::index_key());
    let keys = institution(0);
    Fixture {
        cert: keys.certificate().unwrap(),
        signer: Mutex::new(keys.unlock_signing(&pass()).unwrap()),
        decryptor: keys.unlock_decryption(&pass()).unwrap(),
        dir,
        store,
    }
}

/// Where the store in `dir` keeps block `cid` (the layout of `Blockstore`).
pub fn block_path(dir: &Path, cid: &Cid) -> PathBuf {
    let key = cid.to_string();
    let n = key.len();
    dir.join(Store::BLOCKS_DIR)
        .join(&key[n - 3..n - 1])
        .join(format!("{key}.data"))
}

pub fn request(content_type: &str, chunk_size: u32) -> PutRequest {
    PutRequest {
        content_type: Some(content_type.parse::<ContentType>().unwrap()),
        patient: None,
        chunk_size,
        actor: "test".into(),
        idempotency_key: None,
    }
}

impl Fixture {
    pub fn put(&mut self, bytes: &[u8]) -> RecordId {
        self.put_with(
            bytes,
            request(ContentType::OCTET_STREAM, DEFAULT_CHUNK_SIZE),
        )
    }

    pub fn put_with(&mut self, bytes: &[u8], request: PutRequest) -> RecordId {
        self.store
            .put_record(
                &mut &bytes[..],
                &request,
                &self.signer,
                &self.cert,
                &[],
                &|_| {},
            )
            .unwrap()
    }

    pub fn read(&mut self, id: &RecordId) -> Result<Vec<u8>, medmesh_store::StoreError> {
        let mut out = Vec::new();
        self.store
            .read_record(
                id,
                &self.cert,
                &mut self.decryptor,
                &mut out,
                "test",
                &|_| {},
            )
            .map(|_| out)
    }
}
