//! Contract cases of the `Table` port.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tenantai::store::{
    now_secs, Attrs, Cond, Item, Key, Query, Scan, StoreError, TxOp, Update, Write,
};

use crate::env::Env;

fn attrs(v: serde_json::Value) -> Attrs {
    v.as_object().unwrap().clone()
}

fn item(pk: &str, sk: &str, v: serde_json::Value) -> Item {
    Item::new(Key::new(pk, sk), attrs(v))
}

pub async fn put_get_round_trip(env: &Env) {
    let t = env.table();
    let it = item(
        "tenant#1",
        "profile",
        json!({"name": "Acme", "n": 42, "neg": -7, "ratio": 0.5, "ok": true, "none": null,
               "tags": ["a", "b"], "nested": {"x": 1, "y": "z"}, "empty": ""}),
    );
    t.put(&it, &Cond::Always).await.unwrap();
    assert_eq!(t.get(&it.key).await.unwrap(), Some(it.clone()));
    assert_eq!(t.get(&Key::new("tenant#1", "other")).await.unwrap(), None);
    assert_eq!(t.get(&Key::new("tenant#2", "profile")).await.unwrap(), None);
    // An unconditional put replaces the whole item.
    let replaced = item("tenant#1", "profile", json!({"name": "Acme 2"}));
    t.put(&replaced, &Cond::Always).await.unwrap();
    assert_eq!(t.get(&it.key).await.unwrap(), Some(replaced));
    t.delete(&it.key, &Cond::Always).await.unwrap();
    assert_eq!(t.get(&it.key).await.unwrap(), None);
    // Deleting what is absent is fine without a condition.
    t.delete(&it.key, &Cond::Always).await.unwrap();
}

pub async fn conditional_put_conflicts(env: &Env) {
    let t = env.table();
    let first = item("k", "claim", json!({"owner": "a"}));
    t.put(&first, &Cond::Absent).await.unwrap();
    let second = item("k", "claim", json!({"owner": "b"}));
    assert!(matches!(
        t.put(&second, &Cond::Absent).await,
        Err(StoreError::ConditionFailed)
    ));
    assert_eq!(
        t.get(&first.key).await.unwrap().unwrap().attrs["owner"],
        "a"
    );
    let missing = item("k", "nothing", json!({}));
    assert!(matches!(
        t.put(&missing, &Cond::Exists).await,
        Err(StoreError::ConditionFailed)
    ));
    assert_eq!(t.get(&missing.key).await.unwrap(), None);
    assert!(matches!(
        t.delete(&missing.key, &Cond::Exists).await,
        Err(StoreError::ConditionFailed)
    ));
    t.put(&second, &Cond::Exists).await.unwrap();
    assert_eq!(
        t.get(&first.key).await.unwrap().unwrap().attrs["owner"],
        "b"
    );
}

pub async fn version_checks(env: &Env) {
    let t = env.table();
    let mut it = item("doc", "1", json!({"body": "v1"}));
    t.put(&it, &Cond::Absent).await.unwrap();
    let read = t.get(&it.key).await.unwrap().unwrap();
    assert_eq!(read.version, 1);
    it.version = 2;
    it.attrs = attrs(json!({"body": "v2"}));
    t.put(&it, &Cond::Version(1)).await.unwrap();
    // A writer that read version 1 lost the race.
    let stale = Item {
        version: 2,
        ..item("doc", "1", json!({"body": "stale"}))
    };
    assert!(matches!(
        t.put(&stale, &Cond::Version(1)).await,
        Err(StoreError::ConditionFailed)
    ));
    let now = t.get(&it.key).await.unwrap().unwrap();
    assert_eq!((now.version, now.attrs["body"].as_str()), (2, Some("v2")));
    assert!(matches!(
        t.delete(&it.key, &Cond::Version(1)).await,
        Err(StoreError::ConditionFailed)
    ));
    t.delete(&it.key, &Cond::Version(2)).await.unwrap();
    assert!(matches!(
        t.put(&it, &Cond::Version(2)).await,
        Err(StoreError::ConditionFailed)
    ));
}

pub async fn concurrent_adds_are_exact(env: &Env) {
    let key = Key::new("counter", "hits");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let t = env.table().clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..200 {
                let new = t
                    .update(&Update::new(key.clone()).add("n", 1))
                    .await
                    .unwrap();
                seen.push(new["n"]);
            }
            seen
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        for v in task.await.unwrap() {
            assert!(
                all.insert(v),
                "value {v} returned twice: an add was not atomic"
            );
        }
    }
    assert_eq!(all, (1..=3200).collect::<BTreeSet<i64>>());
    assert_eq!(
        env.table().get(&key).await.unwrap().unwrap().number("n"),
        3200
    );
}

pub async fn add_with_conditions(env: &Env) {
    let t = env.table();
    let key = Key::new("budget", "2026-11");
    let new = t
        .update(
            &Update::new(key.clone())
                .add("spent", 70)
                .add("calls", 1)
                .set("currency", json!("usd")),
        )
        .await
        .unwrap();
    assert_eq!((new["spent"], new["calls"]), (70, 1));
    // A reservation that fits under the cap of 100...
    let reserve = |delta: i64| {
        Update::new(key.clone())
            .add("spent", delta)
            .when(Cond::AtMost {
                attr: "spent".into(),
                max: 100 - delta,
            })
    };
    assert_eq!(t.update(&reserve(30)).await.unwrap()["spent"], 100);
    // ...and one that does not, which changes nothing.
    assert!(matches!(
        t.update(&reserve(1)).await,
        Err(StoreError::ConditionFailed)
    ));
    let stored = t.get(&key).await.unwrap().unwrap();
    assert_eq!((stored.number("spent"), stored.number("calls")), (100, 1));
    assert_eq!(stored.attrs["currency"], "usd");
    // A fresh counter counts as 0 against the cap.
    let fresh = Key::new("budget", "2026-12");
    let capped = Update::new(fresh.clone())
        .add("spent", 5)
        .when(Cond::AtMost {
            attr: "spent".into(),
            max: 5,
        });
    assert_eq!(t.update(&capped).await.unwrap()["spent"], 5);
    // Updates may demand the item exists.
    let ghost = Update::new(Key::new("budget", "none"))
        .add("spent", 1)
        .when(Cond::Exists);
    assert!(matches!(
        t.update(&ghost).await,
        Err(StoreError::ConditionFailed)
    ));
    assert_eq!(t.get(&Key::new("budget", "none")).await.unwrap(), None);
    // Adding to a non-number is refused.
    let bad = Update::new(key.clone()).add("currency", 1);
    assert!(
        matches!(t.update(&bad).await, Err(StoreError::Invalid(_))),
        "{:?}",
        t.update(&bad).await
    );
}

pub async fn query_pages_both_directions(env: &Env) {
    let t = env.table();
    let mut expected = Vec::new();
    for i in 0..25 {
        let sk = format!("usage#{i:03}");
        t.put(&item("tenant#q", &sk, json!({"i": i})), &Cond::Always)
            .await
            .unwrap();
        expected.push(sk);
    }
    for i in 0..5 {
        t.put(
            &item("tenant#q", &format!("key#{i}"), json!({})),
            &Cond::Always,
        )
        .await
        .unwrap();
        t.put(
            &item("tenant#other", &format!("usage#{i:03}"), json!({})),
            &Cond::Always,
        )
        .await
        .unwrap();
    }
    for forward in [true, false] {
        let mut got = Vec::new();
        let mut pages = 0;
        let mut cursor = None;
        loop {
            let mut q = Query::new("tenant#q")
                .prefix("usage#")
                .limit(7)
                .after(cursor);
            if !forward {
                q = q.backward();
            }
            let page = t.query(&q).await.unwrap();
            assert!(page.items.len() <= 7);
            pages += 1;
            got.extend(page.items.into_iter().map(|i| i.key.sk));
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
            assert!(pages < 20, "pagination does not end");
        }
        assert!(
            pages >= 4,
            "25 items in pages of 7 take at least 4 pages, got {pages}"
        );
        let mut want = expected.clone();
        if !forward {
            want.reverse();
        }
        assert_eq!(got, want, "forward = {forward}");
    }
    let all = t.query(&Query::new("tenant#q").limit(100)).await.unwrap();
    assert_eq!(all.items.len(), 30);
    // A token of one partition is refused for another.
    let page = t.query(&Query::new("tenant#q").limit(2)).await.unwrap();
    let foreign = Query::new("tenant#other").after(page.next);
    assert!(matches!(
        t.query(&foreign).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        t.query(&Query::new("tenant#q").limit(0)).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn expired_items_read_as_absent(env: &Env) {
    let t = env.table();
    let now = now_secs();
    let mut gone = item("cache", "old", json!({"v": 1}));
    gone.expires_at = Some(now - 10);
    t.put(&gone, &Cond::Always).await.unwrap();
    assert_eq!(t.get(&gone.key).await.unwrap(), None);
    // Expired counts as absent for conditions and for counters.
    let mut fresh = item("cache", "old", json!({"v": 2}));
    fresh.expires_at = Some(now + 3600);
    t.put(&fresh, &Cond::Absent).await.unwrap();
    assert_eq!(t.get(&fresh.key).await.unwrap(), Some(fresh.clone()));

    let window = Key::new("rate", "w1");
    t.update(&Update::new(window.clone()).add("n", 5).expires_at(now - 1))
        .await
        .unwrap();
    let restarted = t
        .update(&Update::new(window.clone()).add("n", 1).expires_at(now + 60))
        .await
        .unwrap();
    assert_eq!(restarted["n"], 1, "a counter past its expiry starts again");

    let mut soon = item("cache", "soon", json!({}));
    let soon_at = now_secs() + 2;
    soon.expires_at = Some(soon_at);
    t.put(&soon, &Cond::Always).await.unwrap();
    let listed = t.query(&Query::new("cache")).await.unwrap();
    let keys: Vec<_> = listed.items.iter().map(|i| i.key.sk.as_str()).collect();
    assert_eq!(keys, ["old", "soon"]);
    while now_secs() <= soon_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(t.get(&soon.key).await.unwrap(), None);
    let listed = t.query(&Query::new("cache")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
}

pub async fn failed_transaction_changes_nothing(env: &Env) {
    let t = env.table();
    t.put(&item("tx", "delete-me", json!({})), &Cond::Always)
        .await
        .unwrap();
    t.update(&Update::new(Key::new("tx", "counter")).add("n", 10))
        .await
        .unwrap();
    let ops = vec![
        TxOp::Put(
            item("tx", "event#1", json!({"claimed": true})),
            Cond::Absent,
        ),
        TxOp::Update(Update::new(Key::new("tx", "counter")).add("n", 5)),
        TxOp::Delete(Key::new("tx", "delete-me"), Cond::Exists),
        TxOp::Check(Key::new("tx", "gate"), Cond::Exists),
    ];
    match t.transact(&ops).await {
        Err(StoreError::TransactionCancelled { index }) => assert_eq!(index, 3),
        other => panic!("expected the check to cancel the transaction, got {other:?}"),
    }
    assert_eq!(t.get(&Key::new("tx", "event#1")).await.unwrap(), None);
    assert_eq!(
        t.get(&Key::new("tx", "counter"))
            .await
            .unwrap()
            .unwrap()
            .number("n"),
        10
    );
    assert!(t.get(&Key::new("tx", "delete-me")).await.unwrap().is_some());

    t.put(&item("tx", "gate", json!({})), &Cond::Always)
        .await
        .unwrap();
    t.transact(&ops).await.unwrap();
    assert!(t.get(&Key::new("tx", "event#1")).await.unwrap().is_some());
    assert_eq!(
        t.get(&Key::new("tx", "counter"))
            .await
            .unwrap()
            .unwrap()
            .number("n"),
        15
    );
    assert_eq!(t.get(&Key::new("tx", "delete-me")).await.unwrap(), None);

    // Replaying the same claim fails on its first operation and adds nothing.
    match t.transact(&ops[..2]).await {
        Err(StoreError::TransactionCancelled { index }) => assert_eq!(index, 0),
        other => panic!("expected the claim to fail, got {other:?}"),
    }
    assert_eq!(
        t.get(&Key::new("tx", "counter"))
            .await
            .unwrap()
            .unwrap()
            .number("n"),
        15
    );
}

pub async fn transaction_limits(env: &Env) {
    let t = env.table();
    let put = |i: usize| TxOp::Put(item("lim", &format!("{i:02}"), json!({})), Cond::Always);
    let too_many: Vec<_> = (0..26).map(put).collect();
    assert!(matches!(
        t.transact(&too_many).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(t.query(&Query::new("lim")).await.unwrap().items.len(), 0);
    t.transact(&too_many[..25]).await.unwrap();
    assert_eq!(t.query(&Query::new("lim")).await.unwrap().items.len(), 25);
    assert!(matches!(
        t.transact(&[put(1), put(1)]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(t.transact(&[]).await, Err(StoreError::Invalid(_))));
}

/// Every key of the table, read through `total` segments in pages of `limit`;
/// panics (fails) when a key shows up twice.
pub async fn scan_keys(t: &dyn tenantai::store::Table, total: u32, limit: usize) -> Vec<Key> {
    let mut keys = Vec::new();
    for segment in 0..total {
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = t
                .scan(&Scan::segment(segment, total).limit(limit).after(cursor))
                .await
                .unwrap();
            assert!(page.items.len() <= limit);
            keys.extend(page.items.into_iter().map(|i| i.key));
            cursor = page.next;
            pages += 1;
            assert!(pages < 10_000, "scan pagination does not end");
            if cursor.is_none() {
                break;
            }
        }
    }
    let unique: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "a scan returned a key twice");
    keys
}

pub async fn scan_segments_cover_every_item_once(env: &Env) {
    let t = env.table();
    let mut want = BTreeSet::new();
    for p in 0..40 {
        for s in 0..3 {
            let it = item(
                &format!("P#{p}"),
                &format!("S#{s}"),
                json!({"p": p, "s": s}),
            );
            t.put(&it, &Cond::Always).await.unwrap();
            want.insert(it.key);
        }
    }
    // An expired item is absent from scans as from reads.
    let mut gone = item("P#gone", "S#0", json!({}));
    gone.expires_at = Some(now_secs() - 5);
    t.put(&gone, &Cond::Always).await.unwrap();
    for (total, limit) in [(1, 1000), (1, 7), (4, 9), (7, 50)] {
        let got: BTreeSet<_> = scan_keys(t.as_ref(), total, limit)
            .await
            .into_iter()
            .collect();
        assert_eq!(got, want, "{total} segments in pages of {limit}");
    }
    // The segments split the table: with 4 of them, none holds everything.
    let first = t.scan(&Scan::segment(0, 4).limit(1000)).await.unwrap();
    assert!(first.items.len() < want.len());
    // Attributes come back whole.
    let page = t.scan(&Scan::segment(0, 1).limit(1000)).await.unwrap();
    let one = page
        .items
        .iter()
        .find(|i| i.key == Key::new("P#3", "S#2"))
        .unwrap();
    assert_eq!(one.attrs["p"], 3);
    assert_eq!(one.version, 1);
    // Tokens are bound to their segment; bad segments are refused.
    let page = t.scan(&Scan::segment(1, 4).limit(2)).await.unwrap();
    assert!(page.next.is_some());
    assert!(matches!(
        t.scan(&Scan::segment(2, 4).after(page.next.clone())).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        t.scan(&Scan::segment(4, 4)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        t.scan(&Scan::segment(0, 1).after(Some("junk".into())))
            .await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn batch_writes_put_and_delete(env: &Env) {
    let t = env.table();
    let puts: Vec<_> = (0..25)
        .map(|i| Write::Put(item("B", &format!("{i:02}"), json!({"i": i}))))
        .collect();
    t.write_batch(&puts).await.unwrap();
    // Writing the same batch again changes nothing (idempotent), and replaces whole items.
    t.write_batch(&puts).await.unwrap();
    let all = t.query(&Query::new("B").limit(100)).await.unwrap();
    assert_eq!(all.items.len(), 25);
    assert_eq!(all.items[7].attrs["i"], 7);
    let mut versioned = item("B", "00", json!({"new": true}));
    versioned.version = 9;
    versioned.expires_at = Some(now_secs() + 3600);
    let mixed = vec![
        Write::Put(versioned.clone()),
        Write::Delete(Key::new("B", "01")),
        Write::Delete(Key::new("B", "absent")),
    ];
    t.write_batch(&mixed).await.unwrap();
    assert_eq!(t.get(&versioned.key).await.unwrap(), Some(versioned));
    assert_eq!(t.get(&Key::new("B", "01")).await.unwrap(), None);
    // Over the limit, or one item twice: refused, nothing written.
    let many: Vec<_> = (0..26)
        .map(|i| Write::Put(item("C", &format!("{i}"), json!({}))))
        .collect();
    assert!(matches!(
        t.write_batch(&many).await,
        Err(StoreError::Invalid(_))
    ));
    let twice = vec![
        Write::Put(item("C", "x", json!({}))),
        Write::Delete(Key::new("C", "x")),
    ];
    assert!(matches!(
        t.write_batch(&twice).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(t.query(&Query::new("C")).await.unwrap().items.is_empty());
}
