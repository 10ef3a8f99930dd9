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
