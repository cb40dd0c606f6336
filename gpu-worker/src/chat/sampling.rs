//! Choosing the next token from logits: greedy at temperature 0, otherwise
//! temperature-scaled softmax with nucleus (top-p) truncation, drawn from a
//! per-sequence ChaCha generator so that the same seed and request give the same
//! tokens on every run and every machine.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::llama::argmax;

/// How one sequence samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches this (1 keeps all).
    pub top_p: f32,
    pub seed: u64,
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch: (probability, token) pairs.
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
            scratch: Vec::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    /// The next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() || logits.len() < 2 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.scratch.clear();
        let mut total = 0.0f64;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) * inv_t).exp();
            if p > 0.0 {
                total += f64::from(p);
                self.scratch.push((p, i as u32));
            }
        }
        if self.params.top_p < 1.0 {
            self.scratch
                .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let target = f64::from(self.params.top_p) * total;
            let mut kept = 0.0f64;
            let mut keep = self.scratch.len();
            for (i, (p, _)) in self.scratch.iter().enumerate() {
                kept += f64::from(*p);
                if kept >= target {
                    keep = i + 1;
                    break;
                }
            }
            self.scratch.truncate(keep);
            total = kept.min(total);
        }
        // A uniform draw in [0, total) from 53 random bits.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0f64;
        for &(p, id) in &self.scratch {
            acc += f64::from(p);
            if u < acc {
                return id;
            }
        }
        self.scratch.last().map_or(argmax(logits), |&(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(params(0.0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Token 2 alone holds ~88% of the mass; top_p 0.5 must always choose it.
        let logits = [0.0, 1.0, 4.0, 0.5];
        let mut s = Sampler::new(params(1.0, 0.5, 3));
        assert!((0..200).all(|_| s.sample(&logits) == 2));
        // With top_p 1 the others appear too.
        let mut s = Sampler::new(params(1.0, 1.0, 3));
        assert!((0..200).any(|_| s.sample(&logits) != 2));
    }

    #[test]
    fn low_temperature_sharpens_towards_greedy() {
        let logits = [1.0, 1.2, 0.9];
        let mut s = Sampler::new(params(0.01, 1.0, 5));
        assert!((0..100).all(|_| s.sample(&logits) == 1));
    }
}
