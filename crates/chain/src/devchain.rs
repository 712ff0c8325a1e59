//! The embedded dev chain: the compiled contracts executed in-process on `revm`, one
//! block per transaction (instant), state and history persisted in a file of the node's
//! data dir, served over the standard Ethereum JSON-RPC on a local port, so every
//! client (the grant cache, the key releaser, alloy, wallets) talks to it exactly as to
//! any other EVM chain.
//!
//! It is a development chain: the ten funded accounts are anvil's well-known dev keys,
//! and the contracts are deployed at genesis by the first one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alloy::consensus::transaction::SignerRecoverable;
use alloy::consensus::{Transaction as _, TxEnvelope};
use alloy::eips::Decodable2718;
use alloy::primitives::{keccak256, Address, Bytes, Log, TxKind, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use axum::extract::State;
use axum::routing::post;
use axum::Json;
use revm::context::result::{ExecutionResult, Output};
use revm::context::TxEnv;
use revm::database::{CacheDB, EmptyDB};
use revm::state::AccountInfo;
use revm::{Context, DatabaseRef, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{ChainError, Deployment};

/// Chain id of the dev chain (anvil's, so wallets configured for anvil work).
pub const CHAIN_ID: u64 = 31337;
/// Base fee of every block (1 gwei).
const BASE_FEE: u64 = 1_000_000_000;
/// Gas limit of a block, and of calls and estimates.
const BLOCK_GAS_LIMIT: u64 = 16_000_000;

/// Private keys of the funded dev accounts (anvil's, from the mnemonic
/// "test test test test test test test test test test test junk").
pub const DEV_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// The dev accounts as signers.
pub fn dev_signers() -> Vec<PrivateKeySigner> {
    DEV_KEYS
        .iter()
        .map(|k| k.parse().expect("valid dev key"))
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockRec {
    number: u64,
    hash: B256,
    parent: B256,
    timestamp: u64,
    txs: Vec<B256>,
    gas_used: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReceiptRec {
    tx: B256,
    block: u64,
    from: Address,
    to: Option<Address>,
    contract: Option<Address>,
    gas_used: u64,
    gas_price: u128,
    success: bool,
    tx_type: u8,
    logs: Vec<Log>,
}

#[derive(Serialize, Deserialize)]
struct ChainState {
    db: CacheDB<EmptyDB>,
    blocks: Vec<BlockRec>,
    receipts: HashMap<B256, ReceiptRec>,
    deployment: Option<Deployment>,
    #[serde(skip)]
    block_filters: HashMap<u64, u64>,
    #[serde(skip)]
    next_filter: u64,
}

/// A transaction or call, before execution.
struct Call {
    from: Address,
    to: Option<Address>,
    data: Bytes,
    value: U256,
    gas_limit: u64,
    gas_price: u128,
    priority_fee: Option<u128>,
    nonce: Option<u64>,
    tx_type: u8,
}

/// An in-process EVM chain; cheap to share.
#[derive(Clone)]
pub struct DevChain {
    state: Arc<Mutex<ChainState>>,
    path: Option<PathBuf>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DevChain {
    /// Opens the chain persisted at `path` (creating it, with the contracts deployed,
    /// if the file does not exist), or an ephemeral chain when `path` is `None`.
    pub async fn open(path: Option<&Path>) -> Result<Self, ChainError> {
        let loaded = match path {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p).map_err(|e| ChainError::Snapshot {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                Some(serde_json::from_slice::<ChainState>(&bytes).map_err(|e| {
                    ChainError::Snapshot {
                        path: p.display().to_string(),
                        reason: format!("unreadable dev chain state: {e}"),
                    }
                })?)
            }
            _ => None,
        };
        let fresh = loaded.is_none();
        let state = loaded.unwrap_or_else(genesis);
        let chain = Self {
            state: Arc::new(Mutex::new(state)),
            path: path.map(Path::to_path_buf),
        };
        if fresh {
            chain.deploy_contracts().await?;
        }
        Ok(chain)
    }

    /// The contracts deployed at genesis.
    pub fn deployment(&self) -> Deployment {
        self.lock().deployment.expect("deployed at genesis")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn deploy_contracts(&self) -> Result<(), ChainError> {
        // Deploy through our own RPC, so genesis goes down the same path as any client.
        let (url, server) = self.serve_ephemeral().await?;
        let provider = alloy::providers::ProviderBuilder::new()
            .wallet(alloy::network::EthereumWallet::from(
                dev_signers().remove(0),
            ))
            .connect_http(url.parse().map_err(ChainError::rpc)?);
        let deployment = crate::deploy(&provider, vec![]).await;
        server.abort();
        let deployment = deployment?;
        self.lock().deployment = Some(deployment);
        self.save()
    }

    async fn serve_ephemeral(&self) -> Result<(String, tokio::task::JoinHandle<()>), ChainError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ChainError::Rpc(e.to_string()))?;
        let url = format!("http://{}", listener.local_addr().map_err(ChainError::rpc)?);
        let app = self.router();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((url, handle))
    }

    /// Serves the JSON-RPC on `addr` (port 0 picks one); returns the URL and the task.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> Result<(String, tokio::task::JoinHandle<()>), ChainError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ChainError::Rpc(format!("cannot listen on {addr}: {e}")))?;
        let url = format!("http://{}", listener.local_addr().map_err(ChainError::rpc)?);
        let app = self.router();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((url, handle))
    }

    fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/", post(rpc))
            .with_state(self.clone())
    }

    fn save(&self) -> Result<(), ChainError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |reason: String| ChainError::Snapshot {
            path: path.display().to_string(),
            reason,
        };
        let bytes = serde_json::to_vec(&*self.lock()).map_err(|e| err(e.to_string()))?;
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::File::open(&temp)?.sync_all())
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| err(e.to_string()))
    }

    fn handle(&self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
        let param = |i: usize| params.get(i).cloned().unwrap_or(Value::Null);
        let mut state = self.lock();
        match method {
            "eth_chainId" => Ok(json!(hex_u64(CHAIN_ID))),
            "net_version" => Ok(json!(CHAIN_ID.to_string())),
            "web3_clientVersion" => Ok(json!(concat!(
                "medmesh-devchain/",
                env!("CARGO_PKG_VERSION")
            ))),
            "eth_syncing" => Ok(json!(false)),
            "eth_accounts" => Ok(json!([])),
            "eth_blockNumber" => Ok(json!(hex_u64(state.head().number))),
            "eth_gasPrice" | "eth_maxPriorityFeePerGas" => Ok(json!(hex_u64(BASE_FEE))),
            "eth_feeHistory" => {
                let count = parse_u64(&param(0)).unwrap_or(1).clamp(1, 1024);
                let head = state.head().number;
                let oldest = head.saturating_sub(count - 1);
                let n = (head - oldest + 1) as usize;
                let percentiles = param(2).as_array().map_or(0, Vec::len);
                Ok(json!({
                    "oldestBlock": hex_u64(oldest),
                    "baseFeePerGas": vec![hex_u64(BASE_FEE); n + 1],
                    "gasUsedRatio": vec![0.0; n],
                    "reward": vec![vec![hex_u64(BASE_FEE); percentiles]; n],
                }))
            }
            "eth_getBlockByNumber" => {
                let number = state.block_number(&param(0))?;
                Ok(state
                    .blocks
                    .get(number as usize)
                    .map_or(Value::Null, block_json))
            }
            "eth_getBlockByHash" => {
                let hash: B256 = serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                Ok(state
                    .blocks
                    .iter()
                    .find(|b| b.hash == hash)
                    .map_or(Value::Null, block_json))
            }
            "eth_getTransactionCount" => {
                let address: Address =
                    serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                Ok(json!(hex_u64(state.account(address).nonce)))
            }
            "eth_getBalance" => {
                let address: Address =
                    serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                Ok(json!(state.account(address).balance))
            }
            "eth_getCode" => {
                let address: Address =
                    serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                let info = state.account(address);
                let code = info.code.map(|c| c.original_bytes()).unwrap_or_default();
                Ok(json!(code))
            }
            "eth_call" => {
                let call = call_from_request(&param(0))?;
                let result = state.execute(call, false)?;
                match result {
                    ExecutionResult::Success { output, .. } => Ok(json!(output.into_data())),
                    ExecutionResult::Revert { output, .. } => Err(RpcError::revert(output)),
                    ExecutionResult::Halt { reason, .. } => Err(RpcError::new(
                        -32000,
                        format!("execution halted: {reason:?}"),
                    )),
                }
            }
            "eth_estimateGas" => {
                let call = call_from_request(&param(0))?;
                match state.execute(call, false)? {
                    ExecutionResult::Success { gas, .. } => {
                        let used = gas.tx_gas_used();
                        Ok(json!(hex_u64(
                            (used + used / 4 + 10_000).min(BLOCK_GAS_LIMIT)
                        )))
                    }
                    ExecutionResult::Revert { output, .. } => Err(RpcError::revert(output)),
                    ExecutionResult::Halt { reason, .. } => Err(RpcError::new(
                        -32000,
                        format!("execution halted: {reason:?}"),
                    )),
                }
            }
            "eth_sendRawTransaction" => {
                let raw: Bytes = serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                let hash = state.send_raw(&raw)?;
                drop(state);
                self.save()
                    .map_err(|e| RpcError::new(-32000, e.to_string()))?;
                Ok(json!(hash))
            }
            "eth_getTransactionReceipt" => {
                let hash: B256 = serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                Ok(state
                    .receipts
                    .get(&hash)
                    .map_or(Value::Null, |r| receipt_json(&state, r)))
            }
            "eth_getLogs" => state.logs(&param(0)),
            "eth_newBlockFilter" => {
                state.next_filter += 1;
                let id = state.next_filter;
                let next = state.head().number + 1;
                state.block_filters.insert(id, next);
                Ok(json!(hex_u64(id)))
            }
            "eth_getFilterChanges" => {
                let id = parse_u64(&param(0)).ok_or_else(|| RpcError::invalid("filter id"))?;
                let head = state.head().number;
                let Some(next) = state.block_filters.get(&id).copied() else {
                    return Err(RpcError::new(-32000, "filter not found".into()));
                };
                let hashes: Vec<B256> = (next..=head)
                    .map(|n| state.blocks[n as usize].hash)
                    .collect();
                state.block_filters.insert(id, head + 1);
                Ok(json!(hashes))
            }
            "eth_uninstallFilter" => {
                let id = parse_u64(&param(0)).unwrap_or(0);
                Ok(json!(state.block_filters.remove(&id).is_some()))
            }
            other => Err(RpcError::new(
                -32601,
                format!("method {other} is not supported by the medmesh dev chain"),
            )),
        }
    }
}

fn genesis() -> ChainState {
    let mut db = CacheDB::new(EmptyDB::default());
    for signer in dev_signers() {
        db.insert_account_info(
            signer.address(),
            AccountInfo {
                balance: U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18u64)),
                ..Default::default()
            },
        );
    }
    let hash = keccak256(b"medmesh dev chain genesis");
    ChainState {
        db,
        blocks: vec![BlockRec {
            number: 0,
            hash,
            parent: B256::ZERO,
            timestamp: now(),
            txs: vec![],
            gas_used: 0,
        }],
        receipts: HashMap::new(),
        deployment: None,
        block_filters: HashMap::new(),
        next_filter: 0,
    }
}

impl ChainState {
    fn head(&self) -> &BlockRec {
        self.blocks.last().expect("genesis exists")
    }

    fn account(&self, address: Address) -> AccountInfo {
        self.db
            .basic_ref(address)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn block_number(&self, tag: &Value) -> Result<u64, RpcError> {
        let head = self.head().number;
        match tag.as_str() {
            None | Some("latest" | "pending" | "safe" | "finalized") => Ok(head),
            Some("earliest") => Ok(0),
            Some(_) => parse_u64(tag).ok_or_else(|| RpcError::invalid("block number")),
        }
    }

    fn execute(&mut self, call: Call, commit: bool) -> Result<ExecutionResult, RpcError> {
        let number = self.head().number + u64::from(commit);
        let timestamp = now().max(self.head().timestamp);
        let from = call.from;
        let tx = TxEnv::builder()
            .tx_type(Some(call.tx_type))
            .caller(call.from)
            .gas_limit(call.gas_limit)
            .gas_price(call.gas_price)
            .gas_priority_fee(call.priority_fee)
            .kind(call.to.map_or(TxKind::Create, TxKind::Call))
            .value(call.value)
            .data(call.data)
            .nonce(call.nonce.unwrap_or_else(|| self.account(from).nonce))
            .chain_id(Some(CHAIN_ID))
            .build()
            .map_err(|e| RpcError::new(-32000, format!("invalid transaction: {e:?}")))?;
        let mut evm = Context::mainnet()
            .with_db(&mut self.db)
            .modify_cfg_chained(|cfg| {
                cfg.chain_id = CHAIN_ID;
                cfg.disable_nonce_check = !commit;
            })
            .modify_block_chained(|block| {
                block.number = U256::from(number);
                block.timestamp = U256::from(timestamp);
                block.gas_limit = BLOCK_GAS_LIMIT;
                block.basefee = if commit { BASE_FEE } else { 0 };
            })
            .build_mainnet();
        let result = if commit {
            evm.transact_commit(tx)
        } else {
            evm.transact(tx).map(|r| r.result)
        };
        result.map_err(|e| RpcError::new(-32000, format!("transaction rejected: {e:?}")))
    }

    fn send_raw(&mut self, raw: &[u8]) -> Result<B256, RpcError> {
        let envelope = TxEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| RpcError::invalid(format!("transaction: {e}")))?;
        let from = envelope
            .recover_signer()
            .map_err(|_| RpcError::invalid("transaction signature"))?;
        if envelope.chain_id().is_some_and(|id| id != CHAIN_ID) {
            return Err(RpcError::new(
                -32000,
                format!("wrong chain id; this chain is {CHAIN_ID}"),
            ));
        }
        let hash = *envelope.tx_hash();
        let nonce = self.account(from).nonce;
        if envelope.nonce() != nonce {
            return Err(RpcError::new(
                -32000,
                format!(
                    "nonce too {}: expected {nonce}",
                    if envelope.nonce() < nonce {
                        "low"
                    } else {
                        "high"
                    }
                ),
            ));
        }
        let to = envelope.to();
        let call = Call {
            from,
            to,
            data: envelope.input().clone(),
            value: envelope.value(),
            gas_limit: envelope.gas_limit(),
            gas_price: envelope.max_fee_per_gas(),
            priority_fee: envelope.max_priority_fee_per_gas(),
            nonce: Some(nonce),
            tx_type: envelope.tx_type() as u8,
        };
        let gas_price = envelope
            .max_priority_fee_per_gas()
            .map_or(envelope.max_fee_per_gas(), |p| {
                (u128::from(BASE_FEE) + p).min(envelope.max_fee_per_gas())
            });
        let result = self.execute(call, true)?;
        let (success, gas_used, logs, contract) = match result {
            ExecutionResult::Success {
                gas, logs, output, ..
            } => {
                let contract = match output {
                    Output::Create(_, address) => address,
                    Output::Call(_) => None,
                };
                (true, gas.tx_gas_used(), logs, contract)
            }
            ExecutionResult::Revert { gas, .. } | ExecutionResult::Halt { gas, .. } => {
                (false, gas.tx_gas_used(), vec![], None)
            }
        };
        let parent = self.head().hash;
        let number = self.head().number + 1;
        let timestamp = now().max(self.head().timestamp);
        let block_hash = keccak256([parent.as_slice(), hash.as_slice()].concat());
        self.blocks.push(BlockRec {
            number,
            hash: block_hash,
            parent,
            timestamp,
            txs: vec![hash],
            gas_used,
        });
        self.receipts.insert(
            hash,
            ReceiptRec {
                tx: hash,
                block: number,
                from,
                to,
                contract,
                gas_used,
                gas_price,
                success,
                tx_type: envelope.tx_type() as u8,
                logs,
            },
        );
        Ok(hash)
    }

    fn logs(&self, filter: &Value) -> Result<Value, RpcError> {
        let head = self.head().number;
        let from = match filter.get("fromBlock") {
            Some(v) if !v.is_null() => self.block_number(v)?,
            _ => head,
        };
        let to = match filter.get("toBlock") {
            Some(v) if !v.is_null() => self.block_number(v)?,
            _ => head,
        };
        let addresses: Vec<Address> = match filter.get("address") {
            Some(Value::String(s)) => vec![s.parse().map_err(|_| RpcError::invalid("address"))?],
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect(),
            _ => vec![],
        };
        let topics: Vec<Vec<B256>> = match filter.get("topics") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| match t {
                    Value::String(s) => s.parse().map(|h| vec![h]).unwrap_or_default(),
                    Value::Array(alts) => alts
                        .iter()
                        .filter_map(|v| v.as_str()?.parse().ok())
                        .collect(),
                    _ => vec![],
                })
                .collect(),
            _ => vec![],
        };
        let mut out = Vec::new();
        for block in self
            .blocks
            .iter()
            .filter(|b| b.number >= from && b.number <= to)
        {
            let mut log_index = 0u64;
            for tx in &block.txs {
                let Some(receipt) = self.receipts.get(tx) else {
                    continue;
                };
                for log in &receipt.logs {
                    let address_ok = addresses.is_empty() || addresses.contains(&log.address);
                    let topics_ok = topics.iter().enumerate().all(|(i, alts)| {
                        alts.is_empty()
                            || log.data.topics().get(i).is_some_and(|t| alts.contains(t))
                    });
                    if address_ok && topics_ok {
                        out.push(log_json(log, block, tx, log_index));
                    }
                    log_index += 1;
                }
            }
        }
        Ok(Value::Array(out))
    }
}

fn call_from_request(request: &Value) -> Result<Call, RpcError> {
    let get = |k: &str| request.get(k).filter(|v| !v.is_null());
    let address = |k: &str| -> Result<Option<Address>, RpcError> {
        get(k)
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|_| RpcError::invalid(k.to_string()))
            })
            .transpose()
    };
    let data: Bytes = match get("input").or_else(|| get("data")) {
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| RpcError::invalid("input"))?,
        None => Bytes::new(),
    };
    let value: U256 = match get("value") {
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| RpcError::invalid("value"))?,
        None => U256::ZERO,
    };
    Ok(Call {
        from: address("from")?.unwrap_or_default(),
        to: address("to")?,
        data,
        value,
        gas_limit: get("gas")
            .and_then(parse_u64)
            .unwrap_or(BLOCK_GAS_LIMIT)
            .min(BLOCK_GAS_LIMIT),
        gas_price: 0,
        priority_fee: None,
        nonce: None,
        tx_type: 0,
    })
}

fn parse_u64(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => u64::from_str_radix(s.strip_prefix("0x")?, 16).ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn hex_u64(n: u64) -> String {
    format!("0x{n:x}")
}

fn block_json(b: &BlockRec) -> Value {
    json!({
        "hash": b.hash,
        "parentHash": b.parent,
        "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
        "miner": Address::ZERO,
        "stateRoot": B256::ZERO,
        "transactionsRoot": B256::ZERO,
        "receiptsRoot": B256::ZERO,
        "logsBloom": format!("0x{}", "00".repeat(256)),
        "difficulty": "0x0",
        "number": hex_u64(b.number),
        "gasLimit": hex_u64(BLOCK_GAS_LIMIT),
        "gasUsed": hex_u64(b.gas_used),
        "timestamp": hex_u64(b.timestamp),
        "extraData": "0x",
        "mixHash": B256::ZERO,
        "nonce": "0x0000000000000000",
        "baseFeePerGas": hex_u64(BASE_FEE),
        "size": "0x0",
        "uncles": [],
        "transactions": b.txs,
    })
}

fn log_json(log: &Log, block: &BlockRec, tx: &B256, index: u64) -> Value {
    json!({
        "address": log.address,
        "topics": log.data.topics(),
        "data": log.data.data,
        "blockHash": block.hash,
        "blockNumber": hex_u64(block.number),
        "blockTimestamp": hex_u64(block.timestamp),
        "transactionHash": tx,
        "transactionIndex": "0x0",
        "logIndex": hex_u64(index),
        "removed": false,
    })
}

fn receipt_json(state: &ChainState, r: &ReceiptRec) -> Value {
    let block = &state.blocks[r.block as usize];
    let logs: Vec<Value> = r
        .logs
        .iter()
        .enumerate()
        .map(|(i, l)| log_json(l, block, &r.tx, i as u64))
        .collect();
    json!({
        "transactionHash": r.tx,
        "transactionIndex": "0x0",
        "blockHash": block.hash,
        "blockNumber": hex_u64(r.block),
        "from": r.from,
        "to": r.to,
        "cumulativeGasUsed": hex_u64(r.gas_used),
        "gasUsed": hex_u64(r.gas_used),
        "effectiveGasPrice": format!("0x{:x}", r.gas_price),
        "contractAddress": r.contract,
        "logs": logs,
        "logsBloom": format!("0x{}", "00".repeat(256)),
        "type": hex_u64(u64::from(r.tx_type)),
        "status": if r.success { "0x1" } else { "0x0" },
    })
}

/// A JSON-RPC error.
struct RpcError {
    code: i64,
    message: String,
    data: Option<Bytes>,
}

impl RpcError {
    fn new(code: i64, message: String) -> Self {
        Self {
            code,
            message,
            data: None,
        }
    }

    fn invalid(what: impl std::fmt::Display) -> Self {
        Self::new(-32602, format!("invalid params: {what}"))
    }

    fn revert(output: Bytes) -> Self {
        Self {
            code: 3,
            message: "execution reverted".into(),
            data: Some(output),
        }
    }
}

async fn rpc(State(chain): State<DevChain>, Json(request): Json<Value>) -> Json<Value> {
    let answer = |req: &Value| -> Value {
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let method = req
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let params = req
            .get("params")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match chain.handle(method, &params) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => {
                let mut error = json!({"code": e.code, "message": e.message});
                if let Some(data) = e.data {
                    error["data"] = json!(data);
                }
                json!({"jsonrpc": "2.0", "id": id, "error": error})
            }
        }
    };
    Json(match &request {
        Value::Array(batch) => Value::Array(batch.iter().map(answer).collect()),
        single => answer(single),
    })
}
