//! Key release on a real EVM: a grantee's signed request, checked against the on-chain
//! key directory and consent, answered with the data key wrapped for the grantee's
//! post-quantum certificate. Every refusal says why and is audited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signer;
use medmesh_chain::{duo, record_scope, Denial, KeyReleaser, KeyRequest, ReleaseError};
use medmesh_core::{ContentType, RecordId};
use medmesh_crypto::{Certificate, CryptoError, UnlockedDecryptor};
use medmesh_store::{AuditAction, PutRequest, Store, DEFAULT_CHUNK_SIZE};
use medmesh_testkit::chain::{grant_scope, open_released, Backend, Chain, Mined, BACKENDS};
use medmesh_testkit::{institution, passphrase};

struct Setup {
    chain: Chain,
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    releaser: Arc<KeyReleaser>,
    /// The releaser's decryptor, shared (as with downloads in a node).
    decryptor: Arc<Mutex<UnlockedDecryptor>>,
    record: RecordId,
    plaintext: Vec<u8>,
    scope: B256,
    researcher_cert: Certificate,
}

async fn setup(backend: Backend) -> Setup {
    setup_with_keys_of(backend, 0).await
}

/// A setup whose releaser unwraps with the secret keys of test institution `decrypting`
/// (0 is the records' owner).
async fn setup_with_keys_of(backend: Backend, decrypting: usize) -> Setup {
    let chain = Chain::start_on(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    store.unlock_index(medmesh_testkit::index_key());
    let owner = institution(0);
    let owner_cert = owner.certificate().unwrap();
    let signer = Mutex::new(owner.unlock_signing(&passphrase()).unwrap());
    let plaintext = medmesh_testkit::noise(100_000, 8);
    let request = PutRequest {
        content_type: Some(ContentType::FHIR_JSON.parse().unwrap()),
        patient: None,
        chunk_size: DEFAULT_CHUNK_SIZE,
        actor: "test".into(),
        idempotency_key: None,
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

    let decryptor = Arc::new(Mutex::new(
        institution(decrypting)
            .unlock_decryption(&passphrase())
            .unwrap(),
    ));
    let releaser = Arc::new(KeyReleaser::new(
        store.clone(),
        owner_cert,
        decryptor.clone(),
        Arc::new(chain.cache()),
        chain.provider(&chain.admin),
        chain.deployment.node_registry,
    ));
    Setup {
        chain,
        _dir: dir,
        store,
        releaser,
        decryptor,
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
        self.releaser.release(&req, "token:test").await
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
        // Refusals are the transport's to audit (see `denial_event`), coalesced.
        assert_eq!(releases, 1);
        assert!(!audit
            .iter()
            .any(|e| e.action == AuditAction::KeyReleaseDenied));
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
            s.releaser.release(&forged, "token:test").await,
            Err(ReleaseError::NotGrantee(_))
        ));
        // A valid request works once; its challenge cannot be replayed.
        let good = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        s.releaser.release(&good, "token:test").await.unwrap();
        assert!(matches!(
            s.releaser.release(&good, "token:test").await,
            Err(ReleaseError::BadChallenge)
        ));
        // A challenge this node never issued.
        let mut invented = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        invented.challenge = "00".repeat(16);
        assert!(matches!(
            s.releaser.release(&invented, "token:test").await,
            Err(ReleaseError::BadChallenge)
        ));
        // A certificate other than the published one (here: the hospital's own).
        let other = institution(0).certificate().unwrap();
        let mismatched = s.request(&s.chain.researcher, 42, &other).await;
        assert!(matches!(
            s.releaser.release(&mismatched, "token:test").await,
            Err(ReleaseError::CertificateMismatch { .. })
        ));
        // Garbage certificate.
        let mut garbage = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        garbage.certificate = b"not a certificate".to_vec();
        assert!(matches!(
            s.releaser.release(&garbage, "token:test").await,
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
            idempotency_key: None,
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
            s.releaser.release(&req, "token:test").await,
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
            s.releaser.release(&req, "wallet:hospital").await
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

/// The audit log says who asked: the principal the transport authenticated, not the
/// grantee a request names (anyone can name anyone). The grantee is in the detail.
#[tokio::test]
async fn releases_are_audited_under_the_authenticated_caller() {
    for backend in BACKENDS {
        let s = setup(backend).await;
        grant_scope(&s.chain, s.scope, 42, s.chain.now().await + 3600).await;
        let researcher = s.chain.researcher.address();

        // A stranger names the researcher as grantee: refused, and audited as the stranger.
        let forged = s.request(&s.chain.stranger, 42, &s.researcher_cert).await;
        let refused = s.releaser.release(&forged, "token:abc").await;
        let Err(error @ ReleaseError::NotGrantee(_)) = refused else {
            panic!("a request signed by another is refused: {refused:?}");
        };
        // The refusal's entry is the caller's to write (through its coalescing log).
        let denied = medmesh_chain::denial_event(&forged, "token:abc", &error);
        assert_eq!(denied.action, AuditAction::KeyReleaseDenied);
        assert_eq!(denied.actor, "token:abc");
        assert_eq!(denied.detail["grantee"], researcher.to_string());
        assert!(
            denied.detail["reason"].contains("not signed by the grantee"),
            "{:?}",
            denied.detail
        );
        let good = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;
        let caller = format!("wallet:{researcher}");
        s.releaser.release(&good, &caller).await.unwrap();

        let audit = s.store.audit_page(0, 100).unwrap();
        assert!(
            !audit
                .iter()
                .any(|e| e.action == AuditAction::KeyReleaseDenied),
            "the releaser itself writes no refusal: {audit:?}"
        );
        let released: Vec<_> = audit
            .iter()
            .filter(|e| e.action == AuditAction::KeyRelease)
            .collect();
        assert_eq!(released.len(), 1, "{audit:?}");
        assert_eq!(released[0].actor, caller);
        assert_eq!(released[0].detail["grantee"], researcher.to_string());
    }
}

/// While a download holds the shared decryptor, a key release waits for it on the
/// blocking pool: the async executor (here a single thread, running the test too)
/// keeps running other tasks meanwhile.
#[tokio::test]
async fn a_release_waits_for_the_decryptor_off_the_async_executor() {
    const HOLD: Duration = Duration::from_secs(3);
    for backend in BACKENDS {
        let s = setup(backend).await;
        grant_scope(&s.chain, s.scope, 42, s.chain.now().await + 3600).await;
        let request = s.request(&s.chain.researcher, 42, &s.researcher_cert).await;

        // "A download" holds the decryptor for a while, on its own thread.
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
        let unlocked = Arc::new(AtomicBool::new(false));
        let holder = {
            let decryptor = s.decryptor.clone();
            let unlocked = unlocked.clone();
            std::thread::spawn(move || {
                let guard = decryptor.lock().unwrap();
                let _ = locked_tx.send(());
                std::thread::sleep(HOLD);
                unlocked.store(true, Ordering::SeqCst);
                drop(guard);
            })
        };
        locked_rx.await.unwrap();

        let releaser = s.releaser.clone();
        let mut release =
            tokio::spawn(async move { releaser.release(&request, "token:test").await });
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        let result = loop {
            tokio::select! {
                joined = &mut release => break joined.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
            }
        };
        longest = longest.max(last.elapsed());
        holder.join().unwrap();
        let released = result.unwrap();
        assert!(
            unlocked.load(Ordering::SeqCst),
            "the release needed the decryptor, so it waited for the download"
        );
        assert!(
            longest < Duration::from_secs(1),
            "{backend:?}: the executor stalled for {longest:?} during the release"
        );
        assert_eq!(
            open_released(&s.store, &s.record, released.key_wrap.message, 1),
            s.plaintext
        );
    }
}

/// A node whose own key cannot unwrap its record's data key says it is the node's
/// fault, keeps the cryptographic error as the source, and audits the refusal.
#[tokio::test]
async fn a_key_the_node_cannot_unwrap_is_the_nodes_fault() {
    for backend in BACKENDS {
        // The releaser holds the other institution's secret keys.
        let s = setup_with_keys_of(backend, 1).await;
        grant_scope(&s.chain, s.scope, 42, s.chain.now().await + 3600).await;
        let err = s
            .ask(42)
            .await
            .expect_err("the data key is not wrapped for this key");
        assert!(
            matches!(err, ReleaseError::Crypto(CryptoError::NotARecipient { .. })),
            "{backend:?}: {err:?}"
        );
        assert!(err.to_string().contains("failed on the node"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("not wrapped for"), "{err}");
    }
}
