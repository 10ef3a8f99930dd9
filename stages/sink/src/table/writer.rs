//! One table file being written: Parquet, CSV, JSONL or Arrow IPC into an [`AtomicFile`], so it
//! appears at its path only when committed whole. Tensor columns are written as other readers
//! expect them ([`pipeline::tensor::file_field`]) in the formats that keep types.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, LogicalType, Type as PhysicalType, ZstdLevel};
use parquet::file::properties::WriterProperties;
use pipeline::formats::TableFormat as Format;
use pipeline::{AtomicFile, Error, Result, ResultExt};

/// Bytes buffered in a Parquet row group before it is flushed: large enough for good compression,
/// small enough that a sink's memory does not grow with the input until a big group fills.
pub(crate) const ROW_GROUP_BYTES: usize = 8 << 20;

/// The schema a file of `format` is written with: tensor columns as other readers expect them
/// in the formats that keep types; `None` where that is `schema` itself.
pub(crate) fn file_schema(format: Format, schema: &SchemaRef) -> Option<SchemaRef> {
    let on_file = match format {
        Format::Parquet | Format::Arrow => {
            Schema::new(schema.fields().iter().map(|f| pipeline::tensor::file_field(f)).collect::<Vec<_>>())
        }
        Format::Csv | Format::Jsonl => return None,
    };
    (on_file != **schema).then(|| Arc::new(on_file))
}

enum Inner {
    Parquet(ArrowWriter<AtomicFile>),
    Csv(arrow::csv::Writer<AtomicFile>),
    Jsonl(arrow::json::LineDelimitedWriter<AtomicFile>),
    Arrow(arrow::ipc::writer::FileWriter<AtomicFile>),
}

/// A table file open for writing, not yet at its path.
pub(crate) struct TableWriter {
    inner: Inner,
    /// The schema on file, where it differs from the batches' (see [`file_schema`]).
    on_file: Option<SchemaRef>,
    path: PathBuf,
}

impl TableWriter {
    /// Opens `path` (its folder is made) for batches of `schema`, written as `on_file` where given.
    pub(crate) fn open(path: &Path, format: Format, schema: &SchemaRef, on_file: Option<&SchemaRef>) -> Result<Self> {
        let file = AtomicFile::create(path)?;
        let schema = on_file.unwrap_or(schema);
        let inner = match format {
            Format::Parquet => {
                let props = parquet_properties(schema)?;
                Inner::Parquet(ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?)
            }
            Format::Csv => Inner::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(file)),
            Format::Jsonl => Inner::Jsonl(arrow::json::LineDelimitedWriter::new(file)),
            Format::Arrow => Inner::Arrow(arrow::ipc::writer::FileWriter::try_new(file, schema)?),
        };
        Ok(TableWriter { inner, on_file: on_file.cloned(), path: path.to_path_buf() })
    }

    /// Writes `batch` (the columns of the writer's schema); a Parquet row group is flushed once it
    /// holds more than `group_bytes`.
    pub(crate) fn write(&mut self, batch: &RecordBatch, group_bytes: usize) -> Result<()> {
        let converted;
        let batch = match &self.on_file {
            None => batch,
            Some(on_file) => {
                let columns = batch
                    .columns()
                    .iter()
                    .zip(on_file.fields())
                    .map(|(c, f)| pipeline::tensor::to_file_array(c, f))
                    .collect::<Result<Vec<_>>>()?;
                converted = RecordBatch::try_new(on_file.clone(), columns)?;
                &converted
            }
        };
        match &mut self.inner {
            Inner::Parquet(w) => {
                w.write(batch).map_err(parquet_err)?;
                if w.in_progress_size() > group_bytes {
                    w.flush().map_err(parquet_err)?;
                }
            }
            Inner::Csv(w) => w.write(batch)?,
            Inner::Jsonl(w) => w.write(batch)?,
            Inner::Arrow(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// Finishes the file and renames it into place.
    pub(crate) fn commit(self) -> Result<()> {
        let file = match self.inner {
            Inner::Parquet(w) => w.into_inner().map_err(parquet_err)?,
            Inner::Csv(w) => w.into_inner(),
            Inner::Jsonl(mut w) => {
                w.finish()?;
                w.into_inner()
            }
            Inner::Arrow(mut w) => {
                w.finish()?;
                w.into_inner()?
            }
        };
        file.commit().file(&self.path)
    }
}

/// How a Parquet file of `schema` is written: zstd, and no dictionary for floating-point columns
/// (logits, embeddings, pixels: values that seldom repeat, where interning each one costs more
/// time than the dictionary saves space, and the writer falls back to plain values anyway once
/// the dictionary page fills).
fn parquet_properties(schema: &SchemaRef) -> Result<WriterProperties> {
    let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default()));
    let descr = parquet::arrow::ArrowSchemaConverter::new().convert(schema).map_err(parquet_err)?;
    for column in descr.columns() {
        let float = matches!(column.physical_type(), PhysicalType::FLOAT | PhysicalType::DOUBLE)
            || matches!(column.logical_type_ref(), Some(LogicalType::Float16));
        if float {
            props = props.set_column_dictionary_enabled(column.path().clone(), false);
        }
    }
    Ok(props.build())
}

fn parquet_err(e: parquet::errors::ParquetError) -> Error {
    Error::external("Parquet", e).context(pipeline::Context::Doing("parquet".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn float_columns_are_written_without_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("x", DataType::Float32, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a", "b", "a", "b"])),
            Arc::new(Int64Array::from(vec![1, 1, 2, 2])),
            Arc::new(Float32Array::from(vec![0.5, 0.25, 0.5, 0.125])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let mut writer = TableWriter::open(&path, Format::Parquet, &schema, None).unwrap();
        writer.write(&batch, ROW_GROUP_BYTES).unwrap();
        writer.commit().unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary: Vec<bool> = group.columns().iter().map(|c| c.dictionary_page_offset().is_some()).collect();
        assert_eq!(dictionary, [true, true, false], "id and n keep their dictionary, x has none");
        let back =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
        assert_eq!(back, batch);
    }
}
