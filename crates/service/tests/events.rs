//! The event bus reports what happens on a node, including what peers do with it:
//! two nodes on loopback, real stores, real keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use medmesh_core::RecordId;
use medmesh_net::FetchOptions;
use medmesh_service::{Ingest, NodeEvent, NodeKeys, NodeServices, ServiceError, ServiceSettings};
use medmesh_store::Replication;
use medmesh_testkit::net::Peer;
use medmesh_testkit::{institution, noise, passphrase};
use tokio::sync::broadcast;

fn keys(n: usize) -> Arc<NodeKeys> {
    let secret = institution(n);
    Arc::new(NodeKeys {
        certificate: secret.certificate().expect("certificate"),
        signer: Mutex::new(secret.unlock_signing(&passphrase()).expect("signing key")),
        decryptor: Arc::new(Mutex::new(
            secret
                .unlock_decryption(&passphrase())
                .expect("decryption key"),
        )),
    })
}

/// Services over `peer`'s store with `peer`'s network connected.
fn services(peer: &Peer, keys: Arc<NodeKeys>) -> NodeServices {
    let services = NodeServices::new(peer.store.clone(), keys, ServiceSettings::default());
    assert!(services.enable_network(peer.net.clone()));
    services
}

/// The next event `matches` accepts, skipping others (panics after 20 s).
async fn next_event(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    matches: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.recv().await.expect("the bus stays open");
            if matches(&event) {
                return event;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} event within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bus_reports_ingest_fetch_serving_replicas_repair_and_removal() {
    let a = Peer::start(&[]).await;
    let b = Peer::start(&[&a]).await;
    b.wait_connected(a.net.peer_id()).await;
    let (owner, reader) = (services(&a, keys(0)), services(&b, keys(1)));
    let (mut at_owner, mut at_reader) = (owner.events().subscribe(), reader.events().subscribe());
    let (a_id, b_id) = (a.net.peer_id().to_string(), b.net.peer_id().to_string());

    let stored = owner
        .ingest(
            Box::new(std::io::Cursor::new(noise(3 << 20, 7))),
            Ingest {
                content_type: None,
                patient: None,
                actor: "test".into(),
            },
        )
        .await
        .expect("ingest");
    let id = stored.id;
    let event = next_event(&mut at_owner, "record stored", |e| {
        matches!(e, NodeEvent::RecordStored { .. })
    })
    .await;
    assert_eq!(
        event,
        NodeEvent::RecordStored {
            record: id.to_string(),
            size: 3 << 20
        }
    );

    // B fetches: B reports the fetch, A reports serving B.
    let options = FetchOptions {
        providers: vec![a.net.peer_id()],
        ..FetchOptions::default()
    };
    let report = reader.fetch(id, options).await.expect("fetch");
    assert!(report.blocks_fetched > 0);
    let fetched = next_event(&mut at_reader, "record fetched", |e| {
        matches!(e, NodeEvent::RecordFetched { .. })
    })
    .await;
    assert_eq!(
        fetched,
        NodeEvent::RecordFetched {
            record: id.to_string(),
            providers: vec![a_id.clone()],
            blocks_fetched: report.blocks_fetched,
        }
    );
    let served = next_event(&mut at_owner, "record served", |e| {
        matches!(e, NodeEvent::RecordServed { .. })
    })
    .await;
    let NodeEvent::RecordServed {
        record,
        peer,
        blocks,
        bytes,
    } = served
    else {
        unreachable!()
    };
    assert_eq!((record, peer), (id.to_string(), b_id.clone()));
    assert!(blocks >= 1 && bytes > 0, "{blocks} blocks, {bytes} bytes");

    // B drops its copy, then holds a replica at A's request.
    reader.remove(id, "test").await.expect("remove");
    next_event(&mut at_reader, "record removed", |e| {
        *e == NodeEvent::RecordRemoved {
            record: id.to_string(),
        }
    })
    .await;
    let view = owner
        .replicate(id, 1, vec![b_id.clone()])
        .await
        .expect("replicate");
    assert!(view.outcomes[0].ok, "{:?}", view.outcomes);
    let held = next_event(&mut at_reader, "replica stored", |e| {
        matches!(e, NodeEvent::ReplicaStored { .. })
    })
    .await;
    assert!(
        matches!(&held, NodeEvent::ReplicaStored { record, peer, .. } if *record == id.to_string() && *peer == a_id),
        "{held:?}"
    );
    next_event(&mut at_owner, "replication changed", |e| {
        *e == NodeEvent::ReplicationChanged {
            record: id.to_string(),
            copies: 1,
            holders: vec![b_id.clone()],
        }
    })
    .await;

    // The repair pass restores a holder the settings lost, and says so.
    forget_holders(&a, id);
    a.net.repair(&a.store).await.expect("repair pass");
    next_event(&mut at_owner, "replicas repaired", |e| {
        *e == NodeEvent::ReplicationChanged {
            record: id.to_string(),
            copies: 1,
            holders: vec![b_id.clone()],
        }
    })
    .await;
}

fn forget_holders(peer: &Peer, id: RecordId) {
    let mut settings: Replication = peer.store.replication(&id).expect("read").expect("set");
    settings.holders.clear();
    peer.store.set_replication(&id, &settings).expect("write");
}

#[tokio::test]
async fn services_without_keys_refuse_to_sign_or_decrypt_and_do_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(medmesh_store::Store::open(&dir.path().join("store")).expect("store"));
    let services = NodeServices::without_keys(store.clone(), ServiceSettings::default());
    let ingest = services
        .ingest(
            Box::new(std::io::Cursor::new(b"x".to_vec())),
            Ingest {
                content_type: None,
                patient: None,
                actor: "test".into(),
            },
        )
        .await;
    assert!(
        matches!(ingest, Err(ServiceError::KeysLocked)),
        "{ingest:?}"
    );
    assert_eq!(
        store.record_count().expect("count"),
        0,
        "nothing was stored"
    );
    // Listing needs the index key (what `medmesh ls` unlocks), not the signing keys.
    let listed = services
        .search(medmesh_store::RecordQuery::default(), 10)
        .await;
    assert!(
        matches!(
            listed,
            Err(ServiceError::Store(medmesh_store::StoreError::IndexLocked))
        ),
        "{listed:?}"
    );
    store.unlock_index(medmesh_testkit::index_key());
    let id =
        medmesh_testkit::net::put_record(&store, &mut std::io::Cursor::new(noise(1000, 1)), 4096);
    let opened = services.open_record(id, "test").await;
    assert!(matches!(opened, Err(ServiceError::KeysLocked)));
    let (meta, _) = services
        .record(id)
        .await
        .expect("metadata needs the index key only");
    assert_eq!(meta.size, 1000);
    let report = services
        .remove(id, "test")
        .await
        .expect("removal needs no key");
    assert!(report.blocks_removed > 0);
}
