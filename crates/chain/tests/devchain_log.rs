//! The dev chain's persistence: every acknowledged transaction is in an append-only
//! log before it is answered, concurrent senders all get their answer, and a restart —
//! from the log alone, across snapshots, after a crash between a snapshot and the log's
//! truncation, or with a torn last entry — finds the same chain.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::{BlockNumberOrTag, Encodable2718};
use alloy::network::EthereumWallet;
use alloy::primitives::{keccak256, Address, Bytes, TxKind, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use medmesh_chain::bindings::NodeRegistry;
use medmesh_chain::devchain::{dev_signers, DevChain, CHAIN_ID};
use medmesh_testkit::chain::Mined;

const GWEI: u128 = 1_000_000_000;
const ETHER: u128 = 1_000_000_000_000_000_000;

/// A signed EIP-1559 transfer of `value` wei from `from` (at `nonce`) to `to`: its
/// hash and its raw bytes.
fn transfer(from: &PrivateKeySigner, nonce: u64, to: Address, value: U256) -> (B256, Vec<u8>) {
    let tx = TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 2 * GWEI,
        max_priority_fee_per_gas: 0,
        to: TxKind::Call(to),
        value,
        access_list: Default::default(),
        input: Bytes::new(),
    };
    let signature = from
        .sign_hash_sync(&tx.signature_hash())
        .expect("dev key signs");
    let envelope = TxEnvelope::from(tx.into_signed(signature));
    (*envelope.tx_hash(), envelope.encoded_2718())
}

/// Serves `chain`; returns its URL, a read-only provider and the server task.
async fn serve(chain: &DevChain) -> (String, DynProvider, tokio::task::JoinHandle<()>) {
    let (url, task) = chain.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let provider = ProviderBuilder::new()
        .connect_http(url.parse().unwrap())
        .erased();
    (url, provider, task)
}

/// Sends `raw` with `eth_sendRawTransaction`; the call must succeed.
async fn send(provider: &DynProvider, raw: &[u8]) -> B256 {
    *provider
        .send_raw_transaction(raw)
        .await
        .expect("transaction accepted")
        .tx_hash()
}

/// `count` transfers of 1 wei from `from` to `to`, one after the other.
async fn send_transfers(
    provider: &DynProvider,
    from: &PrivateKeySigner,
    to: Address,
    count: usize,
) -> Vec<B256> {
    let mut nonce = provider
        .get_transaction_count(from.address())
        .await
        .unwrap();
    let mut hashes = Vec::new();
    for _ in 0..count {
        let (hash, raw) = transfer(from, nonce, to, U256::from(1u64));
        assert_eq!(send(provider, &raw).await, hash);
        hashes.push(hash);
        nonce += 1;
    }
    hashes
}

fn log_of(dir: &Path) -> PathBuf {
    dir.join("devchain.log")
}

fn log_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log_of(dir))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a log entry is a JSON line"))
        .collect()
}

/// Number of the last block in the snapshot file.
fn snapshot_head(path: &Path) -> u64 {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let blocks = state["blocks"].as_array().expect("blocks in the snapshot");
    blocks.len() as u64 - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_raw_transactions_are_all_acknowledged_and_mined() {
    let dir = tempfile::tempdir().unwrap();
    let chain = DevChain::open(Some(&dir.path().join("devchain.json")))
        .await
        .unwrap();
    let (_url, provider, _task) = serve(&chain).await;
    let start = provider.get_block_number().await.unwrap();
    let devs = dev_signers();
    let fresh: Vec<PrivateKeySigner> = (1..=50u64)
        .map(|i| PrivateKeySigner::from_bytes(&keccak256(i.to_be_bytes())).unwrap())
        .collect();

    // The ten dev accounts at once, each funding five fresh accounts in nonce order
    // (the chain has no mempool: one sender's transactions must arrive in order).
    let mut funding = Vec::new();
    for (d, dev) in devs.iter().enumerate() {
        let provider = provider.clone();
        let dev = dev.clone();
        let targets: Vec<Address> = fresh[d * 5..d * 5 + 5]
            .iter()
            .map(|s| s.address())
            .collect();
        funding.push(tokio::spawn(async move {
            let mut nonce = provider.get_transaction_count(dev.address()).await.unwrap();
            let mut sent = Vec::new();
            for to in targets {
                let (hash, raw) = transfer(&dev, nonce, to, U256::from(ETHER));
                let answer = provider
                    .send_raw_transaction(&raw)
                    .await
                    .map(|pending| *pending.tx_hash())
                    .map_err(|e| e.to_string());
                sent.push((hash, answer));
                nonce += 1;
            }
            sent
        }));
    }
    // Then the fifty fresh accounts at once, each sending a tenth of it back.
    let mut sent = Vec::new();
    for task in funding {
        sent.extend(task.await.unwrap());
    }
    let back = U256::from(ETHER / 10);
    let mut returns = Vec::new();
    for signer in &fresh {
        let provider = provider.clone();
        let (hash, raw) = transfer(signer, 0, devs[0].address(), back);
        returns.push(tokio::spawn(async move {
            let answer = provider
                .send_raw_transaction(&raw)
                .await
                .map(|pending| *pending.tx_hash())
                .map_err(|e| e.to_string());
            (hash, answer)
        }));
    }
    let funded = sent.len();
    for task in returns {
        sent.push(task.await.unwrap());
    }

    let failed: Vec<_> = sent.iter().filter(|(_, a)| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls answered an error: {failed:?}",
        failed.len(),
        sent.len()
    );
    for (hash, answer) in &sent {
        assert_eq!(answer.as_ref().ok(), Some(hash));
        let receipt = provider
            .get_transaction_receipt(*hash)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no receipt for acknowledged {hash}"));
        assert!(receipt.status());
    }
    assert_eq!(
        provider.get_block_number().await.unwrap(),
        start + sent.len() as u64
    );
    for (signer, (hash, _)) in fresh.iter().zip(&sent[funded..]) {
        let receipt = provider
            .get_transaction_receipt(*hash)
            .await
            .unwrap()
            .unwrap();
        let fee = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
        assert_eq!(
            provider.get_balance(signer.address()).await.unwrap(),
            U256::from(ETHER) - back - fee
        );
    }
    assert_eq!(
        log_lines(dir.path()).len(),
        sent.len(),
        "one log entry per block"
    );
}

#[tokio::test]
async fn a_transaction_appends_to_the_log_and_leaves_the_snapshot_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, _task) = serve(&chain).await;
    let snapshot = std::fs::read(&path).unwrap();
    let head = provider.get_block_number().await.unwrap();
    assert!(
        log_lines(dir.path()).is_empty(),
        "genesis is in the snapshot"
    );

    let keys = dev_signers();
    let hashes = send_transfers(&provider, &keys[1], keys[2].address(), 3).await;

    assert_eq!(
        std::fs::read(&path).unwrap(),
        snapshot,
        "no rewrite per block"
    );
    let entries = log_lines(dir.path());
    assert_eq!(entries.len(), 3);
    for (i, (entry, hash)) in entries.iter().zip(&hashes).enumerate() {
        let block = head + 1 + i as u64;
        assert_eq!(entry["block"].as_u64(), Some(block));
        let mined = provider
            .get_block_by_number(BlockNumberOrTag::Number(block))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry["timestamp"].as_u64(), Some(mined.header.timestamp));
        let raw: Bytes = serde_json::from_value(entry["tx"].clone()).unwrap();
        assert_eq!(
            keccak256(&raw),
            *hash,
            "the log holds the signed transaction"
        );
    }
    for file in [path.clone(), log_of(dir.path())] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", file.display());
    }
}

#[tokio::test]
async fn blocks_receipts_and_contract_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let keys = dev_signers();
    let (admin, hospital, patient, researcher) = (&keys[0], &keys[1], &keys[2], &keys[3]);

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let deployment = chain.deployment();
    let (url, provider, task) = serve(&chain).await;
    let as_account = |who: &PrivateKeySigner| {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(who.clone()))
            .connect_http(url.parse().unwrap())
    };
    let approved = NodeRegistry::new(deployment.node_registry, as_account(admin))
        .approveInstitution(hospital.address())
        .mined()
        .await;
    let registered = NodeRegistry::new(deployment.node_registry, as_account(hospital))
        .registerNode(
            b"\x00\x24peer".to_vec().into(),
            B256::repeat_byte(7),
            "Test Hospital".into(),
        )
        .mined()
        .await;
    let mut hashes = vec![approved.transaction_hash, registered.transaction_hash];
    hashes.extend(send_transfers(&provider, patient, researcher.address(), 3).await);

    let head = provider.get_block_number().await.unwrap();
    let mut blocks = Vec::new();
    for n in 0..=head {
        let block = provider
            .get_block_by_number(BlockNumberOrTag::Number(n))
            .await
            .unwrap()
            .unwrap();
        blocks.push((block.header.hash, block.header.timestamp));
    }
    let mut receipts = Vec::new();
    for hash in &hashes {
        let r = provider
            .get_transaction_receipt(*hash)
            .await
            .unwrap()
            .unwrap();
        receipts.push((r.block_number, r.status(), r.gas_used));
    }
    let balances = (
        provider.get_balance(patient.address()).await.unwrap(),
        provider.get_balance(researcher.address()).await.unwrap(),
    );
    let registry = NodeRegistry::new(deployment.node_registry, provider.clone());
    let node = registry.nodeOf(hospital.address()).call().await.unwrap();
    task.abort();
    drop(chain);
    // A replay that took the time again instead of the logged one would differ now.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let chain = DevChain::open(Some(&path)).await.unwrap();
    assert_eq!(chain.deployment(), deployment);
    let (_url, provider, task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head);
    for (n, expected) in blocks.iter().enumerate() {
        let block = provider
            .get_block_by_number(BlockNumberOrTag::Number(n as u64))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&(block.header.hash, block.header.timestamp), expected);
    }
    for (hash, expected) in hashes.iter().zip(&receipts) {
        let r = provider
            .get_transaction_receipt(*hash)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("receipt of {hash} after the restart"));
        assert_eq!(&(r.block_number, r.status(), r.gas_used), expected);
    }
    assert_eq!(
        (
            provider.get_balance(patient.address()).await.unwrap(),
            provider.get_balance(researcher.address()).await.unwrap(),
        ),
        balances
    );
    assert!(!provider
        .get_code_at(deployment.node_registry)
        .await
        .unwrap()
        .is_empty());
    let registry = NodeRegistry::new(deployment.node_registry, provider.clone());
    assert!(registry
        .isRegistered(hospital.address())
        .call()
        .await
        .unwrap());
    let replayed = registry.nodeOf(hospital.address()).call().await.unwrap();
    assert_eq!(replayed.registeredAt, node.registeredAt);
    assert_eq!(replayed.name, node.name);

    // The log goes on after the replay, and that survives a restart too.
    let more = send_transfers(&provider, patient, researcher.address(), 1).await;
    task.abort();
    drop(chain);
    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, _task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head + 1);
    assert!(provider
        .get_transaction_receipt(more[0])
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn reopens_across_snapshots_and_after_a_crash_before_the_log_was_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let keys = dev_signers();
    let (from, to) = (&keys[4], keys[5].address());
    let every = 5;

    let chain = DevChain::open_with_snapshot_every(Some(&path), every)
        .await
        .unwrap();
    let (_url, provider, task) = serve(&chain).await;
    let genesis_head = provider.get_block_number().await.unwrap();
    assert_eq!(snapshot_head(&path), genesis_head);
    let mut hashes = send_transfers(&provider, from, to, 12).await;
    let head = genesis_head + 12;
    // Snapshots at every `every` blocks past genesis; the log holds the blocks since.
    let last_snapshot = genesis_head + 2 * every;
    assert_eq!(snapshot_head(&path), last_snapshot);
    assert_eq!(log_lines(dir.path()).len() as u64, head - last_snapshot);
    let balance = provider.get_balance(to).await.unwrap();
    task.abort();
    drop(chain);

    let chain = DevChain::open_with_snapshot_every(Some(&path), every)
        .await
        .unwrap();
    let (_url, provider, task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head);
    assert_eq!(provider.get_balance(to).await.unwrap(), balance);
    for hash in &hashes {
        assert!(provider
            .get_transaction_receipt(*hash)
            .await
            .unwrap()
            .is_some());
    }

    // Up to the next snapshot, keeping the log as it was just before it was emptied.
    let until = last_snapshot + every - head;
    hashes.extend(send_transfers(&provider, from, to, (until - 1) as usize).await);
    let stale_log = std::fs::read(log_of(dir.path())).unwrap();
    hashes.extend(send_transfers(&provider, from, to, 1).await);
    let head = last_snapshot + every;
    assert_eq!(snapshot_head(&path), head);
    assert!(
        log_lines(dir.path()).is_empty(),
        "the snapshot empties the log"
    );
    task.abort();
    drop(chain);
    // A crash between writing the snapshot and emptying the log: entries at or below
    // the snapshot's head are skipped.
    std::fs::write(log_of(dir.path()), &stale_log).unwrap();

    let chain = DevChain::open_with_snapshot_every(Some(&path), every)
        .await
        .unwrap();
    let (_url, provider, task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head);
    hashes.extend(send_transfers(&provider, from, to, 1).await);
    let balance = provider.get_balance(to).await.unwrap();
    task.abort();
    drop(chain);

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, _task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head + 1);
    assert_eq!(provider.get_balance(to).await.unwrap(), balance);
    for hash in &hashes {
        assert!(provider
            .get_transaction_receipt(*hash)
            .await
            .unwrap()
            .is_some());
    }
}

#[tokio::test]
async fn a_torn_last_log_entry_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let keys = dev_signers();
    let (from, to) = (&keys[6], keys[7].address());

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, task) = serve(&chain).await;
    send_transfers(&provider, from, to, 3).await;
    let head = provider.get_block_number().await.unwrap();
    task.abort();
    drop(chain);
    // A crash in the middle of appending the next entry.
    let log = log_of(dir.path());
    let whole = std::fs::read(&log).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(br#"{"block":99,"timestamp":17"#);
    std::fs::write(&log, &torn).unwrap();

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        whole,
        "the torn tail is cut off"
    );
    // The next entry is not glued to the torn one: it replays.
    let next = send_transfers(&provider, from, to, 1).await;
    task.abort();
    drop(chain);

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, _task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), head + 1);
    assert!(provider
        .get_transaction_receipt(next[0])
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_corrupt_entry_inside_the_log_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let keys = dev_signers();

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let (_url, provider, task) = serve(&chain).await;
    send_transfers(&provider, &keys[8], keys[9].address(), 3).await;
    task.abort();
    drop(chain);
    let log = log_of(dir.path());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "not a log entry";
    std::fs::write(&log, format!("{}\n", lines.join("\n"))).unwrap();

    let err = DevChain::open(Some(&path)).await.err().expect("open fails");
    assert!(err.to_string().contains("corrupt dev chain log"), "{err}");
}

#[tokio::test]
async fn a_log_without_a_snapshot_is_an_unfinished_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("devchain.json");
    let keys = dev_signers();

    let chain = DevChain::open(Some(&path)).await.unwrap();
    let deployment = chain.deployment();
    let (_url, provider, task) = serve(&chain).await;
    let genesis_head = provider.get_block_number().await.unwrap();
    let balance = provider.get_balance(keys[1].address()).await.unwrap();
    send_transfers(&provider, &keys[1], keys[2].address(), 2).await;
    task.abort();
    drop(chain);
    // What a first start that crashed after some blocks but before its first snapshot
    // leaves.
    std::fs::remove_file(&path).unwrap();

    let chain = DevChain::open(Some(&path)).await.unwrap();
    assert_eq!(chain.deployment(), deployment, "the same genesis again");
    let (_url, provider, _task) = serve(&chain).await;
    assert_eq!(provider.get_block_number().await.unwrap(), genesis_head);
    assert_eq!(
        provider.get_balance(keys[1].address()).await.unwrap(),
        balance
    );
    assert!(log_lines(dir.path()).is_empty());
}
