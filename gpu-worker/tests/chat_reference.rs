//! The chat engine against llama.cpp's own behaviour on the same GGUF, recorded into
//! `tests/fixtures/smollm2-reference.json` by scripts/record-chat-reference.sh:
//! identical prompt token ids; with teacher forcing along llama.cpp's greedy
//! continuation, the same argmax wherever llama.cpp's top two logits are at least
//! 0.5 apart and at 95 % of all positions; and last-prompt-position logits within
//! 0.5 of llama.cpp's on average.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine as _;
use gpu_worker::chat::attention::SeqCache;
use gpu_worker::chat::gguf::GgufFile;
use gpu_worker::chat::llama::{argmax, Chunk, Llama, Logits};
use gpu_worker::chat::{ChatConfig, ChatEngine, Message};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    model_sha256: String,
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<FixtureMessage>,
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    teacher: Vec<Teacher>,
    last_logits_f32_b64: String,
}

#[derive(Deserialize)]
struct FixtureMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct Teacher {
    argmax: u32,
    gap: f32,
}

fn fixture() -> Fixture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2-reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn messages(c: &Conversation) -> Vec<Message> {
    c.messages
        .iter()
        .map(|m| Message {
            role: m.role.clone(),
            content: m.content.clone(),
        })
        .collect()
}

fn decode_f32(b64: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn fixture_is_for_the_fetched_model() {
    let dir = common::chat_model_dir();
    let manifest: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model.gguf"], fixture().model_sha256);
}

#[tokio::test]
async fn prompt_token_ids_equal_llama_cpp() {
    let (engine, _thread) = ChatEngine::load(
        &common::chat_model_dir(),
        &candle_core::Device::Cpu,
        ChatConfig::default(),
    )
    .unwrap();
    for c in fixture().conversations {
        let ids = engine.prompt(&messages(&c)).unwrap();
        assert_eq!(ids, c.prompt_ids, "prompt {:?}", c.prompt);
    }
}

#[test]
fn teacher_forced_argmax_and_last_logits_agree_with_llama_cpp() {
    let dir = common::chat_model_dir();
    let mut file = GgufFile::open(&dir.join("model.gguf")).unwrap();
    let model = Llama::load(&mut file, &candle_core::Device::Cpu, 2).unwrap();
    let (mut positions, mut agree, mut clear, mut clear_agree) = (0usize, 0usize, 0usize, 0usize);
    let mut worst_mad = 0f32;
    for c in fixture().conversations {
        let mut tokens = c.prompt_ids.clone();
        tokens.extend_from_slice(&c.greedy_ids[..c.greedy_ids.len() - 1]);
        let mut cache: SeqCache = model.new_cache(tokens.len());
        let rows = model
            .forward(&mut [Chunk {
                tokens: &tokens,
                cache: &mut cache,
                logits: Logits::All,
            }])
            .unwrap();
        assert_eq!(rows.len(), tokens.len());
        let first = c.prompt_ids.len() - 1;
        for (i, t) in c.teacher.iter().enumerate() {
            let ours = argmax(&rows[first + i]);
            positions += 1;
            agree += usize::from(ours == t.argmax);
            if t.gap >= 0.5 {
                clear += 1;
                clear_agree += usize::from(ours == t.argmax);
                assert_eq!(
                    ours, t.argmax,
                    "position {i} of {:?}: llama.cpp's top-two gap is {}",
                    c.prompt, t.gap
                );
            }
        }
        let reference = decode_f32(&c.last_logits_f32_b64);
        let ours = &rows[first];
        assert_eq!(ours.len(), reference.len());
        let mad = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / ours.len() as f32;
        worst_mad = worst_mad.max(mad);
        assert!(
            mad <= 0.5,
            "mean |Δlogit| {mad} at the last prompt position of {:?}",
            c.prompt
        );
    }
    let share = agree as f64 / positions as f64;
    println!("argmax agreement: {agree}/{positions} ({:.1} %), {clear_agree}/{clear} where the gap >= 0.5; worst last-position mean |Δlogit| {worst_mad:.4}", share * 100.0);
    assert!(
        share >= 0.95,
        "argmax agrees at {:.1} % of positions",
        share * 100.0
    );
}
