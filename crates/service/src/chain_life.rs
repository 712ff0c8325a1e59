//! The node's life on chain, in the background once the chain is connected
//! ([`NodeServices::start_chain_life`]):
//!
//! - **Registration.** The node's account (the relayer's) registers this node in
//!   `NodeRegistry` — its PeerId, the institution's certificate fingerprint, the
//!   institution's name — once the registry's admins approved the account as an
//!   institution. If `nodeOf(account)` already lists this node, nothing is sent. Until
//!   the account is approved the node warns (naming the account) and looks again every
//!   [`ChainLifeSettings::retry`], without holding up anything else; the registry is
//!   read again at that pace afterwards too, so the view follows an admin's revocation.
//! - **Audit anchoring.** Once registered, the node anchors its audit log's head in
//!   `AuditAnchor`: every [`AnchorSettings::interval`], or sooner once
//!   [`AnchorSettings::every_entries`] new entries accumulated, and only when the log
//!   grew since the last anchor. Each anchor is audited as an `audit_anchored` entry;
//!   the head it anchored is the hash of the entry *before* that one (an entry cannot
//!   hold its own hash), which the entry says. The entry recording an anchor does not by
//!   itself make the next anchor due. At start the node walks its log and compares it
//!   with its last anchor on chain; a log that does not verify, or does not reach that
//!   anchor, is not anchored again (the node says why, loudly) until it is resolved.
//!
//! What the task sees is kept as a [`ChainLifeView`] for the transports
//! ([`NodeServices::chain_life`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::DynProvider;
use medmesh_chain::anchor::{self, audit_head};
use medmesh_chain::registry::registry_name;
use medmesh_chain::{ChainError, Deployment, Relayer};
use medmesh_core::InstitutionId;
use medmesh_net::PeerId;
use medmesh_store::{AuditAction, AuditEvent, Store};
use tokio::time::Instant;

use crate::error::{blocking, ServiceError};
use crate::lock;
use crate::services::NodeServices;

/// How often an unapproved (or unregistered) node looks at `NodeRegistry` again.
pub const REGISTRATION_RETRY: Duration = Duration::from_secs(60);
/// How often the node counts new audit entries (a cheap read of the new ones only).
pub const AUDIT_POLL: Duration = Duration::from_secs(10);
/// Longest a chain read of the background task may take.
const READ_DEADLINE: Duration = Duration::from_secs(30);
/// Audit entries read at once while catching up.
const PAGE: usize = 1000;
/// Who audit entries of the node's own doing name as actor.
const ACTOR: &str = "node";

/// Who this node is, as it registers itself.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node's libp2p PeerId (registered as its multihash bytes).
    pub peer_id: PeerId,
    /// The institution's v6 certificate (its 32-byte fingerprint is registered).
    pub certificate: InstitutionId,
    /// The institution's display name (cut to the registry's 128 bytes).
    pub name: String,
}

/// When the node anchors its audit log's head (`[audit]` of `medmesh.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorSettings {
    /// Longest time between two anchors of a growing log; zero turns anchoring off.
    pub interval: Duration,
    /// Anchor sooner once this many entries were added since the last anchor; zero
    /// anchors by time only.
    pub every_entries: u64,
}

impl AnchorSettings {
    /// Default [`AnchorSettings::interval`]: an hour.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
    /// Default [`AnchorSettings::every_entries`].
    pub const DEFAULT_EVERY_ENTRIES: u64 = 1000;

    /// Whether the node anchors at all.
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

impl Default for AnchorSettings {
    fn default() -> Self {
        Self {
            interval: Self::DEFAULT_INTERVAL,
            every_entries: Self::DEFAULT_EVERY_ENTRIES,
        }
    }
}

/// Settings of [`NodeServices::start_chain_life`].
#[derive(Debug, Clone)]
pub struct ChainLifeSettings {
    /// What the node registers.
    pub identity: NodeIdentity,
    /// When it anchors its audit log.
    pub anchor: AnchorSettings,
    /// How often it reads `NodeRegistry` (and retries registering, or anchoring after a
    /// failure): [`REGISTRATION_RETRY`].
    pub retry: Duration,
    /// How often it counts new audit entries: [`AUDIT_POLL`].
    pub poll: Duration,
}

impl ChainLifeSettings {
    /// `identity` and `anchor` with the default pace.
    pub fn new(identity: NodeIdentity, anchor: AnchorSettings) -> Self {
        Self {
            identity,
            anchor,
            retry: REGISTRATION_RETRY,
            poll: AUDIT_POLL,
        }
    }
}

/// The node's registration as the background task last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationView {
    /// The node's account: the institution's address in `NodeRegistry`.
    pub account: Address,
    /// The PeerId this node registers.
    pub peer_id: String,
    /// The certificate fingerprint it registers (upper-case hex, the institution id).
    pub cert_fingerprint: String,
    /// The name it registers.
    pub name: String,
    /// Whether the registry was read at all yet (until then the flags below are false).
    pub checked: bool,
    /// Whether the account is an approved institution.
    pub approved: bool,
    /// Whether the registry lists this very node (PeerId, fingerprint, name) for it.
    pub registered: bool,
    /// The registration this node sent, if it sent one since it started.
    pub transaction: Option<B256>,
    /// What stands in the way (not approved, chain unreachable, refused), if anything.
    pub error: Option<String>,
}

/// One anchored head, as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorView {
    /// Position in the account's anchors (`AuditAnchor.anchorAt`).
    pub index: u64,
    /// The anchored head: the hash of entry `entries - 1` (hex).
    pub head: String,
    /// Entries it covers.
    pub entries: u64,
    /// When, Unix seconds (block time, or the node's clock for an anchor it just sent).
    pub anchored_at: u64,
    /// The transaction, for an anchor this node sent since it started.
    pub transaction: Option<B256>,
}

/// The node's audit anchoring as the background task last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoringView {
    /// Whether anchoring is on ([`AnchorSettings::enabled`]).
    pub enabled: bool,
    /// [`AnchorSettings::interval`] in seconds.
    pub interval_secs: u64,
    /// [`AnchorSettings::every_entries`].
    pub every_entries: u64,
    /// The newest anchor of the account.
    pub last: Option<AnchorView>,
    /// Why the last attempt failed, or why anchoring stopped, if so.
    pub error: Option<String>,
}

/// What [`NodeServices::chain_life`] shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLifeView {
    /// Registration in `NodeRegistry`.
    pub registration: RegistrationView,
    /// Anchoring in `AuditAnchor`.
    pub anchoring: AnchoringView,
}

pub(crate) type SharedView = Arc<Mutex<ChainLifeView>>;

impl NodeServices {
    /// Starts registering the node and anchoring its audit log in the background (see
    /// the module's documentation), with the chain's relaying account. Needs the chain
    /// ([`ServiceError::NoChain`]) and an account on it whose address the relayer knows
    /// (one made by [`Relayer::connect`]; [`ServiceError::NoRelayer`] otherwise);
    /// a certificate whose fingerprint is not 32 bytes (not v6) is
    /// [`ServiceError::InvalidInput`]. Starts once; a later call returns `false`.
    /// Must be called within a tokio runtime.
    pub fn start_chain_life(&self, settings: ChainLifeSettings) -> Result<bool, ServiceError> {
        let chain = self.chain()?;
        let relayer = chain.relayer.clone().ok_or(ServiceError::NoRelayer)?;
        let account = relayer.account().ok_or(ServiceError::NoRelayer)?;
        let identity = &settings.identity;
        let certificate: B256 = format!("0x{}", identity.certificate).parse().map_err(|_| {
            ServiceError::InvalidInput(format!(
                "certificate {} has no 32-byte (v6) fingerprint to register",
                identity.certificate
            ))
        })?;
        let name = registry_name(&identity.name);
        let when = settings.anchor;
        let view = Arc::new(Mutex::new(ChainLifeView {
            registration: RegistrationView {
                account,
                peer_id: identity.peer_id.to_string(),
                cert_fingerprint: identity.certificate.to_string(),
                name: name.clone(),
                checked: false,
                approved: false,
                registered: false,
                transaction: None,
                error: None,
            },
            anchoring: AnchoringView {
                enabled: when.enabled(),
                interval_secs: when.interval.as_secs(),
                every_entries: when.every_entries,
                last: None,
                error: None,
            },
        }));
        if self.chain_life.set(view.clone()).is_err() {
            return Ok(false);
        }
        let life = Life {
            view,
            store: self.store.clone(),
            provider: chain.releaser.provider().clone(),
            deployment: chain.deployment,
            relayer,
            account,
            peer_id: identity.peer_id.to_bytes(),
            certificate,
            name,
            settings,
            registration_warned: None,
            replaced_other: false,
            anchoring_warned: None,
        };
        tokio::spawn(life.run());
        Ok(true)
    }

    /// The node's registration and audit anchoring as last seen, when
    /// [`NodeServices::start_chain_life`] started them.
    pub fn chain_life(&self) -> Option<ChainLifeView> {
        self.chain_life.get().map(|view| lock(view).clone())
    }
}

/// The background task's state.
struct Life {
    view: SharedView,
    store: Arc<Store>,
    provider: DynProvider,
    deployment: Deployment,
    relayer: Arc<Relayer>,
    account: Address,
    peer_id: Vec<u8>,
    certificate: B256,
    name: String,
    settings: ChainLifeSettings,
    /// The last problem logged as a warning, so a retry every minute does not repeat it.
    registration_warned: Option<String>,
    /// Whether this process already replaced another node's registration: it does so
    /// once, so two nodes of one account cannot take turns every retry.
    replaced_other: bool,
    anchoring_warned: Option<String>,
}

/// Where anchoring stands.
#[derive(Debug, Default)]
struct Anchoring {
    /// Whether the local log was walked and compared with the last anchor.
    started: bool,
    /// Entries of the local log read so far, and the hash of the last of them.
    entries: u64,
    head: String,
    /// Entries the anchors cover already: the last anchor's count, plus the entry that
    /// recorded it when that came right after (it alone does not make an anchor due).
    covered: u64,
    /// When the last anchor was made, Unix seconds.
    last_at: Option<u64>,
    /// No attempt before this (after a failure).
    not_before: Option<Instant>,
    /// Anchoring stopped until the node restarts (a broken or rewritten log).
    halted: bool,
}

/// Why an anchoring step did not go through.
enum Failure {
    /// Try again after [`ChainLifeSettings::retry`].
    Retry(String),
    /// Stop anchoring: the log cannot be vouched for.
    Halt(String),
    /// The contract says the account is not registered: register again first.
    NotRegistered(String),
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn within<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, ChainError>>,
) -> Result<T, ChainError> {
    tokio::time::timeout(READ_DEADLINE, call)
        .await
        .map_err(|_| ChainError::Timeout {
            what,
            after: READ_DEADLINE,
        })?
}

impl Life {
    async fn run(mut self) {
        let mut anchoring = self.settings.anchor.enabled().then(Anchoring::default);
        let mut registered = false;
        let mut next_check = Instant::now();
        loop {
            if Instant::now() >= next_check {
                registered = self.register(registered).await;
                next_check = Instant::now() + self.settings.retry;
            }
            if registered {
                if let Some(state) = anchoring.as_mut() {
                    if !self.anchor_step(state).await {
                        // Read the registry again now; the step waits `retry` anyway.
                        registered = false;
                        next_check = Instant::now();
                        continue;
                    }
                }
            }
            let pause = if registered && anchoring.as_ref().is_some_and(|a| !a.halted) {
                self.settings.poll
            } else {
                next_check.saturating_duration_since(Instant::now())
            };
            tokio::time::sleep(pause.max(Duration::from_millis(10))).await;
        }
    }

    fn registration_problem(&mut self, problem: String) {
        if self.registration_warned.as_ref() != Some(&problem) {
            tracing::warn!(account = %self.account, "{problem}");
            self.registration_warned = Some(problem.clone());
        } else {
            tracing::debug!(account = %self.account, "{problem}");
        }
        lock(&self.view).registration.error = Some(problem);
    }

    fn anchoring_problem(&mut self, problem: String, halted: bool) {
        if halted {
            tracing::error!(account = %self.account, "{problem}");
        } else if self.anchoring_warned.as_ref() != Some(&problem) {
            tracing::warn!(account = %self.account, "{problem}");
        } else {
            tracing::debug!(account = %self.account, "{problem}");
        }
        self.anchoring_warned = Some(problem.clone());
        lock(&self.view).anchoring.error = Some(problem);
    }

    /// Reads the registry and registers this node when the account is approved and
    /// does not list it yet; returns whether the registry lists this node (`was` when
    /// the registry cannot be read).
    async fn register(&mut self, was: bool) -> bool {
        let registry = self.deployment.node_registry;
        let read = within(
            "reading NodeRegistry",
            medmesh_chain::registration(&self.provider, registry, self.account),
        )
        .await;
        let state = match read {
            Ok(state) => state,
            Err(e) => {
                self.registration_problem(format!(
                    "cannot read NodeRegistry {registry} (retrying every {} s): {e}",
                    self.settings.retry.as_secs()
                ));
                return was;
            }
        };
        let listed = state.lists(&self.peer_id, &self.certificate.0, &self.name);
        {
            let mut view = lock(&self.view);
            view.registration.checked = true;
            view.registration.approved = state.approved;
            view.registration.registered = listed;
            if listed {
                view.registration.error = None;
            }
        }
        if listed {
            if !was {
                tracing::info!(
                    account = %self.account,
                    %registry,
                    "NodeRegistry lists this node for its account"
                );
            }
            self.registration_warned = None;
            return true;
        }
        if !state.approved {
            let account = self.account;
            self.registration_problem(format!(
                "the node's account {account} is not an approved institution in NodeRegistry \
                 {registry}, so the node cannot register itself: a registry admin must call \
                 approveInstitution({account}); the node looks again every {} s and registers \
                 once approved",
                self.settings.retry.as_secs()
            ));
            return false;
        }
        if let Some(node) = state.node.as_ref().filter(|n| n.active) {
            let peer = PeerId::from_bytes(&node.peer_id)
                .map_or_else(|_| hex_bytes(&node.peer_id), |p| p.to_string());
            let other_node = node.peer_id != self.peer_id;
            if other_node && self.replaced_other {
                // Another node of this account registered after us: two nodes share the
                // account. Taking turns would cost a transaction a minute each.
                self.registration_problem(format!(
                    "NodeRegistry lists node {peer} for the account {} after this node \
                     registered: two nodes use one account; give each node its own account, \
                     or stop the other and restart this one",
                    self.account
                ));
                return false;
            }
            let certificate = hex_bytes(&node.certificate);
            tracing::warn!(
                account = %self.account,
                registered_peer = %peer,
                registered_certificate = %certificate,
                registered_name = %node.name,
                "NodeRegistry lists another node (or name) for this account; registering this one"
            );
            self.replaced_other |= other_node;
        }
        let sent = self
            .relayer
            .register_node(
                registry,
                self.peer_id.clone(),
                self.certificate,
                self.name.clone(),
            )
            .await;
        match sent {
            Ok(sent) => {
                tracing::info!(
                    account = %self.account,
                    %registry,
                    transaction = %sent.transaction,
                    block = sent.block,
                    "registered this node in NodeRegistry"
                );
                let mut view = lock(&self.view);
                view.registration.registered = true;
                view.registration.transaction = Some(sent.transaction);
                view.registration.error = None;
                drop(view);
                self.registration_warned = None;
                true
            }
            Err(e) => {
                self.registration_problem(format!(
                    "registering this node in NodeRegistry {registry} failed (retrying in {} s): \
                     {e}",
                    self.settings.retry.as_secs()
                ));
                false
            }
        }
    }

    /// One anchoring step: catch up on the log, anchor if due. Returns `false` when the
    /// contract says the account is not registered.
    async fn anchor_step(&mut self, state: &mut Anchoring) -> bool {
        if state.halted || state.not_before.is_some_and(|t| Instant::now() < t) {
            return true;
        }
        let outcome = match self.try_anchor(state).await {
            Ok(()) => return true,
            Err(failure) => failure,
        };
        match outcome {
            Failure::Retry(problem) => {
                self.anchoring_problem(problem, false);
                state.not_before = Some(Instant::now() + self.settings.retry);
                true
            }
            Failure::Halt(problem) => {
                self.anchoring_problem(problem, true);
                state.halted = true;
                true
            }
            Failure::NotRegistered(problem) => {
                self.anchoring_problem(problem, false);
                state.not_before = Some(Instant::now() + self.settings.retry);
                false
            }
        }
    }

    async fn try_anchor(&mut self, state: &mut Anchoring) -> Result<(), Failure> {
        if !state.started {
            self.start_anchoring(state).await?;
        }
        self.read_new_entries(state).await?;
        let fresh = state.entries.saturating_sub(state.covered);
        if fresh == 0 {
            return Ok(());
        }
        let now = unix_now();
        let settings = self.settings.anchor;
        let by_count = settings.every_entries > 0 && fresh >= settings.every_entries;
        let by_time = state
            .last_at
            .is_none_or(|at| now >= at.saturating_add(settings.interval.as_secs()));
        if !(by_count || by_time) {
            return Ok(());
        }
        let (entries, head_hex) = (state.entries, state.head.clone());
        let head = audit_head(&head_hex).ok_or_else(|| {
            Failure::Halt(format!(
                "audit entry {} has a malformed hash `{head_hex}`; not anchoring it",
                entries.saturating_sub(1)
            ))
        })?;
        let contract = self.deployment.audit_anchor;
        let sent = match self.relayer.anchor_audit(contract, head, entries).await {
            Ok(sent) => sent,
            Err(ChainError::Reverted(reason)) if reason.contains("NotRegistered") => {
                return Err(Failure::NotRegistered(format!(
                    "AuditAnchor {contract} refused the anchor: the account is not a registered \
                     institution ({reason})"
                )))
            }
            Err(e) => {
                return Err(Failure::Retry(format!(
                    "anchoring the audit head after {entries} entries in AuditAnchor {contract} \
                     failed (retrying in {} s): {e}",
                    self.settings.retry.as_secs()
                )))
            }
        };
        // Audit the anchor. Its entry comes after the head it anchored: say so.
        let last = entries - 1;
        let event = AuditEvent {
            action: AuditAction::AuditAnchored,
            actor: ACTOR.to_string(),
            subject: head_hex.clone(),
            detail: BTreeMap::from([
                ("entries".to_string(), entries.to_string()),
                ("head".to_string(), head_hex.clone()),
                (
                    "covers".to_string(),
                    format!(
                        "entries 0 to {last}: the anchored head is the hash of entry {last}, \
                         written before this entry"
                    ),
                ),
                ("anchor_index".to_string(), sent.index.to_string()),
                ("contract".to_string(), contract.to_string()),
                ("account".to_string(), self.account.to_string()),
                ("transaction".to_string(), sent.sent.transaction.to_string()),
                ("block".to_string(), sent.sent.block.to_string()),
            ]),
        };
        let store = self.store.clone();
        let written = blocking("audit append", move || Ok(store.audit(event)?)).await;
        state.covered = match written {
            // Right after the anchored head: the next anchor is due only with more.
            Ok(entry) if entry.seq == entries => entries + 1,
            Ok(_) => entries,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    transaction = %sent.sent.transaction,
                    "the audit head was anchored, but the anchor could not be audited"
                );
                entries
            }
        };
        state.last_at = Some(now);
        tracing::info!(
            entries,
            head = %head_hex,
            index = sent.index,
            transaction = %sent.sent.transaction,
            "anchored the audit log's head on chain"
        );
        let mut view = lock(&self.view);
        view.anchoring.last = Some(AnchorView {
            index: sent.index,
            head: head_hex,
            entries,
            anchored_at: now,
            transaction: Some(sent.sent.transaction),
        });
        view.anchoring.error = None;
        drop(view);
        self.anchoring_warned = None;
        Ok(())
    }

    /// Walks the local log and compares it with the account's last anchor on chain.
    async fn start_anchoring(&mut self, state: &mut Anchoring) -> Result<(), Failure> {
        let store = self.store.clone();
        let walked = blocking("audit verify", move || Ok(store.audit_verify()?))
            .await
            .map_err(|e| Failure::Retry(format!("cannot read the audit log: {e}")))?;
        let summary = walked.map_err(|broken| {
            Failure::Halt(format!(
                "the audit log does not verify ({broken}); the node anchors no head of a broken \
                 log until it is resolved (see `medmesh audit verify`) and the node restarted"
            ))
        })?;
        let contract = self.deployment.audit_anchor;
        let last = within(
            "reading AuditAnchor",
            anchor::last_anchor(&self.provider, contract, self.account),
        )
        .await
        .map_err(|e| Failure::Retry(format!("cannot read AuditAnchor {contract}: {e}")))?;
        state.covered = 0;
        state.last_at = None;
        if let Some(last) = last {
            let store = self.store.clone();
            let (mismatch, recorded) = blocking("audit check", move || {
                let (_, mismatch) = anchor::check_anchors(&store, &[last])?;
                // The entry that recorded this anchor, when it came right after it.
                let next = store.audit_page(last.entries, 1)?;
                let recorded = next.first().is_some_and(|e| {
                    e.seq == last.entries
                        && e.action == AuditAction::AuditAnchored
                        && e.detail.get("entries") == Some(&last.entries.to_string())
                });
                Ok((mismatch, recorded))
            })
            .await
            .map_err(|e| Failure::Retry(format!("cannot read the audit log: {e}")))?;
            if let Some(mismatch) = mismatch {
                return Err(Failure::Halt(format!(
                    "the local audit log does not reach the account's last anchor on chain: \
                     {mismatch}; the node anchors no more heads until this is resolved (see \
                     `medmesh audit verify --chain`)"
                )));
            }
            state.covered = last.entries + u64::from(recorded);
            state.last_at = Some(last.anchored_at);
            lock(&self.view).anchoring.last = Some(AnchorView {
                index: last.index,
                head: last.head_hex(),
                entries: last.entries,
                anchored_at: last.anchored_at,
                transaction: None,
            });
        }
        state.entries = summary.entries;
        state.head = summary.head;
        state.started = true;
        Ok(())
    }

    /// Reads the entries appended since the last look, checking that each continues the
    /// log read so far (its position and its link to the previous hash).
    async fn read_new_entries(&mut self, state: &mut Anchoring) -> Result<(), Failure> {
        loop {
            let (store, from) = (self.store.clone(), state.entries);
            let page = blocking("audit page", move || Ok(store.audit_page(from, PAGE)?))
                .await
                .map_err(|e| Failure::Retry(format!("cannot read the audit log: {e}")))?;
            let read = page.len();
            for entry in page {
                if entry.seq != state.entries || entry.prev != state.head {
                    return Err(Failure::Halt(format!(
                        "audit entry {} does not continue the log the node read before (its \
                         position or its link to entry {} changed while the node ran); the node \
                         anchors no more heads until `medmesh audit verify` passes and it is \
                         restarted",
                        entry.seq,
                        state.entries.saturating_sub(1)
                    )));
                }
                state.entries += 1;
                state.head = entry.hash;
            }
            if read < PAGE {
                return Ok(());
            }
        }
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
