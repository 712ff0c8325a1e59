//! The embedded dev chain's own promises: its state and history survive a restart, a
//! grant cache catches up on it like on any chain, a start that crashed during genesis
//! does not break the next ones, and unsupported calls say so.

use alloy::primitives::B256;
use alloy::providers::{Provider, ProviderBuilder};
use medmesh_chain::bindings::ConsentRegistry;
use medmesh_chain::devchain::{dev_signers, DevChain};
use medmesh_chain::{AccessQuery, GrantCache};
use medmesh_testkit::chain::Mined;

#[tokio::test]
async fn state_and_history_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let keys = dev_signers();
    let (patient, researcher) = (keys[2].clone(), keys[3].clone());

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let deployment = chain.deployment();
    let (url, task) = chain.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let provider = ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(patient.clone()))
        .connect_http(url.parse().unwrap());
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    ConsentRegistry::new(deployment.consent_registry, &provider)
        .grant(
            patient.address(),
            researcher.address(),
            0,
            B256::repeat_byte(1),
            42,
            expiry,
        )
        .mined()
        .await;
    let height = provider.get_block_number().await.unwrap();
    task.abort();
    drop(chain);

    // Restart from the file: same deployment, same height, the grant is still there.
    let chain = DevChain::open(Some(&path)).await.unwrap();
    assert_eq!(chain.deployment(), deployment);
    let (url, _task) = chain.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let provider = ProviderBuilder::new().connect_http(url.parse().unwrap());
    assert_eq!(provider.get_block_number().await.unwrap(), height);
    let allowed = ConsentRegistry::new(deployment.consent_registry, &provider)
        .isAllowed(
            patient.address(),
            researcher.address(),
            0,
            B256::repeat_byte(1),
            42,
        )
        .call()
        .await
        .unwrap();
    assert!(allowed);
    let cache = GrantCache::new(deployment.consent_registry, deployment.from_block);
    cache.sync(&provider).await.unwrap();
    let query = AccessQuery {
        patient: patient.address(),
        grantee: researcher.address(),
        kind: 0,
        scope: B256::repeat_byte(1),
        purpose: 42,
    };
    assert!(
        cache.check(&query, expiry - 1).is_ok(),
        "history replays into a fresh cache"
    );

    let err = provider
        .raw_request::<_, serde_json::Value>("debug_traceTransaction".into(), ())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");

    std::fs::write(&path, b"{broken").unwrap();
    let err = DevChain::open(Some(&path)).await.err().unwrap();
    assert!(
        err.to_string().contains("unreadable dev chain state"),
        "{err}"
    );
}

#[tokio::test]
async fn a_state_left_by_a_crash_during_genesis_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    drop(DevChain::open(Some(&path)).await.unwrap());
    // What a first start that crashed between the deploy transactions and recording
    // the deployment left behind: the state, without its deployment.
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["deployment"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let deployment = chain.deployment();
    let (url, task) = chain.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let provider = ProviderBuilder::new().connect_http(url.parse().unwrap());
    for address in [
        deployment.node_registry,
        deployment.consent_registry,
        deployment.audit_anchor,
    ] {
        let code = provider.get_code_at(address).await.unwrap();
        assert!(!code.is_empty(), "no contract at {address}");
    }
    task.abort();
    drop(chain);

    // The fresh genesis is what later starts find.
    let chain = DevChain::open(Some(&path)).await.unwrap();
    assert_eq!(chain.deployment(), deployment);
}
