//! The forward pass as candle tensor ops on the model's device (CUDA): candle's
//! quantized matmuls, norms, RoPE and activations; attention on the host per sequence
//! ([`super::attention`]).

use candle_core::{DType, Tensor};

use super::attention::{attend, Shape};
use super::llama::{spans, Chunk, Embedding, Llama, Step};

pub(super) fn forward(
    model: &Llama,
    step: &Step,
    chunks: &mut [Chunk],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let c = &model.config;
    let (h, kv, d) = (c.heads, c.kv_heads, c.head_dim);
    let device = &model.device;
    let t = step.ids.len();
    let half = d / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for &p in &step.positions {
        let at = p as usize * half;
        cos.extend_from_slice(&model.cos[at..at + half]);
        sin.extend_from_slice(&model.sin[at..at + half]);
    }
    let cos = Tensor::from_vec(cos, (t, 1, half), device)?;
    let sin = Tensor::from_vec(sin, (t, 1, half), device)?;
    let ids = Tensor::from_slice(&step.ids, t, device)?;
    let mut x = match &model.embed {
        Embedding::Dense(table) => table.index_select(&ids, 0)?,
        Embedding::Packed(table) => {
            let mut rows = vec![0f32; t * c.hidden];
            for (row, &id) in rows.chunks_mut(c.hidden).zip(&step.ids) {
                table.dequantize_row(id as usize, row);
            }
            Tensor::from_vec(rows, (t, c.hidden), device)?
        }
    };
    let eps = c.rms_eps as f32;
    let shape = Shape {
        heads: h,
        kv_heads: kv,
        head_dim: d,
    };
    let pool = &model.pool;
    for (li, layer) in model.layers.iter().enumerate() {
        let hn = candle_nn::ops::rms_norm(&x, &layer.attn_norm.tensor, eps)?;
        let qkv = layer.qkv.forward_tensor(&hn, pool)?;
        let q = qkv.narrow(1, 0, h * d)?.reshape((t, h, 1, d))?;
        let k = qkv.narrow(1, h * d, kv * d)?.reshape((t, kv, 1, d))?;
        let v = qkv.narrow(1, (h + kv) * d, kv * d)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
        let flat = |x: &Tensor| x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (qv, kv_, vv) = (flat(&q)?, flat(&k)?, flat(&v)?);
        let attn = attend(pool, li, shape, &mut spans(chunks), &qv, &kv_, &vv)
            .map_err(candle_core::Error::Msg)?;
        let attn = Tensor::from_vec(attn, (t, h * d), device)?;
        x = (x + layer.out.forward_tensor(&attn, pool)?)?;
        let hn = candle_nn::ops::rms_norm(&x, &layer.ffn_norm.tensor, eps)?;
        let gu = layer.gate_up.forward_tensor(&hn, pool)?;
        let i = c.intermediate;
        let act = (candle_nn::ops::silu(&gu.narrow(1, 0, i)?)? * gu.narrow(1, i, i)?)?;
        x = (x + layer.down.forward_tensor(&act, pool)?)?;
    }
    if step.rows.is_empty() {
        return Ok(Vec::new());
    }
    let rows = Tensor::from_slice(&step.rows, step.rows.len(), device)?;
    let last = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?, &model.norm.tensor, eps)?;
    model
        .output
        .forward_tensor(&last, pool)?
        .to_dtype(DType::F32)?
        .to_vec2()
}
