//! Differential-privacy budgets, one per dataset.
//!
//! The store keeps each budget as its owner (the service, with `medmesh-anon`'s
//! accounting) wrote it, and guarantees one thing: a charge and its audit entry are
//! written together, in one transaction, before the caller releases anything. A crash
//! after the commit loses an answer, never budget.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use crate::{
    audit::{self, AuditAction, AuditEvent},
    tables::{AUDIT, DP_BUDGETS},
    Store, StoreError,
};

/// What an update of a budget writes.
#[derive(Debug, Clone)]
pub struct BudgetUpdate {
    /// The new budget, or `None` to leave it as it is (a refused query).
    pub budget: Option<Vec<u8>>,
    /// The audit entry's action.
    pub action: AuditAction,
    /// The audit entry's detail.
    pub detail: BTreeMap<String, String>,
}

impl Store {
    /// The budget of `dataset`, as written, if it has one.
    pub fn dp_budget(&self, dataset: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let budgets = txn.open_table(DP_BUDGETS)?;
        Ok(budgets.get(dataset)?.map(|v| v.value().to_vec()))
    }

    /// Updates the budget of `dataset` as `actor`: `update` sees the current budget
    /// (`None` when there is none) and says what to write; the budget and the audit
    /// entry commit together, and only then is `update`'s result returned.
    pub fn update_dp_budget<T>(
        &self,
        dataset: &str,
        actor: &str,
        update: impl FnOnce(Option<&[u8]>) -> (BudgetUpdate, T),
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write()?;
        let result = {
            let mut budgets = txn.open_table(DP_BUDGETS)?;
            let current = budgets.get(dataset)?.map(|v| v.value().to_vec());
            let (write, result) = update(current.as_deref());
            if let Some(budget) = &write.budget {
                budgets.insert(dataset, budget.as_slice())?;
            }
            audit::append(
                &mut txn.open_table(AUDIT)?,
                AuditEvent {
                    action: write.action,
                    actor: actor.to_string(),
                    subject: format!("dataset:{dataset}"),
                    detail: write.detail,
                },
            )?;
            result
        };
        txn.commit()?;
        Ok(result)
    }
}
