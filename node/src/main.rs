//! `medmesh`: the node each institution runs to share encrypted medical records.

// A command-line tool speaks on stdout.
#![allow(clippy::print_stdout)]

mod access;
mod audit_cmd;
mod chain;
mod commands;
mod config;
mod datadir;
mod dataset;
mod devices;
mod mqtt;
mod network;
mod passphrase;
mod progress;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::passphrase::PassphraseSource;

/// Share encrypted medical records without a central operator.
#[derive(Debug, Parser)]
#[command(name = "medmesh", version, about, long_about = None)]
struct Cli {
    /// The node's data dir (config, keys, blocks, index).
    #[arg(long, global = true, env = "MEDMESH_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,

    /// Read the passphrase from the first line of this file
    /// (otherwise $MEDMESH_PASSPHRASE, otherwise a prompt).
    #[arg(long, global = true, env = "MEDMESH_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,

    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node: serve the HTTP API (creates the data dir on first run).
    Node(serve::NodeArgs),
    /// Create a data dir: config file, institution keys, node identity, empty store.
    Init {
        /// Name of the institution this node acts for.
        #[arg(long, default_value = "medmesh institution")]
        institution: String,
    },
    /// Encrypt and store a file as a record; prints the record id.
    Put(commands::PutArgs),
    /// Decrypt a record into a file (or `-o -` for stdout).
    Get(commands::GetArgs),
    /// Fetch a record's encrypted blocks from peers into this store (no decryption).
    Fetch(commands::FetchArgs),
    /// List this institution's records, oldest first (the passphrase opens the sealed index).
    Ls(commands::LsArgs),
    /// Show a record's metadata and manifest summary (needs the passphrase too).
    Info {
        /// The record id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the local copy of a record (its blocks are deleted).
    Rm {
        /// Record ids to remove.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete blocks no record references (e.g. left by an interrupted put).
    Gc,
    /// Check that every record's blocks are present and intact and the audit log verifies.
    Check,
    /// The audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// The institution's keys.
    #[command(subcommand)]
    Keys(commands::KeysCommand),
    /// The consent contracts on an EVM chain.
    #[command(subcommand)]
    Chain(chain::ChainCommand),
    /// API tokens for the HTTP API (while the node is stopped; or use /v1/admin/tokens).
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// Medical devices whose signed readings the MQTT bridge takes (while the node is
    /// stopped; or use /v1/devices).
    #[command(subcommand)]
    Device(devices::DeviceCommand),
    /// What a grantee does: create and publish a grantee identity, get a record of
    /// another institution (its key from the owner's node over libp2p).
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// Research datasets: de-identify and anonymize a table of records.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".medmesh"))
        .unwrap_or_else(|| PathBuf::from(".medmesh"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let passphrase = PassphraseSource {
        file: cli.passphrase_file.clone(),
    };
    let result = match cli.command {
        Command::Node(args) => serve::run(&cli.data_dir, &passphrase, args),
        Command::Fetch(args) => commands::fetch(&cli.data_dir, args),
        Command::Init { institution } => commands::init(&cli.data_dir, &institution, &passphrase),
        Command::Put(args) => commands::put(&cli.data_dir, &passphrase, args),
        Command::Get(args) => commands::get(&cli.data_dir, &passphrase, args),
        Command::Ls(args) => commands::ls(&cli.data_dir, &passphrase, args),
        Command::Info { id, json } => commands::info(&cli.data_dir, &passphrase, &id, json),
        Command::Rm { ids } => commands::rm(&cli.data_dir, &ids),
        Command::Gc => commands::gc(&cli.data_dir),
        Command::Check => commands::check(&cli.data_dir),
        Command::Audit(cmd) => audit_cmd::run(&cli.data_dir, cmd),
        Command::Keys(cmd) => commands::keys(&cli.data_dir, cmd),
        Command::Token(cmd) => commands::token(&cli.data_dir, cmd),
        Command::Access(cmd) => access::run(&cli.data_dir, &passphrase, cmd),
        Command::Chain(cmd) => chain::run(&cli.data_dir, cmd),
        Command::Device(cmd) => devices::run(&cli.data_dir, &passphrase, cmd),
        Command::Dataset(cmd) => dataset::run(&cli.data_dir, &passphrase, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`medmesh ls | head`) closed our standard output:
        // its choice, not an error (as ripgrep treats it).
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // The embedded broker (rumqttd) logs every client that disconnects as an error:
    // silent unless RUST_LOG asks for it (the node reports the broker's own failures).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},rumqttd=off")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
