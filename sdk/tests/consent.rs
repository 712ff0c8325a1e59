//! Consent through the SDK, on anvil and on the embedded dev chain: the institution links
//! a record to its patient, the patient signs a grant in their wallet and relays it
//! through their own SIWE session, the researcher gets the key and decrypts the record,
//! the patient revokes, the researcher is refused.

use medmesh_core::RecordId;
use medmesh_sdk::{wallet, Client, UploadOptions};
use medmesh_testkit::chain::{open_released, Chain, BACKENDS};
use medmesh_testkit::institution;
use medmesh_testkit::node::TestNode;

#[tokio::test]
async fn patient_grants_researcher_reads_patient_revokes() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let node = TestNode::start().await;
        node.connect_chain(&chain);
        let institution_client = Client::new(&node.url(""))
            .unwrap()
            .with_token(&node.write_token);

        let plaintext = b"HbA1c 6.1 % (synthetic)".to_vec();
        let record = institution_client
            .upload(plaintext.clone(), UploadOptions::default())
            .await
            .unwrap();
        let id = record.id.to_string();
        let link = institution_client
            .link_patient(&id, &chain.patient.address().to_string())
            .await
            .unwrap();

        // The patient signs in with their wallet and relays their own signed grant.
        let (patient_client, _) = Client::new(&node.url(""))
            .unwrap()
            .sign_in(&chain.patient)
            .await
            .unwrap();
        let info = patient_client.chain_info().await.unwrap();
        let consent = wallet::Consent {
            patient: chain.patient.address(),
            grantee: chain.researcher.address(),
            kind: 0,
            scope: link.scope.parse().unwrap(),
            purpose: 42,
            nonce: 0,
            deadline: chain.now().await + 600,
        };
        let signed = wallet::sign_grant(&chain.patient, &info, &consent, chain.now().await + 3600)
            .await
            .unwrap();
        assert_eq!(
            wallet::verify_grant(&info, &signed).unwrap(),
            chain.patient.address()
        );
        let mut tampered = signed.clone();
        tampered.purpose = 6;
        assert_ne!(
            wallet::verify_grant(&info, &tampered).unwrap(),
            chain.patient.address()
        );
        patient_client.relay_grant(&signed).await.unwrap();
        let mine = patient_client.grants(None, None).await.unwrap();
        assert_eq!(mine.len(), 1);
        assert!(!mine[0].revoked);

        // The researcher publishes its certificate and asks for the key.
        let researcher_keys = institution(1);
        let certificate = researcher_keys.certificate().unwrap();
        chain.publish_key(&chain.researcher, &certificate).await;
        let armored = String::from_utf8(certificate.to_armored().unwrap()).unwrap();
        let researcher_client = Client::new(&node.url(""))
            .unwrap()
            .with_token(&node.read_token);
        let released = researcher_client
            .request_key(&id, 42, &armored, &chain.researcher)
            .await
            .unwrap();
        assert_eq!(released.access, "grant");

        let record_id: RecordId = id.parse().unwrap();
        let wrap = hex_decode(&released.key_wrap);
        assert_eq!(
            open_released(node.state.store(), &record_id, wrap, 1),
            plaintext
        );

        // The patient revokes; the next request is refused with the reason.
        let revocation = wallet::sign_revocation(
            &chain.patient,
            &info,
            &wallet::Consent {
                nonce: 1,
                ..consent
            },
        )
        .await
        .unwrap();
        patient_client.relay_revoke(&revocation).await.unwrap();
        let err = researcher_client
            .request_key(&id, 42, &armored, &chain.researcher)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(403));
        // The one refusal a caller without a grant gets (the cause is audited).
        assert!(err.to_string().contains("no grant on chain"), "{err}");
        // Another wallet cannot relay the patient's signatures through its session.
        let (stranger_client, _) = Client::new(&node.url(""))
            .unwrap()
            .sign_in(&chain.stranger)
            .await
            .unwrap();
        assert_eq!(
            stranger_client
                .relay_grant(&signed)
                .await
                .unwrap_err()
                .status(),
            Some(403)
        );
    }
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
