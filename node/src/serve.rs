//! `medmesh node`: runs the node on its embedded defaults: creates the data dir on first
//! run, unlocks the institution keys once, and serves the HTTP API until interrupted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use medmesh_api::{ApiConfig, AppState};
use medmesh_store::{Store, TokenScope};

use crate::chain;
use crate::commands::{self, CLI_ACTOR};
use crate::config;
use crate::datadir::Node;
use crate::passphrase::PassphraseSource;

/// `medmesh node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Address of the HTTP API (default: `api.listen` of medmesh.toml, 127.0.0.1:8420).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Allow a non-loopback address. The node does not terminate TLS: put a TLS reverse
    /// proxy in front of it.
    #[arg(long)]
    allow_public: bool,
    /// The domain Sign-In with Ethereum messages must name (default: the listen address).
    #[arg(long)]
    siwe_domain: Option<String>,
    /// Sustained requests per second allowed per API token (burst: twice as many).
    #[arg(long, default_value_t = 100.0)]
    rate_limit: f64,
    /// JSON-RPC URL of an EVM chain holding the consent contracts (consent checks, key
    /// release, relayed grants), instead of the embedded dev chain.
    #[arg(long, requires = "chain_deployment")]
    chain_rpc: Option<String>,
    /// The deployment file (`medmesh chain deploy` writes it): contract addresses and
    /// the block to scan events from.
    #[arg(long, requires = "chain_rpc")]
    chain_deployment: Option<PathBuf>,
    /// The node's account on the --chain-rpc chain (file holding a hex private key):
    /// it pays the gas of grants and revocations relayed for patients.
    #[arg(long, requires = "chain_rpc")]
    chain_key_file: Option<PathBuf>,
    /// Where the embedded dev chain (used when no --chain-rpc is given) serves its
    /// JSON-RPC, for wallets and tools.
    #[arg(long, default_value = "127.0.0.1:8545")]
    dev_chain_listen: SocketAddr,
    /// Run without any chain: no consent checks, no key release.
    #[arg(long, conflicts_with_all = ["chain_rpc", "chain_deployment"])]
    no_chain: bool,
    #[command(flatten)]
    net: crate::network::NetArgs,
    /// Run without the peer-to-peer network (records stay on this node).
    #[arg(long)]
    no_network: bool,
    #[command(flatten)]
    mqtt: crate::mqtt::MqttArgs,
    /// Institution name, used only when the data dir is created on first run.
    #[arg(long, default_value = "medmesh institution")]
    institution: String,
}

/// Where the first start writes the first admin token (0600), inside the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

pub fn run(data_dir: &Path, source: &PassphraseSource, args: NodeArgs) -> Result<()> {
    if !(args.rate_limit.is_finite() && args.rate_limit > 0.0) {
        bail!("--rate-limit must be a positive number of requests per second");
    }
    if let Some(listen) = args.listen {
        check_listen(listen, args.allow_public)?;
    }
    let passphrase = if data_dir.join(config::FILE_NAME).exists() {
        source.get(false)?
    } else {
        eprintln!("no node in {}: creating one", data_dir.display());
        commands::check_can_init(data_dir, &args.institution)?;
        let passphrase = source.get(true)?;
        commands::init_with(data_dir, &args.institution, &passphrase)?;
        passphrase
    };
    // The data dir holds keys, ciphertext and the index: nobody else may read it.
    let repaired = medmesh_store::secure_permissions(data_dir)
        .with_context(|| format!("securing the permissions of {}", data_dir.display()))?;
    for path in &repaired {
        eprintln!(
            "warning: {} was readable by other users; made it private (0700/0600)",
            path.display()
        );
    }
    let node = Node::open(data_dir)?;
    let listen = args.listen.unwrap_or(node.config.api.listen);
    check_listen(listen, args.allow_public)?;
    args.mqtt.check(&node.config)?;

    let keys = node.unlock_keys(&passphrase)?;
    drop(passphrase);
    let peer_id = node.keystore.node_identity()?.peer_id();
    let store = node.store.clone();
    let net_config = node.config.net.clone();
    if store.list_tokens()?.is_empty() {
        // To a private file, not standard output: output ends up in log files.
        let (_, secret) = store.create_token("first admin", TokenScope::Admin, CLI_ACTOR)?;
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        medmesh_store::atomic_write(&path, format!("{secret}\n").as_bytes())
            .with_context(|| format!("writing the first admin token to {}", path.display()))?;
        tracing::info!(file = %path.display(), "created the first admin API token");
        println!(
            "created the first admin API token in {} (0600; read it, then delete the file; more with `medmesh token create`)",
            path.display()
        );
    }
    let config = ApiConfig {
        siwe_domain: args.siwe_domain.unwrap_or_else(|| listen.to_string()),
        rate_per_second: args.rate_limit,
        rate_burst: 2.0 * args.rate_limit,
        ..ApiConfig::default()
    };
    let institution = keys.certificate.id();
    let certificate = keys.certificate.clone();
    let decryptor = keys.decryptor.clone();
    let services = Arc::new(node.services(Some(keys)));
    let chain_source = match (&args.chain_rpc, &args.chain_deployment) {
        _ if args.no_chain => chain::Source::None,
        (Some(rpc), Some(deployment)) => chain::Source::External {
            rpc: rpc.clone(),
            deployment: deployment.clone(),
            key_file: args.chain_key_file.clone(),
        },
        _ => {
            check_listen(args.dev_chain_listen, args.allow_public)?;
            chain::Source::Embedded {
                listen: args.dev_chain_listen,
            }
        }
    };

    let webhooks = node
        .config
        .webhook_endpoints(data_dir)
        .context("reading the [[webhooks]] of medmesh.toml")?;
    crate::datadir::block_on(async move {
        let state = AppState::new(services.clone(), config);
        // Before the chain connects, so the break-glass events of its first sync are
        // delivered too.
        let webhooks = medmesh_service::spawn_webhooks(services.clone(), webhooks)
            .context("starting the webhooks")?;
        spawn_orphan_sweep(store.clone());
        let mut policy: Arc<dyn medmesh_net::PeerPolicy> = Arc::new(medmesh_net::OpenPolicy);
        let mut policy_text = "any peer (no external chain)";
        let mut account = None;
        if let Some(chain) = chain::open(chain_source, data_dir).await? {
            account = chain.account_address();
            if !chain.is_embedded() {
                // On a shared chain only registered institutions' nodes may ask this
                // node to hold replicas; on the embedded dev chain, private to this node,
                // no other node is registered.
                policy = Arc::new(chain.registered_institutions());
                policy_text = "nodes of institutions registered in NodeRegistry";
            }
            let chain_services = chain
                .services(store.clone(), certificate, decryptor)
                .await?;
            services.enable_chain(chain_services);
            // Registration in NodeRegistry and audit anchoring, in the background.
            chain::start_life(&services, &peer_id, &institution, &node.config)?;
        }
        let network = if args.no_network {
            None
        } else {
            let config = args.net.apply(net_config);
            let network =
                crate::network::start(&node, store.clone(), config.clone(), policy, account)
                    .await?;
            network.spawn_repair(store.clone());
            services.enable_network(network.clone());
            services.serve_keys_to_peers();
            services.announce_stored();
            Some(network)
        };
        let mqtt = if args.mqtt.enabled(&node.config) {
            Some(
                args.mqtt
                    .start(&services, &node.config, data_dir, &peer_id.to_string())
                    .await?,
            )
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (is another node running?)"))?;
        println!("medmesh node {} running", env!("CARGO_PKG_VERSION"));
        println!(
            "  institution:  {} ({institution})",
            node.config.institution
        );
        println!("  node peer id: {peer_id}");
        match &network {
            Some(network) => {
                for addr in network.listen_addrs() {
                    println!("  p2p:          {addr}");
                }
                println!("  replicas for: {policy_text}");
            }
            None => println!("  p2p:          off (--no-network)"),
        }
        println!("  HTTP API:     http://{listen}  (docs: http://{listen}/docs)");
        match &mqtt {
            Some(started) => {
                if let Some(embedded) = &started.embedded {
                    println!(
                        "  MQTT broker:  embedded, mqtt://{} (3.1.1) and mqtt://{} (5)",
                        embedded.v4_addr(),
                        embedded.v5_addr()
                    );
                } else {
                    println!("  MQTT broker:  {}", started.bridge.broker());
                }
                println!("  devices:      publish to {}", started.topic);
            }
            None => println!("  MQTT:         off"),
        }
        if webhooks.endpoints() > 0 {
            println!("  webhooks:     {} endpoint(s)", webhooks.endpoints());
        }
        println!("stop with Ctrl-C");
        medmesh_api::serve(listener, state, shutdown_signal())
            .await
            .context("serving the HTTP API")
    })?;
    eprintln!("medmesh node stopped");
    Ok(())
}

/// Blocks an interrupted upload or fetch left behind (a kill mid-write) are deleted
/// once they are this old: younger ones may belong to a fetch a restart resumes.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the node looks for such blocks.
const ORPHAN_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes orphan blocks and temp files at start and then periodically, so crashes do
/// not leave gigabytes until someone runs `medmesh gc`.
fn spawn_orphan_sweep(store: Arc<Store>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ORPHAN_SWEEP_EVERY);
        loop {
            tick.tick().await;
            let store = store.clone();
            let swept =
                tokio::task::spawn_blocking(move || store.sweep_orphans(ORPHAN_AGE, "node")).await;
            match swept {
                Ok(Ok(Some(r))) if r.blocks_removed + r.temp_files_removed > 0 => tracing::warn!(
                    blocks = r.blocks_removed,
                    temp_files = r.temp_files_removed,
                    bytes = r.bytes_freed,
                    "deleted what interrupted writes left behind"
                ),
                Ok(Ok(Some(_))) => {}
                // An upload or import is in progress: the next pass tries again.
                Ok(Ok(None)) => tracing::debug!("orphan sweep skipped: the store is busy"),
                Ok(Err(e)) => tracing::warn!(error = %e, "orphan sweep failed"),
                Err(_) => return,
            }
        }
    });
}

fn check_listen(listen: SocketAddr, allow_public: bool) -> Result<()> {
    if !listen.ip().is_loopback() && !allow_public {
        bail!(
            "refusing to serve the API on {listen}: it is not a loopback address and the node \
             does not terminate TLS. Put a TLS reverse proxy in front and pass --allow-public, \
             or listen on 127.0.0.1"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
