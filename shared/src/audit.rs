//! The audit log of admin actions: who did what, when, and the record before and after.
//! Secrets in those records (a webhook's signing secret) are stored as
//! [`REDACTED`]: the log outlives the secrets and is read more widely.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiResult;
use crate::records::{page_of, to_attrs};
use crate::store::{now_secs, Cond, Item, Key, Page, Query, Table};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    /// The tenant the action concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub target: String,
    pub before: Value,
    pub after: Value,
}

#[derive(Clone)]
pub struct Audit {
    table: Arc<dyn Table>,
}

/// What an audit record holds in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// Replaces every field named `secret`, at any depth, by [`REDACTED`].
fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if name == "secret" && !field.is_null() {
                    *field = Value::String(REDACTED.into());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn pk(tenant: Option<&str>) -> String {
    format!("AUDIT#{}", tenant.unwrap_or("_platform"))
}

impl Audit {
    pub fn new(table: Arc<dyn Table>) -> Self {
        Audit { table }
    }

    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        tenant_id: Option<&str>,
        target: &str,
        mut before: Value,
        mut after: Value,
    ) -> ApiResult<AuditRecord> {
        redact(&mut before);
        redact(&mut after);
        let rec = AuditRecord {
            id: format!("aud_{}", uuid::Uuid::now_v7().simple()),
            at: now_secs(),
            actor: actor.to_string(),
            action: action.to_string(),
            tenant_id: tenant_id.map(str::to_string),
            target: target.to_string(),
            before,
            after,
        };
        let attrs = to_attrs(&rec)?;
        self.table
            .put(
                &Item::new(Key::new(pk(tenant_id), rec.id.clone()), attrs),
                &Cond::Absent,
            )
            .await?;
        Ok(rec)
    }

    /// Newest first.
    pub async fn list(
        &self,
        tenant_id: Option<&str>,
        cursor: Option<String>,
        limit: usize,
    ) -> ApiResult<Page<AuditRecord>> {
        let page = self
            .table
            .query(
                &Query::new(pk(tenant_id))
                    .backward()
                    .limit(limit)
                    .after(cursor),
            )
            .await?;
        page_of(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = json!({"name": "acme", "alert_webhook": {"url": "https://x", "secret": "whsec_abc"},
                           "list": [{"secret": "s2"}], "none": {"secret": null}});
        redact(&mut v);
        assert_eq!(v["alert_webhook"]["secret"], REDACTED);
        assert_eq!(v["alert_webhook"]["url"], "https://x");
        assert_eq!(v["list"][0]["secret"], REDACTED);
        assert_eq!(v["none"]["secret"], Value::Null);
        assert_eq!(v["name"], "acme");
    }
}
