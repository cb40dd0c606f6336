//! Dynamic batching: concurrent callers get their own vectors, a bad input fails
//! only its own request, and a full queue refuses work instead of growing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::{cosine, engine};
use gpu_worker::batcher::{BatchConfig, Batcher, Forward};
use gpu_worker::metrics::Metrics;
use gpu_worker::{EmbedError, RawInput};

fn sentence(i: usize) -> String {
    // Lengths from 1 to ~120 words, all different texts.
    let words = [
        "alpha", "tenant", "vector", "queue", "model", "batch", "river", "quantum",
    ];
    (0..1 + (i * 37) % 120)
        .map(|k| words[(i + k * 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" #{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_each_get_their_own_vectors() {
    // Two model threads share the queue.
    let engine = engine(BatchConfig {
        model_threads: 2,
        max_batch_tokens: 2048,
        max_batch_size: 16,
        ..BatchConfig::default()
    });
    let texts: Vec<String> = (0..48).map(sentence).collect();
    // Ground truth: each input embedded alone.
    let mut alone = Vec::new();
    for t in &texts {
        alone.push(
            engine
                .embed(vec![RawInput::Text(t.clone())], false)
                .await
                .unwrap()
                .vectors
                .remove(0),
        );
    }
    let before = engine.metrics().batch_size.count();
    // Requests of 1..3 inputs, all at once.
    let mut tasks = Vec::new();
    for (r, chunk) in texts.chunks(3).enumerate() {
        let engine = engine.clone();
        let chunk: Vec<String> = chunk.iter().take(1 + r % 3).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let inputs = chunk.iter().cloned().map(RawInput::Text).collect();
            (chunk, engine.embed(inputs, false).await.unwrap())
        }));
    }
    let mut answered = 0;
    for task in tasks {
        let (chunk, out) = task.await.unwrap();
        assert_eq!(out.vectors.len(), chunk.len());
        for (text, vector) in chunk.iter().zip(&out.vectors) {
            let i = texts.iter().position(|t| t == text).unwrap();
            let c = cosine(vector, &alone[i]);
            assert!(
                c > 0.99999,
                "input {i} got someone else's vector (cosine {c})"
            );
            answered += 1;
        }
    }
    assert!(answered >= 16);
    // Fewer forward passes than inputs: requests were grouped.
    let passes = engine.metrics().batch_size.count() - before;
    assert!(
        passes < answered as u64,
        "{passes} passes for {answered} inputs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_among_concurrent_good_ones_fails_only_itself() {
    let engine = engine(BatchConfig::default());
    let mut tasks = Vec::new();
    for i in 0..12 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let input = match i {
                5 => RawInput::Text("word ".repeat(400)),
                8 => RawInput::Tokens(vec![7, 4_000_000]),
                _ => RawInput::Text(sentence(i)),
            };
            (i, engine.embed(vec![input], false).await)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match i {
            5 => assert!(matches!(
                result,
                Err(EmbedError::TooLong { limit: 256, .. })
            )),
            8 => assert!(matches!(result, Err(EmbedError::InvalidRequest { .. }))),
            _ => assert_eq!(result.unwrap().vectors[0].len(), 384),
        }
    }
}

/// A fake model: vector = [len, first id]; fails any pass that holds id 666;
/// optionally blocks each pass until the test releases it.
struct Fake {
    gate: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
    passes: Arc<AtomicUsize>,
}

impl Forward for Fake {
    fn forward(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        if let Some(gate) = &self.gate {
            let _ = gate.lock().unwrap().recv();
        }
        self.passes.fetch_add(1, Ordering::SeqCst);
        if seqs.iter().any(|s| s.contains(&666)) {
            return Err("poisoned input".into());
        }
        Ok(seqs
            .iter()
            .map(|s| vec![s.len() as f32, s[0] as f32])
            .collect())
    }
}

#[tokio::test]
async fn a_failing_forward_pass_is_retried_so_only_the_culprit_fails() {
    let (open, gate) = mpsc::channel();
    let passes = Arc::new(AtomicUsize::new(0));
    let fake = Fake {
        gate: Some(Arc::new(Mutex::new(gate))),
        passes: passes.clone(),
    };
    let metrics = Arc::new(Metrics::default());
    let (batcher, _t) = Batcher::start(fake, BatchConfig::default(), metrics.clone()).unwrap();
    // Hold the model on a first input so the next three requests share one window.
    let b = batcher.clone();
    let first = tokio::spawn(async move { b.embed(vec![vec![1]]).await });
    wait_until(|| first_taken(&metrics)).await;
    let handles: Vec<_> = [vec![1, 2, 3], vec![666, 1], vec![9; 5]]
        .into_iter()
        .map(|s| {
            let b = batcher.clone();
            tokio::spawn(async move { b.embed(vec![s]).await })
        })
        .collect();
    wait_until(|| metrics.queue_depth.load(Ordering::SeqCst) == 3).await;
    for _ in 0..5 {
        open.send(()).unwrap();
    }
    first.await.unwrap().unwrap();
    let results: Vec<_> = futures_join(handles).await;
    assert_eq!(results[0].as_ref().unwrap()[0], vec![3.0, 1.0]);
    assert!(matches!(results[1], Err(EmbedError::Inference(_))));
    assert_eq!(results[2].as_ref().unwrap()[0], vec![5.0, 9.0]);
    // The first input, the failed shared pass, then each of the three alone.
    assert_eq!(passes.load(Ordering::SeqCst), 5);
}

async fn wait_until(mut ready: impl FnMut() -> bool) {
    while !ready() {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_full_queue_refuses_whole_requests_with_retry_after() {
    let (open, gate) = mpsc::channel();
    let fake = Fake {
        gate: Some(Arc::new(Mutex::new(gate))),
        passes: Arc::new(AtomicUsize::new(0)),
    };
    let config = BatchConfig {
        max_queue: 4,
        max_batch_size: 1,
        retry_after_secs: 2,
        ..BatchConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let (batcher, _t) = Batcher::start(fake, config, metrics.clone()).unwrap();
    // The first input is taken by the (blocked) model thread; then four fill the queue.
    let b = batcher.clone();
    let first = tokio::spawn(async move { b.embed(vec![vec![1]]).await });
    wait_until(|| first_taken(&metrics)).await;
    let b = batcher.clone();
    let queued = tokio::spawn(async move { b.embed(vec![vec![2], vec![3], vec![4]]).await });
    wait_until(|| metrics.queue_depth.load(Ordering::SeqCst) == 3).await;
    // Two more do not fit (3 + 2 > 4): refused whole, nothing enqueued.
    let refused = batcher.embed(vec![vec![5], vec![6]]).await.unwrap_err();
    assert!(matches!(
        refused,
        EmbedError::Overloaded {
            retry_after_secs: 2
        }
    ));
    assert_eq!(refused.classify().status, 503);
    assert_eq!(metrics.queue_depth.load(Ordering::SeqCst), 3);
    // One still fits.
    let b = batcher.clone();
    let fits = tokio::spawn(async move { b.embed(vec![vec![7]]).await });
    for _ in 0..5 {
        open.send(()).unwrap();
    }
    assert_eq!(first.await.unwrap().unwrap(), vec![vec![1.0, 1.0]]);
    assert_eq!(queued.await.unwrap().unwrap().len(), 3);
    assert_eq!(fits.await.unwrap().unwrap(), vec![vec![1.0, 7.0]]);
}

fn first_taken(metrics: &Metrics) -> bool {
    // The model thread records queue wait as it starts a pass.
    metrics.queue_wait.count() > 0
}
