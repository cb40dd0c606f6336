//! The chat engine in-process: continuous batching gives every concurrent stream
//! exactly its own tokens, seeds make sampling repeatable, stop strings and
//! `max_tokens` end generations as OpenAI does, a client that leaves frees its
//! slot, and a full queue refuses instead of growing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use gpu_worker::chat::{
    ChatConfig, ChatEngine, Event, FinishReason, Message, SamplingParams, SchedulerConfig,
};
use gpu_worker::EmbedError;
use tokio::sync::mpsc::UnboundedReceiver;

fn engine(config: ChatConfig) -> ChatEngine {
    let (engine, _thread) =
        ChatEngine::load(&common::chat_model_dir(), &candle_core::Device::Cpu, config).unwrap();
    engine
}

fn user(text: &str) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content: text.into(),
    }]
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    }
}

/// Everything a generation sent: its text and how it ended.
async fn collect(mut rx: UnboundedReceiver<Event>) -> (String, FinishReason, usize) {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                finish,
                completion_tokens,
                ..
            } => return (text, finish, completion_tokens),
            Event::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the stream ended without Done");
}

async fn generate(
    e: &ChatEngine,
    prompt: &str,
    max_tokens: usize,
    sampling: SamplingParams,
    stops: Vec<String>,
) -> (String, FinishReason, usize) {
    let ids = e.prompt(&user(prompt)).unwrap();
    collect(e.submit(ids, max_tokens, sampling, stops).unwrap()).await
}

const PROMPTS: [&str; 6] = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "Describe a cat in a few words.",
];

#[tokio::test]
async fn concurrent_streams_each_get_their_own_tokens() {
    let e = engine(ChatConfig::default());
    let mut alone = Vec::new();
    for p in PROMPTS {
        alone.push(generate(&e, p, 24, greedy(), Vec::new()).await);
    }
    // All at once (and twice each), joining the running batch at different steps.
    let mut handles = Vec::new();
    for round in 0..2 {
        for (i, p) in PROMPTS.iter().enumerate() {
            let e = e.clone();
            handles.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((round * 30 + i * 7) as u64)).await;
                (i, generate(&e, p, 24, greedy(), Vec::new()).await)
            }));
        }
    }
    for h in handles {
        let (i, together) = h.await.unwrap();
        assert_eq!(together, alone[i], "prompt {:?}", PROMPTS[i]);
    }
    assert!(alone.iter().all(|(text, _, n)| !text.is_empty() && *n > 0));
}

#[tokio::test]
async fn the_same_seed_gives_the_same_tokens() {
    let e = engine(ChatConfig::default());
    let seeded = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed,
    };
    let a = generate(&e, "Tell me a short story.", 32, seeded(42), Vec::new()).await;
    let b = generate(&e, "Tell me a short story.", 32, seeded(42), Vec::new()).await;
    assert_eq!(a, b);
    let others: Vec<_> = [1u64, 2, 3].into_iter().collect();
    let mut differs = false;
    for s in others {
        differs |= generate(&e, "Tell me a short story.", 32, seeded(s), Vec::new())
            .await
            .0
            != a.0;
    }
    assert!(differs, "different seeds all gave the same text");
}

#[tokio::test]
async fn stop_strings_and_max_tokens_end_generations() {
    let e = engine(ChatConfig::default());
    let (full, _, _) = generate(&e, PROMPTS[2], 40, greedy(), Vec::new()).await;
    // A stop string from the middle of the greedy answer: the text before it, "stop".
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "{full:?}");
    let stop: String = chars[8..11].iter().collect();
    let cut = full.find(&stop).unwrap();
    let (text, finish, _) = generate(
        &e,
        PROMPTS[2],
        40,
        greedy(),
        vec![stop.clone(), "\u{1F600}never".into()],
    )
    .await;
    assert_eq!(text, full[..cut], "stop {stop:?}");
    assert_eq!(finish, FinishReason::Stop);
    // max_tokens cuts it: exactly that many tokens, "length", a prefix of the answer.
    let (short, finish, n) = generate(&e, PROMPTS[2], 5, greedy(), Vec::new()).await;
    assert_eq!((finish, n), (FinishReason::Length, 5));
    assert!(
        full.starts_with(&short) && short.len() < full.len(),
        "{short:?} / {full:?}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_slot() {
    let config = ChatConfig {
        scheduler: SchedulerConfig {
            max_running: 1,
            ..SchedulerConfig::default()
        },
        ..ChatConfig::default()
    };
    let e = engine(config);
    let ids = e
        .prompt(&user("Write a very long essay about rivers."))
        .unwrap();
    let mut first = e.submit(ids.clone(), 2000, greedy(), Vec::new()).unwrap();
    assert!(matches!(first.recv().await, Some(Event::Text(_))));
    // The only slot is taken; a second request waits...
    let second = e
        .submit(
            e.prompt(&user(PROMPTS[3])).unwrap(),
            8,
            greedy(),
            Vec::new(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        e.metrics()
            .running
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // ...until the first client goes away: its sequence is freed at the next step.
    drop(first);
    let (text, _, _) = tokio::time::timeout(Duration::from_secs(300), collect(second))
        .await
        .expect("the waiting request never ran: the abandoned sequence kept its slot");
    assert!(!text.is_empty());
}

#[tokio::test]
async fn a_full_queue_refuses_with_overloaded() {
    let config = ChatConfig {
        scheduler: SchedulerConfig {
            max_running: 1,
            ..SchedulerConfig::default()
        },
        max_waiting: 1,
        ..ChatConfig::default()
    };
    let e = engine(config);
    let ids = e.prompt(&user(PROMPTS[0])).unwrap();
    let mut running = e.submit(ids.clone(), 200, greedy(), Vec::new()).unwrap();
    assert!(matches!(running.recv().await, Some(Event::Text(_))));
    let waiting = e.submit(ids.clone(), 4, greedy(), Vec::new()).unwrap();
    let refused = e.submit(ids.clone(), 4, greedy(), Vec::new()).unwrap_err();
    assert!(
        matches!(refused, EmbedError::Overloaded { .. }),
        "{refused:?}"
    );
    assert_eq!(refused.classify().status, 503);
    // Over the context: a 400 that names the limit.
    let too_long = e
        .submit(ids.clone(), 9000, greedy(), Vec::new())
        .unwrap_err();
    assert_eq!(too_long.classify().status, 400);
    assert!(too_long.to_string().contains("8192"), "{too_long}");
    drop(running);
    let (_, _, n) = collect(waiting).await;
    assert!(n > 0);
}
