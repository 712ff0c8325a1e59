//! Subscriptions to the event bus for one [`Audience`], for the transports that deliver
//! events to people (Server-Sent Events over HTTP, webhooks; later MQTT): which events
//! the audience may see, which kinds it asked for, numbering, and telling a subscriber
//! that fell behind how much it missed. The rules live here once, so every transport
//! shows a patient the same events.

use std::collections::BTreeSet;
use std::sync::Arc;

use alloy::primitives::Address;
use medmesh_core::bounded::BoundedMap;
use medmesh_core::RecordId;
use medmesh_store::Store;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::error::{blocking, ServiceError};
use crate::events::{Audience, NodeEvent};
use crate::services::NodeServices;

/// Records whose consent link one subscription remembers, per generation (at most
/// twice this many): a patient's stream asks the store once per record, not once per
/// event, and a flood of key requests for many records cannot grow it.
const LINK_CACHE: usize = 512;
/// Break-glass accesses one patient's subscription remembers having seen opened, per
/// generation (at most twice this many), to show their closing.
const OPEN_EMERGENCIES: usize = 256;

/// What a subscription delivers next.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// An event the audience may see, of a kind it asked for.
    Event {
        /// Its number in this subscription: 1, 2, 3… (lag notices count too).
        seq: u64,
        /// The event.
        event: NodeEvent,
    },
    /// The subscriber read too slowly and the bus dropped events for it; it continues
    /// with the oldest event still buffered.
    Lagged {
        /// Its number in this subscription.
        seq: u64,
        /// Events of the bus that were dropped: of every kind and audience, since the
        /// subscription cannot know which of them it would have been shown.
        missed: u64,
    },
}

/// One subscriber's view of the bus: only what its audience may see, of the kinds it
/// asked for, numbered. Dropping it unsubscribes.
pub struct EventStream {
    receiver: broadcast::Receiver<NodeEvent>,
    audience: Audience,
    /// `None`: every kind.
    kinds: Option<BTreeSet<&'static str>>,
    store: Arc<Store>,
    /// Record id → linked to this patient. Only settled answers are kept (see
    /// [`EventStream::linked_to`]).
    links: BoundedMap<String, bool>,
    /// Emergency ids this patient saw opened and not yet closed.
    opened: BoundedMap<String, ()>,
    seq: u64,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("audience", &self.audience)
            .field("kinds", &self.kinds)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl NodeServices {
    /// Subscribes `audience` to the events published from now on, only those of `kinds`
    /// (names from [`NodeEvent::KINDS`]) when given. An unknown kind, or an empty set,
    /// is [`ServiceError::InvalidInput`] naming the valid kinds.
    pub fn subscribe_events(
        &self,
        audience: Audience,
        kinds: Option<BTreeSet<String>>,
    ) -> Result<EventStream, ServiceError> {
        let kinds = kinds.as_ref().map(select_kinds).transpose()?;
        Ok(EventStream {
            receiver: self.events.subscribe(),
            audience,
            kinds,
            store: self.store.clone(),
            links: BoundedMap::new(LINK_CACHE),
            opened: BoundedMap::new(OPEN_EMERGENCIES),
            seq: 0,
        })
    }
}

/// The kinds named, as the static names of [`NodeEvent::KINDS`].
fn select_kinds(names: &BTreeSet<String>) -> Result<BTreeSet<&'static str>, ServiceError> {
    let valid = NodeEvent::KINDS.join(", ");
    if names.is_empty() {
        return Err(ServiceError::InvalidInput(format!(
            "no event kind named; name at least one, or none at all for every kind. \
             The kinds are: {valid}"
        )));
    }
    let mut selected = BTreeSet::new();
    let mut unknown = Vec::new();
    for name in names {
        match NodeEvent::KINDS.iter().find(|k| **k == name.as_str()) {
            Some(kind) => {
                selected.insert(*kind);
            }
            None => unknown.push(format!("`{name}`")),
        }
    }
    if !unknown.is_empty() {
        return Err(ServiceError::InvalidInput(format!(
            "unknown event kind {}; the kinds are: {valid}",
            unknown.join(", ")
        )));
    }
    Ok(selected)
}

impl EventStream {
    /// The next delivery: waits for an event this subscription may see, or tells it
    /// how many it missed after falling behind. `None` once the bus is gone (the node
    /// is stopping).
    ///
    /// Not cancel-safe for a patient's stream: an event whose consent link was being
    /// looked up when the future was dropped is not delivered. Transports poll it to
    /// completion (or drop the stream).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let event = match self.receiver.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => {
                    self.seq += 1;
                    return Some(Delivery::Lagged {
                        seq: self.seq,
                        missed,
                    });
                }
                Err(RecvError::Closed) => return None,
            };
            // The audience first: a patient's stream must remember the emergencies
            // opened on them even when it asked only for `break_glass_closed`.
            if !self.may_see(&event).await {
                continue;
            }
            if self
                .kinds
                .as_ref()
                .is_some_and(|kinds| !kinds.contains(event.kind()))
            {
                continue;
            }
            self.seq += 1;
            return Some(Delivery::Event {
                seq: self.seq,
                event,
            });
        }
    }

    /// Whether this subscription's audience may see `event`.
    async fn may_see(&mut self, event: &NodeEvent) -> bool {
        let Audience::Patient(me) = self.audience else {
            return true;
        };
        match event {
            NodeEvent::KeyReleased { record, .. } | NodeEvent::KeyDenied { record, .. } => {
                self.linked_to(record, me).await
            }
            NodeEvent::BreakGlassOpened {
                emergency_id,
                patient,
                ..
            } => {
                // Parsed, not compared as text: the event has the checksummed form.
                let mine = patient.parse::<Address>().is_ok_and(|p| p == me);
                if mine {
                    self.opened.insert(emergency_id.clone(), ());
                }
                mine
            }
            // The closing names no patient: shown to those who saw the opening.
            NodeEvent::BreakGlassClosed { emergency_id } => {
                self.opened.remove(emergency_id).is_some()
            }
            // The rest is the institution's activity (records, peers, relays), not
            // about one patient.
            _ => false,
        }
    }

    /// Whether `record`'s consent link names `me`, from the store (off the executor)
    /// the first time.
    async fn linked_to(&mut self, record: &str, me: Address) -> bool {
        let key = record.to_string();
        if let Some(mine) = self.links.get_mut(&key) {
            return *mine;
        }
        let Ok(id) = record.parse::<RecordId>() else {
            return false;
        };
        let store = self.store.clone();
        let link = blocking("consent link lookup", move || Ok(store.consent_link(&id)?)).await;
        match link {
            Ok(Some(link)) => {
                let mine = link.patient.parse::<Address>().is_ok_and(|p| p == me);
                // A link never moves to another wallet (the store refuses), so the
                // answer holds for the life of the stream.
                self.links.insert(key, mine);
                mine
            }
            // Not linked yet: it may be linked to this patient later, so it is not
            // remembered.
            Ok(None) => false,
            Err(e) => {
                // Fail closed, and ask again for the next event of this record.
                tracing::warn!(error = %e, record, "consent link lookup for an event stream failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read};
    use std::time::Duration;

    use super::*;
    use crate::events::CAPACITY;
    use crate::ServiceSettings;

    fn services() -> (tempfile::TempDir, NodeServices) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&dir.path().join("store")).expect("store"));
        store.unlock_index(medmesh_testkit::index_key());
        (
            dir,
            NodeServices::without_keys(store, ServiceSettings::default()),
        )
    }

    /// `n` records in the store (unlinked).
    fn records(services: &NodeServices, n: usize) -> Vec<RecordId> {
        medmesh_testkit::net::put_records(
            services.store(),
            n,
            |i| {
                Box::new(Cursor::new(medmesh_testkit::noise(100, i as u64))) as Box<dyn Read + Send>
            },
            4096,
        )
    }

    async fn next(stream: &mut EventStream) -> Delivery {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the bus is open")
    }

    fn released(record: &RecordId, caller: &str) -> NodeEvent {
        NodeEvent::KeyReleased {
            record: record.to_string(),
            caller: caller.into(),
            grantee: "0x0000000000000000000000000000000000000003".into(),
            access: "grant".into(),
            access_id: "1".into(),
        }
    }

    fn denied(record: &RecordId) -> NodeEvent {
        NodeEvent::KeyDenied {
            record: record.to_string(),
            caller: "token:t".into(),
            grantee: "0x0000000000000000000000000000000000000003".into(),
            reason: "no grant".into(),
        }
    }

    fn opened(id: &str, patient: Address) -> NodeEvent {
        NodeEvent::BreakGlassOpened {
            emergency_id: id.into(),
            institution: "0x0000000000000000000000000000000000000009".into(),
            patient: patient.to_string(),
            until: 1,
        }
    }

    fn closed(id: &str) -> NodeEvent {
        NodeEvent::BreakGlassClosed {
            emergency_id: id.into(),
        }
    }

    #[tokio::test]
    async fn a_patient_sees_only_events_about_them() {
        let (_dir, services) = services();
        let (me, other) = (Address::repeat_byte(0x11), Address::repeat_byte(0x22));
        let ids = records(&services, 3);
        let (mine, theirs, unlinked) = (ids[0], ids[1], ids[2]);
        let store = services.store();
        store.link_patient(&mine, &me.to_string(), "test").unwrap();
        store
            .link_patient(&theirs, &other.to_string(), "test")
            .unwrap();
        let mut stream = services
            .subscribe_events(Audience::Patient(me), None)
            .unwrap();
        let bus = services.events();
        for hidden in [
            released(&theirs, "a"),
            denied(&unlinked),
            NodeEvent::RecordStored {
                record: mine.to_string(),
                size: 100,
            },
            opened("7", other),
            closed("7"),
            NodeEvent::PeerConnected { peer: "p".into() },
        ] {
            bus.publish(hidden);
        }
        bus.publish(released(&mine, "b"));
        bus.publish(opened("8", me));
        bus.publish(denied(&mine));
        bus.publish(closed("8"));
        bus.publish(closed("8"));
        bus.publish(released(&theirs, "c"));

        // In bus order, so every hidden event published between two of these was
        // skipped, not merely late.
        let expected = [
            released(&mine, "b"),
            opened("8", me),
            denied(&mine),
            closed("8"),
        ];
        for (i, event) in expected.into_iter().enumerate() {
            assert_eq!(
                next(&mut stream).await,
                Delivery::Event {
                    seq: i as u64 + 1,
                    event
                }
            );
        }
        // Linked after its first event was read (and hidden): its later events are
        // this patient's to see.
        store
            .link_patient(&unlinked, &me.to_string(), "test")
            .unwrap();
        bus.publish(denied(&unlinked));
        assert_eq!(
            next(&mut stream).await,
            Delivery::Event {
                seq: 5,
                event: denied(&unlinked)
            }
        );
    }

    #[tokio::test]
    async fn kinds_filter_after_the_audience_and_unknown_kinds_are_named() {
        let (_dir, services) = services();
        let me = Address::repeat_byte(0x11);
        let only = |k: &[&str]| Some(k.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>());
        let mut patient = services
            .subscribe_events(Audience::Patient(me), only(&["break_glass_closed"]))
            .unwrap();
        let mut operator = services
            .subscribe_events(
                Audience::Operator,
                only(&["record_removed", "peer_connected"]),
            )
            .unwrap();
        let bus = services.events();
        bus.publish(opened("5", me));
        bus.publish(NodeEvent::RecordStored {
            record: "r1".into(),
            size: 1,
        });
        bus.publish(NodeEvent::RecordRemoved {
            record: "r1".into(),
        });
        bus.publish(closed("5"));
        bus.publish(NodeEvent::PeerConnected { peer: "p".into() });
        // The patient did not ask for openings, yet is shown the closing of theirs.
        assert_eq!(
            next(&mut patient).await,
            Delivery::Event {
                seq: 1,
                event: closed("5")
            }
        );
        assert_eq!(
            next(&mut operator).await,
            Delivery::Event {
                seq: 1,
                event: NodeEvent::RecordRemoved {
                    record: "r1".into()
                }
            }
        );
        assert_eq!(
            next(&mut operator).await,
            Delivery::Event {
                seq: 2,
                event: NodeEvent::PeerConnected { peer: "p".into() }
            }
        );

        let err = services
            .subscribe_events(Audience::Operator, only(&["record_stored", "recordstored"]))
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ServiceError::InvalidInput(_)), "{err:?}");
        assert!(text.contains("`recordstored`"), "{text}");
        assert!(!text.contains("`record_stored`"), "{text}");
        for kind in NodeEvent::KINDS {
            assert!(text.contains(kind), "{text} lacks {kind}");
        }
        let err = services
            .subscribe_events(Audience::Operator, only(&[]))
            .unwrap_err();
        assert!(matches!(err, ServiceError::InvalidInput(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_subscriber_that_lags_is_told_how_many_it_missed_and_continues() {
        let (_dir, services) = services();
        let mut stream = services.subscribe_events(Audience::Operator, None).unwrap();
        let extra = 10;
        for i in 0..CAPACITY + extra {
            services.events().publish(NodeEvent::RecordRemoved {
                record: format!("r{i}"),
            });
        }
        assert_eq!(
            next(&mut stream).await,
            Delivery::Lagged {
                seq: 1,
                missed: extra as u64
            }
        );
        // Then the oldest event still buffered.
        assert_eq!(
            next(&mut stream).await,
            Delivery::Event {
                seq: 2,
                event: NodeEvent::RecordRemoved {
                    record: format!("r{extra}")
                }
            }
        );
    }
}
