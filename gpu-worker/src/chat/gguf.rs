//! Reading a llama-architecture GGUF file: the hyper-parameters, the tokenizer's
//! metadata and the chat template, each checked, so that a corrupt or foreign file is
//! a clear load error naming what is wrong (candle's reader bounds every length).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::ArtifactError;

/// The model's shape, from the `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f64,
}

impl LlamaConfig {
    /// Floats one token occupies in the KV cache (keys and values, every layer).
    pub fn kv_floats_per_token(&self) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim
    }
}

/// The tokenizer's metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone)]
pub struct VocabMeta {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    /// llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
    pub types: Vec<i32>,
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: u32,
    pub add_bos: bool,
}

/// An opened GGUF file: its parsed header, kept for reading the tensors.
pub struct GgufFile {
    pub content: Content,
    pub reader: BufReader<File>,
    pub config: LlamaConfig,
    pub vocab: VocabMeta,
    pub chat_template: String,
}

fn bad(reason: impl Into<String>) -> ArtifactError {
    ArtifactError::BadFile {
        file: "model.gguf".into(),
        reason: reason.into(),
    }
}

struct Meta<'a>(&'a HashMap<String, Value>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value, ArtifactError> {
        self.0
            .get(key)
            .ok_or_else(|| bad(format!("metadata {key} is missing")))
    }

    fn usize(&self, key: &str) -> Result<usize, ArtifactError> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(n) => u64::from(*n),
            Value::U16(n) => u64::from(*n),
            Value::U32(n) => u64::from(*n),
            Value::U64(n) => *n,
            Value::I32(n) => u64::try_from(*n).map_err(|_| bad(format!("{key} is negative")))?,
            Value::I64(n) => u64::try_from(*n).map_err(|_| bad(format!("{key} is negative")))?,
            other => return Err(bad(format!("{key} is not an integer ({other:?})"))),
        };
        usize::try_from(n).map_err(|_| bad(format!("{key} is out of range")))
    }

    fn f64(&self, key: &str) -> Result<f64, ArtifactError> {
        match self.get(key)? {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            other => Err(bad(format!("{key} is not a float ({other:?})"))),
        }
    }

    fn string(&self, key: &str) -> Result<&str, ArtifactError> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            _ => Err(bad(format!("{key} is not a string"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ArtifactError> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(bad(format!("{key} holds a non-string"))),
                })
                .collect(),
            _ => Err(bad(format!("{key} is not an array"))),
        }
    }

    fn ints(&self, key: &str) -> Result<Vec<i32>, ArtifactError> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.to_i32()
                        .map_err(|_| bad(format!("{key} holds a non-i32")))
                })
                .collect(),
            _ => Err(bad(format!("{key} is not an array"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.0.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }

    fn token_id(&self, key: &str, vocab: usize) -> Result<Option<u32>, ArtifactError> {
        if !self.0.contains_key(key) {
            return Ok(None);
        }
        let id = self.usize(key)?;
        if id >= vocab {
            return Err(bad(format!("{key} {id} is outside the vocabulary")));
        }
        u32::try_from(id)
            .map(Some)
            .map_err(|_| bad(format!("{key} is out of range")))
    }
}

fn config(meta: &Meta) -> Result<LlamaConfig, ArtifactError> {
    let arch = meta.string("general.architecture")?;
    if arch != "llama" {
        return Err(bad(format!(
            "architecture {arch:?} is not supported (llama only)"
        )));
    }
    let hidden = meta.usize("llama.embedding_length")?;
    let heads = meta.usize("llama.attention.head_count")?;
    let kv_heads = meta.usize("llama.attention.head_count_kv")?;
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
        return Err(bad(format!(
            "inconsistent attention shape: {hidden} wide, {heads} heads, {kv_heads} KV heads"
        )));
    }
    let head_dim = hidden / heads;
    let rope_dim = meta.usize("llama.rope.dimension_count").unwrap_or(head_dim);
    if rope_dim != head_dim || head_dim % 2 != 0 {
        return Err(bad(format!(
            "RoPE over {rope_dim} of {head_dim} dimensions is not supported"
        )));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?.len();
    let vocab = meta.usize("llama.vocab_size").unwrap_or(tokens);
    let config = LlamaConfig {
        layers: meta.usize("llama.block_count")?,
        hidden,
        intermediate: meta.usize("llama.feed_forward_length")?,
        heads,
        kv_heads,
        head_dim,
        vocab,
        context: meta.usize("llama.context_length")?,
        rope_base: meta.f64("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
        rms_eps: meta.f64("llama.attention.layer_norm_rms_epsilon")?,
    };
    let sane = (1..=256).contains(&config.layers)
        && (1..=65_536).contains(&config.hidden)
        && (1..=262_144).contains(&config.intermediate)
        && (1..=1_048_576).contains(&config.context)
        && vocab == tokens
        && config.rms_eps > 0.0
        && config.rope_base > 0.0;
    if !sane {
        return Err(bad(format!("implausible hyper-parameters: {config:?}")));
    }
    Ok(config)
}

fn vocab(meta: &Meta, size: usize) -> Result<VocabMeta, ArtifactError> {
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer model {model:?} is not supported (byte-level BPE, \"gpt2\", only)"
        )));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types = meta.ints("tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(bad("token_type and tokens differ in length"));
    }
    let eos = meta
        .token_id("tokenizer.ggml.eos_token_id", size)?
        .ok_or_else(|| bad("metadata tokenizer.ggml.eos_token_id is missing"))?;
    Ok(VocabMeta {
        merges: meta.strings("tokenizer.ggml.merges")?,
        pre: meta
            .string("tokenizer.ggml.pre")
            .unwrap_or("default")
            .to_string(),
        bos: meta.token_id("tokenizer.ggml.bos_token_id", size)?,
        add_bos: meta.bool_or("tokenizer.ggml.add_bos_token", false),
        eos,
        tokens,
        types,
    })
}

impl GgufFile {
    /// Opens and checks `path`.
    pub fn open(path: &Path) -> Result<GgufFile, ArtifactError> {
        let file = File::open(path).map_err(|source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        super::gguf_align::check(&mut reader).map_err(bad)?;
        let content =
            Content::read(&mut reader).map_err(|e| bad(format!("not a readable GGUF: {e}")))?;
        let meta = Meta(&content.metadata);
        let config = config(&meta)?;
        let vocab = vocab(&meta, config.vocab)?;
        let chat_template = meta.string("tokenizer.chat_template")?.to_string();
        Ok(GgufFile {
            content,
            reader,
            config,
            vocab,
            chat_template,
        })
    }

    /// Reads one tensor onto the CPU, checking its shape.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<candle_core::quantized::QTensor, ArtifactError> {
        // The declared shape first: candle sizes the read from it unchecked.
        match self.content.tensor_infos.get(name) {
            Some(info) if info.shape.dims() != shape => {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                )))
            }
            _ => {}
        }
        let t = self
            .content
            .tensor(&mut self.reader, name, &candle_core::Device::Cpu)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        if t.shape().dims() != shape {
            return Err(bad(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape().dims()
            )));
        }
        Ok(t)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}
