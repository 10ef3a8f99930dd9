//! `sink.table`: the rows as one table file under the output folder, format by extension.
//!
//! Rows are committed as they arrive: each batch becomes a part in the run journal (fsynced before
//! the journal says so), so a killed run keeps them and the next run continues. At the end the
//! file is written once from the committed parts, in canonical order (the rows' order in their
//! source) and in batches of `batch_size` rows, so it is byte-identical whether or not the run was
//! interrupted. Parquet row groups are flushed by size, so memory stays flat however many rows
//! arrive.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use pipeline::columns::select;
use pipeline::formats::TableFormat as Format;
use pipeline::{
    AtomicFile, BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, ResultExt, Shard, Stage,
    StageContext, Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `sink.table` plugin.
pub struct SinkTable;

/// Params of `sink.table`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableParams {
    /// The file to write, under the output folder; the format follows the extension:
    /// .parquet/.pq, .csv, .jsonl/.ndjson or .arrow/.ipc/.feather (any case). Under
    /// `pipe run --shard I/N` it is a folder, and the shard writes its part of the dataset in it,
    /// `PATH/part-IIIII-of-NNNNN.EXT` (I from 0, 5 digits), beside the other shards' parts.
    pub path: String,
    /// Columns to write, in this order; all when absent.
    pub columns: Option<Vec<String>>,
}

/// Bytes buffered in a Parquet row group before it is flushed: large enough for good compression,
/// small enough that a sink's memory does not grow with the input until a big group fills.
const ROW_GROUP_BYTES: usize = 8 << 20;

impl Plugin for SinkTable {
    fn name(&self) -> &'static str {
        "sink.table"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Writes the rows to one table file (Parquet, CSV, JSONL or Arrow) under the output \
             folder, atomically. Tensor columns become lists; CSV refuses them at validate time.",
        )
        .params::<TableParams>()
        .reads("<columns>", "any", "the columns to write (all by default)")
        .example("[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"results.parquet\"")
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: TableParams = params.parse()?;
        let path = cx.output_path("path", &p.path)?;
        let format = Format::from_path(&path).ok_or_else(|| {
            Error::config("path", format!("\"{}\": unknown table format", p.path))
                .with_hint(format!("use {}", pipeline::formats::expected_extensions()))
        })?;
        let path = match cx.shard {
            Some(shard) => path.join(part_name(Some(shard), &path)),
            None => path,
        };
        let fields = match &p.columns {
            Some(names) => names
                .iter()
                .map(|n| pipeline::columns::require(input, "columns", n, &[]).cloned())
                .collect::<Result<Vec<_>>>()?,
            None => input.fields().iter().map(|f| f.as_ref().clone()).collect(),
        };
        if format == Format::Csv {
            for f in &fields {
                if matches!(
                    f.data_type(),
                    DataType::List(_)
                        | DataType::FixedSizeList(..)
                        | DataType::Struct(_)
                        | DataType::Map(..)
                        | DataType::Binary
                ) {
                    return Err(Error::config(
                        "path",
                        format!("CSV cannot hold column `{}` ({})", f.name(), f.data_type()),
                    )
                    .with_hint("write .parquet, .jsonl or .arrow, or leave the column out with `columns`"));
                }
            }
        }
        let written = Arc::new(Schema::new(fields));
        let on_file = file_schema(format, &written);
        Ok(Stage::transform(TableSink { path, format, written, on_file, schema: input.clone(), writer: None }))
    }
}

/// The name of a part of the dataset at `path`: `part-IIIII-of-NNNNN.EXT` for a shard (its index
/// from 0, of the count), `part-00000.EXT` without one; EXT is `path`'s extension as written.
fn part_name(shard: Option<Shard>, path: &Path) -> String {
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    match shard {
        Some(Shard { index, count }) => format!("part-{index:05}-of-{count:05}.{ext}"),
        None => format!("part-00000.{ext}"),
    }
}

enum Writer {
    Parquet(ArrowWriter<AtomicFile>),
    Csv(arrow::csv::Writer<AtomicFile>),
    Jsonl(arrow::json::LineDelimitedWriter<AtomicFile>),
    Arrow(arrow::ipc::writer::FileWriter<AtomicFile>),
}

struct TableSink {
    path: PathBuf,
    format: Format,
    /// The columns written (`columns`, else all).
    written: SchemaRef,
    /// The schema the file is written with, where it differs from `written` (tensor columns in
    /// Parquet and Arrow files, see [`file_schema`]); fixed with `written`, not per batch.
    on_file: Option<SchemaRef>,
    /// Its input's: rows pass on unchanged.
    schema: SchemaRef,
    writer: Option<Writer>,
}

/// The schema a file of `format` is written with: tensor columns as other readers expect them
/// ([`pipeline::tensor::file_field`]) in the formats that keep types; `None` where that is
/// `schema` itself.
fn file_schema(format: Format, schema: &SchemaRef) -> Option<SchemaRef> {
    let on_file = match format {
        Format::Parquet | Format::Arrow => {
            Schema::new(schema.fields().iter().map(|f| pipeline::tensor::file_field(f)).collect::<Vec<_>>())
        }
        Format::Csv | Format::Jsonl => return None,
    };
    (on_file != **schema).then(|| Arc::new(on_file))
}

impl TableSink {
    fn open(&self, schema: &SchemaRef) -> Result<Writer> {
        let schema = self.on_file.as_ref().unwrap_or(schema);
        let file = AtomicFile::create(&self.path)?;
        Ok(match self.format {
            Format::Parquet => {
                let props =
                    WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
                Writer::Parquet(ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err)?)
            }
            Format::Csv => Writer::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(file)),
            Format::Jsonl => Writer::Jsonl(arrow::json::LineDelimitedWriter::new(file)),
            Format::Arrow => Writer::Arrow(arrow::ipc::writer::FileWriter::try_new(file, schema)?),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let schema = self.written.clone();
        if self.writer.is_none() {
            self.writer = Some(self.open(&schema)?);
        }
        let batch = select(batch, &schema)?;
        let batch = match &self.on_file {
            None => batch,
            Some(on_file) => {
                let columns = batch
                    .columns()
                    .iter()
                    .zip(on_file.fields())
                    .map(|(c, f)| pipeline::tensor::to_file_array(c, f))
                    .collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new(on_file.clone(), columns)?
            }
        };
        match self.writer.as_mut().expect("opened above") {
            Writer::Parquet(w) => {
                w.write(&batch).map_err(parquet_err)?;
                if w.in_progress_size() > ROW_GROUP_BYTES {
                    w.flush().map_err(parquet_err)?;
                }
            }
            Writer::Csv(w) => w.write(&batch)?,
            Writer::Jsonl(w) => w.write(&batch)?,
            Writer::Arrow(w) => w.write(&batch)?,
        }
        Ok(())
    }
}

fn parquet_err(e: parquet::errors::ParquetError) -> Error {
    Error::external("Parquet", e).context(pipeline::Context::Doing("parquet".into()))
}

impl Transform for TableSink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let fresh = cx.journal().uncommitted(&batch)?;
        let rows = select(&fresh, &self.written)?;
        let ids = pipeline::columns::ids(&fresh)?;
        cx.journal().commit(ids, &[("rows", &rows, ids)])?;
        out.emit(batch)
    }

    fn finish(&mut self, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let schema = self.written.clone();
        self.writer = Some(self.open(&schema)?);
        let chunk = cx.batch_size();
        let path = self.path.clone();
        cx.journal().read("rows", chunk, |rows| self.write(&rows)).file(&path)?;
        let file = match self.writer.take().expect("opened above") {
            Writer::Parquet(w) => w.into_inner().map_err(parquet_err)?,
            Writer::Csv(w) => w.into_inner(),
            Writer::Jsonl(mut w) => {
                w.finish()?;
                w.into_inner()
            }
            Writer::Arrow(mut w) => {
                w.finish()?;
                w.into_inner()?
            }
        };
        file.commit().file(&path)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::Field;
    use pipeline::testing::Harness;

    use super::*;

    fn rows() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("score", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Int64Array::from(vec![1, 2]))];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// Writes `rows()` to `name` under the output folder `dir/out`; the file's path.
    fn write_rows(dir: &std::path::Path, name: &str) -> PathBuf {
        let h = Harness::new("save").in_dir(dir);
        let batch = rows();
        let mut stage = h.build(&SinkTable, &format!("path = \"{name}\""), &batch.schema()).unwrap();
        let out = h.run(&mut stage, vec![batch]).unwrap();
        assert_eq!(out.rows(), 2);
        dir.join("out").join(name)
    }

    #[test]
    fn pq_is_written_as_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_rows(dir.path(), "rows.pq");
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let back: Vec<RecordBatch> = reader.build().unwrap().collect::<std::result::Result<_, _>>().unwrap();
        assert_eq!(back.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        assert_eq!(back[0].schema().field(1).name(), "score");
    }

    #[test]
    fn every_table_extension_is_written_in_its_format() {
        let dir = tempfile::tempdir().unwrap();
        for (ext, format) in pipeline::formats::EXTENSIONS {
            let bytes = std::fs::read(write_rows(dir.path(), &format!("rows.{}", ext.to_uppercase()))).unwrap();
            let ok = match format {
                Format::Parquet => bytes.starts_with(b"PAR1"),
                Format::Arrow => bytes.starts_with(b"ARROW1"),
                Format::Csv => bytes.starts_with(b"id,score\n"),
                Format::Jsonl => bytes.starts_with(b"{\"id\":\"a\""),
            };
            assert!(ok, ".{ext}: {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(16)]));
        }
    }

    /// Writes `rows()` as shard `index` of `count` of the dataset `name` under `dir/out`.
    fn write_shard(dir: &std::path::Path, name: &str, index: u32, count: u32) {
        let h = Harness::new("save").in_dir(dir);
        let params = Params::from_toml("save", &format!("path = \"{name}\"")).unwrap();
        let mut cx = BuildContext::new("save", &h.pipeline_dir, &h.output_dir);
        cx.shard = Some(Shard { index, count });
        let batch = rows();
        let mut stage = SinkTable.build(&params, &batch.schema(), &cx).unwrap();
        assert_eq!(h.run(&mut stage, vec![batch]).unwrap().rows(), 2);
    }

    #[test]
    fn a_shard_writes_its_part_beside_the_other_shards_parts() {
        let dir = tempfile::tempdir().unwrap();
        for (ext, format) in pipeline::formats::EXTENSIONS {
            let name = format!("rows.{ext}");
            write_shard(dir.path(), &name, 3, 16);
            write_shard(dir.path(), &name, 0, 16);
            let folder = dir.path().join("out").join(&name);
            let mut parts: Vec<String> =
                std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            parts.sort();
            assert_eq!(parts, [format!("part-00000-of-00016.{ext}"), format!("part-00003-of-00016.{ext}")]);
            let bytes = std::fs::read(folder.join(&parts[1])).unwrap();
            let ok = match format {
                Format::Parquet => bytes.starts_with(b"PAR1"),
                Format::Arrow => bytes.starts_with(b"ARROW1"),
                Format::Csv => bytes.starts_with(b"id,score\n"),
                Format::Jsonl => bytes.starts_with(b"{\"id\":\"a\""),
            };
            assert!(ok, ".{ext}: {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(16)]));
        }
    }

    #[test]
    fn an_unknown_extension_lists_the_known_ones() {
        let h = Harness::new("save");
        let Err(Error::Config { key, hint, .. }) = h.build(&SinkTable, "path = \"rows.xlsx\"", &rows().schema()) else {
            panic!("rows.xlsx is no table format")
        };
        assert_eq!(key.as_deref(), Some("path"));
        assert_eq!(hint.as_deref(), Some("use .parquet/.pq, .csv, .jsonl/.ndjson or .arrow/.ipc/.feather"));
    }
}
