//! The audit trail of refused requests, built so that a flood of them cannot turn into
//! a flood of disk writes.
//!
//! The first refusal of a kind — the same caller (token, wallet, or client address when
//! unauthenticated) for the same reason — in a window is written at once, and the
//! request is answered only once it is durable. Repeats within the window only count;
//! at the end of the window each kind that repeated gets one summary entry
//! (`repeated: N`). Entries are written by one task that commits whatever is queued in
//! a single transaction (group commit), so concurrent refusals share an fsync.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use medmesh_service::NodeServices;
use medmesh_store::{AuditAction, AuditEvent};
use tokio::sync::{mpsc, oneshot};

use crate::state::lock;

/// How long repeats of one kind are folded into one summary.
const WINDOW: Duration = Duration::from_secs(60);
/// Kinds tracked per window; beyond it, refusals count in one overflow kind.
const MAX_KINDS: usize = 4096;
/// Entries waiting for the writer; beyond it, first refusals count as repeats.
const QUEUE: usize = 1024;
/// Most entries committed in one transaction.
const BATCH: usize = 512;

type Kind = (String, String, String);
type Queued = (AuditEvent, Option<oneshot::Sender<()>>);

struct Repeats {
    count: u64,
    subject: String,
}

/// Refused requests, audited with bounded disk writes.
pub(crate) struct DenialLog {
    services: Arc<NodeServices>,
    window: Arc<Mutex<HashMap<Kind, Repeats>>>,
    queue: mpsc::Sender<Queued>,
    pending: Mutex<Option<mpsc::Receiver<Queued>>>,
    started: OnceLock<()>,
}

impl DenialLog {
    pub(crate) fn new(services: Arc<NodeServices>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        Self {
            services,
            window: Arc::default(),
            queue,
            pending: Mutex::new(Some(pending)),
            started: OnceLock::new(),
        }
    }

    /// Audits a refusal of `actor`'s request on `subject` for `reason`. `per_subject`
    /// keeps kinds apart by subject too (for authenticated callers, who are accountable
    /// and rate limited; anonymous ones could vary the path at will).
    pub(crate) async fn record(
        &self,
        actor: String,
        subject: String,
        reason: String,
        per_subject: bool,
    ) {
        self.start();
        let kind = (
            actor.clone(),
            reason.clone(),
            if per_subject {
                subject.clone()
            } else {
                String::new()
            },
        );
        let first = {
            let mut window = lock(&self.window);
            let len = window.len();
            match window.get_mut(&kind) {
                Some(r) => {
                    r.count += 1;
                    false
                }
                None if len >= MAX_KINDS => {
                    let overflow = (
                        "overflow".into(),
                        "too many kinds of refusal".into(),
                        String::new(),
                    );
                    window
                        .entry(overflow)
                        .or_insert(Repeats {
                            count: 0,
                            subject: "*".into(),
                        })
                        .count += 1;
                    false
                }
                None => {
                    window.insert(
                        kind.clone(),
                        Repeats {
                            count: 0,
                            subject: subject.clone(),
                        },
                    );
                    true
                }
            }
        };
        if !first {
            return;
        }
        let event = AuditEvent {
            action: AuditAction::AccessDenied,
            actor,
            subject,
            detail: BTreeMap::from([("reason".into(), reason)]),
        };
        let (done, written) = oneshot::channel();
        match self.queue.try_send((event, Some(done))) {
            Ok(()) => {
                let _ = written.await;
            }
            Err(_) => {
                // The writer is behind: count it, the summary will say so.
                if let Some(r) = lock(&self.window).get_mut(&kind) {
                    r.count += 1;
                }
            }
        }
    }

    /// Writes the summaries of the current window now (at shutdown).
    pub(crate) async fn flush(&self) {
        let events = summaries(&self.window);
        if !events.is_empty() {
            self.services.audit_batch(events).await;
        }
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let Some(mut pending) = lock(&self.pending).take() else {
                return;
            };
            let services = self.services.clone();
            tokio::spawn(async move {
                while let Some(first) = pending.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match pending.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let (events, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    services.audit_batch(events).await;
                    for ack in acks.into_iter().flatten() {
                        let _ = ack.send(());
                    }
                }
            });
            let (window, queue) = (self.window.clone(), self.queue.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(WINDOW);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for event in summaries(&window) {
                        if queue.send((event, None)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        });
    }
}

/// Ends the window: one summary entry per kind that repeated.
fn summaries(window: &Mutex<HashMap<Kind, Repeats>>) -> Vec<AuditEvent> {
    let ended = std::mem::take(&mut *lock(window));
    ended
        .into_iter()
        .filter(|(_, r)| r.count > 0)
        .map(|((actor, reason, _), r)| AuditEvent {
            action: AuditAction::AccessDenied,
            actor,
            subject: r.subject,
            detail: BTreeMap::from([
                ("reason".into(), reason),
                ("repeated".into(), r.count.to_string()),
                ("window_secs".into(), WINDOW.as_secs().to_string()),
            ]),
        })
        .collect()
}
