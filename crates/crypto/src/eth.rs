//! Ethereum wallet signatures: who signed a message with `personal_sign` (EIP-191).
//! Used to check Sign-In with Ethereum messages; the same function serves the node and
//! the SDK, so both sides agree on what a valid signature is.

pub use alloy_primitives::Address;
use alloy_primitives::Signature;

/// Why a wallet signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletSignatureError {
    /// Not 65 bytes of hex (r, s, v).
    #[error("the signature must be 65 bytes of hex (r, s, v), optionally 0x-prefixed")]
    Malformed,
    /// The signature does not recover to any address.
    #[error("the signature does not recover to any address")]
    Unrecoverable,
    /// `s` is in the upper half of the curve order: a malleated copy of a valid
    /// signature, which EIP-2 forbids (wallets always produce the low-s form).
    #[error("the signature is not in canonical low-s form (EIP-2)")]
    HighS,
}

/// The address whose key signed `message` with EIP-191 `personal_sign`.
pub fn recover_personal_sign(
    message: &[u8],
    signature_hex: &str,
) -> Result<Address, WalletSignatureError> {
    let text = signature_hex.trim();
    let bytes = hex_decode(text.strip_prefix("0x").unwrap_or(text))
        .ok_or(WalletSignatureError::Malformed)?;
    let signature =
        Signature::try_from(bytes.as_slice()).map_err(|_| WalletSignatureError::Malformed)?;
    if signature.normalize_s().is_some() {
        return Err(WalletSignatureError::HighS);
    }
    signature
        .recover_address_from_msg(message)
        .map_err(|_| WalletSignatureError::Unrecoverable)
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_malformed_signatures() {
        for bad in ["", "0x", "0xzz", &"ab".repeat(64), &"ab".repeat(66)] {
            assert_eq!(
                recover_personal_sign(b"m", bad),
                Err(WalletSignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn recovers_the_signer_and_detects_other_messages() {
        use alloy_signer::SignerSync;
        let wallet = alloy_signer_local::PrivateKeySigner::random();
        let sig = wallet.sign_message_sync(b"sign in to medmesh").unwrap();
        let hex: String = sig.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            recover_personal_sign(b"sign in to medmesh", &format!("0x{hex}")),
            Ok(wallet.address())
        );
        assert_eq!(
            recover_personal_sign(b"sign in to medmesh", &hex),
            Ok(wallet.address())
        );
        let other = recover_personal_sign(b"sign in to medmesh!", &hex).unwrap();
        assert_ne!(other, wallet.address());
    }

    #[test]
    fn refuses_the_high_s_twin_of_a_valid_signature() {
        use alloy_signer::SignerSync;
        let wallet = alloy_signer_local::PrivateKeySigner::random();
        let sig = wallet.sign_message_sync(b"sign in to medmesh").unwrap();
        // (r, n - s, !v) recovers to the same address: the malleated twin.
        let n = alloy_primitives::U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        let twin = Signature::new(sig.r(), n - sig.s(), !sig.v());
        let hex: String = twin.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            recover_personal_sign(b"sign in to medmesh", &hex),
            Err(WalletSignatureError::HighS)
        );
    }
}
