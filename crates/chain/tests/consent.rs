//! The consent contracts on a real EVM (anvil from the pinned npm package), driven
//! through the generated bindings, with the grant cache fed by their events.

use alloy::primitives::{B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signer;
use alloy::sol_types::SolStruct;
use medmesh_chain::bindings::{
    AuditAnchor, ConsentRegistry, GrantConsent, NodeRegistry, RevokeConsent,
};
use medmesh_chain::{consent_domain, duo, Access, AccessQuery, Denial, GrantCache};
use medmesh_testkit::chain::{grant, revert, Chain, Mined, BACKENDS, RECORD};

#[tokio::test]
async fn grant_then_revoke_takes_effect_in_the_next_block() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let cache = chain.cache();
        let scope = B256::repeat_byte(1);
        let q = chain.query(scope, duo::GENERAL_RESEARCH_USE);
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert_eq!(cache.check(&q, chain.now().await), Err(Denial::NoGrant));

        let expiry = chain.now().await + 3600;
        grant(
            &chain,
            &chain.patient,
            scope,
            duo::GENERAL_RESEARCH_USE,
            expiry,
        )
        .await;
        let synced = cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        let now = chain.now().await;
        assert!(
            matches!(cache.check(&q, now), Ok(Access::Granted { expiry: e, .. }) if e == expiry)
        );

        let grant_id = chain
            .consent(&chain.admin)
            .grantIdOf(
                chain.patient.address(),
                chain.researcher.address(),
                RECORD,
                scope,
                duo::GENERAL_RESEARCH_USE,
            )
            .call()
            .await
            .unwrap();
        let receipt = chain.consent(&chain.patient).revoke(grant_id).mined().await;
        assert_eq!(
            receipt.block_number,
            Some(synced + 1),
            "the revocation is in the next block"
        );
        assert_eq!(
            cache.sync(&chain.provider(&chain.admin)).await.unwrap(),
            synced + 1
        );
        assert_eq!(cache.check(&q, now), Err(Denial::Revoked));
        // The contract agrees.
        let allowed = chain
            .consent(&chain.admin)
            .isAllowed(
                chain.patient.address(),
                chain.researcher.address(),
                RECORD,
                scope,
                duo::GENERAL_RESEARCH_USE,
            )
            .call()
            .await
            .unwrap();
        assert!(!allowed);
    }
}

#[tokio::test]
async fn expired_and_wrong_purpose_are_denied() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let cache = chain.cache();
        let scope = B256::repeat_byte(2);
        let expiry = chain.now().await + 60;
        grant(
            &chain,
            &chain.patient,
            scope,
            duo::HEALTH_MEDICAL_BIOMEDICAL,
            expiry,
        )
        .await;
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        let q = chain.query(scope, duo::HEALTH_MEDICAL_BIOMEDICAL);
        assert!(cache.check(&q, expiry - 1).is_ok());
        assert_eq!(cache.check(&q, expiry), Err(Denial::Expired { expiry }));
        assert_eq!(
            cache.check(&chain.query(scope, duo::GENERAL_RESEARCH_USE), expiry - 1),
            Err(Denial::WrongPurpose {
                asked: 42,
                granted: vec![6]
            })
        );
        // A grant whose expiry is already past is refused by the contract.
        let past = chain.now().await - 1;
        let err = revert(
            chain
                .consent(&chain.patient)
                .grant(
                    chain.patient.address(),
                    chain.researcher.address(),
                    RECORD,
                    scope,
                    42,
                    past,
                )
                .send()
                .await,
        );
        assert!(
            matches!(err, ConsentRegistry::ConsentRegistryErrors::ExpiryInPast(_)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn delegate_can_grant_until_revoked() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let scope = B256::repeat_byte(3);
        let until = chain.now().await + 3600;
        // A stranger cannot act for the patient.
        let err = revert(
            chain
                .consent(&chain.guardian)
                .grant(
                    chain.patient.address(),
                    chain.researcher.address(),
                    RECORD,
                    scope,
                    42,
                    until,
                )
                .send()
                .await,
        );
        assert!(matches!(
            err,
            ConsentRegistry::ConsentRegistryErrors::NotPatientOrDelegate(_)
        ));
        chain
            .consent(&chain.patient)
            .setDelegate(chain.guardian.address(), until)
            .mined()
            .await;
        grant(&chain, &chain.guardian, scope, 42, until).await;
        let cache = chain.cache();
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert!(cache
            .check(&chain.query(scope, 42), chain.now().await)
            .is_ok());

        chain
            .consent(&chain.patient)
            .revokeDelegate(chain.guardian.address())
            .mined()
            .await;
        let err = revert(
            chain
                .consent(&chain.guardian)
                .grant(
                    chain.patient.address(),
                    chain.researcher.address(),
                    RECORD,
                    B256::repeat_byte(4),
                    42,
                    until,
                )
                .send()
                .await,
        );
        assert!(matches!(
            err,
            ConsentRegistry::ConsentRegistryErrors::NotPatientOrDelegate(_)
        ));
    }
}

async fn signed_grant(
    chain: &Chain,
    signer: &PrivateKeySigner,
    scope: B256,
    nonce: u64,
    deadline: u64,
) -> (GrantConsent, Vec<u8>) {
    let message = GrantConsent {
        patient: chain.patient.address(),
        grantee: chain.researcher.address(),
        kind: RECORD,
        scope,
        purpose: 42,
        expiry: chain.now().await + 3600,
        nonce: U256::from(nonce),
        deadline: U256::from(deadline),
    };
    let domain = consent_domain(chain.chain_id, chain.deployment.consent_registry);
    let signature = signer
        .sign_hash(&message.eip712_signing_hash(&domain))
        .await
        .unwrap();
    (message, signature.as_bytes().to_vec())
}

async fn relay(chain: &Chain, m: &GrantConsent, sig: &[u8]) -> Result<(), alloy::contract::Error> {
    chain
        .consent(&chain.relayer)
        .grantBySig(
            m.patient,
            m.grantee,
            m.kind,
            m.scope,
            m.purpose,
            m.expiry,
            m.nonce,
            m.deadline,
            sig.to_vec().into(),
        )
        .send()
        .await?
        .get_receipt()
        .await
        .map(drop)
        .map_err(|e| {
            alloy::contract::Error::from(alloy::transports::TransportError::local_usage_str(
                &e.to_string(),
            ))
        })
}

#[tokio::test]
async fn eip712_signed_grants_are_relayed_once_before_the_deadline() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let scope = B256::repeat_byte(5);
        let deadline = chain.now().await + 600;
        let (message, sig) = signed_grant(&chain, &chain.patient, scope, 0, deadline).await;
        relay(&chain, &message, &sig).await.unwrap();
        let cache = chain.cache();
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert!(
            cache
                .check(&chain.query(scope, 42), chain.now().await)
                .is_ok(),
            "relayed grant is live"
        );

        // Replay of the same signature.
        let err = revert(relay(&chain, &message, &sig).await);
        assert!(
            matches!(err, ConsentRegistry::ConsentRegistryErrors::InvalidNonce(_)),
            "{err:?}"
        );
        // Past its deadline.
        let (late, late_sig) =
            signed_grant(&chain, &chain.patient, scope, 1, chain.now().await - 1).await;
        let err = revert(relay(&chain, &late, &late_sig).await);
        assert!(
            matches!(
                err,
                ConsentRegistry::ConsentRegistryErrors::SignatureExpired(_)
            ),
            "{err:?}"
        );
        // Signed by someone else.
        let (forged, forged_sig) = signed_grant(&chain, &chain.stranger, scope, 1, deadline).await;
        let err = revert(relay(&chain, &forged, &forged_sig).await);
        assert!(
            matches!(
                err,
                ConsentRegistry::ConsentRegistryErrors::NotPatientOrDelegate(_)
            ),
            "{err:?}"
        );
        // Garbage signature.
        let err = revert(relay(&chain, &forged, &[1u8; 10]).await);
        assert!(
            matches!(
                err,
                ConsentRegistry::ConsentRegistryErrors::InvalidSignature(_)
            ),
            "{err:?}"
        );

        // A signed revocation, relayed.
        let revoke = RevokeConsent {
            patient: chain.patient.address(),
            grantee: chain.researcher.address(),
            kind: RECORD,
            scope,
            purpose: 42,
            nonce: U256::from(1),
            deadline: U256::from(deadline),
        };
        let domain = consent_domain(chain.chain_id, chain.deployment.consent_registry);
        let sig = chain
            .patient
            .sign_hash(&revoke.eip712_signing_hash(&domain))
            .await
            .unwrap();
        chain
            .consent(&chain.relayer)
            .revokeBySig(
                revoke.patient,
                revoke.grantee,
                RECORD,
                scope,
                42,
                revoke.nonce,
                revoke.deadline,
                sig.as_bytes().to_vec().into(),
            )
            .mined()
            .await;
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert_eq!(
            cache.check(&chain.query(scope, 42), chain.now().await),
            Err(Denial::Revoked)
        );
    }
}

#[tokio::test]
async fn break_glass_is_for_registered_institutions_visible_and_closable() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let scope = B256::repeat_byte(6);
        // An unregistered address can neither register a node nor open break-glass access.
        let err = chain
            .registry(&chain.stranger)
            .registerNode(b"peer".to_vec().into(), B256::repeat_byte(1), "Fake".into())
            .send()
            .await
            .expect_err("unapproved institutions cannot register");
        let decoded = err
            .as_decoded_interface_error::<NodeRegistry::NodeRegistryErrors>()
            .unwrap();
        assert!(matches!(
            decoded,
            NodeRegistry::NodeRegistryErrors::NotApprovedInstitution(_)
        ));
        let err = revert(
            chain
                .consent(&chain.stranger)
                .openEmergency(chain.patient.address(), scope, 3600, "trauma".into())
                .send()
                .await,
        );
        assert!(matches!(
            err,
            ConsentRegistry::ConsentRegistryErrors::NotRegisteredInstitution(_)
        ));
        let err = revert(
            chain
                .consent(&chain.hospital)
                .openEmergency(chain.patient.address(), scope, 3600, "".into())
                .send()
                .await,
        );
        assert!(matches!(
            err,
            ConsentRegistry::ConsentRegistryErrors::EmptyReason(_)
        ));

        let receipt = chain
            .consent(&chain.hospital)
            .openEmergency(
                chain.patient.address(),
                scope,
                3600,
                "unconscious patient in ER".into(),
            )
            .mined()
            .await;
        let opened = receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| l.log_decode::<ConsentRegistry::EmergencyOpened>().ok())
            .expect("EmergencyOpened event");
        assert_eq!(opened.inner.data.reason, "unconscious patient in ER");
        let id = opened.inner.data.emergencyId;

        let cache = chain.cache();
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        let q = AccessQuery {
            patient: chain.patient.address(),
            grantee: chain.hospital.address(),
            kind: RECORD,
            scope,
            purpose: 42,
        };
        let now = chain.now().await;
        assert!(
            matches!(cache.check(&q, now), Ok(Access::Emergency { emergency_id, .. }) if emergency_id == id)
        );
        assert_eq!(cache.open_emergencies(now).len(), 1);

        // The patient closes it early; a stranger cannot.
        let err = revert(
            chain
                .consent(&chain.stranger)
                .closeEmergency(id)
                .send()
                .await,
        );
        assert!(matches!(
            err,
            ConsentRegistry::ConsentRegistryErrors::CannotClose(_)
        ));
        chain
            .consent(&chain.patient)
            .closeEmergency(id)
            .mined()
            .await;
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert_eq!(cache.check(&q, now), Err(Denial::NoGrant));
    }
}

#[tokio::test]
async fn restarted_cache_catches_up_from_its_snapshot() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let (a, b) = (B256::repeat_byte(8), B256::repeat_byte(9));
        let expiry = chain.now().await + 3600;
        grant(&chain, &chain.patient, a, 42, expiry).await;
        let first = GrantCache::with_snapshot(
            chain.deployment.consent_registry,
            chain.deployment.from_block,
            &path,
        )
        .unwrap();
        let seen = first.sync(&chain.provider(&chain.admin)).await.unwrap();
        drop(first); // the node stops

        // While it is down: a new grant, and the first one revoked.
        grant(&chain, &chain.patient, b, 42, expiry).await;
        let id_a = chain
            .consent(&chain.admin)
            .grantIdOf(
                chain.patient.address(),
                chain.researcher.address(),
                RECORD,
                a,
                42,
            )
            .call()
            .await
            .unwrap();
        chain.consent(&chain.patient).revoke(id_a).mined().await;

        let restarted = GrantCache::with_snapshot(
            chain.deployment.consent_registry,
            chain.deployment.from_block,
            &path,
        )
        .unwrap();
        assert_eq!(
            restarted.last_block(),
            Some(seen),
            "resumes after the last processed block"
        );
        let now = chain.now().await;
        assert!(
            restarted.check(&chain.query(a, 42), now).is_ok(),
            "state loaded from the snapshot"
        );
        restarted.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert_eq!(
            restarted.check(&chain.query(a, 42), now),
            Err(Denial::Revoked)
        );
        assert!(restarted.check(&chain.query(b, 42), now).is_ok());

        std::fs::write(&path, b"{not json").unwrap();
        let err = GrantCache::with_snapshot(chain.deployment.consent_registry, 0, &path)
            .err()
            .unwrap();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }
}

#[tokio::test]
async fn audit_anchor_accepts_growing_heads_from_registered_institutions() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let anchor = |who: &PrivateKeySigner| {
            AuditAnchor::new(chain.deployment.audit_anchor, chain.provider(who))
        };
        anchor(&chain.hospital)
            .anchor(B256::repeat_byte(1), 10)
            .mined()
            .await;
        let err = anchor(&chain.hospital)
            .anchor(B256::repeat_byte(2), 9)
            .send()
            .await
            .expect_err("shrinking log");
        assert!(matches!(
            err.as_decoded_interface_error::<AuditAnchor::AuditAnchorErrors>()
                .unwrap(),
            AuditAnchor::AuditAnchorErrors::EntriesDecreased(_)
        ));
        let err = anchor(&chain.stranger)
            .anchor(B256::repeat_byte(2), 11)
            .send()
            .await
            .expect_err("unregistered");
        assert!(matches!(
            err.as_decoded_interface_error::<AuditAnchor::AuditAnchorErrors>()
                .unwrap(),
            AuditAnchor::AuditAnchorErrors::NotRegistered(_)
        ));
        let latest = anchor(&chain.admin)
            .anchorAt(chain.hospital.address(), U256::ZERO)
            .call()
            .await
            .unwrap();
        assert_eq!((latest.head, latest.entries), (B256::repeat_byte(1), 10));
    }
}

/// The peer authorization hook's lookup: an approved institution's registered node,
/// and nothing for others or once the institution is revoked.
#[tokio::test]
async fn registered_peer_ids_follow_the_registry() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let provider = chain.provider(&chain.admin);
        let registry = chain.deployment.node_registry;
        let lookup = |who: alloy::primitives::Address| {
            let provider = provider.clone();
            async move {
                medmesh_chain::registered_peer_id(&provider, registry, who)
                    .await
                    .unwrap()
            }
        };
        // The fixture's hospital registered a node with these PeerId bytes.
        assert_eq!(
            lookup(chain.hospital.address()).await,
            Some(b"\x00\x24peer".to_vec())
        );
        assert_eq!(lookup(chain.stranger.address()).await, None);
        chain
            .registry(&chain.admin)
            .revokeInstitution(chain.hospital.address())
            .mined()
            .await;
        assert_eq!(lookup(chain.hospital.address()).await, None, "{backend:?}");
    }
}
