#![allow(dead_code)] // each test binary uses what it needs of these
//! Whole-deployment views for the operations tests: every item of a table,
//! every object of a bucket, and wiping a table.

use std::collections::BTreeMap;

use tenantai::store::{Blobs, Item, Key, Scan, Table, Write};

/// Every unexpired item of the table, by key.
pub async fn snapshot(table: &dyn Table) -> BTreeMap<Key, Item> {
    let mut all = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = table
            .scan(&Scan::segment(0, 1).limit(1000).after(cursor))
            .await
            .unwrap();
        for item in page.items {
            all.insert(item.key.clone(), item);
        }
        cursor = page.next;
        if cursor.is_none() {
            return all;
        }
    }
}

/// Deletes every item of the table.
pub async fn wipe(table: &dyn Table) {
    let keys: Vec<Key> = snapshot(table).await.into_keys().collect();
    for chunk in keys.chunks(25) {
        let deletes: Vec<Write> = chunk.iter().cloned().map(Write::Delete).collect();
        table.write_batch(&deletes).await.unwrap();
    }
    assert!(snapshot(table).await.is_empty());
}

/// Every object key of the bucket.
pub async fn objects(blobs: &dyn Blobs) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = blobs.list("", cursor.as_deref(), 1000).await.unwrap();
        out.extend(page.items.into_iter().map(|m| m.key));
        cursor = page.next;
        if cursor.is_none() {
            return out;
        }
    }
}
