//! The node's operations, once, for every transport.
//!
//! [`NodeServices`] owns what a running node has — the store, the unlocked institution
//! keys, the chain services (key release, relaying), the peer-to-peer network, its
//! settings — and an [`EventBus`] of typed [`NodeEvent`]s, to which transports subscribe
//! for one [`Audience`] ([`NodeServices::subscribe_events`]). The HTTP API, the MQTT
//! bridge and the CLI parse their input, call one method here and map the result; none
//! of them holds node logic of its own.
//!
//! Every method is `async` and runs blocking or CPU-heavy work (redb transactions,
//! block files, signatures, key unwrap) on tokio's blocking pool, so a transport cannot
//! stall the executor by calling it.

mod access;
pub mod alerts;
mod announce;
mod chain_life;
mod datasets;
mod denials;
mod error;
mod events;
mod key_exchange;
mod keys;
mod network;
mod notify;
mod records;
mod services;
pub mod telemetry;
pub mod webhooks;

pub use access::{ConsentLinkView, GrantFilter};
pub use announce::AnnounceStats;
pub use chain_life::{
    AnchorSettings, AnchorView, AnchoringView, ChainLifeSettings, ChainLifeView, NodeIdentity,
    RegistrationView, AUDIT_POLL, REGISTRATION_RETRY,
};
pub use datasets::{anonymize_csv, DatasetSource, MAX_DATASET_BYTES};
pub use denials::DenialLog;
pub use error::ServiceError;
pub use events::{Audience, EventBus, NodeEvent};
pub use key_exchange::{GranteeKeys, ReleasedKey};
pub use keys::NodeKeys;
pub use network::{NetworkView, ReplicationView};
pub use notify::{Delivery, EventStream};
pub use records::{Ingest, OpenedRecord, Progress, RecordSummary};
pub use services::{ChainServices, NodeServices, ServiceSettings};
pub use telemetry::{
    DeviceReading, DeviceRegistration, DeviceView, FlushReport, Outcome, Rejection, Telemetry,
    TelemetrySettings, TelemetryStats,
};
pub use webhooks::{spawn_webhooks, WebhookEndpoint, WebhookSecret, Webhooks};

// A poisoned lock only means another thread panicked while holding it; the data are
// plain counters and maps that stay usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
