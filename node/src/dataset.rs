//! `medmesh dataset …`: anonymize a table (a CSV file, or this institution's records
//! while the node is stopped) under a policy file, and write the released table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use medmesh_anon::Policy;
use medmesh_core::PatientRef;
use medmesh_service::DatasetSource;
use medmesh_store::RecordQuery;

use crate::commands::{parse_time, CLI_ACTOR};
use crate::datadir::{block_on, Node};
use crate::passphrase::PassphraseSource;

/// `medmesh dataset …`.
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// De-identify (Safe Harbor) and anonymize a table: find the least lossy
    /// generalization meeting the policy's privacy models, print the report, and write
    /// the released table.
    Anonymize(AnonymizeArgs),
}

/// `medmesh dataset anonymize`.
#[derive(Debug, Args)]
pub struct AnonymizeArgs {
    /// The policy file (TOML: columns and roles, hierarchies, models, suppression limit,
    /// metric; see docs/anonymization.md).
    #[arg(long)]
    policy: PathBuf,
    /// The table, a CSV file (read as the policy's `[input]` says).
    #[arg(
        long,
        conflicts_with = "from_records",
        required_unless_present = "from_records"
    )]
    csv: Option<PathBuf>,
    /// Build the table from this institution's records (by the policy's `[mapping]`),
    /// selected by --patient, --type, --since and --until; needs the passphrase, and
    /// the node stopped.
    #[arg(long)]
    from_records: bool,
    /// Only this patient's records.
    #[arg(long, requires = "from_records")]
    patient: Option<String>,
    /// Only records of this media type.
    #[arg(long = "type", requires = "from_records")]
    content_type: Option<String>,
    /// Only records created at or after this time (RFC 3339).
    #[arg(long, requires = "from_records")]
    since: Option<String>,
    /// Only records created before this time (RFC 3339).
    #[arg(long, requires = "from_records")]
    until: Option<String>,
    /// Write the released table here (CSV; `-` for standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(data_dir: &Path, source: &PassphraseSource, cmd: DatasetCommand) -> Result<()> {
    let DatasetCommand::Anonymize(args) = cmd;
    if args.json && args.output.as_deref() == Some(Path::new("-")) {
        bail!("--json and -o - would both write to standard output: write the table to a file");
    }
    let policy = Policy::from_file(&args.policy)?;
    let release = match &args.csv {
        Some(csv) => {
            let bytes = std::fs::read(csv).with_context(|| format!("reading {}", csv.display()))?;
            block_on(async { Ok(medmesh_service::anonymize_csv(bytes, policy).await?) })?
        }
        None => {
            let query = RecordQuery {
                owner: None,
                patient: args.patient.as_deref().map(PatientRef::new).transpose()?,
                content_type: args.content_type.as_deref().map(str::parse).transpose()?,
                since: parse_time("since", args.since.as_deref())?,
                until: parse_time("until", args.until.as_deref())?,
                limit: 0,
            };
            let node = Node::open(data_dir)?;
            let passphrase = source.get(false)?;
            node.unlock_index(&passphrase)?;
            let keys = node.unlock_keys(&passphrase)?;
            let services = node.services(Some(keys));
            block_on(async {
                Ok(services
                    .anonymize_dataset(DatasetSource::Records(query), policy, CLI_ACTOR)
                    .await?)
            })?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&release)?);
    } else {
        // The report on standard error when the table goes to standard output.
        let to_stdout = args.output.as_deref() == Some(Path::new("-"));
        if to_stdout {
            eprint!("{release}");
        } else {
            print!("{release}");
        }
    }
    let Some(table) = &release.table else {
        bail!(
            "no transformation meets the policy's models within its suppression limit: \
             relax the models or allow more suppression"
        );
    };
    if let Some(output) = &args.output {
        if output == Path::new("-") {
            table.write_csv(std::io::stdout().lock(), b',')?;
        } else {
            let file = std::fs::File::create(output)
                .with_context(|| format!("creating {}", output.display()))?;
            table.write_csv(std::io::BufWriter::new(file), b',')?;
            if !args.json {
                println!(
                    "released table: {} ({} rows)",
                    output.display(),
                    table.len()
                );
            }
        }
    }
    Ok(())
}
