//! Research datasets: anonymizing a table of records under a policy, and answering
//! differentially private counts within a dataset's privacy budget.
//!
//! Records are decrypted in memory only (each read audited as any read); the table,
//! the released table and the answers never touch the disk here.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use medmesh_anon::dp::{self, Budget, CountAnswer, CountQuery, SystemRandomSource};
use medmesh_anon::{policy, AnonError, Format, Policy, Release, Table};
use medmesh_core::RecordId;
use medmesh_store::{AuditAction, AuditEvent, BudgetUpdate, RecordQuery};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::blocking;
use crate::{NodeServices, ServiceError};

/// Most plaintext a dataset may be built from, in memory (1 GiB).
pub const MAX_DATASET_BYTES: u64 = 1 << 30;

/// Where a dataset's table comes from.
#[derive(Debug, Clone)]
pub enum DatasetSource {
    /// A CSV file, read as the policy's `[input]` says.
    Csv(Vec<u8>),
    /// This institution's records matching the query, decrypted in memory and turned
    /// into a table by the policy's `[mapping]`.
    Records(RecordQuery),
}

/// A fresh secret for the pseudonyms of one release: they link rows inside it only.
fn pseudonym_secret() -> Result<[u8; 32], ServiceError> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| ServiceError::Internal("the system random generator failed"))?;
    Ok(secret)
}

/// One anonymization at a time in a process: each holds a core for as long as its
/// lattice takes.
static ANONYMIZING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Raises its flag when dropped: a caller that goes away (an HTTP client whose request
/// is dropped) stops the search it started.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn one_at_a_time() -> Result<tokio::sync::SemaphorePermit<'static>, ServiceError> {
    ANONYMIZING.try_acquire().map_err(|_| {
        ServiceError::Busy("another anonymization is running; retry when it ends".into())
    })
}

/// Anonymizes a CSV table under `policy`, off the async executor: what the CLI runs
/// without a node (`medmesh dataset anonymize --csv`).
pub async fn anonymize_csv(csv: Vec<u8>, policy: Policy) -> Result<Release, ServiceError> {
    let permit = one_at_a_time()?;
    let secret = pseudonym_secret()?;
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let flag = stop.0.clone();
    blocking("anonymization", move || {
        // Held by the work itself: a caller that goes away does not free the slot
        // before its search has stopped.
        let _permit = permit;
        let table = policy.read_csv(csv.as_slice())?;
        Ok(policy::release_until(table, &policy, secret, &flag)?)
    })
    .await
}

impl NodeServices {
    /// Anonymizes the table `source` gives under `policy`, storing nothing: the report
    /// and the released table (a preview, or the input of a dataset listing).
    pub async fn anonymize_dataset(
        &self,
        source: DatasetSource,
        policy: Policy,
        actor: &str,
    ) -> Result<Release, ServiceError> {
        let (release, source) = match source {
            DatasetSource::Csv(csv) => {
                let bytes = csv.len();
                (
                    anonymize_csv(csv, policy).await?,
                    format!("csv ({bytes} bytes)"),
                )
            }
            DatasetSource::Records(query) => {
                let (release, records) = self.anonymize_records(query, policy, actor).await?;
                (release, format!("{records} records"))
            }
        };
        let mut detail = BTreeMap::from([
            ("source".to_string(), source),
            ("rows".to_string(), release.rows.to_string()),
            ("models".to_string(), release.models.join(";")),
        ]);
        if let Some(solution) = &release.solution {
            let levels: Vec<String> = solution.levels.iter().map(ToString::to_string).collect();
            detail.insert("levels".into(), levels.join(","));
            detail.insert("suppressed".into(), solution.suppressed_rows.to_string());
        }
        let (store, entry) = (
            self.store.clone(),
            AuditEvent {
                action: AuditAction::DatasetAnonymize,
                actor: actor.to_string(),
                subject: format!("columns:{}", release.quasi_identifiers.join(",")),
                detail,
            },
        );
        blocking("audit", move || Ok(store.audit(entry)?)).await?;
        Ok(release)
    }

    /// Anonymizes this institution's records matching `query`; also says how many
    /// records it read.
    async fn anonymize_records(
        &self,
        query: RecordQuery,
        policy: Policy,
        actor: &str,
    ) -> Result<(Release, usize), ServiceError> {
        let Some(mapping) = policy.mapping.clone() else {
            return Err(AnonError::Policy(
                "building a table from records needs a [mapping] in the policy".into(),
            )
            .into());
        };
        if mapping.format == Format::Csv {
            return Err(AnonError::Policy(
                "a csv mapping reads a CSV file, not records: pass the file instead".into(),
            )
            .into());
        }
        let permit = one_at_a_time()?;
        let documents = self.read_records(query, actor).await?;
        let records = documents.len();
        let secret = pseudonym_secret()?;
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = stop.0.clone();
        blocking("anonymization", move || {
            let _permit = permit;
            let table = match mapping.format {
                Format::Fhir => {
                    let docs: Vec<&[u8]> = documents.iter().map(|d| d.as_slice()).collect();
                    medmesh_anon::fhir_table(&docs, &mapping)?
                }
                _ => {
                    let texts = documents
                        .iter()
                        .map(|d| std::str::from_utf8(d))
                        .collect::<Result<Vec<&str>, _>>()
                        .map_err(|_| {
                            AnonError::Policy("an HL7 v2 record is not UTF-8 text".into())
                        })?;
                    medmesh_anon::hl7_table(&texts, &mapping)?
                }
            };
            Ok((
                policy::release_until(table, &policy, secret, &flag)?,
                records,
            ))
        })
        .await
    }

    /// Decrypts, in memory, every record of this institution matching `query`.
    async fn read_records(
        &self,
        mut query: RecordQuery,
        actor: &str,
    ) -> Result<Vec<Vec<u8>>, ServiceError> {
        query.owner = Some(self.keys()?.certificate.id());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut total = 0u64;
        self.scan(query, move |record| {
            total += record.meta.size;
            if total > MAX_DATASET_BYTES {
                let _ = tx.send(None);
                return ControlFlow::Break(());
            }
            let _ = tx.send(Some(record.id));
            ControlFlow::Continue(())
        })
        .await?;
        let mut ids = Vec::new();
        while let Some(id) = rx.recv().await {
            match id {
                Some(id) => ids.push(id),
                None => {
                    return Err(ServiceError::InvalidInput(format!(
                        "the records selected hold more than {} MiB: select fewer (by patient, \
                         type or time)",
                        MAX_DATASET_BYTES >> 20
                    )))
                }
            }
        }
        if ids.is_empty() {
            return Err(ServiceError::NotFound(
                "no record of this institution matches the selection".into(),
            ));
        }
        let mut documents = Vec::with_capacity(ids.len());
        for id in ids {
            documents.push(self.read_all(id, actor).await?);
        }
        Ok(documents)
    }

    /// A record's whole plaintext, in memory.
    async fn read_all(&self, id: RecordId, actor: &str) -> Result<Vec<u8>, ServiceError> {
        let mut opened = self.open_record(id, actor).await?;
        let mut body = Vec::with_capacity(opened.meta.size.min(MAX_DATASET_BYTES) as usize);
        while let Some(chunk) = opened.body.recv().await {
            let chunk = chunk.map_err(|e| {
                tracing::error!(record = %id, error = %e, "reading a dataset record failed");
                ServiceError::Internal("reading a record failed")
            })?;
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Sets the privacy budget of dataset `dataset` (a CSV record of this institution).
    /// A budget is set once: lowering what was spent would defeat it.
    pub async fn set_dp_budget(
        &self,
        dataset: RecordId,
        epsilon: f64,
        delta: f64,
        actor: &str,
    ) -> Result<Budget, ServiceError> {
        let budget = Budget::new(epsilon, delta)?;
        self.record(dataset).await?; // it exists here, and is ours to read
        let (store, actor) = (self.store.clone(), actor.to_string());
        blocking("privacy budget", move || {
            let key = dataset.to_string();
            store.update_dp_budget(&key, &actor, |current| {
                if current.is_some() {
                    let e = ServiceError::Conflict(format!(
                        "dataset {dataset} has a privacy budget already; it is set once"
                    ));
                    return refusal(AuditAction::DpBudgetSet, BTreeMap::new(), e);
                }
                let update = BudgetUpdate {
                    budget: Some(serde_json::to_vec(&budget).expect("a budget serializes")),
                    action: AuditAction::DpBudgetSet,
                    detail: BTreeMap::from([
                        ("epsilon".into(), budget.epsilon_total.to_string()),
                        ("delta".into(), budget.delta_total.to_string()),
                    ]),
                };
                (update, Ok(budget.clone()))
            })?
        })
        .await
    }

    /// The privacy budget of dataset `dataset`.
    pub async fn dp_budget(&self, dataset: RecordId) -> Result<Budget, ServiceError> {
        let store = self.store.clone();
        blocking("privacy budget", move || {
            let stored = store.dp_budget(&dataset.to_string())?.ok_or_else(|| {
                ServiceError::NotFound(format!("dataset {dataset} has no privacy budget"))
            })?;
            parse_budget(&stored)
        })
        .await
    }

    /// Answers a differentially private count over dataset `dataset` (a CSV record).
    /// The query's ε and δ are charged to the dataset's budget, and the charge and the
    /// audit entry are durable before the answer is returned; a query the budget
    /// cannot pay for is refused (and audited) with what remains.
    pub async fn dp_count(
        &self,
        dataset: RecordId,
        query: CountQuery,
        actor: &str,
    ) -> Result<(CountAnswer, Budget), ServiceError> {
        query.mechanism.validate()?;
        // Refuse early, before decrypting anything, when there is no budget.
        self.dp_budget(dataset).await?;
        let (meta, _) = self.record(dataset).await?;
        if meta.content_type.as_str() != "text/csv" {
            return Err(ServiceError::InvalidInput(format!(
                "dataset {dataset} is a {} record; counts are answered over CSV tables",
                meta.content_type.as_str()
            )));
        }
        if meta.size > MAX_DATASET_BYTES {
            return Err(ServiceError::InvalidInput(format!(
                "dataset {dataset} holds {} MiB; counts are answered over tables of at most {} MiB",
                meta.size >> 20,
                MAX_DATASET_BYTES >> 20
            )));
        }
        let csv = self.read_all(dataset, actor).await?;
        let (store, actor) = (self.store.clone(), actor.to_string());
        blocking("private count", move || {
            let table = Table::from_csv(csv.as_slice(), b',')?;
            drop(csv);
            let columns: Vec<&str> = query
                .filters
                .iter()
                .map(|f| f.column.as_str())
                .chain(query.group_by.iter().map(String::as_str))
                .collect();
            let columns = columns.join(",");
            let (epsilon, delta) = query.mechanism.cost();
            // The charge and its audit entry commit first, in a short transaction; the
            // count runs after, outside it. A failure after the commit loses the answer,
            // never budget.
            let budget = store.update_dp_budget(&dataset.to_string(), &actor, |current| {
                let mut detail = BTreeMap::from([
                    ("epsilon".to_string(), epsilon.to_string()),
                    ("delta".to_string(), delta.to_string()),
                    ("columns".to_string(), columns),
                ]);
                let refuse = |detail, e| refusal(AuditAction::DpQuery, detail, e);
                let mut budget = match current.map(parse_budget) {
                    Some(Ok(budget)) => budget,
                    Some(Err(e)) => return refuse(detail, e),
                    None => {
                        let e = ServiceError::NotFound(format!(
                            "dataset {dataset} has no privacy budget"
                        ));
                        return refuse(detail, e);
                    }
                };
                if let Err(e) = dp::validate_query(&table, &query) {
                    return refuse(detail, e.into());
                }
                if let Err(e) = budget.charge(epsilon, delta) {
                    return refuse(detail, e.into());
                }
                let (eps_left, delta_left) = budget.remaining();
                detail.insert("outcome".into(), "answered".into());
                detail.insert("remaining_epsilon".into(), eps_left.to_string());
                detail.insert("remaining_delta".into(), delta_left.to_string());
                let update = BudgetUpdate {
                    budget: Some(serde_json::to_vec(&budget).expect("a budget serializes")),
                    action: AuditAction::DpQuery,
                    detail,
                };
                (update, Ok(budget))
            })??;
            let answer = dp::answer(&table, &query, &mut SystemRandomSource::new())?;
            Ok((answer, budget))
        })
        .await
    }
}

/// A budget update that writes nothing but its audit entry: the refusal and why.
fn refusal<T>(
    action: AuditAction,
    mut detail: BTreeMap<String, String>,
    e: ServiceError,
) -> (BudgetUpdate, Result<T, ServiceError>) {
    detail.insert("outcome".into(), format!("refused: {e}"));
    let update = BudgetUpdate {
        budget: None,
        action,
        detail,
    };
    (update, Err(e))
}

fn parse_budget(stored: &[u8]) -> Result<Budget, ServiceError> {
    serde_json::from_slice(stored).map_err(|e| {
        tracing::error!(error = %e, "a stored privacy budget does not parse");
        ServiceError::Internal("a stored privacy budget is unreadable")
    })
}
