//! A fresh anvil chain with the contracts deployed, an approved and registered
//! hospital, and named dev accounts.

use alloy::network::EthereumWallet;
use alloy::node_bindings::AnvilInstance;
use alloy::primitives::B256;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use medmesh_chain::bindings::{ConsentRegistry, NodeRegistry};
use medmesh_chain::{deploy, AccessQuery, Deployment, GrantCache};

/// `ScopeKind.Record`.
pub const RECORD: u8 = 0;

/// A running anvil with a deployment and named dev accounts.
pub struct Chain {
    /// anvil.
    pub anvil: AnvilInstance,
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
        let anvil = medmesh_chain::anvil::spawn().expect("anvil (run `npm ci` in contracts/)");
        let key = |i: usize| PrivateKeySigner::from(anvil.keys()[i].clone());
        let (admin, hospital, patient, researcher, relayer, guardian, stranger) =
            (key(0), key(1), key(2), key(3), key(4), key(5), key(6));
        let provider = provider_for(&anvil, &admin);
        let deployment = deploy(&provider, vec![]).await.unwrap();
        let chain = Self {
            anvil,
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
        let registry = chain.registry(&chain.admin);
        registry
            .approveInstitution(chain.hospital.address())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        chain
            .registry(&chain.hospital)
            .registerNode(
                b"\x00\x24peer".to_vec().into(),
                B256::repeat_byte(7),
                "Test Hospital".into(),
            )
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        chain
    }

    /// A provider sending as `who`.
    pub fn provider(&self, who: &PrivateKeySigner) -> DynProvider {
        provider_for(&self.anvil, who)
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

/// A provider on `anvil` sending as `who`.
pub fn provider_for(anvil: &AnvilInstance, who: &PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(who.clone()))
        .connect_http(anvil.endpoint_url())
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
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
}

/// The patient grants the researcher `scope` (a record scope) for `purpose`.
pub async fn grant_scope(chain: &Chain, scope: B256, purpose: u32, expiry: u64) {
    grant(chain, &chain.patient, scope, purpose, expiry).await;
}
