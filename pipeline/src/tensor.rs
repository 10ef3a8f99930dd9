//! Tensor columns: FixedSizeList<Float32>, row-major and flattened, whose field carries the per-row
//! shape as the canonical `arrow.fixed_shape_tensor` extension type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, FixedSizeListArray, Float32Array};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field};

use crate::error::{Error, Result};

/// The axis order of an image tensor (`layout` of preprocess.image, sink.images, sink.grid and
/// sink.report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// [channels, height, width]
    #[default]
    Chw,
    /// [height, width, channels]
    Hwc,
}

impl Layout {
    /// The tensor shape of an image of `channels` x `height` x `width` in this order.
    pub fn shape(self, channels: usize, height: usize, width: usize) -> Vec<usize> {
        match self {
            Layout::Chw => vec![channels, height, width],
            Layout::Hwc => vec![height, width, channels],
        }
    }

    /// The (channels, height, width) of an image tensor of `shape` in this order; a 2-D shape is
    /// one channel, whatever the order. `None` for any other shape.
    pub fn dimensions(self, shape: &[usize]) -> Option<(usize, usize, usize)> {
        match (shape, self) {
            ([h, w], _) => Some((1, *h, *w)),
            ([c, h, w], Layout::Chw) | ([h, w, c], Layout::Hwc) => Some((*c, *h, *w)),
            _ => None,
        }
    }

    /// Where channel `channel` of pixel `pixel` lies in a row of `pixels` pixels of `channels`
    /// channels.
    pub fn index(self, pixel: usize, channel: usize, pixels: usize, channels: usize) -> usize {
        match self {
            Layout::Chw => channel * pixels + pixel,
            Layout::Hwc => pixel * channels + channel,
        }
    }
}

/// Extension name of tensor columns.
pub const EXTENSION_NAME: &str = "arrow.fixed_shape_tensor";
const NAME_KEY: &str = "ARROW:extension:name";
const METADATA_KEY: &str = "ARROW:extension:metadata";

/// The most values one row's tensor may hold: 2^28 float32 values, 1 GiB. Arrow's fixed-size lists
/// cap a row at 2^31 - 1 values anyway; far below that, a shape this large is a typo.
pub const MAX_TENSOR_VALUES: usize = 1 << 28;

/// The product of the dimensions, or `None` where it overflows.
fn product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The number of values in a row of `shape`, checked: every dimension at least 1 and the product at
/// most [`MAX_TENSOR_VALUES`]. A config error at `key` otherwise, so `pipe validate` says the limit.
pub fn checked_len(key: &str, shape: &[usize]) -> Result<usize> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(Error::config(key, format!("{shape:?} is not a tensor shape"))
            .with_hint("give every dimension, each at least 1, e.g. [64] or [1, 8, 8]"));
    }
    product(shape).filter(|&n| n <= MAX_TENSOR_VALUES).ok_or_else(|| {
        Error::config(key, format!("a tensor of shape {shape:?} holds more than {MAX_TENSOR_VALUES} values per row"))
            .with_hint(format!("the limit is {MAX_TENSOR_VALUES} float32 values (1 GiB) per row"))
    })
}

/// A tensor column's field: FixedSizeList<Float32> of the shape's product, tagged with the shape.
/// Check user-given shapes with [`checked_len`] first; a product past `i32::MAX` saturates here.
pub fn tensor_field(name: &str, shape: &[usize]) -> Field {
    typed_tensor_field(name, shape, DataType::Float32)
}

/// A tensor column's field with another element type (Int32 or Int64 token ids and masks):
/// FixedSizeList<`item`> of the shape's product, tagged with the shape as [`tensor_field`] does.
pub fn typed_tensor_field(name: &str, shape: &[usize], item: DataType) -> Field {
    let len = product(shape).unwrap_or(usize::MAX).min(i32::MAX as usize) as i32;
    let item = Arc::new(Field::new("item", item, false));
    let metadata = HashMap::from([
        (NAME_KEY.to_string(), EXTENSION_NAME.to_string()),
        (METADATA_KEY.to_string(), serde_json::json!({ "shape": shape }).to_string()),
    ]);
    Field::new(name, DataType::FixedSizeList(item, len), false).with_metadata(metadata)
}

/// A tensor field as files hold it for other readers: the same, with a nullable item field, as
/// the canonical `arrow.fixed_shape_tensor` storage type is written (pyarrow refuses the extension
/// type over a list whose item is not nullable, and falls back to a plain list). Other fields are
/// returned as they are.
pub fn file_field(field: &Field) -> Field {
    match field.data_type() {
        DataType::FixedSizeList(item, n)
            if !item.is_nullable() && field.metadata().get(NAME_KEY).map(String::as_str) == Some(EXTENSION_NAME) =>
        {
            let item = Arc::new(item.as_ref().clone().with_nullable(true));
            field.clone().with_data_type(DataType::FixedSizeList(item, *n))
        }
        _ => field.clone(),
    }
}

/// A column re-tagged with the type of `field` (from [`file_field`]): the same buffers.
pub fn to_file_array(array: &arrow::array::ArrayRef, field: &Field) -> Result<arrow::array::ArrayRef> {
    match (field.data_type(), array.as_any().downcast_ref::<FixedSizeListArray>()) {
        (DataType::FixedSizeList(item, n), Some(list)) if array.data_type() != field.data_type() => {
            Ok(Arc::new(FixedSizeListArray::try_new(item.clone(), *n, list.values().clone(), list.nulls().cloned())?))
        }
        _ => Ok(array.clone()),
    }
}

/// The per-row shape of a tensor field; a plain FixedSizeList<Float32> is a 1-D tensor.
pub fn tensor_shape(field: &Field) -> Option<Vec<usize>> {
    tensor_type(field).filter(|(_, item)| *item == DataType::Float32).map(|(shape, _)| shape)
}

/// The per-row shape and element type of a tensor field of Float32, Int32 or Int64 elements; a
/// plain FixedSizeList of one of those is a 1-D tensor.
pub fn tensor_type(field: &Field) -> Option<(Vec<usize>, DataType)> {
    let DataType::FixedSizeList(item, len) = field.data_type() else { return None };
    if !matches!(item.data_type(), DataType::Float32 | DataType::Int32 | DataType::Int64) {
        return None;
    }
    let declared = field
        .metadata()
        .get(METADATA_KEY)
        .filter(|_| field.metadata().get(NAME_KEY).map(String::as_str) == Some(EXTENSION_NAME))
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .and_then(|v| serde_json::from_value::<Vec<usize>>(v.get("shape")?.clone()).ok());
    let shape = match declared {
        Some(shape) if product(&shape) == Some(*len as usize) => shape,
        _ => vec![*len as usize],
    };
    Some((shape, item.data_type().clone()))
}

/// A tensor column from row-major values: `values.len()` must be a multiple of the shape's product.
pub fn tensor_array(values: Vec<f32>, shape: &[usize]) -> Result<FixedSizeListArray> {
    let len = product(shape).unwrap_or(0);
    if len == 0 || len > i32::MAX as usize || !values.len().is_multiple_of(len) {
        return Err(Error::msg(format!("{} values do not fill rows of shape {shape:?}", values.len())));
    }
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Float32Array::new(ScalarBuffer::from(values), None);
    Ok(FixedSizeListArray::try_new(item, len as i32, Arc::new(values), None)?)
}

/// The flat values of a tensor column (a view, no copy), and the row length.
pub fn tensor_values(array: &dyn Array) -> Result<(&[f32], usize)> {
    let list = array
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| Error::msg(format!("expected a tensor column, found {}", array.data_type())))?;
    let values = list
        .values()
        .as_any()
        .downcast_ref::<Float32Array>()
        .ok_or_else(|| Error::msg("tensor values must be Float32"))?;
    let width = list.value_length() as usize;
    let start = list.offset() * width;
    Ok((&values.values()[start..start + list.len() * width], width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_order_the_axes() {
        assert_eq!(Layout::Chw.shape(3, 2, 4), [3, 2, 4]);
        assert_eq!(Layout::Hwc.shape(3, 2, 4), [2, 4, 3]);
        assert_eq!(Layout::Hwc.dimensions(&[2, 4, 3]), Some((3, 2, 4)));
        assert_eq!(Layout::Chw.dimensions(&[2, 4]), Some((1, 2, 4)));
        assert_eq!(Layout::Chw.dimensions(&[1, 2, 3, 4]), None);
        // Pixel 1, channel 2 of a 2-pixel RGB image.
        assert_eq!((Layout::Chw.index(1, 2, 2, 3), Layout::Hwc.index(1, 2, 2, 3)), (5, 5));
        assert_eq!((Layout::Chw.index(1, 0, 2, 3), Layout::Hwc.index(1, 0, 2, 3)), (1, 3));
    }

    #[test]
    fn shape_round_trips_through_the_field() {
        let f = tensor_field("pixels", &[3, 8, 8]);
        assert_eq!(tensor_shape(&f), Some(vec![3, 8, 8]));
        let plain =
            Field::new("v", DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), 4), true);
        assert_eq!(tensor_shape(&plain), Some(vec![4]));
        assert_eq!(tensor_shape(&Field::new("s", DataType::Utf8, true)), None);
    }

    #[test]
    fn integer_tensors_carry_their_shape_and_type() {
        let f = typed_tensor_field("input_ids", &[77], DataType::Int32);
        assert_eq!(tensor_type(&f), Some((vec![77], DataType::Int32)));
        assert_eq!(tensor_shape(&f), None, "an int tensor is not a float tensor");
        let f = typed_tensor_field("m", &[2, 3], DataType::Int64);
        assert_eq!(tensor_type(&f), Some((vec![2, 3], DataType::Int64)));
        let bytes =
            Field::new("b", DataType::FixedSizeList(Arc::new(Field::new("item", DataType::UInt8, false)), 4), false);
        assert_eq!(tensor_type(&bytes), None);
    }

    #[test]
    fn files_hold_tensors_with_a_nullable_item() {
        let f = tensor_field("z", &[2, 2]);
        let on_file = file_field(&f);
        assert_eq!(tensor_shape(&on_file), Some(vec![2, 2]));
        assert!(matches!(on_file.data_type(), DataType::FixedSizeList(item, 4) if item.is_nullable()));
        let a: arrow::array::ArrayRef = Arc::new(tensor_array(vec![1.0; 8], &[2, 2]).unwrap());
        let b = to_file_array(&a, &on_file).unwrap();
        assert_eq!(b.data_type(), on_file.data_type());
        assert_eq!(tensor_values(b.as_ref()).unwrap(), tensor_values(a.as_ref()).unwrap());
        let plain = Field::new("s", DataType::Utf8, false);
        assert_eq!(file_field(&plain), plain);
    }

    #[test]
    fn values_view_respects_slicing() {
        let a = tensor_array((0..12).map(|v| v as f32).collect(), &[2, 2]).unwrap();
        assert_eq!(a.len(), 3);
        let sliced = a.slice(1, 2);
        let (values, width) = tensor_values(&sliced).unwrap();
        assert_eq!(width, 4);
        assert_eq!(values, &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        assert!(tensor_array(vec![1.0; 5], &[2]).is_err());
    }

    #[test]
    fn shapes_past_the_limit_are_config_errors_not_overflows() {
        assert_eq!(checked_len("shape", &[3, 8, 8]).unwrap(), 192);
        for bad in [vec![4294967296, 4294967296], vec![usize::MAX, 2], vec![1 << 20, 1 << 9], vec![], vec![3, 0]] {
            let err = checked_len("shape", &bad).unwrap_err();
            assert!(matches!(&err, Error::Config { key: Some(k), .. } if k == "shape"), "{bad:?}: {err}");
        }
        let err = checked_len("shape", &[1 << 20, 1 << 9]).unwrap_err().to_string();
        assert!(err.contains("268435456"), "{err}");
        let f = tensor_field("z", &[4294967296, 4294967296]);
        assert_eq!(tensor_shape(&f), Some(vec![i32::MAX as usize]));
    }
}
