//! API tokens for the institution's operators, stored hashed in the index.
//!
//! A token reads `mm_<id>_<secret>`: the id finds the entry, the secret is checked
//! against its stored sha2-256 hash. The secret itself is shown once, at creation, and
//! stored nowhere.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{self, AuditAction, AuditEvent};
use crate::tables::{API_TOKENS, AUDIT};
use crate::{Store, StoreError};

const PREFIX: &str = "mm_";

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Read records, metadata, keys and the audit log.
    Read,
    /// Also upload and delete records.
    Write,
    /// Also administer the node (garbage collection, tokens).
    Admin,
}

impl std::str::FromStr for TokenScope {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(StoreError::InvalidInput(format!(
                "`{other}` is not a token scope (use read, write or admin)"
            ))),
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

/// A stored token (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public id (the part after `mm_`).
    pub id: String,
    /// What it is for, as its creator named it.
    pub name: String,
    /// What it may do.
    pub scope: TokenScope,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// Hex sha2-256 of the secret part.
    secret_hash: String,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| StoreError::Corrupt("the system random number generator failed".into()))?;
    Ok(hex::encode(buf))
}

impl Store {
    /// Creates a token; returns it and its full secret text (shown once).
    pub fn create_token(
        &self,
        name: &str,
        scope: TokenScope,
        actor: &str,
    ) -> Result<(ApiToken, String), StoreError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(
                "a token name must be 1–100 characters without control characters".into(),
            ));
        }
        let id = random_hex(6)?;
        let secret = random_hex(32)?;
        let token = ApiToken {
            id: id.clone(),
            name: name.to_string(),
            scope,
            created: OffsetDateTime::now_utc(),
            secret_hash: hash_secret(&secret),
        };
        let txn = self.db.begin_write()?;
        let json = serde_json::to_vec(&token).expect("tokens serialize");
        txn.open_table(API_TOKENS)?
            .insert(id.as_str(), json.as_slice())?;
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::TokenCreate,
                actor: actor.to_string(),
                subject: format!("token:{id}"),
                detail: BTreeMap::from([
                    ("name".into(), token.name.clone()),
                    ("scope".into(), scope.to_string()),
                ]),
            },
        )?;
        txn.commit()?;
        Ok((token, format!("{PREFIX}{id}_{secret}")))
    }

    /// The token a secret belongs to, if it is valid.
    pub fn verify_token(&self, text: &str) -> Result<Option<ApiToken>, StoreError> {
        let Some((id, secret)) = text
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(API_TOKENS)?;
        let Some(value) = table.get(id)? else {
            return Ok(None);
        };
        let token: ApiToken = serde_json::from_slice(value.value())
            .map_err(|e| StoreError::Corrupt(format!("token {id} is unreadable: {e}")))?;
        // Compare without an early exit, so timing says nothing about the hash.
        let (given, stored) = (hash_secret(secret), &token.secret_hash);
        let matches = given.len() == stored.len()
            && given
                .bytes()
                .zip(stored.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        Ok(matches.then_some(token))
    }

    /// Every token, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in txn.open_table(API_TOKENS)?.iter()? {
            let (k, v) = item?;
            out.push(serde_json::from_slice::<ApiToken>(v.value()).map_err(|e| {
                StoreError::Corrupt(format!("token {} is unreadable: {e}", k.value()))
            })?);
        }
        out.sort_by_key(|t| t.created);
        Ok(out)
    }

    /// Revokes a token by id.
    pub fn revoke_token(&self, id: &str, actor: &str) -> Result<(), StoreError> {
        let id = id.strip_prefix(PREFIX).unwrap_or(id);
        let txn = self.db.begin_write()?;
        let existed = txn.open_table(API_TOKENS)?.remove(id)?.is_some();
        if !existed {
            return Err(StoreError::UnknownToken(id.to_string()));
        }
        audit::append(
            &mut txn.open_table(AUDIT)?,
            AuditEvent {
                action: AuditAction::TokenRevoke,
                actor: actor.to_string(),
                subject: format!("token:{id}"),
                detail: BTreeMap::new(),
            },
        )?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_list_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (token, secret) = store.create_token("ci", TokenScope::Write, "test").unwrap();
        assert!(secret.starts_with("mm_"));
        assert_eq!(store.verify_token(&secret).unwrap(), Some(token.clone()));
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(store.verify_token(&wrong).unwrap(), None);
        assert_eq!(store.verify_token("garbage").unwrap(), None);
        assert_eq!(store.list_tokens().unwrap(), vec![token.clone()]);
        // The secret is stored nowhere in the index file.
        drop(store);
        let db = std::fs::read(dir.path().join(Store::INDEX_FILE)).unwrap();
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(!db
            .windows(secret_part.len())
            .any(|w| w == secret_part.as_bytes()));
        let store = Store::open(dir.path()).unwrap();
        store.revoke_token(&token.id, "test").unwrap();
        assert_eq!(store.verify_token(&secret).unwrap(), None);
        assert!(store.revoke_token(&token.id, "test").is_err());
        assert!(store.create_token(" ", TokenScope::Read, "test").is_err());
        assert!("owner".parse::<TokenScope>().is_err());
    }
}
