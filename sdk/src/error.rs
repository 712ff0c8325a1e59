use medmesh_api_types::Problem;

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with an error (its problem details say why).
    #[error("{} {}: {}", .problem.status, .problem.title, .problem.detail)]
    Api {
        /// The server's RFC 9457 problem details.
        problem: Problem,
    },
    /// The node could not be reached or the answer could not be read.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The base URL is not usable.
    #[error("invalid node URL `{0}`: expected e.g. http://127.0.0.1:8420")]
    InvalidUrl(String),
    /// A download ended before `Content-Length` bytes (the node cut it: a chunk failed
    /// verification, or the connection broke).
    #[error("download truncated: got {got} of {expected} bytes")]
    Truncated {
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// Local file I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signing with the wallet failed.
    #[error("wallet: {0}")]
    Wallet(String),
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { problem } => Some(problem.status),
            _ => None,
        }
    }
}
