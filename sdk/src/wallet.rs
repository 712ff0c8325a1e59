//! Wallet helpers: build and sign Sign-In with Ethereum (EIP-4361) messages and EIP-712
//! consent grants and revocations with any alloy signer, and verify SIWE signatures.

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
    Ok(signature_hex(&signature))
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

/// What a patient consents to, before signing.
#[derive(Debug, Clone)]
pub struct Consent {
    /// The patient's address (the signer).
    pub patient: Address,
    /// Who gets access.
    pub grantee: Address,
    /// `ScopeKind`: 0 record, 1 patient at institution, 2 dataset.
    pub kind: u8,
    /// The scope (for a record: from the institution's consent link).
    pub scope: medmesh_consent::alloy_primitives::B256,
    /// GA4GH DUO purpose term number (42 for DUO:0000042).
    pub purpose: u32,
    /// The patient's next nonce on the ConsentRegistry (`nonces(patient)`).
    pub nonce: u64,
    /// Unix seconds after which a relayer can no longer submit the signature.
    pub deadline: u64,
}

/// `0x` + the 65-byte signature in hex, as wallets and the API write it.
pub(crate) fn signature_hex(signature: &alloy_signer::Signature) -> String {
    format!(
        "0x{}",
        signature
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The EIP-712 domain of the node's ConsentRegistry.
fn consent_domain(
    info: &crate::ChainInfo,
) -> Result<medmesh_consent::alloy_sol_types::Eip712Domain, Error> {
    let registry = info
        .consent_registry
        .parse()
        .map_err(|_| Error::Wallet("the node sent a malformed contract address".into()))?;
    Ok(medmesh_consent::consent_domain(info.chain_id, registry))
}

/// Signs a consent message with EIP-712 for the node's chain; returns the hex signature.
async fn sign_typed(
    signer: &(impl Signer + Sync),
    info: &crate::ChainInfo,
    message: &impl medmesh_consent::alloy_sol_types::SolStruct,
) -> Result<String, Error> {
    let hash = message.eip712_signing_hash(&consent_domain(info)?);
    let signature = signer
        .sign_hash(&hash)
        .await
        .map_err(|e| Error::Wallet(e.to_string()))?;
    Ok(signature_hex(&signature))
}

/// Signs an EIP-712 `GrantConsent` (valid until `expiry`, Unix seconds) for the
/// node's chain (`info` from [`crate::Client::chain_info`]); relay it with
/// [`crate::Client::relay_grant`].
pub async fn sign_grant(
    signer: &(impl Signer + Sync),
    info: &crate::ChainInfo,
    consent: &Consent,
    expiry: u64,
) -> Result<crate::SignedGrant, Error> {
    use medmesh_consent::alloy_primitives::U256;
    let message = medmesh_consent::GrantConsent {
        patient: consent.patient,
        grantee: consent.grantee,
        kind: consent.kind,
        scope: consent.scope,
        purpose: consent.purpose,
        expiry,
        nonce: U256::from(consent.nonce),
        deadline: U256::from(consent.deadline),
    };
    Ok(crate::SignedGrant {
        patient: consent.patient.to_string(),
        grantee: consent.grantee.to_string(),
        kind: consent.kind,
        scope: consent.scope.to_string(),
        purpose: consent.purpose,
        expiry,
        nonce: consent.nonce,
        deadline: consent.deadline,
        signature: sign_typed(signer, info, &message).await?,
    })
}

/// Signs an EIP-712 `RevokeConsent`; relay it with [`crate::Client::relay_revoke`].
pub async fn sign_revocation(
    signer: &(impl Signer + Sync),
    info: &crate::ChainInfo,
    consent: &Consent,
) -> Result<crate::SignedRevocation, Error> {
    use medmesh_consent::alloy_primitives::U256;
    let message = medmesh_consent::RevokeConsent {
        patient: consent.patient,
        grantee: consent.grantee,
        kind: consent.kind,
        scope: consent.scope,
        purpose: consent.purpose,
        nonce: U256::from(consent.nonce),
        deadline: U256::from(consent.deadline),
    };
    Ok(crate::SignedRevocation {
        patient: consent.patient.to_string(),
        grantee: consent.grantee.to_string(),
        kind: consent.kind,
        scope: consent.scope.to_string(),
        purpose: consent.purpose,
        nonce: consent.nonce,
        deadline: consent.deadline,
        signature: sign_typed(signer, info, &message).await?,
    })
}

/// The address that signed a [`crate::SignedGrant`] for the node's chain: the patient
/// (or a delegate) if it verifies; compare with `grant.patient` before trusting it.
pub fn verify_grant(info: &crate::ChainInfo, grant: &crate::SignedGrant) -> Result<Address, Error> {
    use medmesh_consent::alloy_primitives::{Signature, U256};
    use medmesh_consent::alloy_sol_types::SolStruct;
    let bad = |what: &str| Error::Wallet(format!("malformed signed grant: {what}"));
    let message = medmesh_consent::GrantConsent {
        patient: grant.patient.parse().map_err(|_| bad("patient"))?,
        grantee: grant.grantee.parse().map_err(|_| bad("grantee"))?,
        kind: grant.kind,
        scope: grant.scope.parse().map_err(|_| bad("scope"))?,
        purpose: grant.purpose,
        expiry: grant.expiry,
        nonce: U256::from(grant.nonce),
        deadline: U256::from(grant.deadline),
    };
    let hash = message.eip712_signing_hash(&consent_domain(info)?);
    let bytes: Vec<u8> = grant
        .signature
        .trim_start_matches("0x")
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("signature hex"))?;
    let signature = Signature::try_from(bytes.as_slice()).map_err(|_| bad("signature"))?;
    signature
        .recover_address_from_prehash(&hash)
        .map_err(|e| Error::Wallet(format!("signature does not recover: {e}")))
}
