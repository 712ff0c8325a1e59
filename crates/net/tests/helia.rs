//! Interop with an IPFS implementation not written here: Helia (JavaScript, from npm,
//! in `interop/helia`) fetches a medmesh block by CID over bitswap, and medmesh
//! fetches a block Helia added. Both sides check the bytes by SHA-256.

use medmesh_core::Cid;
use medmesh_testkit::net::{put_record, Peer};
use medmesh_testkit::noise;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_reads_our_blocks_and_we_read_helias() {
    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/helia");
    assert!(
        interop.join("node_modules/helia").exists(),
        "Helia is not installed: run `npm install` in {} (scripts/test.sh does)",
        interop.display()
    );
    let ours_peer = Peer::start(&[]).await;
    let (store, net) = (&ours_peer.store, &ours_peer.net);
    let id = put_record(store, &mut &noise(300_000, 9)[..], 128 * 1024);
    let chunk = store.manifest(&id).unwrap().body.chunks[1];
    let ours = store.blocks().get(&chunk).unwrap();

    let mut helia = Command::new("node")
        .arg(interop.join("interop.mjs"))
        .arg(net.listen_addrs()[0].to_string())
        .arg(chunk.to_string())
        .current_dir(&interop)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node (Node.js) runs");
    let mut lines = BufReader::new(helia.stdout.take().unwrap()).lines();
    let mut next = move || -> serde_json::Value {
        let line = lines.next().expect("Helia printed a line").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };

    // Helia fetched our chunk by bitswap; its bytes are ours.
    let fetched = tokio::task::spawn_blocking(move || (next(), next))
        .await
        .unwrap();
    let (report, next) = fetched;
    assert_eq!(report["fetched"], chunk.to_string());
    assert_eq!(report["len"], ours.len());
    assert_eq!(report["sha256"], sha256_hex(&ours));

    // We fetch the block Helia added, from Helia, by bitswap.
    let added = tokio::task::spawn_blocking(next).await.unwrap();
    let cid: Cid = added["added"].as_str().unwrap().parse().unwrap();
    let peer = added["peer"].as_str().unwrap().parse().unwrap();
    assert!(net.is_connected(&peer), "Helia stays connected");
    let bytes = net.bitswap_get(cid, &[peer]).await.unwrap();
    assert_eq!(bytes.len() as u64, added["len"].as_u64().unwrap());
    assert_eq!(sha256_hex(&bytes), added["sha256"].as_str().unwrap());
    assert_eq!(
        store.blocks().get(&cid).unwrap(),
        bytes,
        "stored, verified on read"
    );

    drop(helia.stdin.take()); // Helia stops when its stdin closes.
    let _ = helia.wait();
    let _ = std::io::stdout().flush();
}
