//! Tenant-scoped credentials (tenant isolation in IAM, as AWS's SaaS guidance does it):
//! a [`Table`] that sends every operation on one tenant's items with credentials of
//! the tenant role (`TENANTAI_TENANT_ROLE_ARN`) assumed for that tenant with the session
//! tag `TenantId=<tenant>`, and platform items (`TENANTS`, `MODELS`, `CACHE#shared`, key
//! lookups...) with the process's own credentials. The role's `dynamodb:LeadingKeys`
//! condition then confines each session to that tenant's partition keys.
//!
//! Which partition keys are a tenant's is [`TENANT_PARTITION_PREFIXES`], the same list as
//! `TENANT_PARTITION_KEYS` in `infra/lib/tenant-isolation.ts` (an infra test compares them).
//! Credentials are cached per tenant for at most [`CREDENTIALS_TTL`] (and never past five
//! minutes before they expire), far inside the one hour that role chaining allows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_sts::types::Tag;

use super::{sdk_err, DynamoTable};
use crate::store::{
    Cond, Item, Key, Page, Query, Scan, StoreError, StoreResult, Table, TxOp, Update, Write,
};

/// The session tag the tenant role's policy reads (`${aws:PrincipalTag/TenantId}`).
pub const TENANT_TAG: &str = "TenantId";

/// How long one tenant's credentials are used: well under the one-hour session that
/// role chaining caps them at, so they are replaced long before they expire.
pub const CREDENTIALS_TTL: Duration = Duration::from_secs(50 * 60);

/// Credentials are never used closer than this to their expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The session asked of STS (the most role chaining allows).
const SESSION_SECS: i32 = 3600;

/// Partition keys of a tenant's own items: each prefix followed by the tenant id, and
/// then nothing, or (`RL#tenant:`) `#key:<key id>`.
pub const TENANT_PARTITION_PREFIXES: [&str; 9] = [
    "TENANT#",
    "FILE#",
    "BATCH#",
    "USAGE#",
    "BUDGET#",
    "ALERTS#",
    "AUDIT#",
    "CACHE#",
    "RL#tenant:",
];

/// Partition keys that look like a tenant's but are the platform's.
const PLATFORM_LOOKALIKES: [&str; 2] = ["AUDIT#_platform", "CACHE#shared"];

/// The tenant whose item a partition key names, if it is a tenant's item.
pub fn tenant_of(pk: &str) -> Option<&str> {
    if PLATFORM_LOOKALIKES.contains(&pk) {
        return None;
    }
    TENANT_PARTITION_PREFIXES.iter().find_map(|prefix| {
        let rest = pk.strip_prefix(prefix)?;
        let (tenant, tail) = rest.split_once('#').unwrap_or((rest, ""));
        let tail_ok = tail.is_empty() || (*prefix == "RL#tenant:" && tail.starts_with("key:"));
        (!tenant.is_empty() && tail_ok).then_some(tenant)
    })
}

/// The one tenant all of these partition keys belong to; `None` when any is a
/// platform key or they name several tenants (such an operation goes with the
/// process's own credentials).
fn one_tenant<'a>(pks: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut found = None;
    for pk in pks {
        let t = tenant_of(pk)?;
        if found.is_some_and(|f| f != t) {
            return None;
        }
        found = Some(t);
    }
    found
}

/// The role session name for a tenant: `tenantai-<tenant>`, cut to STS's 64
/// characters, anything outside `[A-Za-z0-9+=,.@_-]` as `_`.
pub fn session_name(tenant: &str) -> String {
    format!("tenantai-{tenant}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// How long credentials that expire at `expires` may be used from `now`.
pub fn usable_for(expires: Option<SystemTime>, now: SystemTime) -> Duration {
    match expires {
        None => CREDENTIALS_TTL,
        Some(at) => at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .saturating_sub(EXPIRY_MARGIN)
            .min(CREDENTIALS_TTL),
    }
}

#[derive(Clone)]
struct Session {
    table: Arc<DynamoTable>,
    credentials: Credentials,
    usable_for: Duration,
}

struct SessionExpiry;

impl moka::Expiry<String, Session> for SessionExpiry {
    fn expire_after_create(&self, _: &String, s: &Session, _: Instant) -> Option<Duration> {
        Some(s.usable_for)
    }
}

/// The tenant role's sessions, one per tenant, cached.
#[derive(Clone)]
pub struct TenantSessions {
    sts: aws_sdk_sts::Client,
    sdk: SdkConfig,
    role_arn: String,
    table: String,
    cache: moka::future::Cache<String, Session>,
}

impl TenantSessions {
    pub fn new(sdk: &SdkConfig, role_arn: &str, table: &str) -> Self {
        TenantSessions {
            sts: aws_sdk_sts::Client::new(sdk),
            sdk: sdk.clone(),
            role_arn: role_arn.to_string(),
            table: table.to_string(),
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(SessionExpiry)
                .build(),
        }
    }

    /// The credentials the tenant's items are reached with (assumed on first use).
    pub async fn credentials(&self, tenant: &str) -> StoreResult<Credentials> {
        Ok(self.session(tenant).await?.credentials)
    }

    async fn table(&self, tenant: &str) -> StoreResult<Arc<DynamoTable>> {
        Ok(self.session(tenant).await?.table)
    }

    async fn session(&self, tenant: &str) -> StoreResult<Session> {
        self.cache
            .try_get_with(tenant.to_string(), self.assume(tenant))
            .await
            .map_err(|e| StoreError::Backend(format!("tenant credentials for {tenant}: {e}")))
    }

    async fn assume(&self, tenant: &str) -> StoreResult<Session> {
        let tag = Tag::builder()
            .key(TENANT_TAG)
            .value(tenant)
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let out = self
            .sts
            .assume_role()
            .role_arn(&self.role_arn)
            .role_session_name(session_name(tenant))
            .duration_seconds(SESSION_SECS)
            .tags(tag)
            .send()
            .await
            .map_err(sdk_err)?;
        let c = out
            .credentials()
            .ok_or_else(|| StoreError::Backend("AssumeRole answered without credentials".into()))?;
        let expires = SystemTime::try_from(*c.expiration()).ok();
        let credentials = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            expires,
            "tenantai-tenant-role",
        );
        let conf = aws_sdk_dynamodb::config::Builder::from(&self.sdk)
            .credentials_provider(credentials.clone())
            .build();
        Ok(Session {
            table: Arc::new(DynamoTable::new(
                aws_sdk_dynamodb::Client::from_conf(conf),
                &self.table,
            )),
            credentials,
            usable_for: usable_for(expires, SystemTime::now()),
        })
    }
}

/// The table with each tenant's items reached through that tenant's session.
pub struct TenantScopedTable {
    platform: Arc<dyn Table>,
    sessions: TenantSessions,
}

impl TenantScopedTable {
    pub fn new(platform: Arc<dyn Table>, sessions: TenantSessions) -> Self {
        TenantScopedTable { platform, sessions }
    }

    /// The table an operation on these partition keys goes to.
    async fn route<'a>(
        &self,
        pks: impl IntoIterator<Item = &'a str>,
    ) -> StoreResult<Arc<dyn Table>> {
        let table: Arc<dyn Table> = match one_tenant(pks) {
            Some(tenant) => self.sessions.table(tenant).await?,
            None => self.platform.clone(),
        };
        Ok(table)
    }
}

#[async_trait]
impl Table for TenantScopedTable {
    async fn get(&self, key: &Key) -> StoreResult<Option<Item>> {
        self.route([key.pk.as_str()]).await?.get(key).await
    }
    async fn put(&self, item: &Item, cond: &Cond) -> StoreResult<()> {
        self.route([item.key.pk.as_str()])
            .await?
            .put(item, cond)
            .await
    }
    async fn update(&self, update: &Update) -> StoreResult<BTreeMap<String, i64>> {
        self.route([update.key.pk.as_str()])
            .await?
            .update(update)
            .await
    }
    async fn delete(&self, key: &Key, cond: &Cond) -> StoreResult<()> {
        self.route([key.pk.as_str()]).await?.delete(key, cond).await
    }
    async fn query(&self, query: &Query) -> StoreResult<Page<Item>> {
        self.route([query.pk.as_str()]).await?.query(query).await
    }
    async fn transact(&self, ops: &[TxOp]) -> StoreResult<()> {
        self.route(ops.iter().map(|op| op.key().pk.as_str()))
            .await?
            .transact(ops)
            .await
    }
    /// Scans cross every tenant: the process's own credentials (never the request path).
    async fn scan(&self, scan: &Scan) -> StoreResult<Page<Item>> {
        self.platform.scan(scan).await
    }
    async fn write_batch(&self, writes: &[Write]) -> StoreResult<()> {
        self.route(writes.iter().map(|w| w.key().pk.as_str()))
            .await?
            .write_batch(writes)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_items_are_told_from_platform_items() {
        for (pk, want) in [
            ("TENANT#ten_1", Some("ten_1")),
            ("USAGE#ten_1", Some("ten_1")),
            ("BUDGET#ten_1", Some("ten_1")),
            ("ALERTS#ten_1", Some("ten_1")),
            ("AUDIT#ten_1", Some("ten_1")),
            ("CACHE#ten_1", Some("ten_1")),
            ("RL#tenant:ten_1", Some("ten_1")),
            ("RL#tenant:ten_1#key:key_2", Some("ten_1")),
            ("AUDIT#_platform", None),
            ("CACHE#shared", None),
            ("TENANTS", None),
            ("MODELS", None),
            ("KEY#abc", None),
            ("ADMIN", None),
            ("EVENT#evt_1", None),
            ("RL#key:key_2", None),
            ("TENANT#", None),
            ("USAGE#ten_1#x", None),
            ("RL#tenant:ten_1#other", None),
        ] {
            assert_eq!(tenant_of(pk), want, "{pk}");
        }
    }

    #[test]
    fn one_operation_goes_to_one_tenant_or_to_the_platform() {
        assert_eq!(one_tenant(["TENANT#a", "RL#tenant:a#key:k"]), Some("a"));
        assert_eq!(one_tenant(["TENANT#a", "TENANT#b"]), None);
        assert_eq!(one_tenant(["TENANT#a", "TENANTS"]), None);
        assert_eq!(one_tenant([]), None);
    }

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(session_name("ten_01ab"), "tenantai-ten_01ab");
        assert_eq!(session_name("a b/c"), "tenantai-a_b_c");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn credentials_are_replaced_well_before_they_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Some(now + Duration::from_secs(3600));
        assert_eq!(usable_for(hour, now), CREDENTIALS_TTL);
        let short = Some(now + Duration::from_secs(15 * 60));
        assert_eq!(usable_for(short, now), Duration::from_secs(10 * 60));
        assert_eq!(
            usable_for(Some(now + Duration::from_secs(60)), now),
            Duration::ZERO
        );
        assert_eq!(
            usable_for(Some(now - Duration::from_secs(1)), now),
            Duration::ZERO
        );
        assert_eq!(usable_for(None, now), CREDENTIALS_TTL);
    }
}
