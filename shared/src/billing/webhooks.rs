//! A tenant's alert webhook: its URL (under the egress policy) and its signing
//! secrets, sealed at rest ([`crate::tenancy::secrets`]).
//!
//! A signing secret (`whsec_...`) is shown once, in the answer that creates it
//! (setting the URL, or a rotation), and never again: reads show when it was
//! made, not what it is. A rotation makes a new secret and keeps the previous
//! one signing beside it until the overlap ends ([`DEFAULT_OVERLAP_SECS`], at
//! most [`MAX_OVERLAP_SECS`]), so a receiver can switch without missing a
//! delivery: while both are live each delivery carries two `v1=` signatures.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::gateway::egress::EgressPolicy;
use crate::tenancy::secrets::Secrets;

/// How long a rotated-out secret keeps signing, unless the rotation says.
pub const DEFAULT_OVERLAP_SECS: u64 = 24 * 3600;
/// The longest overlap a rotation may ask for: a week.
pub const MAX_OVERLAP_SECS: u64 = 7 * 24 * 3600;

/// A stored webhook: where alerts go and the secrets that sign them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// Newest first; the newest always signs, an older one until its `retires_at`.
    #[serde(default)]
    pub secrets: Vec<SigningSecret>,
}

/// One signing secret, sealed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SigningSecret {
    pub sealed: String,
    pub created_at: i64,
    /// When a rotated-out secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<i64>,
}

/// What sets up webhooks: the policy their URLs must pass and the vault that
/// seals their secrets.
#[derive(Clone, Debug, Default)]
pub struct WebhookRules {
    pub egress: EgressPolicy,
    pub secrets: Secrets,
}

/// The context a tenant's webhook secrets are sealed for.
pub fn seal_context(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}:alert_webhook")
}

fn sealing_failed(e: crate::tenancy::secrets::SecretsError) -> ApiError {
    ApiError::Internal(format!("webhook secret: {e}"))
}

impl WebhookRules {
    /// Checks a URL an admin gave for `alert_webhook_url` (400 naming the field).
    pub fn check_url(&self, url: &str) -> ApiResult<()> {
        self.egress.check_url(url).map(|_| ()).map_err(|e| {
            ApiError::invalid_param("alert_webhook_url", format!("alert_webhook_url: {e}"))
        })
    }

    /// A new secret, sealed for the tenant: (its stored form, the secret to show once).
    pub async fn new_secret(
        &self,
        tenant_id: &str,
        now: i64,
    ) -> ApiResult<(SigningSecret, String)> {
        let secret = crate::tenancy::keys::generate_secret("whsec_")?;
        let sealed = self
            .secrets
            .seal(&secret, &seal_context(tenant_id))
            .await
            .map_err(sealing_failed)?;
        let stored = SigningSecret {
            sealed,
            created_at: now,
            retires_at: None,
        };
        Ok((stored, secret))
    }

    /// The secrets that sign a delivery at `now`, opened, newest first.
    pub async fn signing_secrets(
        &self,
        tenant_id: &str,
        hook: &Webhook,
        now: i64,
    ) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for s in hook.live(now) {
            let open = self
                .secrets
                .open(&s.sealed, &seal_context(tenant_id))
                .await
                .map_err(|e| format!("webhook secret: {e}"))?;
            out.push(open);
        }
        if out.is_empty() {
            return Err("the webhook has no signing secret; rotate it to make one".into());
        }
        Ok(out)
    }
}

impl Webhook {
    /// The secrets still signing at `now`: the newest, and older ones before
    /// their `retires_at`.
    pub fn live(&self, now: i64) -> impl Iterator<Item = &SigningSecret> {
        self.secrets
            .iter()
            .enumerate()
            .filter(move |(i, s)| *i == 0 || s.retires_at.is_some_and(|t| t > now))
            .map(|(_, s)| s)
    }

    /// This webhook with `new` first and the current newest secret signing
    /// beside it for `overlap_secs` (older ones are dropped).
    pub fn rotated(&self, new: SigningSecret, now: i64, overlap_secs: u64) -> Webhook {
        let overlap = i64::try_from(overlap_secs.min(MAX_OVERLAP_SECS)).unwrap_or(0);
        let mut secrets = vec![new];
        if let Some(current) = self.secrets.first().filter(|_| overlap > 0) {
            secrets.push(SigningSecret {
                retires_at: Some(now + overlap),
                ..current.clone()
            });
        }
        Webhook {
            url: self.url.clone(),
            secrets,
        }
    }

    /// What reads show: the URL and when its secrets were made and retire;
    /// never a secret, sealed or not.
    pub fn view(&self, now: i64) -> WebhookView {
        WebhookView {
            url: self.url.clone(),
            secret_created_at: self.secrets.first().map(|s| s.created_at),
            previous_secret_retires_at: self.live(now).skip(1).filter_map(|s| s.retires_at).max(),
            secret: None,
        }
    }
}

/// A tenant's alert webhook as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// When the current signing secret was made.
    #[schema(required = true)]
    pub secret_created_at: Option<i64>,
    /// Until when the previous secret also signs (after a rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_retires_at: Option<i64>,
    /// The new signing secret: only in the answer of the change that made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Checks a rotation's overlap (seconds the old secret keeps signing).
pub fn check_overlap(overlap_secs: u64) -> ApiResult<u64> {
    crate::billing::amounts::check_max("overlap_secs", overlap_secs, MAX_OVERLAP_SECS)?;
    Ok(overlap_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(sealed: &str, at: i64) -> SigningSecret {
        SigningSecret {
            sealed: sealed.into(),
            created_at: at,
            retires_at: None,
        }
    }

    #[test]
    fn rotation_keeps_the_previous_secret_for_the_overlap_only() {
        let hook = Webhook {
            url: "https://x".into(),
            secrets: vec![secret("a", 10)],
        };
        let rotated = hook.rotated(secret("b", 100), 100, 50);
        let live = |at| {
            rotated
                .live(at)
                .map(|s| s.sealed.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(live(120), ["b", "a"]);
        assert_eq!(live(150), ["b"]);
        assert_eq!(rotated.view(120).previous_secret_retires_at, Some(150));
        assert!(rotated.view(150).previous_secret_retires_at.is_none());
        let shown = serde_json::to_string(&rotated.view(120)).unwrap();
        assert!(!shown.contains("\"a\""));
        // A second rotation drops the oldest; no overlap drops the previous at once.
        let twice = rotated.rotated(secret("c", 130), 130, 50);
        assert_eq!(twice.secrets.len(), 2);
        assert_eq!(twice.rotated(secret("d", 140), 140, 0).secrets.len(), 1);
    }
}
