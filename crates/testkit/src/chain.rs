//! A fresh chain with the contracts deployed, an approved and registered hospital, and
//! named dev accounts, on either backend: anvil (a separate EVM process, from npm) or
//! the node's embedded dev chain (revm in-process). Tests run their scenario on both.

use alloy::contract::{CallBuilder, CallDecoder};
use alloy::network::EthereumWallet;
use alloy::node_bindings::AnvilInstance;
use alloy::primitives::B256;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest::Url;
use medmesh_chain::bindings::{ConsentRegistry, NodeRegistry};
use medmesh_chain::{deploy, AccessQuery, Deployment, GrantCache};

/// `ScopeKind.Record`.
pub const RECORD: u8 = 0;

/// Where the contracts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// anvil from the pinned npm package.
    Anvil,
    /// medmesh's embedded dev chain (revm).
    Embedded,
}

/// Both backends, for tests that must pass on each.
pub const BACKENDS: [Backend; 2] = [Backend::Anvil, Backend::Embedded];

enum Running {
    // Held for its Drop, which stops the anvil process.
    #[allow(dead_code)]
    Anvil(AnvilInstance),
    Embedded(tokio::task::JoinHandle<()>),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Embedded(task) = self {
            task.abort();
        }
    }
}

/// A running chain with a deployment and named dev accounts.
pub struct Chain {
    _running: Running,
    /// Which backend runs it.
    pub backend: Backend,
    /// JSON-RPC URL.
    pub endpoint: Url,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// deployment.
    pub deployment: Deployment,
    /// admin.
    pub admin: PrivateKeySigner,
    /// hospital.
    pub hospital: PrivateKeySigner,
    /// patient.
    pub patient: PrivateKeySigner,
    /// researcher.
    pub researcher: PrivateKeySigner,
    /// relayer.
    pub relayer: PrivateKeySigner,
    /// guardian.
    pub guardian: PrivateKeySigner,
    /// stranger.
    pub stranger: PrivateKeySigner,
}

impl Chain {
    /// Starts anvil, deploys, approves and registers the hospital.
    pub async fn start() -> Self {
        Self::start_on(Backend::Anvil).await
    }

    /// Starts `backend` with the contracts deployed; approves and registers the hospital.
    pub async fn start_on(backend: Backend) -> Self {
        let keys = medmesh_chain::devchain::dev_signers();
        let key = |i: usize| keys[i].clone();
        let (admin, hospital, patient, researcher, relayer, guardian, stranger) =
            (key(0), key(1), key(2), key(3), key(4), key(5), key(6));
        let (running, endpoint, chain_id, deployment) = match backend {
            Backend::Anvil => {
                let anvil =
                    medmesh_chain::anvil::spawn().expect("anvil (run `npm install` in contracts/)");
                let endpoint = anvil.endpoint_url();
                let chain_id = anvil.chain_id();
                let deployment = deploy(&provider_at(&endpoint, &admin), vec![])
                    .await
                    .unwrap();
                (Running::Anvil(anvil), endpoint, chain_id, deployment)
            }
            Backend::Embedded => {
                let dev = medmesh_chain::devchain::DevChain::open(None).await.unwrap();
                let (url, task) = dev.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
                let deployment = dev.deployment();
                (
                    Running::Embedded(task),
                    url.parse().unwrap(),
                    medmesh_chain::devchain::CHAIN_ID,
                    deployment,
                )
            }
        };
        let chain = Self {
            _running: running,
            backend,
            endpoint,
            chain_id,
            deployment,
            admin,
            hospital,
            patient,
            researcher,
            relayer,
            guardian,
            stranger,
        };
        // Governance approves the hospital, which registers its node.
        chain
            .approve_and_register(&chain.hospital, b"\x00\x24peer", 7, "Test Hospital")
            .await;
        chain
    }

    /// Governance approves `who` as an institution, which registers a node (`peer_id`,
    /// a certificate fingerprint of `fingerprint_byte` repeated, `name`).
    pub async fn approve_and_register(
        &self,
        who: &PrivateKeySigner,
        peer_id: &[u8],
        fingerprint_byte: u8,
        name: &str,
    ) {
        self.registry(&self.admin)
            .approveInstitution(who.address())
            .mined()
            .await;
        self.registry(who)
            .registerNode(
                peer_id.to_vec().into(),
                B256::repeat_byte(fingerprint_byte),
                name.into(),
            )
            .mined()
            .await;
    }

    /// A provider sending as `who`.
    pub fn provider(&self, who: &PrivateKeySigner) -> DynProvider {
        provider_at(&self.endpoint, who)
    }

    /// `NodeRegistry` as `who`.
    pub fn registry(
        &self,
        who: &PrivateKeySigner,
    ) -> NodeRegistry::NodeRegistryInstance<DynProvider> {
        NodeRegistry::new(self.deployment.node_registry, self.provider(who))
    }

    /// `ConsentRegistry` as `who`.
    pub fn consent(
        &self,
        who: &PrivateKeySigner,
    ) -> ConsentRegistry::ConsentRegistryInstance<DynProvider> {
        ConsentRegistry::new(self.deployment.consent_registry, self.provider(who))
    }

    /// An empty grant cache for this deployment.
    pub fn cache(&self) -> GrantCache {
        GrantCache::new(self.deployment.consent_registry, self.deployment.from_block)
    }

    /// The latest block's timestamp.
    pub async fn now(&self) -> u64 {
        let p = self.provider(&self.admin);
        let block = p
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap();
        block.header.timestamp
    }

    /// The patient → researcher record query for `scope` and `purpose`.
    pub fn query(&self, scope: B256, purpose: u32) -> AccessQuery {
        AccessQuery {
            patient: self.patient.address(),
            grantee: self.researcher.address(),
            kind: RECORD,
            scope,
            purpose,
        }
    }
}

/// A provider on `endpoint` sending as `who`.
pub fn provider_at(endpoint: &Url, who: &PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(who.clone()))
        .connect_http(endpoint.clone())
        .erased()
}

/// The contract's custom error from a failed call.
/// The `ConsentRegistry` custom error of a call that must revert.
pub fn revert<T: std::fmt::Debug>(
    result: Result<T, alloy::contract::Error>,
) -> ConsentRegistry::ConsentRegistryErrors {
    let err = result.expect_err("the call must revert");
    err.as_decoded_interface_error::<ConsentRegistry::ConsentRegistryErrors>()
        .unwrap_or_else(|| panic!("not a ConsentRegistry error: {err}"))
}

/// `who` grants the researcher `scope` for `purpose` on the patient's behalf.
pub async fn grant(chain: &Chain, who: &PrivateKeySigner, scope: B256, purpose: u32, expiry: u64) {
    chain
        .consent(who)
        .grant(
            chain.patient.address(),
            chain.researcher.address(),
            RECORD,
            scope,
            purpose,
            expiry,
        )
        .mined()
        .await;
}

/// The patient grants the researcher `scope` (a record scope) for `purpose`.
pub async fn grant_scope(chain: &Chain, scope: B256, purpose: u32, expiry: u64) {
    grant(chain, &chain.patient, scope, purpose, expiry).await;
}

impl Chain {
    /// `who` publishes `certificate` as the one it receives data keys with.
    pub async fn publish_key(
        &self,
        who: &PrivateKeySigner,
        certificate: &medmesh_crypto::Certificate,
    ) {
        let fingerprint: B256 = format!("0x{}", certificate.id())
            .parse()
            .expect("hex fingerprint");
        self.registry(who).publishKey(fingerprint).mined().await;
    }
}

/// Sends a contract call and waits for its receipt, failing the test on any error.
#[allow(async_fn_in_trait)]
pub trait Mined {
    /// The receipt of the mined transaction.
    async fn mined(self) -> TransactionReceipt;
}

impl<P: Provider, D: CallDecoder> Mined for CallBuilder<P, D> {
    async fn mined(self) -> TransactionReceipt {
        self.send().await.unwrap().get_receipt().await.unwrap()
    }
}

/// What a grantee does with a released key: unwraps it with the secret keys of test
/// institution `grantee` and decrypts every chunk of `record`. Returns the plaintext.
pub fn open_released(
    store: &medmesh_store::Store,
    record: &medmesh_core::RecordId,
    wrap_message: Vec<u8>,
    grantee: usize,
) -> Vec<u8> {
    open_released_with(
        |cid| store.blocks().get(cid).expect("block"),
        record,
        wrap_message,
        grantee,
    )
}

/// [`open_released`] reading blocks through `block` (e.g. from another process's
/// store directory).
pub fn open_released_with(
    block: impl Fn(&medmesh_core::Cid) -> Vec<u8>,
    record: &medmesh_core::RecordId,
    wrap_message: Vec<u8>,
    grantee: usize,
) -> Vec<u8> {
    let keys = crate::institution(grantee);
    let mut body = medmesh_core::Manifest::decode(&block(record.cid()))
        .expect("manifest")
        .body;
    body.key_wraps = vec![medmesh_core::KeyWrap {
        recipient: keys.certificate().expect("certificate").id(),
        algorithm: medmesh_core::KeyWrapAlgorithm::OpenPgpMlKem768X25519,
        message: wrap_message,
    }];
    let key = keys
        .unlock_decryption(&crate::passphrase())
        .expect("unlock")
        .unwrap_key(&body)
        .expect("the released key unwraps with the grantee's secret key");
    let cipher = medmesh_crypto::RecordCipher::new(&key, &body.envelope).expect("cipher");
    let mut plaintext = Vec::new();
    let last = body.chunks.len() - 1;
    for (i, cid) in body.chunks.iter().enumerate() {
        let mut chunk = block(cid);
        plaintext.extend_from_slice(
            cipher
                .open_chunk(i as u64, i == last, &mut chunk)
                .expect("chunk opens"),
        );
    }
    plaintext
}
