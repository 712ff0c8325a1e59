//! Content addressing: CIDv1 with a sha2-256 multihash, as every IPFS peer speaks.

use cid::Cid;
use multihash::Multihash;

use crate::CoreError;

/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;

/// The largest block medmesh creates or accepts: 1 MiB, the size Kubo and other IPFS
/// peers accept without `--allow-big-block`.
pub const MAX_BLOCK_SIZE: usize = 1 << 20;

/// IPLD codecs medmesh uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `raw` (0x55): encrypted chunk bytes.
    Raw,
    /// `dag-cbor` (0x71): manifests.
    DagCbor,
}

impl Codec {
    /// The multicodec code.
    pub fn code(self) -> u64 {
        match self {
            Codec::Raw => 0x55,
            Codec::DagCbor => 0x71,
        }
    }
}

/// The CIDv1 (sha2-256) of `bytes` under `codec`.
pub fn cid_of(codec: Codec, bytes: &[u8]) -> Cid {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mh = Multihash::<64>::wrap(SHA2_256, digest.as_ref()).expect("32-byte digest fits");
    Cid::new_v1(codec.code(), mh)
}

/// Checks that `bytes` hash to `cid`; the error names both CIDs.
pub fn verify_cid(cid: &Cid, bytes: &[u8]) -> Result<(), CoreError> {
    if cid.hash().code() != SHA2_256 {
        return Err(CoreError::UnsupportedHash(cid.to_string()));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    if cid.hash().digest() == digest.as_ref() {
        Ok(())
    } else {
        let actual = Cid::new_v1(
            cid.codec(),
            Multihash::<64>::wrap(SHA2_256, digest.as_ref()).expect("32-byte digest fits"),
        );
        Err(CoreError::HashMismatch {
            cid: cid.to_string(),
            actual: actual.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_cid_of_empty_input_matches_ipfs() {
        // `ipfs block put --cid-codec raw` of an empty file gives this CID.
        assert_eq!(
            cid_of(Codec::Raw, b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn verify_rejects_other_bytes_and_names_both_cids() {
        let cid = cid_of(Codec::Raw, b"hello");
        assert!(verify_cid(&cid, b"hello").is_ok());
        let err = verify_cid(&cid, b"hellp").unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&cid.to_string()), "{text}");
        assert!(
            text.contains(&cid_of(Codec::Raw, b"hellp").to_string()),
            "{text}"
        );
    }
}
