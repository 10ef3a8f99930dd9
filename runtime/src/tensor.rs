//! The tensor bridge: the values one model run takes and returns. Float32 inputs are fed as views
//! of the Arrow buffers and outputs copied out in one slice copy, with no per-element loops on
//! the float32 path.

use ort::value::DynValue;

/// Input data for one run: a shape and values of the input's element type.
#[derive(Debug)]
pub enum Feed<'a> {
    /// float32, borrowed (a view of an Arrow buffer).
    F32(Vec<i64>, &'a [f32]),
    /// float32, owned (padded or converted).
    F32Owned(Vec<i64>, Vec<f32>),
    /// int64.
    I64(Vec<i64>, Vec<i64>),
    /// int32.
    I32(Vec<i64>, Vec<i32>),
    /// uint8.
    U8(Vec<i64>, Vec<u8>),
    /// bool.
    Bool(Vec<i64>, Vec<bool>),
}

/// A model output, as float32 values with its shape.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Output dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// An owned ORT tensor of `shape` holding `data`.
pub(crate) fn owned<T>(shape: Vec<i64>, data: Vec<T>) -> ort::Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    Ok(ort::value::Tensor::from_array((shape, data))?.into_dyn())
}

/// Copies an output tensor out as float32.
pub(crate) fn fetch(value: &DynValue) -> std::result::Result<Fetched, String> {
    let shape = |s: &ort::value::Shape| s.iter().map(|d| *d as usize).collect::<Vec<_>>();
    if let Ok((s, data)) = value.try_extract_tensor::<f32>() {
        return Ok(Fetched { shape: shape(s), values: data.to_vec() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<i64>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| *v as f32).collect() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<i32>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| *v as f32).collect() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<u8>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| *v as f32).collect() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<bool>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| u8::from(*v) as f32).collect() });
    }
    Err("element type not supported (float32, int64, int32, uint8 and bool are)".into())
}
