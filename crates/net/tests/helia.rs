//! Interop with an IPFS implementation not written here: Helia (JavaScript, from npm,
//! in `interop/helia`) fetches a medmesh block by CID over bitswap, and medmesh
//! fetches a block Helia added. Both sides check the bytes by SHA-256. Then Helia sends
//! large bitswap messages and a 32 MiB stream (js-libp2p's yamux then sends frames as
//! large as the window medmesh grants) and pings medmesh without serving ping itself.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use medmesh_core::Cid;
use medmesh_testkit::net::{put_record, Peer};
use medmesh_testkit::noise;
use serde_json::Value;
use tokio::sync::mpsc;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `node interop.mjs`: one JSON line per answer; steps are asked one a line on stdin.
struct Helia {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Helia {
    fn spawn(interop: &Path, target: &str, wanted: &str) -> Self {
        let mut child = Command::new("node")
            .arg(interop.join("interop.mjs"))
            .arg(target)
            .arg(wanted)
            .current_dir(interop)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js) runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.recv())
            .await
            .expect("Helia answers within 120 s")
            .expect("Helia printed a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn step(&mut self, step: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("Helia's stdin is open");
        writeln!(stdin, "{step}")
            .and_then(|()| stdin.flush())
            .expect("Helia reads its stdin");
        self.next().await
    }
}

impl Drop for Helia {
    fn drop(&mut self) {
        drop(self.stdin.take()); // Helia stops when its stdin closes.
        let _ = self.child.wait();
        let _ = std::io::stdout().flush();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_reads_our_blocks_and_we_read_helias() {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/helia");
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

    let mut helia = Helia::spawn(
        &interop,
        &net.listen_addrs()[0].to_string(),
        &chunk.to_string(),
    );

    // Helia fetched our chunk by bitswap; its bytes are ours.
    let report = helia.next().await;
    assert_eq!(report["fetched"], chunk.to_string());
    assert_eq!(report["len"], ours.len());
    assert_eq!(report["sha256"], sha256_hex(&ours));

    // We fetch the block Helia added, from Helia, by bitswap.
    let added = helia.next().await;
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

    // Large blocks (1 MiB each, the most we accept) from Helia, asked four at a time
    // (the bitswap streams we take per peer): Helia answers with messages of up to 4 MiB.
    let big = helia.step("big 16").await;
    let wanted: Vec<(Cid, String)> = big["big"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let cid = b["cid"].as_str().unwrap().parse().unwrap();
            (cid, b["sha256"].as_str().unwrap().to_string())
        })
        .collect();
    let fetched: Vec<_> = futures::stream::iter(
        wanted
            .iter()
            .map(|(cid, _)| async move { (*cid, net.bitswap_get(*cid, &[peer]).await) }),
    )
    .buffered(4)
    .collect()
    .await;
    for ((cid, bytes), (_, sha)) in fetched.into_iter().zip(&wanted) {
        let bytes = bytes.unwrap_or_else(|e| panic!("{cid}: {e}"));
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(&sha256_hex(&bytes), sha, "{cid}");
    }
    assert!(
        net.is_connected(&peer),
        "16 MiB of bitswap from Helia kept the connection"
    );

    // 32 MiB of bitswap messages on one stream: once our receive window has grown,
    // js-libp2p's yamux sends one frame per window. The connection must survive it.
    let pushed = helia.step("push 32").await;
    assert_eq!(pushed["error"], Value::Null, "{pushed}");
    assert_eq!(pushed["closes"], 0, "the connection was dropped: {pushed}");
    assert!(pushed["pushed"].as_u64().unwrap() >= 32 << 20, "{pushed}");
    assert!(
        net.is_connected(&peer),
        "Helia stays connected after 32 MiB"
    );

    // Helia (no ping service of its own, as a light js-libp2p node) pings us.
    let ping = helia.step("ping 3").await;
    assert_eq!(ping["error"], Value::Null, "{ping}");
    assert_eq!(ping["ping"].as_array().unwrap().len(), 3, "{ping}");
    assert_eq!(ping["closes"], 0, "{ping}");
}
