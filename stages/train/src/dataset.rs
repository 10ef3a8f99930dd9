//! The dataset a train stage receives, held in memory until its last batch: put in id order, given
//! a content hash that does not depend on how the rows were batched, and written as one Arrow IPC
//! file for the trainer.
//!
//! Each row is encoded with Arrow's row format (a canonical byte encoding of its values: equal
//! values give equal bytes, whatever buffers or slices they came in) and only the row's blake3
//! digest is kept, so ordering and hashing cost 32 bytes a row beyond the batches themselves.
//! Rows are ordered by `id`, and rows that share an id by their digest, so the order is total.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use arrow::array::{Array, StringArray};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use pipeline::{Error, Result, ResultExt};

use crate::key::KeyHasher;

/// Rows per record batch in the IPC file the trainer reads.
const FILE_BATCH_ROWS: usize = 65_536;

/// A row, named by its batch and its index in that batch.
pub type RowRef = (usize, usize);

/// Every batch a train stage received, with each row's digest.
pub struct Dataset {
    schema: SchemaRef,
    converter: RowConverter,
    batches: Vec<RecordBatch>,
    digests: Vec<Vec<[u8; 32]>>,
}

impl Dataset {
    /// An empty dataset of `schema`; fails when a column's type has no row encoding.
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let fields = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let converter = RowConverter::new(fields)?;
        Ok(Self { schema, converter, batches: Vec::new(), digests: Vec::new() })
    }

    /// Keeps `batch` and the digests of its rows.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ids = pipeline::columns::ids(&batch)?;
        if ids.null_count() > 0 {
            return Err(Error::msg("a row has a null `id`; the dataset is ordered by id"));
        }
        let rows = self.converter.convert_columns(batch.columns())?;
        self.digests.push(rows.iter().map(|row| *blake3::hash(row.as_ref()).as_bytes()).collect());
        self.batches.push(batch);
        Ok(())
    }

    /// Every row, in id order (rows that share an id in digest order).
    pub fn order(&self) -> Result<Vec<RowRef>> {
        let ids = self.batches.iter().map(pipeline::columns::ids).collect::<Result<Vec<&StringArray>>>()?;
        let mut order: Vec<RowRef> =
            self.digests.iter().enumerate().flat_map(|(b, d)| (0..d.len()).map(move |r| (b, r))).collect();
        order.sort_unstable_by(|&(ab, ar), &(bb, br)| {
            ids[ab].value(ar).cmp(ids[bb].value(br)).then_with(|| self.digests[ab][ar].cmp(&self.digests[bb][br]))
        });
        Ok(order)
    }

    /// Feeds the columns (names and types) and then the rows, in `order`, to the cache key.
    pub fn hash_into(&self, order: &[RowRef], key: &mut KeyHasher) {
        key.section("dataset");
        key.number(self.schema.fields().len() as u64);
        for field in self.schema.fields() {
            key.text(field.name());
            key.text(&format!("{:?}", field.data_type()));
            // The extension type carries a tensor column's shape, which is part of its meaning.
            let mut extension: Vec<(&String, &String)> =
                field.metadata().iter().filter(|(k, _)| k.starts_with("ARROW:extension:")).collect();
            extension.sort();
            key.number(extension.len() as u64);
            for (k, v) in extension {
                key.text(k);
                key.text(v);
            }
        }
        key.number(order.len() as u64);
        for &(b, r) in order {
            key.bytes(&self.digests[b][r]);
        }
    }

    /// Writes the rows, in `order`, as an Arrow IPC file.
    pub fn write_ipc(&self, order: &[RowRef], path: &Path) -> Result<()> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut writer = FileWriter::try_new(BufWriter::new(file), &self.schema).file(path)?;
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        for chunk in order.chunks(FILE_BATCH_ROWS) {
            let batch = interleave_record_batch(&batches, chunk)?;
            writer.write(&batch).file(path)?;
        }
        writer.finish().file(path)?;
        let file = writer.into_inner().file(path)?.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("x", DataType::Float64, true),
            Field::new("label", DataType::Int64, true),
        ]))
    }

    fn batch(ids: &[&str], x: &[Option<f64>], label: &[i64]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(Float64Array::from(x.to_vec())),
            Arc::new(Int64Array::from(label.to_vec())),
        ];
        RecordBatch::try_new(schema(), columns).unwrap()
    }

    fn key(batches: Vec<RecordBatch>) -> String {
        let mut d = Dataset::new(schema()).unwrap();
        for b in batches {
            d.push(b).unwrap();
        }
        let mut k = KeyHasher::new();
        d.hash_into(&d.order().unwrap(), &mut k);
        k.finish()
    }

    #[test]
    fn the_hash_does_not_depend_on_batching_or_order() {
        let ids = ["b", "a", "d", "c", "e"];
        let x = [Some(1.0), None, Some(3.5), Some(-0.0), Some(2.0)];
        let label = [1, 2, 3, 4, 5];
        let whole = batch(&ids, &x, &label);
        let one = key(vec![whole.clone()]);
        // The same rows, sliced into uneven batches (sliced arrays keep their parent's buffers).
        assert_eq!(one, key(vec![whole.slice(0, 2), whole.slice(2, 0), whole.slice(2, 3)]));
        // The same rows, arriving in another order.
        let reversed =
            batch(&["e", "c", "d", "a", "b"], &[Some(2.0), Some(-0.0), Some(3.5), None, Some(1.0)], &[5, 4, 3, 2, 1]);
        assert_eq!(one, key(vec![reversed.slice(0, 1), reversed.slice(1, 4)]));
        // One value changed, a sign of zero included, is another dataset.
        let changed = batch(&ids, &[Some(1.0), None, Some(3.5), Some(0.0), Some(2.0)], &label);
        assert_ne!(one, key(vec![changed]));
        // A null is not a zero.
        let null_label = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(Float64Array::from(vec![None::<f64>])),
                Arc::new(Int64Array::from(vec![2])),
            ],
        )
        .unwrap();
        let zero = batch(&["a"], &[Some(0.0)], &[2]);
        assert_ne!(key(vec![null_label]), key(vec![zero]));
    }

    #[test]
    fn tensor_columns_are_hashed_with_their_shape() {
        let tensor = |shape: &str| {
            let item = Arc::new(Field::new("item", DataType::Float32, false));
            let metadata = [
                ("ARROW:extension:name".to_string(), "arrow.fixed_shape_tensor".to_string()),
                ("ARROW:extension:metadata".to_string(), format!("{{\"shape\":{shape}}}")),
            ];
            let field = Field::new("pixels", DataType::FixedSizeList(item.clone(), 4), false)
                .with_metadata(metadata.into_iter().collect::<std::collections::HashMap<_, _>>());
            let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), field]));
            let values = arrow::array::Float32Array::from((0..8).map(|v| v as f32).collect::<Vec<_>>());
            let list = arrow::array::FixedSizeListArray::new(item, 4, Arc::new(values), None);
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["b", "a"])), Arc::new(list)])
                    .unwrap();
            let mut d = Dataset::new(schema).unwrap();
            d.push(batch).unwrap();
            let mut k = KeyHasher::new();
            d.hash_into(&d.order().unwrap(), &mut k);
            k.finish()
        };
        assert_eq!(tensor("[2,2]"), tensor("[2,2]"));
        assert_ne!(tensor("[2,2]"), tensor("[4,1]"));
    }

    #[test]
    fn rows_sharing_an_id_are_ordered_by_content() {
        let a = batch(&["a", "a"], &[Some(1.0), Some(2.0)], &[1, 2]);
        let b = batch(&["a", "a"], &[Some(2.0), Some(1.0)], &[2, 1]);
        assert_eq!(key(vec![a]), key(vec![b]));
    }

    #[test]
    fn the_file_holds_the_rows_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dataset::new(schema()).unwrap();
        d.push(batch(&["r2", "r0"], &[Some(2.0), Some(0.0)], &[2, 0])).unwrap();
        d.push(batch(&["r1"], &[Some(1.0)], &[1])).unwrap();
        let path = dir.path().join("data.arrow");
        d.write_ipc(&d.order().unwrap(), &path).unwrap();
        let reader = arrow::ipc::reader::FileReader::try_new(File::open(&path).unwrap(), None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let all = arrow::compute::concat_batches(&schema(), &batches).unwrap();
        let ids = all.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["r0", "r1", "r2"]);
        let labels = all.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(labels.values().to_vec(), [0, 1, 2]);
    }
}
