//! `DatasetRegistry` with the generated Groth16 verifiers, on anvil and on the embedded
//! chain: a listing is made only with a proof of its statement that verifies, by a
//! registered institution, and is withdrawn only by it.

use alloy::primitives::{Bytes, B256, U256};
use alloy::providers::DynProvider;
use medmesh_chain::bindings::DatasetRegistry::{self, DatasetRegistryErrors, Submission};
use medmesh_testkit::chain::{Backend, Chain, Mined, BACKENDS};
use medmesh_testkit::datasets::proven_table;
use medmesh_zk::Statement;

/// The proven table's statement and proof, as the contracts take them.
fn proven() -> (Statement, [U256; 8]) {
    let proven = proven_table();
    (
        proven.statement,
        medmesh_chain::datasets::proof_words(&proven.proof),
    )
}

fn submission(statement: &Statement) -> Submission {
    medmesh_chain::datasets::submission(
        statement,
        b"\x01\x55\x12\x20record",
        b"\x01\x55\x12\x20metadata",
        &[42],
    )
}

fn datasets(
    chain: &Chain,
    who: &alloy::signers::local::PrivateKeySigner,
) -> DatasetRegistry::DatasetRegistryInstance<DynProvider> {
    DatasetRegistry::new(
        chain
            .deployment
            .dataset_registry
            .expect("a dataset registry"),
        chain.provider(who),
    )
}

fn revert<T: std::fmt::Debug>(result: Result<T, alloy::contract::Error>) -> DatasetRegistryErrors {
    let err = result.expect_err("the call must revert");
    err.as_decoded_interface_error::<DatasetRegistryErrors>()
        .unwrap_or_else(|| panic!("not a DatasetRegistry error: {err}"))
}

async fn lists_only_proven_statements(backend: Backend) {
    let chain = Chain::start_on(backend).await;
    let (statement, proof) = &proven();
    let registry = datasets(&chain, &chain.hospital);
    let good = submission(statement);

    // Every lie about the statement, and a tampered proof, revert with InvalidProof.
    let lies = [
        Submission {
            k: 6,
            ..good.clone()
        },
        Submission {
            rows: 25,
            ..good.clone()
        },
        Submission {
            suppressed: 1,
            ..good.clone()
        },
        Submission {
            limit: 3,
            ..good.clone()
        },
        Submission {
            schemaHash: B256::repeat_byte(9),
            ..good.clone()
        },
        Submission {
            commitment: B256::with_last_byte(1),
            ..good.clone()
        },
    ];
    for lie in lies {
        let e = revert(registry.list(lie.clone(), *proof).call().await);
        assert!(
            matches!(e, DatasetRegistryErrors::InvalidProof(_)),
            "{lie:?}: {e:?}"
        );
    }
    let mut tampered = *proof;
    tampered[6] ^= U256::from(1u8);
    let e = revert(registry.list(good.clone(), tampered).call().await);
    assert!(matches!(e, DatasetRegistryErrors::InvalidProof(_)), "{e:?}");
    // Malformed statements are refused before the proof is looked at.
    let malformed = [
        Submission {
            size: 128,
            ..good.clone()
        },
        Submission {
            k: 1,
            ..good.clone()
        },
        Submission {
            rows: 65,
            ..good.clone()
        },
        Submission {
            suppressed: 3,
            ..good.clone()
        },
        Submission {
            duo: vec![],
            ..good.clone()
        },
        Submission {
            recordCid: Bytes::new(),
            ..good.clone()
        },
        Submission {
            commitment: B256::repeat_byte(0xff),
            ..good.clone()
        },
    ];
    for bad in malformed {
        let e = revert(registry.list(bad.clone(), *proof).call().await);
        assert!(
            matches!(
                e,
                DatasetRegistryErrors::UnknownSize(_) | DatasetRegistryErrors::InvalidListing(_)
            ),
            "{bad:?}: {e:?}"
        );
    }
    // Another registered institution cannot list the hospital's proof as its own.
    chain
        .approve_and_register(&chain.guardian, b"\x00\x24other", 8, "Other Hospital")
        .await;
    let e = revert(
        datasets(&chain, &chain.guardian)
            .list(good.clone(), *proof)
            .call()
            .await,
    );
    assert!(matches!(e, DatasetRegistryErrors::InvalidProof(_)), "{e:?}");
    // Only a registered institution lists.
    let e = revert(
        datasets(&chain, &chain.stranger)
            .list(good.clone(), *proof)
            .call()
            .await,
    );
    assert!(
        matches!(e, DatasetRegistryErrors::NotRegistered(_)),
        "{e:?}"
    );

    // The true statement lists, once.
    let receipt = registry.list(good.clone(), *proof).mined().await;
    assert!(receipt.status());
    let listed = receipt
        .decoded_log::<DatasetRegistry::DatasetListed>()
        .expect("a DatasetListed event");
    let id = listed.id;
    assert_eq!(
        id,
        registry
            .datasetId(chain.hospital.address(), good.commitment)
            .call()
            .await
            .unwrap()
    );
    assert_eq!(listed.institution, chain.hospital.address());
    assert_eq!(listed.listing.recordCid, good.recordCid);
    assert_eq!(listed.listing.duo, vec![42]);
    assert!(registry.isListed(id).call().await.unwrap());
    let stored = registry.listing(id).call().await.unwrap();
    assert_eq!(
        (stored.k, stored.rows, stored.suppressed, stored.size),
        (5, 24, 2, 64)
    );
    assert_eq!(
        registry.datasetCount().call().await.unwrap(),
        U256::from(1u8)
    );
    let e = revert(registry.list(good.clone(), *proof).call().await);
    assert!(
        matches!(e, DatasetRegistryErrors::AlreadyListed(_)),
        "{e:?}"
    );

    // Only its institution withdraws it, once.
    let e = revert(datasets(&chain, &chain.stranger).withdraw(id).call().await);
    assert!(matches!(e, DatasetRegistryErrors::NotListedBy(_)), "{e:?}");
    let e = revert(registry.withdraw(B256::repeat_byte(3)).call().await);
    assert!(
        matches!(e, DatasetRegistryErrors::UnknownDataset(_)),
        "{e:?}"
    );
    registry.withdraw(id).mined().await;
    assert!(!registry.isListed(id).call().await.unwrap());
    let e = revert(registry.withdraw(id).call().await);
    assert!(
        matches!(e, DatasetRegistryErrors::AlreadyWithdrawn(_)),
        "{e:?}"
    );
}

#[tokio::test]
async fn lists_only_proven_statements_on_both_backends() {
    for backend in BACKENDS {
        lists_only_proven_statements(backend).await;
    }
}
