//! The model registry and routing.
//!
//! A model has versions; each version names its backend and price and carries a
//! status (staged, canary, live, retired) and a canary weight. Who may use a
//! model follows the three multi-tenancy patterns: a shared base model (no
//! owner, no tier), a tenant-specific model (`owner_tenant`), and a tier model
//! (`tier` + `serves`: it stands in for a base model for that tier). A request
//! for model M resolves: the tenant's override of M -> the tier's model serving
//! M -> M itself; then the live version, or the canary version for the share of
//! requests its weight gives, sticky per request id.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::records::{from_item, to_attrs};
use crate::store::{now_secs, Cond, Item, Key, Query, StoreError, Table};
use crate::tenancy::tenants::Tenant;

pub const MODELS_PK: &str = "MODELS";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The worker's HTTP API (`gpu-worker serve`), at `endpoint` (a base URL).
    Worker,
    /// A SageMaker endpoint, named by `endpoint`.
    Sagemaker,
    /// Any OpenAI-compatible server (a hosted provider, vLLM, llama.cpp's server)
    /// at the base URL `endpoint` (ending in `/v1`), reached under the egress
    /// policy, with the API key named by `api_key_secret` (chat).
    Openai,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    Staged,
    Canary,
    Live,
    Retired,
}

/// What a model does: it embeds, or it chats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Embedding,
    Chat,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Chat => "chat",
        }
    }
}

/// Longest context a chat model may declare, in tokens.
pub const MAX_CONTEXT_LENGTH: u32 = 1 << 21;

/// One version of a model: its backend, prices, routing status and who may call it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelVersion {
    pub model: String,
    pub version: String,
    /// `embedding` (the default, for versions registered before chat) or `chat`.
    #[serde(default)]
    pub kind: ModelKind,
    pub backend: BackendKind,
    /// Worker base URL, SageMaker endpoint name, or an upstream's base URL.
    pub endpoint: String,
    /// The model id the upstream knows (`openai` backends; default: `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    /// The name of the secret holding the upstream's API key (`openai` backends):
    /// an environment variable in `tenantai dev`, a Secrets Manager secret on
    /// AWS. The key itself is never stored here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_uri: Option<String>,
    /// Price per 1,000 input (prompt) tokens, in micro-dollars.
    pub price_per_1k_tokens_micros: u64,
    /// Price per 1,000 generated (completion) tokens, in micro-dollars (chat).
    #[serde(default)]
    pub price_per_1k_completion_tokens_micros: u64,
    /// Tokens of prompt plus completion the model reads at most (chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// Completion tokens allowed when a request sets no `max_tokens` (chat);
    /// unset: what the context leaves, at most 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Percent off the price for batch lines (unset: 50, as OpenAI's batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount_percent: Option<u8>,
    pub status: VersionStatus,
    /// Percent of requests (0-100) a canary version receives.
    #[serde(default)]
    pub canary_weight: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<String>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<i64>,
}

impl ModelVersion {
    /// A live version of a shared model served by a worker at `endpoint`.
    pub fn live_worker(
        model: &str,
        version: &str,
        endpoint: &str,
        price_per_1k_tokens_micros: u64,
    ) -> Self {
        ModelVersion {
            model: model.into(),
            version: version.into(),
            kind: ModelKind::Embedding,
            backend: BackendKind::Worker,
            endpoint: endpoint.into(),
            upstream_model: None,
            api_key_secret: None,
            artifact_uri: None,
            price_per_1k_tokens_micros,
            price_per_1k_completion_tokens_micros: 0,
            context_length: None,
            max_output_tokens: None,
            batch_discount_percent: None,
            status: VersionStatus::Live,
            canary_weight: 0,
            owner_tenant: None,
            tier: None,
            serves: None,
            created_at: 0,
            promoted_at: None,
        }
    }

    /// Whether this tenant may use the model.
    pub fn visible_to(&self, tenant: &Tenant) -> bool {
        match (&self.owner_tenant, &self.tier) {
            (Some(owner), _) => *owner == tenant.id,
            (None, Some(tier)) => *tier == tenant.tier,
            (None, None) => true,
        }
    }

    /// A shared model is one every tenant may use (the shared cache scope applies).
    pub fn is_shared(&self) -> bool {
        self.owner_tenant.is_none() && self.tier.is_none()
    }

    pub fn validate(&self) -> ApiResult<()> {
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        };
        if !id_ok(&self.model) {
            return Err(ApiError::invalid_param(
                "model",
                "model ids hold 1 to 128 of A-Z a-z 0-9 - _ . :",
            ));
        }
        if !id_ok(&self.version) {
            return Err(ApiError::invalid_param(
                "version",
                "versions hold 1 to 128 of A-Z a-z 0-9 - _ . :",
            ));
        }
        if self.canary_weight > 100 {
            return Err(ApiError::invalid_param(
                "canary_weight",
                "canary_weight is a percentage, 0 to 100",
            ));
        }
        if self.batch_discount_percent.is_some_and(|d| d > 100) {
            return Err(ApiError::invalid_param(
                "batch_discount_percent",
                "batch_discount_percent is a percentage, 0 to 100",
            ));
        }
        crate::tenancy::text::check_label("endpoint", &self.endpoint, 2048)?;
        if let Some(uri) = &self.artifact_uri {
            crate::tenancy::text::check_label("artifact_uri", uri, 2048)?;
        }
        if self.serves.as_deref().is_some_and(|m| !id_ok(m)) {
            return Err(ApiError::invalid_param(
                "serves",
                "serves names a model id: 1 to 128 of A-Z a-z 0-9 - _ . :",
            ));
        }
        crate::billing::amounts::check_max(
            "price_per_1k_tokens_micros",
            self.price_per_1k_tokens_micros,
            crate::billing::amounts::MAX_PRICE_PER_1K_TOKENS_MICROS,
        )?;
        crate::billing::amounts::check_max(
            "price_per_1k_completion_tokens_micros",
            self.price_per_1k_completion_tokens_micros,
            crate::billing::amounts::MAX_PRICE_PER_1K_TOKENS_MICROS,
        )?;
        for (field, value) in [
            ("context_length", self.context_length),
            ("max_output_tokens", self.max_output_tokens),
        ] {
            if let Some(v) = value {
                if v == 0 {
                    return Err(ApiError::invalid_param(
                        field,
                        format!("{field} must be positive"),
                    ));
                }
                crate::billing::amounts::check_max(
                    field,
                    u64::from(v),
                    u64::from(MAX_CONTEXT_LENGTH),
                )?;
            }
        }
        if self.kind == ModelKind::Embedding
            && (self.price_per_1k_completion_tokens_micros > 0 || self.max_output_tokens.is_some())
        {
            return Err(ApiError::invalid_param(
                "kind",
                "an embedding model generates nothing: no completion price or max_output_tokens",
            ));
        }
        self.validate_upstream()?;
        if self.tier.is_some() != self.serves.is_some() {
            return Err(ApiError::invalid_param(
                "serves",
                "a tier model names both `tier` and the model it `serves`",
            ));
        }
        Ok(())
    }
}

impl ModelVersion {
    /// An `openai` backend is a chat model at an http(s) base URL; its secret is
    /// a name (letters, digits, `_-/.+=@`), never a key.
    fn validate_upstream(&self) -> ApiResult<()> {
        if let Some(name) = &self.upstream_model {
            crate::tenancy::text::check_label("upstream_model", name, 256)?;
        }
        if let Some(name) = &self.api_key_secret {
            let ok = !name.is_empty()
                && name.len() <= 512
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-/.+=@:".contains(c));
            if !ok {
                return Err(ApiError::invalid_param(
                    "api_key_secret",
                    "api_key_secret names a secret (an environment variable or a Secrets Manager secret id), 1 to 512 of A-Z a-z 0-9 _ - / . + = @ :",
                ));
            }
        }
        if self.backend != BackendKind::Openai {
            if self.upstream_model.is_some() || self.api_key_secret.is_some() {
                return Err(ApiError::invalid_param(
                    "backend",
                    "upstream_model and api_key_secret belong to `openai` backends",
                ));
            }
            return Ok(());
        }
        if self.kind != ModelKind::Chat {
            return Err(ApiError::invalid_param(
                "kind",
                "`openai` backends serve chat models",
            ));
        }
        match reqwest::Url::parse(&self.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
            _ => Err(ApiError::invalid_param(
                "endpoint",
                "an `openai` backend's endpoint is its base URL, e.g. https://api.example.com/v1",
            )),
        }
    }
}

fn key(model: &str, version: &str) -> Key {
    Key::new(MODELS_PK, format!("M#{model}#V#{version}"))
}

/// The routing decision for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The model id the client asked for.
    pub requested: String,
    pub version: ModelVersion,
}

#[derive(Clone)]
pub struct Registry {
    table: Arc<dyn Table>,
    /// All versions, cached briefly: routing reads the registry on every request.
    cache: moka::future::Cache<(), Arc<Vec<ModelVersion>>>,
}

impl Registry {
    pub fn new(table: Arc<dyn Table>, cache_ttl: Duration) -> Self {
        Registry {
            table,
            cache: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(cache_ttl)
                .build(),
        }
    }

    pub async fn all(&self) -> ApiResult<Arc<Vec<ModelVersion>>> {
        if let Some(v) = self.cache.get(&()).await {
            return Ok(v);
        }
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .table
                .query(&Query::new(MODELS_PK).prefix("M#").limit(500).after(cursor))
                .await?;
            for item in page.items {
                out.push(from_item(item)?);
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        let out = Arc::new(out);
        self.cache.insert((), out.clone()).await;
        Ok(out)
    }

    pub fn invalidate(&self) {
        self.cache.invalidate_all();
    }

    pub async fn get(&self, model: &str, version: &str) -> ApiResult<ModelVersion> {
        let item = self.table.get(&key(model, version)).await?.ok_or_else(|| {
            ApiError::not_found(format!("no version '{version}' of model '{model}'"))
        })?;
        from_item(item)
    }

    async fn put(&self, v: &ModelVersion, cond: Cond) -> ApiResult<()> {
        let attrs = to_attrs(v)?;
        match self
            .table
            .put(&Item::new(key(&v.model, &v.version), attrs), &cond)
            .await
        {
            Ok(()) => {}
            Err(StoreError::ConditionFailed) => {
                return Err(ApiError::Conflict(format!(
                    "version '{}' of model '{}' already exists",
                    v.version, v.model
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.invalidate();
        Ok(())
    }

    pub async fn register(&self, mut v: ModelVersion) -> ApiResult<ModelVersion> {
        v.validate()?;
        v.created_at = now_secs();
        if v.status == VersionStatus::Live {
            v.promoted_at = Some(now_secs());
        }
        self.put(&v, Cond::Absent).await?;
        Ok(v)
    }

    pub async fn update(&self, v: &ModelVersion) -> ApiResult<()> {
        v.validate()?;
        self.put(v, Cond::Exists).await
    }

    /// Makes `version` the live one; the previous live version is retired.
    /// Returns the versions changed, as (before, after) pairs.
    pub async fn promote(
        &self,
        model: &str,
        version: &str,
    ) -> ApiResult<Vec<(ModelVersion, ModelVersion)>> {
        let target = self.get(model, version).await?;
        let mut changes = Vec::new();
        self.invalidate();
        for v in
            self.all().await?.iter().filter(|v| {
                v.model == model && v.status == VersionStatus::Live && v.version != version
            })
        {
            let after = ModelVersion {
                status: VersionStatus::Retired,
                canary_weight: 0,
                ..v.clone()
            };
            self.update(&after).await?;
            changes.push((v.clone(), after));
        }
        let after = ModelVersion {
            status: VersionStatus::Live,
            canary_weight: 0,
            promoted_at: Some(now_secs()),
            ..target.clone()
        };
        self.update(&after).await?;
        changes.push((target, after));
        Ok(changes)
    }

    /// Retires the live version and makes the most recently live retired one live again.
    pub async fn rollback(&self, model: &str) -> ApiResult<Vec<(ModelVersion, ModelVersion)>> {
        self.invalidate();
        let all = self.all().await?;
        let versions: Vec<_> = all.iter().filter(|v| v.model == model).collect();
        if versions.is_empty() {
            return Err(ApiError::not_found(format!("no model '{model}'")));
        }
        let live = versions
            .iter()
            .find(|v| v.status == VersionStatus::Live)
            .ok_or_else(|| {
                ApiError::Conflict(format!("model '{model}' has no live version to roll back"))
            })?;
        let previous = versions
            .iter()
            .filter(|v| v.status == VersionStatus::Retired && v.promoted_at.is_some())
            .max_by_key(|v| (v.promoted_at, v.created_at))
            .ok_or_else(|| {
                ApiError::Conflict(format!("model '{model}' has no earlier live version"))
            })?;
        let retired = ModelVersion {
            status: VersionStatus::Retired,
            promoted_at: None,
            ..(*live).clone()
        };
        let restored = ModelVersion {
            status: VersionStatus::Live,
            ..(*previous).clone()
        };
        self.update(&retired).await?;
        self.update(&restored).await?;
        Ok(vec![
            ((*live).clone(), retired),
            ((*previous).clone(), restored),
        ])
    }

    /// The model ids this tenant may request, each with its serving version.
    pub async fn visible(&self, tenant: &Tenant) -> ApiResult<Vec<ModelVersion>> {
        let all = self.all().await?;
        let mut out: Vec<ModelVersion> = Vec::new();
        for v in all
            .iter()
            .filter(|v| v.status == VersionStatus::Live && v.visible_to(tenant))
        {
            if !out.iter().any(|o| o.model == v.model) {
                out.push(v.clone());
            }
        }
        out.sort_by(|a, b| a.model.cmp(&b.model));
        Ok(out)
    }

    /// Resolves a request for `requested` by this tenant: the first route serves,
    /// the rest are its fallbacks along the hierarchy (tenant override -> tier
    /// model -> the requested model), each at its live or sticky canary version.
    pub async fn route_chain(
        &self,
        tenant: &Tenant,
        requested: &str,
        request_id: &str,
    ) -> ApiResult<Vec<Route>> {
        let all = self.all().await?;
        let tier_model = all
            .iter()
            .find(|v| {
                v.tier.as_deref() == Some(tenant.tier.as_str())
                    && v.serves.as_deref() == Some(requested)
                    && v.status == VersionStatus::Live
            })
            .map(|v| v.model.clone());
        let candidates = [
            tenant.model_overrides.get(requested).cloned(),
            tier_model,
            Some(requested.to_string()),
        ];
        let mut chain: Vec<Route> = Vec::new();
        for model in candidates.into_iter().flatten() {
            if chain.iter().any(|r| r.version.model == model) {
                continue;
            }
            let versions: Vec<_> = all
                .iter()
                .filter(|v| v.model == model && v.visible_to(tenant))
                .collect();
            let Some(live) = versions.iter().find(|v| v.status == VersionStatus::Live) else {
                continue;
            };
            let canary = versions
                .iter()
                .find(|v| v.status == VersionStatus::Canary && v.canary_weight > 0);
            let chosen = match canary {
                Some(c) if bucket(request_id) < u32::from(c.canary_weight) => c,
                _ => live,
            };
            chain.push(Route {
                requested: requested.to_string(),
                version: (*chosen).clone(),
            });
        }
        if chain.is_empty() {
            return Err(ApiError::NotFound {
                message: format!(
                    "The model '{requested}' does not exist or you do not have access to it."
                ),
                code: "model_not_found",
            });
        }
        Ok(chain)
    }

    /// The route that serves first (see [`Registry::route_chain`]).
    pub async fn route(
        &self,
        tenant: &Tenant,
        requested: &str,
        request_id: &str,
    ) -> ApiResult<Route> {
        let mut chain = self.route_chain(tenant, requested, request_id).await?;
        Ok(chain.remove(0))
    }
}

/// A request id's stable bucket in 0..100.
pub fn bucket(request_id: &str) -> u32 {
    let digest = Sha256::digest(request_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("req-1"), bucket("req-1"));
        let under_20 = (0..10_000)
            .filter(|i| bucket(&format!("req-{i}")) < 20)
            .count();
        assert!((1_600..2_400).contains(&under_20), "{under_20}");
    }
}
