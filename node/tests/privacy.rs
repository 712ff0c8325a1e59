//! Nothing about a patient leaves the owner's node in clear, across separate `medmesh
//! node` processes: a second node that fetched a record, and a bare bitswap client,
//! find no patient reference, media type or creation time in its manifest; a marker
//! patient reference appears in no file of either data dir, no log line and no gossip
//! message; the second node does not list or search the record as its own.

mod common;

use std::time::{Duration, Instant};

use common::Proc;
use medmesh_core::{Manifest, RecordId};
use medmesh_net::NetEvent;
use medmesh_sdk::{SearchQuery, Transfer, UploadOptions};
use medmesh_testkit::files_under;

const MARKER_PATIENT: &str = "MRN-PRIVACY-MARKER-31337";
const MARKER_TYPE: &str = "application/x-privacy-marker";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_reference_type_or_time_leaves_the_owner_in_clear() {
    let base = tempfile::tempdir().unwrap();
    let a = Proc::start_logged(base.path(), "a", &[]);
    let b = Proc::start_logged(base.path(), "b", &[&a]);
    // A bare network peer: a bitswap client, and a listener on every gossip topic.
    let outsider = medmesh_testkit::net::Peer::start(&[]).await;
    let mut gossip = outsider.net.events();
    outsider.net.dial(a.addr().parse().unwrap()).await.unwrap();

    let uploaded = a
        .client()
        .upload(
            b"an observation that names nobody".to_vec(),
            UploadOptions {
                patient: Some(MARKER_PATIENT.into()),
                content_type: Some(MARKER_TYPE.into()),
            },
        )
        .await
        .unwrap();
    let id = uploaded.id.to_string();
    let created = uploaded.meta.created;
    // What must not be readable: the reference, the type, and the creation time in the
    // forms a serializer would write it (RFC 3339 text, Unix seconds as text).
    let created_rfc3339 = created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let created_secs = created.unix_timestamp().to_string();
    let secrets = [
        MARKER_PATIENT,
        MARKER_TYPE,
        "x-privacy",
        &created_rfc3339[..19],
        &created_secs,
    ];

    // The owner still finds it by patient and type, and shows its metadata.
    let by_patient = a
        .client()
        .search_all(&SearchQuery {
            patient: Some(MARKER_PATIENT.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_patient.len(), 1);
    let info = a.client().record(&id).await.unwrap();
    assert_eq!(info.meta.patient.unwrap().as_str(), MARKER_PATIENT);
    assert_eq!(info.meta.content_type.as_str(), MARKER_TYPE);

    // A second medmesh node fetches the record: it holds it, but cannot read its
    // metadata, and does not list it as its own.
    let report = b
        .client()
        .fetch_record(&id, std::slice::from_ref(&a.peer_id), Transfer::FastPath)
        .await
        .unwrap();
    assert_eq!(report.blocks_fetched, 2, "{report:?}");
    for query in [
        SearchQuery::default(),
        SearchQuery {
            patient: Some(MARKER_PATIENT.into()),
            ..Default::default()
        },
    ] {
        let found = b.client().search_all(&query).await.unwrap();
        assert!(
            found.is_empty(),
            "B lists another institution's record: {found:?}"
        );
    }
    let err = b.client().record(&id).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(
        err.to_string().contains("held here for institution"),
        "{err}"
    );

    // The manifest as B stored it, and as a bitswap client gets it from A.
    let record: RecordId = id.parse().unwrap();
    let at_b = files_under(&b.dir.join("store/blocks"))
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&id))
        .expect("B stores the manifest block");
    let from_bitswap = outsider
        .net
        .bitswap_get(*record.cid(), &[a.peer_id.parse().unwrap()])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&at_b).unwrap(), from_bitswap);
    let manifest = Manifest::decode(&from_bitswap).unwrap();
    assert_eq!(manifest.body.chunks.len(), 1, "what an outsider may see");
    for secret in secrets {
        assert!(
            !contains(&from_bitswap, secret),
            "the public manifest shows `{secret}`"
        );
    }

    // No file of either data dir, no log line.
    for node in [&a, &b] {
        for path in files_under(&node.dir) {
            let bytes = std::fs::read(&path).unwrap();
            for secret in [MARKER_PATIENT, MARKER_TYPE, "x-privacy"] {
                assert!(
                    !contains(&bytes, secret),
                    "`{secret}` is readable in {}",
                    path.display()
                );
            }
        }
    }
    for node in [&a, &b] {
        let log = node.log_text();
        assert!(log.contains("record"), "the log was captured: {log}");
        for secret in [MARKER_PATIENT, MARKER_TYPE, "x-privacy"] {
            assert!(!log.contains(secret), "`{secret}` is in a node's log");
        }
    }

    // Gossip: every message the outsider receives until A's presence arrives (A
    // announces itself every 30 s) is free of the marker.
    let a_peer: medmesh_net::PeerId = a.peer_id.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut from_a = 0;
    while from_a == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no gossip from A within 45 s");
        match tokio::time::timeout(left, gossip.recv()).await {
            Ok(Ok(NetEvent::Gossip { from, data, .. })) => {
                for secret in [MARKER_PATIENT, MARKER_TYPE, "x-privacy"] {
                    assert!(!contains(&data, secret), "`{secret}` in a gossip message");
                }
                if from == Some(a_peer) {
                    from_a += 1;
                }
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("the outsider's events stopped: {e}"),
            Err(_) => panic!("no gossip from A within 45 s"),
        }
    }
}
