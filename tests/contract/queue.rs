//! Contract cases of the `Queue` port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantai::store::{Message, Outgoing, Queue, Receive, StoreError};

use crate::env::Env;

fn receive(max: usize, wait_ms: u64, visibility_s: u64) -> Receive {
    Receive {
        max,
        wait: Duration::from_millis(wait_ms),
        visibility: Duration::from_secs(visibility_s),
    }
}

/// Receives until `n` messages arrived or `within` passed.
async fn receive_n(
    q: &Arc<dyn Queue>,
    n: usize,
    visibility_s: u64,
    within: Duration,
) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(q.receive(&receive(10, 1000, visibility_s)).await.unwrap());
    }
    got
}

pub async fn send_receive_delete(env: &Env) {
    let q = env.queue();
    let batch: Vec<_> = (0..3).map(|i| Outgoing::new(format!("job-{i}"))).collect();
    let ids = q.send_batch(&batch).await.unwrap();
    assert_eq!(ids.len(), 3);
    let single = q.send(&Outgoing::new("job-3")).await.unwrap();
    let mut got = receive_n(&q, 4, 30, Duration::from_secs(10)).await;
    got.sort_by(|a, b| a.body.cmp(&b.body));
    let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["job-0", "job-1", "job-2", "job-3"]);
    assert!(got.iter().all(|m| m.receive_count == 1));
    let mut got_ids: Vec<_> = got.iter().map(|m| m.id.clone()).collect();
    let mut sent_ids = ids.clone();
    sent_ids.push(single);
    got_ids.sort();
    sent_ids.sort();
    assert_eq!(got_ids, sent_ids);
    for m in &got {
        q.delete(&m.receipt).await.unwrap();
    }
    // Deleted messages never come back, even after their visibility timeout.
    q.change_visibility(&got[0].receipt, Duration::ZERO)
        .await
        .ok();
    assert!(q.receive(&receive(10, 1000, 30)).await.unwrap().is_empty());
}

pub async fn visibility_timeout_then_redelivery(env: &Env) {
    let q = env.queue();
    q.send(&Outgoing::new("retry-me")).await.unwrap();
    let first = receive_n(&q, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    // Hidden while in flight...
    assert!(q.receive(&receive(10, 0, 1)).await.unwrap().is_empty());
    // ...and delivered again, counted, once the timeout passes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = receive_n(&q, 1, 30, Duration::from_secs(5)).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].body, "retry-me");
    assert_eq!(second[0].receive_count, 2);
    assert_ne!(second[0].receipt, first[0].receipt);
    q.delete(&second[0].receipt).await.unwrap();
}

pub async fn dead_letter_after_max_receives(env: &Env) {
    let (q, dlq) = env.queue_with_dlq();
    q.send(&Outgoing::new("poison")).await.unwrap();
    for expected_count in 1..=2 {
        let got = receive_n(&q, 1, 1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1, "receive #{expected_count}");
        assert_eq!(got[0].receive_count, expected_count);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // Received twice (the max) without a delete: the next receive moves it.
    assert!(q.receive(&receive(10, 1000, 1)).await.unwrap().is_empty());
    let dead = receive_n(&dlq, 1, 30, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "poison");
    dlq.delete(&dead[0].receipt).await.unwrap();
    assert!(q.receive(&receive(10, 0, 1)).await.unwrap().is_empty());
}

pub async fn change_visibility(env: &Env) {
    let q = env.queue();
    q.send(&Outgoing::new("a")).await.unwrap();
    let got = receive_n(&q, 1, 60, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    // Released at once: visible again long before its 60 s timeout.
    q.change_visibility(&got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_n(&q, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    // Extended: still hidden after its original 1 s timeout.
    q.change_visibility(&again[0].receipt, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.receive(&receive(10, 0, 1)).await.unwrap().is_empty());
    q.delete(&again[0].receipt).await.unwrap();
}

pub async fn long_poll_returns_when_a_message_arrives(env: &Env) {
    let q = env.queue();
    let sender = q.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send(&Outgoing::new("wake up")).await.unwrap();
    });
    let started = Instant::now();
    let got = q.receive(&receive(1, 20_000, 30)).await.unwrap();
    let waited = started.elapsed();
    send.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "wake up");
    // It returned on arrival, not at the end of its 20 s wait.
    assert!(
        waited < Duration::from_secs(15),
        "long poll waited {waited:?}"
    );
    // With nothing to receive it does wait (at least most of a 1 s wait).
    let started = Instant::now();
    assert!(q.receive(&receive(1, 1000, 30)).await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

pub async fn delayed_messages(env: &Env) {
    let q = env.queue();
    let msg = Outgoing {
        body: "later".into(),
        delay: Some(Duration::from_secs(2)),
    };
    q.send(&msg).await.unwrap();
    assert!(q.receive(&receive(10, 0, 30)).await.unwrap().is_empty());
    let got = receive_n(&q, 1, 30, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "later");
}

pub async fn batch_limits(env: &Env) {
    let q = env.queue();
    let eleven: Vec<_> = (0..11).map(|i| Outgoing::new(i.to_string())).collect();
    assert!(matches!(
        q.send_batch(&eleven).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        q.send_batch(&[]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        q.send(&Outgoing::new("")).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        q.receive(&receive(11, 0, 30)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        q.receive(&receive(0, 0, 30)).await,
        Err(StoreError::Invalid(_))
    ));
    // Nothing of the refused batch was sent.
    assert!(q.receive(&receive(10, 0, 30)).await.unwrap().is_empty());
    let ten = q.send_batch(&eleven[..10]).await.unwrap();
    assert_eq!(ten.len(), 10);
    assert_eq!(
        receive_n(&q, 10, 30, Duration::from_secs(10)).await.len(),
        10
    );
}
