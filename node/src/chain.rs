//! The node's link to the consent contracts: `medmesh chain deploy` and `medmesh chain
//! status`, `medmesh audit verify --chain`, and the grant cache and key releaser behind
//! the service layer's key release.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alloy::network::EthereumWallet;
use alloy::primitives::Address;
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
    /// Show this node's registration in NodeRegistry and its audit anchors. Starts
    /// nothing: reads the chain of --chain-rpc/--chain-deployment, or the node's
    /// embedded dev chain (over its JSON-RPC while the node runs, from the data dir
    /// otherwise, when the local audit log is compared with the last anchor too).
    Status(ChainTarget),
}

/// Which chain a command reads, and the institution's account on it.
#[derive(Debug, clap::Args)]
pub struct ChainTarget {
    /// JSON-RPC URL of the chain (default: the node's embedded dev chain).
    #[arg(long, requires = "chain_deployment")]
    pub chain_rpc: Option<String>,
    /// The deployment file (`medmesh chain deploy` writes it).
    #[arg(long, requires = "chain_rpc")]
    pub chain_deployment: Option<PathBuf>,
    /// The institution's account, as the node's key file (hex private key, 0600; only
    /// its address is used)...
    #[arg(long, conflicts_with = "account")]
    pub chain_key_file: Option<PathBuf>,
    /// ...or as its address (default on the embedded dev chain: the node's dev account).
    #[arg(long)]
    pub account: Option<String>,
    /// Where a running node's embedded dev chain serves its JSON-RPC.
    #[arg(long, default_value = "127.0.0.1:8545")]
    pub dev_chain_listen: SocketAddr,
}

impl ChainTarget {
    /// Whether any chain option was given (the listen address aside, which has a
    /// default).
    pub fn is_given(&self) -> bool {
        self.chain_rpc.is_some()
            || self.chain_deployment.is_some()
            || self.chain_key_file.is_some()
            || self.account.is_some()
    }
}

pub fn run(data_dir: &Path, cmd: ChainCommand) -> Result<()> {
    match cmd {
        ChainCommand::Deploy {
            chain_rpc,
            key_file,
            output,
        } => deploy(&chain_rpc, &key_file, &output),
        ChainCommand::Status(target) => status(data_dir, &target),
    }
}

fn deploy(chain_rpc: &str, key_file: &Path, output: &Path) -> Result<()> {
    if output.exists() {
        bail!("{} exists; choose another --output", output.display());
    }
    let signer = read_account(key_file)?;
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
    std::fs::write(output, serde_json::to_vec_pretty(&deployment)?)
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

/// The deployment file `medmesh chain deploy` wrote.
pub(crate) fn read_deployment_file(path: &Path) -> Result<Deployment> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a deployment file (write one with `medmesh chain deploy`)",
            path.display()
        )
    })
}

/// An account key from a file holding it as hex; the file must be private (0600).
pub(crate) fn read_account(path: &Path) -> Result<PrivateKeySigner> {
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
            (rpc, read_deployment_file(&deployment)?, None, account)
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
            // The node's dev account relays, registers the node and anchors its audit
            // log; genesis approved it as an institution (a chain from before that is
            // caught up here).
            let account = medmesh_chain::devchain::node_signer();
            if dev
                .ensure_approved(account.address())
                .await
                .context("approving the node's account on the embedded dev chain")?
            {
                println!(
                    "  dev chain:    approved the node's account {} as an institution",
                    account.address()
                );
            }
            (url, dev.deployment(), Some(task), Some(account))
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
    /// Whether this link is to the embedded dev chain (private to this node: only this
    /// node registers on it, unless a test or a developer registers others).
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

/// A chain opened by a command, to read: the institution's account on it, and the
/// embedded dev chain's server when the command opened that itself.
pub struct ReadChain {
    /// A provider without a wallet.
    pub provider: DynProvider,
    /// Its JSON-RPC URL.
    pub rpc: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Contract addresses.
    pub deployment: Deployment,
    /// The institution's account.
    pub account: Address,
    /// Whether this is the node's embedded dev chain, opened by this command.
    pub in_process: bool,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ReadChain {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Opens the chain `target` names. Without `--chain-rpc` it is the node's embedded dev
/// chain in `data_dir`: opened here when `node_stopped` (the caller holds the node's
/// store, so no node runs on these files), reached over `--dev-chain-listen` otherwise.
pub async fn open_to_read(
    target: &ChainTarget,
    data_dir: &Path,
    node_stopped: bool,
) -> Result<ReadChain> {
    let mut server = None;
    let mut in_process = false;
    let mut default_account = None;
    let (rpc, deployment) = match (&target.chain_rpc, &target.chain_deployment) {
        (Some(rpc), Some(path)) => (rpc.clone(), read_deployment_file(path)?),
        _ => {
            let snapshot = data_dir.join("chain").join("devchain.json");
            if !snapshot.exists() {
                bail!(
                    "{} holds no embedded dev chain (the node has not run on it); name the \
                     chain with --chain-rpc and --chain-deployment",
                    data_dir.display()
                );
            }
            default_account = Some(medmesh_chain::devchain::node_signer().address());
            if node_stopped {
                let dev = DevChain::open(Some(&snapshot))
                    .await
                    .context("opening the embedded dev chain")?;
                let (url, task) = dev
                    .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .context("serving the embedded dev chain to this command")?;
                server = Some(task);
                in_process = true;
                (url, dev.deployment())
            } else {
                let deployment = medmesh_chain::devchain::read_deployment(&snapshot)?
                    .with_context(|| format!("{} has no deployment yet", snapshot.display()))?;
                (format!("http://{}", target.dev_chain_listen), deployment)
            }
        }
    };
    let account = match (&target.account, &target.chain_key_file) {
        (Some(address), _) => address
            .parse()
            .map_err(|_| anyhow::anyhow!("--account `{address}` is not an Ethereum address"))?,
        (None, Some(file)) => read_account(file)?.address(),
        (None, None) => default_account.context(
            "name the institution's account: --account ADDRESS or --chain-key-file FILE",
        )?,
    };
    let url: alloy::transports::http::reqwest::Url = rpc
        .parse()
        .with_context(|| format!("`{rpc}` is not a URL"))?;
    let provider = ProviderBuilder::new().connect_http(url).erased();
    let chain_id = provider.get_chain_id().await.with_context(|| {
        if target.chain_rpc.is_none() && !in_process {
            format!(
                "cannot reach the running node's dev chain at {rpc} (pass the node's \
                 --dev-chain-listen)"
            )
        } else {
            format!("cannot reach the chain at {rpc}")
        }
    })?;
    Ok(ReadChain {
        provider,
        rpc,
        chain_id,
        deployment,
        account,
        in_process,
        server,
    })
}

/// A Unix time as RFC 3339 (UTC).
fn when(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn yes(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// `medmesh chain status`.
fn status(data_dir: &Path, target: &ChainTarget) -> Result<()> {
    let config = crate::config::Config::load(data_dir)?;
    let keystore = medmesh_crypto::Keystore::open(&data_dir.join("keys"))?;
    let certificate = keystore.certificate()?.id();
    let peer_id: medmesh_net::PeerId = keystore
        .node_identity()?
        .peer_id()
        .parse()
        .context("the node identity's PeerId does not parse")?;
    let fingerprint: alloy::primitives::B256 = format!("0x{certificate}")
        .parse()
        .with_context(|| format!("certificate {certificate} has no 32-byte (v6) fingerprint"))?;
    let name = medmesh_chain::registry::registry_name(&config.institution);
    // A running node holds its store: then its dev chain is reached over JSON-RPC and the
    // local log is not read.
    let store = match Store::open(&data_dir.join("store")) {
        Ok(store) => Some(Arc::new(store)),
        Err(medmesh_store::StoreError::Locked(_)) => None,
        Err(e) => return Err(e).context("opening the store"),
    };
    crate::datadir::block_on(async move {
        let chain = open_to_read(target, data_dir, store.is_some()).await?;
        let d = chain.deployment;
        println!(
            "chain:            {} (chain id {}{})",
            chain.rpc,
            chain.chain_id,
            if chain.in_process {
                ", the embedded dev chain, opened from the data dir"
            } else {
                ""
            }
        );
        println!("NodeRegistry      {}", d.node_registry);
        println!("ConsentRegistry   {}", d.consent_registry);
        println!("AuditAnchor       {}", d.audit_anchor);
        println!("account:          {}", chain.account);
        let registration =
            medmesh_chain::registration(&chain.provider, d.node_registry, chain.account)
                .await
                .context("reading NodeRegistry")?;
        println!("approved:         {}", yes(registration.approved));
        let this_node = registration.lists(&peer_id.to_bytes(), &fingerprint.0, &name);
        match &registration.node {
            Some(node) if this_node => println!(
                "registered:       yes, this node: {peer_id}, certificate {certificate}, \
                 \"{name}\", since {}",
                when(node.registered_at)
            ),
            Some(node) => {
                let peer = medmesh_net::PeerId::from_bytes(&node.peer_id)
                    .map_or_else(|_| hex::encode(&node.peer_id), |p| p.to_string());
                println!(
                    "registered:       no; the registry holds {}{peer}, certificate {}, \"{}\" \
                     (registered {})",
                    if node.active { "" } else { "an inactive node " },
                    hex::encode_upper(node.certificate),
                    node.name,
                    when(node.registered_at)
                );
                println!(
                    "                  this node is {peer_id}, certificate {certificate}, \"{name}\""
                );
            }
            None => println!("registered:       no node yet"),
        }
        if !registration.approved {
            println!(
                "                  a registry admin must call approveInstitution({}); the \
                 running node then registers itself",
                chain.account
            );
        } else if !this_node {
            println!("                  the running node registers itself (it looks every minute)");
        }
        match registration.key {
            Some(key) => println!("receives keys as: {}", hex::encode_upper(key)),
            None => println!("receives keys as: (no certificate published)"),
        }
        let count =
            medmesh_chain::anchor::anchor_count(&chain.provider, d.audit_anchor, chain.account)
                .await
                .context("reading AuditAnchor")?;
        let last = match count {
            0 => None,
            n => Some(
                medmesh_chain::anchor::anchor_at(
                    &chain.provider,
                    d.audit_anchor,
                    chain.account,
                    n - 1,
                )
                .await
                .context("reading AuditAnchor")?,
            ),
        };
        match &last {
            Some(a) => println!(
                "audit anchors:    {count}; the last: {} entries, head {}, at {}",
                a.entries,
                a.head_hex(),
                when(a.anchored_at)
            ),
            None => println!("audit anchors:    none"),
        }
        match store {
            None => println!("local audit log:  not read (the node is running and holds it)"),
            Some(store) => {
                let (log, reached) = tokio::task::spawn_blocking(move || {
                    let log = store.audit_verify()?;
                    let reached = match last {
                        Some(a) => Some(medmesh_chain::anchor::check_anchors(&store, &[a])?.1),
                        None => None,
                    };
                    Ok::<_, medmesh_store::StoreError>((log, reached))
                })
                .await??;
                match log {
                    Ok(summary) => println!(
                        "local audit log:  verifies, {} entries, head {}",
                        summary.entries, summary.head
                    ),
                    Err(broken) => println!("local audit log:  BROKEN: {broken}"),
                }
                match reached {
                    Some(None) => println!("                  reaches the last anchor"),
                    Some(Some(mismatch)) => println!(
                        "                  DOES NOT reach the last anchor: {mismatch} (run \
                         `medmesh audit verify --chain`)"
                    ),
                    None => {}
                }
            }
        }
        Ok(())
    })
}

/// `medmesh audit verify --chain`: walks the local log and checks it against every
/// anchor of the institution's account; fails naming the first anchor it does not
/// reach.
pub fn verify_audit(data_dir: &Path, target: &ChainTarget) -> Result<()> {
    // Holding the store also means no node runs on this data dir (nor on its dev chain).
    let node = crate::datadir::Node::open(data_dir)?;
    let store = node.store.clone();
    let report = crate::datadir::block_on(async move {
        let chain = open_to_read(target, data_dir, true).await?;
        println!(
            "chain: {} (chain id {}), AuditAnchor {}, account {}",
            chain.rpc, chain.chain_id, chain.deployment.audit_anchor, chain.account
        );
        medmesh_chain::anchor::verify_against_chain(
            store,
            &chain.provider,
            chain.deployment.audit_anchor,
            chain.account,
        )
        .await
        .context("checking the audit log against its anchors on chain")
    })?;
    match &report.log {
        Ok(summary) => println!(
            "audit log verifies: {} entries, head {}",
            summary.entries, summary.head
        ),
        Err(broken) => println!("audit log does not verify: {broken}"),
    }
    match (&report.first_mismatch, &report.last) {
        (_, None) => println!("no anchors on chain for this account: nothing to compare"),
        (None, Some(last)) => println!(
            "anchors checked: {}, all reached (the last: {} entries, head {}, at {})",
            report.checked,
            last.entries,
            last.head_hex(),
            when(last.anchored_at)
        ),
        (Some(mismatch), Some(_)) => println!(
            "anchors checked: {}, {} not reached; the first: {mismatch}",
            report.checked, report.mismatches
        ),
    }
    match (&report.log, &report.first_mismatch) {
        (Ok(_), None) => Ok(()),
        (Err(broken), None) => bail!(broken.clone()),
        (Ok(_), Some(mismatch)) => bail!("audit log does not match its anchors: {mismatch}"),
        (Err(broken), Some(mismatch)) => {
            bail!("{broken}; and the log does not match its anchors: {mismatch}")
        }
    }
}

/// Starts the node's life on its chain in the background — registering itself in
/// `NodeRegistry` once its account is approved, anchoring its audit log's head as
/// `[audit]` says — and tells the operator. Without an account on the chain (no
/// `--chain-key-file`) it does neither, and says so.
pub fn start_life(
    services: &medmesh_service::NodeServices,
    peer_id: &str,
    certificate: &medmesh_core::InstitutionId,
    config: &crate::config::Config,
) -> Result<()> {
    let identity = medmesh_service::NodeIdentity {
        peer_id: peer_id
            .parse()
            .context("the node identity's PeerId does not parse")?,
        certificate: certificate.clone(),
        name: config.institution.clone(),
    };
    let anchor = config.audit.anchor_settings();
    let settings = medmesh_service::ChainLifeSettings::new(identity, anchor);
    match services.start_chain_life(settings) {
        Ok(_) => {
            let account = services
                .chain_life()
                .map(|life| life.registration.account.to_string())
                .unwrap_or_default();
            println!("  registration: {account} registers this node in NodeRegistry once approved");
            if anchor.enabled() {
                let every = match anchor.every_entries {
                    0 => String::new(),
                    n => format!(", or after {n} new entries"),
                };
                println!(
                    "  audit anchor: every {} s while the log grows{every}",
                    anchor.interval.as_secs()
                );
            } else {
                println!("  audit anchor: off ([audit] anchor_interval_secs = 0)");
            }
        }
        Err(medmesh_service::ServiceError::NoRelayer) => println!(
            "  registration: none: without an account on the chain (--chain-key-file) the \
             node neither registers itself nor anchors its audit log"
        ),
        Err(e @ medmesh_service::ServiceError::InvalidInput(_)) => {
            println!("  registration: none: {e}");
        }
        Err(e) => return Err(e).context("starting the node's registration and audit anchoring"),
    }
    Ok(())
}
