//! API keys (`tk_` + 43 base62 characters, 256 bits of randomness) and admin
//! tokens (`tadm_` + the same). Shown once; stored only as SHA-256.
//!
//! A key lives twice in the table, written in one transaction: under its hash
//! (`KEY#<sha256>`, the lookup on every request) and under its tenant
//! (`TENANT#<id>`, `KEY#<key id>`, for listing and revocation). When a key was
//! last used is an item of its own beside them (`KEYUSE#<key id>`), written by
//! metering as it folds the key's usage events, never on the request path.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::records::{from_item, page_of, to_attrs};
use crate::store::{now_secs, Cond, Item, Key, Page, Query, StoreError, Table, TxOp, Update};

pub const KEY_PREFIX: &str = "tk_";
pub const ADMIN_PREFIX: &str = "tadm_";
const SECRET_CHARS: usize = 43;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Longest key name, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 200;

/// What a key may do. Every route names the scope it needs.
pub const SCOPES: [&str; 5] = ["embeddings", "chat", "models", "usage", "batches"];

/// `prefix` + 43 uniformly random base62 characters (about 256 bits).
pub fn generate_secret(prefix: &str) -> ApiResult<String> {
    let mut out = String::with_capacity(prefix.len() + SECRET_CHARS);
    out.push_str(prefix);
    let mut buf = [0u8; 64];
    while out.len() < prefix.len() + SECRET_CHARS {
        getrandom::fill(&mut buf).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
        // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == prefix.len() + SECRET_CHARS {
                break;
            }
            out.push(BASE62[(*b % 62) as usize] as char);
        }
    }
    Ok(out)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a presented string has the shape of one of our secrets (checked
/// before any lookup, so junk never reaches the table).
pub fn well_formed(secret: &str, prefix: &str) -> bool {
    secret.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == SECRET_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// An API key as stored and shown: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub key_id: String,
    pub tenant_id: String,
    /// The first characters of the secret, to recognise it in listings.
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    /// Rate limits of this key (else the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::gateway::ratelimit::Limits>,
}

impl ApiKey {
    /// Why the key may not be used now, if it may not.
    pub fn refusal(&self, now: i64) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("this API key has been revoked")
        } else if self.expires_at.is_some_and(|t| t <= now) {
            Some("this API key has expired")
        } else {
            None
        }
    }

    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A freshly created key: the secret is in this value and nowhere else.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    pub secret: String,
    #[serde(flatten)]
    pub key: ApiKey,
}

/// A new key's name, scopes (default: all), expiry and own rate limits.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub name: Option<String>,
    /// Of `embeddings`, `chat`, `models`, `usage`, `batches`.
    pub scopes: Option<Vec<String>>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub rate_limits: Option<crate::gateway::ratelimit::Limits>,
}

fn lookup_key(hash: &str) -> Key {
    Key::new(format!("KEY#{hash}"), "KEY")
}

fn tenant_key(tenant_id: &str, key_id: &str) -> Key {
    Key::new(format!("TENANT#{tenant_id}"), format!("KEY#{key_id}"))
}

/// Sort-key prefix of the keys' last-use items (under `TENANT#<id>`).
pub const KEY_USE_PREFIX: &str = "KEYUSE#";

fn use_key(tenant_id: &str, key_id: &str) -> Key {
    Key::new(
        format!("TENANT#{tenant_id}"),
        format!("{KEY_USE_PREFIX}{key_id}"),
    )
}

/// Records that a key was used at `at_secs` (Unix seconds), unless a later use
/// is already recorded: uses folded out of order never move it back. Only API
/// keys (`key_...`) are recorded; JWT callers have no key to list.
pub async fn record_use(
    table: &dyn Table,
    tenant_id: &str,
    key_id: &str,
    at_secs: i64,
) -> Result<(), StoreError> {
    if !key_id.starts_with("key_") {
        return Ok(());
    }
    let update = Update::new(use_key(tenant_id, key_id))
        .set("key_id", key_id.into())
        .set("last_used_at", at_secs.into())
        .when(Cond::AtMost {
            attr: "last_used_at".into(),
            max: at_secs,
        });
    match table.update(&update).await {
        Ok(_) | Err(StoreError::ConditionFailed) => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(Clone)]
pub struct Keys {
    table: Arc<dyn Table>,
}

impl Keys {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Keys { table }
    }

    pub async fn create(&self, tenant_id: &str, req: &KeyRequest) -> ApiResult<NewKey> {
        let scopes = match &req.scopes {
            None => SCOPES.iter().map(|s| s.to_string()).collect(),
            Some(scopes) => {
                if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                    return Err(ApiError::invalid_param(
                        "scopes",
                        format!("unknown scope '{bad}' (known: {})", SCOPES.join(", ")),
                    ));
                }
                scopes.clone()
            }
        };
        if req.expires_at.is_some_and(|t| t <= now_secs()) {
            return Err(ApiError::invalid_param(
                "expires_at",
                "expires_at must be in the future",
            ));
        }
        if req
            .expires_at
            .is_some_and(|t| t > crate::billing::amounts::MAX_UNIX_SECS)
        {
            return Err(ApiError::invalid_param(
                "expires_at",
                format!(
                    "expires_at is Unix seconds; the maximum is {}",
                    crate::billing::amounts::MAX_UNIX_SECS
                ),
            ));
        }
        let name = match &req.name {
            Some(n) => Some(crate::tenancy::text::check_label(
                "name",
                n,
                MAX_KEY_NAME_CHARS,
            )?),
            None => None,
        };
        if let Some(limits) = &req.rate_limits {
            limits.validate()?;
        }
        let secret = generate_secret(KEY_PREFIX)?;
        let key = ApiKey {
            key_id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            tenant_id: tenant_id.to_string(),
            prefix: secret[..KEY_PREFIX.len() + 6].to_string(),
            name,
            scopes,
            expires_at: req.expires_at,
            revoked_at: None,
            created_at: now_secs(),
            rate_limits: req.rate_limits,
        };
        let hash = hash_secret(&secret);
        let mut listed = to_attrs(&key)?;
        listed.insert("hash".into(), hash.clone().into());
        self.table
            .transact(&[
                TxOp::Put(Item::new(lookup_key(&hash), to_attrs(&key)?), Cond::Absent),
                TxOp::Put(
                    Item::new(tenant_key(tenant_id, &key.key_id), listed),
                    Cond::Absent,
                ),
            ])
            .await?;
        Ok(NewKey { secret, key })
    }

    /// The key a presented secret names, if any (whatever its state).
    pub async fn lookup(&self, secret: &str) -> ApiResult<Option<ApiKey>> {
        if !well_formed(secret, KEY_PREFIX) {
            return Ok(None);
        }
        match self.table.get(&lookup_key(&hash_secret(secret))).await? {
            Some(item) => Ok(Some(from_item(item)?)),
            None => Ok(None),
        }
    }

    pub async fn list(
        &self,
        tenant_id: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> ApiResult<Page<ApiKey>> {
        let page = self
            .table
            .query(
                &Query::new(format!("TENANT#{tenant_id}"))
                    .prefix("KEY#")
                    .limit(limit)
                    .after(cursor),
            )
            .await?;
        page_of(page)
    }

    /// When each of the tenant's keys was last used (Unix seconds), by key id;
    /// a key never used is absent.
    pub async fn last_used(
        &self,
        tenant_id: &str,
    ) -> ApiResult<std::collections::BTreeMap<String, i64>> {
        let mut out = std::collections::BTreeMap::new();
        let mut cursor = None;
        loop {
            let page = self
                .table
                .query(
                    &Query::new(format!("TENANT#{tenant_id}"))
                        .prefix(KEY_USE_PREFIX)
                        .limit(1000)
                        .after(cursor),
                )
                .await?;
            for item in page.items {
                if let Some(id) = item.key.sk.strip_prefix(KEY_USE_PREFIX) {
                    out.insert(id.to_string(), item.number("last_used_at"));
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(out);
            }
        }
    }

    /// Revokes a key of this tenant; returns (before, after). Another tenant's
    /// key id is simply not found.
    pub async fn revoke(&self, tenant_id: &str, key_id: &str) -> ApiResult<(ApiKey, ApiKey)> {
        let listed = self
            .table
            .get(&tenant_key(tenant_id, key_id))
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!("no key '{key_id}' for tenant '{tenant_id}'"))
            })?;
        let hash = listed
            .attrs
            .get("hash")
            .and_then(|h| h.as_str())
            .ok_or_else(|| ApiError::Internal("stored key has no hash".into()))?
            .to_string();
        let before: ApiKey = from_item(listed)?;
        if before.revoked_at.is_some() {
            return Ok((before.clone(), before));
        }
        let now = now_secs();
        let revoke = |key: Key| {
            TxOp::Update(
                Update::new(key)
                    .set("revoked_at", now.into())
                    .when(Cond::Exists),
            )
        };
        match self
            .table
            .transact(&[
                revoke(lookup_key(&hash)),
                revoke(tenant_key(tenant_id, key_id)),
            ])
            .await
        {
            Ok(()) => {}
            Err(StoreError::TransactionCancelled { .. }) => {
                return Err(ApiError::not_found(format!(
                    "no key '{key_id}' for tenant '{tenant_id}'"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let after = ApiKey {
            revoked_at: Some(now),
            ..before.clone()
        };
        Ok((before, after))
    }
}

/// Admin tokens: bearer secrets for the admin API, stored hashed.
#[derive(Clone)]
pub struct AdminTokens {
    table: Arc<dyn Table>,
}

impl AdminTokens {
    pub fn new(table: Arc<dyn Table>) -> Self {
        AdminTokens { table }
    }

    /// Creates a token named `name` (who it is, for the audit log).
    pub async fn create(&self, name: &str) -> ApiResult<String> {
        let secret = generate_secret(ADMIN_PREFIX)?;
        let mut attrs = crate::store::Attrs::new();
        attrs.insert("name".into(), name.into());
        attrs.insert("created_at".into(), now_secs().into());
        self.table
            .put(
                &Item::new(Key::new("ADMIN", hash_secret(&secret)), attrs),
                &Cond::Absent,
            )
            .await?;
        Ok(secret)
    }

    /// The name of the admin a token belongs to.
    pub async fn verify(&self, secret: &str) -> ApiResult<String> {
        let refuse = || ApiError::Unauthenticated("invalid admin token".into());
        if !well_formed(secret, ADMIN_PREFIX) {
            return Err(refuse());
        }
        let item = self
            .table
            .get(&Key::new("ADMIN", hash_secret(secret)))
            .await?
            .ok_or_else(refuse)?;
        Ok(item
            .attrs
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("admin")
            .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_base62() {
        let a = generate_secret(KEY_PREFIX).unwrap();
        let b = generate_secret(KEY_PREFIX).unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a, KEY_PREFIX), "{a}");
        assert_eq!(a.len(), 3 + 43);
        assert!(!well_formed(&a, ADMIN_PREFIX));
        assert!(!well_formed("tk_short", KEY_PREFIX));
        assert!(!well_formed(&format!("{}!", &a[..a.len() - 1]), KEY_PREFIX));
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }

    #[test]
    fn refusals() {
        let key = ApiKey {
            key_id: "k".into(),
            tenant_id: "t".into(),
            prefix: "tk_abc".into(),
            name: None,
            scopes: vec!["embeddings".into()],
            expires_at: Some(100),
            revoked_at: None,
            created_at: 0,
            rate_limits: None,
        };
        assert_eq!(key.refusal(99), None);
        assert!(key.refusal(100).is_some());
        let revoked = ApiKey {
            revoked_at: Some(5),
            ..key.clone()
        };
        assert!(revoked.refusal(0).unwrap().contains("revoked"));
        assert!(key.allows("embeddings") && !key.allows("usage"));
    }
}
