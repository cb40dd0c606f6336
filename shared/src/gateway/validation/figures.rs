//! The figures of a validation: how closely two versions' vectors agree item by
//! item (cosine), and how closely their retrieval agrees (the overlap of each
//! query's top-k neighbours over a corpus).

use serde::{Deserialize, Serialize};

/// Neighbours compared per query.
pub const TOP_K: usize = 10;

/// Agreement of a candidate's vectors with the live version's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Figures {
    /// Items embedded by both versions (the golden set and the corpus).
    pub items: usize,
    /// The lowest cosine between a candidate vector and the live one of the same item.
    pub cosine_min: f64,
    pub cosine_mean: f64,
    /// The item (`g…` golden, `c…` corpus) with the lowest cosine.
    pub worst_item: String,
    /// Golden items used as queries, and the corpus they searched.
    pub queries: usize,
    pub corpus: usize,
    /// Neighbours compared per query (10, or the corpus size when smaller).
    pub k: usize,
    /// Mean over the queries of |top-k(candidate) ∩ top-k(live)| / k.
    pub overlap_mean: f64,
    pub overlap_min: f64,
}

/// Cosine of two vectors; 0 when either has no length, differs in length or
/// holds a non-finite value (such vectors agree with nothing).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let c = dot / (na.sqrt() * nb.sqrt());
    if c.is_finite() {
        c.clamp(-1.0, 1.0)
    } else {
        0.0
    }
}

/// The vector scaled to unit length (zeros stay zeros; non-finite values become 0).
fn unit(v: &[f32]) -> Vec<f64> {
    let v: Vec<f64> = v
        .iter()
        .map(|x| f64::from(*x))
        .map(|x| if x.is_finite() { x } else { 0.0 })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v
    }
}

/// Indices of the `k` corpus vectors nearest `query` by cosine, best first
/// (ties: the lower index first).
pub fn top_k(query: &[f64], corpus: &[Vec<f64>], k: usize) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = corpus
        .iter()
        .enumerate()
        .map(|(i, c)| (query.iter().zip(c).map(|(a, b)| a * b).sum::<f64>(), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

/// |a ∩ b| / k: the share of one top-k list the other holds.
pub fn overlap(a: &[usize], b: &[usize], k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let common = a.iter().filter(|i| b.contains(i)).count();
    common as f64 / k as f64
}

/// One version's vectors of the golden set and of the corpus.
pub struct Vectors<'a> {
    pub golden: &'a [Vec<f32>],
    pub corpus: &'a [Vec<f32>],
}

/// The figures of `candidate` against `live`; `ids` name the golden items then
/// the corpus items, in order. Both sides hold one vector per item.
pub fn compare(candidate: &Vectors<'_>, live: &Vectors<'_>, ids: &[&str]) -> Figures {
    let pairs: Vec<(&Vec<f32>, &Vec<f32>)> = candidate
        .golden
        .iter()
        .zip(live.golden)
        .chain(candidate.corpus.iter().zip(live.corpus))
        .collect();
    let cosines: Vec<f64> = pairs.iter().map(|(a, b)| cosine(a, b)).collect();
    let (worst, cosine_min) = cosines
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    let k = TOP_K.min(candidate.corpus.len());
    let corpus_c: Vec<Vec<f64>> = candidate.corpus.iter().map(|v| unit(v)).collect();
    let corpus_l: Vec<Vec<f64>> = live.corpus.iter().map(|v| unit(v)).collect();
    let overlaps: Vec<f64> = candidate
        .golden
        .iter()
        .zip(live.golden)
        .map(|(qc, ql)| {
            let a = top_k(&unit(qc), &corpus_c, k);
            let b = top_k(&unit(ql), &corpus_l, k);
            overlap(&a, &b, k)
        })
        .collect();
    Figures {
        items: cosines.len(),
        cosine_min,
        cosine_mean: mean(&cosines),
        worst_item: ids.get(worst).map_or_else(String::new, |s| s.to_string()),
        queries: overlaps.len(),
        corpus: candidate.corpus.len(),
        k,
        overlap_mean: mean(&overlaps),
        overlap_min: overlaps.iter().copied().fold(1.0, f64::min),
    }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn cosine_of_known_pairs() {
        assert!(close(cosine(&[1.0, 0.0], &[2.0, 0.0]), 1.0));
        assert!(close(cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0));
        assert!(close(cosine(&[1.0, 0.0], &[-1.0, 0.0]), -1.0));
        assert!(close(cosine(&[1.0, 1.0], &[1.0, 0.0]), 1.0 / 2f64.sqrt()));
        // No length, other lengths, NaN: no agreement.
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[f32::NAN, 1.0], &[1.0, 1.0]), 0.0);
        assert_eq!(cosine(&[], &[]), 0.0);
    }

    #[test]
    fn top_k_orders_by_similarity_and_breaks_ties_by_index() {
        let corpus: Vec<Vec<f64>> = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]]
            .iter()
            .map(|v| unit(&v.map(|x| x as f32)))
            .collect();
        assert_eq!(top_k(&[1.0, 0.0], &corpus, 3), vec![0, 3, 2]);
        assert_eq!(top_k(&[0.0, 1.0], &corpus, 2), vec![1, 2]);
        assert_eq!(top_k(&[1.0, 0.0], &corpus, 9).len(), 5);
    }

    #[test]
    fn overlap_is_the_shared_share_of_k() {
        assert_eq!(overlap(&[1, 2, 3, 4], &[4, 3, 2, 1], 4), 1.0);
        assert_eq!(overlap(&[1, 2, 3, 4], &[1, 2, 8, 9], 4), 0.5);
        assert_eq!(overlap(&[1, 2], &[3, 4], 2), 0.0);
        assert_eq!(overlap(&[], &[], 0), 1.0);
    }

    /// Vectors on a circle: item i at angle i * step.
    fn circle(n: usize, step: f64, turn: f64) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| {
                let a = i as f64 * step + turn;
                vec![a.cos() as f32, a.sin() as f32]
            })
            .collect()
    }

    #[test]
    fn identical_vectors_agree_fully() {
        let golden = circle(4, 0.7, 0.0);
        let corpus = circle(30, 0.2, 0.05);
        let v = Vectors {
            golden: &golden,
            corpus: &corpus,
        };
        let ids: Vec<String> = (0..34).map(|i| format!("i{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let f = compare(&v, &v, &ids);
        assert_eq!((f.items, f.queries, f.corpus, f.k), (34, 4, 30, 10));
        assert!(close(f.cosine_min, 1.0) && close(f.cosine_mean, 1.0));
        assert_eq!((f.overlap_mean, f.overlap_min), (1.0, 1.0));
    }

    #[test]
    fn a_rotated_corpus_lowers_cosine_and_overlap() {
        let golden = circle(4, 0.7, 0.0);
        let corpus = circle(30, 0.2, 0.05);
        // The candidate's corpus vectors are turned by half a radian: every
        // corpus item's cosine is cos(0.5), and the queries find other neighbours.
        let turned = circle(30, 0.2, 0.55);
        let live = Vectors {
            golden: &golden,
            corpus: &corpus,
        };
        let candidate = Vectors {
            golden: &golden,
            corpus: &turned,
        };
        let ids: Vec<String> = (0..34).map(|i| format!("i{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let f = compare(&candidate, &live, &ids);
        assert!((f.cosine_min - 0.5f64.cos()).abs() < 1e-6, "{f:?}");
        let worst: usize = f.worst_item[1..].parse().unwrap();
        assert!(worst >= 4, "a corpus item is the worst: {f:?}");
        let expected_mean = (4.0 + 30.0 * 0.5f64.cos()) / 34.0;
        assert!((f.cosine_mean - expected_mean).abs() < 1e-6, "{f:?}");
        // Turning by 0.5 = 2.5 steps of 0.2 shifts each top-10 by 2 or 3 items.
        assert!(f.overlap_mean < 0.85 && f.overlap_mean > 0.6, "{f:?}");
        assert!(f.overlap_min <= f.overlap_mean);
    }

    #[test]
    fn a_small_corpus_compares_all_of_it() {
        let golden = circle(2, 1.0, 0.0);
        let corpus = circle(3, 1.0, 0.0);
        let v = Vectors {
            golden: &golden,
            corpus: &corpus,
        };
        let f = compare(&v, &v, &["a", "b", "c", "d", "e"]);
        assert_eq!(f.k, 3);
        assert_eq!(f.overlap_mean, 1.0);
    }
}
