//! `medmesh node` on its embedded dev chain registers itself and anchors its audit log
//! (`GET /v1/chain` shows both); `medmesh chain status` reads them back, and
//! `medmesh audit verify --chain` checks the log against the anchors, catching a log
//! that was replaced by a consistent forgery the local walk accepts.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{medmesh, Proc};
use medmesh_store::{AuditAction, AuditEvent, Store};

fn run(dir: &Path, args: &[&str]) -> Output {
    medmesh(dir).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_and_anchors_and_the_cli_checks_its_log_against_the_chain() {
    let base = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", medmesh_testkit::free_port());
    let mut node = Proc::start_on_chain(
        base.path(),
        "a",
        &[],
        vec!["--dev-chain-listen".into(), listen.clone()],
    );
    let client = node.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = client.chain_info().await.unwrap();
        let registered = info.registration.as_ref().is_some_and(|r| r.registered);
        let anchored = info.anchoring.as_ref().is_some_and(|a| a.last.is_some());
        if registered && anchored {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "not registered and anchored within 60 s: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let registration = info.registration.unwrap();
    assert!(registration.approved, "genesis approves the node's account");
    assert_eq!(registration.peer_id, node.peer_id);
    assert_eq!(registration.name, "Test Hospital");
    let anchoring = info.anchoring.unwrap();
    assert_eq!(
        (anchoring.interval_secs, anchoring.every_entries),
        (3600, 1000)
    );
    assert_eq!(anchoring.last.unwrap().index, 0);

    // While the node runs, `chain status` reads its dev chain over JSON-RPC.
    let out = run(
        &node.dir,
        &["chain", "status", "--dev-chain-listen", &listen],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("registered:       yes"), "{said}");
    assert!(said.contains("audit anchors:    1"), "{said}");
    assert!(said.contains("the node is running"), "{said}");

    // Stopped, it opens the dev chain from the data dir and compares the local log.
    node.kill();
    let out = run(&node.dir, &["chain", "status"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("reaches the last anchor"), "{said}");
    let out = run(&node.dir, &["audit", "verify", "--chain"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("all reached"), "{said}");

    // Someone with the index file replaces the log by a consistent forgery of the same
    // length (every hash made by the store's own code).
    let store_dir = node.dir.join("store");
    let count = {
        let store = Store::open(&store_dir).unwrap();
        store.audit_verify().unwrap().unwrap().entries
    };
    let forged_dir = tempfile::tempdir().unwrap();
    let forged: Vec<Vec<u8>> = {
        let forged = Store::open(forged_dir.path()).unwrap();
        for i in 0..count {
            forged
                .audit(AuditEvent {
                    action: AuditAction::RecordWrite,
                    actor: "forger".into(),
                    subject: format!("forged-{i}"),
                    detail: Default::default(),
                })
                .unwrap();
        }
        forged
            .audit_page(0, count as usize)
            .unwrap()
            .iter()
            .map(|entry| serde_json::to_vec(entry).unwrap())
            .collect()
    };
    {
        let db = redb::Database::open(store_dir.join(Store::INDEX_FILE)).unwrap();
        let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
        let txn = db.begin_write().unwrap();
        {
            let mut audit = txn.open_table(table).unwrap();
            for (seq, bytes) in forged.iter().enumerate() {
                audit.insert(seq as u64, bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let out = run(&node.dir, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "the forgery passes the local walk: {}",
        text(&out)
    );
    let out = run(&node.dir, &["audit", "verify", "--chain"]);
    let said = text(&out);
    assert!(!out.status.success(), "the chain check must fail: {said}");
    assert!(said.contains("anchor #0"), "{said}");
    let out = run(&node.dir, &["chain", "status"]);
    assert!(
        text(&out).contains("DOES NOT reach the last anchor"),
        "{}",
        text(&out)
    );
}
