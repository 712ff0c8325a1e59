//! `medmesh audit …`: walking and printing the local log (`commands`), and checking it
//! against the heads the node anchored on chain (`verify --chain`, in `chain`).

use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::chain::{self, ChainTarget};
use crate::commands;

/// `medmesh audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first altered entry. With --chain, also check the
    /// log against every head the institution anchored on chain, which catches a log
    /// rewritten consistently (every hash recomputed) before an anchor.
    Verify(VerifyArgs),
    /// Print entries as JSON lines.
    Log {
        /// First entry to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `medmesh audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Check every on-chain anchor of the institution's account (`AuditAnchor`): the
    /// local entry `entries - 1` must have the anchored head as its hash. Reads the
    /// chain of --chain-rpc/--chain-deployment, or the node's embedded dev chain in the
    /// data dir (the node must be stopped, as for any audit command).
    #[arg(long)]
    pub chain: bool,
    /// The chain and account to check against.
    #[command(flatten)]
    pub target: ChainTarget,
}

pub fn run(data_dir: &Path, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify(args) if args.chain => chain::verify_audit(data_dir, &args.target),
        AuditCommand::Verify(args) => {
            if args.target.is_given() {
                bail!("the chain options of `audit verify` need --chain");
            }
            commands::audit(data_dir, commands::AuditCommand::Verify)
        }
        AuditCommand::Log { from, limit } => {
            commands::audit(data_dir, commands::AuditCommand::Log { from, limit })
        }
    }
}
