//! The forward pass on the CPU, on plain buffers: this crate's quantized kernels for
//! the projections ([`super::kernels`]) and ggml's formulas for the rest (RMSNorm with
//! its sum of squares in f64, RoPE on adjacent pairs, SiLU-gated feed-forward), so a
//! step costs no tensor bookkeeping between the matmuls. It runs inside the model's
//! thread pool, which the matmuls and attention split their work over.

use candle_core::Tensor;

use super::attention::{attend, Shape};
use super::llama::{spans, Chunk, Embedding, Llama, Step};

/// `out = x / rms(x) * weight`, row by row (ggml's `rms_norm` then `mul`).
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (row, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum: f64 = row.iter().map(|v| f64::from(v * v)).sum();
        let mean = (sum / n as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// Rotates adjacent pairs of every head of one token by its position's angles.
fn rope(heads: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in heads.chunks_exact_mut(2 * half) {
        for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

/// `silu(gate) * up` for rows laid out `[gate | up]`.
fn swiglu(gate_up: &[f32], width: usize, out: &mut [f32]) {
    for (row, dst) in gate_up
        .chunks_exact(2 * width)
        .zip(out.chunks_exact_mut(width))
    {
        let (gate, up) = row.split_at(width);
        for ((o, g), u) in dst.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn embed(model: &Llama, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
    let hidden = model.config.hidden;
    match &model.embed {
        Embedding::Packed(table) => {
            let mut x = vec![0f32; ids.len() * hidden];
            for (row, &id) in x.chunks_mut(hidden).zip(ids) {
                table.dequantize_row(id as usize, row);
            }
            Ok(x)
        }
        Embedding::Dense(table) => {
            let ids = Tensor::from_slice(ids, ids.len(), table.device())?;
            table.index_select(&ids, 0)?.flatten_all()?.to_vec1()
        }
    }
}

pub(super) fn forward(
    model: &Llama,
    step: &Step,
    chunks: &mut [Chunk],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let c = &model.config;
    let (h, kv, d) = (c.heads, c.kv_heads, c.head_dim);
    let (hidden, inter) = (c.hidden, c.intermediate);
    let (qw, kw) = (h * d, kv * d);
    let t = step.ids.len();
    let half = d / 2;
    let eps = c.rms_eps as f32;
    let shape = Shape {
        heads: h,
        kv_heads: kv,
        head_dim: d,
    };
    let pool = &model.pool;
    let mut x = embed(model, &step.ids)?;
    let mut hn = vec![0f32; t * hidden];
    let mut q = vec![0f32; t * qw];
    let mut k = vec![0f32; t * kw];
    let mut v = vec![0f32; t * kw];
    let mut act = vec![0f32; t * inter];
    for (li, layer) in model.layers.iter().enumerate() {
        rms_norm(&x, &layer.attn_norm.values, eps, &mut hn);
        let qkv = layer.qkv.forward(&hn, hidden, pool)?;
        for (ti, row) in qkv.chunks_exact(qw + 2 * kw).enumerate() {
            let at = step.positions[ti] as usize * half;
            let (cos, sin) = (&model.cos[at..at + half], &model.sin[at..at + half]);
            let (qd, kd) = (&mut q[ti * qw..][..qw], &mut k[ti * kw..][..kw]);
            qd.copy_from_slice(&row[..qw]);
            kd.copy_from_slice(&row[qw..qw + kw]);
            v[ti * kw..][..kw].copy_from_slice(&row[qw + kw..]);
            rope(qd, cos, sin);
            rope(kd, cos, sin);
        }
        let attn = attend(pool, li, shape, &mut spans(chunks), &q, &k, &v)
            .map_err(candle_core::Error::Msg)?;
        add(&mut x, &layer.out.forward(&attn, qw, pool)?);
        rms_norm(&x, &layer.ffn_norm.values, eps, &mut hn);
        let gu = layer.gate_up.forward(&hn, hidden, pool)?;
        swiglu(&gu, inter, &mut act);
        add(&mut x, &layer.down.forward(&act, inter, pool)?);
    }
    if step.rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut last = Vec::with_capacity(step.rows.len() * hidden);
    for &r in &step.rows {
        last.extend_from_slice(&x[r as usize * hidden..][..hidden]);
    }
    let mut normed = vec![0f32; last.len()];
    rms_norm(&last, &model.norm.values, eps, &mut normed);
    let logits = model.output.forward(&normed, hidden, pool)?;
    Ok(logits.chunks_exact(c.vocab).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_each_row_to_unit_rms_then_by_the_weight() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let mut out = [0.0; 8];
        rms_norm(&x, &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        let r = (25.0f32 / 4.0).sqrt();
        assert_eq!(&out[..4], &[3.0 / r, 8.0 / r, 0.0, 0.0]);
        assert_eq!(&out[4..], &[1.0, 2.0, 1.0, 1.0]);
    }

    #[test]
    fn rope_rotates_adjacent_pairs_of_every_head() {
        // Two heads of dim 4: pairs (0,1), (2,3) per head; a quarter turn, then none.
        let mut x = [1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 3.0, 4.0];
        rope(&mut x, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(x, [0.0, 1.0, 1.0, 2.0, -1.0, 0.0, 3.0, 4.0]);
    }

    #[test]
    fn swiglu_gates_up_by_silu_of_gate() {
        let mut out = [0.0; 2];
        swiglu(&[0.0, 2.0, 5.0, 3.0], 2, &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2.0f32).exp()) * 3.0).abs() < 1e-6);
    }
}
