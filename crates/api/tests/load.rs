//! A bounded load test on loopback: for `MEDMESH_LOAD_SECS` seconds (60 by default),
//! concurrent uploads, downloads, deletes of the same and of different records, key
//! requests and relayed grants against one node (on the embedded dev chain) while a
//! second node fetches its records over libp2p. Then: no answer was a 5xx, every answer
//! matches the final state (each deleted record gone, each relay that answered 200 live
//! on chain and each one that failed not), `check` and `audit verify` are clean, and no
//! block is left unreferenced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::Signer;
use alloy::sol_types::SolStruct;
use medmesh_chain::bindings::GrantConsent;
use medmesh_chain::{AccessQuery, Denial};
use medmesh_core::RecordId;
use medmesh_net::FetchOptions;
use medmesh_store::AuditAction;
use medmesh_testkit::chain::{Backend, Chain, Mined};
use medmesh_testkit::net::Peer;
use medmesh_testkit::node::TestNode;
use medmesh_testkit::{institution, noise};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const PURPOSE: u32 = 42;
/// `ScopeKind.PatientAtInstitution`: one grant covers every record linked to the patient.
const PATIENT_SCOPE: u8 = 1;

/// What the workers saw, for the final checks.
#[derive(Default)]
struct Ledger {
    /// Plaintext of every record uploaded, by id.
    uploaded: HashMap<String, Vec<u8>>,
    /// Records linked to the patient (key requests pick from these).
    linked: Vec<String>,
    /// Records a DELETE answered 200 for.
    deleted: Vec<String>,
    /// Every status answered, by operation.
    statuses: HashMap<&'static str, HashMap<u16, u64>>,
    /// Relays: (patient, scope, grant id if 200).
    relays: Vec<(Address, B256, Option<B256>)>,
    /// Fetches by the second node that completed.
    fetched: u64,
    /// Key releases that answered 200.
    released: u64,
}

impl Ledger {
    fn saw(&mut self, op: &'static str, status: StatusCode) {
        *self
            .statuses
            .entry(op)
            .or_default()
            .entry(status.as_u16())
            .or_default() += 1;
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap()
}

/// A cheap deterministic pick in `0..n` (xorshift over a shared counter).
fn pick(counter: &AtomicU64, n: usize) -> usize {
    let mut x = counter.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % n.max(1) as u64) as usize
}

struct Ctx {
    node: TestNode,
    chain: Chain,
    http: Client,
    ledger: Shared,
    until: Instant,
    dice: AtomicU64,
    certificate: String,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.until
    }

    fn random_id(&self, linked: bool) -> Option<String> {
        let ledger = lock(&self.ledger);
        let ids: Vec<&String> = if linked {
            ledger.linked.iter().collect()
        } else {
            ledger.uploaded.keys().collect()
        };
        (!ids.is_empty()).then(|| ids[pick(&self.dice, ids.len())].clone())
    }

    async fn upload_and_link(&self, seed: u64) {
        let size = 1 + pick(&self.dice, 300 << 10);
        let bytes = noise(size, seed);
        let resp = self
            .http
            .post(self.node.url("/v1/records?patient=MRN-LOAD"))
            .bearer_auth(&self.node.write_token)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        lock(&self.ledger).saw("upload", status);
        if status != StatusCode::CREATED {
            return;
        }
        let id = resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        lock(&self.ledger).uploaded.insert(id.clone(), bytes);
        let resp = self
            .http
            .put(self.node.url(&format!("/v1/records/{id}/consent-link")))
            .bearer_auth(&self.node.write_token)
            .json(&json!({"patient": self.chain.patient.address().to_string()}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let mut ledger = lock(&self.ledger);
        ledger.saw("link", status);
        if status == StatusCode::OK {
            ledger.linked.push(id);
        }
    }

    async fn download(&self) {
        let Some(id) = self.random_id(false) else {
            return;
        };
        let resp = self
            .http
            .get(self.node.url(&format!("/v1/records/{id}/content")))
            .bearer_auth(&self.node.read_token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        lock(&self.ledger).saw("download", status);
        if status == StatusCode::OK {
            // A read that began is whole, even if the record is deleted meanwhile.
            let body = resp.bytes().await.expect("a started download completes");
            let ledger = lock(&self.ledger);
            assert!(
                ledger.uploaded[&id] == body.as_ref(),
                "download of {id} differs from its upload"
            );
        }
    }

    async fn delete(&self, id: &str) -> StatusCode {
        let status = self
            .http
            .delete(self.node.url(&format!("/v1/records/{id}")))
            .bearer_auth(&self.node.write_token)
            .send()
            .await
            .unwrap()
            .status();
        let mut ledger = lock(&self.ledger);
        ledger.saw("delete", status);
        if status == StatusCode::OK {
            ledger.deleted.push(id.to_string());
        }
        status
    }

    async fn key_request(&self) {
        let Some(id) = self.random_id(true) else {
            return;
        };
        let resp = self
            .node
            .request_key(&self.chain.researcher, &id, PURPOSE, &self.certificate)
            .await;
        let status = resp.status();
        let mut ledger = lock(&self.ledger);
        ledger.saw("key", status);
        ledger.released += u64::from(status == StatusCode::OK);
    }

    /// A fresh patient signs a grant (or, one time in four, someone else signs it for
    /// them, which the contract refuses); the node relays it.
    async fn relay(&self, domain: &alloy::sol_types::Eip712Domain, n: u64) {
        let patient = PrivateKeySigner::random();
        let scope = B256::from(U256::from(n + 1));
        let deadline = self.chain.now().await + 600;
        let grant = GrantConsent {
            patient: patient.address(),
            grantee: self.chain.researcher.address(),
            kind: 0,
            scope,
            purpose: PURPOSE,
            expiry: deadline + 3600,
            nonce: U256::ZERO,
            deadline: U256::from(deadline),
        };
        let forged = n % 4 == 3;
        let signer = if forged {
            PrivateKeySigner::random()
        } else {
            patient.clone()
        };
        let sig = signer
            .sign_hash(&grant.eip712_signing_hash(domain))
            .await
            .unwrap();
        let resp = self
            .http
            .post(self.node.url("/v1/grants"))
            .bearer_auth(&self.node.write_token)
            .json(&json!({
                "patient": patient.address().to_string(),
                "grantee": grant.grantee.to_string(),
                "kind": 0,
                "scope": scope.to_string(),
                "purpose": PURPOSE,
                "expiry": grant.expiry,
                "nonce": 0,
                "deadline": deadline,
                "signature": format!("0x{}", hex::encode(sig.as_bytes())),
            }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let grant_id = if status == StatusCode::OK {
            let body: Value = resp.json().await.unwrap();
            Some(body["grant_id"].as_str().unwrap().parse().unwrap())
        } else {
            None
        };
        if forged {
            assert_ne!(status, StatusCode::OK, "a forged signature was relayed");
        }
        let mut ledger = lock(&self.ledger);
        ledger.saw("relay", status);
        ledger.relays.push((patient.address(), scope, grant_id));
    }
}

fn load_duration() -> Duration {
    let secs = std::env::var("MEDMESH_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minute_of_mixed_load_leaves_a_consistent_node() {
    let chain = Chain::start_on(Backend::Embedded).await;
    let node = TestNode::start_with(|c| {
        // The workers share one address and three tokens: no rate limit here.
        c.rate_per_second = 1e6;
        c.rate_burst = 1e6;
    })
    .await;
    node.connect_chain(&chain);
    let net_a = node.connect_network().await;
    let peer_b = Peer::start(&[]).await;
    peer_b
        .net
        .dial(net_a.listen_addrs()[0].clone())
        .await
        .unwrap();
    let provider_a = net_a.peer_id();

    // The researcher publishes its certificate; the patient grants it every record of
    // theirs at this institution (the scope comes with the first consent link).
    let researcher_cert = institution(1).certificate().unwrap();
    chain.publish_key(&chain.researcher, &researcher_cert).await;
    let certificate = String::from_utf8(researcher_cert.to_armored().unwrap()).unwrap();
    let http = Client::new();
    let ctx = Arc::new(Ctx {
        node,
        chain,
        http,
        ledger: Shared::default(),
        until: Instant::now() + load_duration(),
        dice: AtomicU64::new(7),
        certificate,
    });
    ctx.upload_and_link(1).await;
    let first = lock(&ctx.ledger).linked[0].clone();
    let link: Value = ctx
        .http
        .put(ctx.node.url(&format!("/v1/records/{first}/consent-link")))
        .bearer_auth(&ctx.node.write_token)
        .json(&json!({"patient": ctx.chain.patient.address().to_string()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patient_scope: B256 = link["patient_scope"].as_str().unwrap().parse().unwrap();
    let expiry = ctx.chain.now().await + 24 * 3600;
    ctx.chain
        .consent(&ctx.chain.patient)
        .grant(
            ctx.chain.patient.address(),
            ctx.chain.researcher.address(),
            PATIENT_SCOPE,
            patient_scope,
            PURPOSE,
            expiry,
        )
        .mined()
        .await;
    let domain =
        medmesh_chain::consent_domain(ctx.chain.chain_id, ctx.chain.deployment.consent_registry);

    let mut workers = tokio::task::JoinSet::new();
    for w in 0..2u64 {
        let ctx = ctx.clone();
        workers.spawn(async move {
            let mut seed = 1000 * (w + 1);
            while ctx.running() {
                seed += 1;
                ctx.upload_and_link(seed).await;
            }
        });
    }
    for _ in 0..2 {
        let ctx = ctx.clone();
        workers.spawn(async move {
            while ctx.running() {
                ctx.download().await;
            }
        });
    }
    {
        // Deletes of different records, one at a time.
        let ctx = ctx.clone();
        workers.spawn(async move {
            while ctx.running() {
                match ctx.random_id(false) {
                    Some(id) => {
                        ctx.delete(&id).await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    {
        // Three deletes of the same record at once: exactly one succeeds.
        let ctx = ctx.clone();
        workers.spawn(async move {
            while ctx.running() {
                let Some(id) = ctx.random_id(false) else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                // At most one succeeds per copy stored; a download may fetch the record
                // back from the second node in between, so the audit log decides (below).
                futures_util::future::join_all((0..3).map(|_| ctx.delete(&id))).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    {
        let ctx = ctx.clone();
        workers.spawn(async move {
            while ctx.running() {
                ctx.key_request().await;
            }
        });
    }
    {
        let ctx = ctx.clone();
        workers.spawn(async move {
            let mut n = 0;
            while ctx.running() {
                ctx.relay(&domain, n).await;
                n += 1;
            }
        });
    }
    {
        // The second node fetches records from the first while they may be deleted.
        let ctx = ctx.clone();
        let net_b = peer_b.net.clone();
        workers.spawn(async move {
            while ctx.running() {
                let Some(id) = ctx.random_id(false) else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let options = FetchOptions {
                    providers: vec![provider_a],
                    find_timeout: Some(Duration::from_millis(200)),
                    ..FetchOptions::default()
                };
                let record: RecordId = id.parse().unwrap();
                if net_b
                    .fetch_record(record, options, Arc::new(|_| {}))
                    .await
                    .is_ok()
                {
                    lock(&ctx.ledger).fetched += 1;
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a worker failed");
    }

    let ledger = std::mem::take(&mut *lock(&ctx.ledger));
    eprintln!(
        "load: {:?}; {} uploaded, {} deleted, {} keys released, {} relays, {} fetched by the second node",
        ledger.statuses,
        ledger.uploaded.len(),
        ledger.deleted.len(),
        ledger.released,
        ledger.relays.len(),
        ledger.fetched
    );
    for (op, statuses) in &ledger.statuses {
        assert!(
            statuses.keys().all(|s| *s < 500),
            "{op} answered a 5xx: {statuses:?}"
        );
    }
    for op in ["upload", "download", "delete", "key", "relay"] {
        let ok = ledger.statuses.get(op).map_or(0, |s| {
            s.iter()
                .filter(|(code, _)| (200..300).contains(*code))
                .map(|(_, n)| n)
                .sum::<u64>()
        });
        assert!(ok > 0, "no {op} succeeded: the load did not exercise it");
    }

    // Every answer matches the final state.
    let node = &ctx.node;
    let status_of = |id: String| {
        let (http, url, token) = (
            ctx.http.clone(),
            node.url(&format!("/v1/records/{id}")),
            node.read_token.clone(),
        );
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // A deleted record is gone, unless a later download fetched it back from the second
    // node (downloads fetch what this node lacks): then the audit log shows that import
    // after the removal.
    let entries = node.state.store().audit_page(0, usize::MAX).unwrap();
    let last_seq = |action: AuditAction, id: &str| {
        entries
            .iter()
            .filter(|e| e.subject == id && e.action == action)
            .map(|e| e.seq)
            .max()
    };
    // Removals and stores alternate for every record: a record is never removed twice
    // without being stored (written or imported) in between.
    let mut present: HashMap<&str, bool> = HashMap::new();
    for e in &entries {
        let slot = present.entry(e.subject.as_str()).or_insert(false);
        match e.action {
            AuditAction::RecordWrite | AuditAction::RecordImport => *slot = true,
            AuditAction::RecordRemove => {
                assert!(*slot, "{} removed twice (audit entry {})", e.subject, e.seq);
                *slot = false;
            }
            _ => {}
        }
    }
    for id in &ledger.deleted {
        let removed = last_seq(AuditAction::RecordRemove, id).expect("a 200 delete is audited");
        let imported_after =
            last_seq(AuditAction::RecordImport, id).is_some_and(|seq| seq > removed);
        let expected = if imported_after {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status_of(id.clone()).await, expected, "{id} was deleted");
    }
    let deleted: std::collections::HashSet<&String> = ledger.deleted.iter().collect();
    for id in ledger.uploaded.keys().filter(|id| !deleted.contains(id)) {
        assert_eq!(
            status_of(id.clone()).await,
            StatusCode::OK,
            "{id} was not deleted"
        );
    }
    let cache = ctx.chain.cache();
    cache
        .sync(&ctx.chain.provider(&ctx.chain.admin))
        .await
        .unwrap();
    let now = ctx.chain.now().await;
    for (patient, scope, relayed) in &ledger.relays {
        let query = AccessQuery {
            patient: *patient,
            grantee: ctx.chain.researcher.address(),
            kind: 0,
            scope: *scope,
            purpose: PURPOSE,
        };
        match (relayed, cache.check(&query, now)) {
            (Some(id), Ok(medmesh_chain::Access::Granted { grant_id, .. })) => {
                assert_eq!(*id, grant_id)
            }
            (None, Err(Denial::NoGrant)) => {}
            (relayed, seen) => panic!("relay answered {relayed:?} but the chain says {seen:?}"),
        }
    }
    let check: Value = ctx
        .http
        .post(node.url("/v1/admin/check"))
        .bearer_auth(&node.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(check["problems"], json!([]), "{check}");
    assert_eq!(check["unreferenced_blocks"], 0, "{check}");
    let audit: Value = ctx
        .http
        .get(node.url("/v1/audit/verify"))
        .bearer_auth(&node.read_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["ok"], true, "{audit}");
    assert!(
        peer_b.store.check().unwrap().problems.is_empty(),
        "the fetching node's copies verify"
    );
}
