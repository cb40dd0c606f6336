//! Optional JWT authentication: RS256 or ES256 tokens signed by a key from a
//! JWKS URL; `iss`, `aud`, `exp` and `nbf` checked; the tenant from a claim.
//! `alg: none`, HMAC algorithms (the HS/RS confusion) and unknown `kid`s are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::RwLock;

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// The claim that names the tenant id.
    pub tenant_claim: String,
}

impl JwtConfig {
    /// From `TENANTAI_JWKS_URL`, `TENANTAI_JWT_ISSUER`, `TENANTAI_JWT_AUDIENCE`
    /// and `TENANTAI_JWT_TENANT_CLAIM` (default `tenant_id`); `None` when no JWKS URL is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Ok(jwks_url) = std::env::var("TENANTAI_JWKS_URL") else {
            return Ok(None);
        };
        let need = |name: &str| {
            std::env::var(name).map_err(|_| format!("{name} is required with TENANTAI_JWKS_URL"))
        };
        Ok(Some(JwtConfig {
            jwks_url,
            issuer: need("TENANTAI_JWT_ISSUER")?,
            audience: need("TENANTAI_JWT_AUDIENCE")?,
            tenant_claim: std::env::var("TENANTAI_JWT_TENANT_CLAIM")
                .unwrap_or_else(|_| "tenant_id".into()),
        }))
    }
}

pub struct Claims {
    pub tenant_id: String,
    pub subject: String,
    pub scopes: Option<Vec<String>>,
}

struct Keyring {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

pub struct JwtVerifier {
    config: JwtConfig,
    http: reqwest::Client,
    keyring: RwLock<Keyring>,
}

/// Unknown `kid`s refetch the JWKS at most this often (key rotation without a
/// refetch storm from forged tokens).
const REFETCH_EVERY: Duration = Duration::from_secs(60);

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> ApiResult<Arc<Self>> {
        crate::gateway::backend::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Arc::new(JwtVerifier {
            config,
            http,
            keyring: RwLock::new(Keyring {
                keys: HashMap::new(),
                fetched: None,
            }),
        }))
    }

    async fn refresh(&self) -> ApiResult<()> {
        let mut ring = self.keyring.write().await;
        if ring.fetched.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return Ok(());
        }
        ring.fetched = Some(Instant::now());
        let set: JwkSet = self
            .http
            .get(&self.config.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| ApiError::Unavailable {
                message: format!("cannot fetch the JWKS: {e}"),
                retry_after_secs: 5,
            })?
            .json()
            .await
            .map_err(|e| ApiError::Unavailable {
                message: format!("the JWKS is unreadable: {e}"),
                retry_after_secs: 5,
            })?;
        ring.keys = parse_jwks(&set);
        Ok(())
    }

    pub async fn verify(&self, token: &str) -> ApiResult<Claims> {
        let bad = |why: &str| ApiError::Unauthenticated(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed header"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(bad("only RS256 and ES256 are accepted"));
        }
        let kid = header.kid.ok_or_else(|| bad("no kid"))?;
        let known = self.keyring.read().await.keys.contains_key(&kid);
        if !known {
            self.refresh().await?;
        }
        let ring = self.keyring.read().await;
        let (alg, key) = ring.keys.get(&kid).ok_or_else(|| bad("unknown kid"))?;
        // The algorithm comes from our key, never from the token.
        if *alg != header.alg {
            return Err(bad("algorithm does not match the key"));
        }
        let mut validation = Validation::new(*alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|e| bad(&e.to_string()))?;
        let claims = data.claims;
        let tenant_id = claims[&self.config.tenant_claim]
            .as_str()
            .ok_or_else(|| bad(&format!("no '{}' claim", self.config.tenant_claim)))?
            .to_string();
        let scopes = claims["scope"]
            .as_str()
            .map(|s| s.split_whitespace().map(str::to_string).collect());
        Ok(Claims {
            tenant_id,
            subject: claims["sub"].as_str().unwrap_or_default().to_string(),
            scopes,
        })
    }
}

/// RSA keys become RS256 keys and P-256 keys ES256 keys; anything else is ignored.
fn parse_jwks(set: &JwkSet) -> HashMap<String, (Algorithm, DecodingKey)> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p)
                if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, (alg, key));
        }
    }
    keys
}
