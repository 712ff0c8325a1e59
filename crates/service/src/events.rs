//! The node's event bus: one typed broadcast that the service layer publishes on and
//! transports subscribe to (Server-Sent Events, webhooks, MQTT alert topics).
//!
//! Events name records by id and people by address or token id; they never carry
//! plaintext, patient references or secrets, so any subscriber allowed to see the
//! node's activity can receive them. Who that is, is an [`Audience`]: operators see every
//! event, a patient only those about them (see `notify.rs`).

use alloy::primitives::Address;
use serde::Serialize;
use tokio::sync::broadcast;

/// Events buffered per subscriber before a slow one starts missing some (it is told how
/// many by `RecvError::Lagged`).
pub(crate) const CAPACITY: usize = 1024;

/// Who a subscription to the bus is for, which decides what it may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// An operator of the institution (an API token that may read the audit log): every
    /// event.
    Operator,
    /// A patient signed in with their wallet: key releases and refusals for records
    /// linked to this address, break-glass accesses opened on it, and the closing of
    /// those.
    Patient(Address),
}

/// Something that happened on the node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A record was ingested here.
    RecordStored {
        /// The record id.
        record: String,
        /// Plaintext bytes.
        size: u64,
    },
    /// The local copy of a record was removed.
    RecordRemoved {
        /// The record id.
        record: String,
    },
    /// A record was fetched from peers into this node.
    RecordFetched {
        /// The record id.
        record: String,
        /// Peers blocks came from.
        providers: Vec<String>,
        /// Blocks that came over the network.
        blocks_fetched: u64,
    },
    /// A peer fetched blocks of a record from this node (one event per fast-path
    /// request; bitswap serves blocks one by one, without naming a record, and is not
    /// reported).
    RecordServed {
        /// The record id.
        record: String,
        /// The peer that fetched.
        peer: String,
        /// Blocks sent.
        blocks: u64,
        /// Bytes sent.
        bytes: u64,
    },
    /// A peer asked this node to hold a replica of its record, and it now does.
    ReplicaStored {
        /// The record id.
        record: String,
        /// The peer that asked.
        peer: String,
        /// Blocks that came over the network for it.
        blocks_fetched: u64,
    },
    /// A record's key was released to a grantee.
    KeyReleased {
        /// The record id.
        record: String,
        /// Who asked (as audited: `token:…`, `wallet:…`).
        caller: String,
        /// The grantee the key was wrapped for.
        grantee: String,
        /// `grant` or `emergency`.
        access: String,
        /// The grant or emergency id.
        access_id: String,
    },
    /// A key request was refused.
    KeyDenied {
        /// The record id.
        record: String,
        /// Who asked.
        caller: String,
        /// The grantee the request named.
        grantee: String,
        /// Why it was refused.
        reason: String,
    },
    /// A patient's signed grant was relayed and mined.
    GrantRelayed {
        /// The grant id.
        grant_id: String,
        /// The transaction hash.
        transaction: String,
        /// The block it was mined in.
        block: u64,
    },
    /// A patient's signed revocation was relayed and mined.
    RevocationRelayed {
        /// The grant id revoked.
        grant_id: String,
        /// The transaction hash.
        transaction: String,
        /// The block it was mined in.
        block: u64,
    },
    /// A break-glass (emergency) access was opened on chain: an institution may read
    /// a patient's records without a grant until `until`.
    BreakGlassOpened {
        /// The emergency id.
        emergency_id: String,
        /// The institution that opened it.
        institution: String,
        /// The patient concerned.
        patient: String,
        /// Unix seconds when it ends.
        until: u64,
    },
    /// A break-glass access was closed before its end.
    BreakGlassClosed {
        /// The emergency id.
        emergency_id: String,
    },
    /// The replicas of a record changed (placed, lost, replaced).
    ReplicationChanged {
        /// The record id.
        record: String,
        /// How many copies are wanted.
        copies: u32,
        /// Peers that now hold one.
        holders: Vec<String>,
    },
    /// A peer connected.
    PeerConnected {
        /// Its PeerId.
        peer: String,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// Its PeerId.
        peer: String,
    },
    /// A clinical alert changed: raised, changed (its severity or score moved),
    /// escalated (left unacknowledged too long), acknowledged or cleared. Names the
    /// device, never the patient.
    Alert {
        /// `raised`, `changed`, `escalated`, `acknowledged`, `cleared` (the readings
        /// recovered), `cleared-rule-removed` (a rules reload removed its rule) or
        /// `cleared-untracked` (too many series were tracked; it was the least recent).
        change: String,
        /// The alert id.
        alert: String,
        /// The rule that raised it (`news2` for the early-warning score).
        rule: String,
        /// `info`, `urgent` or `emergency`.
        severity: String,
        /// The device whose reading raised it.
        device: String,
        /// The vital sign (none for NEWS2).
        vital: Option<String>,
        /// The value of the reading that raised it (canonical unit; for a rate rule
        /// the rate per minute), or the NEWS2 total.
        value: f64,
        /// When that reading was measured (RFC 3339).
        measured: String,
        /// A sentence for people.
        message: String,
    },
}

impl NodeEvent {
    /// Every kind of event, as its `type` field names it when serialized (what
    /// subscribers filter on). [`NodeEvent::kind`] is one of these.
    pub const KINDS: &'static [&'static str] = &[
        "record_stored",
        "record_removed",
        "record_fetched",
        "record_served",
        "replica_stored",
        "key_released",
        "key_denied",
        "grant_relayed",
        "revocation_relayed",
        "break_glass_opened",
        "break_glass_closed",
        "replication_changed",
        "peer_connected",
        "peer_disconnected",
        "alert",
    ];

    /// This event's kind: its serialized `type`, without serializing it.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeEvent::RecordStored { .. } => "record_stored",
            NodeEvent::RecordRemoved { .. } => "record_removed",
            NodeEvent::RecordFetched { .. } => "record_fetched",
            NodeEvent::RecordServed { .. } => "record_served",
            NodeEvent::ReplicaStored { .. } => "replica_stored",
            NodeEvent::KeyReleased { .. } => "key_released",
            NodeEvent::KeyDenied { .. } => "key_denied",
            NodeEvent::GrantRelayed { .. } => "grant_relayed",
            NodeEvent::RevocationRelayed { .. } => "revocation_relayed",
            NodeEvent::BreakGlassOpened { .. } => "break_glass_opened",
            NodeEvent::BreakGlassClosed { .. } => "break_glass_closed",
            NodeEvent::ReplicationChanged { .. } => "replication_changed",
            NodeEvent::PeerConnected { .. } => "peer_connected",
            NodeEvent::PeerDisconnected { .. } => "peer_disconnected",
            NodeEvent::Alert { .. } => "alert",
        }
    }
}

/// The broadcast every service publishes on; clones share it.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<NodeEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    /// Publishes an event to every current subscriber (none is fine).
    pub fn publish(&self, event: NodeEvent) {
        tracing::debug!(?event, "node event");
        let _ = self.sender.send(event);
    }

    /// A new subscription: every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_events_published_after_they_subscribed() {
        let bus = EventBus::default();
        bus.publish(NodeEvent::RecordRemoved {
            record: "before".into(),
        });
        let mut rx = bus.subscribe();
        let event = NodeEvent::RecordRemoved {
            record: "after".into(),
        };
        bus.publish(event.clone());
        assert_eq!(rx.recv().await.unwrap(), event);
        assert!(rx.try_recv().is_err(), "the earlier event is not replayed");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "record_removed");
    }

    /// One event of each variant. `NodeEvent::kind` does not compile without an arm for
    /// a new variant; add its sample here too, and this test checks `KINDS` has it.
    fn one_of_each() -> Vec<NodeEvent> {
        let s = |v: &str| v.to_string();
        vec![
            NodeEvent::RecordStored {
                record: s("r"),
                size: 1,
            },
            NodeEvent::RecordRemoved { record: s("r") },
            NodeEvent::RecordFetched {
                record: s("r"),
                providers: vec![s("p")],
                blocks_fetched: 1,
            },
            NodeEvent::RecordServed {
                record: s("r"),
                peer: s("p"),
                blocks: 1,
                bytes: 1,
            },
            NodeEvent::ReplicaStored {
                record: s("r"),
                peer: s("p"),
                blocks_fetched: 1,
            },
            NodeEvent::KeyReleased {
                record: s("r"),
                caller: s("c"),
                grantee: s("g"),
                access: s("grant"),
                access_id: s("1"),
            },
            NodeEvent::KeyDenied {
                record: s("r"),
                caller: s("c"),
                grantee: s("g"),
                reason: s("no"),
            },
            NodeEvent::GrantRelayed {
                grant_id: s("1"),
                transaction: s("0x"),
                block: 1,
            },
            NodeEvent::RevocationRelayed {
                grant_id: s("1"),
                transaction: s("0x"),
                block: 1,
            },
            NodeEvent::BreakGlassOpened {
                emergency_id: s("1"),
                institution: s("i"),
                patient: s("p"),
                until: 1,
            },
            NodeEvent::BreakGlassClosed {
                emergency_id: s("1"),
            },
            NodeEvent::ReplicationChanged {
                record: s("r"),
                copies: 1,
                holders: vec![],
            },
            NodeEvent::PeerConnected { peer: s("p") },
            NodeEvent::PeerDisconnected { peer: s("p") },
            NodeEvent::Alert {
                change: s("raised"),
                alert: s("alert-1"),
                rule: s("spo2-low"),
                severity: s("urgent"),
                device: s("d"),
                vital: Some(s("spo2")),
                value: 88.0,
                measured: s("2026-01-01T00:00:00Z"),
                message: s("m"),
            },
        ]
    }

    #[test]
    fn kinds_are_the_serialized_types_of_every_variant() {
        let samples = one_of_each();
        let mut seen = std::collections::BTreeSet::new();
        for event in &samples {
            let json = serde_json::to_value(event).unwrap();
            let serialized = json["type"].as_str().unwrap().to_string();
            assert_eq!(serialized, event.kind(), "{event:?}");
            assert!(
                NodeEvent::KINDS.contains(&serialized.as_str()),
                "`{serialized}` is missing from NodeEvent::KINDS"
            );
            assert!(
                seen.insert(serialized.clone()),
                "two samples of `{serialized}`"
            );
        }
        assert_eq!(
            seen.len(),
            NodeEvent::KINDS.len(),
            "KINDS names a kind no variant has: {:?} vs {seen:?}",
            NodeEvent::KINDS
        );
    }
}
