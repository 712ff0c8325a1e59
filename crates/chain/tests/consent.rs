//! The consent contracts on a real EVM (anvil from the pinned npm package), driven
//! through the generated bindings, with the grant cache fed by their events.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use alloy::network::TransactionBuilder;
use alloy::primitives::{B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signer;
use alloy::sol_types::SolStruct;
use alloy::transports::http::reqwest::Url;
use medmesh_chain::bindings::{
    AuditAnchor, ConsentRegistry, GrantConsent, NodeRegistry, RevokeConsent,
};
use medmesh_chain::{
    consent_domain, duo, relaying_provider, Access, AccessQuery, Denial, GrantCache, Relayer,
};
use medmesh_testkit::chain::{grant, revert, Chain, Mined, BACKENDS, RECORD};
use tokio::task::JoinSet;

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
        let synced = cache
            .sync(&chain.provider(&chain.admin))
            .await
            .unwrap()
            .latest;
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
            cache
                .sync(&chain.provider(&chain.admin))
                .await
                .unwrap()
                .latest,
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
        // Whoever syncs, a subscriber (the node's notifier) hears of the break-glass.
        let mut changes = cache.subscribe();
        let report = cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        let until = opened.inner.data.until;
        let expected = vec![(id, chain.hospital.address(), chain.patient.address(), until)];
        assert_eq!(report.emergencies_opened, expected, "{report:?}");
        assert_eq!(changes.try_recv().unwrap().emergencies_opened, expected);
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
        let report = cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert_eq!(report.emergencies_closed, vec![id]);
        assert!(report.emergencies_opened.is_empty(), "{report:?}");
        assert_eq!(changes.try_recv().unwrap().emergencies_closed, vec![id]);
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
        let seen = first
            .sync(&chain.provider(&chain.admin))
            .await
            .unwrap()
            .latest;
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

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// The snapshot is a durable write: it is redone only when a sync changed the consent
/// state, not on every key request or grant listing, and a restarted cache resumes
/// from the one written.
#[tokio::test]
async fn the_snapshot_is_rewritten_only_when_consent_changed() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let provider = chain.provider(&chain.admin);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let open = || {
            GrantCache::with_snapshot(
                chain.deployment.consent_registry,
                chain.deployment.from_block,
                &path,
            )
            .unwrap()
        };
        let (a, b) = (B256::repeat_byte(20), B256::repeat_byte(21));
        let expiry = chain.now().await + 3600;
        grant(&chain, &chain.patient, a, 42, expiry).await;

        let cache = open();
        let first = cache.sync(&provider).await.unwrap();
        assert_eq!(first.grants_created.len(), 1, "{first:?}");
        let written = inode(&path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the snapshot is private");

        // No new block: nothing to write.
        let again = cache.sync(&provider).await.unwrap();
        assert_eq!(again.latest, first.latest);
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(
            inode(&path),
            written,
            "a sync that changed nothing rewrote the snapshot ({backend:?})"
        );
        // A new block without consent events (another contract's transaction): neither.
        chain
            .registry(&chain.hospital)
            .publishKey(B256::repeat_byte(3))
            .mined()
            .await;
        let later = cache.sync(&provider).await.unwrap();
        assert!(later.latest > first.latest, "{later:?}");
        assert!(later.is_empty(), "{later:?}");
        assert_eq!(inode(&path), written, "a block without consent events");
        drop(cache); // the node stops

        // The restarted cache resumes after the block of the snapshot, with its state.
        let restarted = open();
        assert_eq!(restarted.last_block(), Some(first.latest));
        let now = chain.now().await;
        assert!(restarted.check(&chain.query(a, 42), now).is_ok());
        grant(&chain, &chain.patient, b, 42, expiry).await;
        let caught_up = restarted.sync(&provider).await.unwrap();
        assert_eq!(
            caught_up.grants_created.len(),
            1,
            "only what is after the snapshot is replayed: {caught_up:?}"
        );
        assert_ne!(inode(&path), written, "an applied event is persisted");
        drop(restarted);
        let third = open();
        assert_eq!(third.last_block(), Some(caught_up.latest));
        assert!(third.check(&chain.query(a, 42), now).is_ok());
        assert!(third.check(&chain.query(b, 42), now).is_ok());
    }
}

/// Key requests sync concurrently: one of them fetches and applies the new logs, the
/// others find nothing left to do; the change is reported once.
#[tokio::test]
async fn concurrent_syncs_apply_and_report_each_event_once() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let cache = Arc::new(chain.cache());
        let mut changes = cache.subscribe();
        let scope = B256::repeat_byte(22);
        grant(&chain, &chain.patient, scope, 42, chain.now().await + 3600).await;
        let provider = chain.provider(&chain.admin);
        let mut syncs = JoinSet::new();
        for _ in 0..8 {
            let (cache, provider) = (cache.clone(), provider.clone());
            syncs.spawn(async move { cache.sync(&provider).await });
        }
        let mut created = Vec::new();
        while let Some(joined) = syncs.join_next().await {
            created.extend(joined.unwrap().unwrap().grants_created);
        }
        assert_eq!(created.len(), 1, "{backend:?}: {created:?}");
        assert!(cache
            .check(&chain.query(scope, 42), chain.now().await)
            .is_ok());
        assert_eq!(changes.try_recv().unwrap().grants_created, created);
        assert!(changes.try_recv().is_err(), "one change, one report");
    }
}

/// A grant signed by `patient` for the researcher, EIP-712 nonce 0.
async fn signed_by(
    chain: &Chain,
    patient: &PrivateKeySigner,
    scope: B256,
    expiry: u64,
    deadline: u64,
) -> (GrantConsent, alloy::primitives::Bytes) {
    let message = GrantConsent {
        patient: patient.address(),
        grantee: chain.researcher.address(),
        kind: RECORD,
        scope,
        purpose: 42,
        expiry,
        nonce: U256::ZERO,
        deadline: U256::from(deadline),
    };
    let domain = consent_domain(chain.chain_id, chain.deployment.consent_registry);
    let signature = patient
        .sign_hash(&message.eip712_signing_hash(&domain))
        .await
        .unwrap();
    (message, signature.as_bytes().to_vec().into())
}

/// Every relay pays from the node's one account: concurrent relays must not pick the
/// same account nonce, and each answer must be what the chain did.
#[tokio::test]
async fn concurrent_relays_from_one_account_all_land_on_chain() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let relayer = Arc::new(Relayer::new(
            relaying_provider(chain.endpoint.clone(), chain.relayer.clone()),
            chain.deployment.consent_registry,
        ));
        let scope = B256::repeat_byte(23);
        let now = chain.now().await;
        let (expiry, deadline) = (now + 3600, now + 600);
        let mut relays = JoinSet::new();
        for i in 0..20u8 {
            // Twenty patients, each signing their first message.
            let patient = PrivateKeySigner::from_bytes(&B256::with_last_byte(100 + i)).unwrap();
            let (message, signature) = signed_by(&chain, &patient, scope, expiry, deadline).await;
            let relayer = relayer.clone();
            relays.spawn(async move {
                let relayed = relayer.relay_grant(&message, signature).await;
                (message.patient, relayed)
            });
        }
        let mut relayed = Vec::new();
        while let Some(joined) = relays.join_next().await {
            let (patient, result) = joined.unwrap();
            let r = result.unwrap_or_else(|e| panic!("{backend:?}: relay for {patient}: {e}"));
            relayed.push((patient, r));
        }
        assert_eq!(relayed.len(), 20);

        let cache = chain.cache();
        let provider = chain.provider(&chain.admin);
        cache.sync(&provider).await.unwrap();
        let now = chain.now().await;
        let mut transactions = std::collections::HashSet::new();
        for (patient, r) in &relayed {
            let q = AccessQuery {
                patient: *patient,
                grantee: chain.researcher.address(),
                kind: RECORD,
                scope,
                purpose: 42,
            };
            assert_eq!(
                cache.check(&q, now),
                Ok(Access::Granted {
                    grant_id: r.grant_id,
                    expiry
                }),
                "{backend:?}: the grant of {patient} is live"
            );
            let receipt = provider
                .get_transaction_receipt(r.transaction)
                .await
                .unwrap()
                .expect("the reported transaction is on chain");
            assert!(receipt.status());
            assert_eq!(receipt.block_number, Some(r.block));
            transactions.insert(r.transaction);
        }
        assert_eq!(transactions.len(), 20, "one transaction per relay");
    }
}

/// Someone else (an operator's script, another node with the same key) sends from the
/// node's account between relays: the next relay still goes through, whether the
/// relayer's provider asks the chain for nonces or counts them locally (as alloy's
/// default provider does).
#[tokio::test]
async fn a_relay_after_the_account_was_used_elsewhere_succeeds() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let registry = chain.deployment.consent_registry;
        let relayers = [
            (
                "a locally counting provider",
                Relayer::new(chain.provider(&chain.relayer), registry),
            ),
            (
                "Relayer::connect",
                Relayer::connect(chain.endpoint.clone(), chain.relayer.clone(), registry),
            ),
        ];
        let deadline = chain.now().await + 600;
        let mut nonce = 0u64;
        let mut scopes = Vec::new();
        for (kind, relayer) in &relayers {
            for round in 0..2 {
                // Plain transfers from the node's account, bypassing the relayer.
                let elsewhere = chain.provider(&chain.relayer);
                for _ in 0..3 {
                    let transfer = TransactionRequest::default()
                        .with_to(chain.stranger.address())
                        .with_value(U256::from(1));
                    let receipt = elsewhere
                        .send_transaction(transfer)
                        .await
                        .unwrap()
                        .get_receipt()
                        .await
                        .unwrap();
                    assert!(receipt.status());
                }
                let scope = B256::with_last_byte(40 + nonce as u8);
                let (message, signature) =
                    signed_grant(&chain, &chain.patient, scope, nonce, deadline).await;
                relayer
                    .relay_grant(&message, signature.into())
                    .await
                    .unwrap_or_else(|e| panic!("{backend:?}, {kind}, relay {round}: {e}"));
                nonce += 1;
                scopes.push(scope);
            }
        }
        assert_eq!(
            relayers[1].1.account(),
            Some(chain.relayer.address()),
            "connect knows its account"
        );
        assert_eq!(
            relayers[0].1.account(),
            Some(chain.relayer.address()),
            "the first receipt named the account"
        );
        let cache = chain.cache();
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        let now = chain.now().await;
        for scope in scopes {
            assert!(
                cache.check(&chain.query(scope, 42), now).is_ok(),
                "{backend:?}"
            );
        }
    }
}

/// A JSON-RPC proxy in front of `upstream` that forwards every request, but answers the
/// first `eth_sendRawTransaction` with an HTTP 502 once the chain has taken it: the
/// transaction is on chain, its answer lost on the way back.
async fn lossy_proxy(upstream: Url) -> (Url, tokio::task::JoinHandle<()>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};

    #[derive(Clone)]
    struct Proxy {
        upstream: Url,
        client: alloy::transports::http::reqwest::Client,
        lost: Arc<AtomicBool>,
    }

    async fn forward(State(proxy): State<Proxy>, body: Bytes) -> Response {
        let is_send = String::from_utf8_lossy(&body).contains("eth_sendRawTransaction");
        let answer = proxy
            .client
            .post(proxy.upstream.clone())
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let Ok(answer) = answer else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let Ok(bytes) = answer.bytes().await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        if is_send && !proxy.lost.swap(true, Ordering::SeqCst) {
            return StatusCode::BAD_GATEWAY.into_response();
        }
        (
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::from(bytes.to_vec()),
        )
            .into_response()
    }

    let proxy = Proxy {
        upstream,
        client: alloy::transports::http::reqwest::Client::new(),
        lost: Arc::new(AtomicBool::new(false)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::post(forward))
        .with_state(proxy);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

/// The chain took the relayed transaction but its answer was lost: the relayer looks at
/// the contract before answering, and reports the success the chain shows.
#[tokio::test]
async fn a_relay_whose_answer_was_lost_reports_what_the_chain_did() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let (url, proxy) = lossy_proxy(chain.endpoint.clone()).await;
        let relayer = Relayer::new(
            relaying_provider(url, chain.relayer.clone()),
            chain.deployment.consent_registry,
        );
        let scope = B256::repeat_byte(24);
        let deadline = chain.now().await + 600;
        let (message, signature) = signed_grant(&chain, &chain.patient, scope, 0, deadline).await;
        let relayed = relayer
            .relay_grant(&message, signature.clone().into())
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: the grant is on chain, yet: {e}"));
        let receipt = chain
            .provider(&chain.admin)
            .get_transaction_receipt(relayed.transaction)
            .await
            .unwrap()
            .expect("the reported transaction is the chain's");
        assert!(receipt.status());
        assert_eq!(receipt.block_number, Some(relayed.block));
        let cache = chain.cache();
        cache.sync(&chain.provider(&chain.admin)).await.unwrap();
        assert_eq!(
            cache.check(&chain.query(scope, 42), chain.now().await),
            Ok(Access::Granted {
                grant_id: relayed.grant_id,
                expiry: message.expiry
            })
        );
        // Relaying the same signature again: the contract refuses the used nonce.
        let err = relayer
            .relay_grant(&message, signature.into())
            .await
            .expect_err("a used nonce");
        assert!(
            matches!(err, medmesh_chain::RelayError::Rejected(_)),
            "{backend:?}: {err}"
        );
        proxy.abort();
    }
}
