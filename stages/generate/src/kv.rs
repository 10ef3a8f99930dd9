//! The key/value cache: how a decoder names and shapes it, and the buffers greedy search and
//! sampling keep it in.

use half::f16;
use pipe_runtime::Model;
use pipe_runtime::ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorRefMut};
use pipeline::ResultExt;

use crate::lm::ort;

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
    pub(crate) fn empty_shape(&self, batch: usize) -> Vec<i64> {
        self.shape(batch, 0)
    }

    /// The shape of a cache tensor holding `positions` tokens of `batch` rows.
    pub(crate) fn shape(&self, batch: usize, positions: usize) -> Vec<i64> {
        let (b, h, t, d) = (batch as i64, self.heads as i64, positions as i64, self.head_size as i64);
        match self.style {
            KvStyle::Stacked => vec![2, b, h, t, d],
            KvStyle::Split => vec![b, h, t, d],
        }
    }
}

/// The key/value cache of a greedy or sampling run: two buffers per cache tensor, sized for the
/// batch's longest sequence. Each step reads its past from the first `past` positions of one and
/// the decoder writes its present (past and new positions) into the other; then they swap.
/// genai's shared past/present buffer would need an attention operator that appends in place
/// (GroupQueryAttention with a past sequence length); these decoders' attention writes the whole
/// present each step, so the buffers save the allocations, not that copy.
pub struct KvBuffers {
    pub(crate) store: Store,
    pub(crate) batch: usize,
    /// Positions the cache holds.
    pub(crate) past: usize,
    /// Positions the buffers have room for.
    pub(crate) capacity: usize,
}

pub(crate) enum Store {
    F32(Buffers<f32>),
    F16(Buffers<f16>),
}

/// One buffer to read each past from and one to write each present into, by cache tensor.
pub(crate) struct Buffers<T> {
    pub(crate) reads: Vec<Vec<T>>,
    pub(crate) writes: Vec<Vec<T>>,
}

/// Cache buffers a finished batch gave back, for the next batch to take: a decoder keeps its
/// buffers from batch to batch instead of allocating (and the kernel zeroing) megabytes each time.
#[derive(Default)]
pub(crate) struct Pool {
    f32: Vec<Vec<f32>>,
    f16: Vec<Vec<f16>>,
}

impl Pool {
    /// Takes back the buffers of a finished batch.
    pub(crate) fn recycle(&mut self, buffers: KvBuffers) {
        match buffers.store {
            Store::F32(b) => self.f32.extend(b.reads.into_iter().chain(b.writes)),
            Store::F16(b) => self.f16.extend(b.reads.into_iter().chain(b.writes)),
        }
    }
}

/// The pool's buffers of one element type.
pub(crate) trait Pooled: Sized {
    fn pooled(pool: &mut Pool) -> &mut Vec<Vec<Self>>;
}

impl Pooled for f32 {
    fn pooled(pool: &mut Pool) -> &mut Vec<Vec<f32>> {
        &mut pool.f32
    }
}

impl Pooled for f16 {
    fn pooled(pool: &mut Pool) -> &mut Vec<Vec<f16>> {
        &mut pool.f16
    }
}

impl<T: PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + 'static> Buffers<T> {
    /// Buffers for `batch` rows of `capacity` positions, the reads holding `cache`; taken from
    /// `pool` where it has some. Only what a step wrote is ever read (a past is the first
    /// positions of what the step before wrote), so a buffer taken back keeps its old values.
    pub(crate) fn from_values(
        cache: &[DynValue],
        kv: &Kv,
        batch: usize,
        capacity: usize,
        pool: &mut Pool,
    ) -> pipeline::Result<Buffers<T>>
    where
        T: Pooled,
    {
        let room = kv.shape(batch, capacity).iter().product::<i64>() as usize + slack::<T>();
        let spare = T::pooled(pool);
        let mut take = || {
            let mut buffer = spare.pop().unwrap_or_default();
            if buffer.len() < room {
                buffer.resize(room, T::default());
            }
            buffer
        };
        let mut reads = Vec::with_capacity(cache.len());
        for value in cache {
            let (_, data) = value.try_extract_tensor::<T>().map_err(ort).doing(|| "cache".into())?;
            let mut read = take();
            aligned_mut(&mut read, data.len()).copy_from_slice(data);
            reads.push(read);
        }
        let writes = cache.iter().map(|_| take()).collect();
        Ok(Buffers { reads, writes })
    }

    /// Makes every buffer hold at least `elements` from its aligned start, keeping what the reads
    /// hold at that start.
    pub(crate) fn reserve(&mut self, elements: usize) {
        let room = elements + slack::<T>();
        for buffer in self.reads.iter_mut().chain(self.writes.iter_mut()) {
            if buffer.len() < room {
                let (before, held) = (start(buffer), buffer.len() - slack::<T>());
                buffer.resize(room, T::default());
                let after = start(buffer);
                if after != before {
                    buffer.copy_within(before..before + held, after);
                }
            }
        }
    }
}

/// The alignment of the cache views, in bytes: ONNX Runtime's own allocations are 64-byte
/// aligned, and its kernels read and write a tensor there in whole cache lines.
const ALIGN: usize = 64;

/// Elements a buffer holds beyond its views, so that a view can start on an [`ALIGN`] boundary.
fn slack<T>() -> usize {
    ALIGN / std::mem::size_of::<T>()
}

/// Where a buffer's views start: its first element on an [`ALIGN`] boundary.
fn start<T>(buffer: &[T]) -> usize {
    buffer.as_ptr().align_offset(ALIGN).min(slack::<T>())
}

/// The first `len` elements of `buffer` from its aligned start.
pub(crate) fn aligned<T>(buffer: &[T], len: usize) -> &[T] {
    let at = start(buffer);
    &buffer[at..at + len]
}

/// The first `len` elements of `buffer` from its aligned start, to write.
pub(crate) fn aligned_mut<T>(buffer: &mut [T], len: usize) -> &mut [T] {
    let at = start(buffer);
    &mut buffer[at..at + len]
}

/// The value a mutable view holds, no longer tied to the view's borrow (ONNX Runtime's
/// preallocated outputs take owned values).
///
/// # Safety
/// The memory the view borrows must outlive every use of the value returned.
pub(crate) unsafe fn detach<T: PrimitiveTensorElementType + std::fmt::Debug>(view: TensorRefMut<'_, T>) -> Tensor<T> {
    let view = std::mem::ManuallyDrop::new(view);
    // SAFETY: the view is never dropped, so the value read out of it is owned once.
    unsafe { std::ptr::read(&**view) }
}

/// Finds the cache inputs and outputs by name, in either naming style.
pub(crate) fn find_kv(model: &Model, (heads, head_size): (Option<usize>, Option<usize>)) -> Result<Option<Kv>, String> {
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
