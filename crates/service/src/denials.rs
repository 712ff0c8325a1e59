//! The audit trail of refused requests, for every transport, built so that a flood of
//! them cannot turn into a flood of disk writes.
//!
//! A refusal has a kind: the caller (token, wallet, or client address when
//! unauthenticated), the audit action, and a stable code naming the reason (never its
//! text, which a caller can vary at will). The first refusal of a kind in a window is
//! written at once, and the request is answered only once it is durable. Repeats
//! within the window only count; at the end of the window each kind that repeated gets
//! one summary entry (`repeated: N`). Entries are written by one task that commits
//! whatever is queued in a single transaction (group commit), so concurrent refusals
//! share an fsync.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use medmesh_store::{AuditAction, AuditEvent, Store};
use tokio::sync::{mpsc, oneshot};

use crate::lock;
use crate::services::append_audit;

/// How long repeats of one kind are folded into one summary.
const WINDOW: Duration = Duration::from_secs(60);
/// Kinds tracked per window; beyond it, refusals count in one overflow kind.
const MAX_KINDS: usize = 4096;
/// Entries waiting for the writer; beyond it, first refusals count as repeats.
const QUEUE: usize = 1024;
/// Most entries committed in one transaction.
const BATCH: usize = 512;

type Kind = (String, AuditAction, &'static str);
type Queued = (AuditEvent, Option<oneshot::Sender<()>>);

struct Repeats {
    count: u64,
    /// The first refusal's entry: the summary repeats its subject and detail.
    first: AuditEvent,
}

/// Refused requests, audited with bounded disk writes.
pub struct DenialLog {
    store: Arc<Store>,
    window: Arc<Mutex<HashMap<Kind, Repeats>>>,
    queue: mpsc::Sender<Queued>,
    pending: Mutex<Option<mpsc::Receiver<Queued>>>,
    started: OnceLock<()>,
}

impl DenialLog {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        Self {
            store,
            window: Arc::default(),
            queue,
            pending: Mutex::new(Some(pending)),
            started: OnceLock::new(),
        }
    }

    /// Audits `event`, a refusal whose reason has the stable code `code` (e.g.
    /// `unauthenticated`, `forbidden`, `not-grantee`); returns once a first refusal of
    /// its kind is durable, at once for a repeat.
    pub async fn record(&self, event: AuditEvent, code: &'static str) {
        self.start();
        let kind = (event.actor.clone(), event.action, code);
        let first = {
            let mut window = lock(&self.window);
            let len = window.len();
            match window.get_mut(&kind) {
                Some(r) => {
                    r.count += 1;
                    false
                }
                None if len >= MAX_KINDS => {
                    let overflow = ("*".to_string(), event.action, "too-many-kinds");
                    window
                        .entry(overflow)
                        .or_insert_with(|| Repeats {
                            count: 0,
                            first: AuditEvent {
                                actor: "*".into(),
                                subject: "*".into(),
                                detail: BTreeMap::from([(
                                    "reason".into(),
                                    "refusals of more callers than tracked".into(),
                                )]),
                                ..event.clone()
                            },
                        })
                        .count += 1;
                    false
                }
                None => {
                    window.insert(
                        kind.clone(),
                        Repeats {
                            count: 0,
                            first: event.clone(),
                        },
                    );
                    true
                }
            }
        };
        if !first {
            return;
        }
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
    pub async fn flush(&self) {
        append_audit(&self.store, summaries(&self.window)).await;
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let Some(mut pending) = lock(&self.pending).take() else {
                return;
            };
            let store = self.store.clone();
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
                    append_audit(&store, events).await;
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
        .into_values()
        .filter(|r| r.count > 0)
        .map(|r| {
            let mut event = r.first;
            event.detail.insert("repeated".into(), r.count.to_string());
            event
                .detail
                .insert("window_secs".into(), WINDOW.as_secs().to_string());
            event
        })
        .collect()
}
