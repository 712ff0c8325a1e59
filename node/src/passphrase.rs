//! Where the passphrase comes from: `--passphrase-file`, `MEDMESH_PASSPHRASE`, or an
//! interactive prompt. It is never logged or echoed.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use medmesh_crypto::Passphrase;

/// Environment variable holding the passphrase.
pub const ENV: &str = "MEDMESH_PASSPHRASE";

/// The configured passphrase source.
#[derive(Debug, Clone)]
pub struct PassphraseSource {
    /// `--passphrase-file`.
    pub file: Option<PathBuf>,
}

impl PassphraseSource {
    /// Obtains the passphrase; `confirm` asks twice when prompting (for new keys).
    pub fn get(&self, confirm: bool) -> Result<Passphrase> {
        if let Some(path) = &self.file {
            return Passphrase::from_file(path)
                .with_context(|| format!("reading the passphrase from {}", path.display()));
        }
        if let Ok(value) = std::env::var(ENV) {
            return Passphrase::new(value).with_context(|| format!("${ENV}"));
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "a passphrase is needed to unlock the institution's keys: \
                 set {ENV} or pass --passphrase-file FILE"
            );
        }
        let first =
            rpassword::prompt_password("medmesh passphrase: ").context("reading the passphrase")?;
        if confirm {
            let second = rpassword::prompt_password("repeat passphrase: ")
                .context("reading the passphrase")?;
            if first != second {
                bail!("the two passphrases differ");
            }
        }
        Ok(Passphrase::new(first)?)
    }
}
