//! The output shape of `collect.table`: which columns, of which types, and the row ids. A batch
//! decoded from a file is converted to it row by row where it must be: a value that does not cast
//! to the first file's type, or an empty `id_column` value, costs that row only.

use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringBuilder};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::columns::normalize_array;

/// The declared output (`id` first, then the selected columns) and how to fill it.
pub(crate) struct Shape {
    /// The output schema: `id`, then the selected columns with the first file's types.
    pub schema: SchemaRef,
    /// The column whose values become `id`; else `id` is the row number.
    pub id_column: Option<String>,
    /// The first file's schema, normalized: what CSV and JSONL files are decoded with.
    pub read_schema: SchemaRef,
}

/// A converted batch and the rows left out of it: (row index in the decoded batch, why).
pub(crate) type Converted = (RecordBatch, Vec<(usize, String)>);

impl Shape {
    /// Converts a decoded batch whose first row has number `first` (the id when there is no
    /// `id_column`). Rows that fail are left out and listed; `Err` means no row can be converted
    /// (a missing column, a type that cannot be cast at all).
    pub fn convert(&self, batch: &RecordBatch, first: u64) -> Result<Converted, String> {
        let rows = batch.num_rows();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        columns.push(self.ids(batch, first, &mut failed)?);
        for field in &self.schema.fields()[1..] {
            let name = field.name();
            let column = batch.column_by_name(name).ok_or_else(|| format!("no column `{name}`"))?;
            let column = normalize_array(column.clone()).map_err(|e| e.to_string())?;
            if column.data_type() == field.data_type() {
                columns.push(column);
                continue;
            }
            let cast = arrow::compute::cast(&column, field.data_type()).map_err(|e| {
                format!(
                    "column `{name}` is {}, not {} as in the first file: {e}",
                    column.data_type(),
                    field.data_type()
                )
            })?;
            // A safe cast turns a value it cannot convert into a null: those rows failed.
            if cast.null_count() > column.null_count() {
                for row in (0..rows).filter(|&r| column.is_valid(r) && cast.is_null(r)) {
                    let value = arrow::util::display::array_value_to_string(&column, row).unwrap_or_default();
                    failed.push((row, format!("column `{name}`: {value:?} is not {}", field.data_type())));
                }
            }
            columns.push(cast);
        }
        if !failed.is_empty() {
            failed.sort_by_key(|(row, _)| *row);
            failed.dedup_by_key(|(row, _)| *row);
            let mut keep = vec![true; rows];
            for (row, _) in &failed {
                keep[*row] = false;
            }
            let keep = BooleanArray::from(keep);
            columns = columns
                .iter()
                .map(|c| arrow::compute::filter(c, &keep))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())?;
        Ok((batch, failed))
    }

    fn ids(&self, batch: &RecordBatch, first: u64, failed: &mut Vec<(usize, String)>) -> Result<ArrayRef, String> {
        let Some(name) = &self.id_column else {
            // Written into one buffer: a String per row would cost more than decoding the row.
            let rows = batch.num_rows();
            let mut ids = StringBuilder::with_capacity(rows, rows * 8);
            for i in first..first + rows as u64 {
                write!(ids, "{i}").map_err(|e| e.to_string())?;
                ids.append_value("");
            }
            return Ok(Arc::new(ids.finish()));
        };
        let column = batch.column_by_name(name).ok_or_else(|| format!("no column `{name}`"))?;
        let ids = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        if ids.null_count() > 0 {
            failed.extend(
                (0..ids.len()).filter(|&r| ids.is_null(r)).map(|r| (r, format!("id_column `{name}` is empty"))),
            );
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn shape(id_column: Option<&str>) -> Shape {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("score", DataType::Int64, true),
        ]));
        Shape { schema: schema.clone(), id_column: id_column.map(String::from), read_schema: schema }
    }

    fn batch(names: &[Option<&str>], scores: &[Option<&str>]) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("name", Arc::new(StringArray::from(names.to_vec())) as ArrayRef),
            ("score", Arc::new(StringArray::from(scores.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn a_value_that_does_not_cast_costs_its_row_only() {
        let b = batch(&[Some("a"), Some("b"), Some("c")], &[Some("1"), Some("x"), None]);
        let (out, failed) = shape(None).convert(&b, 10).unwrap();
        assert_eq!(failed, [(1, "column `score`: \"x\" is not Int64".to_string())]);
        let ids = out.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["10", "12"], "row numbers survive the gap");
        let scores = out.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(scores.iter().collect::<Vec<_>>(), [Some(1), None], "a null stays a null");
    }

    #[test]
    fn an_empty_id_costs_its_row_and_a_missing_column_costs_the_batch() {
        let b = batch(&[Some("a"), None], &[Some("1"), Some("2")]);
        let (out, failed) = shape(Some("name")).convert(&b, 0).unwrap();
        assert_eq!(failed, [(1, "id_column `name` is empty".to_string())]);
        assert_eq!(out.num_rows(), 1);
        assert_eq!(shape(Some("nope")).convert(&b, 0).unwrap_err(), "no column `nope`");
    }
}
