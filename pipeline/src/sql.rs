//! Polars SQL over Arrow batches, for stages that transform or filter with SQL.
//!
//! Batches cross into polars and back through the Arrow C Data Interface: buffers are shared, not
//! copied. polars keeps its own Arrow implementation, so both sides' FFI structs (the same C
//! layout) are moved across by value. Columns come back in the types the rest of pipe uses (Utf8,
//! Binary, List), and a column that keeps the name and type of an input column keeps its field
//! metadata, so tensor columns stay tensors.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, make_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi, to_ffi};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use polars::prelude::{Column, CompatLevel, DataFrame, IntoLazy, PlSmallStr, Series};
use polars::sql::SQLContext;

use crate::columns::normalize_type;
use crate::error::{Error, Result};

/// A SQL query over the table `batch`, run on one batch at a time.
#[derive(Debug, Clone)]
pub struct SqlQuery {
    query: String,
    input: SchemaRef,
    output: SchemaRef,
}

impl SqlQuery {
    /// Plans `query` against the input schema (on an empty batch: no data is read) and returns
    /// the query with its output schema. Errors are polars' own messages.
    pub fn plan(query: &str, input: &SchemaRef) -> Result<Self> {
        let empty = RecordBatch::new_empty(input.clone());
        let out = execute(query, &empty, input, None)?;
        Ok(Self { query: query.to_string(), input: input.clone(), output: out.schema() })
    }

    /// The schema of the query's result.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output
    }

    /// Runs the query on one batch.
    pub fn run(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        execute(&self.query, batch, &self.input, Some(&self.output))
    }
}

/// Evaluates a SQL boolean expression per row: the mask of rows where it is true (null counts as
/// false).
pub fn filter_mask(condition: &str, batch: &RecordBatch) -> Result<arrow::array::BooleanArray> {
    let query = format!("SELECT ({condition}) AS keep FROM batch");
    let out = execute(&query, batch, &batch.schema(), None)?;
    let keep = out.column(0);
    let keep = keep
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()
        .ok_or_else(|| Error::msg(format!("`{condition}` is {}, not a boolean", keep.data_type())))?;
    Ok(match keep.nulls() {
        Some(_) => arrow::compute::kernels::boolean::is_not_null(keep)
            .and_then(|valid| arrow::compute::and(keep, &valid))
            .map_err(Error::from)?,
        None => keep.clone(),
    })
}

fn execute(query: &str, batch: &RecordBatch, input: &SchemaRef, declared: Option<&SchemaRef>) -> Result<RecordBatch> {
    let df = to_polars(batch)?;
    let mut ctx = SQLContext::new();
    ctx.register("batch", df.lazy());
    // polars panics on some queries it cannot run (arithmetic on array columns without its
    // `array_arithmetic` feature): that is a refused query, not a crash.
    let result = crate::panics::catch(|| ctx.execute(query).and_then(|lf| lf.collect()))
        .map_err(|panic| {
            Error::msg(if panic.contains("array_arithmetic") {
                "SQL: arithmetic on tensor (array) columns is not supported; select the column as it is, \
                 and scale it in a model or process stage"
                    .to_string()
            } else {
                format!("SQL: polars cannot run this query: {panic}")
            })
        })?
        .map_err(|source| Error::Sql { source })?;
    from_polars(&result, input, declared)
}

fn to_polars(batch: &RecordBatch) -> Result<DataFrame> {
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let (ffi_array, ffi_schema) = to_ffi(&array.to_data())?;
        let plain = Field::new(field.name(), field.data_type().clone(), field.is_nullable());
        let ffi_schema = FFI_ArrowSchema::try_from(&plain).unwrap_or(ffi_schema);
        // SAFETY: both structs are the C Data Interface's ArrowArray/ArrowSchema, #[repr(C)], and
        // ownership (the release callback) moves with the value.
        let (pa, ps): (polars_arrow::ffi::ArrowArray, polars_arrow::ffi::ArrowSchema) = unsafe {
            (
                std::mem::transmute::<FFI_ArrowArray, polars_arrow::ffi::ArrowArray>(ffi_array),
                std::mem::transmute::<FFI_ArrowSchema, polars_arrow::ffi::ArrowSchema>(ffi_schema),
            )
        };
        let pfield = unsafe { polars_arrow::ffi::import_field_from_c(&ps) }.map_err(polars_err)?;
        let parray =
            unsafe { polars_arrow::ffi::import_array_from_c(pa, pfield.dtype().clone()) }.map_err(polars_err)?;
        let series = Series::from_arrow(PlSmallStr::from_str(field.name()), parray).map_err(polars_err)?;
        columns.push(Column::from(series));
    }
    DataFrame::new(batch.num_rows(), columns).map_err(polars_err)
}

fn from_polars(df: &DataFrame, input: &SchemaRef, declared: Option<&SchemaRef>) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(df.width());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(df.width());
    for (i, column) in df.columns().iter().enumerate() {
        let parray = column.clone().rechunk_to_arrow(CompatLevel::oldest());
        let pfield = polars_arrow::datatypes::Field::new(column.name().clone(), parray.dtype().clone(), true);
        let ps = polars_arrow::ffi::export_field_to_c(&pfield);
        let pa = polars_arrow::ffi::export_array_to_c(parray);
        // SAFETY: as in `to_polars`, the same C structs moved the other way.
        let (fa, fs): (FFI_ArrowArray, FFI_ArrowSchema) = unsafe {
            (
                std::mem::transmute::<polars_arrow::ffi::ArrowArray, FFI_ArrowArray>(pa),
                std::mem::transmute::<polars_arrow::ffi::ArrowSchema, FFI_ArrowSchema>(ps),
            )
        };
        let data = unsafe { from_ffi(fa, &fs) }?;
        let array = make_array(data);
        let name = column.name().as_str();
        let target = match declared {
            Some(schema) => schema.field(i).clone(),
            None => match input.field_with_name(name) {
                Ok(f) if loose(&normalize_type(array.data_type())) == loose(f.data_type()) => f.clone(),
                // Arithmetic on a tensor column (`z / 0.18215 AS z`) gives a float array of the
                // same length: it stays that tensor, float32 and shaped as the input.
                Ok(f) if same_tensor_width(f.data_type(), array.data_type()) => f.clone(),
                _ => Field::new(name, normalize_type(array.data_type()), true),
            },
        };
        let array = retype(array, target.data_type())?;
        fields.push(target);
        arrays.push(array);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(df.height()));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options)?)
}

/// Whether `got` is a fixed-size list of floats as long as the float32 tensor type `input`.
fn same_tensor_width(input: &DataType, got: &DataType) -> bool {
    match (input, got) {
        (DataType::FixedSizeList(a, n), DataType::FixedSizeList(b, m)) => {
            n == m && a.data_type() == &DataType::Float32 && b.data_type().is_floating()
        }
        _ => false,
    }
}

/// A type with nested field names and nullability erased, to compare types across the FFI.
fn loose(t: &DataType) -> DataType {
    let item = |f: &Field| Arc::new(Field::new("item", loose(f.data_type()), true));
    match t {
        DataType::List(f) => DataType::List(item(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(item(f), *n),
        other => other.clone(),
    }
}

/// Converts an array to `target`: a cast, or for fixed-size lists a re-tag of the item field.
fn retype(array: ArrayRef, target: &DataType) -> Result<ArrayRef> {
    if array.data_type() == target {
        return Ok(array);
    }
    if let (DataType::FixedSizeList(item, n), Some(list)) =
        (target, array.as_any().downcast_ref::<FixedSizeListArray>())
    {
        let values = retype(list.values().clone(), item.data_type())?;
        return Ok(Arc::new(FixedSizeListArray::try_new(item.clone(), *n, values, list.nulls().cloned())?));
    }
    Ok(arrow::compute::cast(&array, target)?)
}

fn polars_err(e: polars::prelude::PolarsError) -> Error {
    Error::external("Polars", e).context(crate::error::Context::Doing("polars".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{tensor_array, tensor_field};
    use arrow::array::{Int64Array, StringArray};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            tensor_field("z", &[2]),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(tensor_array(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2]).unwrap()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn queries_keep_types_and_tensor_metadata() {
        let b = batch();
        let q = SqlQuery::plan("SELECT id, z, n * 10 AS m FROM batch WHERE n > 1", &b.schema()).unwrap();
        let schema = q.output_schema().clone();
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
        assert_eq!(crate::tensor::tensor_shape(schema.field(1)), Some(vec![2]));
        assert_eq!(schema.field(1), b.schema().field(2));
        let out = q.run(&b).unwrap();
        assert_eq!(out.num_rows(), 2);
        let ids = out.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.value(1), "c");
        let (values, _) = crate::tensor::tensor_values(out.column(1).as_ref()).unwrap();
        assert_eq!(values, &[2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn arithmetic_on_a_tensor_column_keeps_the_tensor() {
        // Once a panic in polars (its `array_arithmetic` feature was off), at validate time.
        let b = batch();
        let q = SqlQuery::plan("SELECT id, z / 0.5 AS z, z * 2 AS twice FROM batch", &b.schema()).unwrap();
        let schema = q.output_schema().clone();
        assert_eq!(schema.field(1), b.schema().field(2), "z / 0.5 AS z is still the tensor z");
        let out = q.run(&b).unwrap();
        let (values, width) = crate::tensor::tensor_values(out.column(1).as_ref()).unwrap();
        assert_eq!((values, width), (&[0.0, 2.0, 4.0, 6.0, 8.0, 10.0][..], 2));
        assert!(matches!(schema.field(2).data_type(), DataType::FixedSizeList(_, 2)), "{:?}", schema.field(2));
    }

    #[test]
    fn masks_and_errors() {
        let mask = filter_mask("n >= 2 AND id <> 'c'", &batch()).unwrap();
        assert_eq!(mask.iter().collect::<Vec<_>>(), vec![Some(false), Some(true), Some(false)]);
        let err = SqlQuery::plan("SELECT nope FROM batch", &batch().schema()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
