//! The node's side of the peer-to-peer network: starting it from `[net]` settings and
//! command-line overrides, and fetching records for the CLI.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use medmesh_core::RecordId;
use medmesh_net::{
    FetchOptions, FetchReport, Multiaddr, NetConfig, Network, NetworkOptions, OpenPolicy,
    PeerPolicy, Progress, Transfer,
};
use medmesh_service::NodeServices;
use medmesh_store::Store;

use crate::datadir::Node;

/// Network flags shared by `medmesh node`, `get` and `fetch`.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Peer-to-peer listen address (repeatable; default: `net.listen` of medmesh.toml,
    /// TCP and QUIC on 127.0.0.1:4001).
    #[arg(long = "p2p-listen", id = "p2p_listen", value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// A peer to dial at start, `/ip4/…/tcp/…/p2p/12D3KooW…` (repeatable; added to
    /// `net.bootstrap`).
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<Multiaddr>,
    /// Find peers on the local network by mDNS.
    #[arg(long)]
    pub mdns: bool,
}

impl NetArgs {
    /// The `[net]` settings with these flags applied.
    pub fn apply(&self, mut config: NetConfig) -> NetConfig {
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        config.bootstrap.extend(self.peers.iter().cloned());
        config.mdns |= self.mdns;
        config
    }
}

/// Starts the network for `node` over `store`.
pub async fn start(
    node: &Node,
    store: Arc<Store>,
    config: NetConfig,
    policy: Arc<dyn PeerPolicy>,
    institution: Option<String>,
) -> Result<Network> {
    let identity = node.keystore.node_identity()?;
    Network::start(NetworkOptions {
        config,
        identity_seed: *identity.seed(),
        store,
        policy,
        institution,
        certificate: Some(node.keystore.certificate()?),
        agent: format!("medmesh/{}", env!("CARGO_PKG_VERSION")),
    })
    .await
    .context("starting the peer-to-peer network")
}

/// Fetches record `id` into the store from the network, through `services` (the CLI's
/// own short-lived network instance: the node is not running, since it would hold the
/// store).
pub async fn fetch_for_cli(
    node: &Node,
    services: &NodeServices,
    id: RecordId,
    args: &NetArgs,
    transfer: Transfer,
) -> Result<FetchReport> {
    let (report, network) = fetch_keeping_network(node, services, id, args, transfer).await?;
    network.shutdown().await;
    Ok(report)
}

/// [`fetch_for_cli`], leaving the network up (and enabled in `services`) for what the
/// command does next; the caller shuts it down.
pub async fn fetch_keeping_network(
    node: &Node,
    services: &NodeServices,
    id: RecordId,
    args: &NetArgs,
    transfer: Transfer,
) -> Result<(FetchReport, medmesh_net::Network)> {
    let mut config = args.apply(node.config.net.clone());
    // The CLI only dials out: an ephemeral port keeps it clear of a node's.
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")];
    if config.bootstrap.is_empty() {
        anyhow::bail!(
            "no record {id} in this store, and no peer is known to fetch it from: \
             pass --peer /ip4/…/tcp/…/p2p/<peer id> or set net.bootstrap in medmesh.toml"
        );
    }
    let network = start(
        node,
        services.store().clone(),
        config.clone(),
        Arc::new(OpenPolicy),
        None,
    )
    .await?;
    services.enable_network(network.clone());
    // Providers given on the command line are asked directly; the DHT adds others.
    let mut providers = Vec::new();
    for addr in &config.bootstrap {
        match services.dial(addr.clone()).await {
            Ok(peer) => providers.push(peer),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let bar = crate::progress::progress_bar(None, "fetching");
    let progress: Progress = {
        let bar = bar.clone();
        Arc::new(move |n: u64| bar.inc(n))
    };
    let options = FetchOptions {
        providers,
        transfer,
        ..FetchOptions::default()
    };
    let report = services.fetch_with_progress(id, options, progress).await;
    bar.finish_and_clear();
    match report {
        Ok(report) => Ok((report, network)),
        Err(e) => {
            network.shutdown().await;
            Err(e.into())
        }
    }
}
