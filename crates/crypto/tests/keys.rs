//! Post-quantum certificates, key wrapping, manifest signatures and the keystore, with
//! real sequoia-openpgp keys.

use std::os::unix::fs::PermissionsExt;

use medmesh_core::{
    ContentType, InstitutionId, KeyWrapAlgorithm, ManifestBody, RecordMeta, MANIFEST_VERSION,
};
use medmesh_crypto::{CryptoError, DataKey, Keystore, Passphrase, RecordCipher, SecretKeys};
use sequoia_openpgp::types::PublicKeyAlgorithm;

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string()).unwrap()
}

fn body(owner: InstitutionId) -> ManifestBody {
    let envelope = RecordCipher::new_header(1024).unwrap();
    let meta = RecordCipher::new(&DataKey::generate().unwrap(), &envelope)
        .unwrap()
        .seal_meta(&RecordMeta {
            content_type: ContentType::HL7_V2.parse().unwrap(),
            size: 0,
            created: time::OffsetDateTime::UNIX_EPOCH,
            owner: owner.clone(),
            patient: None,
        })
        .unwrap();
    ManifestBody {
        version: MANIFEST_VERSION,
        owner,
        meta,
        envelope,
        chunks: vec![medmesh_core::cid_of(medmesh_core::Codec::Raw, b"")],
        key_wraps: vec![],
    }
}

#[test]
fn certificate_is_post_quantum_v6() {
    let secret = SecretKeys::generate("Example Hospital", &pass("hunter2hunter2")).unwrap();
    let armored = secret.certificate().unwrap().to_armored().unwrap();
    let text = String::from_utf8(armored.clone()).unwrap();
    assert!(text.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    assert!(!text.contains("PRIVATE"), "public export leaked secrets");
    let cert = sequoia_openpgp::Cert::from_bytes_armored(&armored);
    let algos: Vec<_> = cert
        .keys()
        .map(|k| (k.key().version(), k.key().pk_algo()))
        .collect();
    assert!(
        algos.contains(&(6, PublicKeyAlgorithm::MLDSA65_Ed25519)),
        "{algos:?}"
    );
    assert!(
        algos.contains(&(6, PublicKeyAlgorithm::MLKEM768_X25519)),
        "{algos:?}"
    );
    // v6 fingerprints are 32 bytes.
    assert_eq!(secret.certificate().unwrap().id().as_str().len(), 64);
}

trait FromArmored {
    fn from_bytes_armored(b: &[u8]) -> Self;
}
impl FromArmored for sequoia_openpgp::Cert {
    fn from_bytes_armored(b: &[u8]) -> Self {
        use sequoia_openpgp::parse::Parse;
        sequoia_openpgp::Cert::from_bytes(b).unwrap()
    }
}

#[test]
fn wrap_unwrap_sign_verify_and_wrong_recipient() {
    let p = pass("hunter2hunter2");
    let alice = SecretKeys::generate("Alice Clinic", &p).unwrap();
    let bob = SecretKeys::generate("Bob Lab", &p).unwrap();
    let alice_cert = alice.certificate().unwrap();

    let key = DataKey::generate().unwrap();
    let mut b = body(alice_cert.id());
    b.key_wraps.push(alice_cert.wrap(&key).unwrap());
    assert_eq!(
        b.key_wraps[0].algorithm,
        KeyWrapAlgorithm::OpenPgpMlKem768X25519
    );
    assert!(
        !b.key_wraps[0]
            .message
            .windows(32)
            .any(|w| w == key.as_bytes()),
        "data key visible in the wrap"
    );

    let unwrapped = alice.unlock_decryption(&p).unwrap().unwrap_key(&b).unwrap();
    assert_eq!(unwrapped.as_bytes(), key.as_bytes());

    // Bob is not a recipient: the error names both sides.
    let err = bob
        .unlock_decryption(&p)
        .unwrap()
        .unwrap_key(&b)
        .unwrap_err();
    assert!(matches!(err, CryptoError::NotARecipient { .. }), "{err}");
    // Bob relabels Alice's wrap as his: the OpenPGP layer still refuses.
    let mut relabelled = b.clone();
    relabelled.key_wraps[0].recipient = bob.certificate().unwrap().id();
    let err = bob
        .unlock_decryption(&p)
        .unwrap()
        .unwrap_key(&relabelled)
        .unwrap_err();
    assert!(matches!(err, CryptoError::Unwrap(_)), "{err}");

    let manifest = alice.unlock_signing(&p).unwrap().sign_manifest(b).unwrap();
    alice_cert.verify_manifest(&manifest).unwrap();

    let mut tampered = manifest.clone();
    tampered.body.meta.ciphertext[0] ^= 1;
    let err = alice_cert.verify_manifest(&tampered).unwrap_err();
    assert!(matches!(err, CryptoError::BadSignature { .. }), "{err}");
    let err = bob
        .certificate()
        .unwrap()
        .verify_manifest(&manifest)
        .unwrap_err();
    assert!(err.to_string().contains("signed by"), "{err}");
}

#[test]
fn wrong_passphrase_is_reported() {
    let secret = SecretKeys::generate("Clinic", &pass("right-passphrase")).unwrap();
    let reloaded = SecretKeys::from_bytes(&secret.to_armored().unwrap()).unwrap();
    assert!(matches!(
        reloaded.unlock_signing(&pass("wrong-passphrase")),
        Err(CryptoError::WrongPassphrase)
    ));
    assert!(matches!(
        reloaded.unlock_decryption(&pass("wrong-passphrase")),
        Err(CryptoError::WrongPassphrase)
    ));
    assert!(reloaded.unlock_signing(&pass("right-passphrase")).is_ok());
}

#[test]
fn keystore_files_are_private_and_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let p = pass("hunter2hunter2");
    Keystore::create(&keys, "Clinic", &p).unwrap();
    for (name, mode) in [
        ("institution.pgp", 0o600),
        ("node.key", 0o600),
        ("institution.cert.asc", 0o644),
    ] {
        let m = std::fs::metadata(keys.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{name}");
    }
    let tsk = std::fs::read_to_string(keys.join("institution.pgp")).unwrap();
    assert!(tsk.contains("PRIVATE KEY BLOCK"));
    assert!(!tsk.contains("hunter2"));

    let err = Keystore::create(&keys, "Clinic", &p).err().unwrap();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    let store = Keystore::open(&keys).unwrap();
    let id1 = store.node_identity().unwrap().peer_id();
    assert_eq!(
        id1,
        Keystore::open(&keys)
            .unwrap()
            .node_identity()
            .unwrap()
            .peer_id()
    );
    assert!(store.secret_keys().unwrap().unlock_signing(&p).is_ok());

    std::fs::set_permissions(
        keys.join("institution.pgp"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = store.secret_keys().err().unwrap();
    assert!(err.to_string().contains("chmod 600"), "{err}");

    let err = Keystore::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("medmesh init"), "{err}");
}

#[test]
fn the_index_key_is_made_once_private_and_opens_only_with_the_institution_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let p = pass("hunter2hunter2");
    let store = Keystore::create(&keys, "Clinic", &p).unwrap();
    let mut decryptor = store.secret_keys().unwrap().unlock_decryption(&p).unwrap();
    let err = store.index_key(&mut decryptor, false).unwrap_err();
    assert!(
        err.to_string().contains("restore"),
        "not made for an index with records: {err}"
    );
    assert!(!keys.join("index.key").exists());
    let first = store.index_key(&mut decryptor, true).unwrap();
    let mode = std::fs::metadata(keys.join("index.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The same key the next time (it was stored, not made again).
    let again = store.index_key(&mut decryptor, false).unwrap();
    assert_eq!(first.tag("patient", "MRN-1"), again.tag("patient", "MRN-1"));
    let on_disk = std::fs::read(keys.join("index.key")).unwrap();
    assert!(
        on_disk.len() > 1000,
        "wrapped for a post-quantum key, not raw"
    );

    // Another institution's key cannot open it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Keystore::create(&other_dir.path().join("keys"), "Lab", &p).unwrap();
    let mut other_decryptor = other.secret_keys().unwrap().unlock_decryption(&p).unwrap();
    let err = store.index_key(&mut other_decryptor, true).unwrap_err();
    assert!(err.to_string().contains("index.key"), "{err}");
}
