//! What the deployment holds about one tenant, kind by kind: where each kind
//! lives, whether an export carries it, and how erasure removes it. A new
//! capability that keeps tenant data adds one entry to [`KINDS`].

use std::sync::Arc;

use serde_json::Value;

use crate::store::{Attrs, Item, Key, Page, Query, StoreResult, Table};

/// The ids that name a tenant's data: its own, and its keys' (found through
/// the tenant's key list before that list is erased).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Refs {
    pub tenant_id: String,
    pub key_ids: Vec<String>,
    pub key_hashes: Vec<String>,
}

impl Refs {
    /// The tenant's ids, read from its key list.
    pub async fn load(table: &dyn Table, tenant_id: &str) -> StoreResult<Refs> {
        let mut refs = Refs {
            tenant_id: tenant_id.to_string(),
            ..Default::default()
        };
        let mut cursor = None;
        loop {
            let page = table
                .query(
                    &Query::new(format!("TENANT#{tenant_id}"))
                        .prefix("KEY#")
                        .limit(1000)
                        .after(cursor),
                )
                .await?;
            for item in page.items {
                if let Some(id) = item.attrs.get("key_id").and_then(Value::as_str) {
                    refs.key_ids.push(id.to_string());
                }
                if let Some(hash) = item.attrs.get("hash").and_then(Value::as_str) {
                    refs.key_hashes.push(hash.to_string());
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(refs);
            }
        }
    }

    /// Whether an item names the tenant or one of its keys anywhere.
    pub fn named_in(&self, item: &Item) -> bool {
        let text = format!(
            "{}\n{}\n{}",
            item.key.pk,
            item.key.sk,
            Value::Object(item.attrs.clone())
        );
        self.named_in_text(&text)
    }

    pub fn named_in_text(&self, text: &str) -> bool {
        text.contains(&self.tenant_id)
            || self.key_ids.iter().any(|k| text.contains(k.as_str()))
            || self.key_hashes.iter().any(|h| text.contains(h.as_str()))
    }
}

/// Where the items of a kind are.
#[derive(Clone, Debug, PartialEq)]
pub enum Place {
    /// Every item under a partition key whose sort key starts with the prefix.
    Partition { pk: String, sk_prefix: String },
    /// Items of a shared partition whose attribute holds the tenant id.
    Owned {
        pk: String,
        sk_prefix: String,
        attr: &'static str,
    },
    /// One item.
    Item(Key),
    /// Objects under a prefix of the bucket.
    Objects(String),
}

/// How erasure removes a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Erase {
    Delete,
    /// Usage aggregates: their counters are added to the anonymous
    /// `USAGE#_erased` aggregates (the platform's own accounts) as each is deleted.
    FoldIntoAnonymous,
}

pub struct Kind {
    pub name: &'static str,
    pub description: &'static str,
    /// Whether an export carries it (key lookups only repeat key metadata under
    /// the key's hash, and earlier exports are not re-exported).
    pub exported: bool,
    pub erase: Erase,
    pub places: fn(&Refs) -> Vec<Place>,
    /// Applied to each item's attributes before export.
    pub redact: fn(&mut Attrs),
}

fn partition(pk: String, sk_prefix: &str) -> Place {
    Place::Partition {
        pk,
        sk_prefix: sk_prefix.to_string(),
    }
}

fn keep(_: &mut Attrs) {}

fn no_secrets(attrs: &mut Attrs) {
    let mut v = Value::Object(std::mem::take(attrs));
    crate::tenancy::audit::redact(&mut v);
    if let Value::Object(m) = v {
        *attrs = m;
    }
}

fn no_hash(attrs: &mut Attrs) {
    attrs.remove("hash");
}

/// The anonymous partition erased tenants' usage is folded into.
pub const ERASED_USAGE_PK: &str = "USAGE#_erased";

/// Every kind of tenant data, in export order (erasure goes in reverse, so the
/// tenant record goes last).
pub static KINDS: &[Kind] = &[
    Kind {
        name: "tenant",
        description: "the tenant record: name, tier, status, budgets, limits, overrides (webhook secret redacted)",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![Place::Item(Key::new(crate::tenancy::tenants::TENANTS_PK, format!("T#{}", r.tenant_id)))],
        redact: no_secrets,
    },
    Kind {
        name: "api_keys",
        description: "API key metadata: id, display prefix, name, scopes, expiry, revocation (never the secret or its hash)",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![partition(format!("TENANT#{}", r.tenant_id), "KEY#")],
        redact: no_hash,
    },
    Kind {
        name: "key_use",
        description: "when each API key was last used (from its metered calls)",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![partition(format!("TENANT#{}", r.tenant_id), crate::tenancy::keys::KEY_USE_PREFIX)],
        redact: keep,
    },
    Kind {
        name: "key_lookups",
        description: "each key's lookup item, stored under the key's hash",
        exported: false,
        erase: Erase::Delete,
        places: |r| {
            r.key_hashes
                .iter()
                .map(|h| Place::Item(Key::new(format!("KEY#{h}"), "KEY")))
                .collect()
        },
        redact: keep,
    },
    Kind {
        name: "usage",
        description: "usage aggregates by day and model, and month totals",
        exported: true,
        erase: Erase::FoldIntoAnonymous,
        places: |r| vec![partition(crate::billing::metering::usage_pk(&r.tenant_id), "")],
        redact: keep,
    },
    Kind {
        name: "budget",
        description: "budget reservations committed per month (the hard-cap gate)",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![partition(format!("BUDGET#{}", r.tenant_id), "")],
        redact: keep,
    },
    Kind {
        name: "alerts",
        description: "cost alerts claimed and sent, per month, threshold and kind",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![partition(format!("ALERTS#{}", r.tenant_id), "")],
        redact: keep,
    },
    Kind {
        name: "audit",
        description: "the audit trail of admin actions on the tenant (its own hash chain)",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![partition(crate::tenancy::audit::chain_pk(Some(&r.tenant_id)), "")],
        redact: keep,
    },
    Kind {
        name: "cache",
        description: "cached embeddings answers in the tenant's own cache scope (vectors keyed by a hash of the request)",
        exported: true,
        erase: Erase::Delete,
        places: |r| vec![partition(format!("CACHE#{}", r.tenant_id), "")],
        redact: keep,
    },
    Kind {
        name: "rate_limits",
        description: "rate-limit counters of the current windows, of the tenant and of each key",
        exported: true,
        erase: Erase::Delete,
        // Key counters live under the tenant's (`RL#tenant:<t>#key:<k>`); those of
        // releases before that were `RL#key:<k>` (a minute's window, kept in case).
        places: |r| {
            std::iter::once(format!("RL#tenant:{}", r.tenant_id))
                .chain(
                    r.key_ids
                        .iter()
                        .map(|k| format!("RL#tenant:{}#key:{k}", r.tenant_id)),
                )
                .chain(r.key_ids.iter().map(|k| format!("RL#key:{k}")))
                .map(|pk| partition(pk, ""))
                .collect()
        },
        redact: keep,
    },
    Kind {
        name: "models",
        description: "model versions the tenant owns (tenant-specific models)",
        exported: true,
        erase: Erase::Delete,
        places: |_| {
            vec![Place::Owned {
                pk: crate::gateway::models::MODELS_PK.into(),
                sk_prefix: "M#".into(),
                attr: "owner_tenant",
            }]
        },
        redact: keep,
    },
    Kind {
        name: "files",
        description: "uploaded files: their records and their content",
        exported: true,
        erase: Erase::Delete,
        places: |r| {
            vec![
                partition(format!("FILE#{}", r.tenant_id), ""),
                Place::Objects(format!("files/{}/", r.tenant_id)),
            ]
        },
        redact: keep,
    },
    Kind {
        name: "batches",
        description: "batch jobs: their records, progress and chunk results",
        exported: true,
        erase: Erase::Delete,
        places: |r| {
            vec![
                partition(format!("BATCH#{}", r.tenant_id), ""),
                Place::Objects(format!("batches/{}/", r.tenant_id)),
            ]
        },
        redact: keep,
    },
    Kind {
        name: "exports",
        description: "earlier GDPR export archives of the tenant",
        exported: false,
        erase: Erase::Delete,
        places: |r| vec![Place::Objects(format!("{}{}/", super::export::PREFIX, r.tenant_id))],
        redact: keep,
    },
];

/// One page of a kind's items at a table place (objects are listed elsewhere).
pub async fn items_page(
    table: &Arc<dyn Table>,
    place: &Place,
    refs: &Refs,
    cursor: Option<String>,
) -> StoreResult<Page<Item>> {
    match place {
        Place::Partition { pk, sk_prefix } => {
            table
                .query(
                    &Query::new(pk.clone())
                        .prefix(sk_prefix.clone())
                        .limit(100)
                        .after(cursor),
                )
                .await
        }
        Place::Owned {
            pk,
            sk_prefix,
            attr,
        } => {
            let mut page = table
                .query(
                    &Query::new(pk.clone())
                        .prefix(sk_prefix.clone())
                        .limit(100)
                        .after(cursor),
                )
                .await?;
            page.items
                .retain(|i| i.attrs.get(*attr).and_then(Value::as_str) == Some(&refs.tenant_id));
            Ok(page)
        }
        Place::Item(key) if cursor.is_none() => Ok(Page {
            items: table.get(key).await?.into_iter().collect(),
            next: None,
        }),
        Place::Item(_) | Place::Objects(_) => Ok(Page {
            items: Vec::new(),
            next: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_refs_match_text() {
        let mut names: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        let refs = Refs {
            tenant_id: "ten_abc".into(),
            key_ids: vec!["key_1".into()],
            key_hashes: vec!["deadbeef".into()],
        };
        assert!(refs.named_in_text("RL#key:key_1"));
        assert!(refs.named_in_text("KEY#deadbeef"));
        assert!(refs.named_in_text("{\"tenant_id\":\"ten_abc\"}"));
        assert!(!refs.named_in_text("ten_abd key_2"));
        let mut attrs = Attrs::new();
        attrs.insert("hash".into(), "x".into());
        attrs.insert(
            "alert_webhook".into(),
            serde_json::json!({"secret": "whsec_1"}),
        );
        no_hash(&mut attrs);
        no_secrets(&mut attrs);
        assert!(!attrs.contains_key("hash"));
        assert_eq!(
            attrs["alert_webhook"]["secret"],
            crate::tenancy::audit::REDACTED
        );
    }
}
