//! The chat model's tokenizer, built from the GGUF's own metadata with the
//! `tokenizers` crate: byte-level BPE over the file's vocabulary and merges, the
//! pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`, and the control tokens as
//! special tokens (matched whole in the prompt text, as llama.cpp does with
//! `parse_special`). Also the incremental detokenizer that streams text.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::VocabMeta;
use crate::error::ArtifactError;

/// llama.cpp's token types that are special (matched whole, never merged).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Text <-> token ids for the chat model.
pub struct ChatTokenizer {
    inner: Tokenizer,
    /// Ids that end a generation (the end-of-turn token and its kin).
    end_ids: Vec<u32>,
    eos: u32,
    vocab_size: usize,
}

fn bad(reason: impl Into<String>) -> ArtifactError {
    ArtifactError::BadFile {
        file: "model.gguf (tokenizer)".into(),
        reason: reason.into(),
    }
}

/// The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, ArtifactError> {
    let byte_level = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    match pre {
        // GPT-2's regex over byte-level text.
        "default" | "gpt2" | "gpt-2" => Ok(byte_level()),
        // Every digit on its own, then GPT-2's regex (llama.cpp's `smollm` and kin).
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(),
            ])))
        }
        other => Err(bad(format!("pre-tokenizer {other:?} is not supported"))),
    }
}

impl ChatTokenizer {
    pub fn from_meta(meta: &VocabMeta) -> Result<ChatTokenizer, ArtifactError> {
        let mut vocab = Vocab::default();
        for (id, token) in meta.tokens.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| bad("vocabulary too large"))?;
            if vocab.insert(token.clone(), id).is_some() {
                return Err(bad(format!("token {token:?} appears twice")));
            }
        }
        let merges = meta
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad(format!("BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(&meta.pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = meta
            .tokens
            .iter()
            .zip(&meta.types)
            .filter(|(_, t)| matches!(**t, CONTROL | USER_DEFINED))
            .map(|(text, _)| AddedToken::from(text.clone(), true))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| bad(format!("special tokens: {e}")))?;
        let named_end = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"];
        let mut end_ids = vec![meta.eos];
        for (id, (text, kind)) in meta.tokens.iter().zip(&meta.types).enumerate() {
            if *kind == CONTROL && named_end.contains(&text.as_str()) {
                let id = id as u32;
                if !end_ids.contains(&id) {
                    end_ids.push(id);
                }
            }
        }
        Ok(ChatTokenizer {
            inner,
            end_ids,
            eos: meta.eos,
            vocab_size: meta.tokens.len(),
        })
    }

    /// Token ids of a rendered prompt, special tokens parsed.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn is_end(&self, id: u32) -> bool {
        self.end_ids.contains(&id)
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The text of one token as the vocabulary spells it (for the template's
    /// `bos_token` / `eos_token`).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }
}

/// Turns a growing list of token ids into text pieces, holding back bytes that do not
/// yet form whole characters (a multi-byte character split over tokens).
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Where the text already emitted starts and ends, in ids.
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// Adds a token; returns the new text it completes (may be empty).
    pub fn push(&mut self, tokenizer: &ChatTokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = tokenizer.decode(&self.ids[self.prefix..]);
        match now.get(before.len()..) {
            Some(piece) if !piece.is_empty() && !now.ends_with('\u{FFFD}') => {
                let piece = piece.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                piece
            }
            _ => String::new(),
        }
    }

    /// Whatever is still held back (an incomplete character at the end of a stream).
    pub fn flush(&mut self, tokenizer: &ChatTokenizer) -> String {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = tokenizer.decode(&self.ids[self.prefix..]);
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        now.get(before.len()..).unwrap_or_default().to_string()
    }
}
