//! The candle engine against sentence-transformers' own vectors and token counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use common::{cosine, engine, reference};
use gpu_worker::batcher::BatchConfig;
use gpu_worker::{EmbedError, RawInput};

#[tokio::test]
async fn vectors_and_token_counts_match_sentence_transformers() {
    let reference = reference();
    let engine = engine(BatchConfig::default());
    assert_eq!(engine.info().max_seq_length, reference.max_seq_length);
    assert_eq!(engine.info().dimension, 384);
    let inputs: Vec<RawInput> = reference
        .items
        .iter()
        .map(|i| RawInput::Text(i.text.clone()))
        .collect();
    // All together (one padded batch) and each on its own must both match.
    let batched = engine.embed(inputs, false).await.unwrap();
    for (i, item) in reference.items.iter().enumerate() {
        let alone = engine
            .embed(vec![RawInput::Text(item.text.clone())], false)
            .await
            .unwrap();
        for (how, vector, tokens) in [
            ("batched", &batched.vectors[i], batched.tokens[i]),
            ("alone", &alone.vectors[0], alone.tokens[0]),
        ] {
            let c = cosine(vector, &item.embedding);
            assert!(c >= 0.9999, "{how} {:?}: cosine {c}", item.text);
            assert_eq!(
                tokens, item.tokens_with_special,
                "{how} {:?}: token count",
                item.text
            );
            let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
        }
    }
}

#[tokio::test]
async fn token_arrays_embed_like_their_text() {
    let reference = reference();
    let engine = engine(BatchConfig::default());
    let item = &reference.items[1];
    let ids = engine
        .tokenize(0, &RawInput::Text(item.text.clone()), false)
        .unwrap();
    assert_eq!(ids.len() - 2, item.tokens_without_special);
    let content = ids[1..ids.len() - 1].to_vec();
    let out = engine
        .embed(vec![RawInput::Tokens(content)], false)
        .await
        .unwrap();
    assert_eq!(out.tokens[0], item.tokens_with_special);
    assert!(cosine(&out.vectors[0], &item.embedding) >= 0.9999);
    let err = engine
        .embed(vec![RawInput::Tokens(vec![1, 999_999])], false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
}

#[tokio::test]
async fn long_inputs_are_refused_naming_the_limit_unless_truncated() {
    let engine = engine(BatchConfig::default());
    let long = "word ".repeat(300);
    let err = engine
        .embed(vec![RawInput::Text(long.clone())], false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::TooLong {
                limit: 256,
                tokens: 302,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("256"));
    let out = engine
        .embed(vec![RawInput::Text(long)], true)
        .await
        .unwrap();
    assert_eq!(out.tokens, vec![256]);
    // Truncation keeps the first 254 words: the same vector as those words alone.
    let first = "word ".repeat(254);
    let same = engine
        .embed(vec![RawInput::Text(first)], false)
        .await
        .unwrap();
    assert!(cosine(&out.vectors[0], &same.vectors[0]) > 0.99999);
    // Exactly at the limit is allowed.
    let at_limit = engine
        .embed(vec![RawInput::Text("word ".repeat(254))], false)
        .await
        .unwrap();
    assert_eq!(at_limit.tokens, vec![256]);
    let ids_err = engine
        .embed(vec![RawInput::Tokens(vec![2773; 255])], false)
        .await
        .unwrap_err();
    assert!(matches!(
        ids_err,
        EmbedError::TooLong {
            limit: 256,
            tokens: 257,
            ..
        }
    ));
}

#[tokio::test]
async fn large_requests_tokenise_in_chunks_keeping_order_and_input_indices() {
    let engine = engine(BatchConfig::default());
    // More inputs than one tokenizer chunk: each input's count is its own.
    let inputs: Vec<RawInput> = (0..300)
        .map(|i| RawInput::Text("word ".repeat(1 + i % 7)))
        .collect();
    let out = engine.embed(inputs.clone(), false).await.unwrap();
    let expected: Vec<usize> = (0..300).map(|i| 3 + i % 7).collect();
    assert_eq!(out.tokens, expected);
    // An input far into the request is named by its own index.
    let mut bad = inputs;
    bad[250] = RawInput::Text("word ".repeat(300));
    let err = engine.embed(bad, false).await.unwrap_err();
    assert!(
        matches!(err, EmbedError::TooLong { index: 250, .. }),
        "{err:?}"
    );
}
