//! One function per CLI command. Each validates its input before touching anything, so
//! a user error changes nothing.

use std::fs;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use medmesh_core::{ContentType, PatientRef, RecordId};
use medmesh_crypto::{Keystore, Passphrase};
use medmesh_net::Transfer;
use medmesh_service::{Ingest, OpenedRecord, Progress, RecordSummary};
use medmesh_store::{RecordQuery, TokenScope};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{self, Config};
use crate::datadir::{block_on, open_store, Node};
use crate::passphrase::PassphraseSource;
use crate::progress::progress_bar;

/// Who the CLI acts as in the audit log.
pub const CLI_ACTOR: &str = "cli";

pub(crate) fn parse_id(id: &str) -> Result<RecordId> {
    Ok(id.parse::<RecordId>()?)
}

pub fn init(data_dir: &Path, institution: &str, source: &PassphraseSource) -> Result<()> {
    check_can_init(data_dir, institution)?;
    init_with(data_dir, institution, &source.get(true)?)
}

/// Whether `data_dir` is free for a new node and the institution name is usable.
pub fn check_can_init(data_dir: &Path, institution: &str) -> Result<()> {
    if data_dir.join(config::FILE_NAME).exists() || data_dir.join("keys").exists() {
        bail!(
            "{} already holds a medmesh node; choose another --data-dir (nothing was changed)",
            data_dir.display()
        );
    }
    let institution = institution.trim();
    if institution.is_empty() || institution.chars().any(char::is_control) {
        bail!("--institution must be a non-empty name without control characters");
    }
    Ok(())
}

/// Creates a node in `data_dir` with keys locked by `passphrase`.
pub fn init_with(data_dir: &Path, institution: &str, passphrase: &Passphrase) -> Result<()> {
    check_can_init(data_dir, institution)?;
    let institution = institution.trim();
    let config_path = data_dir.join(config::FILE_NAME);
    let keys_dir = data_dir.join("keys");
    passphrase.check_new()?;

    let result = (|| -> Result<(String, String)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let keystore = Keystore::create(&keys_dir, institution, passphrase)?;
        open_store(&data_dir.join("store"))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config_path)
            .and_then(|mut f| f.write_all(Config::template(institution).as_bytes()))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let rules_path = data_dir.join(config::RULES_FILE);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&rules_path)
            .and_then(|mut f| f.write_all(medmesh_service::alerts::default_toml().as_bytes()))
            .with_context(|| format!("writing {}", rules_path.display()))?;
        // A new node is private from the start (the public certificate too, like all
        // of the data dir), so its first start has nothing to repair.
        medmesh_store::secure_permissions(data_dir)
            .with_context(|| format!("securing the permissions of {}", data_dir.display()))?;
        Ok((
            keystore.certificate()?.id().to_string(),
            keystore.node_identity()?.peer_id(),
        ))
    })();
    match result {
        Ok((fingerprint, peer_id)) => {
            println!("initialized a medmesh node in {}", data_dir.display());
            println!("  institution:  {institution}");
            println!("  certificate:  {fingerprint} (ML-DSA-65+Ed25519, ML-KEM-768+X25519)");
            println!("  node peer id: {peer_id}");
            Ok(())
        }
        Err(e) => {
            // Leave no half-made node behind, so `init` can simply be run again.
            let _ = fs::remove_dir_all(&keys_dir);
            let _ = fs::remove_dir_all(data_dir.join("store"));
            let _ = fs::remove_file(&config_path);
            Err(e)
        }
    }
}

/// `medmesh put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The file to store (`-` reads standard input).
    file: PathBuf,
    /// Media type, e.g. application/fhir+json; guessed from the content if omitted.
    #[arg(long = "type", value_name = "TYPE")]
    content_type: Option<String>,
    /// The patient reference (MRN or pseudonym) the record is about.
    #[arg(long)]
    patient: Option<String>,
}

pub fn put(data_dir: &Path, source: &PassphraseSource, args: PutArgs) -> Result<()> {
    let request = Ingest {
        content_type: args
            .content_type
            .as_deref()
            .map(str::parse::<ContentType>)
            .transpose()?,
        patient: args.patient.as_deref().map(PatientRef::new).transpose()?,
        actor: CLI_ACTOR.into(),
    };
    let (input, size): (Box<dyn Read + Send>, Option<u64>) = if args.file == Path::new("-") {
        (Box::new(io::stdin()), None)
    } else {
        let file = fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            bail!(
                "{} is a directory; medmesh stores files",
                args.file.display()
            );
        }
        (Box::new(file), Some(meta.len()))
    };
    let node = Node::open(data_dir)?;
    let services = node.services(Some(node.unlock_keys(&source.get(false)?)?));
    let bar = progress_bar(size, "encrypting");
    let progress: Progress = {
        let bar = bar.clone();
        Arc::new(move |n| bar.set_position(n))
    };
    let stored = block_on(async {
        Ok(services
            .ingest_with_progress(input, request, progress)
            .await?)
    })?;
    bar.finish_and_clear();
    println!("{}", stored.id);
    Ok(())
}

/// `medmesh get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The record id. Fetched from peers first if it is not stored here.
    id: String,
    #[command(flatten)]
    net: crate::network::NetArgs,
    /// Where to write the plaintext (`-` for standard output).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// `medmesh fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The record id.
    id: String,
    #[command(flatten)]
    net: crate::network::NetArgs,
    /// Move blocks by bitswap instead of the fast path.
    #[arg(long)]
    bitswap: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Fetches a record's (encrypted) blocks from peers and indexes it here, without
/// decrypting: a replica, or the first step of reading a record shared with us.
pub fn fetch(data_dir: &Path, args: FetchArgs) -> Result<()> {
    let id = parse_id(&args.id)?;
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    let transfer = if args.bitswap {
        Transfer::Bitswap
    } else {
        Transfer::FastPath
    };
    let report = block_on(crate::network::fetch_for_cli(
        &node, &services, id, &args.net, transfer,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "record {id}: {} of {} blocks fetched ({} bytes), {} already here; from {}",
            report.blocks_fetched,
            report.blocks_total,
            report.bytes_fetched,
            report.blocks_present,
            if report.providers.is_empty() {
                "-".to_string()
            } else {
                report.providers.join(", ")
            }
        );
    }
    Ok(())
}

pub fn get(data_dir: &Path, source: &PassphraseSource, args: GetArgs) -> Result<()> {
    let id = parse_id(&args.id)?;
    let to_stdout = args.output == Path::new("-");
    if !to_stdout && args.output.exists() && !args.force {
        bail!(
            "{} exists; pass --force to overwrite it",
            args.output.display()
        );
    }
    let node = Node::open(data_dir)?;
    let services = node.services(Some(node.unlock_keys(&source.get(false)?)?));
    block_on(async {
        if !services.has_record(id).await? {
            let report =
                crate::network::fetch_for_cli(&node, &services, id, &args.net, Transfer::FastPath)
                    .await?;
            eprintln!(
                "fetched {} blocks ({} bytes) from {}",
                report.blocks_fetched,
                report.bytes_fetched,
                report.providers.join(", ")
            );
        }
        let record = services.open_record(id, CLI_ACTOR).await?;
        write_plaintext(record, &args.output, to_stdout).await
    })
}

/// Writes an opened record's plaintext to standard output or to `output`: a private
/// temp file first, which takes the final name only once every chunk has verified, so a
/// failed read leaves no partial record.
pub(crate) async fn write_plaintext(
    record: OpenedRecord,
    output: &Path,
    to_stdout: bool,
) -> Result<()> {
    if to_stdout {
        let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
        // A reader that stops early (`| head`) makes this fail with EPIPE, which
        // `main` treats as a quiet end; the dropped stream stops the read.
        return copy_plaintext(record, &mut out)
            .await
            .context("writing the record to standard output");
    }
    let temp = partial_path(output);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    let written = copy_plaintext(record, &mut file)
        .await
        .and_then(|()| Ok(file.sync_all()?))
        .and_then(|()| Ok(fs::rename(&temp, output)?));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Writes an opened record's plaintext to `out` with a progress bar; fails unless
/// every byte of the record arrived (a chunk that fails verification ends the stream).
async fn copy_plaintext(mut record: OpenedRecord, out: &mut impl Write) -> Result<()> {
    let bar = progress_bar(Some(record.meta.size), "decrypting");
    let mut written = 0u64;
    while let Some(chunk) = record.body.recv().await {
        let chunk = chunk.context("reading the record")?;
        out.write_all(&chunk)?;
        written += chunk.len() as u64;
        bar.set_position(written);
    }
    out.flush()?;
    bar.finish_and_clear();
    if written != record.meta.size {
        bail!(
            "the record ended after {written} of {} bytes; it was not fully read",
            record.meta.size
        );
    }
    Ok(())
}

fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "record".into());
    output.with_file_name(format!(".{name}.medmesh-partial"))
}

/// `medmesh ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only records about this patient reference.
    #[arg(long)]
    patient: Option<String>,
    /// Only records of this media type.
    #[arg(long = "type", value_name = "TYPE")]
    content_type: Option<String>,
    /// Only records created at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only records created before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Show at most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_time(flag: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).with_context(|| {
                format!("--{flag} `{v}` is not an RFC 3339 time such as 2026-01-31T00:00:00Z")
            })
        })
        .transpose()
}

pub fn ls(data_dir: &Path, source: &PassphraseSource, args: LsArgs) -> Result<()> {
    let query = RecordQuery {
        owner: None,
        patient: args.patient.as_deref().map(PatientRef::new).transpose()?,
        content_type: args.content_type.as_deref().map(str::parse).transpose()?,
        since: parse_time("since", args.since.as_deref())?,
        until: parse_time("until", args.until.as_deref())?,
        limit: args.limit.unwrap_or(0),
    };
    let node = Node::open(data_dir)?;
    node.unlock_index(&source.get(false)?)?;
    let services = node.services(None);
    // Each record is printed as the index is read, so a large store's first lines come
    // at once and memory stays flat; the first write error stops the scan.
    let failed: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
    let visit = {
        let failed = failed.clone();
        let mut out = io::stdout();
        move |record: RecordSummary| match print_record(&mut out, &record, args.json) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                ControlFlow::Break(())
            }
        }
    };
    block_on(async { Ok(services.scan(query, visit).await?) })?;
    let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One line of `ls`: JSON, or a table row.
fn print_record(out: &mut impl Write, record: &RecordSummary, json: bool) -> Result<()> {
    let RecordSummary { id, meta } = record;
    if json {
        let line = serde_json::json!({ "id": id, "meta": meta });
        writeln!(out, "{line}")?;
    } else {
        writeln!(
            out,
            "{id}  {:>10}  {:<24}  {}  {}",
            human_bytes(meta.size),
            meta.content_type,
            meta.created.format(&Rfc3339)?,
            meta.patient.as_ref().map_or("-", |p| p.as_str())
        )?;
    }
    Ok(())
}

pub fn info(data_dir: &Path, source: &PassphraseSource, id: &str, json: bool) -> Result<()> {
    let id = parse_id(id)?;
    let node = Node::open(data_dir)?;
    node.unlock_index(&source.get(false)?)?;
    let services = node.services(None);
    let (meta, manifest) = block_on(async { Ok(services.record(id).await?) })?;
    let recipients: Vec<String> = manifest
        .body
        .key_wraps
        .iter()
        .map(|w| w.recipient.to_string())
        .collect();
    if json {
        let value = serde_json::json!({
            "id": id,
            "meta": meta,
            "chunks": manifest.body.chunks.len(),
            "chunk_size": manifest.body.envelope.chunk_size,
            "aead": manifest.body.envelope.aead,
            "recipients": recipients,
            "signer": manifest.signature.signer,
            "signature_algorithm": manifest.signature.algorithm,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("record:       {id}");
    println!("type:         {}", meta.content_type);
    println!(
        "size:         {} ({} bytes)",
        human_bytes(meta.size),
        meta.size
    );
    println!("created:      {}", meta.created.format(&Rfc3339)?);
    println!("owner:        {}", meta.owner);
    println!(
        "patient:      {}",
        meta.patient.as_ref().map_or("-", |p| p.as_str())
    );
    println!(
        "chunks:       {} × {} (AES-256-GCM)",
        manifest.body.chunks.len(),
        human_bytes(manifest.body.envelope.chunk_size.into())
    );
    println!("recipients:   {}", recipients.join(", "));
    println!("signed by:    {}", manifest.signature.signer);
    Ok(())
}

pub fn rm(data_dir: &Path, ids: &[String]) -> Result<()> {
    let ids = ids
        .iter()
        .map(|i| parse_id(i))
        .collect::<Result<Vec<_>>>()?;
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    block_on(async {
        // Check them all first: an unknown id in the list removes nothing.
        for id in &ids {
            if !services.has_record(*id).await? {
                anyhow::bail!("no record {id} in this store (see `medmesh ls`)");
            }
        }
        for id in ids {
            let report = services.remove(id, CLI_ACTOR).await?;
            println!(
                "removed {id} ({} blocks, {} freed)",
                report.blocks_removed,
                human_bytes(report.bytes_freed)
            );
        }
        Ok(())
    })
}

pub fn gc(data_dir: &Path) -> Result<()> {
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    let report = block_on(async { Ok(services.gc(CLI_ACTOR).await?) })?;
    println!(
        "removed {} unreferenced blocks and {} temp files, {} freed",
        report.blocks_removed,
        report.temp_files_removed,
        human_bytes(report.bytes_freed)
    );
    Ok(())
}

pub fn check(data_dir: &Path) -> Result<()> {
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    let report = block_on(async { Ok(services.check().await?) })?;
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    println!(
        "checked {} records, {} blocks; {} unreferenced blocks (`medmesh gc` removes them)",
        report.records, report.blocks_checked, report.unreferenced_blocks
    );
    if !report.problems.is_empty() {
        bail!(
            "the store has {} problem(s), listed above",
            report.problems.len()
        );
    }
    println!("store is consistent");
    Ok(())
}

/// `medmesh audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first altered entry.
    Verify,
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

pub fn audit(data_dir: &Path, cmd: AuditCommand) -> Result<()> {
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    match cmd {
        AuditCommand::Verify => match block_on(async { Ok(services.audit_verify().await?) })? {
            Ok(summary) => {
                println!(
                    "audit log verifies: {} entries, head {}",
                    summary.entries, summary.head
                );
                Ok(())
            }
            Err(broken) => bail!(broken),
        },
        AuditCommand::Log { from, limit } => {
            let mut out = io::stdout().lock();
            let page = block_on(async { Ok(services.audit_page(from, limit).await?) })?;
            for entry in page {
                writeln!(out, "{}", serde_json::to_string(&entry)?)?;
            }
            Ok(())
        }
    }
}

/// `medmesh keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the institution's public certificate (ASCII armor).
    Export {
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Show the certificate fingerprint and the node's peer id.
    Show,
}

pub fn keys(data_dir: &Path, cmd: KeysCommand) -> Result<()> {
    let config = Config::load(data_dir)?;
    let keystore = Keystore::open(&data_dir.join("keys"))?;
    let cert = keystore.certificate()?;
    match cmd {
        KeysCommand::Export { output: None } => {
            io::stdout().write_all(&cert.to_armored()?)?;
        }
        KeysCommand::Export { output: Some(path) } => {
            fs::write(&path, cert.to_armored()?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        KeysCommand::Show => {
            println!("institution:  {}", config.institution);
            println!("certificate:  {}", cert.id());
            println!("node peer id: {}", keystore.node_identity()?.peer_id());
        }
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `medmesh token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for the HTTP API; prints its secret once.
    Create {
        /// What the token is for.
        #[arg(long, default_value = "operator")]
        name: String,
        /// read, write or admin.
        #[arg(long, default_value = "read")]
        scope: String,
    },
    /// List tokens (without secrets).
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token id (as `token list` shows it).
        id: String,
    },
}

pub fn token(data_dir: &Path, cmd: TokenCommand) -> Result<()> {
    // Validate before opening anything.
    let scope = match &cmd {
        TokenCommand::Create { scope, .. } => Some(scope.parse::<TokenScope>()?),
        _ => None,
    };
    let node = Node::open(data_dir)?;
    let services = node.services(None);
    match cmd {
        TokenCommand::Create { name, .. } => {
            let scope = scope.expect("parsed above");
            let (token, secret) =
                block_on(async { Ok(services.create_token(name, scope, CLI_ACTOR).await?) })?;
            eprintln!(
                "created {scope} token {} ({}); it is shown only now:",
                token.id, token.name
            );
            println!("{secret}");
        }
        TokenCommand::List => {
            for t in block_on(async { Ok(services.tokens().await?) })? {
                println!(
                    "{}  {:<5}  {}  {}",
                    t.id,
                    t.scope,
                    t.created.format(&Rfc3339)?,
                    t.name
                );
            }
        }
        TokenCommand::Revoke { id } => {
            block_on(async { Ok(services.revoke_token(id.clone(), CLI_ACTOR).await?) })?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}
