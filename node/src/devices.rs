//! `medmesh device …`: register, list and revoke medical devices while the node is
//! stopped (a running node takes the same through `POST/GET/DELETE /v1/devices`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use medmesh_core::PatientRef;
use medmesh_crypto::{DeviceAlgorithm, DevicePublicKey};
use medmesh_service::{DeviceRegistration, DeviceView};
use time::format_description::well_known::Rfc3339;

use crate::commands::CLI_ACTOR;
use crate::datadir::{block_on, Node};
use crate::passphrase::PassphraseSource;

/// `medmesh device …`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device: its readings are then accepted, signed with its key.
    Register {
        /// Its id: one MQTT topic level, 1 to 64 letters, digits, `.`, `_`, `-`. It is
        /// visible in topics: never a patient identifier.
        id: String,
        /// The patient it measures.
        #[arg(long)]
        patient: String,
        /// Its type (e.g. bedside-monitor), which alert rules may select.
        #[arg(long = "type", default_value = "bedside-monitor")]
        device_type: String,
        /// falcon-512 or ed25519.
        #[arg(long, default_value = "falcon-512")]
        algorithm: String,
        /// A file holding its public key in hex.
        #[arg(long)]
        public_key_file: PathBuf,
    },
    /// List devices (revoked ones too).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its messages are refused from now on; its id is never reused.
    Revoke {
        /// The device id.
        id: String,
    },
}

pub fn run(data_dir: &Path, source: &PassphraseSource, cmd: DeviceCommand) -> Result<()> {
    // Validate before opening anything.
    let registration = match &cmd {
        DeviceCommand::Register {
            id,
            patient,
            device_type,
            algorithm,
            public_key_file,
        } => {
            let Some(algorithm) = DeviceAlgorithm::from_name(algorithm) else {
                bail!("--algorithm `{algorithm}` is not falcon-512 or ed25519");
            };
            let text = std::fs::read_to_string(public_key_file)
                .with_context(|| format!("reading {}", public_key_file.display()))?;
            let bytes = hex::decode(text.trim()).with_context(|| {
                format!(
                    "{} must hold the public key in hex",
                    public_key_file.display()
                )
            })?;
            let key = DevicePublicKey::new(algorithm, bytes)
                .with_context(|| format!("the key in {}", public_key_file.display()))?;
            Some(DeviceRegistration {
                id: id.clone(),
                patient: PatientRef::new(patient)?,
                device_type: device_type.clone(),
                key,
            })
        }
        _ => None,
    };
    let node = Node::open(data_dir)?;
    node.unlock_index(&source.get(false)?)?;
    let services = node.services(None);
    match cmd {
        DeviceCommand::Register { .. } => {
            let registration = registration.expect("validated above");
            let device =
                block_on(async { Ok(services.register_device(registration, CLI_ACTOR).await?) })?;
            println!(
                "registered device {} ({}, {} key {})",
                device.id, device.device_type, device.algorithm, device.key_fingerprint
            );
        }
        DeviceCommand::List { json } => {
            let devices = block_on(async { Ok(services.devices().await?) })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                for d in &devices {
                    println!("{}", line(d)?);
                }
            }
        }
        DeviceCommand::Revoke { id } => {
            block_on(async { Ok(services.revoke_device(&id, CLI_ACTOR).await?) })?;
            println!("revoked device {id}");
        }
    }
    Ok(())
}

fn line(d: &DeviceView) -> Result<String> {
    let state = match d.revoked {
        Some(t) => format!("revoked {}", t.format(&Rfc3339)?),
        None => "active".into(),
    };
    let seen = match d.last_seen {
        Some(t) => t.format(&Rfc3339)?,
        None => "never".into(),
    };
    Ok(format!(
        "{}  {}  {}  {}  counter {}  last seen {}  firmware {}  {}",
        d.id,
        d.device_type,
        d.algorithm,
        d.key_fingerprint,
        d.counter,
        seen,
        d.firmware.as_deref().unwrap_or("-"),
        state
    ))
}
