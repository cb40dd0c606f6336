//! One real embeddings worker per test binary: the gpu-worker engine and its
//! HTTP API on a loopback port, on a thread of its own (test runtimes come and go).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use gpu_worker::batcher::BatchConfig;
use gpu_worker::device::DeviceChoice;
use gpu_worker::http::{router, AppState, Limits};
use gpu_worker::metrics::Metrics;
use gpu_worker::Engine;

pub fn model_dir() -> PathBuf {
    match std::env::var("TENANTAI_MODEL_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/all-MiniLM-L6-v2"
        )),
    }
}

/// Serves the state `load` builds (with whatever must stay alive beside it) on
/// a loopback port, on a thread and runtime of its own; returns its base URL
/// once the models are loaded.
fn serve_on_thread<K: Send + 'static>(
    load: impl FnOnce() -> (AppState, K) + Send + 'static,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (state, _keep) = load();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            axum::serve(listener, router(state)).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The base URL of the shared worker (started on first use).
pub fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = model_dir();
        assert!(
            dir.join("manifest.json").is_file(),
            "no model at {}: run scripts/fetch-model.sh",
            dir.display()
        );
        serve_on_thread(move || {
            let device = DeviceChoice::Cpu.open().unwrap();
            let (engine, threads) = Engine::load(
                &dir,
                &device,
                BatchConfig::default(),
                Arc::new(Metrics::default()),
            )
            .unwrap();
            (
                AppState::embeddings(engine, Limits::default(), "all-MiniLM-L6-v2"),
                threads,
            )
        })
    })
    .clone()
}

#[allow(dead_code)] // the api tests use it; the adversarial suite shares this file
pub fn chat_model_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct"
    ))
}

/// The base URL of the shared chat worker (SmolLM2-135M-Instruct, started on first use).
#[allow(dead_code)] // the api tests use it; the adversarial suite shares this file
pub fn chat_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = chat_model_dir();
        assert!(
            dir.join("manifest.json").is_file(),
            "no chat model at {}: run scripts/fetch-model.sh",
            dir.display()
        );
        serve_on_thread(move || {
            let device = DeviceChoice::Cpu.open().unwrap();
            let (chat, thread) =
                gpu_worker::chat::ChatEngine::load(&dir, &device, Default::default()).unwrap();
            let state = AppState {
                engine: None,
                chat: Some(chat),
                metrics: Arc::new(Metrics::default()),
                limits: Limits::default(),
                model_id: "".into(),
                chat_model_id: "SmolLM2-135M-Instruct".into(),
            };
            (state, thread)
        })
    })
    .clone()
}
