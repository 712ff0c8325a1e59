/// What can go wrong talking to the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC call failed (node unreachable, or the call reverted with this reason).
    #[error("chain call failed: {0}")]
    Rpc(String),
    /// A contract deployment produced no address.
    #[error("deploying {0} failed: {1}")]
    Deploy(&'static str, String),
    /// The cache snapshot could not be read or written.
    #[error("grant cache snapshot {path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Anvil could not be found or started.
    #[error("anvil: {0}")]
    Anvil(String),
}

impl ChainError {
    pub(crate) fn rpc(e: impl std::fmt::Display) -> Self {
        ChainError::Rpc(e.to_string())
    }
}
