//! Wallet helpers: build and sign Sign-In with Ethereum (EIP-4361) messages with any
//! alloy signer, and verify such signatures.

use alloy_signer::Signer;
pub use medmesh_core::siwe::SiweMessage;
pub use medmesh_crypto::eth::{recover_personal_sign, Address, WalletSignatureError};
use time::OffsetDateTime;

use crate::Error;

/// A SIWE message for `address` to sign in to the node at `domain`/`uri`.
pub fn siwe_message(
    domain: &str,
    uri: &str,
    address: Address,
    chain_id: u64,
    nonce: &str,
    valid_for: time::Duration,
) -> SiweMessage {
    let now = OffsetDateTime::now_utc();
    SiweMessage {
        domain: domain.to_string(),
        address: address.to_checksum(None),
        statement: Some("Sign in to a medmesh node".into()),
        uri: uri.to_string(),
        version: "1".into(),
        chain_id,
        nonce: nonce.to_string(),
        issued_at: now,
        expiration_time: Some(now + valid_for),
        not_before: None,
        request_id: None,
    }
}

/// Signs `message` with EIP-191 `personal_sign`; returns the 0x-prefixed hex signature.
pub async fn sign_siwe(
    signer: &(impl Signer + Sync),
    message: &SiweMessage,
) -> Result<String, Error> {
    let signature = signer
        .sign_message(message.to_string().as_bytes())
        .await
        .map_err(|e| Error::Wallet(e.to_string()))?;
    Ok(format!(
        "0x{}",
        signature
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// Checks that `signature` over `message` was made by the message's address.
pub fn verify_siwe(message: &SiweMessage, signature: &str) -> Result<Address, Error> {
    let signer = recover_personal_sign(message.to_string().as_bytes(), signature)
        .map_err(|e| Error::Wallet(e.to_string()))?;
    if signer.to_checksum(None) != message.address {
        return Err(Error::Wallet(format!(
            "signed by {signer}, not by {}",
            message.address
        )));
    }
    Ok(signer)
}
