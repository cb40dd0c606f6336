//! Text (or caller-given token ids) -> the token ids of one model input, with the
//! model's special tokens and its sequence-length limit.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{ArtifactError, EmbedError};

/// One input, as the caller gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawInput {
    Text(String),
    /// Token ids of the text, without the model's special tokens.
    Tokens(Vec<u32>),
}

/// The model's tokenizer, set up for sentence-transformers semantics: no padding
/// (the batcher pads), and a length limit of `max_seq_length` tokens including the
/// special tokens.
pub struct TextEncoder {
    plain: Tokenizer,
    truncating: Tokenizer,
    max_len: usize,
    cls: u32,
    sep: u32,
    vocab_size: usize,
}

impl TextEncoder {
    /// Loads `tokenizer.json`, overriding its own padding and truncation (the
    /// all-MiniLM-L6-v2 file fixes both at 128).
    pub fn load(path: &Path, max_len: usize) -> Result<Self, ArtifactError> {
        let bad = |reason: String| ArtifactError::BadFile {
            file: path.display().to_string(),
            reason,
        };
        if max_len < 3 {
            return Err(bad(format!("max_seq_length {max_len} is too small")));
        }
        let mut plain = Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| bad(e.to_string()))?;
        let mut truncating = plain.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| bad(e.to_string()))?;
        let special = |t: &str| {
            plain
                .token_to_id(t)
                .ok_or_else(|| bad(format!("the vocabulary has no {t} token")))
        };
        Ok(TextEncoder {
            cls: special("[CLS]")?,
            sep: special("[SEP]")?,
            vocab_size: plain.get_vocab_size(true),
            max_len,
            plain,
            truncating,
        })
    }

    /// The longest input in tokens, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The token ids of input `index`, or an error naming the limit when it is
    /// too long and `truncate` is off.
    pub fn encode(
        &self,
        index: usize,
        input: &RawInput,
        truncate: bool,
    ) -> Result<Vec<u32>, EmbedError> {
        match input {
            RawInput::Text(text) => self.encode_text(index, text, truncate),
            RawInput::Tokens(ids) => self.wrap_tokens(index, ids, truncate),
        }
    }

    fn encode_text(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Vec<u32>, EmbedError> {
        let tokenize = |t: &Tokenizer| {
            t.encode_fast(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))
        };
        let ids = tokenize(&self.plain)?;
        if ids.len() <= self.max_len {
            return Ok(ids);
        }
        if !truncate {
            return Err(self.too_long(index, ids.len()));
        }
        tokenize(&self.truncating)
    }

    fn wrap_tokens(
        &self,
        index: usize,
        ids: &[u32],
        truncate: bool,
    ) -> Result<Vec<u32>, EmbedError> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(EmbedError::invalid(
                "input",
                format!(
                    "input {index} has token id {bad}, outside this model's vocabulary of {} ids",
                    self.vocab_size
                ),
            ));
        }
        let total = ids.len() + 2;
        if total > self.max_len && !truncate {
            return Err(self.too_long(index, total));
        }
        let keep = ids.len().min(self.max_len - 2);
        let mut out = Vec::with_capacity(keep + 2);
        out.push(self.cls);
        out.extend_from_slice(&ids[..keep]);
        out.push(self.sep);
        Ok(out)
    }

    fn too_long(&self, index: usize, tokens: usize) -> EmbedError {
        EmbedError::TooLong {
            index,
            tokens,
            limit: self.max_len,
        }
    }
}
