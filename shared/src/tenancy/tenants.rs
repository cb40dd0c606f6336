//! Tenants and tiers. A tenant is one customer of the SaaS; its tier sets its
//! default limits. Stored at (`TENANTS`, `T#<id>`) so that listing is one query.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::billing::amounts::{check_max, MAX_BUDGET_MICROS, MAX_INPUTS_PER_REQUEST};
pub use crate::billing::webhooks::Webhook;
use crate::billing::webhooks::WebhookRules;
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
    /// Whether the monthly budget is a hard cap (requests over it are refused).
    #[serde(default)]
    pub hard_cap: bool,
    /// Batch inputs and the batch queue (defaults: OpenAI's file limits).
    #[serde(default)]
    pub batch: crate::batch::BatchLimits,
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
            hard_cap: false,
            batch: crate::batch::BatchLimits::default(),
        };
        Tiers(BTreeMap::from([
            (
                "free".to_string(),
                Tier {
                    hard_cap: true,
                    batch: crate::batch::BatchLimits {
                        max_enqueued_tokens: 2_000_000,
                        ..Default::default()
                    },
                    ..tier(60, 100_000, 64, 5_000_000, false)
                },
            ),
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
    /// Refuses figures above the documented maxima (see [`crate::billing::amounts`]).
    pub fn validate(&self) -> ApiResult<()> {
        self.limits().validate()?;
        check_max(
            "max_inputs_per_request",
            u64::try_from(self.max_inputs_per_request).unwrap_or(u64::MAX),
            MAX_INPUTS_PER_REQUEST,
        )?;
        check_max(
            "monthly_budget_micros",
            self.monthly_budget_micros,
            MAX_BUDGET_MICROS,
        )?;
        self.batch.validate()
    }

    pub fn limits(&self) -> crate::gateway::ratelimit::Limits {
        crate::gateway::ratelimit::Limits {
            requests_per_minute: u64::from(self.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute,
        }
    }
}

impl Tiers {
    /// From `TENANTAI_TIERS` (JSON), else the defaults. Tier names are labels
    /// and figures are within the documented maxima.
    pub fn from_env() -> Result<Self, String> {
        let tiers: Tiers = match std::env::var("TENANTAI_TIERS") {
            Ok(json) => serde_json::from_str(&json)
                .map_err(|e| format!("TENANTAI_TIERS is not valid tier JSON: {e}"))?,
            Err(_) => return Ok(Tiers::default()),
        };
        for (name, tier) in &tiers.0 {
            crate::tenancy::text::check_label("tier", name, 64)
                .and_then(|_| tier.validate())
                .map_err(|e| format!("TENANTAI_TIERS: tier '{name}': {e}"))?;
        }
        Ok(tiers)
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

/// Whose cache entries a tenant's requests may reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub rate_limits: Option<crate::gateway::ratelimit::Limits>,
    /// Whether the budget is a hard cap (else the tier's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_cap: Option<bool>,
    /// Percentages of the budget that raise a cost alert (else 50, 80, 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_thresholds: Option<Vec<u16>>,
    /// Where cost alerts are posted, signed with the webhook's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<Webhook>,
    pub created_at: i64,
    #[serde(skip)]
    pub version: u64,
}

/// Alert thresholds when a tenant sets none: 50 %, 80 % and 100 % of the budget.
pub const DEFAULT_ALERT_THRESHOLDS: [u16; 3] = [50, 80, 100];

/// A tenant's budget as the gate and the alerts apply it.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub monthly_micros: u64,
    pub hard_cap: bool,
    pub thresholds: Vec<u16>,
}

impl Tenant {
    /// The tenant's budget: its overrides, else its tier's.
    pub fn budget(&self, tier: &Tier) -> Budget {
        Budget {
            monthly_micros: self
                .monthly_budget_micros
                .unwrap_or(tier.monthly_budget_micros),
            hard_cap: self.hard_cap.unwrap_or(tier.hard_cap),
            thresholds: self
                .alert_thresholds
                .clone()
                .unwrap_or_else(|| DEFAULT_ALERT_THRESHOLDS.to_vec()),
        }
    }
}

fn check_thresholds(t: &[u16]) -> ApiResult<()> {
    if t.is_empty() || t.len() > 10 || t.iter().any(|p| *p == 0 || *p > 1000) {
        return Err(ApiError::invalid_param(
            "alert_thresholds",
            "alert_thresholds holds 1 to 10 percentages, each 1 to 1000",
        ));
    }
    Ok(())
}

/// The changes an admin may make to a tenant (fields left out stay as they are).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub tier: Option<String>,
    pub status: Option<TenantStatus>,
    pub cache_scope: Option<CacheScope>,
    pub monthly_budget_micros: Option<u64>,
    pub rate_limits: Option<crate::gateway::ratelimit::Limits>,
    pub hard_cap: Option<bool>,
    pub alert_thresholds: Option<Vec<u16>>,
    /// Sets the alert webhook (a new signing secret is generated); "" removes it.
    pub alert_webhook_url: Option<String>,
}

pub const TENANTS_PK: &str = "TENANTS";

fn key(id: &str) -> Key {
    Key::new(TENANTS_PK, format!("T#{id}"))
}

/// Longest tenant name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A tenant name as stored: trimmed, 1 to 200 characters, no control,
/// bidirectional or invisible characters (see [`crate::tenancy::text`]).
pub fn check_name(name: &str) -> ApiResult<String> {
    crate::tenancy::text::check_label("name", name, MAX_NAME_CHARS)
}

impl TenantPatch {
    /// Checks every field before anything is written (a 400 names the field).
    fn validate(&self, tiers: &Tiers) -> ApiResult<()> {
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        if let Some(tier) = &self.tier {
            tiers.get(tier)?;
        }
        if let Some(t) = &self.alert_thresholds {
            check_thresholds(t)?;
        }
        if let Some(budget) = self.monthly_budget_micros {
            check_max("monthly_budget_micros", budget, MAX_BUDGET_MICROS)?;
        }
        if let Some(limits) = &self.rate_limits {
            limits.validate()?;
        }
        Ok(())
    }
}

/// A change to a tenant: the record before and after, and a webhook signing
/// secret made by the change (shown to the caller this once).
#[derive(Clone, Debug)]
pub struct TenantUpdate {
    pub before: Tenant,
    pub after: Tenant,
    pub new_secret: Option<String>,
}

impl Tenant {
    /// The tenant as the admin API shows it: every field, the webhook without
    /// its secrets (see [`Webhook::view`]).
    pub fn view(&self) -> TenantView {
        let now = crate::store::now_secs();
        TenantView {
            id: self.id.clone(),
            name: self.name.clone(),
            tier: self.tier.clone(),
            status: self.status,
            cache_scope: self.cache_scope,
            monthly_budget_micros: self.monthly_budget_micros,
            model_overrides: self.model_overrides.clone(),
            rate_limits: self.rate_limits,
            hard_cap: self.hard_cap,
            alert_thresholds: self.alert_thresholds.clone(),
            alert_webhook: self.alert_webhook.as_ref().map(|h| h.view(now)),
            created_at: self.created_at,
        }
    }
}

/// A tenant as the admin API shows it; unset overrides are left out (the
/// tier's figures apply).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub status: TenantStatus,
    pub cache_scope: CacheScope,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_budget_micros: Option<u64>,
    /// Requested model id -> model id served instead.
    pub model_overrides: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::gateway::ratelimit::Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_cap: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_thresholds: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<crate::billing::webhooks::WebhookView>,
    pub created_at: i64,
}

#[derive(Clone)]
pub struct Tenants {
    table: Arc<dyn Table>,
    webhooks: WebhookRules,
}

impl Tenants {
    /// Tenants on this table; setting a webhook needs [`Tenants::with_webhooks`].
    pub fn new(table: Arc<dyn Table>) -> Self {
        Tenants {
            table,
            webhooks: WebhookRules::default(),
        }
    }

    /// The policy webhook URLs must pass and the vault sealing their secrets.
    pub fn with_webhooks(mut self, rules: WebhookRules) -> Self {
        self.webhooks = rules;
        self
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
        let name = check_name(name)?;
        tiers.get(tier)?;
        let tenant = Tenant {
            id: format!("ten_{}", uuid::Uuid::now_v7().simple()),
            name,
            tier: tier.to_string(),
            status: TenantStatus::Active,
            cache_scope: CacheScope::Tenant,
            monthly_budget_micros: None,
            model_overrides: BTreeMap::new(),
            rate_limits: None,
            hard_cap: None,
            alert_thresholds: None,
            alert_webhook: None,
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

    /// Every tenant, read page by page (for scheduled and admin-wide work).
    pub async fn all(&self) -> ApiResult<Vec<Tenant>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.list(cursor, 100).await?;
            out.extend(page.items);
            cursor = page.next;
            if cursor.is_none() {
                return Ok(out);
            }
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

    /// Applies an admin's patch. Setting `alert_webhook_url` checks it against
    /// the egress policy and makes a new signing secret (in `new_secret`); ""
    /// removes the webhook.
    pub async fn update(
        &self,
        id: &str,
        patch: &TenantPatch,
        tiers: &Tiers,
    ) -> ApiResult<TenantUpdate> {
        patch.validate(tiers)?;
        let mut new_secret = None;
        let webhook = match patch.alert_webhook_url.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(url) => {
                self.webhooks.check_url(url)?;
                let (sealed, secret) = self
                    .webhooks
                    .new_secret(id, crate::store::now_secs())
                    .await?;
                new_secret = Some(secret);
                Some(Some(Webhook {
                    url: url.to_string(),
                    secrets: vec![sealed],
                }))
            }
        };
        let (before, after) = self
            .modify(id, |t| {
                if let Some(cap) = patch.hard_cap {
                    t.hard_cap = Some(cap);
                }
                if let Some(thresholds) = &patch.alert_thresholds {
                    t.alert_thresholds = Some(thresholds.clone());
                }
                if let Some(w) = &webhook {
                    t.alert_webhook = w.clone();
                }
                if let Some(name) = &patch.name {
                    t.name = check_name(name)?;
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
            .await?;
        Ok(TenantUpdate {
            before,
            after,
            new_secret,
        })
    }

    /// Makes a new webhook signing secret (returned this once); the previous one
    /// keeps signing beside it for `overlap_secs`.
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        overlap_secs: u64,
    ) -> ApiResult<TenantUpdate> {
        let overlap_secs = crate::billing::webhooks::check_overlap(overlap_secs)?;
        let current = self.get(id).await?;
        if current.alert_webhook.is_none() {
            return Err(ApiError::invalid_param(
                "alert_webhook_url",
                format!("tenant '{id}' has no alert webhook to rotate the secret of"),
            ));
        }
        let now = crate::store::now_secs();
        let (sealed, secret) = self.webhooks.new_secret(id, now).await?;
        let (before, after) = self
            .modify(id, |t| match &t.alert_webhook {
                Some(hook) => {
                    t.alert_webhook = Some(hook.rotated(sealed.clone(), now, overlap_secs));
                    Ok(())
                }
                None => Err(ApiError::Conflict(format!(
                    "tenant '{id}''s webhook was removed meanwhile"
                ))),
            })
            .await?;
        Ok(TenantUpdate {
            before,
            after,
            new_secret: Some(secret),
        })
    }
}
