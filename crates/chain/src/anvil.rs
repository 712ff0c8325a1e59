//! Finding and starting anvil (Foundry's local EVM chain) from the pinned npm package.
//!
//! Order: `$MEDMESH_ANVIL`, then `contracts/node_modules/.bin/anvil` in this repository
//! (installed by `npm install` in `contracts/`, which `.ci/run` does), then `anvil` on PATH.

use std::path::PathBuf;

use alloy::node_bindings::{Anvil, AnvilInstance};

use crate::ChainError;

/// The anvil binary to use.
pub fn binary() -> Result<PathBuf, ChainError> {
    if let Some(path) = std::env::var_os("MEDMESH_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    let in_repo =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contracts/node_modules/.bin/anvil");
    if in_repo.exists() {
        return Ok(in_repo);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("anvil"))
        .find(|p| p.is_file());
    on_path.ok_or_else(|| {
        ChainError::Anvil(
            "not found: run `npm install` in contracts/ (it installs @foundry-rs/anvil), \
             or set MEDMESH_ANVIL to the binary"
                .into(),
        )
    })
}

/// Starts anvil on a free local port with its ten funded dev accounts.
pub fn spawn() -> Result<AnvilInstance, ChainError> {
    Anvil::at(binary()?)
        .try_spawn()
        .map_err(|e| ChainError::Anvil(e.to_string()))
}
