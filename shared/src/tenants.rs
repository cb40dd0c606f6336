//! Tenants and tiers. A tenant is one customer of the SaaS; its tier sets its
//! default limits. Stored at (`TENANTS`, `T#<id>`) so that listing is one query.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::records::{from_item, to_attrs};
use crate::store::{Cond, Item, Key, Page, Query, StoreError, Table};

/// Limits and defaults of one tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u64,
    pub max_inputs_per_request: usize,
    /// Default monthly budget in micro-dollars.
    pub monthly_budget_micros: u64,
    /// Whether tenants of this tier may opt into the shared cache scope.
    pub shared_cache_allowed: bool,
}

/// The tiers by name: free / pro / enterprise by default, or a JSON object
/// `{"name": Tier, ...}` from `TENANTAI_TIERS`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tiers(pub BTreeMap<String, Tier>);

impl Default for Tiers {
    fn default() -> Self {
        let tier = |rpm, tpm, max_inputs, budget, shared| Tier {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            max_inputs_per_request: max_inputs,
            monthly_budget_micros: budget,
            shared_cache_allowed: shared,
        };
        Tiers(BTreeMap::from([
            ("free".to_string(), tier(60, 100_000, 64, 5_000_000, false)),
            (
                "pro".to_string(),
                tier(3_000, 5_000_000, 2048, 500_000_000, true),
            ),
            (
                "enterprise".to_string(),
                tier(30_000, 50_000_000, 2048, 10_000_000_000, true),
            ),
        ]))
    }
}

impl Tier {
    pub fn limits(&self) -> crate::ratelimit::Limits {
        crate::ratelimit::Limits {
            requests_per_minute: u64::from(self.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute,
        }
    }
}

impl Tiers {
    /// From `TENANTAI_TIERS` (JSON), else the defaults.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("TENANTAI_TIERS") {
            Ok(json) => serde_json::from_str(&json)
                .map_err(|e| format!("TENANTAI_TIERS is not valid tier JSON: {e}")),
            Err(_) => Ok(Tiers::default()),
        }
    }

    pub fn get(&self, name: &str) -> ApiResult<&Tier> {
        self.0.get(name).ok_or_else(|| {
            ApiError::invalid_param(
                "tier",
                format!("unknown tier '{name}' (known: {})", self.names()),
            )
        })
    }

    pub fn names(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Whose cache entries a tenant's requests may reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// Only its own (the default).
    Tenant,
    /// Entries of every tenant that opted in, for shared models only.
    Shared,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub status: TenantStatus,
    pub cache_scope: CacheScope,
    /// Monthly budget override in micro-dollars (else the tier's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_micros: Option<u64>,
    /// Model overrides: requested model id -> model id to serve instead.
    #[serde(default)]
    pub model_overrides: BTreeMap<String, String>,
    /// Rate limits overriding the tier's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::ratelimit::Limits>,
    pub created_at: i64,
    #[serde(skip)]
    pub version: u64,
}

/// The changes an admin may make to a tenant.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub tier: Option<String>,
    pub status: Option<TenantStatus>,
    pub cache_scope: Option<CacheScope>,
    pub monthly_budget_micros: Option<u64>,
    pub rate_limits: Option<crate::ratelimit::Limits>,
}

pub const TENANTS_PK: &str = "TENANTS";

fn key(id: &str) -> Key {
    Key::new(TENANTS_PK, format!("T#{id}"))
}

pub fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::invalid_param(
            "name",
            "name must hold 1 to 200 characters",
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Tenants {
    table: Arc<dyn Table>,
}

impl Tenants {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Tenants { table }
    }

    fn to_item(t: &Tenant) -> ApiResult<Item> {
        let mut item = Item::new(key(&t.id), to_attrs(t)?);
        item.version = t.version;
        Ok(item)
    }

    fn from_item(item: Item) -> ApiResult<Tenant> {
        let version = item.version;
        let mut t: Tenant = from_item(item)?;
        t.version = version;
        Ok(t)
    }

    pub async fn create(&self, name: &str, tier: &str, tiers: &Tiers) -> ApiResult<Tenant> {
        check_name(name)?;
        tiers.get(tier)?;
        let tenant = Tenant {
            id: format!("ten_{}", uuid::Uuid::now_v7().simple()),
            name: name.trim().to_string(),
            tier: tier.to_string(),
            status: TenantStatus::Active,
            cache_scope: CacheScope::Tenant,
            monthly_budget_micros: None,
            model_overrides: BTreeMap::new(),
            rate_limits: None,
            created_at: crate::store::now_secs(),
            version: 1,
        };
        self.table
            .put(&Self::to_item(&tenant)?, &Cond::Absent)
            .await?;
        Ok(tenant)
    }

    /// The tenant, or a 404 that does not say whether it exists elsewhere.
    pub async fn get(&self, id: &str) -> ApiResult<Tenant> {
        match self.table.get(&key(id)).await? {
            Some(item) => Self::from_item(item),
            None => Err(ApiError::not_found(format!("no tenant '{id}'"))),
        }
    }

    pub async fn list(&self, cursor: Option<String>, limit: usize) -> ApiResult<Page<Tenant>> {
        let page = self
            .table
            .query(
                &Query::new(TENANTS_PK)
                    .prefix("T#")
                    .limit(limit)
                    .after(cursor),
            )
            .await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(Self::from_item)
                .collect::<ApiResult<_>>()?,
            next: page.next,
        })
    }

    /// Applies `change` to the stored tenant with an optimistic version check,
    /// retrying on a concurrent write; returns (before, after).
    pub async fn modify<F>(&self, id: &str, change: F) -> ApiResult<(Tenant, Tenant)>
    where
        F: Fn(&mut Tenant) -> ApiResult<()>,
    {
        for _ in 0..5 {
            let before = self.get(id).await?;
            let mut after = before.clone();
            change(&mut after)?;
            after.version = before.version + 1;
            match self
                .table
                .put(&Self::to_item(&after)?, &Cond::Version(before.version))
                .await
            {
                Ok(()) => return Ok((before, after)),
                Err(StoreError::ConditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!(
            "tenant '{id}' is being changed concurrently; retry"
        )))
    }

    pub async fn update(
        &self,
        id: &str,
        patch: &TenantPatch,
        tiers: &Tiers,
    ) -> ApiResult<(Tenant, Tenant)> {
        if let Some(name) = &patch.name {
            check_name(name)?;
        }
        if let Some(tier) = &patch.tier {
            tiers.get(tier)?;
        }
        self.modify(id, |t| {
            if let Some(name) = &patch.name {
                t.name = name.trim().to_string();
            }
            if let Some(tier) = &patch.tier {
                t.tier = tier.clone();
            }
            if let Some(status) = patch.status {
                t.status = status;
            }
            if let Some(limits) = patch.rate_limits {
                t.rate_limits = Some(limits);
            }
            if let Some(budget) = patch.monthly_budget_micros {
                t.monthly_budget_micros = Some(budget);
            }
            if let Some(scope) = patch.cache_scope {
                if scope == CacheScope::Shared && !tiers.get(&t.tier)?.shared_cache_allowed {
                    return Err(ApiError::invalid_param(
                        "cache_scope",
                        format!("tier '{}' does not allow the shared cache scope", t.tier),
                    ));
                }
                t.cache_scope = scope;
            }
            Ok(())
        })
        .await
    }
}
