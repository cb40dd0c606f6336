//! Generates one greedy answer with the chat engine and prints it with its timing:
//! a quick look at the engine without HTTP.
//!
//! usage: cargo run --profile local -p gpu-worker --example chat_generate -- [MODEL_DIR] [PROMPT] [MAX_TOKENS]

use std::time::Instant;

use gpu_worker::chat::{ChatConfig, ChatEngine, Event, Message, SamplingParams};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".into());
    let max_tokens: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let loaded = Instant::now();
    let (engine, _thread) = ChatEngine::load(
        dir.as_ref(),
        &candle_core::Device::Cpu,
        ChatConfig::default(),
    )?;
    println!("loaded in {:.2} s", loaded.elapsed().as_secs_f64());
    let ids = engine.prompt(&[Message {
        role: "user".into(),
        content: prompt,
    }])?;
    println!("prompt: {} tokens", ids.len());
    let started = Instant::now();
    let sampling = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let mut rx = engine.submit(ids, max_tokens, sampling, Vec::new())?;
    let mut first = None;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => {
                first.get_or_insert_with(|| started.elapsed());
                print!("{t}");
            }
            Event::Done {
                finish,
                completion_tokens,
                ..
            } => {
                let total = started.elapsed().as_secs_f64();
                let ttft = first.map_or(0.0, |d| d.as_secs_f64());
                println!("\n[{finish:?}] {completion_tokens} tokens; first after {:.0} ms; {:.1} tokens/s after it", ttft * 1000.0, (completion_tokens.saturating_sub(1)) as f64 / (total - ttft).max(1e-9));
            }
            Event::Failed(e) => anyhow::bail!(e),
        }
    }
    Ok(())
}
