//! Tenant-scoped credentials on the emulator: the tenant role is assumed once per
//! tenant (cached, distinct per tenant, a session named for the tenant), and a tenant's
//! items travel with that session while platform items keep the process's own.
//!
//! moto does not enforce IAM, but it does keep accounts apart: the tenant role here lives
//! in another account, so an item written with its session lands in that account's table
//! and nowhere else, which shows which credentials each call carried.

use aws_sdk_sts::config::{ProvideCredentials, SharedCredentialsProvider};
use serde_json::json;
use tenantai::store::aws::{self, TenantSessions};
use tenantai::store::{Cond, Item, Key, Query, Storage, TxOp, Update};

use crate::env::Env;

const TENANT_ACCOUNT: &str = "111122223333";

fn role() -> String {
    format!("arn:aws:iam::{TENANT_ACCOUNT}:role/tenantai-test-tenant-scoped")
}

fn item(pk: &str, sk: &str) -> Item {
    Item::new(
        Key::new(pk, sk),
        [("v".to_string(), json!(1))].into_iter().collect(),
    )
}

pub async fn tenant_items_travel_with_the_tenants_session(env: &Env) {
    let sdk = aws::sdk_config().await;
    let sessions = TenantSessions::new(&sdk, &role(), &env.res.table);
    let a = sessions.credentials("ten_a").await.unwrap();
    let again = sessions.credentials("ten_a").await.unwrap();
    let b = sessions.credentials("ten_b").await.unwrap();
    assert_eq!(
        a.access_key_id(),
        again.access_key_id(),
        "cached per tenant"
    );
    assert_ne!(
        a.access_key_id(),
        b.access_key_id(),
        "one session per tenant"
    );
    assert!(a.session_token().is_some() && a.expiry().is_some());

    // The session is the tenant role's, named for the tenant.
    let as_tenant = sdk
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(a.clone()))
        .build();
    let me = aws_sdk_sts::Client::new(&as_tenant)
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(me.account(), Some(TENANT_ACCOUNT));
    assert!(
        me.arn()
            .unwrap()
            .ends_with(":assumed-role/tenantai-test-tenant-scoped/tenantai-ten_a"),
        "{:?}",
        me.arn()
    );
    let provided = as_tenant
        .credentials_provider()
        .unwrap()
        .provide_credentials()
        .await
        .unwrap();
    assert_eq!(provided.access_key_id(), a.access_key_id());

    // The same table name in the tenant role's account, and a view of it.
    // (Bucket names are global: that account gets a bucket of its own.)
    let mut there = env.res.clone();
    there.bucket = format!("{}-tenant", there.bucket);
    let tenant_side = Storage::aws(&as_tenant, &there, true).await.unwrap();
    let scoped = env.storage.clone().with_tenant_credentials(&sdk, &role());
    let (table, platform, tenant) = (&scoped.table, &env.storage.table, &tenant_side.table);

    table
        .put(&item("TENANT#ten_a", "KEY#k1"), &Cond::Absent)
        .await
        .unwrap();
    table
        .update(&Update::new(Key::new("RL#tenant:ten_a#key:k1", "w#r0")).add("n", 2))
        .await
        .unwrap();
    table
        .transact(&[
            TxOp::Put(item("BUDGET#ten_a", "2026-12"), Cond::Absent),
            TxOp::Put(item("USAGE#ten_a", "D#2026-12-01"), Cond::Absent),
        ])
        .await
        .unwrap();
    table
        .put(&item("TENANTS", "T#ten_a"), &Cond::Absent)
        .await
        .unwrap();
    table
        .put(&item("CACHE#shared", "h1"), &Cond::Absent)
        .await
        .unwrap();

    for pk in [
        "TENANT#ten_a",
        "RL#tenant:ten_a#key:k1",
        "BUDGET#ten_a",
        "USAGE#ten_a",
    ] {
        let page = Query::new(pk);
        assert_eq!(tenant.query(&page).await.unwrap().items.len(), 1, "{pk}");
        assert!(
            platform.query(&page).await.unwrap().items.is_empty(),
            "{pk}"
        );
        assert_eq!(table.query(&page).await.unwrap().items.len(), 1, "{pk}");
    }
    for pk in ["TENANTS", "CACHE#shared"] {
        let page = Query::new(pk);
        assert_eq!(platform.query(&page).await.unwrap().items.len(), 1, "{pk}");
        assert!(tenant.query(&page).await.unwrap().items.is_empty(), "{pk}");
    }
    let counter = table
        .get(&Key::new("RL#tenant:ten_a#key:k1", "w#r0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counter.number("n"), 2);
    // A transaction across a tenant's and the platform's items goes with the
    // process's own credentials (where IAM then decides).
    table
        .transact(&[
            TxOp::Put(item("TENANT#ten_a", "KEY#k2"), Cond::Absent),
            TxOp::Put(item("TENANTS", "T#ten_b"), Cond::Absent),
        ])
        .await
        .unwrap();
    assert!(platform
        .get(&Key::new("TENANT#ten_a", "KEY#k2"))
        .await
        .unwrap()
        .is_some());
}
