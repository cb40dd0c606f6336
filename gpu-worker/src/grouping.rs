//! Splitting a window of waiting inputs into forward passes. Inputs are sorted by
//! length and cut into consecutive groups: for a model that pads, groups that
//! minimise an estimated cost, so short inputs are not padded to the length of long
//! ones ([`plan_groups`]); for one that packs inputs end to end, groups of about
//! equal cost, at least one per model thread ([`plan_packed`]).

/// Estimated fixed cost of one forward pass on a CPU, in token-equivalents
/// (small-matrix inefficiency). On a GPU a pass costs its kernel launches, worth far
/// more tokens: see `BatchConfig::pass_overhead_tokens`.
pub const CPU_PASS_OVERHEAD: usize = 48;
/// The same on a GPU: a pass of this BERT is about 150 kernel launches (roughly a
/// millisecond of host time), in which the GPU works through thousands of tokens.
pub const GPU_PASS_OVERHEAD: usize = 4096;
/// A padded row of length `L` costs `L * (1 + L / ATTENTION_SCALE)`: the linear
/// layers are linear in `L`, attention is quadratic.
const ATTENTION_SCALE: usize = 1024;

fn cost(overhead: usize, rows: usize, width: usize) -> usize {
    overhead + rows * width + rows * width * width / ATTENTION_SCALE
}

/// Groups `lengths` (by index) into forward passes of at most `max_size` inputs and
/// at most `max_tokens` padded tokens (a single input always fits on its own),
/// each pass costing `overhead` token-equivalents on top of its padded tokens.
/// Every index appears exactly once; groups come shortest first.
pub fn plan_groups(
    lengths: &[usize],
    max_tokens: usize,
    max_size: usize,
    overhead: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let sorted: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
    let m = sorted.len();
    let max_size = max_size.max(1);
    // best[k]: the cheapest plan for the first k sorted inputs; cut[k]: where its
    // last group starts.
    let mut best = vec![usize::MAX; m + 1];
    let mut cut = vec![0usize; m + 1];
    best[0] = 0;
    for end in 1..=m {
        let width = sorted[end - 1];
        for start in (end.saturating_sub(max_size)..end).rev() {
            let rows = end - start;
            if rows > 1 && rows * width > max_tokens {
                break;
            }
            if best[start] == usize::MAX {
                continue;
            }
            let total = best[start].saturating_add(cost(overhead, rows, width));
            if total < best[end] {
                best[end] = total;
                cut[end] = start;
            }
        }
    }
    let mut groups = Vec::new();
    let mut end = m;
    while end > 0 {
        let start = cut[end];
        groups.push(order[start..end].to_vec());
        end = start;
    }
    groups.reverse();
    groups
}

/// The cost of one input in a packed pass: its tokens, plus attention's share.
fn packed_cost(len: usize) -> usize {
    len + len * len / ATTENTION_SCALE
}

/// Groups `lengths` (by index) for a model that packs its inputs (no padding):
/// sorted by length, cut into the fewest groups that keep each within `max_tokens`
/// real tokens and `max_size` inputs, but at least `workers` (so every model thread
/// gets a share of one big request), of about equal cost each. Every index appears
/// exactly once; a single input always fits on its own; groups come shortest first.
pub fn plan_packed(
    lengths: &[usize],
    max_tokens: usize,
    max_size: usize,
    workers: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let n = order.len();
    if n == 0 {
        return Vec::new();
    }
    let (max_tokens, max_size) = (max_tokens.max(1), max_size.max(1));
    let tokens: usize = lengths.iter().sum();
    let count = tokens
        .div_ceil(max_tokens)
        .max(n.div_ceil(max_size))
        .max(workers.min(n))
        .max(1);
    let total: usize = lengths.iter().map(|&l| packed_cost(l)).sum();
    let share = (total as f64 / count as f64).max(1.0);
    let mut groups: Vec<Vec<usize>> = Vec::with_capacity(count);
    let (mut done, mut group_tokens, mut target) = (0usize, 0usize, 0usize);
    for i in order {
        let (len, cost) = (lengths[i], packed_cost(lengths[i]));
        // The group this input's midpoint falls in, by cumulative cost.
        let wanted = (((done as f64 + cost as f64 / 2.0) / share) as usize).min(count - 1);
        let full = groups
            .last()
            .is_some_and(|g| g.len() >= max_size || group_tokens + len > max_tokens);
        if groups.is_empty() || wanted > target || full {
            groups.push(Vec::new());
            group_tokens = 0;
            target = target.max(wanted);
        }
        if let Some(group) = groups.last_mut() {
            group.push(i);
        }
        group_tokens += len;
        done += cost;
    }
    groups
}

/// Splits the costliest groups in halves until there are at least `workers`
/// groups (or every group is a single input), so parallel model threads all get
/// work from one big request.
pub fn split_for_workers(
    mut groups: Vec<Vec<usize>>,
    lengths: &[usize],
    workers: usize,
) -> Vec<Vec<usize>> {
    while groups.len() < workers {
        let group_cost =
            |g: &Vec<usize>| cost(0, g.len(), g.iter().map(|&i| lengths[i]).max().unwrap_or(0));
        let Some((at, _)) = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.len() > 1)
            .max_by_key(|(_, g)| group_cost(g))
        else {
            break;
        };
        let mut first = groups.remove(at);
        let second = first.split_off(first.len() / 2);
        groups.insert(at, second);
        groups.insert(at, first);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_pass_overhead_packs_mixed_lengths_into_fewer_passes() {
        let lengths: Vec<usize> = (3..259).collect();
        let cpu = check(&lengths, 1 << 20, 1024);
        let gpu = plan_groups(&lengths, 1 << 20, 1024, 1 << 16);
        assert!(cpu.len() > 1, "{cpu:?}");
        assert_eq!(gpu.len(), 1);
    }

    fn check(lengths: &[usize], max_tokens: usize, max_size: usize) -> Vec<Vec<usize>> {
        let groups = plan_groups(lengths, max_tokens, max_size, CPU_PASS_OVERHEAD);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for g in &groups {
            let width = g.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(g.len() <= max_size);
            assert!(g.len() == 1 || g.len() * width <= max_tokens);
        }
        groups
    }

    #[test]
    fn similar_lengths_share_one_pass() {
        let lengths = vec![14, 15, 13, 16, 15, 14, 12, 15];
        assert_eq!(check(&lengths, 16384, 64).len(), 1);
    }

    #[test]
    fn short_and_long_inputs_are_not_padded_together() {
        let mut lengths = vec![5; 32];
        lengths.extend(vec![250; 32]);
        let groups = check(&lengths, 16384, 256);
        assert_eq!(groups.len(), 2);
        assert!(groups[0].iter().all(|&i| lengths[i] == 5));
    }

    #[test]
    fn one_big_group_is_split_for_parallel_workers() {
        let lengths = vec![15; 64];
        let groups = split_for_workers(
            plan_groups(&lengths, 16384, 256, CPU_PASS_OVERHEAD),
            &lengths,
            2,
        );
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![32, 32]
        );
        let single = split_for_workers(plan_groups(&[4], 16384, 256, CPU_PASS_OVERHEAD), &[4], 4);
        assert_eq!(single, vec![vec![0]]);
    }

    #[test]
    fn packed_groups_balance_cost_over_workers_within_the_limits() {
        let lengths: Vec<usize> = (0..128).map(|i| 3 + i * 247 / 127).collect();
        let groups = plan_packed(&lengths, 16384, 256, 2);
        assert_eq!(groups.len(), 2);
        let cost = |g: &Vec<usize>| g.iter().map(|&i| packed_cost(lengths[i])).sum::<usize>();
        let (a, b) = (cost(&groups[0]), cost(&groups[1]));
        assert!(a.abs_diff(b) <= packed_cost(250), "{a} vs {b}");
        // Short inputs: one group per worker, none per input.
        assert_eq!(plan_packed(&[15; 64], 16384, 256, 2).len(), 2);
        for (max_tokens, max_size) in [(1000, 256), (100, 7), (1, 1)] {
            let groups = plan_packed(&lengths, max_tokens, max_size, 2);
            let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for g in &groups {
                let tokens: usize = g.iter().map(|&i| lengths[i]).sum();
                assert!(g.len() <= max_size && (g.len() == 1 || tokens <= max_tokens));
            }
        }
        assert!(plan_packed(&[], 100, 4, 2).is_empty());
        assert_eq!(plan_packed(&[5], 100, 4, 2), vec![vec![0]]);
    }

    #[test]
    fn limits_bound_every_pass() {
        let lengths: Vec<usize> = (0..300).map(|i| 3 + (i * 37) % 250).collect();
        check(&lengths, 4096, 32);
        check(&lengths, 256, 8);
        assert_eq!(check(&[300, 2], 100, 4).len(), 2);
        assert!(check(&[], 100, 4).is_empty());
    }
}
