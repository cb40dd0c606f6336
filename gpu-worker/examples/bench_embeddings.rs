//! The candle side of `scripts/bench-embeddings.sh` (a benchmark, not a test).
//!
//! Reads workloads (`{"name": {"rounds": N, "texts": ["text", ...]}, ...}`), embeds
//! each whole workload as one request through the engine (tokenisation, dynamic
//! batching, forward passes) for its number of rounds, and prints one JSON object of results on stdout. With
//! `--profile` it also times candle's own tracing spans (exclusive time per span:
//! `linear` = dense matmuls, `self-attn` = attention matmuls, masking and reshapes,
//! `softmax`, `layer-norm`, `hidden-act` = GELU) and the tokeniser.
//!
//! usage: bench_embeddings MODEL_DIR WORKLOADS_JSON [--profile]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool: failing loudly is right

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpu_worker::batcher::BatchConfig;
use gpu_worker::device::{configure_cpu_threads, DeviceChoice};
use gpu_worker::metrics::Metrics;
use gpu_worker::{Engine, RawInput};
use serde_json::{json, Value};
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Exclusive wall time per span name, for spans entered on any thread.
#[derive(Default, Clone)]
struct Profile(Arc<Mutex<BTreeMap<&'static str, Duration>>>);

thread_local! {
    static STACK: RefCell<Vec<(Instant, Duration)>> = const { RefCell::new(Vec::new()) };
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Profile {
    fn on_enter(&self, _id: &span::Id, _ctx: Context<'_, S>) {
        STACK.with(|s| s.borrow_mut().push((Instant::now(), Duration::ZERO)));
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        let Some((start, children)) = STACK.with(|s| s.borrow_mut().pop()) else {
            return;
        };
        let total = start.elapsed();
        STACK.with(|s| {
            if let Some(parent) = s.borrow_mut().last_mut() {
                parent.1 += total;
            }
        });
        if let Some(span) = ctx.span(id) {
            let mut map = self.0.lock().unwrap();
            *map.entry(span.metadata().name()).or_default() += total.saturating_sub(children);
        }
    }
}

#[derive(serde::Deserialize)]
struct Workload {
    rounds: usize,
    texts: Vec<String>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    // Model threads: TENANTAI_MODEL_THREADS, else one per core (as `serve` does).
    let device = DeviceChoice::Cpu;
    let model_threads = std::env::var("TENANTAI_MODEL_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| device.auto_model_threads());
    configure_cpu_threads(device, model_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(model_threads));
}

async fn bench(model_threads: usize) {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .expect("usage: bench_embeddings MODEL_DIR WORKLOADS_JSON [--profile]");
    let workloads: BTreeMap<String, Workload> =
        serde_json::from_slice(&std::fs::read(args.get(2).expect("WORKLOADS_JSON")).unwrap())
            .unwrap();
    let profile = args.iter().any(|a| a == "--profile");
    let spans = Profile::default();
    if profile {
        // Before the model loads: candle's spans are created (enabled or not) at load.
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
            .unwrap();
    }
    let metrics = Arc::new(Metrics::default());
    let (engine, _thread) = Engine::load(
        std::path::Path::new(model),
        &candle_core::Device::Cpu,
        BatchConfig {
            model_threads,
            ..BatchConfig::default()
        },
        metrics.clone(),
    )
    .unwrap();

    let mut results = serde_json::Map::new();
    for (name, Workload { rounds, texts }) in &workloads {
        let rounds = (*rounds).max(1);
        let inputs: Vec<RawInput> = texts.iter().cloned().map(RawInput::Text).collect();
        engine.embed(inputs.clone(), false).await.unwrap(); // warm-up
        spans.0.lock().unwrap().clear();
        let (tokens0, padded0, passes0) = (
            metrics.tokens.load(Ordering::Relaxed),
            metrics.padded_tokens.load(Ordering::Relaxed),
            metrics.forward.count(),
        );
        let mut rates = Vec::new();
        let mut elapsed = Duration::ZERO;
        for _ in 0..rounds {
            let start = Instant::now();
            let out = engine.embed(inputs.clone(), false).await.unwrap();
            let took = start.elapsed();
            assert_eq!(out.vectors.len(), texts.len());
            elapsed += took;
            rates.push(texts.len() as f64 / took.as_secs_f64());
        }
        let tokens = metrics.tokens.load(Ordering::Relaxed) - tokens0;
        let padded = metrics.padded_tokens.load(Ordering::Relaxed) - padded0;
        let passes = metrics.forward.count() - passes0;
        // The tokeniser alone, on this thread, for the same inputs.
        let start = Instant::now();
        for (i, input) in inputs.iter().enumerate() {
            engine.tokenize(i, input, false).unwrap();
        }
        let tokenize_s = start.elapsed().as_secs_f64();
        let mut entry = json!({
            "model_threads": model_threads,
            "matmul_threads": candle_core::utils::get_num_threads(),
            "sentences": texts.len(),
            "rounds": rounds,
            "sentences_per_second": median(rates),
            "seconds_per_round": elapsed.as_secs_f64() / rounds as f64,
            "tokens_per_round": tokens / rounds as u64,
            "padding_share": 1.0 - tokens as f64 / padded.max(1) as f64,
            "forward_passes_per_round": passes as f64 / rounds as f64,
            "tokenize_seconds_per_round": tokenize_s,
        });
        if profile {
            let map = spans.0.lock().unwrap();
            let per_round: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.as_secs_f64() / rounds as f64)))
                .collect();
            entry["span_seconds_per_round"] = Value::Object(per_round);
        }
        results.insert(name.clone(), entry);
    }
    println!("{}", Value::Object(results));
}
