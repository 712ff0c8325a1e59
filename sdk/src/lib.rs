//! Rust client of the medmesh node's HTTP API, with wallet helpers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), medmesh_sdk::Error> {
//! use medmesh_sdk::{Client, UploadOptions};
//!
//! let node = Client::new("http://127.0.0.1:8420")?.with_token("mm_…");
//! let record = node
//!     .upload_file("bundle.json".as_ref(), UploadOptions { patient: Some("MRN-42".into()), ..Default::default() })
//!     .await?;
//! let bytes = node.download(&record.id.to_string()).await?;
//! # let _ = bytes; Ok(()) }
//! ```
//!
//! Every method maps to one endpoint of the OpenAPI document (`/openapi.json`); errors
//! carry the server's RFC 9457 problem details. Request and response types are `medmesh-api-types`,
//! the server's own, so client and server cannot drift apart; the SDK compiles none of
//! the server (no axum, redb, libp2p or EVM).

mod client;
mod error;
pub mod wallet;

pub use client::{Client, SearchQuery, UploadOptions};
pub use error::Error;
pub use medmesh_api_types::{
    AlertView, AuditAnchorInfo, AuditAnchoring, AuditEntryView, AuditPage, AuditVerification,
    BudgetRequest, BudgetView, ChainInfo, CheckResult, ConsentLinkResponse, CountCell, CountFilter,
    CountRequest, CountResponse, CreatedToken, DatasetPreview, DatasetPreviewRequest, DeviceInfo,
    DeviceRequest, Dialed, FetchReport, FetchRequest, GcResult, GrantEntry, Health, KeyResponse,
    NetworkStatus, NodeRegistration, NonceResponse, PeerInfo, Problem, ReadingView, RecordEntry,
    RecordInfo, RecordPage, RecordSelection, RelayResponse, Removed, ReplicaOutcome,
    ReplicationStatus, SessionResponse, SignedGrant, SignedRevocation, TelemetryStatus, TokenView,
    Transfer, WhoAmI,
};
