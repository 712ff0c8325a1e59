//! `medmesh node` processes forming a network on 127.0.0.1: discovery through the DHT,
//! fetching by CID, replication surviving the owner's stop, a 1 GiB record moved and
//! verified, and a node killed mid-transfer resuming after restart.

mod common;

use std::time::{Duration, Instant};

use common::{medmesh, Proc};
use medmesh_sdk::{FetchRequest, Transfer};
use medmesh_testkit::{files_under, noise};

/// Gives `node` the institution keys of `owner`: two sites of one hospital, so the
/// second can decrypt what it fetches. The index key goes too: the one `node` made at
/// its first start is wrapped for the keys it had then.
fn share_institution_keys(owner: &Proc, node: &Proc) {
    for file in ["institution.pgp", "institution.cert.asc", "index.key"] {
        std::fs::copy(
            owner.dir.join("keys").join(file),
            node.dir.join("keys").join(file),
        )
        .unwrap();
    }
}

async fn wait_for_peers(node: &Proc, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.client().network().await.unwrap().peers.len() < n {
        assert!(
            Instant::now() < deadline,
            "node on {} never saw {n} peers",
            node.api
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_find_fetch_and_outlive_the_owner() {
    let base = tempfile::tempdir().unwrap();
    let mut a = Proc::start(base.path(), "a", &[]);
    let b = Proc::start(base.path(), "b", &[&a]);
    let mut c = Proc::start(base.path(), "c", &[]);
    c.kill();
    share_institution_keys(&a, &c);
    c.run(&[b.addr()]); // C knows only B
    wait_for_peers(&b, 2).await;

    let data = noise(5 * 1024 * 1024 + 3, 11);
    let record = a
        .client()
        .upload(data.clone(), Default::default())
        .await
        .unwrap();
    let id = record.id.to_string();

    // C finds A through the DHT (via B) and fetches the record by its CID.
    let report = c
        .client()
        .fetch_record(&id, &[], Transfer::FastPath)
        .await
        .unwrap();
    assert_eq!(report.providers, vec![a.peer_id.clone()], "{report:?}");
    assert_eq!(report.blocks_fetched, report.blocks_total);
    assert_eq!(c.client().download(&id).await.unwrap(), data);
    // C is a site of A's institution: the record it fetched is its own, listed as such
    // (B, another institution, would only hold it).
    let listed = c.client().search_all(&Default::default()).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.to_string()).collect::<Vec<_>>(),
        vec![id.clone()]
    );

    // A places a replica on B, then stops; C lost its copy and gets it from B.
    let status = a
        .client()
        .replicate(&id, 1, std::slice::from_ref(&b.peer_id))
        .await
        .unwrap();
    assert_eq!(status.holders, vec![b.peer_id.clone()], "{status:?}");
    assert!(status.outcomes[0].ok);
    assert_eq!(b.client().replication(&id).await.unwrap().copies, 0);
    a.kill();
    c.client().delete(&id).await.unwrap();
    // A plain download fetches what is missing first.
    assert_eq!(c.client().download(&id).await.unwrap(), data);
    let audit = c.client().audit(0, 1000).await.unwrap();
    assert!(
        audit
            .entries
            .iter()
            .filter(|e| e.action == "record_import")
            .count()
            >= 2,
        "fetches are audited"
    );

    // Bad input: unknown record, malformed ids and peers, a replica on itself.
    let unknown = {
        let lonely = Proc::start(base.path(), "d", &[]);
        lonely
            .client()
            .upload(b"only here".to_vec(), Default::default())
            .await
            .unwrap()
            .id
            .to_string()
    };
    let err = b
        .client()
        .fetch_record(&unknown, &[], Transfer::FastPath)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let err = b
        .client()
        .fetch_record("nope", &[], Transfer::FastPath)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let err = b
        .client()
        .fetch_record(&id, &["not-a-peer".into()], Transfer::FastPath)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let err = b
        .client()
        .replicate(&id, 1, std::slice::from_ref(&b.peer_id))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let err = b
        .client()
        .replicate(&id, 2, &[c.peer_id.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(b.client().check().await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_moves_verified_and_a_killed_fetch_resumes() {
    let base = tempfile::tempdir().unwrap();
    let a = Proc::start(base.path(), "a", &[]);
    let mut b = Proc::start(base.path(), "b", &[&a]);
    wait_for_peers(&b, 1).await;
    let file = base.path().join("gib.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..64 {
            f.write_all(&noise(16 << 20, 100 + i)).unwrap();
        }
    }
    let record = a
        .client()
        .upload_file(&file, Default::default())
        .await
        .unwrap();
    let id = record.id.to_string();
    std::fs::remove_file(&file).unwrap();

    // B starts fetching and is killed part-way through.
    let fetch = {
        let client = b.client();
        let id = id.clone();
        tokio::spawn(async move { client.fetch_record(&id, &[], Transfer::FastPath).await })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while b.block_files() < 200 {
        assert!(Instant::now() < deadline, "the transfer did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill();
    assert!(fetch.await.unwrap().is_err(), "the fetch was cut");
    let kept = b.block_files();
    assert!(
        (200..1025).contains(&kept),
        "{kept} blocks before the restart"
    );

    // Restarted, it fetches only what is missing, and every block verifies.
    b.run(&[a.addr()]);
    wait_for_peers(&b, 1).await;
    let report = b
        .client()
        .fetch_record(&id, &[], Transfer::FastPath)
        .await
        .unwrap();
    assert_eq!(report.blocks_total, 1024 + 1 + 1, "{report:?}");
    assert!(report.blocks_present >= 200, "{report:?}");
    assert_eq!(
        report.blocks_present + report.blocks_fetched,
        report.blocks_total
    );
    let check = b.client().check().await.unwrap();
    assert!(check.problems.is_empty(), "{check:?}");
    assert_eq!(check.records, 1);
    assert!(check.blocks_checked >= 1026);
}

/// `medmesh get` on a stopped node fetches a record it lacks from `--peer` (with the
/// institution's keys it then decrypts it); `medmesh fetch` stores blocks only; both
/// explain what is missing when they cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_get_and_fetch_pull_records_from_peers() {
    let base = tempfile::tempdir().unwrap();
    let a = Proc::start(base.path(), "a", &[]);
    let mut site = Proc::start(base.path(), "site", &[]);
    site.kill();
    share_institution_keys(&a, &site);
    let data = noise(2 * 1024 * 1024 + 5, 21);
    let id = a
        .client()
        .upload(data.clone(), Default::default())
        .await
        .unwrap()
        .id
        .to_string();

    let out_file = base.path().join("out.bin");
    let got = medmesh(&site.dir)
        .args(["get", &id, "--peer", &a.addr(), "-o"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(String::from_utf8_lossy(&got.stderr).contains("fetched"));
    assert_eq!(std::fs::read(&out_file).unwrap(), data);

    let other = Proc::start(base.path(), "other", &[]);
    let other_dir = other.dir.clone();
    drop(other);
    let fetched = medmesh(&other_dir)
        .args(["fetch", &id, "--json", "--peer", &a.addr()])
        .output()
        .unwrap();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(report["blocks_fetched"], report["blocks_total"]);
    // Another institution's record: stored, but not readable without a released key.
    let denied = medmesh(&other_dir)
        .args(["get", &id, "-o"])
        .arg(base.path().join("denied.bin"))
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(!base.path().join("denied.bin").exists());

    let lonely = Proc::start(base.path(), "lonely", &[]);
    let lonely_dir = lonely.dir.clone();
    drop(lonely);
    let no_peer = medmesh(&lonely_dir).args(["fetch", &id]).output().unwrap();
    assert!(!no_peer.status.success());
    assert!(
        String::from_utf8_lossy(&no_peer.stderr).contains("--peer"),
        "{}",
        String::from_utf8_lossy(&no_peer.stderr)
    );
    let garbage = medmesh(&lonely_dir)
        .args(["fetch", "garbage"])
        .output()
        .unwrap();
    assert!(!garbage.status.success());
    let bad_peer = medmesh(&lonely_dir)
        .args(["fetch", &id, "--peer", "/not/an/addr"])
        .output()
        .unwrap();
    assert!(!bad_peer.status.success());
}

/// A node whose disk corrupted the blocks it serves: the fetcher detects the first bad
/// block, bans that node, and gets the record whole from the other provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serving_corrupt_blocks_is_banned_and_the_record_comes_from_another() {
    let base = tempfile::tempdir().unwrap();
    let a = Proc::start(base.path(), "a", &[]);
    let b = Proc::start(base.path(), "b", &[&a]);
    wait_for_peers(&b, 1).await;
    let id = a
        .client()
        .upload(noise(6 * 1024 * 1024, 31), Default::default())
        .await
        .unwrap()
        .id
        .to_string();
    let placed = a
        .client()
        .replicate(&id, 1, std::slice::from_ref(&b.peer_id))
        .await
        .unwrap();
    assert_eq!(placed.holders, vec![b.peer_id.clone()]);
    // B's disk flips a bit in every chunk (the fast path serves blocks without
    // re-hashing them; the receiver checks each one).
    let chunks = a.client().record(&id).await.unwrap().chunks;
    let mut flipped = 0;
    for file in files_under(&b.dir.join("store/blocks")) {
        if file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("bafk")
        {
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[100] ^= 1;
            std::fs::write(&file, bytes).unwrap();
            flipped += 1;
        }
    }
    assert_eq!(flipped, chunks);

    let c = Proc::start(base.path(), "c", &[&a, &b]);
    wait_for_peers(&c, 2).await;
    let request = FetchRequest {
        providers: vec![b.peer_id.clone(), a.peer_id.clone()],
        transfer: Transfer::FastPath,
        batch: Some(1),
    };
    let report = c.client().fetch_record_with(&id, &request).await.unwrap();
    assert_eq!(report.banned, vec![b.peer_id.clone()], "{report:?}");
    assert!(report.providers.contains(&a.peer_id), "{report:?}");
    assert!(c.client().check().await.unwrap().problems.is_empty());
    // B's own check finds what its disk did.
    assert_eq!(b.client().check().await.unwrap().problems.len(), chunks);
    let bad_batch = FetchRequest {
        batch: Some(0),
        ..request
    };
    let err = c
        .client()
        .fetch_record_with(&id, &bad_batch)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}
