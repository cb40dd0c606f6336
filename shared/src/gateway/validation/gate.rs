//! The gate's bookkeeping around [`super::check`]: every validation goes to the
//! audit log (`model.validate`, in the owner's chain or the platform's), is kept
//! on the version as its last validation, and a refusal stops the change with
//! a 409 `validation_failed` that carries the figures.

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::gateway::models::{ModelVersion, VersionStatus};
use crate::tenancy::audit::Actor;

use super::{check, live_counterpart, Purpose, Validation};

/// Whether a version in this state receives requests: live, or a canary with
/// a weight above zero.
pub fn routes_traffic(v: &ModelVersion) -> bool {
    v.status == VersionStatus::Live || (v.status == VersionStatus::Canary && v.canary_weight > 0)
}

/// Writes `result` to the audit log; `previous` is the version's last
/// validation before it (the entry's `before`).
pub async fn audit(
    app: &App,
    actor: &Actor,
    candidate: &ModelVersion,
    previous: Option<&Validation>,
    result: &Validation,
) -> ApiResult<()> {
    let json = |v: Option<&Validation>| {
        v.and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    app.audit
        .record(
            actor,
            "model.validate",
            candidate.owner_tenant.as_deref(),
            &format!("{}@{}", candidate.model, candidate.version),
            json(previous),
            json(Some(result)),
        )
        .await?;
    Ok(())
}

/// Keeps `result` as the last validation of the registered version `stored`
/// (as it is in the registry); returns the version as it now is.
pub async fn keep(
    app: &App,
    stored: &ModelVersion,
    result: &Validation,
) -> ApiResult<ModelVersion> {
    let after = ModelVersion {
        validation: Some(result.clone()),
        ..stored.clone()
    };
    app.registry.update(&after).await?;
    Ok(after)
}

/// A refusal as the error that stops the change.
pub fn refusal(result: &Validation) -> ApiResult<()> {
    if result.allows() {
        Ok(())
    } else {
        Err(ApiError::ValidationFailed(Box::new(result.clone())))
    }
}

/// Validates the registered version `candidate` against the model's live
/// version; audits and keeps the result, whatever it is.
pub async fn validate_registered(
    app: &App,
    actor: &Actor,
    candidate: &ModelVersion,
    purpose: Purpose,
) -> ApiResult<Validation> {
    let live = live_counterpart(app, candidate).await?;
    let result = check(app, candidate, live.as_ref(), purpose).await?;
    audit(
        app,
        actor,
        candidate,
        candidate.validation.as_ref(),
        &result,
    )
    .await?;
    keep(app, candidate, &result).await?;
    Ok(result)
}

/// [`validate_registered`], then `Err` (409 `validation_failed`) when refused.
pub async fn gate_registered(
    app: &App,
    actor: &Actor,
    candidate: &ModelVersion,
    purpose: Purpose,
) -> ApiResult<Validation> {
    let result = validate_registered(app, actor, candidate, purpose).await?;
    refusal(&result)?;
    Ok(result)
}
