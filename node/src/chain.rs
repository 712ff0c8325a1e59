//! The node's link to the consent contracts: `medmesh chain deploy`, and the grant cache
//! and key releaser behind the HTTP API's key release.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alloy::network::EthereumWallet;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use medmesh_chain::{Deployment, GrantCache, KeyReleaser};
use medmesh_crypto::{Certificate, UnlockedDecryptor};
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
    let key = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let signer: PrivateKeySigner = key
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} does not hold a hex private key", key_file.display()))?;
    let url = chain_rpc
        .parse()
        .with_context(|| format!("`{chain_rpc}` is not a URL"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deployment = runtime.block_on(async {
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(url)
            .erased();
        medmesh_chain::deploy(&provider, vec![]).await
    })?;
    std::fs::write(&output, serde_json::to_vec_pretty(&deployment)?)
        .with_context(|| format!("writing {}", output.display()))?;
    println!("NodeRegistry     {}", deployment.node_registry);
    println!("ConsentRegistry  {}", deployment.consent_registry);
    println!("AuditAnchor      {}", deployment.audit_anchor);
    println!("wrote {}", output.display());
    Ok(())
}

/// A configured chain the node reads consent from.
pub struct ChainLink {
    provider: DynProvider,
    deployment: Deployment,
    snapshot: PathBuf,
}

/// Reads the deployment file and prepares a read-only connection.
pub fn connect(rpc: &str, deployment_file: &Path, data_dir: &Path) -> Result<ChainLink> {
    let text = std::fs::read(deployment_file)
        .with_context(|| format!("reading {}", deployment_file.display()))?;
    let deployment: Deployment = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a deployment file (write one with `medmesh chain deploy`)",
            deployment_file.display()
        )
    })?;
    let url = rpc
        .parse()
        .with_context(|| format!("`{rpc}` is not a URL"))?;
    let dir = data_dir.join("chain");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(ChainLink {
        provider: ProviderBuilder::new().connect_http(url).erased(),
        snapshot: dir.join(format!("grants-{}.json", deployment.consent_registry)),
        deployment,
    })
}

impl ChainLink {
    /// Catches the grant cache up (from its snapshot) and builds the key releaser.
    pub async fn releaser(
        self,
        store: Arc<Store>,
        certificate: Certificate,
        decryptor: Arc<Mutex<UnlockedDecryptor>>,
    ) -> Result<KeyReleaser> {
        let cache = GrantCache::with_snapshot(
            self.deployment.consent_registry,
            self.deployment.from_block,
            &self.snapshot,
        )?;
        let block = cache
            .sync(&self.provider)
            .await
            .context("cannot reach the chain to catch up on consent events")?;
        println!(
            "  chain:        consent synced to block {block} (ConsentRegistry {})",
            self.deployment.consent_registry
        );
        Ok(KeyReleaser::new(
            store,
            certificate,
            decryptor,
            Arc::new(cache),
            self.provider,
            self.deployment.node_registry,
        ))
    }
}
