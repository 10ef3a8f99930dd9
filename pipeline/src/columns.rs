//! Column helpers every stage needs: typed access by name with clear errors, and the one canonical
//! form of string, binary and list types (Utf8, Binary, List) that data from files and from polars
//! is brought to.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The canonical type for `t`: large and view strings become Utf8, binaries Binary, lists List,
/// dictionaries their value type.
pub fn normalize_type(t: &DataType) -> DataType {
    let inner = |f: &Field| Arc::new(Field::new(f.name(), normalize_type(f.data_type()), f.is_nullable()));
    match t {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::LargeList(f) | DataType::List(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
            DataType::List(inner(f))
        }
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(inner(f), *n),
        DataType::Dictionary(_, value) => normalize_type(value),
        other => other.clone(),
    }
}

/// A schema with every field in its canonical type (metadata kept).
pub fn normalize_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(normalize_type(f.data_type()))).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// An array cast to its canonical type (no copy when it already is).
pub fn normalize_array(array: ArrayRef) -> Result<ArrayRef> {
    let target = normalize_type(array.data_type());
    if &target == array.data_type() {
        return Ok(array);
    }
    Ok(arrow::compute::cast(&array, &target)?)
}

/// The column `name`, or an error naming the columns there are.
pub fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}`")))
}

/// The Utf8 column `name`.
pub fn utf8<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    let c = column(batch, name)?;
    c.as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::msg(format!("column `{name}` is {}, not Utf8", c.data_type())))
}

/// The row ids of a batch.
pub fn ids(batch: &RecordBatch) -> Result<&StringArray> {
    utf8(batch, "id")
}

/// Checks at validate time that `schema` has column `name` (named by param `key`) of an accepted
/// type; the error lists the columns there are.
pub fn require<'a>(schema: &'a Schema, key: &str, name: &str, accepted: &[DataType]) -> Result<&'a Field> {
    let field = schema.field_with_name(name).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let hint = match crate::diag::closest(name, names.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? columns: {}", names.join(", ")),
            None => format!("columns: {}", names.join(", ")),
        };
        Error::config(key, format!("the input has no column `{name}`")).with_hint(hint)
    })?;
    if !accepted.is_empty() && !accepted.contains(field.data_type()) {
        let allowed: Vec<String> = accepted.iter().map(ToString::to_string).collect();
        return Err(Error::config(key, format!("column `{name}` is {}", field.data_type()))
            .with_hint(format!("expected {}", allowed.join(" or "))));
    }
    Ok(field)
}

/// Keeps `names` of `batch`, in that order.
pub fn select(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema.fields().iter().map(|f| column(batch, f.name()).cloned()).collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `input`'s fields less those named in `names`, in their order (metadata dropped).
pub fn without(input: &Schema, names: &[&str]) -> Schema {
    Schema::new(input.fields().iter().filter(|f| !names.contains(&f.name().as_str())).cloned().collect::<Vec<_>>())
}

/// A stage's output schema: `input`'s fields less those the outputs replace (by name), then the
/// `outputs`, in that order. Build the batches with [`assemble`].
pub fn with_outputs(input: &Schema, outputs: Vec<Field>) -> SchemaRef {
    let names: Vec<&str> = outputs.iter().map(|f| f.name().as_str()).collect();
    let mut fields: Vec<Field> = without(input, &names).fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(outputs);
    Arc::new(Schema::new(fields))
}

/// A batch of `schema` (made by [`with_outputs`]): its leading columns taken from `batch` by name,
/// then the `new` arrays for its last `new.len()` fields.
pub fn assemble(schema: &SchemaRef, batch: &RecordBatch, new: Vec<ArrayRef>) -> Result<RecordBatch> {
    let kept = schema.fields().len().checked_sub(new.len()).ok_or_else(|| {
        Error::msg(format!("{} new columns for a schema of {} columns", new.len(), schema.fields().len()))
    })?;
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in &schema.fields()[..kept] {
        columns.push(column(batch, field.name())?.clone());
    }
    columns.extend(new);
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// How two schemas differ in their columns' names and types (see [`same_columns`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnMismatch {
    /// They have different numbers of columns.
    Count {
        /// The columns of the schema checked, by name.
        got: Vec<String>,
        /// The columns of the schema it should match, by name.
        expected: Vec<String>,
    },
    /// The first column, by position (from 0), whose name or type differs.
    Column {
        /// The column's position.
        index: usize,
        /// The column of the schema checked.
        got: Box<Field>,
        /// The column of the schema it should match.
        expected: Box<Field>,
    },
}

impl std::fmt::Display for ColumnMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnMismatch::Count { got, expected } => {
                let n = got.len();
                let columns = if n == 1 { "column" } else { "columns" };
                write!(
                    f,
                    "{n} {columns} ({}) where {} were expected ({})",
                    got.join(", "),
                    expected.len(),
                    expected.join(", ")
                )
            }
            ColumnMismatch::Column { index, got, expected } => write!(
                f,
                "column {} is `{}` ({}) where `{}` ({}) was expected",
                index + 1,
                got.name(),
                got.data_type(),
                expected.name(),
                expected.data_type()
            ),
        }
    }
}

impl std::error::Error for ColumnMismatch {}

/// Checks that `got` has the columns of `expected`: as many, in the same order, each of the same
/// name and type (nullability and metadata are not compared). The one check of "the same columns"
/// for emitted batches, restarted plugin processes and the like.
pub fn same_columns(got: &Schema, expected: &Schema) -> std::result::Result<(), ColumnMismatch> {
    if got.fields().len() != expected.fields().len() {
        let names = |s: &Schema| s.fields().iter().map(|f| f.name().clone()).collect();
        return Err(ColumnMismatch::Count { got: names(got), expected: names(expected) });
    }
    match got
        .fields()
        .iter()
        .zip(expected.fields())
        .position(|(g, e)| g.name() != e.name() || g.data_type() != e.data_type())
    {
        None => Ok(()),
        Some(index) => Err(ColumnMismatch::Column {
            index,
            got: Box::new(got.field(index).clone()),
            expected: Box::new(expected.field(index).clone()),
        }),
    }
}

/// The first field of `needed` that `schema` lacks, by name and type (`schema` may have more
/// columns, in any order); `None` when it has them all.
pub fn first_missing<'a>(schema: &Schema, needed: &'a Schema) -> Option<&'a Field> {
    needed
        .fields()
        .iter()
        .map(|f| f.as_ref())
        .find(|need| schema.field_with_name(need.name()).map_or(true, |have| have.data_type() != need.data_type()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_types() {
        assert_eq!(normalize_type(&DataType::LargeUtf8), DataType::Utf8);
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View));
        assert_eq!(normalize_type(&dict), DataType::Utf8);
        let ll = DataType::LargeList(Arc::new(Field::new("item", DataType::LargeBinary, true)));
        assert_eq!(normalize_type(&ll), DataType::List(Arc::new(Field::new("item", DataType::Binary, true))));
        let a: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec!["x"]));
        assert_eq!(normalize_array(a).unwrap().data_type(), &DataType::Utf8);
    }

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(fields.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect::<Vec<_>>())
    }

    #[test]
    fn outputs_replace_input_columns_of_their_names_and_come_last() {
        let input = schema(&[("id", DataType::Utf8), ("score", DataType::Int64), ("text", DataType::Utf8)]);
        let out = with_outputs(&input, vec![Field::new("score", DataType::Float32, false)]);
        let names: Vec<&str> = out.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "text", "score"]);
        assert_eq!(out.field(2).data_type(), &DataType::Float32);
        assert_eq!(without(&input, &["id", "text"]).fields().len(), 1);

        let batch = RecordBatch::try_new(
            Arc::new(input),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let score: ArrayRef = Arc::new(arrow::array::Float32Array::from(vec![0.5, 0.25]));
        let got = assemble(&out, &batch, vec![score]).unwrap();
        assert_eq!(got.schema(), out);
        assert_eq!(utf8(&got, "text").unwrap().value(1), "y");
        assert!(assemble(&out, &batch, vec![]).is_err(), "a missing new column is an error");
    }

    #[test]
    fn same_columns_says_which_column_differs() {
        let a = schema(&[("id", DataType::Utf8), ("score", DataType::Float64)]);
        assert_eq!(same_columns(&a, &a), Ok(()));
        let nullable =
            Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("score", DataType::Float64, false)]);
        assert_eq!(same_columns(&nullable, &a), Ok(()), "nullability is not compared");
        let b = schema(&[("id", DataType::Utf8), ("score", DataType::Float32)]);
        assert_eq!(
            same_columns(&b, &a).unwrap_err().to_string(),
            "column 2 is `score` (Float32) where `score` (Float64) was expected"
        );
        let c = schema(&[("id", DataType::Utf8)]);
        assert_eq!(same_columns(&c, &a).unwrap_err().to_string(), "1 column (id) where 2 were expected (id, score)");
        assert_eq!(first_missing(&a, &c), None);
        assert_eq!(first_missing(&c, &a).map(|f| f.name().as_str()), Some("score"));
        assert_eq!(first_missing(&b, &a).map(|f| f.name().as_str()), Some("score"), "a type differs");
    }

    #[test]
    fn require_names_the_columns() {
        let schema =
            Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("text", DataType::Utf8, true)]);
        let err = require(&schema, "column", "txt", &[]).unwrap_err();
        let Error::Config { key, hint, .. } = err else { panic!() };
        assert_eq!(key.as_deref(), Some("column"));
        assert!(hint.unwrap().starts_with("did you mean `text`?"));
        assert!(require(&schema, "column", "text", &[DataType::Binary]).is_err());
    }
}
