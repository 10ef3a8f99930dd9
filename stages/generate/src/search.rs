//! The decoding loop over a batch of prompts: greedy search, sampling, and beam search.
//!
//! Prompts of different lengths are left-padded with the pad token and masked out; positions
//! count the real tokens only (max(cumsum(mask) - 1, 0)), so each row gets the tokens it would get
//! alone. Each row has its own budget of new tokens, its own random stream and its own stopping
//! point; finished rows are fed the pad token until the whole batch is done. Penalties and
//! length normalization use the row's real tokens, never the padding, for the same reason.

use std::collections::HashSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::lm::Lm;

/// How tokens are chosen.
#[derive(Debug, Clone)]
pub struct Search {
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub num_beams: usize,
    pub length_penalty: f32,
    pub eos: Vec<i64>,
    pub pad: i64,
}

/// One prompt to continue.
#[derive(Clone)]
pub struct Request {
    pub prompt: Vec<i64>,
    /// New tokens this row may generate at most.
    pub budget: usize,
    pub rng: ChaCha8Rng,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Eos,
    Length,
    Stop,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// A row's continuation (the new tokens only).
#[derive(Debug, Clone)]
pub struct Generated {
    pub tokens: Vec<i64>,
    pub finish: Finish,
}

/// The batch's padded inputs for the first step.
struct Padded {
    ids: Vec<i64>,
    mask: Vec<i64>,
    positions: Vec<i64>,
}

fn pad_left(prompts: &[&[i64]], pad: i64) -> Padded {
    let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0).max(1);
    let (mut ids, mut mask, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for p in prompts {
        let padding = width - p.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0, padding).chain(std::iter::repeat_n(1, p.len())));
        positions.extend(std::iter::repeat_n(0, padding).chain(0..p.len() as i64));
    }
    Padded { ids, mask, positions }
}

/// Runs the decoder over `requests` until every row is done. `stopped(row, new_tokens)` tells
/// whether a stop string has appeared in a row's continuation (greedy and sampling only).
pub fn generate(
    lm: &mut Lm,
    search: &Search,
    requests: &mut [Request],
    stopped: &dyn Fn(usize, &[i64]) -> bool,
) -> pipeline::Result<Vec<Generated>> {
    if search.num_beams > 1 {
        return beam_search(lm, search, requests);
    }
    let n = requests.len();
    let eos: HashSet<i64> = search.eos.iter().copied().collect();
    let prompts: Vec<&[i64]> = requests.iter().map(|r| r.prompt.as_slice()).collect();
    let Padded { mut ids, mut mask, mut positions } = pad_left(&prompts, search.pad);
    let mut out: Vec<Generated> =
        requests.iter().map(|_| Generated { tokens: Vec::new(), finish: Finish::Length }).collect();
    let mut done: Vec<bool> = requests.iter().map(|r| r.budget == 0).collect();
    let cached = lm.kv.is_some();
    let mut cache = lm.empty_cache(n)?;
    // Without a cache the whole sequence is re-fed each step.
    let mut all_ids = ids.clone();
    let mut all_positions = positions.clone();
    // One logits buffer for every step; each row's logits are penalized and sampled in place.
    let mut logits = Vec::new();
    // After the first step the cache moves into buffers sized for the longest row (prompt width
    // plus the largest budget), which the decoder then writes into; a model whose cache does not
    // fit them keeps it as ORT values.
    let longest = ids.len() / n.max(1) + requests.iter().map(|r| r.budget).max().unwrap_or(0);
    let mut buffers = None;
    let mut first = true;
    while done.iter().any(|d| !d) {
        if let Some(buffers) = buffers.as_mut() {
            lm.step_buffered(&ids, &positions, &mask, buffers, &mut logits)?;
        } else if cached {
            cache = lm.step(n, &ids, &positions, &mask, std::mem::take(&mut cache), &mut logits)?;
            if std::mem::take(&mut first) {
                buffers = lm.buffers(n, &cache, longest)?;
                if buffers.is_some() {
                    cache = Vec::new();
                }
            }
        } else {
            lm.step(n, &all_ids, &all_positions, &mask, Vec::new(), &mut logits)?;
        }
        let vocab = logits.len() / n;
        let mut next = vec![search.pad; n];
        for (r, row) in logits.chunks_exact_mut(vocab).enumerate() {
            if done[r] {
                continue;
            }
            let seen = requests[r].prompt.iter().chain(&out[r].tokens);
            penalize(row, seen, search.repetition_penalty);
            let token = if search.do_sample { sample(row, search, &mut requests[r].rng) } else { argmax(row) } as i64;
            next[r] = token;
            out[r].tokens.push(token);
            if eos.contains(&token) {
                (done[r], out[r].finish) = (true, Finish::Eos);
            } else if stopped(r, &out[r].tokens) {
                (done[r], out[r].finish) = (true, Finish::Stop);
            } else if out[r].tokens.len() >= requests[r].budget {
                (done[r], out[r].finish) = (true, Finish::Length);
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        let last: Vec<i64> = (0..n).map(|r| positions[(r + 1) * (positions.len() / n) - 1] + 1).collect();
        mask = append_column(&mask, n, &vec![1; n]);
        if cached {
            ids = next;
            positions = last;
        } else {
            all_ids = append_column(&all_ids, n, &next);
            all_positions = append_column(&all_positions, n, &last);
            positions = last;
        }
    }
    if let Some(buffers) = buffers {
        lm.recycle(buffers);
    }
    Ok(out)
}

/// `matrix` (rows x k) with one more column.
fn append_column(matrix: &[i64], rows: usize, column: &[i64]) -> Vec<i64> {
    let k = matrix.len() / rows;
    let mut out = Vec::with_capacity(matrix.len() + rows);
    for r in 0..rows {
        out.extend_from_slice(&matrix[r * k..(r + 1) * k]);
        out.push(column[r]);
    }
    out
}

/// The index of the first largest logit (NaNs are passed over; 0 when the first is NaN or all
/// are).
fn argmax(logits: &[f32]) -> usize {
    match logits.first() {
        None => return 0,
        Some(v) if v.is_nan() => return 0,
        Some(_) => {}
    }
    // The largest value over 16 lanes (a form the compiler turns into vector max instructions),
    // then the first position holding it: two passes over the row, both vectorized, instead of
    // one compare-and-branch per logit.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = if *v > *lane { *v } else { *lane };
        }
    }
    let max = lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m });
    logits.iter().position(|v| *v == max).unwrap_or(0)
}

/// The repetition penalty of CTRL (as Hugging Face applies it): the logit of every token already
/// in the sequence is divided by `penalty` when positive and multiplied when negative.
fn penalize<'a>(logits: &mut [f32], seen: impl Iterator<Item = &'a i64>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = HashSet::new();
    for &t in seen {
        let Some(v) = usize::try_from(t).ok().and_then(|i| logits.get_mut(i)) else { continue };
        if done.insert(t) {
            *v = if *v < 0.0 { *v * penalty } else { *v / penalty };
        }
    }
}

/// Samples a token: temperature, then top-k, then top-p (nucleus), then a draw from the softmax
/// of what is left, in token order, with the row's random stream.
fn sample(logits: &mut [f32], search: &Search, rng: &mut ChaCha8Rng) -> usize {
    if search.temperature != 1.0 {
        for v in logits.iter_mut() {
            *v /= search.temperature;
        }
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
    let mut keep = order.len();
    if search.top_k > 0 && search.top_k < keep {
        // Ties with the k-th value are kept, as Hugging Face's top-k does.
        let kth = logits[order[search.top_k - 1]];
        keep = order.iter().take_while(|i| logits[**i] >= kth).count();
    }
    let max = logits[order[0]];
    let weights: Vec<f64> = order[..keep].iter().map(|i| f64::from(logits[*i] - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    if search.top_p < 1.0 {
        // Keep the smallest set of most likely tokens whose probability reaches top_p.
        let mut acc = 0.0;
        let mut n = 0;
        for w in &weights {
            acc += w / total;
            n += 1;
            if acc >= f64::from(search.top_p) {
                break;
            }
        }
        keep = n.max(1);
    }
    let mut kept: Vec<(usize, f64)> = order[..keep].iter().copied().zip(weights[..keep].iter().copied()).collect();
    kept.sort_by_key(|(i, _)| *i);
    let sum: f64 = kept.iter().map(|(_, w)| w).sum();
    let mut target = rng.random::<f64>() * sum;
    for (i, w) in &kept {
        if target < *w {
            return *i;
        }
        target -= w;
    }
    kept.last().map_or(0, |(i, _)| *i)
}

/// log(softmax(x)) in float32.
fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    x.iter().map(|v| v - max - log_sum).collect()
}

/// Finished hypotheses of one prompt, best first, at most `num_beams`.
struct Hypotheses {
    beams: Vec<(f32, Vec<i64>)>,
    done: bool,
}

impl Hypotheses {
    fn add(&mut self, score: f32, tokens: Vec<i64>, num_beams: usize) {
        let at = self.beams.iter().position(|(s, _)| score > *s).unwrap_or(self.beams.len());
        self.beams.insert(at, (score, tokens));
        self.beams.truncate(num_beams);
    }
}

/// Beam search as Hugging Face's BeamSearchScorer does it (early_stopping = false): each step
/// takes the 2 x num_beams best continuations of all beams; one ending in EOS among the first
/// num_beams becomes a finished hypothesis scored sum_logprobs / length^length_penalty, the
/// others fill the next beams; a prompt is done when its worst kept hypothesis beats the best
/// score its live beams could still reach, or its budget is spent.
fn beam_search(lm: &mut Lm, search: &Search, requests: &mut [Request]) -> pipeline::Result<Vec<Generated>> {
    let nb = search.num_beams;
    let groups = requests.len();
    let rows = groups * nb;
    let eos: HashSet<i64> = search.eos.iter().copied().collect();
    let prompts: Vec<&[i64]> = requests.iter().flat_map(|r| std::iter::repeat_n(r.prompt.as_slice(), nb)).collect();
    let Padded { ids: first_ids, mut mask, positions: first_positions } = pad_left(&prompts, search.pad);
    let cached = lm.kv.is_some();
    let mut cache = lm.empty_cache(rows)?;
    // Each beam's full sequence, unpadded, and its running score.
    let mut seqs: Vec<Vec<i64>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut scores = vec![0f32; rows];
    for g in 0..groups {
        for b in 1..nb {
            scores[g * nb + b] = -1e9;
        }
    }
    let mut hyps: Vec<Hypotheses> = (0..groups).map(|_| Hypotheses { beams: Vec::new(), done: false }).collect();
    let mut generated = 0usize;
    for (g, r) in requests.iter().enumerate() {
        if r.budget == 0 {
            hyps[g].done = true;
            hyps[g].beams.push((0.0, r.prompt.clone()));
        }
    }
    let (mut ids, mut positions) = (first_ids, first_positions);
    let mut all_ids = ids.clone();
    let mut all_positions = positions.clone();
    let mut logits = Vec::new();
    while hyps.iter().any(|h| !h.done) {
        let step_cache = if cached {
            lm.step(rows, &ids, &positions, &mask, std::mem::take(&mut cache), &mut logits)?
        } else {
            lm.step(rows, &all_ids, &all_positions, &mask, Vec::new(), &mut logits)?
        };
        let vocab = logits.len() / rows;
        generated += 1;
        let mut next_tokens = vec![search.pad; rows];
        let mut order: Vec<usize> = (0..rows).collect();
        let mut next_scores = vec![0f32; rows];
        for g in 0..groups {
            if hyps[g].done {
                continue;
            }
            // Candidates over all beams of the group: (score, beam, token).
            let mut candidates: Vec<(f32, usize, usize)> = Vec::with_capacity(nb * vocab);
            for b in 0..nb {
                let row = g * nb + b;
                let row_logits = &mut logits[row * vocab..(row + 1) * vocab];
                penalize(row_logits, seqs[row].iter(), search.repetition_penalty);
                for (t, lp) in log_softmax(row_logits).into_iter().enumerate() {
                    candidates.push((lp + scores[row], b, t));
                }
            }
            // Best first; ties by position in the flattened (beam, token) order.
            let rank = |a: &(f32, usize, usize), b: &(f32, usize, usize)| {
                b.0.total_cmp(&a.0).then((a.1 * vocab + a.2).cmp(&(b.1 * vocab + b.2)))
            };
            let top = (2 * nb).min(candidates.len());
            candidates.select_nth_unstable_by(top - 1, rank);
            candidates.truncate(top);
            candidates.sort_by(rank);
            let cur_len = seqs[g * nb].len();
            let mut filled = 0;
            for (rank, (score, beam, token)) in candidates.into_iter().enumerate() {
                let from = g * nb + beam;
                if eos.contains(&(token as i64)) {
                    if rank >= nb {
                        continue;
                    }
                    let mut tokens = seqs[from].clone();
                    tokens.push(token as i64);
                    let normalized = score / (cur_len as f32).powf(search.length_penalty);
                    hyps[g].add(normalized, tokens, nb);
                } else {
                    let to = g * nb + filled;
                    next_tokens[to] = token as i64;
                    order[to] = from;
                    next_scores[to] = score;
                    filled += 1;
                }
                if filled == nb {
                    break;
                }
            }
            if hyps[g].beams.len() >= nb {
                let best = next_scores[g * nb..(g + 1) * nb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let reachable = best / (cur_len as f32).powf(search.length_penalty);
                if hyps[g].beams.last().is_some_and(|(worst, _)| *worst >= reachable) {
                    hyps[g].done = true;
                }
            }
        }
        // Reorder the beams and extend them.
        let prev = std::mem::take(&mut seqs);
        seqs = order.iter().map(|&from| prev[from].clone()).collect();
        for (row, s) in seqs.iter_mut().enumerate() {
            s.push(next_tokens[row]);
        }
        scores = next_scores;
        for (g, r) in requests.iter().enumerate() {
            if !hyps[g].done && generated >= r.budget {
                // Out of budget: the live beams join the finished ones.
                for b in 0..nb {
                    let row = g * nb + b;
                    let normalized = scores[row] / (seqs[row].len() as f32).powf(search.length_penalty);
                    hyps[g].add(normalized, seqs[row].clone(), nb);
                }
                hyps[g].done = true;
            }
        }
        if hyps.iter().all(|h| h.done) {
            break;
        }
        let k = mask.len() / rows;
        let reordered: Vec<i64> = order.iter().flat_map(|&from| mask[from * k..(from + 1) * k].to_vec()).collect();
        mask = append_column(&reordered, rows, &vec![1; rows]);
        let last: Vec<i64> =
            order.iter().map(|&from| positions[(from + 1) * (positions.len() / rows) - 1] + 1).collect();
        if cached {
            cache = lm.gather_cache(&step_cache, &order)?;
            ids = next_tokens;
            positions = last;
        } else {
            let w = all_ids.len() / rows;
            let reorder =
                |m: &[i64]| -> Vec<i64> { order.iter().flat_map(|&f| m[f * w..(f + 1) * w].to_vec()).collect() };
            all_ids = append_column(&reorder(&all_ids), rows, &next_tokens);
            all_positions = append_column(&reorder(&all_positions), rows, &last);
            positions = last;
        }
    }
    Ok(requests
        .iter()
        .zip(hyps)
        .map(|(r, h)| {
            let best = h.beams.into_iter().next().map(|(_, t)| t).unwrap_or_else(|| r.prompt.clone());
            let tokens = best[r.prompt.len()..].to_vec();
            let finish = if tokens.last().is_some_and(|t| eos.contains(t)) { Finish::Eos } else { Finish::Length };
            Generated { tokens, finish }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn left_padding_and_positions() {
        let p = pad_left(&[&[5, 6, 7], &[8]], 0);
        assert_eq!(p.ids, vec![5, 6, 7, 0, 0, 8]);
        assert_eq!(p.mask, vec![1, 1, 1, 0, 0, 1]);
        assert_eq!(p.positions, vec![0, 1, 2, 0, 0, 0]);
    }

    #[test]
    fn argmax_takes_the_first_largest_logit() {
        // The plain scan it replaces: the first index whose logit beats all before it.
        let naive = |x: &[f32]| (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best });
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for len in [1, 2, 15, 16, 17, 33, 1000, 50257] {
            for _ in 0..20 {
                // Few distinct values, so ties (and ties across lanes and the remainder) are common.
                let x: Vec<f32> = (0..len).map(|_| rng.random_range(0..7) as f32 - 3.0).collect();
                assert_eq!(argmax(&x), naive(&x), "{x:?}");
            }
        }
        assert_eq!(argmax(&[1.0, f32::NAN, 2.0, f32::NAN]), 2);
        assert_eq!(argmax(&[f32::NAN, 5.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
        let mut last = vec![0.0; 50];
        last[49] = 1.0;
        assert_eq!(argmax(&last), 49);
    }

    #[test]
    fn repetition_penalty_scales_toward_zero() {
        let mut logits = vec![2.0, -2.0, 1.0];
        penalize(&mut logits, [0i64, 1, 0].iter(), 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_draw() {
        let search = Search {
            do_sample: true,
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            repetition_penalty: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            eos: vec![],
            pad: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20 {
            assert_eq!(sample(&mut [0.0, 3.0, 1.0, 2.9], &search, &mut rng), 1);
        }
        let nucleus = Search { top_k: 0, top_p: 0.5, ..search.clone() };
        for _ in 0..20 {
            // softmax([0, 5, 1, 4.9]) puts ~0.52 on token 1: the nucleus is token 1 alone.
            assert_eq!(sample(&mut [0.0, 5.0, 1.0, 4.9], &nucleus, &mut rng), 1);
        }
        let open = Search { top_k: 0, top_p: 1.0, ..search.clone() };
        let drawn: HashSet<usize> = (0..200).map(|_| sample(&mut [0.0, 0.0, 0.0], &open, &mut rng)).collect();
        assert_eq!(drawn.len(), 3);
    }
}
