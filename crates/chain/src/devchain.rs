//! The embedded dev chain: the compiled contracts executed in-process on `revm`, one
//! block per transaction (instant), state and history persisted beside the node's data,
//! served over the standard Ethereum JSON-RPC on a local port, so every client (the
//! grant cache, the key releaser, alloy, wallets) talks to it exactly as to any other
//! EVM chain.
//!
//! It is a development chain: the ten funded accounts are anvil's well-known dev keys,
//! and the contracts are deployed at genesis by the first one.
//!
//! Persistence is a snapshot plus a log. The snapshot (`devchain.json`, the path given
//! to [`DevChain::open`]) is the whole state at some block, replaced atomically. The
//! log beside it (`devchain.log`) holds one JSON line per block mined since — block
//! number, timestamp and the raw signed transaction — appended and fsynced before the
//! transaction is visible or answered, so a transaction is durable once acknowledged
//! and a block costs one small append instead of a rewrite of the whole state. Every
//! [`SNAPSHOT_EVERY`] blocks a new snapshot is written and the log emptied. Opening
//! loads the snapshot and re-executes the logged transactions above its head with their
//! recorded timestamps (execution is deterministic given the timestamp).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use alloy::consensus::transaction::SignerRecoverable;
use alloy::consensus::{Transaction as _, TxEnvelope};
use alloy::eips::Decodable2718;
use alloy::primitives::{keccak256, Address, Bytes, Log, TxKind, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use axum::extract::State;
use axum::routing::post;
use axum::Json;
use revm::context::result::{ExecutionResult, Output, ResultAndState};
use revm::context::TxEnv;
use revm::database::{CacheDB, EmptyDB};
use revm::state::AccountInfo;
use revm::{Context, DatabaseCommit, DatabaseRef, ExecuteEvm, MainBuilder, MainContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{ChainError, Deployment};

/// Chain id of the dev chain (anvil's, so wallets configured for anvil work).
pub const CHAIN_ID: u64 = 31337;
/// Base fee of every block (1 gwei).
const BASE_FEE: u64 = 1_000_000_000;
/// Gas limit of a block, and of calls and estimates.
const BLOCK_GAS_LIMIT: u64 = 16_000_000;
/// Blocks between two snapshots of a persisted chain: bounds both the log's length (so
/// the replay at open) and the amortized cost of rewriting the whole state.
pub const SNAPSHOT_EVERY: u64 = 1000;

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

/// Which dev account (index into [`DEV_KEYS`]) is the node's own on the dev chain: it
/// relays signed grants, registers the node and anchors its audit log. Genesis approves
/// it as an institution in `NodeRegistry`, so a node on the dev chain registers itself
/// exactly as on any other chain once approved.
pub const NODE_ACCOUNT: usize = 9;

/// The node's own account on the dev chain ([`NODE_ACCOUNT`]).
pub fn node_signer() -> PrivateKeySigner {
    DEV_KEYS[NODE_ACCOUNT].parse().expect("valid dev key")
}

/// The deployment recorded in the dev chain snapshot at `path` (what
/// [`DevChain::deployment`] returns once opened), without opening the chain: for tools
/// that talk to a running node's dev chain over its JSON-RPC. `None` when there is no
/// snapshot or it has no deployment yet.
pub fn read_deployment(path: &Path) -> Result<Option<Deployment>, ChainError> {
    #[derive(Deserialize)]
    struct Recorded {
        deployment: Option<Deployment>,
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(persist_error(path, e)),
    };
    let recorded: Recorded = serde_json::from_slice(&bytes)
        .map_err(|e| persist_error(path, format!("unreadable dev chain state: {e}")))?;
    Ok(recorded.deployment)
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

/// The whole chain; also the snapshot's format.
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

/// One line of the transaction log: what re-executing a block needs.
#[derive(Serialize, Deserialize)]
struct LogEntry {
    /// The block the transaction made.
    block: u64,
    /// The block's timestamp, which execution depends on.
    timestamp: u64,
    /// The signed transaction, EIP-2718 encoded.
    tx: Bytes,
}

/// Where a persisted chain lives: the snapshot, and the log of the blocks mined since.
struct Persistence {
    snapshot: PathBuf,
    log_path: PathBuf,
    log: File,
    /// Length of the complete entries in the log. Appends write at this offset, so a
    /// failed append is overwritten by the next one instead of corrupting the middle.
    log_len: u64,
    /// Head at which the next snapshot is due.
    next_snapshot: u64,
    every: u64,
}

/// What the lock guards: the state and, for a persisted chain, its files, so that a
/// block is appended to the log in the order it is mined.
struct Inner {
    chain: ChainState,
    persistence: Option<Persistence>,
}

type Shared = Arc<Mutex<Inner>>;

/// An in-process EVM chain; cheap to share.
#[derive(Clone)]
pub struct DevChain {
    shared: Shared,
    // Known once `open` returns, so reading it can neither block nor fail.
    deployment: Deployment,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock(shared: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn persist_error(path: &Path, reason: impl std::fmt::Display) -> ChainError {
    ChainError::Snapshot {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl DevChain {
    /// Opens the chain persisted at `path` (creating it, with the contracts deployed,
    /// if the file does not exist), or an ephemeral chain when `path` is `None`.
    ///
    /// `path` is the snapshot; the log of the blocks mined since lives beside it, with
    /// the extension `log`. A snapshot without a deployment (a first start that crashed
    /// during genesis) is discarded, with a warning, and the chain starts afresh.
    pub async fn open(path: Option<&Path>) -> Result<Self, ChainError> {
        Self::open_with_snapshot_every(path, SNAPSHOT_EVERY).await
    }

    /// [`DevChain::open`] with a snapshot every `every` blocks instead of
    /// [`SNAPSHOT_EVERY`], so tests can cross snapshot boundaries quickly.
    #[doc(hidden)]
    pub async fn open_with_snapshot_every(
        path: Option<&Path>,
        every: u64,
    ) -> Result<Self, ChainError> {
        let every = every.max(1);
        let (chain, persistence) = match path {
            None => (genesis(), None),
            Some(path) => {
                let owned = path.to_path_buf();
                // Reading and replaying is file I/O and EVM work: off the executor.
                let (chain, persistence) = tokio::task::spawn_blocking(move || load(&owned, every))
                    .await
                    .map_err(|e| persist_error(path, format!("loading failed: {e}")))??;
                (chain, Some(persistence))
            }
        };
        let deployed = chain.deployment;
        let shared = Arc::new(Mutex::new(Inner { chain, persistence }));
        let deployment = match deployed {
            Some(deployment) => deployment,
            None => {
                let deployment = deploy_contracts(&shared).await?;
                finish_genesis(&shared, deployment)?;
                deployment
            }
        };
        Ok(Self { shared, deployment })
    }

    /// The contracts deployed at genesis.
    pub fn deployment(&self) -> Deployment {
        self.deployment
    }

    /// Makes sure `account` is an approved institution in `NodeRegistry`, approving it
    /// (as the first dev account, the registry's admin) if not; returns whether it had
    /// to. Genesis approves [`node_signer`]; this catches up a chain created before
    /// genesis did.
    pub async fn ensure_approved(&self, account: Address) -> Result<bool, ChainError> {
        let (url, server) = serve_on(&self.shared, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let approved = approve(&url, self.deployment.node_registry, account).await;
        server.abort();
        approved
    }

    /// Serves the JSON-RPC on `addr` (port 0 picks one); returns the URL and the task.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> Result<(String, tokio::task::JoinHandle<()>), ChainError> {
        serve_on(&self.shared, addr).await
    }
}

async fn serve_on(
    shared: &Shared,
    addr: SocketAddr,
) -> Result<(String, tokio::task::JoinHandle<()>), ChainError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ChainError::Rpc(format!("cannot listen on {addr}: {e}")))?;
    let url = format!("http://{}", listener.local_addr().map_err(ChainError::rpc)?);
    let app = axum::Router::new()
        .route("/", post(rpc))
        .with_state(shared.clone());
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, handle))
}

async fn deploy_contracts(shared: &Shared) -> Result<Deployment, ChainError> {
    // Deploy through our own RPC, so genesis goes down the same path as any client.
    let (url, server) = serve_on(shared, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let provider = alloy::providers::ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(
            dev_signers().remove(0),
        ))
        .connect_http(url.parse().map_err(ChainError::rpc)?);
    let deployment = crate::deploy(&provider, vec![]).await;
    // The node's own account is an approved institution from the start.
    let approved = match &deployment {
        Ok(deployment) => approve(&url, deployment.node_registry, node_signer().address())
            .await
            .map(|_| ()),
        Err(_) => Ok(()),
    };
    server.abort();
    let deployment = deployment?;
    approved?;
    Ok(deployment)
}

/// Approves `account` in the `NodeRegistry` at `registry` as the first dev account (its
/// admin) over the JSON-RPC at `url`, unless it is approved already; returns whether it
/// sent the approval.
async fn approve(url: &str, registry: Address, account: Address) -> Result<bool, ChainError> {
    use crate::bindings::NodeRegistry;
    let provider = alloy::providers::ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(
            dev_signers().remove(0),
        ))
        .connect_http(url.parse().map_err(ChainError::rpc)?);
    let registry = NodeRegistry::new(registry, &provider);
    if registry
        .isApproved(account)
        .call()
        .await
        .map_err(ChainError::rpc)?
    {
        return Ok(false);
    }
    let receipt = registry
        .approveInstitution(account)
        .send()
        .await
        .map_err(ChainError::rpc)?
        .get_receipt()
        .await
        .map_err(ChainError::rpc)?;
    if !receipt.status() {
        return Err(ChainError::Reverted(format!(
            "approving {account} as an institution on the dev chain reverted"
        )));
    }
    tracing::info!(%account, "dev chain: approved the account as an institution");
    Ok(true)
}

/// Records the deployment and writes the first snapshot: only from then on does a
/// restart keep this chain rather than start a new genesis.
fn finish_genesis(shared: &Shared, deployment: Deployment) -> Result<(), ChainError> {
    let mut guard = lock(shared);
    let Inner { chain, persistence } = &mut *guard;
    chain.deployment = Some(deployment);
    match persistence {
        Some(persistence) => persistence.snapshot(chain),
        None => Ok(()),
    }
}

/// The log beside the snapshot `snapshot`: same stem, extension `log`.
fn log_path_for(snapshot: &Path) -> PathBuf {
    let log = snapshot.with_extension("log");
    if log == snapshot {
        snapshot.with_extension("log.log")
    } else {
        log
    }
}

/// Loads the persisted chain: the snapshot, then the logged blocks above its head.
/// Without a usable snapshot, a fresh genesis (not yet deployed) and an empty log.
fn load(snapshot: &Path, every: u64) -> Result<(ChainState, Persistence), ChainError> {
    let loaded = read_snapshot(snapshot)?;
    let log_path = log_path_for(snapshot);
    let (log, bytes) = open_log(&log_path)?;
    let mut persistence = Persistence {
        snapshot: snapshot.to_path_buf(),
        log_path,
        log,
        log_len: 0,
        next_snapshot: every,
        every,
    };
    let Some(mut chain) = loaded else {
        // Without a snapshot, logged blocks belong to a genesis that never finished.
        if !bytes.is_empty() {
            tracing::warn!(
                log = %persistence.log_path.display(),
                "discarding the dev chain log of an unfinished genesis"
            );
        }
        persistence.truncate(0)?;
        return Ok((genesis(), persistence));
    };
    let head = chain.head().number;
    persistence.next_snapshot = head.saturating_add(every);
    let valid = replay(&mut chain, &bytes, &persistence.log_path)?;
    if valid < bytes.len() {
        // Cut a torn tail off, so the next append does not land after it.
        persistence.truncate(valid as u64)?;
    } else {
        persistence.log_len = valid as u64;
    }
    tracing::info!(
        snapshot = %snapshot.display(),
        snapshot_head = head,
        head = chain.head().number,
        "dev chain loaded"
    );
    Ok((chain, persistence))
}

/// The snapshot at `path`, or `None` when there is none or it is incomplete.
fn read_snapshot(path: &Path) -> Result<Option<ChainState>, ChainError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(persist_error(path, e)),
    };
    let state = serde_json::from_slice::<ChainState>(&bytes)
        .map_err(|e| persist_error(path, format!("unreadable dev chain state: {e}")))?;
    state
        .check()
        .map_err(|e| persist_error(path, format!("unreadable dev chain state: {e}")))?;
    if state.deployment.is_none() {
        tracing::warn!(
            path = %path.display(),
            "dev chain state has no deployment (a start crashed during genesis); \
             discarding it and starting from a fresh genesis"
        );
        return Ok(None);
    }
    Ok(Some(state))
}

/// Opens (creating, private) the log at `path` and reads it whole.
fn open_log(path: &Path) -> Result<(File, Vec<u8>), ChainError> {
    let fail = |e: std::io::Error| persist_error(path, format!("dev chain log: {e}"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        // Kept: it holds the blocks since the last snapshot.
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    // The log's directory entry must survive a crash as well as its content.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    Ok((file, bytes))
}

/// Re-executes the log's entries above the chain's head; returns the length of the
/// log's readable prefix (shorter than `bytes` when its last entry is torn).
fn replay(chain: &mut ChainState, bytes: &[u8], log: &Path) -> Result<usize, ChainError> {
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let newline = rest.iter().position(|&b| b == b'\n');
        let line = &rest[..newline.unwrap_or(rest.len())];
        let end = offset + line.len() + usize::from(newline.is_some());
        // An entry is complete only with its newline: it is written in one piece.
        let entry = newline.and_then(|_| serde_json::from_slice::<LogEntry>(line).ok());
        let Some(entry) = entry else {
            if end >= bytes.len() {
                // A crash while appending: that transaction was never acknowledged.
                tracing::warn!(
                    log = %log.display(),
                    offset,
                    "ignoring a torn entry at the end of the dev chain log"
                );
                return Ok(offset);
            }
            return Err(persist_error(
                log,
                format!("corrupt dev chain log: unreadable entry at byte {offset}"),
            ));
        };
        let head = chain.head().number;
        // Entries at or below the head are already in the snapshot (a crash between
        // writing a snapshot and emptying the log leaves them).
        if entry.block > head {
            if entry.block != head + 1 {
                return Err(persist_error(
                    log,
                    format!(
                        "dev chain log continues at block {} but the state ends at block {head}",
                        entry.block
                    ),
                ));
            }
            chain
                .send_raw(&entry.tx, entry.timestamp, |_| Ok(()))
                .map_err(|e| {
                    persist_error(
                        log,
                        format!(
                            "block {} of the log does not replay: {}",
                            entry.block, e.message
                        ),
                    )
                })?;
        }
        offset = end;
    }
    Ok(offset)
}

impl Persistence {
    /// Appends the block `block` (made by `tx` at `timestamp`) and waits until it is on
    /// disk.
    fn append(&mut self, block: u64, timestamp: u64, tx: &[u8]) -> std::io::Result<()> {
        let entry = LogEntry {
            block,
            timestamp,
            tx: Bytes::copy_from_slice(tx),
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let written = self
            .log
            .write_all_at(&line, self.log_len)
            .and_then(|()| self.log.sync_data());
        match written {
            Ok(()) => {
                self.log_len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: the next append overwrites this offset anyway.
                let _ = self.log.set_len(self.log_len);
                Err(e)
            }
        }
    }

    /// Takes a snapshot if one is due; a failure is only logged, since every block is
    /// already durable in the log.
    fn snapshot_if_due(&mut self, chain: &ChainState) {
        // No snapshot before the deployment is recorded: a snapshot on disk means a
        // finished genesis.
        if chain.deployment.is_none() || chain.head().number < self.next_snapshot {
            return;
        }
        if let Err(e) = self.snapshot(chain) {
            tracing::warn!(error = %e, "dev chain snapshot failed; retrying later");
        }
    }

    /// Writes `chain` as the snapshot, then empties the log.
    fn snapshot(&mut self, chain: &ChainState) -> Result<(), ChainError> {
        let head = chain.head().number;
        // Also after a failure, so a failing disk is not retried on every block.
        self.next_snapshot = head.saturating_add(self.every);
        let bytes = serde_json::to_vec(chain).map_err(|e| persist_error(&self.snapshot, e))?;
        medmesh_store::atomic_write(&self.snapshot, &bytes)
            .map_err(|e| persist_error(&self.snapshot, e))?;
        // Everything in the log is now at or below the snapshot's head, which replay
        // skips: a crash before this truncation is harmless.
        self.truncate(0)?;
        tracing::debug!(
            snapshot = %self.snapshot.display(),
            head,
            bytes = bytes.len(),
            "dev chain snapshot written"
        );
        Ok(())
    }

    /// Cuts the log to `len` bytes.
    fn truncate(&mut self, len: u64) -> Result<(), ChainError> {
        let fail = |e: std::io::Error| persist_error(&self.log_path, format!("dev chain log: {e}"));
        self.log.set_len(len).map_err(fail)?;
        // Appends go here from now on, even if the sync below fails (never past a hole).
        self.log_len = len;
        self.log.sync_all().map_err(fail)
    }
}

impl Inner {
    fn handle(&mut self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
        let param = |i: usize| params.get(i).cloned().unwrap_or(Value::Null);
        let Inner {
            chain: state,
            persistence,
        } = self;
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
                Ok(usize::try_from(number)
                    .ok()
                    .and_then(|n| state.blocks.get(n))
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
                let timestamp = state.next_timestamp();
                match state.execute(call, false, timestamp)?.result {
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
                let timestamp = state.next_timestamp();
                match state.execute(call, false, timestamp)?.result {
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
                let timestamp = state.next_timestamp();
                // The block goes to the log, on disk, before it is applied or answered,
                // all under the lock: log order is block order.
                let hash = state.send_raw(&raw, timestamp, |block| match persistence.as_mut() {
                    Some(p) => p.append(block, timestamp, &raw).map_err(|e| {
                        tracing::error!(error = %e, "cannot append to the dev chain log");
                        RpcError::new(-32000, format!("transaction not persisted: {e}"))
                    }),
                    None => Ok(()),
                })?;
                if let Some(p) = persistence.as_mut() {
                    p.snapshot_if_due(state);
                }
                Ok(json!(hash))
            }
            "eth_getTransactionReceipt" => {
                let hash: B256 = serde_json::from_value(param(0)).map_err(RpcError::invalid)?;
                let state: &ChainState = state;
                Ok(state
                    .receipts
                    .get(&hash)
                    .map_or(Value::Null, |r| receipt_json(state, r)))
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
        // `genesis` creates block 0 and `check` refuses a loaded state without it.
        self.blocks.last().expect("genesis exists")
    }

    /// What the rest of this module relies on in a loaded state: block `n` at index
    /// `n`, starting with genesis, and every receipt's block present.
    fn check(&self) -> Result<(), String> {
        if self.blocks.is_empty() {
            return Err("no genesis block".into());
        }
        if let Some((i, b)) = self
            .blocks
            .iter()
            .enumerate()
            .find(|(i, b)| b.number != *i as u64)
        {
            return Err(format!("block {} stored at height {i}", b.number));
        }
        let len = self.blocks.len() as u64;
        if let Some(r) = self.receipts.values().find(|r| r.block >= len) {
            return Err(format!(
                "receipt of {} names missing block {}",
                r.tx, r.block
            ));
        }
        Ok(())
    }

    /// The timestamp of a block mined now: never before its parent's.
    fn next_timestamp(&self) -> u64 {
        now().max(self.head().timestamp)
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

    /// Executes `call` on top of the head, without committing: `mined` runs it as the
    /// transaction of the next block (nonce checked, base fee charged), otherwise as a
    /// call. Deterministic given `timestamp`, which is what makes the log replayable.
    fn execute(
        &mut self,
        call: Call,
        mined: bool,
        timestamp: u64,
    ) -> Result<ResultAndState, RpcError> {
        let number = self.head().number + u64::from(mined);
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
                cfg.disable_nonce_check = !mined;
            })
            .modify_block_chained(|block| {
                block.number = U256::from(number);
                block.timestamp = U256::from(timestamp);
                block.gas_limit = BLOCK_GAS_LIMIT;
                block.basefee = if mined { BASE_FEE } else { 0 };
            })
            .build_mainnet();
        evm.transact(tx)
            .map_err(|e| RpcError::new(-32000, format!("transaction rejected: {e:?}")))
    }

    /// Mines `raw` as the next block, at `timestamp`. `persist` is called with the new
    /// block's number once the transaction has executed and before anything changes:
    /// if it fails, the chain is left as it was.
    fn send_raw(
        &mut self,
        raw: &[u8],
        timestamp: u64,
        persist: impl FnOnce(u64) -> Result<(), RpcError>,
    ) -> Result<B256, RpcError> {
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
        let executed = self.execute(call, true, timestamp)?;
        let (result, changes) = (executed.result, executed.state);
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
        persist(number)?;
        self.db.commit(changes);
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
        }
        .min(head);
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
        // Block `n` is at index `n`: only the range is visited, not the whole history.
        let range: &[BlockRec] = if from > to {
            &[]
        } else {
            &self.blocks[from as usize..=to as usize]
        };
        let mut out = Vec::new();
        for block in range {
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

/// Answers one JSON-RPC request object.
fn answer(shared: &Mutex<Inner>, request: &Value) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let params = request
        .get("params")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let result = lock(shared).handle(method, &params);
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            let mut error = json!({"code": e.code, "message": e.message});
            if let Some(data) = e.data {
                error["data"] = json!(data);
            }
            json!({"jsonrpc": "2.0", "id": id, "error": error})
        }
    }
}

async fn rpc(State(shared): State<Shared>, Json(request): Json<Value>) -> Json<Value> {
    // Requests wait for the state lock, and transactions for an fsync: not on the async
    // executor.
    let answered = tokio::task::spawn_blocking(move || match &request {
        Value::Array(batch) => Value::Array(batch.iter().map(|r| answer(&shared, r)).collect()),
        single => answer(&shared, single),
    })
    .await;
    Json(answered.unwrap_or_else(|e| {
        tracing::error!(error = %e, "dev chain request failed");
        json!({
            "jsonrpc": "2.0",
            "id": Value::Null,
            "error": {"code": -32603, "message": "internal error"},
        })
    }))
}
