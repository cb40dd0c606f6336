//! Authentication: API keys (and optionally JWTs) to a tenant context.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::store::now_secs;
use crate::tenancy::jwt::JwtVerifier;
use crate::tenancy::keys::{hash_secret, Keys, KEY_PREFIX, SCOPES};
use crate::tenancy::tenants::{TenantStatus, Tenants};

/// Who is calling: what the authorizer hands the api.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TenantContext {
    pub tenant_id: String,
    pub key_id: String,
    pub tier: String,
    pub scopes: Vec<String>,
    /// The key's own rate limits, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_limits: Option<crate::gateway::ratelimit::Limits>,
}

impl TenantContext {
    pub fn require(&self, scope: &str) -> ApiResult<()> {
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key lacks the '{scope}' scope"
            )))
        }
    }
}

type Cached = Result<TenantContext, (u16, String)>;

#[derive(Clone)]
pub struct Authenticator {
    keys: Keys,
    tenants: Tenants,
    jwt: Option<Arc<JwtVerifier>>,
    /// Positive and negative answers by token hash; `None` on the local host,
    /// where a revocation must take effect at once.
    cache: Option<moka::future::Cache<String, Cached>>,
}

impl Authenticator {
    pub fn new(keys: Keys, tenants: Tenants, jwt: Option<Arc<JwtVerifier>>) -> Self {
        Authenticator {
            keys,
            tenants,
            jwt,
            cache: None,
        }
    }

    /// Caches answers for `ttl` (the Lambda authorizer's short cache).
    pub fn with_cache(mut self, ttl: Duration) -> Self {
        self.cache = Some(
            moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        );
        self
    }

    /// The context of a bearer token, or why it is refused.
    pub async fn authenticate(&self, token: &str) -> ApiResult<TenantContext> {
        let Some(cache) = &self.cache else {
            return self.resolve(token).await;
        };
        let id = hash_secret(token);
        if let Some(hit) = cache.get(&id).await {
            return hit.map_err(|(status, msg)| refusal(status, msg));
        }
        let answer = self.resolve(token).await;
        match &answer {
            Ok(ctx) => cache.insert(id, Ok(ctx.clone())).await,
            Err(ApiError::Unauthenticated(m)) => cache.insert(id, Err((401, m.clone()))).await,
            Err(ApiError::Forbidden(m)) => cache.insert(id, Err((403, m.clone()))).await,
            Err(_) => {} // storage trouble: do not remember it
        }
        answer
    }

    async fn resolve(&self, token: &str) -> ApiResult<TenantContext> {
        if token.starts_with(KEY_PREFIX) {
            let key =
                self.keys.lookup(token).await?.ok_or_else(|| {
                    ApiError::Unauthenticated("Incorrect API key provided.".into())
                })?;
            if let Some(why) = key.refusal(now_secs()) {
                return Err(ApiError::Unauthenticated(why.into()));
            }
            return self
                .context(&key.tenant_id, key.key_id, key.scopes, key.rate_limits)
                .await;
        }
        if let Some(jwt) = &self.jwt {
            if token.split('.').count() == 3 {
                let claims = jwt.verify(token).await?;
                let scopes = claims
                    .scopes
                    .unwrap_or_else(|| SCOPES.iter().map(|s| s.to_string()).collect());
                return self
                    .context(
                        &claims.tenant_id,
                        format!("jwt:{}", claims.subject),
                        scopes,
                        None,
                    )
                    .await;
            }
        }
        Err(ApiError::Unauthenticated(
            "Incorrect API key provided.".into(),
        ))
    }

    async fn context(
        &self,
        tenant_id: &str,
        key_id: String,
        scopes: Vec<String>,
        key_limits: Option<crate::gateway::ratelimit::Limits>,
    ) -> ApiResult<TenantContext> {
        let tenant = match self.tenants.get(tenant_id).await {
            Ok(t) => t,
            Err(ApiError::NotFound { .. }) => {
                return Err(ApiError::Unauthenticated(
                    "the key's tenant no longer exists".into(),
                ))
            }
            Err(e) => return Err(e),
        };
        if tenant.status == TenantStatus::Suspended {
            return Err(ApiError::Forbidden("this tenant is suspended".into()));
        }
        Ok(TenantContext {
            tenant_id: tenant.id,
            key_id,
            tier: tenant.tier,
            scopes,
            key_limits,
        })
    }
}

fn refusal(status: u16, message: String) -> ApiError {
    if status == 403 {
        ApiError::Forbidden(message)
    } else {
        ApiError::Unauthenticated(message)
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> ApiResult<&str> {
    let missing = || {
        ApiError::Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer tk_...'.".into(),
        )
    };
    let value = header.ok_or_else(missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() || token.len() > 8192 {
        return Err(missing());
    }
    Ok(token.trim())
}
