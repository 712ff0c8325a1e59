//! Gas report: every state-changing function of the contracts, on anvil, and the
//! k-anonymity verifier's `verifyProof` (a view, estimated).
//!
//! `cargo bench -p medmesh-chain --bench gas` prints a Markdown table for
//! `docs/benchmarks.md`.

#![allow(missing_docs, clippy::print_stdout)]

use alloy::primitives::{B256, U256};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::Signer;
use alloy::sol_types::SolStruct;
use medmesh_chain::bindings::{
    AuditAnchor, ConsentRegistry, DatasetRegistry, GrantConsent, KAnonVerifier64, NodeRegistry,
    RevokeConsent,
};
use medmesh_chain::consent_domain;
use medmesh_chain::datasets::{proof_words, submission};
use medmesh_testkit::chain::{Chain, Mined};

fn gas(r: &TransactionReceipt) -> u64 {
    assert!(r.status(), "transaction reverted");
    r.gas_used
}

#[tokio::main]
async fn main() {
    let chain = Chain::start().await;
    let admin = chain.provider(&chain.admin);
    let mut rows: Vec<(&str, u64)> = Vec::new();

    let r = NodeRegistry::deploy_builder(admin.clone(), vec![])
        .mined()
        .await;
    rows.push(("NodeRegistry: deploy", gas(&r)));
    let r = ConsentRegistry::deploy_builder(admin.clone(), chain.deployment.node_registry)
        .mined()
        .await;
    rows.push(("ConsentRegistry: deploy", gas(&r)));
    let r = AuditAnchor::deploy_builder(admin.clone(), chain.deployment.node_registry)
        .mined()
        .await;
    rows.push(("AuditAnchor: deploy", gas(&r)));

    macro_rules! measure {
        ($name:expr, $call:expr) => {{
            let r = $call.mined().await;
            rows.push(($name, gas(&r)));
        }};
    }
    let registry = |who| chain.registry(who);
    let consent = |who| chain.consent(who);
    let (patient, researcher, guardian) = (
        chain.patient.address(),
        chain.researcher.address(),
        chain.guardian.address(),
    );

    measure!(
        "NodeRegistry.addAdmin",
        registry(&chain.admin).addAdmin(guardian)
    );
    measure!(
        "NodeRegistry.removeAdmin",
        registry(&chain.admin).removeAdmin(guardian)
    );
    measure!(
        "NodeRegistry.approveInstitution",
        registry(&chain.admin).approveInstitution(chain.stranger.address())
    );
    measure!(
        "NodeRegistry.registerNode",
        registry(&chain.stranger).registerNode(
            vec![0u8; 38].into(),
            B256::repeat_byte(3),
            "Clinic".into()
        )
    );
    measure!(
        "NodeRegistry.publishKey",
        registry(&chain.researcher).publishKey(B256::repeat_byte(4))
    );
    measure!(
        "NodeRegistry.revokeInstitution",
        registry(&chain.admin).revokeInstitution(chain.stranger.address())
    );

    let now = chain.now().await;
    let scope = B256::repeat_byte(9);
    measure!(
        "ConsentRegistry.grant",
        consent(&chain.patient).grant(patient, researcher, 0, scope, 42, now + 3600)
    );
    let id = consent(&chain.admin)
        .grantIdOf(patient, researcher, 0, scope, 42)
        .call()
        .await
        .unwrap();
    measure!("ConsentRegistry.revoke", consent(&chain.patient).revoke(id));
    measure!(
        "ConsentRegistry.setDelegate",
        consent(&chain.patient).setDelegate(guardian, now + 3600)
    );
    measure!(
        "ConsentRegistry.revokeDelegate",
        consent(&chain.patient).revokeDelegate(guardian)
    );

    let domain = consent_domain(chain.chain_id, chain.deployment.consent_registry);
    let deadline = U256::from(now + 600);
    let g = GrantConsent {
        patient,
        grantee: researcher,
        kind: 0,
        scope,
        purpose: 6,
        expiry: now + 3600,
        nonce: U256::ZERO,
        deadline,
    };
    let sig = chain
        .patient
        .sign_hash(&g.eip712_signing_hash(&domain))
        .await
        .unwrap();
    measure!(
        "ConsentRegistry.grantBySig (relayed)",
        consent(&chain.relayer).grantBySig(
            g.patient,
            g.grantee,
            0,
            g.scope,
            6,
            g.expiry,
            g.nonce,
            g.deadline,
            sig.as_bytes().to_vec().into()
        )
    );
    let rv = RevokeConsent {
        patient,
        grantee: researcher,
        kind: 0,
        scope,
        purpose: 6,
        nonce: U256::from(1),
        deadline,
    };
    let sig = chain
        .patient
        .sign_hash(&rv.eip712_signing_hash(&domain))
        .await
        .unwrap();
    measure!(
        "ConsentRegistry.revokeBySig (relayed)",
        consent(&chain.relayer).revokeBySig(
            patient,
            researcher,
            0,
            scope,
            6,
            rv.nonce,
            rv.deadline,
            sig.as_bytes().to_vec().into()
        )
    );
    let r = consent(&chain.hospital)
        .openEmergency(
            patient,
            scope,
            3600,
            "unconscious patient in the emergency room".into(),
        )
        .mined()
        .await;
    rows.push(("ConsentRegistry.openEmergency", gas(&r)));
    let opened = r
        .inner
        .logs()
        .iter()
        .find_map(|l| l.log_decode::<ConsentRegistry::EmergencyOpened>().ok())
        .unwrap();
    measure!(
        "ConsentRegistry.closeEmergency",
        consent(&chain.patient).closeEmergency(opened.inner.data.emergencyId)
    );

    let anchor = AuditAnchor::new(
        chain.deployment.audit_anchor,
        chain.provider(&chain.hospital),
    );
    measure!(
        "AuditAnchor.anchor (first)",
        anchor.anchor(B256::repeat_byte(1), 10)
    );
    measure!(
        "AuditAnchor.anchor (next)",
        anchor.anchor(B256::repeat_byte(2), 20)
    );

    // Datasets: a real proof of a 24-row table (every circuit size has the same
    // verifier code but for its key, so the gas is the same for all).
    // A fresh provider: `admin`'s cached nonce is behind the transactions sent since.
    let admin = chain.provider(&chain.admin);
    let r = KAnonVerifier64::deploy_builder(admin.clone()).mined().await;
    rows.push(("KAnonVerifier (each size): deploy", gas(&r)));
    let verifier = r.contract_address.expect("a contract");
    let r = DatasetRegistry::deploy_builder(
        admin.clone(),
        chain.deployment.node_registry,
        vec![64],
        vec![verifier],
    )
    .mined()
    .await;
    rows.push(("DatasetRegistry: deploy (one size)", gas(&r)));
    let proven = medmesh_testkit::datasets::proven_table();
    let words = proof_words(&proven.proof);
    let inputs = [U256::from_be_bytes(proven.statement.public_input_word())];
    let estimated = KAnonVerifier64::new(verifier, chain.provider(&chain.hospital))
        .verifyProof(words, inputs)
        .estimate_gas()
        .await
        .unwrap();
    rows.push((
        "KAnonVerifier.verifyProof (estimated, with the 21 000 of a transaction)",
        estimated,
    ));
    let datasets = DatasetRegistry::new(
        chain.deployment.dataset_registry.expect("deployed"),
        chain.provider(&chain.hospital),
    );
    let listing = submission(&proven.statement, b"record-cid", b"metadata-cid", &[42]);
    let r = datasets.list(listing, words).mined().await;
    rows.push(("DatasetRegistry.list (proof verified)", gas(&r)));
    let id = r
        .decoded_log::<DatasetRegistry::DatasetListed>()
        .unwrap()
        .data
        .id;
    measure!("DatasetRegistry.withdraw", datasets.withdraw(id));

    println!("| function | gas used |\n|---|---|");
    for (name, g) in rows {
        println!("| {name} | {g} |");
    }
}
