//! Wallet sign-in (Sign-In with Ethereum) and identity.

use serde::{Deserialize, Serialize};

/// A sign-in nonce and what the SIWE message must name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NonceResponse {
    /// Put this in the message's `Nonce:` line.
    pub nonce: String,
    /// The message's domain.
    pub domain: String,
    /// The message's `Chain ID:`.
    pub chain_id: u64,
    /// The nonce is refused after this time (RFC 3339).
    pub expires_at: String,
}

/// A signed EIP-4361 message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignInRequest {
    /// The exact message text the wallet signed.
    pub message: String,
    /// The EIP-191 `personal_sign` signature, 65 bytes hex (`0x…`).
    pub signature: String,
}

/// A wallet session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionResponse {
    /// Bearer token for later requests (`mms_…`).
    pub token: String,
    /// The signed-in address.
    pub address: String,
    /// When the session ends (RFC 3339).
    pub expires_at: String,
}

/// Who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    /// `operator` or `wallet`.
    pub kind: String,
    /// Token id or wallet address.
    pub id: String,
    /// Token scope (operators only).
    pub scope: Option<String>,
}
