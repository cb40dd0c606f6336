//! The embedded store shared by two processes: the test binary runs itself as
//! a second process on the same SQLite file.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tenantai::store::{
    Cond, Item, Key, Outgoing, Queue, QueueSpec, Receive, Resources, Storage, Update,
};

const CHILD_ENV: &str = "TENANTAI_CONTRACT_CHILD_DIR";
const ADDS: i64 = 300;
const MESSAGES: usize = 120;

fn resources() -> Resources {
    Resources {
        table: "t".into(),
        bucket: "b".into(),
        queues: vec![QueueSpec {
            name: "shared".into(),
            dead_letter: None,
        }],
    }
}

/// Adds to one counter and consumes messages, claiming each message id in the
/// table: a message delivered twice would fail its claim.
async fn work(storage: &Storage, who: &str) -> usize {
    let table = storage.table.clone();
    let q: Arc<dyn Queue> = storage.queue("shared").unwrap();
    let counter = tokio::spawn({
        let table = table.clone();
        async move {
            for _ in 0..ADDS {
                table
                    .update(&Update::new(Key::new("shared", "counter")).add("n", 1))
                    .await
                    .unwrap();
            }
        }
    });
    let mut consumed = 0;
    let mut idle = 0;
    while idle < 3 {
        let got = q
            .receive(&Receive {
                max: 5,
                wait: Duration::from_millis(300),
                visibility: Duration::from_secs(60),
            })
            .await
            .unwrap();
        idle = if got.is_empty() { idle + 1 } else { 0 };
        for m in got {
            let mut attrs = serde_json::Map::new();
            attrs.insert("by".into(), json!(who));
            table
                .put(
                    &Item::new(Key::new("claims", &m.body), attrs),
                    &Cond::Absent,
                )
                .await
                .unwrap();
            q.delete(&m.receipt).await.unwrap();
            consumed += 1;
        }
    }
    counter.await.unwrap();
    consumed
}

/// The second process: does nothing unless started by `two_processes_share_the_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_worker() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let storage = Storage::embedded(std::path::Path::new(&dir), &resources())
        .await
        .unwrap();
    let consumed = work(&storage, "child").await;
    println!("child consumed {consumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::embedded(dir.path(), &resources()).await.unwrap();
    let q = storage.queue("shared").unwrap();
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| Outgoing::new(format!("m{i}")))
            .collect();
        q.send_batch(&batch).await.unwrap();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["processes::child_process_worker", "--exact", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .spawn()
        .unwrap();
    let mine = work(&storage, "parent").await;
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success(), "the child process failed");
    let counter = storage
        .table
        .get(&Key::new("shared", "counter"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counter.number("n"), 2 * ADDS, "adds from both processes");
    // Every message claimed exactly once (a second claim would have failed above).
    let mut claims = 0;
    let mut cursor = None;
    loop {
        let page = storage
            .table
            .query(
                &tenantai::store::Query::new("claims")
                    .limit(50)
                    .after(cursor),
            )
            .await
            .unwrap();
        claims += page.items.len();
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(claims, MESSAGES);
    assert!(mine <= MESSAGES);
}
