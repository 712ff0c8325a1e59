//! A real medmesh node for tests: a fresh store in a temp dir, test institution keys,
//! and the HTTP API on a free 127.0.0.1 port, with operator tokens of each scope.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use medmesh_api::{ApiConfig, AppState};
use medmesh_service::{NodeKeys, NodeServices, ServiceSettings};
use medmesh_store::{Store, TokenScope};
use tokio::sync::oneshot;

use crate::{institution, passphrase};

/// A running node; stops when dropped.
pub struct TestNode {
    /// The node's data dir.
    pub dir: tempfile::TempDir,
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The API state (the node's services, and the API's settings).
    pub state: AppState,
    /// Bearer secrets of operator tokens with each scope.
    pub read_token: String,
    /// `write` scope.
    pub write_token: String,
    /// `admin` scope.
    pub admin_token: String,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestNode {
    /// Starts a node with the default API settings (SIWE domain = its address).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a node after `adjust` changed its API settings.
    pub async fn start_with(adjust: impl FnOnce(&mut ApiConfig)) -> Self {
        Self::start_in(&std::env::temp_dir(), adjust).await
    }

    /// Starts a node whose data dir is a fresh directory under `base` (e.g. a tmpfs
    /// for benchmarks).
    pub async fn start_in(base: &std::path::Path, adjust: impl FnOnce(&mut ApiConfig)) -> Self {
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let store = Arc::new(Store::open(&dir.path().join("store")).expect("store"));
        store.unlock_index(crate::index_key());
        let secret = institution(0);
        let keys = NodeKeys {
            certificate: secret.certificate().expect("certificate"),
            signer: Mutex::new(secret.unlock_signing(&passphrase()).expect("unlock")),
            decryptor: Arc::new(Mutex::new(
                secret.unlock_decryption(&passphrase()).expect("unlock"),
            )),
        };
        let token = |scope| store.create_token("test", scope, "test").expect("token").1;
        let (read_token, write_token, admin_token) = (
            token(TokenScope::Read),
            token(TokenScope::Write),
            token(TokenScope::Admin),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut config = ApiConfig {
            siwe_domain: addr.to_string(),
            ..ApiConfig::default()
        };
        adjust(&mut config);
        let services = NodeServices::new(store, Arc::new(keys), ServiceSettings::default());
        let state = AppState::new(Arc::new(services), config);
        let (tx, rx) = oneshot::channel();
        let served = state.clone();
        tokio::spawn(async move {
            let _ = medmesh_api::serve(listener, served, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            dir,
            addr,
            state,
            read_token,
            write_token,
            admin_token,
            shutdown: Some(tx),
        }
    }

    /// Connects the node to `chain`: key release, grants, and relaying from the
    /// chain's relayer account.
    #[cfg(feature = "chain")]
    pub fn connect_chain(&self, chain: &crate::chain::Chain) {
        let owner = institution(0);
        let releaser = medmesh_chain::KeyReleaser::new(
            self.state.store().clone(),
            owner.certificate().expect("certificate"),
            Arc::new(Mutex::new(
                owner.unlock_decryption(&passphrase()).expect("unlock"),
            )),
            Arc::new(chain.cache()),
            chain.provider(&chain.admin),
            chain.deployment.node_registry,
        );
        let relayer = medmesh_chain::Relayer::new(
            medmesh_chain::relaying_provider(chain.endpoint.clone(), chain.relayer.clone()),
            chain.deployment.consent_registry,
        );
        let connected = self
            .state
            .services()
            .enable_chain(medmesh_service::ChainServices {
                chain_id: chain.chain_id,
                deployment: chain.deployment,
                releaser: Arc::new(releaser),
                relayer: Some(Arc::new(relayer)),
            });
        assert!(connected, "the node was already connected to a chain");
    }

    /// Starts the peer-to-peer network (TCP on a free 127.0.0.1 port) over the node's
    /// store and connects it to the node's services; returns its handle.
    #[cfg(feature = "net")]
    pub async fn connect_network(&self) -> medmesh_net::Network {
        let net = medmesh_net::Network::start(medmesh_net::NetworkOptions {
            config: medmesh_net::NetConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
                block_timeout_secs: 20,
                find_timeout_ms: 500,
                ..medmesh_net::NetConfig::default()
            },
            identity_seed: crate::net::fresh_seed(),
            store: self.state.store().clone(),
            policy: Arc::new(medmesh_net::OpenPolicy),
            institution: None,
            certificate: self
                .state
                .services()
                .keys()
                .ok()
                .map(|k| k.certificate.clone()),
            agent: "medmesh-test-node".into(),
        })
        .await
        .expect("network starts");
        assert!(
            self.state.services().enable_network(net.clone()),
            "the node already had a network"
        );
        net
    }

    /// Uploads `bytes` with the write token; returns the new record's id.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let created: serde_json::Value = reqwest::Client::new()
            .post(self.url("/v1/records"))
            .bearer_auth(&self.write_token)
            .body(bytes)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("upload answer");
        created["id"].as_str().expect("a record id").to_string()
    }

    /// Links record `id` to the wallet `patient` with the write token; returns the raw
    /// answer (`scope`, `patient_scope` on success).
    pub async fn link(&self, id: &str, patient: &str) -> reqwest::Response {
        reqwest::Client::new()
            .put(self.url(&format!("/v1/records/{id}/consent-link")))
            .bearer_auth(&self.write_token)
            .json(&serde_json::json!({ "patient": patient }))
            .send()
            .await
            .expect("consent link")
    }

    /// Asks for record `id`'s key as `grantee` for DUO `purpose`, to be wrapped for the
    /// armored `certificate`: a challenge, then the signed key request, both with the
    /// read token. Returns the raw answer.
    #[cfg(feature = "chain")]
    pub async fn request_key(
        &self,
        grantee: &alloy::signers::local::PrivateKeySigner,
        id: &str,
        purpose: u32,
        certificate: &str,
    ) -> reqwest::Response {
        use alloy::signers::Signer;
        let http = reqwest::Client::new();
        let challenge: serde_json::Value = http
            .post(self.url("/v1/access/challenge"))
            .bearer_auth(&self.read_token)
            .send()
            .await
            .expect("challenge")
            .json()
            .await
            .expect("challenge answer");
        let challenge = challenge["challenge"]
            .as_str()
            .expect("a challenge")
            .to_string();
        let record: medmesh_core::RecordId = id.parse().expect("a record id");
        let message =
            medmesh_chain::KeyRequest::message(&record, grantee.address(), purpose, &challenge);
        let signature = grantee
            .sign_message(message.as_bytes())
            .await
            .expect("signature");
        http.post(self.url(&format!("/v1/records/{id}/key")))
            .bearer_auth(&self.read_token)
            .json(&serde_json::json!({
                "grantee": grantee.address().to_string(),
                "purpose": purpose,
                "certificate": certificate,
                "challenge": challenge,
                "signature": format!("0x{}", hex::encode(signature.as_bytes())),
            }))
            .send()
            .await
            .expect("key request")
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
