//! The decoder as the generation loop sees it: token ids, attention mask and positions in, the
//! last position's logits and the new key/value cache out. The cache stays as ORT values: each
//! step's presents are moved into the next step's pasts without being copied (beam search gathers
//! them by beam, which is the one copy it needs). Greedy search and sampling keep it in
//! [`KvBuffers`] instead, allocated once for the batch's longest sequence, which the decoder
//! (kv.rs) writes its presents (and its logits) into.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use half::f16;
use pipe_runtime::ort::session::{OutputSelector, RunOptions, SessionInputValue};
use pipe_runtime::ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, TensorRef, TensorRefMut, ValueType,
};
use pipe_runtime::{Model, SessionOptions, Signature};
use pipeline::{Context, Error, ResultExt};

use crate::kv::{Buffers, Kv, KvBuffers, Pool, Store, aligned, aligned_mut, detach, find_kv};

/// An ONNX Runtime error, kept as it came.
pub(crate) fn ort(e: pipe_runtime::ort::Error) -> Error {
    Error::external("ONNX Runtime", e)
}

/// The floating-point type of a model's cache and logits: float32, or float16 (optimum's fp16
/// exports). The cache stays in it; only the logits are converted, to float32, for sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Float {
    F32,
    F16,
}

impl Float {
    fn of(sig: &Signature, what: &str) -> Result<Float, String> {
        match sig.element {
            TensorElementType::Float32 => Ok(Float::F32),
            TensorElementType::Float16 => Ok(Float::F16),
            _ => Err(format!("{what} `{}` is {}; float32 or float16 expected", sig.name, sig.element_name())),
        }
    }
}

/// One decoder file and the inputs it takes.
struct Decoder {
    model: Model,
    /// The model file, for errors (kept apart from `model`, which a run borrows).
    path: PathBuf,
    ids: TensorElementType,
    mask: Option<TensorElementType>,
    positions: Option<TensorElementType>,
    /// Whether it takes the cache as inputs (the three-file layout's decoder_model.onnx does not).
    takes_cache: bool,
    /// optimum's merged decoder: the bool input `use_cache_branch`, false on the step without a
    /// past, true after.
    branch: bool,
}

impl Decoder {
    fn load(path: &Path, options: &SessionOptions) -> Result<Decoder, String> {
        let model = Model::load(path, options).map_err(|e| e.to_string())?;
        let int_type = |name: &str, required: bool| -> Result<Option<TensorElementType>, String> {
            match model.input(name) {
                Some(s) if matches!(s.element, TensorElementType::Int64 | TensorElementType::Int32) => {
                    Ok(Some(s.element))
                }
                Some(s) => Err(format!("input `{name}` is {}; int64 or int32 expected", s.element_name())),
                None if required => Err(format!("the model has no input `{name}` (inputs: {})", names(&model.inputs))),
                None => Ok(None),
            }
        };
        let ids = int_type("input_ids", true)?.expect("required");
        let mask = int_type("attention_mask", false)?;
        let positions = int_type("position_ids", false)?;
        let branch = match model.input("use_cache_branch") {
            Some(s) if s.element == TensorElementType::Bool && s.shape.iter().product::<i64>().abs() <= 1 => true,
            Some(s) => {
                return Err(format!(
                    "input `use_cache_branch` is {} {}; bool [1] expected",
                    s.element_name(),
                    s.shape_text()
                ));
            }
            None => false,
        };
        let path = model.path.clone();
        Ok(Decoder { model, path, ids, mask, positions, takes_cache: false, branch })
    }

    /// Fails on an input the loop does not feed: one not among `known` and `use_cache_branch`.
    fn check_inputs(&self, known: &[&str]) -> Result<(), String> {
        let fed = |name: &str| known.contains(&name) || (self.branch && name == "use_cache_branch");
        match self.model.inputs.iter().find(|s| !fed(&s.name)) {
            Some(other) => Err(format!(
                "the model has an input `{}` that a decoder loop does not feed (inputs: {})",
                other.name,
                names(&self.model.inputs)
            )),
            None => Ok(()),
        }
    }
}

/// A loaded decoder: one model for every step, or (optimum's three-file layout) one for the
/// first step and another, taking the cache, for the steps after it.
pub struct Lm {
    decoder: Decoder,
    /// decoder_model.onnx of the three-file layout: runs the step without a past.
    first: Option<Decoder>,
    logits: Float,
    /// The rank of the logits output: 3 ([batch, seq, vocab]) or 2 ([batch, vocab]).
    logits_rank: usize,
    cache: Float,
    pub kv: Option<Kv>,
    pub vocab: usize,
    /// Cache buffers kept from one batch for the next.
    pool: Pool,
}

impl Lm {
    /// Loads a decoder (and `first`, the three-file layout's model for the first step) and works
    /// out its inputs, cache style, element types and vocabulary size. `kv_dims` supplies
    /// (heads, head size) when the cache inputs leave them dynamic.
    pub fn load(
        path: &Path,
        first: Option<&Path>,
        options: &SessionOptions,
        kv_dims: (Option<usize>, Option<usize>),
    ) -> Result<Lm, String> {
        let mut decoder = Decoder::load(path, options)?;
        let model = &decoder.model;
        let logits_sig = model
            .output("logits")
            .ok_or_else(|| format!("the model has no output `logits` (outputs: {})", names(&model.outputs)))?;
        let vocab = match logits_sig.shape.last() {
            Some(v) if *v > 0 => *v as usize,
            _ => 0,
        };
        let logits = Float::of(logits_sig, "output")?;
        let logits_rank = logits_sig.shape.len();
        let kv = find_kv(model, kv_dims)?;
        let cache = match &kv {
            Some(kv) => Float::of(model.input(&kv.pasts[0]).expect("found"), "cache input")?,
            None => Float::F32,
        };
        let pasts: Vec<&str> = kv.iter().flat_map(|k| k.pasts.iter().map(String::as_str)).collect();
        let known: Vec<&str> = ["input_ids", "attention_mask", "position_ids"].into_iter().chain(pasts).collect();
        decoder.check_inputs(&known)?;
        decoder.takes_cache = kv.is_some();
        let first = match first {
            Some(file) => Some(load_first(file, options, kv.as_ref(), logits)?),
            None => None,
        };
        Ok(Lm { decoder, first, logits, logits_rank, cache, kv, vocab, pool: Pool::default() })
    }

    /// Warnings from loading (provider fallbacks).
    pub fn warnings(&self) -> Vec<String> {
        let first = self.first.iter().flat_map(|f| f.model.warnings.iter());
        self.decoder.model.warnings.iter().chain(first).cloned().collect()
    }

    /// Empty cache tensors for the first step.
    pub fn empty_cache(&self, batch: usize) -> pipeline::Result<Vec<DynValue>> {
        let Some(kv) = &self.kv else { return Ok(Vec::new()) };
        kv.pasts
            .iter()
            .map(|_| {
                let shape = kv.empty_shape(batch);
                match self.cache {
                    Float::F32 => Tensor::<f32>::from_array((shape, Vec::<f32>::new())).map(|t| t.into_dyn()),
                    Float::F16 => Tensor::<f16>::from_array((shape, Vec::<f16>::new())).map(|t| t.into_dyn()),
                }
                .map_err(ort)
                .doing(|| "empty cache".into())
            })
            .collect()
    }

    /// Runs one step over `batch` rows of `seq` new tokens each, with a mask of `mask.len() /
    /// batch` columns (past + new) and the cache from the previous step. The last position's
    /// logits of each row go into `logits` (`batch` x vocabulary, replacing what it held, so one
    /// buffer serves every step); the new cache is returned, still as ORT values.
    pub fn step(
        &mut self,
        batch: usize,
        ids: &[i64],
        positions: &[i64],
        mask: &[i64],
        cache: Vec<DynValue>,
        logits: &mut Vec<f32>,
    ) -> pipeline::Result<Vec<DynValue>> {
        let Lm { decoder, first, logits: logits_type, kv, vocab, .. } = self;
        let seq = ids.len() / batch;
        let total = mask.len() / batch;
        // The step without a past: the prompt's, the only one whose mask is no wider than its ids.
        let no_past = total == seq;
        let Decoder { model, path, ids: ids_type, mask: mask_type, positions: positions_type, takes_cache, branch } =
            match first.as_mut() {
                Some(f) if no_past => f,
                _ => decoder,
            };
        let mut inputs = int_feeds(*ids_type, *mask_type, *positions_type, batch, ids, positions, mask, cache.len())?;
        if let Some(kv) = kv.as_ref().filter(|_| *takes_cache) {
            for (name, value) in kv.pasts.iter().zip(cache) {
                inputs.push((name.as_str().into(), value.into()));
            }
        }
        if *branch {
            let flag = Tensor::<bool>::from_array(([1i64], vec![!no_past])).map_err(ort)?;
            inputs.push(("use_cache_branch".into(), flag.into_dyn().into()));
        }
        let mut outputs = model.session().run(inputs).map_err(ort).file(path.as_path())?;
        *vocab = read_logits(&outputs, *logits_type, batch, logits).file(path.as_path())?;
        let mut next = Vec::with_capacity(kv.as_ref().map_or(0, |k| k.presents.len()));
        if let Some(kv) = kv.as_ref() {
            for name in &kv.presents {
                next.push(
                    outputs.remove(name).ok_or_else(|| {
                        Error::msg(format!("no output `{name}`")).context(Context::File(path.clone()))
                    })?,
                );
            }
        }
        Ok(next)
    }

    /// Moves the cache a step without a past returned into buffers for the steps after it, sized
    /// for `capacity` positions (the batch's longest sequence; they grow if a step needs more).
    /// `None` when the decoder takes no cache, or its presents are not the shape
    /// [`step_buffered`](Self::step_buffered) writes them in (its past and new positions along
    /// the sequence axis): the loop then keeps the cache as ORT values, as [`step`](Self::step)
    /// returns them.
    pub fn buffers(
        &mut self,
        batch: usize,
        cache: &[DynValue],
        capacity: usize,
    ) -> pipeline::Result<Option<KvBuffers>> {
        let Some(kv) = self.kv.as_ref().filter(|_| self.decoder.takes_cache) else { return Ok(None) };
        let shape = |value: &DynValue| match value.dtype() {
            ValueType::Tensor { shape, .. } => shape.iter().copied().collect::<Vec<i64>>(),
            _ => Vec::new(),
        };
        // The sequence axis is the one before the head size in both styles.
        let Some(positions) = cache.first().map(shape).and_then(|s| s.iter().rev().nth(1).copied()) else {
            return Ok(None);
        };
        let positions = positions.max(0) as usize;
        let expected = kv.shape(batch, positions);
        if cache.len() != kv.presents.len() || cache.iter().any(|c| shape(c) != expected) {
            return Ok(None);
        }
        let capacity = capacity.max(positions);
        let store = match self.cache {
            Float::F32 => Store::F32(Buffers::from_values(cache, kv, batch, capacity, &mut self.pool)?),
            Float::F16 => Store::F16(Buffers::from_values(cache, kv, batch, capacity, &mut self.pool)?),
        };
        Ok(Some(KvBuffers { store, batch, past: positions, capacity }))
    }

    /// Keeps a finished batch's cache buffers for the next batch.
    pub fn recycle(&mut self, buffers: KvBuffers) {
        self.pool.recycle(buffers);
    }

    /// [`step`](Self::step) with the cache in `buffers`: the pasts are read from them in place and
    /// the decoder writes its presents into their other half (ONNX Runtime's preallocated outputs),
    /// so no cache tensor is allocated; with float32 logits and one new position a row, the
    /// decoder writes its logits straight into `logits`.
    pub fn step_buffered(
        &mut self,
        ids: &[i64],
        positions: &[i64],
        mask: &[i64],
        buffers: &mut KvBuffers,
        logits: &mut Vec<f32>,
    ) -> pipeline::Result<()> {
        match &mut buffers.store {
            Store::F32(store) => {
                self.run_buffered(store, buffers.batch, buffers.past, buffers.capacity, ids, positions, mask, logits)
            }
            Store::F16(store) => {
                self.run_buffered(store, buffers.batch, buffers.past, buffers.capacity, ids, positions, mask, logits)
            }
        }?;
        let seq = ids.len() / buffers.batch.max(1);
        buffers.past += seq;
        buffers.capacity = buffers.capacity.max(buffers.past);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_buffered<T: PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + 'static>(
        &mut self,
        store: &mut Buffers<T>,
        batch: usize,
        past: usize,
        capacity: usize,
        ids: &[i64],
        positions: &[i64],
        mask: &[i64],
        logits: &mut Vec<f32>,
    ) -> pipeline::Result<()> {
        let Lm { decoder, logits: logits_type, logits_rank, kv, vocab, .. } = self;
        let kv = kv.as_ref().ok_or_else(|| Error::msg("no cache"))?;
        let Decoder { model, path, ids: ids_type, mask: mask_type, positions: positions_type, branch, .. } = decoder;
        let seq = ids.len() / batch;
        let total = past + seq;
        store.reserve(kv.shape(batch, total.max(capacity)).iter().product::<i64>() as usize);
        let (past_shape, present_shape) = (kv.shape(batch, past), kv.shape(batch, total));
        let (past_len, present_len) =
            (past_shape.iter().product::<i64>() as usize, present_shape.iter().product::<i64>() as usize);
        let mut inputs =
            int_feeds(*ids_type, *mask_type, *positions_type, batch, ids, positions, mask, kv.pasts.len())?;
        for (name, read) in kv.pasts.iter().zip(&store.reads) {
            let view = TensorRef::from_array_view((past_shape.clone(), aligned(read, past_len))).map_err(ort)?;
            inputs.push((name.as_str().into(), view.into()));
        }
        if *branch {
            let flag = Tensor::<bool>::from_array(([1i64], vec![true])).map_err(ort)?;
            inputs.push(("use_cache_branch".into(), flag.into_dyn().into()));
        }
        let mut selector = OutputSelector::default();
        for (name, write) in kv.presents.iter().zip(store.writes.iter_mut()) {
            let view = TensorRefMut::from_array_view_mut((present_shape.clone(), aligned_mut(write, present_len)))
                .map_err(ort)?;
            // SAFETY: the buffer outlives the value: `selector` (and the outputs holding it) are
            // dropped at the end of this function, before `store` can be touched again.
            selector = selector.preallocate(name.as_str(), unsafe { detach(view) });
        }
        // One position a row: the logits are exactly `batch` x vocabulary, written in place.
        let logits_in_place = *logits_type == Float::F32 && seq == 1 && *vocab > 0 && matches!(*logits_rank, 2 | 3);
        if logits_in_place {
            logits.resize(batch * *vocab, 0.0);
            let shape: Vec<i64> = if *logits_rank == 3 {
                vec![batch as i64, 1, *vocab as i64]
            } else {
                vec![batch as i64, *vocab as i64]
            };
            let view = TensorRefMut::from_array_view_mut((shape, logits.as_mut_slice())).map_err(ort)?;
            // SAFETY: as for the presents; `logits` is not touched until `selector` is dropped.
            selector = selector.preallocate("logits", unsafe { detach(view) });
        }
        let options = RunOptions::new().map_err(ort)?.with_outputs(selector);
        let outputs = model.session().run_with_options(inputs, &options).map_err(ort).file(path.as_path())?;
        if !logits_in_place {
            *vocab = read_logits(&outputs, *logits_type, batch, logits).file(path.as_path())?;
        }
        drop(outputs);
        drop(options);
        std::mem::swap(&mut store.reads, &mut store.writes);
        Ok(())
    }

    /// The cache with its batch rows replaced by rows `order` of `cache` (beam reordering).
    pub fn gather_cache(&self, cache: &[DynValue], order: &[usize]) -> pipeline::Result<Vec<DynValue>> {
        let Some(kv) = &self.kv else { return Ok(Vec::new()) };
        let axis = kv.batch_axis();
        cache
            .iter()
            .map(|value| match self.cache {
                Float::F32 => gather::<f32>(value, axis, order),
                Float::F16 => gather::<f16>(value, axis, order),
            })
            .collect()
    }
}

/// The integer inputs of one step (ids, mask, positions, as the decoder takes them), with room
/// for `more`. Names are borrowed, not allocated each step.
#[allow(clippy::too_many_arguments)]
fn int_feeds<'a>(
    ids_type: TensorElementType,
    mask_type: Option<TensorElementType>,
    positions_type: Option<TensorElementType>,
    batch: usize,
    ids: &[i64],
    positions: &[i64],
    mask: &[i64],
    more: usize,
) -> pipeline::Result<Vec<(Cow<'a, str>, SessionInputValue<'a>)>> {
    let seq = ids.len() / batch;
    let total = mask.len() / batch;
    let mut inputs: Vec<(Cow<'a, str>, SessionInputValue<'a>)> = Vec::with_capacity(4 + more);
    inputs.push(("input_ids".into(), int_tensor(ids_type, [batch, seq], ids)?.into()));
    if let Some(t) = mask_type {
        inputs.push(("attention_mask".into(), int_tensor(t, [batch, total], mask)?.into()));
    }
    if let Some(t) = positions_type {
        inputs.push(("position_ids".into(), int_tensor(t, [batch, seq], positions)?.into()));
    }
    Ok(inputs)
}

/// Loads the three-file layout's first-step model and checks it fits the decoder taking the
/// cache: no cache inputs, the same logits, and every present the decoder takes as a past.
fn load_first(file: &Path, options: &SessionOptions, kv: Option<&Kv>, logits: Float) -> Result<Decoder, String> {
    let in_file = |e: String| format!("{}: {e}", file.display());
    let Some(kv) = kv else {
        return Err(in_file("a first-step model needs a decoder that takes the cache".into()));
    };
    let first = Decoder::load(file, options).map_err(in_file)?;
    first.check_inputs(&["input_ids", "attention_mask", "position_ids"]).map_err(in_file)?;
    let model = &first.model;
    let sig = model
        .output("logits")
        .ok_or_else(|| in_file(format!("no output `logits` (outputs: {})", names(&model.outputs))))?;
    if Float::of(sig, "output").map_err(in_file)? != logits {
        return Err(in_file(format!("logits are {}, unlike the decoder with past", sig.element_name())));
    }
    if let Some(missing) = kv.presents.iter().find(|p| model.output(p).is_none()) {
        return Err(in_file(format!("no output `{missing}` (outputs: {})", names(&model.outputs))));
    }
    Ok(first)
}

/// Copies the last position's logits of each of `batch` rows into `into`; returns the vocabulary.
/// The last position's logits of each of `batch` rows of the step's `logits` output, as f32, into
/// `into`; returns the vocabulary width.
fn read_logits(
    outputs: &pipe_runtime::ort::session::SessionOutputs<'_>,
    logits_type: Float,
    batch: usize,
    into: &mut Vec<f32>,
) -> pipeline::Result<usize> {
    let out = outputs.get("logits").ok_or_else(|| Error::msg("no logits"))?;
    match logits_type {
        Float::F32 => last_logits(out, batch, into, |row, into| into.extend_from_slice(row)),
        Float::F16 => last_logits(out, batch, into, |row: &[f16], into| into.extend(row.iter().map(|h| h.to_f32()))),
    }
    .doing(|| "logits".into())
}

fn last_logits<T: PrimitiveTensorElementType>(
    out: &DynValue,
    batch: usize,
    into: &mut Vec<f32>,
    copy: impl Fn(&[T], &mut Vec<f32>),
) -> pipeline::Result<usize> {
    let (shape, data) = out.try_extract_tensor::<T>().map_err(ort)?;
    let width = *shape.last().ok_or_else(|| Error::msg("logits have no dimensions"))? as usize;
    let rows_seq = if shape.len() == 3 { shape[1] as usize } else { 1 };
    into.clear();
    if rows_seq == 1 {
        // One position a row (every step after the prompt's): the logits as they are.
        copy(&data[..batch * width], into);
    } else {
        for r in 0..batch {
            let at = (r * rows_seq + rows_seq - 1) * width;
            copy(&data[at..at + width], into);
        }
    }
    Ok(width)
}

/// `value` with its rows along `axis` replaced by rows `order` of it.
fn gather<T: PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static>(
    value: &DynValue,
    axis: usize,
    order: &[usize],
) -> pipeline::Result<DynValue> {
    let (shape, data) = value.try_extract_tensor::<T>().map_err(ort).doing(|| "cache".into())?;
    let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
    let outer: usize = dims[..axis].iter().product();
    let row: usize = dims[axis + 1..].iter().product();
    let rows = dims[axis];
    let mut out = Vec::with_capacity(outer * order.len() * row);
    for o in 0..outer {
        for &src in order {
            let at = (o * rows + src) * row;
            out.extend_from_slice(&data[at..at + row]);
        }
    }
    let mut new_shape: Vec<i64> = shape.iter().copied().collect();
    new_shape[axis] = order.len() as i64;
    Tensor::<T>::from_array((new_shape, out)).map(|t| t.into_dyn()).map_err(ort).doing(|| "cache".into())
}

fn int_tensor(t: TensorElementType, [rows, cols]: [usize; 2], values: &[i64]) -> pipeline::Result<DynValue> {
    let shape = [rows as i64, cols as i64];
    let r = match t {
        TensorElementType::Int32 => {
            Tensor::<i32>::from_array((shape, values.iter().map(|v| *v as i32).collect::<Vec<_>>()))
                .map(|t| t.into_dyn())
        }
        _ => Tensor::<i64>::from_array((shape, values.to_vec())).map(|t| t.into_dyn()),
    };
    r.map_err(ort)
}

fn names(sigs: &[Signature]) -> String {
    sigs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::ModelFolder;

    fn load(dir: &str) -> Lm {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(dir);
        let mut folder = ModelFolder::open(&dir).unwrap();
        let dims =
            (folder.values.optional::<usize>("kv_heads", None), folder.values.optional::<usize>("head_size", None));
        Lm::load(&folder.model, folder.first.as_deref(), &SessionOptions::default(), dims).unwrap()
    }

    /// The logits of a prompt step and 6 greedy steps over two rows (one left-padded), with the
    /// cache kept as ORT values or in buffers (made for 4 positions, so they grow on the way).
    fn steps(lm: &mut Lm, buffered: bool) -> Vec<Vec<f32>> {
        let batch = 2;
        let (mut ids, mut mask, mut positions) =
            (vec![0, 5, 6, 7, 8, 9], vec![0, 1, 1, 1, 1, 1], vec![0, 0, 1, 0, 1, 2]);
        let mut logits = Vec::new();
        let empty = lm.empty_cache(batch).unwrap();
        let mut cache = lm.step(batch, &ids, &positions, &mask, empty, &mut logits).unwrap();
        let mut buffers = buffered.then(|| lm.buffers(batch, &cache, 4).unwrap().expect("the cache fits buffers"));
        let mut all = vec![logits.clone()];
        for _ in 0..6 {
            ids = logits
                .chunks(lm.vocab)
                .map(|row| (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as i64)
                .collect();
            let width = positions.len() / batch;
            positions = positions.chunks(width).map(|p| p[width - 1] + 1).collect();
            let total = mask.len() / batch;
            mask = mask.chunks(total).flat_map(|m| m.iter().copied().chain([1])).collect();
            match buffers.as_mut() {
                Some(b) => lm.step_buffered(&ids, &positions, &mask, b, &mut logits).unwrap(),
                None => {
                    cache = lm.step(batch, &ids, &positions, &mask, std::mem::take(&mut cache), &mut logits).unwrap()
                }
            }
            all.push(logits.clone());
        }
        all
    }

    #[test]
    fn buffered_cache_steps_give_the_same_logits_as_ort_values() {
        for dir in ["tiny-random-gpt2", "decoders/fp16", "decoders/three-file", "decoders/no-position-ids"] {
            let mut lm = load(dir);
            let values = steps(&mut lm, false);
            let buffered = steps(&mut lm, true);
            assert_eq!(values.len(), buffered.len());
            for (step, (a, b)) in values.iter().zip(&buffered).enumerate() {
                assert!(a.len() == 2 * lm.vocab && a.iter().any(|v| *v != 0.0), "{dir} step {step}");
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same && a.len() == b.len(), "{dir}: step {step}'s logits differ");
            }
        }
    }
}
