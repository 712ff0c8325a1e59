//! `/v1/grants` and `/v1/chain`: the consent state the node sees, and relaying grants
//! and revocations a patient's wallet signed (EIP-712) so the patient pays no gas.

use alloy::primitives::{Bytes, B256, U256};
use axum::extract::State;
use medmesh_api_types::{
    AuditAnchorInfo, AuditAnchoring, ChainInfo, GrantEntry, NodeRegistration, RelayResponse,
    SignedGrant, SignedRevocation,
};
use medmesh_chain::bindings::{GrantConsent, RevokeConsent};
use medmesh_chain::Relayed;
use medmesh_crypto::eth::Address;
use medmesh_service::GrantFilter;
use medmesh_store::TokenScope;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiQuery};
use crate::auth::{refused, Principal, RelayCaller};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// The node's chain and contract addresses, its registration in `NodeRegistry` and
/// the anchoring of its audit log.
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
    principal: Principal,
) -> Result<axum::Json<ChainInfo>, ApiError> {
    // Why registration or anchoring fails (RPC errors may name the chain's URL) is the
    // operator's to see, not every signed-in wallet's.
    let operator = matches!(principal, Principal::Operator { .. });
    let c = state.services().chain()?;
    let life = state.services().chain_life();
    Ok(axum::Json(ChainInfo {
        chain_id: c.chain_id,
        node_registry: c.deployment.node_registry.to_string(),
        consent_registry: c.deployment.consent_registry.to_string(),
        audit_anchor: c.deployment.audit_anchor.to_string(),
        registration: life.as_ref().map(|l| {
            let r = &l.registration;
            NodeRegistration {
                account: r.account.to_string(),
                peer_id: r.peer_id.clone(),
                cert_fingerprint: r.cert_fingerprint.clone(),
                name: r.name.clone(),
                approved: r.approved,
                registered: r.registered,
                checked: r.checked,
                transaction: r.transaction.map(|t| t.to_string()),
                error: r.error.clone().filter(|_| operator),
            }
        }),
        anchoring: life.map(|l| {
            let a = l.anchoring;
            AuditAnchoring {
                enabled: a.enabled,
                interval_secs: a.interval_secs,
                every_entries: a.every_entries,
                last: a.last.map(|last| AuditAnchorInfo {
                    index: last.index,
                    head: last.head,
                    entries: last.entries,
                    anchored_at: last.anchored_at,
                    transaction: last.transaction.map(|t| t.to_string()),
                }),
                error: a.error.filter(|_| operator),
            }
        }),
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

fn parse_address(name: &str, v: &str) -> Result<Address, ApiError> {
    v.parse::<Address>()
        .map_err(|_| ApiError::bad_request(format!("`{name}` is not an Ethereum address")))
}

fn parse_optional(name: &str, v: Option<&str>) -> Result<Option<Address>, ApiError> {
    v.map(|a| parse_address(name, a)).transpose()
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
    let patient = parse_optional("patient", params.patient.as_deref())?;
    let grantee = parse_optional("grantee", params.grantee.as_deref())?;
    // A wallet sees the grants it gave or received, nothing else.
    let involving = match &principal {
        Principal::Wallet { address } => {
            let filtered = patient.is_some() || grantee.is_some();
            if filtered && patient != Some(*address) && grantee != Some(*address) {
                let error = ApiError::forbidden("a wallet may list only grants that name it");
                refused(&state, principal.actor(), "/v1/grants", &error).await;
                return Err(error);
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
    let grants = state
        .services()
        .grants(GrantFilter {
            patient,
            grantee,
            involving,
        })
        .await?;
    Ok(axum::Json(
        grants
            .into_iter()
            .map(|g| GrantEntry {
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

/// The parts every signed consent message has, parsed.
struct Signed {
    patient: Address,
    grantee: Address,
    scope: B256,
    signature: Bytes,
}

/// Parses and authorises a relay request: only operators with `write` (checked by
/// `RelayCaller`), or the patient's own wallet session, make the node pay gas.
async fn prepare_relay(
    state: &AppState,
    principal: &Principal,
    patient: &str,
    grantee: &str,
    scope: &str,
    signature: &str,
) -> Result<Signed, ApiError> {
    let signed = Signed {
        patient: parse_address("patient", patient)?,
        grantee: parse_address("grantee", grantee)?,
        scope: scope
            .parse()
            .map_err(|_| ApiError::bad_request("`scope` must be 32 bytes of hex"))?,
        signature: signature
            .parse()
            .map_err(|_| ApiError::bad_request("`signature` must be hex"))?,
    };
    match principal {
        Principal::Wallet { address } if *address == signed.patient => Ok(signed),
        Principal::Wallet { .. } => {
            let error = ApiError::forbidden("a wallet may relay only its own (patient) signatures");
            refused(state, principal.actor(), "/v1/grants", &error).await;
            Err(error)
        }
        // Its `write` scope was checked before the body was read (`RelayCaller`).
        Principal::Operator { .. } => Ok(signed),
    }
}

fn relay_answer(r: Relayed) -> axum::Json<RelayResponse> {
    axum::Json(RelayResponse {
        transaction: r.transaction.to_string(),
        block: r.block,
        grant_id: r.grant_id.to_string(),
    })
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
    RelayCaller(principal): RelayCaller,
    ApiJson(body): ApiJson<SignedGrant>,
) -> Result<axum::Json<RelayResponse>, ApiError> {
    let signed = prepare_relay(
        &state,
        &principal,
        &body.patient,
        &body.grantee,
        &body.scope,
        &body.signature,
    )
    .await?;
    let grant = GrantConsent {
        patient: signed.patient,
        grantee: signed.grantee,
        kind: body.kind,
        scope: signed.scope,
        purpose: body.purpose,
        expiry: body.expiry,
        nonce: U256::from(body.nonce),
        deadline: U256::from(body.deadline),
    };
    let relayed = state
        .services()
        .relay_grant(grant, signed.signature, &principal.actor())
        .await?;
    Ok(relay_answer(relayed))
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
    RelayCaller(principal): RelayCaller,
    ApiJson(body): ApiJson<SignedRevocation>,
) -> Result<axum::Json<RelayResponse>, ApiError> {
    let signed = prepare_relay(
        &state,
        &principal,
        &body.patient,
        &body.grantee,
        &body.scope,
        &body.signature,
    )
    .await?;
    let revocation = RevokeConsent {
        patient: signed.patient,
        grantee: signed.grantee,
        kind: body.kind,
        scope: signed.scope,
        purpose: body.purpose,
        nonce: U256::from(body.nonce),
        deadline: U256::from(body.deadline),
    };
    let relayed = state
        .services()
        .relay_revoke(revocation, signed.signature, &principal.actor())
        .await?;
    Ok(relay_answer(relayed))
}
