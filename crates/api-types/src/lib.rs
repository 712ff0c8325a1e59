//! The request and response bodies of the medmesh node's HTTP API, shared by the server
//! (`medmesh-api`) and its clients (`medmesh-sdk`), so the two cannot drift apart.
//!
//! Plain serde types with no server code: a client compiles them without axum, redb,
//! libp2p or the EVM. The `openapi` feature derives their OpenAPI schemas (utoipa) for
//! the server's `/openapi.json`.

mod access;
mod audit;
mod auth;
mod datasets;
mod grants;
mod network;
mod problem;
mod records;
mod system;
mod telemetry;

pub use access::{
    ChallengeQuery, ChallengeResponse, ConsentLinkRequest, ConsentLinkResponse, KeyRequestBody,
    KeyResponse,
};
pub use audit::{AuditEntryView, AuditPage, AuditVerification};
pub use auth::{NonceResponse, SessionResponse, SignInRequest, WhoAmI};
pub use datasets::{
    BudgetRequest, BudgetView, CountCell, CountFilter, CountRequest, CountResponse, DatasetPreview,
    DatasetPreviewRequest, RecordSelection,
};
pub use grants::{
    AuditAnchorInfo, AuditAnchoring, ChainInfo, GrantEntry, NodeRegistration, RelayResponse,
    SignedGrant, SignedRevocation,
};
pub use medmesh_core::{FetchReport, PeerInfo, ReplicaOutcome, Transfer};
pub use network::{
    DialRequest, Dialed, FetchRequest, NetworkStatus, ReplicationRequest, ReplicationStatus,
};
pub use problem::Problem;
pub use records::{RecordEntry, RecordInfo, RecordPage, Removed};
pub use system::{CheckResult, CreatedToken, GcResult, Health, TokenRequest, TokenView};
pub use telemetry::{AlertView, DeviceInfo, DeviceRequest, ReadingView, TelemetryStatus};
