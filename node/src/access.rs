//! `medmesh access`: what a grantee (a researcher, a patient reading their own records)
//! does from the command line. A grantee identity is a post-quantum OpenPGP key the
//! grantee receives data keys with, published on chain from their wallet; `access get`
//! fetches a record of another institution from peers, asks the owner's node for its
//! key over libp2p (signed by the wallet), and decrypts it with the grantee's key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use medmesh_crypto::SecretKeys;
use medmesh_net::{PeerId, Transfer};
use medmesh_service::GranteeKeys;

use crate::commands::{parse_id, write_plaintext, CLI_ACTOR};
use crate::datadir::{block_on, Node};
use crate::passphrase::PassphraseSource;

/// `medmesh access …`.
#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Create a grantee identity: a post-quantum key pair (ML-KEM-768+X25519 to receive
    /// data keys), its secret locked by the passphrase.
    CreateIdentity {
        /// Where to write the secret key (0600); the public certificate goes beside it
        /// as FILE.cert.asc.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A name in the certificate (e.g. the researcher's).
        #[arg(long, default_value = "medmesh grantee")]
        name: String,
    },
    /// Publish a grantee identity on chain from the grantee's wallet
    /// (`NodeRegistry.publishKey`): owners wrap released keys for it.
    PublishIdentity {
        /// The grantee's certificate (FILE.cert.asc from `create-identity`).
        #[arg(long, value_name = "FILE")]
        certificate: PathBuf,
        /// The grantee's wallet: a file holding its hex private key (0600).
        #[arg(long, value_name = "FILE")]
        wallet_key: PathBuf,
        /// JSON-RPC URL of the chain.
        #[arg(long)]
        chain_rpc: String,
        /// Contract addresses (from `medmesh chain deploy`).
        #[arg(long, value_name = "FILE")]
        chain_deployment: PathBuf,
    },
    /// Get a record of another institution: fetch its blocks, ask the owner's node for
    /// the key, decrypt it with the grantee's key.
    Get(GetArgs),
}

/// `medmesh access get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The record id.
    id: String,
    /// The owner's node (its PeerId); dial it with --peer.
    #[arg(long, value_name = "PEER_ID")]
    owner: String,
    /// The grantee's wallet: a file holding its hex private key (0600).
    #[arg(long, value_name = "FILE")]
    wallet_key: PathBuf,
    /// The grantee's secret key (from `create-identity`), unlocked by the passphrase.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// The DUO purpose the grant names (42 for DUO:0000042).
    #[arg(long)]
    purpose: u32,
    #[command(flatten)]
    net: crate::network::NetArgs,
    /// Where to write the plaintext (`-` for standard output).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs `medmesh access …`.
pub fn run(data_dir: &Path, source: &PassphraseSource, command: AccessCommand) -> Result<()> {
    match command {
        AccessCommand::CreateIdentity { out, name } => create_identity(&out, &name, source),
        AccessCommand::PublishIdentity {
            certificate,
            wallet_key,
            chain_rpc,
            chain_deployment,
        } => publish_identity(&certificate, &wallet_key, &chain_rpc, &chain_deployment),
        AccessCommand::Get(args) => get(data_dir, source, args),
    }
}

fn create_identity(out: &Path, name: &str, source: &PassphraseSource) -> Result<()> {
    let cert_path = PathBuf::from(format!("{}.cert.asc", out.display()));
    for path in [out, cert_path.as_path()] {
        if path.exists() {
            bail!("{} exists; refusing to overwrite it", path.display());
        }
    }
    let passphrase = source.get(true)?;
    passphrase.check_new()?;
    let keys = SecretKeys::generate(name, &passphrase)?;
    let certificate = keys.certificate()?;
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(bytes)?;
        Ok(file.sync_all()?)
    };
    write(out, &keys.to_armored()?, 0o600)?;
    write(&cert_path, &certificate.to_armored()?, 0o644)?;
    println!("grantee identity {}", certificate.id());
    println!(
        "  secret key:  {} (locked by the passphrase)",
        out.display()
    );
    println!("  certificate: {}", cert_path.display());
    println!(
        "publish it with `medmesh access publish-identity --certificate {}`",
        cert_path.display()
    );
    Ok(())
}

fn publish_identity(
    certificate: &Path,
    wallet_key: &Path,
    chain_rpc: &str,
    deployment: &Path,
) -> Result<()> {
    use alloy::primitives::B256;
    let certificate = medmesh_crypto::Certificate::from_bytes(
        &std::fs::read(certificate)
            .with_context(|| format!("reading {}", certificate.display()))?,
    )?;
    let wallet = crate::chain::read_account(wallet_key)?;
    let deployment = crate::chain::read_deployment_file(deployment)?;
    let url = chain_rpc
        .parse()
        .with_context(|| format!("`{chain_rpc}` is not a URL"))?;
    let fingerprint: B256 = format!("0x{}", certificate.id())
        .parse()
        .context("a v6 certificate has a 32-byte fingerprint")?;
    let address = alloy::signers::Signer::address(&wallet);
    block_on(async move {
        let provider = medmesh_chain::relaying_provider(url, wallet);
        let registry =
            medmesh_chain::bindings::NodeRegistry::new(deployment.node_registry, provider);
        let receipt = registry
            .publishKey(fingerprint)
            .send()
            .await
            .context("sending publishKey")?
            .get_receipt()
            .await
            .context("waiting for publishKey to be mined")?;
        if !receipt.status() {
            bail!(
                "publishKey reverted in transaction {}",
                receipt.transaction_hash
            );
        }
        println!(
            "published {} for {address} (transaction {}, block {})",
            certificate.id(),
            receipt.transaction_hash,
            receipt.block_number.unwrap_or_default()
        );
        Ok(())
    })
}

fn get(data_dir: &Path, source: &PassphraseSource, args: GetArgs) -> Result<()> {
    let id = parse_id(&args.id)?;
    let owner: PeerId = args
        .owner
        .trim()
        .parse()
        .with_context(|| format!("--owner `{}` is not a PeerId", args.owner))?;
    let to_stdout = args.output == Path::new("-");
    if !to_stdout && args.output.exists() && !args.force {
        bail!(
            "{} exists; pass --force to overwrite it",
            args.output.display()
        );
    }
    let wallet = crate::chain::read_account(&args.wallet_key)?;
    let identity = SecretKeys::from_bytes(
        &std::fs::read(&args.identity)
            .with_context(|| format!("reading {}", args.identity.display()))?,
    )?;
    medmesh_crypto::keystore::check_private(&args.identity)?;
    let decryptor = identity.unlock_decryption(&source.get(false)?)?;
    let certificate = identity.certificate()?.to_armored()?;
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    block_on(async {
        // Starts the network too (the key comes over it): a record already here costs
        // no transfer.
        let (report, network) = crate::network::fetch_keeping_network(
            &node,
            &services,
            id,
            &args.net,
            Transfer::FastPath,
        )
        .await?;
        if report.blocks_fetched > 0 {
            eprintln!(
                "fetched {} blocks ({} bytes) from {}",
                report.blocks_fetched,
                report.bytes_fetched,
                report.providers.join(", ")
            );
        }
        let keys = GranteeKeys {
            certificate,
            decryptor,
        };
        let opened = services
            .open_as_grantee(id, owner, args.purpose, &wallet, keys, CLI_ACTOR)
            .await;
        network.shutdown().await;
        let (released, record) = opened?;
        eprintln!(
            "key released by {owner} ({} {})",
            released.access, released.access_id
        );
        write_plaintext(record, &args.output, to_stdout).await
    })
}
