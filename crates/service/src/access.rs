//! Consent and key release: linking records to patient wallets, challenges, releasing
//! keys under on-chain grants, relaying signed grants, and the grants the node sees.

use std::collections::BTreeMap;

use alloy::primitives::{Address, Bytes, B256};
use medmesh_chain::bindings::{GrantConsent, RevokeConsent};
use medmesh_chain::{
    denial_event, patient_scope, record_scope, Access, GrantView, KeyRequest, Relayed,
    ReleaseError, Released,
};
use medmesh_core::RecordId;
use medmesh_store::{AuditAction, AuditEvent};

use crate::error::{blocking, ServiceError};
use crate::events::NodeEvent;
use crate::services::{append_audit, NodeServices};

/// A record's consent link: what the patient needs to sign grants for it.
#[derive(Debug, Clone)]
pub struct ConsentLinkView {
    /// The patient's address.
    pub patient: Address,
    /// The record's on-chain consent scope (`ScopeKind.Record`).
    pub scope: B256,
    /// The scope of all the patient's records at this institution
    /// (`ScopeKind.PatientAtInstitution`).
    pub patient_scope: B256,
}

/// Which grants to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantFilter {
    /// Only grants by this patient.
    pub patient: Option<Address>,
    /// Only grants to this grantee.
    pub grantee: Option<Address>,
    /// Without the two above: every grant this wallet gave or received.
    pub involving: Option<Address>,
}

impl NodeServices {
    /// Links record `id` to the patient wallet that consents for it.
    pub async fn link_patient(
        &self,
        id: RecordId,
        patient: String,
        actor: &str,
    ) -> Result<ConsentLinkView, ServiceError> {
        let institution = self.keys()?.certificate.id();
        let (store, actor) = (self.store.clone(), actor.to_string());
        let link = blocking("consent link", move || {
            Ok(store.link_patient(&id, &patient, &actor)?)
        })
        .await?;
        let patient: Address = link.patient.parse().map_err(|_| {
            ServiceError::InvalidInput(format!("`{}` is not an Ethereum address", link.patient))
        })?;
        Ok(ConsentLinkView {
            patient,
            scope: record_scope(&id, &link.salt)?,
            patient_scope: patient_scope(&institution, patient),
        })
    }

    /// A fresh single-use key-request challenge.
    pub fn challenge(&self) -> Result<String, ServiceError> {
        Ok(self.chain()?.releaser.challenge()?)
    }

    /// Releases a record's key to a grantee if every check passes (challenge, the
    /// grantee's signature, the published certificate, a live grant or break-glass on
    /// chain). `caller` is who sent the request, as audited.
    pub async fn release_key(
        &self,
        request: KeyRequest,
        caller: &str,
    ) -> Result<Released, ServiceError> {
        let releaser = self.chain()?.releaser.clone();
        let result = releaser.release(&request, caller).await;
        let (record, grantee) = (request.record.to_string(), request.grantee.to_string());
        self.events.publish(match &result {
            Ok(released) => {
                let (access, access_id) = match released.access {
                    Access::Granted { grant_id, .. } => ("grant", grant_id),
                    Access::Emergency { emergency_id, .. } => ("emergency", emergency_id),
                };
                NodeEvent::KeyReleased {
                    record,
                    caller: caller.to_string(),
                    grantee,
                    access: access.into(),
                    access_id: access_id.to_string(),
                }
            }
            Err(e) => NodeEvent::KeyDenied {
                record,
                caller: caller.to_string(),
                grantee,
                reason: e.to_string(),
            },
        });
        if let Err(e) = &result {
            self.denials
                .record(denial_event(&request, caller, e), release_code(e))
                .await;
        }
        // The audit log and the operator's events have the cause; the caller only what
        // does not tell whether the record is here or whose it is.
        Ok(result.map_err(ReleaseError::for_caller)?)
    }

    /// Relays a grant the patient signed (EIP-712), paid by the node's account.
    ///
    /// The relay runs as a task of its own: if the caller stops waiting (a transport's
    /// time limit, a client that hangs up), it still finishes, is audited and is
    /// published, so the log says what happened on chain.
    pub async fn relay_grant(
        &self,
        grant: GrantConsent,
        signature: Bytes,
        actor: &str,
    ) -> Result<Relayed, ServiceError> {
        let relayer = self.relayer()?;
        let patient = grant.patient;
        self.relay_detached(
            "grant relay",
            AuditAction::GrantRelay,
            actor,
            patient,
            async move { relayer.relay_grant(&grant, signature).await },
        )
        .await
    }

    /// Relays a revocation the patient signed, like [`NodeServices::relay_grant`].
    pub async fn relay_revoke(
        &self,
        revocation: RevokeConsent,
        signature: Bytes,
        actor: &str,
    ) -> Result<Relayed, ServiceError> {
        let relayer = self.relayer()?;
        let patient = revocation.patient;
        self.relay_detached(
            "revocation relay",
            AuditAction::RevocationRelay,
            actor,
            patient,
            async move { relayer.relay_revoke(&revocation, signature).await },
        )
        .await
    }

    async fn relay_detached(
        &self,
        what: &'static str,
        action: AuditAction,
        actor: &str,
        patient: Address,
        relay: impl std::future::Future<Output = Result<Relayed, medmesh_chain::RelayError>>
            + Send
            + 'static,
    ) -> Result<Relayed, ServiceError> {
        let (store, events, actor) = (self.store.clone(), self.events.clone(), actor.to_string());
        let task = tokio::spawn(async move {
            let relayed = relay.await?;
            let entry = AuditEvent {
                action,
                actor,
                subject: relayed.grant_id.to_string(),
                detail: BTreeMap::from([
                    ("patient".to_string(), patient.to_string()),
                    ("transaction".to_string(), relayed.transaction.to_string()),
                    ("block".to_string(), relayed.block.to_string()),
                ]),
            };
            append_audit(&store, vec![entry]).await;
            let (grant_id, transaction, block) = (
                relayed.grant_id.to_string(),
                relayed.transaction.to_string(),
                relayed.block,
            );
            events.publish(if action == AuditAction::GrantRelay {
                NodeEvent::GrantRelayed {
                    grant_id,
                    transaction,
                    block,
                }
            } else {
                NodeEvent::RevocationRelayed {
                    grant_id,
                    transaction,
                    block,
                }
            });
            Ok(relayed)
        });
        task.await
            .map_err(|source| ServiceError::Task { what, source })?
    }

    fn relayer(&self) -> Result<std::sync::Arc<medmesh_chain::Relayer>, ServiceError> {
        self.chain()?.relayer.clone().ok_or(ServiceError::NoRelayer)
    }

    /// Grants as the node's cache sees them, synced to the latest block first, by
    /// expiry.
    pub async fn grants(&self, filter: GrantFilter) -> Result<Vec<GrantView>, ServiceError> {
        let chain = self.chain()?;
        let cache = chain.releaser.cache().clone();
        cache.sync(chain.releaser.provider()).await?;
        let mut grants = match filter {
            GrantFilter {
                patient: None,
                grantee: None,
                involving: Some(me),
            } => {
                let mut all = cache.grants(Some(me), None);
                all.extend(
                    cache
                        .grants(None, Some(me))
                        .into_iter()
                        .filter(|g| g.patient != me),
                );
                all
            }
            GrantFilter {
                patient, grantee, ..
            } => cache.grants(patient, grantee),
        };
        grants.sort_by_key(|g| (g.expiry, g.id));
        Ok(grants)
    }
}

/// A stable code per kind of refusal: for coalescing the audit entries, and on the wire
/// of the key-release protocol.
pub(crate) fn release_code(e: &ReleaseError) -> &'static str {
    match e {
        ReleaseError::BadChallenge => "bad-challenge",
        ReleaseError::NotGrantee(_) => "not-grantee",
        ReleaseError::UnknownRecord(_) => "unknown-record",
        ReleaseError::NotLinked(_) => "not-linked",
        ReleaseError::CertificateMismatch { .. } => "certificate-mismatch",
        ReleaseError::BadCertificate(_) => "bad-certificate",
        ReleaseError::Denied(_) => "denied-by-consent",
        ReleaseError::Chain(_) => "chain",
        ReleaseError::NotAllowed => "not-allowed",
        _ => "node-failure",
    }
}
