//! The node's link to the consent contracts: `medmesh chain deploy`, and the grant cache
//! and key releaser behind the service layer's key release.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alloy::network::EthereumWallet;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use medmesh_chain::devchain::DevChain;
use medmesh_chain::{Deployment, GrantCache, KeyReleaser, Relayer};
use medmesh_crypto::{Certificate, UnlockedDecryptor};
use medmesh_service::ChainServices;
use medmesh_store::Store;

/// `medmesh chain …`.
#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Deploy NodeRegistry, ConsentRegistry and AuditAnchor; write the deployment file.
    Deploy {
        /// JSON-RPC URL of the chain.
        #[arg(long)]
        chain_rpc: String,
        /// File holding the deploying account's private key (hex); it becomes the
        /// registry's first admin.
        #[arg(long)]
        key_file: PathBuf,
        /// Where to write the deployment (addresses and start block).
        #[arg(short, long, default_value = "deployment.json")]
        output: PathBuf,
    },
}

pub fn run(cmd: ChainCommand) -> Result<()> {
    let ChainCommand::Deploy {
        chain_rpc,
        key_file,
        output,
    } = cmd;
    if output.exists() {
        bail!("{} exists; choose another --output", output.display());
    }
    let signer = read_account(&key_file)?;
    let url = chain_rpc
        .parse()
        .with_context(|| format!("`{chain_rpc}` is not a URL"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deployment = runtime
        .block_on(async {
            let provider = ProviderBuilder::new()
                .wallet(EthereumWallet::from(signer))
                .connect_http(url)
                .erased();
            medmesh_chain::deploy(&provider, vec![]).await
        })
        .with_context(|| format!("deploying the contracts to {chain_rpc}"))?;
    std::fs::write(&output, serde_json::to_vec_pretty(&deployment)?)
        .with_context(|| format!("writing {}", output.display()))?;
    println!("NodeRegistry     {}", deployment.node_registry);
    println!("ConsentRegistry  {}", deployment.consent_registry);
    println!("AuditAnchor      {}", deployment.audit_anchor);
    println!("wrote {}", output.display());
    Ok(())
}

/// Which chain the node reads consent from.
pub enum Source {
    /// No chain: consent links work, key release answers 503.
    None,
    /// Any EVM chain over JSON-RPC, with the contracts deployed as the file says.
    External {
        /// JSON-RPC URL.
        rpc: String,
        /// The deployment file.
        deployment: PathBuf,
        /// The node's account (hex private key file), to relay signed grants.
        key_file: Option<PathBuf>,
    },
    /// The embedded dev chain, persisted in the data dir and served on `listen`.
    Embedded {
        /// Where its JSON-RPC listens.
        listen: std::net::SocketAddr,
    },
}

/// A configured chain the node reads consent from.
pub struct ChainLink {
    provider: DynProvider,
    deployment: Deployment,
    snapshot: PathBuf,
    /// The node's account on this chain, which pays for relayed grants.
    account: Option<PrivateKeySigner>,
    chain_id: u64,
    url: alloy::transports::http::reqwest::Url,
    // Keeps the embedded chain's JSON-RPC server alive as long as the node.
    _embedded: Option<tokio::task::JoinHandle<()>>,
}

/// An account key from a file holding it as hex; the file must be private (0600).
fn read_account(path: &Path) -> Result<PrivateKeySigner> {
    medmesh_crypto::keystore::check_private(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} does not hold a hex private key", path.display()))
}

/// Connects to the configured chain (starting the embedded one if so configured).
pub async fn open(source: Source, data_dir: &Path) -> Result<Option<ChainLink>> {
    let dir = data_dir.join("chain");
    // Private like the rest of the data dir (the dev chain's state names who consented).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let (rpc, deployment, embedded, account) = match source {
        Source::None => return Ok(None),
        Source::External {
            rpc,
            deployment,
            key_file,
        } => {
            let account = key_file.as_deref().map(read_account).transpose()?;
            let text = std::fs::read(&deployment)
                .with_context(|| format!("reading {}", deployment.display()))?;
            let parsed: Deployment = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is not a deployment file (write one with `medmesh chain deploy`)",
                    deployment.display()
                )
            })?;
            (rpc, parsed, None, account)
        }
        Source::Embedded { listen } => {
            let dev = DevChain::open(Some(&dir.join("devchain.json")))
                .await
                .context("starting the embedded dev chain")?;
            let (url, task) = dev.serve(listen).await.with_context(|| {
                format!("the embedded dev chain cannot listen on {listen}; pass --dev-chain-listen")
            })?;
            println!(
                "  dev chain:    {url} (embedded, chain id {}, contracts at genesis)",
                medmesh_chain::devchain::CHAIN_ID
            );
            // The last dev account relays on the dev chain.
            let account = medmesh_chain::devchain::dev_signers().pop();
            (url, dev.deployment(), Some(task), account)
        }
    };
    let url: alloy::transports::http::reqwest::Url = rpc
        .parse()
        .with_context(|| format!("`{rpc}` is not a URL"))?;
    let provider = ProviderBuilder::new().connect_http(url.clone()).erased();
    let chain_id = provider
        .get_chain_id()
        .await
        .with_context(|| format!("cannot reach the chain at {rpc}"))?;
    Ok(Some(ChainLink {
        provider,
        snapshot: dir.join(format!("grants-{}.json", deployment.consent_registry)),
        deployment,
        account,
        chain_id,
        url,
        _embedded: embedded,
    }))
}

impl ChainLink {
    /// Catches the grant cache up (from its snapshot) and builds key release and
    /// relaying for the API.
    pub async fn services(
        self,
        store: Arc<Store>,
        certificate: Certificate,
        decryptor: Arc<Mutex<UnlockedDecryptor>>,
    ) -> Result<ChainServices> {
        let cache = GrantCache::with_snapshot(
            self.deployment.consent_registry,
            self.deployment.from_block,
            &self.snapshot,
        )?;
        let block = cache
            .sync(&self.provider)
            .await
            .context("cannot reach the chain to catch up on consent events")?
            .latest;
        println!(
            "  chain:        consent synced to block {block} (ConsentRegistry {})",
            self.deployment.consent_registry
        );
        let relayer = self.account.map(|account| {
            println!("  relaying as:  {}", account.address());
            Arc::new(Relayer::connect(
                self.url.clone(),
                account,
                self.deployment.consent_registry,
            ))
        });
        let releaser = KeyReleaser::new(
            store,
            certificate,
            decryptor,
            Arc::new(cache),
            self.provider,
            self.deployment.node_registry,
        );
        Ok(ChainServices {
            chain_id: self.chain_id,
            deployment: self.deployment,
            releaser: Arc::new(releaser),
            relayer,
        })
    }
}

impl ChainLink {
    /// Whether this link is to the embedded dev chain (where nobody is registered unless
    /// a test or a developer does it).
    pub fn is_embedded(&self) -> bool {
        self._embedded.is_some()
    }

    /// The address of the node's account (`--chain-key-file`), which peers check
    /// against `NodeRegistry` when this node asks them to hold replicas.
    pub fn account_address(&self) -> Option<String> {
        self.account.as_ref().map(|a| a.address().to_string())
    }

    /// The peer policy "nodes of registered institutions" on this chain.
    pub fn registered_institutions(&self) -> RegisteredInstitutions {
        RegisteredInstitutions {
            provider: self.provider.clone(),
            registry: self.deployment.node_registry,
        }
    }
}

/// Admits a peer that names an institution whose node `NodeRegistry` lists with that
/// very PeerId (Noise has proven the PeerId, the registry binds it to the institution).
pub struct RegisteredInstitutions {
    provider: DynProvider,
    registry: alloy::primitives::Address,
}

impl RegisteredInstitutions {
    /// Whether `certificate` is the one `institution` registered with its node.
    async fn check_certificate(
        &self,
        institution: Option<&str>,
        certificate: &medmesh_core::InstitutionId,
    ) -> Result<(), String> {
        let address = institution_address(institution)?;
        let node = medmesh_chain::registered_node(&self.provider, self.registry, address)
            .await
            .map_err(|e| format!("cannot read NodeRegistry: {e}"))?
            .ok_or_else(|| format!("{address} is not a registered institution"))?;
        let registered = hex::encode_upper(node.certificate);
        if registered != certificate.as_str() {
            return Err(format!(
                "certificate {certificate} is not the one {address} registered ({registered})"
            ));
        }
        Ok(())
    }

    async fn check(
        &self,
        peer: medmesh_net::PeerId,
        institution: Option<&str>,
    ) -> Result<(), String> {
        let address = institution_address(institution)?;
        match medmesh_chain::registered_peer_id(&self.provider, self.registry, address).await {
            Err(e) => return Err(format!("cannot read NodeRegistry: {e}")),
            Ok(None) => return Err(format!("{address} is not a registered institution")),
            Ok(Some(registered)) if registered != peer.to_bytes() => {
                return Err(format!("{peer} is not the node {address} registered"))
            }
            Ok(Some(_)) => {}
        }
        Ok(())
    }
}

/// The Ethereum address a replication request says it acts for.
fn institution_address(institution: Option<&str>) -> Result<alloy::primitives::Address, String> {
    let institution = institution.ok_or("the request names no institution")?;
    institution
        .parse()
        .map_err(|_| format!("`{institution}` is not an Ethereum address"))
}

impl medmesh_net::PeerPolicy for RegisteredInstitutions {
    fn may_replicate<'a>(
        &'a self,
        peer: medmesh_net::PeerId,
        institution: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(self.check(peer, institution))
    }

    fn vouches_for<'a>(
        &'a self,
        institution: Option<&'a str>,
        certificate: &'a medmesh_core::InstitutionId,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(self.check_certificate(institution, certificate))
    }
}
