//! The candle side of `scripts/bench-embeddings.sh` (CPU) and `scripts/bench-gpu.py`
//! (GPU): a benchmark, not a test.
//!
//! Reads workloads (`{"name": {"rounds": N, "texts": ["text", ...]}, ...}`, each
//! optionally with `max_batch_size`, `max_batch_tokens` and `pass_overhead_tokens`),
//! embeds each whole workload as one request through the engine (tokenisation,
//! dynamic batching, forward passes) for its number of rounds, and prints one JSON
//! object of results on stdout. With `--profile` it also times candle's own tracing
//! spans (exclusive time per span: `linear` = dense matmuls, `self-attn` = attention
//! matmuls, masking and reshapes, `softmax`, `layer-norm`, `hidden-act` = GELU) and
//! the tokeniser. On a GPU the spans are host time spent enqueuing kernels, since
//! candle's CUDA ops are asynchronous. With `--model-only` it also times the model
//! alone on the same forward passes (pre-tokenised inputs, from host ids to host
//! vectors), so what the engine adds shows as the difference.
//!
//! env: TENANTAI_DEVICE (cpu, cuda:N; default cpu), TENANTAI_MODEL_THREADS (default:
//!      as `gpu-worker serve`), TENANTAI_TF32 (true: TF32 matmuls on a GPU),
//!      TENANTAI_PRECISION (f32, bf16, int8; default f32), TENANTAI_MATMUL and
//!      TENANTAI_MKL_LIB (the CPU encoder's matmul library, as `gpu-worker serve`). With `--vectors` each
//!      workload's entry also holds the vectors of its last round.
//!
//! usage: bench_embeddings MODEL_DIR WORKLOADS_JSON [--profile] [--model-only] [--vectors]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool: failing loudly is right

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpu_worker::batcher::BatchConfig;
use gpu_worker::cpu::Precision;
use gpu_worker::device::{allow_tf32, configure_cpu_threads, DeviceChoice};
use gpu_worker::grouping::plan_groups;
use gpu_worker::metrics::Metrics;
use gpu_worker::model::Embedder;
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
    max_batch_size: Option<usize>,
    max_batch_tokens: Option<usize>,
    pass_overhead_tokens: Option<usize>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Debug,
{
    std::env::var(name).map_or(default, |v| v.parse().unwrap())
}

fn main() {
    let device: DeviceChoice = env_or("TENANTAI_DEVICE", DeviceChoice::Cpu);
    // Model threads: TENANTAI_MODEL_THREADS, else as `serve` does.
    let model_threads = std::env::var("TENANTAI_MODEL_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| device.auto_model_threads());
    configure_cpu_threads(device, model_threads);
    allow_tf32(env_or("TENANTAI_TF32", false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let precision: Precision = env_or("TENANTAI_PRECISION", Precision::F32);
    runtime.block_on(bench(device, model_threads, precision));
}

/// The model alone over the forward passes the engine would plan: seconds per round.
fn model_only(embedder: &Embedder, seqs: &[Vec<u32>], config: &BatchConfig, rounds: usize) -> f64 {
    let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let groups = plan_groups(
        &lengths,
        config.max_batch_tokens,
        config.max_batch_size,
        config.pass_overhead_tokens,
    );
    let run = || {
        for group in &groups {
            let batch: Vec<&[u32]> = group.iter().map(|&i| seqs[i].as_slice()).collect();
            let out = embedder.embed(&batch).unwrap();
            assert_eq!(out.len(), batch.len());
        }
    };
    run(); // warm-up
    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        run();
        times.push(start.elapsed().as_secs_f64());
    }
    median(times)
}

async fn bench(device_choice: DeviceChoice, model_threads: usize, precision: Precision) {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).expect(
        "usage: bench_embeddings MODEL_DIR WORKLOADS_JSON [--profile] [--model-only] [--vectors]",
    );
    let model = std::path::Path::new(model);
    let workloads: BTreeMap<String, Workload> =
        serde_json::from_slice(&std::fs::read(args.get(2).expect("WORKLOADS_JSON")).unwrap())
            .unwrap();
    let profile = args.iter().any(|a| a == "--profile");
    let model_only_too = args.iter().any(|a| a == "--model-only");
    let with_vectors = args.iter().any(|a| a == "--vectors");
    let spans = Profile::default();
    if profile {
        // Before the model loads: candle's spans are created (enabled or not) at load.
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
            .unwrap();
    }
    let device = device_choice.open().unwrap();
    let embedder = model_only_too.then(|| {
        gpu_worker::model::load_at(model, &device, 1, precision)
            .unwrap()
            .1
            .remove(0)
    });
    let mut results = serde_json::Map::new();
    for (name, workload) in &workloads {
        let defaults = BatchConfig::default();
        let config = BatchConfig {
            model_threads,
            max_batch_size: workload.max_batch_size.unwrap_or(defaults.max_batch_size),
            max_batch_tokens: workload
                .max_batch_tokens
                .unwrap_or(defaults.max_batch_tokens),
            pass_overhead_tokens: workload
                .pass_overhead_tokens
                .unwrap_or_else(|| device_choice.auto_pass_overhead()),
            max_queue: workload.texts.len().max(defaults.max_queue),
            ..defaults
        };
        let metrics = Arc::new(Metrics::default());
        let (engine, threads) =
            Engine::load_at(model, &device, config, precision, metrics.clone()).unwrap();
        let texts = &workload.texts;
        let rounds = workload.rounds.max(1);
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
        let mut last = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            let out = engine.embed(inputs.clone(), false).await.unwrap();
            let took = start.elapsed();
            assert_eq!(out.vectors.len(), texts.len());
            last = out.vectors;
            elapsed += took;
            rates.push(texts.len() as f64 / took.as_secs_f64());
        }
        let tokens = metrics.tokens.load(Ordering::Relaxed) - tokens0;
        let padded = metrics.padded_tokens.load(Ordering::Relaxed) - padded0;
        let passes = metrics.forward.count() - passes0;
        // The tokeniser alone, on this thread, for the same inputs.
        let start = Instant::now();
        let seqs: Vec<Vec<u32>> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| engine.tokenize(i, input, false).unwrap())
            .collect();
        let tokenize_s = start.elapsed().as_secs_f64();
        let mut entry = json!({
            "device": engine.device(),
            "precision": precision.as_str(),
            "matmul": engine.info().matmul,
            "model_threads": model_threads,
            "matmul_threads": candle_core::utils::get_num_threads(),
            "max_batch_size": config.max_batch_size,
            "max_batch_tokens": config.max_batch_tokens,
            "pass_overhead_tokens": config.pass_overhead_tokens,
            "sentences": texts.len(),
            "rounds": rounds,
            "sentences_per_second": median(rates),
            "seconds_per_round": elapsed.as_secs_f64() / rounds as f64,
            "tokens_per_round": tokens / rounds as u64,
            "padding_share": 1.0 - tokens as f64 / padded.max(1) as f64,
            "forward_passes_per_round": passes as f64 / rounds as f64,
            "tokenize_seconds_per_round": tokenize_s,
        });
        if with_vectors {
            entry["vectors"] = json!(last);
        }
        if profile {
            let map = spans.0.lock().unwrap();
            let per_round: serde_json::Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.as_secs_f64() / rounds as f64)))
                .collect();
            entry["span_seconds_per_round"] = Value::Object(per_round);
        }
        engine.shutdown();
        drop(engine);
        for thread in threads {
            thread.join().unwrap();
        }
        if let Some(embedder) = &embedder {
            entry["model_only_seconds_per_round"] =
                json!(model_only(embedder, &seqs, &config, rounds));
        }
        results.insert(name.clone(), entry);
    }
    println!("{}", Value::Object(results));
}
