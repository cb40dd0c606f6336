//! `gpu-worker`: the tenantai embeddings worker.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gpu_worker::batcher::BatchConfig;
use gpu_worker::chat::{ChatConfig, SchedulerConfig};
use gpu_worker::cpu::matmul::MatmulChoice;
use gpu_worker::cpu::Precision;
use gpu_worker::device::{allow_tf32, configure_cpu_threads, DeviceChoice};
use gpu_worker::http::Limits;
use gpu_worker::serve::{run, ServeConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "gpu-worker",
    version,
    about = "tenantai model worker: embeddings (candle BERT models) and chat (llama GGUF models with continuous batching)"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "TENANTAI_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model over HTTP (the SageMaker container entry point: `<image> serve`).
    Serve(ServeArgs),
    /// Run batch work from the jobs queue on these models (and serve the same
    /// HTTP API, `/health` included); SIGTERM stops receiving and drains.
    Work(WorkArgs),
}

#[derive(clap::Args)]
struct WorkArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Embedded storage (a `tenantai dev` data directory) instead of AWS; on
    /// AWS the deployment comes from TENANTAI_RESOURCE_PREFIX, TENANTAI_TABLE,
    /// TENANTAI_BUCKET and TENANTAI_JOBS_QUEUE, the batch settings from
    /// TENANTAI_BATCH_* (see the README).
    #[arg(long, env = "TENANTAI_WORK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TENANTAI_WORKER_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on (SageMaker expects 8080).
    #[arg(long, env = "TENANTAI_WORKER_PORT", default_value_t = 8080)]
    port: u16,
    /// The embedding model: a local directory with manifest.json, or
    /// s3://bucket/prefix (on SageMaker: /opt/ml/model); `none` serves no embeddings.
    #[arg(
        long,
        env = "TENANTAI_MODEL",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    model: String,
    /// Where a model fetched from S3 is cached.
    #[arg(
        long,
        env = "TENANTAI_MODEL_CACHE_DIR",
        default_value = ".tenantai/model-cache"
    )]
    model_cache_dir: PathBuf,
    /// The model name put in answers.
    #[arg(long, env = "TENANTAI_MODEL_ID", default_value = "all-MiniLM-L6-v2")]
    model_id: String,
    /// The chat model (a directory holding model.gguf and manifest.json, or
    /// s3://bucket/prefix); unset serves no chat.
    #[arg(long, env = "TENANTAI_CHAT_MODEL")]
    chat_model: Option<String>,
    /// The chat model's name in answers.
    #[arg(
        long,
        env = "TENANTAI_CHAT_MODEL_ID",
        default_value = "SmolLM2-135M-Instruct"
    )]
    chat_model_id: String,
    /// CPU threads for the chat model's matmuls and attention (0 = one per core).
    #[arg(long, env = "TENANTAI_CHAT_THREADS", default_value_t = 0)]
    chat_threads: usize,
    /// KV cache positions all running chat sequences may reserve together (each
    /// reserves its prompt plus max_tokens; about 46 KB each for SmolLM2-135M).
    #[arg(long, env = "TENANTAI_CHAT_KV_TOKENS", default_value_t = 65_536)]
    chat_kv_tokens: usize,
    /// Most chat sequences decoding together.
    #[arg(long, env = "TENANTAI_CHAT_MAX_RUNNING", default_value_t = 64)]
    chat_max_running: usize,
    /// Most tokens (one per decoding sequence, plus prompt chunks) in one step.
    #[arg(long, env = "TENANTAI_CHAT_MAX_STEP_TOKENS", default_value_t = 512)]
    chat_max_step_tokens: usize,
    /// Most chat requests waiting to start; beyond it requests get 503 + Retry-After.
    #[arg(long, env = "TENANTAI_CHAT_MAX_WAITING", default_value_t = 256)]
    chat_max_waiting: usize,
    /// max_tokens for a request that sets none.
    #[arg(long, env = "TENANTAI_CHAT_DEFAULT_MAX_TOKENS", default_value_t = 1024)]
    chat_default_max_tokens: usize,
    /// Device: auto, cpu or cuda:N (cuda needs a build with the `cuda` feature).
    #[arg(long, env = "TENANTAI_DEVICE", default_value = "auto")]
    device: DeviceChoice,
    /// The embedding model's dense layers: f32 (the checkpoint), bf16 (bf16 inputs
    /// and weights, f32 accumulation) or int8 (per-channel int8 weights, per-token
    /// dynamic int8 activations). bf16 and int8 run on a CPU only; each is meant to
    /// be registered as its own version of the model.
    #[arg(long, env = "TENANTAI_PRECISION", default_value = "f32")]
    precision: Precision,
    /// What runs the CPU encoder's dense products: auto (Intel oneMKL if it opens,
    /// with AMX/VNNI kernels for bf16 and int8; else gemmkit), mkl (or fail to start)
    /// or gemmkit.
    #[arg(long, env = "TENANTAI_MATMUL", default_value = "auto")]
    matmul: MatmulChoice,
    /// oneMKL's libmkl_rt.so.2 (scripts/lib/mkl.sh unpacks PyPI's mkl wheel and
    /// sets this); unset: looked up on the loader's path.
    #[arg(long, env = "TENANTAI_MKL_LIB")]
    mkl_lib: Option<PathBuf>,
    /// On a GPU, run f32 matmuls in TF32 on the tensor cores (faster; vectors move
    /// by about 1e-4 in cosine).
    #[arg(long, env = "TENANTAI_TF32")]
    tf32: bool,
    /// Model threads, each with its own copy of the model (0 = one per core on a
    /// CPU, one on a GPU). With several on a CPU, RAYON_NUM_THREADS defaults to 1.
    #[arg(long, env = "TENANTAI_MODEL_THREADS", default_value_t = 0)]
    model_threads: usize,
    /// Most tokens in one forward pass (on a GPU, padded ones included: inputs x
    /// longest input).
    #[arg(long, env = "TENANTAI_MAX_BATCH_TOKENS", default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Most inputs in one forward pass.
    #[arg(long, env = "TENANTAI_MAX_BATCH_SIZE", default_value_t = 256)]
    max_batch_size: usize,
    /// The fixed cost of a forward pass in padded-token equivalents, weighed against
    /// padding when inputs are grouped (0 = 48 on a CPU, 4096 on a GPU).
    #[arg(long, env = "TENANTAI_PASS_OVERHEAD_TOKENS", default_value_t = 0)]
    pass_overhead_tokens: usize,
    /// Most inputs waiting for the model; beyond it requests get 503 + Retry-After.
    #[arg(long, env = "TENANTAI_MAX_QUEUE", default_value_t = 4096)]
    max_queue: usize,
    /// Seconds a client refused for a full queue is told to wait.
    #[arg(long, env = "TENANTAI_RETRY_AFTER_SECS", default_value_t = 1)]
    retry_after_secs: u64,
    /// Most inputs in one request.
    #[arg(long, env = "TENANTAI_MAX_INPUTS", default_value_t = 2048)]
    max_inputs: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "TENANTAI_MAX_BODY_BYTES", default_value_t = 2_000_000)]
    max_body_bytes: usize,
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let (args, work) = match cli.command {
        Command::Serve(args) => (args, None),
        Command::Work(w) => (w.serve, Some(w.data_dir)),
    };
    let config = serve_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match work {
            None => run(config).await.context("gpu-worker serve failed"),
            Some(dir) => gpu_worker::work::run(config, dir)
                .await
                .context("gpu-worker work failed"),
        }
    })
}

/// The engines' configuration from the flags; sets the thread counts (before
/// the runtime starts any thread).
fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let model_threads = match args.model_threads {
        0 => args.device.auto_model_threads(),
        n => n,
    };
    configure_cpu_threads(args.device, model_threads);
    allow_tf32(args.tf32);
    gpu_worker::cpu::matmul::select(args.matmul, args.mkl_lib.as_deref())
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(args.max_batch_size > 0, "--max-batch-size must be positive");
    anyhow::ensure!(args.max_inputs > 0, "--max-inputs must be positive");
    anyhow::ensure!(
        args.chat_max_running > 0 && args.chat_max_step_tokens > 0 && args.chat_kv_tokens > 0,
        "--chat-max-running, --chat-max-step-tokens and --chat-kv-tokens must be positive"
    );
    let chat_threads = match args.chat_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // candle's quantized matmuls size their pool from CANDLE_NUM_THREADS
    // (before RAYON_NUM_THREADS, which the embedding threads may set to 1).
    if args.chat_model.is_some() && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", chat_threads.to_string());
    }
    Ok(ServeConfig {
        addr: SocketAddr::new(args.host, args.port),
        model: Some(args.model).filter(|m| m != "none"),
        cache_dir: args.model_cache_dir,
        model_id: args.model_id,
        chat_model: args.chat_model.filter(|m| !m.is_empty() && m != "none"),
        chat_model_id: args.chat_model_id,
        chat: ChatConfig {
            threads: chat_threads,
            scheduler: SchedulerConfig {
                max_running: args.chat_max_running,
                kv_budget_tokens: args.chat_kv_tokens,
                max_step_tokens: args.chat_max_step_tokens,
            },
            max_waiting: args.chat_max_waiting,
            retry_after_secs: args.retry_after_secs,
            default_max_tokens: args.chat_default_max_tokens,
        },
        device: args.device,
        precision: args.precision,
        batch: BatchConfig {
            model_threads,
            max_batch_tokens: args.max_batch_tokens,
            max_batch_size: args.max_batch_size,
            pass_overhead_tokens: match args.pass_overhead_tokens {
                0 => args.device.auto_pass_overhead(),
                n => n,
            },
            max_queue: args.max_queue,
            retry_after_secs: args.retry_after_secs,
        },
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_inputs: args.max_inputs,
        },
    })
}
