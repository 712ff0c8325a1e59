//! Audit anchoring on a real EVM: the node's account anchors its log's head in
//! `AuditAnchor`, and the chain check catches what the local walk alone cannot — a log
//! rewritten consistently (every hash recomputed) before an anchor, or cut short. Also
//! the node's registration through the relaying account. On both backends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use medmesh_chain::anchor::{self, audit_head};
use medmesh_chain::{ChainError, Relayer};
use medmesh_store::{AuditAction, AuditEntry, AuditEvent, Store};
use medmesh_testkit::chain::{Chain, Mined, BACKENDS};

/// The audit log's hash domain (`crates/store/src/audit.rs`): what a forger with the
/// database file needs to recompute every hash.
const DOMAIN: &[u8] = b"medmesh/audit/v1\n";

fn forged_hash(entry: &AuditEntry) -> String {
    let mut unhashed = entry.clone();
    unhashed.hash.clear();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(DOMAIN);
    ctx.update(&serde_json::to_vec(&unhashed).unwrap());
    hex::encode(ctx.finish())
}

fn append(store: &Store, n: usize, what: &str) {
    for i in 0..n {
        store
            .audit(AuditEvent {
                action: AuditAction::RecordWrite,
                actor: "test".into(),
                subject: format!("{what}-{i}"),
                detail: BTreeMap::new(),
            })
            .unwrap();
    }
}

fn relayer_for(chain: &Chain, account: &PrivateKeySigner) -> Relayer {
    Relayer::connect(
        chain.endpoint.clone(),
        account.clone(),
        chain.deployment.consent_registry,
    )
}

/// Anchors the store's current head as `relayer`'s account; returns the anchor index.
async fn anchor_head(chain: &Chain, relayer: &Relayer, store: &Store) -> u64 {
    let summary = store.audit_verify().unwrap().unwrap();
    let sent = relayer
        .anchor_audit(
            chain.deployment.audit_anchor,
            audit_head(&summary.head).unwrap(),
            summary.entries,
        )
        .await
        .unwrap();
    sent.index
}

/// Rewrites the audit table of the store in `dir` (closed) as someone with the file
/// would: `edit` changes entries from position `from` on, and every hash from there is
/// recomputed so that the chain stays consistent. `keep` cuts the log to that many
/// entries first, when given.
fn rewrite(dir: &Path, from: u64, keep: Option<u64>, edit: impl Fn(&mut AuditEntry)) {
    let entries = {
        let store = Store::open(dir).unwrap();
        store.audit_page(0, 10_000).unwrap()
    };
    let db = redb::Database::open(dir.join(Store::INDEX_FILE)).unwrap();
    let table_def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(table_def).unwrap();
        let keep = keep.unwrap_or(entries.len() as u64);
        let mut prev = None;
        for mut entry in entries {
            if entry.seq >= keep {
                table.remove(entry.seq).unwrap();
                continue;
            }
            if entry.seq < from {
                prev = Some(entry.hash.clone());
                continue;
            }
            if entry.seq == from {
                edit(&mut entry);
            }
            if let Some(prev) = &prev {
                entry.prev = prev.clone();
            }
            entry.hash = forged_hash(&entry);
            prev = Some(entry.hash.clone());
            table
                .insert(entry.seq, serde_json::to_vec(&entry).unwrap().as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_log_rewritten_consistently_before_an_anchor_fails_the_chain_check() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        // The hospital is approved and registered: it may anchor.
        let relayer = relayer_for(&chain, &chain.hospital);
        let institution = chain.hospital.address();
        let provider = chain.provider(&chain.admin);
        let contract = chain.deployment.audit_anchor;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());

        // Nothing anchored yet: nothing to compare, the log verifies.
        append(&store, 5, "before");
        let report = anchor::verify_against_chain(store.clone(), &provider, contract, institution)
            .await
            .unwrap();
        assert!(report.is_ok(), "{backend:?}: {report:?}");
        assert_eq!((report.checked, report.last), (0, None));

        // Two anchors: after 5 entries and after 8; then 2 entries not anchored yet.
        assert_eq!(anchor_head(&chain, &relayer, &store).await, 0);
        append(&store, 3, "middle");
        assert_eq!(anchor_head(&chain, &relayer, &store).await, 1);
        append(&store, 2, "after");
        let anchors = anchor::anchors(&provider, contract, institution)
            .await
            .unwrap();
        assert_eq!(
            anchors.iter().map(|a| a.entries).collect::<Vec<_>>(),
            [5, 8]
        );
        let entries = store.audit_page(0, 100).unwrap();
        assert_eq!(anchors[0].head_hex(), entries[4].hash);
        assert_eq!(anchors[1].head_hex(), entries[7].hash);
        let report = anchor::verify_against_chain(store.clone(), &provider, contract, institution)
            .await
            .unwrap();
        assert!(report.is_ok(), "{backend:?}: {report:?}");
        assert_eq!((report.checked, report.mismatches), (2, 0));
        assert_eq!(report.last, Some(anchors[1]));

        // Entry 2 rewritten, every hash after it recomputed.
        drop(store);
        rewrite(dir.path(), 2, None, |e| e.actor = "someone-else".into());
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let summary = store
            .audit_verify()
            .unwrap()
            .expect("a consistent rewrite passes the local walk");
        assert_eq!(summary.entries, 10);
        assert_ne!(summary.head, entries[9].hash, "the head changed");

        // The chain check names the first anchor the rewritten log no longer reaches.
        let report = anchor::verify_against_chain(store.clone(), &provider, contract, institution)
            .await
            .unwrap();
        assert!(!report.is_ok(), "{backend:?}: the rewrite must be detected");
        assert!(report.log.is_ok());
        assert_eq!((report.checked, report.mismatches), (2, 2));
        let mismatch = report.first_mismatch.clone().unwrap();
        assert_eq!(mismatch.anchor, anchors[0]);
        let rewritten = store.audit_page(4, 1).unwrap().remove(0);
        assert_eq!(mismatch.local.as_deref(), Some(rewritten.hash.as_str()));
        let said = mismatch.to_string();
        assert!(
            said.contains("anchor #0") && said.contains("entry 4") && said.contains("rewritten"),
            "{said}"
        );
        drop(store);
    }
}

#[tokio::test]
async fn a_rewrite_after_the_last_anchor_is_not_caught_but_a_cut_log_is() {
    let chain = Chain::start_on(medmesh_testkit::chain::Backend::Embedded).await;
    let relayer = relayer_for(&chain, &chain.hospital);
    let institution = chain.hospital.address();
    let provider = chain.provider(&chain.admin);
    let contract = chain.deployment.audit_anchor;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    append(&store, 4, "anchored");
    anchor_head(&chain, &relayer, &store).await;
    append(&store, 3, "later");
    drop(store);

    // What came after the last anchor is only as safe as the local walk: a consistent
    // rewrite of entry 5 goes unnoticed until the next anchor.
    rewrite(dir.path(), 5, None, |e| e.subject = "forged".into());
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let report = anchor::verify_against_chain(store.clone(), &provider, contract, institution)
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    drop(store);

    // A log cut before the anchored head (and made consistent) is caught.
    rewrite(dir.path(), 0, Some(3), |_| {});
    let store = Arc::new(Store::open(dir.path()).unwrap());
    assert_eq!(store.audit_verify().unwrap().unwrap().entries, 3);
    let report = anchor::verify_against_chain(store.clone(), &provider, contract, institution)
        .await
        .unwrap();
    let mismatch = report.first_mismatch.expect("the cut is detected");
    assert_eq!(mismatch.local, None);
    assert!(mismatch.to_string().contains("no entry 3"), "{mismatch}");
}

#[tokio::test]
async fn only_registered_institutions_anchor_and_an_anchor_never_goes_back() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let contract = chain.deployment.audit_anchor;
        let head = B256::repeat_byte(1);
        // The stranger is no registered institution.
        let err = relayer_for(&chain, &chain.stranger)
            .anchor_audit(contract, head, 3)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ChainError::Reverted(r) if r.contains("NotRegistered")),
            "{backend:?}: {err}"
        );
        let hospital = relayer_for(&chain, &chain.hospital);
        hospital.anchor_audit(contract, head, 3).await.unwrap();
        let err = hospital.anchor_audit(contract, head, 2).await.unwrap_err();
        assert!(
            matches!(&err, ChainError::Reverted(r) if r.contains("EntriesDecreased")),
            "{backend:?}: {err}"
        );
    }
}

#[tokio::test]
async fn the_relaying_account_registers_its_node_once_approved() {
    for backend in BACKENDS {
        let chain = Chain::start_on(backend).await;
        let registry = chain.deployment.node_registry;
        let provider = chain.provider(&chain.admin);
        let account = &chain.relayer;
        let relayer = relayer_for(&chain, account);
        let peer = b"\x00\x24another peer".to_vec();
        let fingerprint = B256::repeat_byte(9);

        let before = medmesh_chain::registration(&provider, registry, account.address())
            .await
            .unwrap();
        assert!(!before.approved && before.node.is_none() && before.key.is_none());
        // Not approved: the registry refuses, and says why.
        let err = relayer
            .register_node(registry, peer.clone(), fingerprint, "Relaying Lab".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ChainError::Reverted(r) if r.contains("NotApprovedInstitution")),
            "{backend:?}: {err}"
        );

        chain
            .registry(&chain.admin)
            .approveInstitution(account.address())
            .mined()
            .await;
        let sent = relayer
            .register_node(registry, peer.clone(), fingerprint, "Relaying Lab".into())
            .await
            .unwrap();
        assert!(sent.block > 0);
        let after = medmesh_chain::registration(&provider, registry, account.address())
            .await
            .unwrap();
        assert!(after.is_registered());
        assert!(after.lists(&peer, &fingerprint.0, "Relaying Lab"));
        assert!(!after.lists(&peer, &fingerprint.0, "Another name"));
        assert_eq!(
            after.key,
            Some(fingerprint.0),
            "registering publishes the key"
        );
        let registered = medmesh_chain::registered_node(&provider, registry, account.address())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(registered.peer_id, peer);
    }
}

#[tokio::test]
async fn the_dev_chain_approves_the_node_account_at_genesis() {
    let dev = medmesh_chain::devchain::DevChain::open(None).await.unwrap();
    let (url, _task) = dev.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let node = medmesh_chain::devchain::node_signer();
    assert_eq!(
        node.address(),
        medmesh_chain::devchain::dev_signers()[medmesh_chain::devchain::NODE_ACCOUNT].address()
    );
    let provider = medmesh_testkit::chain::provider_at(&url.parse().unwrap(), &node);
    let state =
        medmesh_chain::registration(&provider, dev.deployment().node_registry, node.address())
            .await
            .unwrap();
    assert!(state.approved && !state.is_registered());
    // Already approved: nothing to do.
    assert!(!dev.ensure_approved(node.address()).await.unwrap());
    // Another account is approved on demand.
    let other = medmesh_chain::devchain::dev_signers()[7].address();
    assert!(dev.ensure_approved(other).await.unwrap());
    assert!(
        medmesh_chain::registration(&provider, dev.deployment().node_registry, other)
            .await
            .unwrap()
            .approved
    );
}
