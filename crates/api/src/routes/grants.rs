//! `/v1/grants` and `/v1/chain`: the consent state the node sees, and relaying grants
//! and revocations a patient's wallet signed (EIP-712) so the patient pays no gas.

use alloy::primitives::{Bytes, B256, U256};
use axum::extract::State;
use axum::http::StatusCode;
use medmesh_chain::bindings::{GrantConsent, RevokeConsent};
use medmesh_chain::{GrantView, RelayError, Relayed};
use medmesh_crypto::eth::Address;
use medmesh_store::TokenScope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiQuery};
use crate::auth::Principal;
use crate::error::{ApiError, Problem};
use crate::routes::access::chain;
use crate::state::AppState;

/// The chain this node uses, and where the contracts are.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainInfo {
    /// EIP-155 chain id (the EIP-712 domain's `chainId`).
    pub chain_id: u64,
    /// `NodeRegistry` address.
    pub node_registry: String,
    /// `ConsentRegistry` address (the EIP-712 domain's `verifyingContract`).
    pub consent_registry: String,
    /// `AuditAnchor` address.
    pub audit_anchor: String,
}

/// The node's chain and contract addresses.
#[utoipa::path(
    get,
    path = "/v1/chain",
    tag = "grants",
    responses(
        (status = 200, body = ChainInfo),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain configured", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn chain_info(
    State(state): State<AppState>,
    _principal: Principal,
) -> Result<axum::Json<ChainInfo>, ApiError> {
    let c = chain(&state)?;
    Ok(axum::Json(ChainInfo {
        chain_id: c.chain_id,
        node_registry: c.deployment.node_registry.to_string(),
        consent_registry: c.deployment.consent_registry.to_string(),
        audit_anchor: c.deployment.audit_anchor.to_string(),
    }))
}

/// Filters of the grant list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GrantParams {
    /// Only grants by this patient address.
    pub patient: Option<String>,
    /// Only grants to this grantee address.
    pub grantee: Option<String>,
}

/// A grant as the node's cache sees it (synced to the latest block).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantEntry {
    /// Grant id (bytes32 hex).
    pub id: String,
    /// Patient address.
    pub patient: String,
    /// Grantee address.
    pub grantee: String,
    /// `ScopeKind`: 0 record, 1 patient at institution, 2 dataset.
    pub kind: u8,
    /// Scope (bytes32 hex).
    pub scope: String,
    /// DUO purpose term number.
    pub purpose: u32,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// Whether revoked.
    pub revoked: bool,
}

fn parse_address(name: &str, v: Option<&str>) -> Result<Option<Address>, ApiError> {
    v.map(|a| {
        a.parse::<Address>()
            .map_err(|_| ApiError::bad_request(format!("`{name}` is not an Ethereum address")))
    })
    .transpose()
}

/// List grants (operators: any; wallets: only those naming them).
#[utoipa::path(
    get,
    path = "/v1/grants",
    tag = "grants",
    params(GrantParams),
    responses(
        (status = 200, body = Vec<GrantEntry>),
        (status = 400, description = "Malformed address", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain configured, or unreachable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<GrantParams>,
) -> Result<axum::Json<Vec<GrantEntry>>, ApiError> {
    let patient = parse_address("patient", params.patient.as_deref())?;
    let grantee = parse_address("grantee", params.grantee.as_deref())?;
    // A wallet sees the grants it gave or received, nothing else.
    let wallet = match &principal {
        Principal::Wallet { address } => {
            let filtered = patient.is_some() || grantee.is_some();
            if filtered && patient != Some(*address) && grantee != Some(*address) {
                return Err(ApiError::forbidden(
                    "a wallet may list only grants that name it",
                ));
            }
            Some(*address)
        }
        Principal::Operator { .. } => {
            principal
                .require(&state, TokenScope::Read, "/v1/grants")
                .await?;
            None
        }
    };
    let c = chain(&state)?;
    let cache = c.releaser.cache().clone();
    cache
        .sync(c.releaser.provider())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "chain", e.to_string()))?;
    let mut grants = match (wallet, patient, grantee) {
        (Some(me), None, None) => {
            let mut all = cache.grants(Some(me), None);
            all.extend(
                cache
                    .grants(None, Some(me))
                    .into_iter()
                    .filter(|g| g.patient != me),
            );
            all
        }
        _ => cache.grants(patient, grantee),
    };
    grants.sort_by_key(|g| (g.expiry, g.id));
    Ok(axum::Json(
        grants
            .into_iter()
            .map(|g: GrantView| GrantEntry {
                id: g.id.to_string(),
                patient: g.patient.to_string(),
                grantee: g.grantee.to_string(),
                kind: g.kind,
                scope: g.scope.to_string(),
                purpose: g.purpose,
                expiry: g.expiry,
                revoked: g.revoked,
            })
            .collect(),
    ))
}

/// A grant signed by the patient (EIP-712 `GrantConsent`, domain from GET /v1/chain).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignedGrant {
    /// Patient address.
    pub patient: String,
    /// Grantee address.
    pub grantee: String,
    /// `ScopeKind`.
    pub kind: u8,
    /// Scope (bytes32 hex).
    pub scope: String,
    /// DUO purpose term number.
    pub purpose: u32,
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// The patient's next nonce.
    pub nonce: u64,
    /// Unix seconds after which the signature is refused.
    pub deadline: u64,
    /// 65-byte signature, hex.
    pub signature: String,
}

/// A revocation signed by the patient (EIP-712 `RevokeConsent`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignedRevocation {
    /// Patient address.
    pub patient: String,
    /// Grantee address.
    pub grantee: String,
    /// `ScopeKind`.
    pub kind: u8,
    /// Scope (bytes32 hex).
    pub scope: String,
    /// DUO purpose term number.
    pub purpose: u32,
    /// The patient's next nonce.
    pub nonce: u64,
    /// Unix seconds after which the signature is refused.
    pub deadline: u64,
    /// 65-byte signature, hex.
    pub signature: String,
}

/// A relayed transaction.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RelayResponse {
    /// Transaction hash.
    pub transaction: String,
    /// Block number.
    pub block: u64,
    /// The grant created or revoked.
    pub grant_id: String,
}

fn parse_common(
    patient: &str,
    grantee: &str,
    scope: &str,
    signature: &str,
) -> Result<(Address, Address, B256, Bytes), ApiError> {
    let patient: Address = patient
        .parse()
        .map_err(|_| ApiError::bad_request("`patient` is not an Ethereum address"))?;
    let grantee: Address = grantee
        .parse()
        .map_err(|_| ApiError::bad_request("`grantee` is not an Ethereum address"))?;
    let scope: B256 = scope
        .parse()
        .map_err(|_| ApiError::bad_request("`scope` must be 32 bytes of hex"))?;
    let signature: Bytes = signature
        .parse()
        .map_err(|_| ApiError::bad_request("`signature` must be hex"))?;
    Ok((patient, grantee, scope, signature))
}

/// Parses and authorises a relay request; returns its parts and the relayer.
async fn prepare_relay(
    state: &AppState,
    principal: &Principal,
    patient: &str,
    grantee: &str,
    scope: &str,
    signature: &str,
) -> Result<
    (
        Address,
        Address,
        B256,
        Bytes,
        std::sync::Arc<medmesh_chain::Relayer>,
    ),
    ApiError,
> {
    let (patient, grantee, scope, signature) = parse_common(patient, grantee, scope, signature)?;
    require_relay(state, principal, patient).await?;
    Ok((patient, grantee, scope, signature, relayer(state)?))
}

/// Only operators with `write`, or the patient's own wallet session, make the node pay
/// gas for a relay.
async fn require_relay(
    state: &AppState,
    principal: &Principal,
    patient: Address,
) -> Result<(), ApiError> {
    match principal {
        Principal::Wallet { address } if *address == patient => Ok(()),
        Principal::Wallet { .. } => Err(ApiError::forbidden(
            "a wallet may relay only its own (patient) signatures",
        )),
        Principal::Operator { .. } => {
            principal
                .require(state, TokenScope::Write, "/v1/grants")
                .await
        }
    }
}

fn relayer(state: &AppState) -> Result<std::sync::Arc<medmesh_chain::Relayer>, ApiError> {
    chain(state)?.relayer.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-relayer",
            "this node has no account on its chain to pay for relays (start it with --chain-key-file)",
        )
    })
}

fn relay_answer(
    result: Result<Relayed, RelayError>,
) -> Result<axum::Json<RelayResponse>, ApiError> {
    match result {
        Ok(r) => Ok(axum::Json(RelayResponse {
            transaction: r.transaction.to_string(),
            block: r.block,
            grant_id: r.grant_id.to_string(),
        })),
        Err(e @ RelayError::Rejected(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "consent-rejected",
            e.to_string(),
        )),
        Err(RelayError::Chain(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "chain",
            e.to_string(),
        )),
    }
}

/// Relay a grant the patient signed.
#[utoipa::path(
    post,
    path = "/v1/grants",
    tag = "grants",
    request_body = SignedGrant,
    responses(
        (status = 200, body = RelayResponse),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to relay this", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The contract refused it (signature, nonce, deadline, expiry)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain or no relaying account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn relay_grant(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<SignedGrant>,
) -> Result<axum::Json<RelayResponse>, ApiError> {
    let (patient, grantee, scope, signature, relayer) = prepare_relay(
        &state,
        &principal,
        &body.patient,
        &body.grantee,
        &body.scope,
        &body.signature,
    )
    .await?;
    let grant = GrantConsent {
        patient,
        grantee,
        kind: body.kind,
        scope,
        purpose: body.purpose,
        expiry: body.expiry,
        nonce: U256::from(body.nonce),
        deadline: U256::from(body.deadline),
    };
    relay_answer(relayer.relay_grant(&grant, signature).await)
}

/// Relay a revocation the patient signed.
#[utoipa::path(
    post,
    path = "/v1/grants/revoke",
    tag = "grants",
    request_body = SignedRevocation,
    responses(
        (status = 200, body = RelayResponse),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed to relay this", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The contract refused it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No chain or no relaying account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn relay_revoke(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<SignedRevocation>,
) -> Result<axum::Json<RelayResponse>, ApiError> {
    let (patient, grantee, scope, signature, relayer) = prepare_relay(
        &state,
        &principal,
        &body.patient,
        &body.grantee,
        &body.scope,
        &body.signature,
    )
    .await?;
    let revocation = RevokeConsent {
        patient,
        grantee,
        kind: body.kind,
        scope,
        purpose: body.purpose,
        nonce: U256::from(body.nonce),
        deadline: U256::from(body.deadline),
    };
    relay_answer(relayer.relay_revoke(&revocation, signature).await)
}
