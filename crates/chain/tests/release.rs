//! Key release on a real EVM: a grantee's signed request, checked against the on-chain
//! key directory and consent, answered with the data key wrapped for the grantee's
//! post-quantum certificate. Every refusal says why and is audited.

use std::sync::{Arc, Mutex};

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signer;
use medmesh_chain::{duo, record_scope, Denial, KeyReleaser, KeyRequest, ReleaseError};
use medmesh_core::{ContentType, RecordId};
use medmesh_crypto::Certificate;
use medmesh_store::{AuditAction, PutRequest, Store, DEFAULT_CHUNK_SIZE};
use medmesh_testkit::chain::{grant_scope, open_released, Backend, Chain, Mined, BACKENDS};
use medmesh_testkit::{institution, passphrase};

struct Setup {
    chain: Chain,
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    releaser: KeyReleaser,
    record: RecordId,
    plaintext: Vec<u8>,
    scope: B256,
    researcher_cert: Certificate,
}

async fn setup(backend: Backend) -> Setup {
    let chain = Chain::start_on(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let owner = institution(0);
    let owner_cert = owner.certificate().unwrap();
    let signer = Mutex::new(owner.unlock_signing(&passphrase()).unwrap());
    let plaintext = medmesh_testkit::noise(100_000, 8);
    let request = PutRequest {
        content_type: Some(ContentType::FHIR_JSON.parse().unwrap()),
        patient: None,
        chunk_size: DEFAULT_CHUNK_SIZE,
        actor: "test".into(),
    };
    let record = store
        .put_record(
            &mut &plaintext[..],
            &request,
            &signer,
            &owner_cert,
            &[],
            &|_| {},
        )
        .unwrap();
    let link = store
        .link_patient(&record, &chain.patient.address().to_string(), "test")
        .unwrap();
    let scope = record_scope(&record, &link.salt).unwrap();

    // The researcher publishes the certificate it receives keys with.
    let researcher_cert = institution(1).certificate().unwrap();
    chain.publish_key(&chain.researcher, &researcher_cert).await;

    let releaser = KeyReleaser::new(
        store.clone(),
        owner_cert,
        Arc::new(Mutex::new(owner.unlock_decryption(&passphrase()).unwrap())),
        Arc::new(chain.cache()),
        chain.provider(&chain.admin),
        chain.deployment.node_registry,
    );
    Setup {
        chain,
        _dir: dir,
        store,
        releaser,
        record,
        plaintext,
        scope,
        researcher_cert,
    }
}

impl Setup {
    /// A request naming the researcher as grantee, signed by `wallet`.
    async fn request(
        &self,
        wallet: &PrivateKeySigner,
        purpose: u32,
        certificate: &Certificate,
    ) -> KeyRequest {
        self.request_as(
            self.chain.researcher.address(),
            wallet,
            purpose,
            certificate,
        )
        .await
    }

    async fn request_as(
        &self,
        grantee: alloy::primitives::Address,
        wallet: &PrivateKeySigner,
        purpose: u32,
        certificate: &Certificate,
    ) -> KeyRequest {
        let challenge = self.releaser.challenge().unwrap();
        let message = KeyRequest::message(&self.record, grantee, purpose, &challenge);
        let signature = wallet.sign_message(message.as_bytes()).await.unwrap();
        KeyRequest {
            record: self.record,
            grantee,
            purpose,
            certificate: certificate.to_armored().unwrap(),
            challenge,
            signature: format!("0x{}", hex::encode(signature.as_bytes())),
        }
    }

    async fn ask(&self, purpose: u32) -> Result<medmesh_chain::Released, ReleaseError> {
        let req = self
            .request(&self.chain.researcher, purpose, &self.researcher_cert)
            .await;
        self.releaser.release(&req).await
    }
}

#[tokio::test]
async fn granted_key_opens_the_record_and_revocation_stops_the_next_release() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        assert!(matches!(
            s.ask(42).await,
            Err(ReleaseError::Denied(Denial::NoGrant))
        ));

        let expiry = s.chain.now().await + 3600;
        grant_scope(&s.chain, s.scope, duo::GENERAL_RESEARCH_USE, expiry).await;
        let released = s.ask(42).await.unwrap();

        // The researcher unwraps the key with its own secret key and decrypts the record.
        assert_eq!(
            open_released(&s.store, &s.record, released.key_wrap.message.clone(), 1),
            s.plaintext
        );

        // Revoke: the very next request is refused (the releaser syncs to the latest block).
        let grant_id = s
            .chain
            .consent(&s.chain.admin)
            .grantIdOf(
                s.chain.patient.address(),
                s.chain.researcher.address(),
                0,
                s.scope,
                42,
            )
            .call()
            .await
            .unwrap();
        s.chain
            .consent(&s.chain.patient)
            .revoke(grant_id)
            .mined()
            .await;
        assert!(matches!(
            s.ask(42).await,
            Err(ReleaseError::Denied(Denial::Revoked))
        ));

        let audit = s.store.audit_page(0, 100).unwrap();
        let releases = audit
            .iter()
            .filter(|e| e.action == AuditAction::KeyRelease)
            .count();
        let denials: Vec<_> = audit
            .iter()
            .filter(|e| e.action == AuditAction::KeyReleaseDenied)
            .collect();
        assert_eq!(releases, 1);
        assert_eq!(denials.len(), 2);
        assert!(
            denials[1].detail["reason"].contains("revoked"),
            "{:?}",
            denials[1].detail
        );
    }
}

#[tokio::test]
async fn expired_and_wrong_purpose_are_refused() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        let expiry = s.chain.now().await + 2;
        grant_scope(&s.chain, s.scope, duo::HEALTH_MEDICAL_BIOMEDICAL, expiry).await;
        assert!(matches!(
            s.ask(duo::GENERAL_RESEARCH_USE).await,
            Err(ReleaseError::Denied(Denial::WrongPurpose { asked: 42, .. }))
        ));
        tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
        assert!(matches!(
            s.ask(duo::HEALTH_MEDICAL_BIOMEDICAL).await,
            Err(ReleaseError::Denied(Denial::Expired { .. }))
        ));
    }
}

#[tokio::test]
async fn forged_replayed_and_mismatched_requests_are_refused() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        grant_scope(&s.chain, s.scope, 42, s.chain.now().await + 3600).await;

        // Signed by someone else.
        let forged = s.request(&s.chain.stranger, 42, &s.researcher_cert).await;
        assert!(matches!(
            s.releaser.release(&forged).await,
            Err(ReleaseError::NotGrantee(_))
        ));
        // A valid request works once; its challenge cannot be replayed.
        let good = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        s.releaser.release(&good).await.unwrap();
        assert!(matches!(
            s.releaser.release(&good).await,
            Err(ReleaseError::BadChallenge)
        ));
        // A challenge this node never issued.
        let mut invented = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        invented.challenge = "00".repeat(16);
        assert!(matches!(
            s.releaser.release(&invented).await,
            Err(ReleaseError::BadChallenge)
        ));
        // A certificate other than the published one (here: the hospital's own).
        let other = institution(0).certificate().unwrap();
        let mismatched = s.request(&s.chain.researcher, 42, &other).await;
        assert!(matches!(
            s.releaser.release(&mismatched).await,
            Err(ReleaseError::CertificateMismatch { .. })
        ));
        // Garbage certificate.
        let mut garbage = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        garbage.certificate = b"not a certificate".to_vec();
        assert!(matches!(
            s.releaser.release(&garbage).await,
            Err(ReleaseError::BadCertificate(_))
        ));
    }
}

#[tokio::test]
async fn unlinked_records_have_no_consent_to_check() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        let owner = institution(0);
        let signer = Mutex::new(owner.unlock_signing(&passphrase()).unwrap());
        let request = PutRequest {
            content_type: None,
            patient: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            actor: "test".into(),
        };
        let unlinked = s
            .store
            .put_record(
                &mut &b"x"[..],
                &request,
                &signer,
                &owner.certificate().unwrap(),
                &[],
                &|_| {},
            )
            .unwrap();
        let mut req = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        let grantee = s.chain.researcher.address();
        req.record = unlinked;
        let msg = KeyRequest::message(&unlinked, grantee, 42, &req.challenge);
        req.signature = format!(
            "0x{}",
            hex::encode(
                s.chain
                    .researcher
                    .sign_message(msg.as_bytes())
                    .await
                    .unwrap()
                    .as_bytes()
            )
        );
        assert!(matches!(
            s.releaser.release(&req).await,
            Err(ReleaseError::NotLinked(_))
        ));
        // Linking to another wallet later is refused; the existing link stands.
        assert!(s
            .store
            .link_patient(&s.record, &s.chain.stranger.address().to_string(), "test")
            .is_err());
        assert!(s.store.link_patient(&s.record, "0x1234", "test").is_err());
    }
}

#[tokio::test]
async fn break_glass_release_is_audited_as_emergency_access() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        let hospital = s.chain.hospital.clone();
        // The hospital receives keys with the second test certificate.
        s.chain.publish_key(&hospital, &s.researcher_cert).await;
        let ask = || async {
            let req = s
                .request_as(hospital.address(), &hospital, 42, &s.researcher_cert)
                .await;
            s.releaser.release(&req).await
        };
        assert!(matches!(
            ask().await,
            Err(ReleaseError::Denied(Denial::NoGrant))
        ));

        let receipt = s
            .chain
            .consent(&hospital)
            .openEmergency(
                s.chain.patient.address(),
                s.scope,
                600,
                "cardiac arrest, patient unconscious".into(),
            )
            .mined()
            .await;
        let opened = receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| {
                l.log_decode::<medmesh_chain::bindings::ConsentRegistry::EmergencyOpened>()
                    .ok()
            })
            .unwrap();
        let released = ask().await.unwrap();
        assert!(matches!(
            released.access,
            medmesh_chain::Access::Emergency { .. }
        ));
        let audit = s.store.audit_page(0, 100).unwrap();
        let emergency: Vec<_> = audit
            .iter()
            .filter(|e| e.action == AuditAction::EmergencyAccess)
            .collect();
        assert_eq!(emergency.len(), 1, "{audit:?}");
        assert!(emergency[0].detail["access"].contains(&opened.inner.data.emergencyId.to_string()));

        // The patient closes it: the next request is refused again.
        s.chain
            .consent(&s.chain.patient)
            .closeEmergency(opened.inner.data.emergencyId)
            .mined()
            .await;
        assert!(matches!(
            ask().await,
            Err(ReleaseError::Denied(Denial::NoGrant))
        ));
    }
}

#[tokio::test]
async fn a_grant_for_all_the_patients_records_here_covers_the_record() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        let owner = institution(0).certificate().unwrap().id();
        let everything_here = medmesh_chain::patient_scope(&owner, s.chain.patient.address());
        let elsewhere = medmesh_chain::patient_scope(
            &institution(1).certificate().unwrap().id(),
            s.chain.patient.address(),
        );
        let expiry = s.chain.now().await + 3600;
        // A patient-wide grant at another institution does not cover this record.
        s.chain
            .consent(&s.chain.patient)
            .grant(
                s.chain.patient.address(),
                s.chain.researcher.address(),
                1,
                elsewhere,
                42,
                expiry,
            )
            .mined()
            .await;
        assert!(matches!(
            s.ask(42).await,
            Err(ReleaseError::Denied(Denial::NoGrant))
        ));

        s.chain
            .consent(&s.chain.patient)
            .grant(
                s.chain.patient.address(),
                s.chain.researcher.address(),
                1,
                everything_here,
                42,
                expiry,
            )
            .mined()
            .await;
        let released = s.ask(42).await.unwrap();
        assert!(matches!(
            released.access,
            medmesh_chain::Access::Granted { .. }
        ));

        // Revoked patient-wide grant and no record grant: the reason is the revocation.
        let id = s
            .chain
            .consent(&s.chain.admin)
            .grantIdOf(
                s.chain.patient.address(),
                s.chain.researcher.address(),
                1,
                everything_here,
                42,
            )
            .call()
            .await
            .unwrap();
        s.chain.consent(&s.chain.patient).revoke(id).mined().await;
        assert!(matches!(
            s.ask(42).await,
            Err(ReleaseError::Denied(Denial::Revoked))
        ));
    }
}
