//! The node's life on chain, on anvil and on the embedded dev chain: it registers itself
//! in `NodeRegistry` once its account is approved (warning until then), anchors its
//! audit log's head when due and only when the log grew, audits each anchor with the
//! head *before* that entry, picks up where it left after a restart, and refuses to
//! anchor a log that does not reach its last anchor.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::AnvilInstance;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::transports::http::reqwest::Url;
use medmesh_chain::devchain::{dev_signers, node_signer, DevChain};
use medmesh_chain::{Deployment, GrantCache, KeyReleaser, Relayer};
use medmesh_service::{
    AnchorSettings, ChainLifeSettings, ChainLifeView, ChainServices, NodeIdentity, NodeKeys,
    NodeServices, ServiceSettings,
};
use medmesh_store::{AuditAction, AuditEvent, Store};
use medmesh_testkit::{institution, passphrase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Anvil,
    Embedded,
}

const BACKENDS: [Backend; 2] = [Backend::Anvil, Backend::Embedded];

struct TestChain {
    backend: Backend,
    url: Url,
    chain_id: u64,
    deployment: Deployment,
    _anvil: Option<AnvilInstance>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestChain {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl TestChain {
    async fn start(backend: Backend) -> Self {
        match backend {
            Backend::Anvil => {
                let anvil =
                    medmesh_chain::anvil::spawn().expect("anvil (run `npm install` in contracts/)");
                let url = anvil.endpoint_url();
                let admin = ProviderBuilder::new()
                    .wallet(EthereumWallet::from(dev_signers().remove(0)))
                    .connect_http(url.clone())
                    .erased();
                let deployment = medmesh_chain::deploy(&admin, vec![]).await.unwrap();
                Self {
                    backend,
                    url,
                    chain_id: anvil.chain_id(),
                    deployment,
                    _anvil: Some(anvil),
                    server: None,
                }
            }
            Backend::Embedded => {
                let dev = DevChain::open(None).await.unwrap();
                let (url, server) = dev.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
                Self {
                    backend,
                    url: url.parse().unwrap(),
                    chain_id: medmesh_chain::devchain::CHAIN_ID,
                    deployment: dev.deployment(),
                    _anvil: None,
                    server: Some(server),
                }
            }
        }
    }

    fn reader(&self) -> DynProvider {
        ProviderBuilder::new()
            .connect_http(self.url.clone())
            .erased()
    }

    /// The registry's admin (the deployer) approves `account`.
    async fn approve(&self, account: alloy::primitives::Address) {
        let admin = ProviderBuilder::new()
            .wallet(EthereumWallet::from(dev_signers().remove(0)))
            .connect_http(self.url.clone())
            .erased();
        medmesh_chain::bindings::NodeRegistry::new(self.deployment.node_registry, admin)
            .approveInstitution(account)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }

    async fn anchors(&self) -> Vec<medmesh_chain::Anchor> {
        medmesh_chain::anchor::anchors(
            &self.reader(),
            self.deployment.audit_anchor,
            node_signer().address(),
        )
        .await
        .unwrap()
    }
}

fn keys() -> Arc<NodeKeys> {
    let secret = institution(0);
    Arc::new(NodeKeys {
        certificate: secret.certificate().unwrap(),
        signer: Mutex::new(secret.unlock_signing(&passphrase()).unwrap()),
        decryptor: Arc::new(Mutex::new(secret.unlock_decryption(&passphrase()).unwrap())),
    })
}

/// Services over `store` connected to `chain`, paying from the dev chain's node account
/// (funded on anvil too: the same dev keys).
fn services_on(chain: &TestChain, store: Arc<Store>) -> NodeServices {
    let keys = keys();
    let d = chain.deployment;
    let services = NodeServices::new(store.clone(), keys.clone(), ServiceSettings::default());
    let releaser = KeyReleaser::new(
        store,
        keys.certificate.clone(),
        keys.decryptor.clone(),
        Arc::new(GrantCache::new(d.consent_registry, d.from_block)),
        chain.reader(),
        d.node_registry,
    );
    let relayer = Relayer::connect(chain.url.clone(), node_signer(), d.consent_registry);
    assert!(services.enable_chain(ChainServices {
        chain_id: chain.chain_id,
        deployment: d,
        releaser: Arc::new(releaser),
        relayer: Some(Arc::new(relayer)),
    }));
    services
}

fn identity(peer: &medmesh_net::PeerId) -> NodeIdentity {
    NodeIdentity {
        peer_id: *peer,
        certificate: institution(0).certificate().unwrap().id(),
        name: "Test Hospital".into(),
    }
}

fn fresh_peer() -> medmesh_net::PeerId {
    medmesh_crypto::NodeIdentity::generate()
        .unwrap()
        .peer_id()
        .parse()
        .unwrap()
}

/// Fast paces, anchoring after 3 new entries (or an hour).
fn settings(peer: &medmesh_net::PeerId) -> ChainLifeSettings {
    ChainLifeSettings {
        identity: identity(peer),
        anchor: AnchorSettings {
            interval: Duration::from_secs(3600),
            every_entries: 3,
        },
        retry: Duration::from_millis(200),
        poll: Duration::from_millis(50),
    }
}

fn append(store: &Store, n: usize) {
    append_as(store, n, "record");
}

fn append_as(store: &Store, n: usize, what: &str) {
    for i in 0..n {
        store
            .audit(AuditEvent {
                action: AuditAction::RecordWrite,
                actor: "test".into(),
                subject: format!("{what}-{i}"),
                detail: BTreeMap::new(),
            })
            .unwrap();
    }
}

/// Waits (up to 30 s) until the view satisfies `done`.
async fn until(
    services: &NodeServices,
    what: &str,
    done: impl Fn(&ChainLifeView) -> bool,
) -> ChainLifeView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = services.chain_life().expect("started");
        if done(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {what} within 30 s: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_registers_once_approved_and_anchors_its_growing_log() {
    for backend in BACKENDS {
        let chain = TestChain::start(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        append(&store, 2);
        let services = services_on(&chain, store.clone());
        let peer = fresh_peer();
        assert!(services.start_chain_life(settings(&peer)).unwrap());
        assert!(!services.start_chain_life(settings(&peer)).unwrap(), "once");
        let account = node_signer().address();

        if chain.backend == Backend::Anvil {
            // Not approved: the node says so, naming its account, and keeps looking.
            let view = until(&services, "refused as unapproved", |v| {
                v.registration.checked && v.registration.error.is_some()
            })
            .await;
            assert!(!view.registration.approved && !view.registration.registered);
            let error = view.registration.error.unwrap();
            assert!(
                error.contains(&account.to_string()) && error.contains("approveInstitution"),
                "{error}"
            );
            assert!(
                chain.anchors().await.is_empty(),
                "no anchor before registering"
            );
            chain.approve(account).await;
        }
        // The embedded chain approved the node's account at genesis.
        let view = until(&services, "registered", |v| v.registration.registered).await;
        assert!(view.registration.approved && view.registration.error.is_none());
        assert!(view.registration.transaction.is_some());
        assert_eq!(view.registration.account, account);
        let on_chain =
            medmesh_chain::registration(&chain.reader(), chain.deployment.node_registry, account)
                .await
                .unwrap();
        let fingerprint: alloy::primitives::B256 = format!("0x{}", identity(&peer).certificate)
            .parse()
            .unwrap();
        assert!(
            on_chain.lists(&peer.to_bytes(), &fingerprint.0, "Test Hospital"),
            "{backend:?}: {on_chain:?}"
        );

        // No anchor yet: the 2 entries are anchored at once.
        let view = until(&services, "anchored", |v| v.anchoring.last.is_some()).await;
        let first = view.anchoring.last.unwrap();
        assert_eq!((first.index, first.entries), (0, 2));
        let entries = store.audit_page(0, 100).unwrap();
        assert_eq!(first.head, entries[1].hash);
        // Audited right after, naming the head before it.
        let audited = &entries[2];
        assert_eq!(audited.action, AuditAction::AuditAnchored);
        assert_eq!(audited.detail["entries"], "2");
        assert_eq!(audited.detail["head"], entries[1].hash);
        assert!(audited.detail["covers"].contains("before this entry"));
        assert_eq!(
            audited.detail["transaction"],
            first.transaction.unwrap().to_string()
        );

        // Its own audit entry does not make the next anchor due; 2 more entries do not
        // either (3 are needed, the hour has not passed).
        tokio::time::sleep(Duration::from_millis(300)).await;
        append(&store, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(chain.anchors().await.len(), 1, "{backend:?}");
        // The third does.
        append(&store, 1);
        let view = until(&services, "anchored again", |v| {
            v.anchoring.last.as_ref().is_some_and(|a| a.index == 1)
        })
        .await;
        assert_eq!(view.anchoring.last.unwrap().entries, 6);
        let anchors = chain.anchors().await;
        assert_eq!(
            anchors.iter().map(|a| a.entries).collect::<Vec<_>>(),
            [2, 6]
        );
        let report = medmesh_chain::anchor::verify_against_chain(
            store.clone(),
            &chain.reader(),
            chain.deployment.audit_anchor,
            account,
        )
        .await
        .unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.checked, 2);

        // A restarted node (the same store, the same PeerId) registers nothing and
        // anchors nothing new: the log only grew by the entry recording the last anchor.
        let again = services_on(&chain, store.clone());
        assert!(again.start_chain_life(settings(&peer)).unwrap());
        let view = until(&again, "registered after restart", |v| {
            v.registration.registered && v.anchoring.last.is_some()
        })
        .await;
        assert_eq!(view.registration.transaction, None, "already registered");
        assert_eq!(view.anchoring.last.unwrap().entries, 6);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(chain.anchors().await.len(), 2, "{backend:?}");
        assert_eq!(again.chain_life().unwrap().anchoring.error, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_that_does_not_reach_the_last_anchor_is_not_anchored() {
    let chain = TestChain::start(Backend::Embedded).await;
    let peer = fresh_peer();
    // One node anchors its log...
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    append(&store, 4);
    let services = services_on(&chain, store);
    services.start_chain_life(settings(&peer)).unwrap();
    until(&services, "anchored", |v| v.anchoring.last.is_some()).await;

    // ...then the account runs on another log (replaced, or rewritten): that log does
    // not reach the anchor, so the node stops anchoring and says why.
    let other = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(other.path()).unwrap());
    append_as(&store, 9, "elsewhere");
    let replaced = services_on(&chain, store);
    replaced.start_chain_life(settings(&peer)).unwrap();
    let view = until(&replaced, "stopped", |v| v.anchoring.error.is_some()).await;
    let error = view.anchoring.error.unwrap();
    assert!(
        error.contains("does not reach") && error.contains("anchor #0"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chain.anchors().await.len(), 1);
    // Registration is unaffected.
    assert!(replaced.chain_life().unwrap().registration.registered);
}

#[tokio::test]
async fn without_an_account_nothing_starts() {
    let chain = TestChain::start(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let keys = keys();
    let services = NodeServices::new(store.clone(), keys.clone(), ServiceSettings::default());
    let peer = fresh_peer();
    assert!(matches!(
        services.start_chain_life(settings(&peer)),
        Err(medmesh_service::ServiceError::NoChain)
    ));
    let d = chain.deployment;
    let releaser = KeyReleaser::new(
        store,
        keys.certificate.clone(),
        keys.decryptor.clone(),
        Arc::new(GrantCache::new(d.consent_registry, d.from_block)),
        chain.reader(),
        d.node_registry,
    );
    services.enable_chain(ChainServices {
        chain_id: chain.chain_id,
        deployment: d,
        releaser: Arc::new(releaser),
        relayer: None,
    });
    assert!(matches!(
        services.start_chain_life(settings(&peer)),
        Err(medmesh_service::ServiceError::NoRelayer)
    ));
    assert!(services.chain_life().is_none());
}
