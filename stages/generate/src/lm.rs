//! The decoder as the generation loop sees it: token ids, attention mask and positions in, the
//! last position's logits and the new key/value cache out. The cache stays as ORT values: each
//! step's presents are moved into the next step's pasts without being copied (beam search gathers
//! them by beam, which is the one copy it needs).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use half::f16;
use pipe_runtime::ort::session::SessionInputValue;
use pipe_runtime::ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType};
use pipe_runtime::{Model, SessionOptions, Signature};
use pipeline::{Context, Error, ResultExt};

/// An ONNX Runtime error, kept as it came.
fn ort(e: pipe_runtime::ort::Error) -> Error {
    Error::external("ONNX Runtime", e)
}

/// How a model names and shapes its key/value cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvStyle {
    /// `past_%d` / `present_%d`, keys and values stacked: [2, batch, heads, seq, head_size].
    Stacked,
    /// `past_key_values.%d.key` / `.value` and `present.%d.key` / `.value`: [batch, heads, seq, head_size].
    Split,
}

/// The cache inputs and outputs of a model, in matching order.
#[derive(Debug, Clone)]
pub struct Kv {
    pub style: KvStyle,
    pub pasts: Vec<String>,
    pub presents: Vec<String>,
    pub heads: usize,
    pub head_size: usize,
}

impl Kv {
    /// The batch axis of a cache tensor.
    pub fn batch_axis(&self) -> usize {
        match self.style {
            KvStyle::Stacked => 1,
            KvStyle::Split => 0,
        }
    }

    /// The shape of an empty cache tensor (no past tokens) for `batch` rows.
    fn empty_shape(&self, batch: usize) -> Vec<i64> {
        let (b, h, d) = (batch as i64, self.heads as i64, self.head_size as i64);
        match self.style {
            KvStyle::Stacked => vec![2, b, h, 0, d],
            KvStyle::Split => vec![b, h, 0, d],
        }
    }
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
    cache: Float,
    pub kv: Option<Kv>,
    pub vocab: usize,
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
        Ok(Lm { decoder, first, logits, cache, kv, vocab })
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
        // Names borrowed from the model's signature, not allocated each step.
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(4 + cache.len());
        inputs.push(("input_ids".into(), int_tensor(*ids_type, [batch, seq], ids)?.into()));
        if let Some(t) = *mask_type {
            inputs.push(("attention_mask".into(), int_tensor(t, [batch, total], mask)?.into()));
        }
        if let Some(t) = *positions_type {
            inputs.push(("position_ids".into(), int_tensor(t, [batch, seq], positions)?.into()));
        }
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
        let out = outputs.get("logits").ok_or_else(|| Error::msg("no logits"))?;
        let width = match *logits_type {
            Float::F32 => last_logits(out, batch, logits, |row, into| into.extend_from_slice(row)),
            Float::F16 => {
                last_logits(out, batch, logits, |row: &[f16], into| into.extend(row.iter().map(|h| h.to_f32())))
            }
        }
        .doing(|| "logits".into())
        .file(path.as_path())?;
        *vocab = width;
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

/// Finds the cache inputs and outputs by name, in either naming style.
fn find_kv(model: &Model, (heads, head_size): (Option<usize>, Option<usize>)) -> Result<Option<Kv>, String> {
    let mut layers = 0;
    let style = if model.input("past_0").is_some() {
        while model.input(&format!("past_{layers}")).is_some() {
            layers += 1;
        }
        KvStyle::Stacked
    } else if model.input("past_key_values.0.key").is_some() {
        while model.input(&format!("past_key_values.{layers}.key")).is_some() {
            layers += 1;
        }
        KvStyle::Split
    } else {
        return Ok(None);
    };
    let (mut pasts, mut presents) = (Vec::new(), Vec::new());
    for i in 0..layers {
        match style {
            KvStyle::Stacked => {
                pasts.push(format!("past_{i}"));
                presents.push(format!("present_{i}"));
            }
            KvStyle::Split => {
                for part in ["key", "value"] {
                    pasts.push(format!("past_key_values.{i}.{part}"));
                    presents.push(format!("present.{i}.{part}"));
                }
            }
        }
    }
    for (past, present) in pasts.iter().zip(&presents) {
        if model.input(past).is_none() {
            return Err(format!("the model has `{}` but no input `{past}`", pasts[0]));
        }
        if model.output(present).is_none() {
            return Err(format!("the model has the cache input `{past}` but no output `{present}`"));
        }
    }
    let sig = model.input(&pasts[0]).expect("checked");
    let rank = if style == KvStyle::Stacked { 5 } else { 4 };
    if sig.shape.len() != rank {
        return Err(format!("cache input `{}` has shape {}; rank {rank} expected", sig.name, sig.shape_text()));
    }
    let dim = |i: usize, fallback: Option<usize>, what: &str| -> Result<usize, String> {
        match sig.shape[i] {
            d if d > 0 => Ok(d as usize),
            _ => fallback
                .ok_or_else(|| format!("cache input `{}` has a dynamic {what} and no config gives it", sig.name)),
        }
    };
    let heads = dim(rank - 3, heads, "head count")?;
    let head_size = dim(rank - 1, head_size, "head size")?;
    Ok(Some(Kv { style, pasts, presents, heads, head_size }))
}
