//! Throughput of the embedded dev chain, persisted in a temp dir: value transfers sent
//! one after the other through its JSON-RPC (`eth_sendRawTransaction`, each answered
//! once its block is durable in the log), at about 100 blocks and again at 10 000, to
//! show that the cost of a block does not grow with the chain.
//!
//! `cargo bench -p medmesh-chain --bench devchain` (release mode; a few minutes at most).

#![allow(missing_docs, clippy::print_stdout)]

use std::time::Instant;

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::Encodable2718;
use alloy::primitives::{Address, Bytes, TxKind, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use medmesh_chain::devchain::{dev_signers, DevChain, CHAIN_ID};

/// Transfers timed at each measuring point.
const MEASURED: u64 = 500;
/// Height of the second measuring point.
const FAR: u64 = 10_000;

/// A signed 1-wei transfer from `from` at `nonce` to `to`, EIP-2718 encoded.
fn transfer(from: &PrivateKeySigner, nonce: u64, to: Address) -> Vec<u8> {
    let tx = TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 0,
        to: TxKind::Call(to),
        value: U256::from(1u64),
        access_list: Default::default(),
        input: Bytes::new(),
    };
    let signature = from
        .sign_hash_sync(&tx.signature_hash())
        .expect("dev key signs");
    TxEnvelope::from(tx.into_signed(signature)).encoded_2718()
}

/// Sends `txs` one after the other; returns transactions per second.
async fn send_all(provider: &DynProvider, txs: &[Vec<u8>]) -> f64 {
    let started = Instant::now();
    for raw in txs {
        // The dev chain mines on receipt: the answer means the block exists.
        let _mined = provider
            .send_raw_transaction(raw)
            .await
            .expect("transaction accepted");
    }
    txs.len() as f64 / started.elapsed().as_secs_f64()
}

/// Signs the next `count` transfers of `from`, starting at `*nonce`.
fn batch(from: &PrivateKeySigner, nonce: &mut u64, to: Address, count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let raw = transfer(from, *nonce, to);
            *nonce += 1;
            raw
        })
        .collect()
}

/// Sends transfers until the chain's head reaches `height`.
async fn fill_to(
    provider: &DynProvider,
    from: &PrivateKeySigner,
    nonce: &mut u64,
    to: Address,
    height: u64,
) {
    let head = provider.get_block_number().await.expect("block number");
    // Signed in batches, so memory stays small and signing stays out of the timings.
    let mut missing = height.saturating_sub(head);
    while missing > 0 {
        let count = missing.min(1000);
        send_all(provider, &batch(from, nonce, to, count)).await;
        missing -= count;
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let chain = DevChain::open(Some(&dir.path().join("devchain.json")))
        .await
        .expect("dev chain opens");
    let (url, task) = chain
        .serve("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("dev chain serves");
    let provider = ProviderBuilder::new()
        .connect_http(url.parse().expect("URL"))
        .erased();
    let keys = dev_signers();
    let (from, to) = (&keys[1], keys[2].address());
    let mut nonce = provider
        .get_transaction_count(from.address())
        .await
        .expect("nonce");

    fill_to(&provider, from, &mut nonce, to, 100).await;
    let near = send_all(&provider, &batch(from, &mut nonce, to, MEASURED)).await;
    println!("devchain tx/s at 100 blocks: {near:.0}");

    let started = Instant::now();
    fill_to(&provider, from, &mut nonce, to, FAR).await;
    println!(
        "devchain: filled to {FAR} blocks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let far = send_all(&provider, &batch(from, &mut nonce, to, MEASURED)).await;
    println!("devchain tx/s at {FAR} blocks: {far:.0}");
    println!("devchain tx/s ratio {FAR} / 100 blocks: {:.2}", far / near);

    // The chain reopens from its snapshot and log at the height it reached.
    let head = provider.get_block_number().await.expect("block number");
    drop(provider);
    task.abort();
    drop(chain);
    let started = Instant::now();
    let chain = DevChain::open(Some(&dir.path().join("devchain.json")))
        .await
        .expect("dev chain reopens");
    println!(
        "devchain: reopened at {head} blocks in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(chain);
}
