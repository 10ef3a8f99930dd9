//! `sink.table`: the rows as one table file under the output folder, format by extension, or as
//! a dataset of parts: one per shard (`pipe run --shard I/N`), and Hive-style partition folders
//! with `partition_by` (see [`partition`]).
//!
//! Rows are committed as they arrive: each batch becomes a part in the run journal (fsynced before
//! the journal says so), so a killed run keeps them and the next run continues. At the end the
//! files are written once from the committed parts, in canonical order (the rows' order in their
//! source) and in batches of `batch_size` rows, so they are byte-identical whether or not the run
//! was interrupted; each appears only when complete ([`pipeline::AtomicFile`]). Parquet row groups
//! are flushed by size, so memory stays flat however many rows arrive; a partitioned table keeps
//! at most [`OPEN_PARTS`] files open at once and reads the journal again for the partitions past
//! them.
//!
//! A `path` that is an `s3://`, `gs://` or `az://` URL is written the same way to a staged local
//! file under the output folder's `.pipe-remote/out/`, and each finished file is then uploaded
//! as one multipart upload, aborted on failure: an object appears only whole, and a run killed
//! before its uploads end leaves no partial object (the next run resumes and uploads).

mod partition;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::columns::select;
use pipeline::formats::TableFormat as Format;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, ResultExt, Shard, Stage, StageContext,
    Transform,
};
use schemars::JsonSchema;
use serde::Deserialize;

use partition::Partitioning;
use writer::{ROW_GROUP_BYTES, TableWriter, file_schema};

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
    /// An `s3://`, `gs://` or `az://` URL is written locally first and uploaded when finished.
    pub path: String,
    /// Columns to write, in this order; all when absent.
    pub columns: Option<Vec<String>>,
    /// Columns to partition by, Hive-style: `path` becomes a folder of partition folders,
    /// `PATH/label=3/part-00000.parquet` (`part-IIIII-of-NNNNN` under a shard), one level per
    /// column in this order, which pyarrow, polars and duckdb read with hive partitioning. The
    /// partition columns are not repeated inside the files; their values are escaped as Hive does
    /// (`/`, `=`, `%`, control characters and `"#'*:?\{[]^` as `%XX`), and a null or empty value is
    /// `__HIVE_DEFAULT_PARTITION__` (read back as null). Integer, text, boolean and date columns
    /// only. A partition that an earlier run wrote and this one has no rows for is removed.
    #[serde(default)]
    pub partition_by: Vec<String>,
}

/// The most part files a partitioned table writes at once: more partitions than this are written
/// in further passes over the journal, so open files and buffered row groups stay bounded.
const OPEN_PARTS: usize = 128;

/// The smallest Parquet row group a partitioned table flushes when many parts are open: the
/// buffer of [`ROW_GROUP_BYTES`] is shared among them down to this.
const MIN_GROUP_BYTES: usize = 128 << 10;

impl Plugin for SinkTable {
    fn name(&self) -> &'static str {
        "sink.table"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    /// With `columns`: those, the partition columns and the ids.
    fn reads_only(&self, params: &Params) -> Option<Vec<String>> {
        let p: TableParams = params.parse().ok()?;
        let mut cols = p.columns?;
        cols.extend(p.partition_by);
        cols.push("id".into());
        Some(cols)
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Writes the rows to one table file (Parquet, CSV, JSONL or Arrow) under the output \
             folder, atomically. Tensor columns become lists; CSV refuses them at validate time. \
             With `partition_by` the table is a folder of Hive-style partitions \
             (`PATH/label=3/part-00000.parquet`); under `pipe run --shard I/N` each shard writes \
             its part, `part-IIIII-of-NNNNN.EXT`, in the folder PATH. `path` may be an s3://, \
             gs:// or az:// URL: each finished file is uploaded whole (multipart).",
        )
        .params::<TableParams>()
        .reads("<columns>", "any", "the columns to write (all by default)")
        .reads("<partition_by>", "integer, text, boolean or date", "the partition columns (folder names)")
        .example(
            "[[stage]]\nid = \"save\"\nuses = \"sink.table\"\npath = \"results.parquet\"\n\
             # partition_by = [\"label\"]  # folders results.parquet/label=3/part-00000.parquet",
        )
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: TableParams = params.parse()?;
        let (path, upload) = match pipeline::storage::is_url(&p.path) {
            true => {
                let upload = pipeline::storage::upload_target(&cx.output_dir, "path", &p.path)?;
                (upload.local.clone(), Some(upload))
            }
            false => (cx.output_path("path", &p.path)?, None),
        };
        let format = Format::from_path(&path).ok_or_else(|| {
            Error::config("path", format!("\"{}\": unknown table format", p.path))
                .with_hint(format!("use {}", pipeline::formats::expected_extensions()))
        })?;
        let partitioning = match p.partition_by.is_empty() {
            true => None,
            false => Some(Partitioning::new(&p.partition_by, input)?),
        };
        let part = part_name(cx.shard, &path);
        let path = match (&partitioning, cx.shard) {
            (None, Some(_)) => path.join(&part),
            _ => path,
        };
        let keys = partitioning.as_ref().map_or(&[][..], Partitioning::columns);
        let fields = match &p.columns {
            Some(names) => names
                .iter()
                .filter(|n| !keys.contains(n))
                .map(|n| pipeline::columns::require(input, "columns", n, &[]).cloned())
                .collect::<Result<Vec<_>>>()?,
            None => input.fields().iter().filter(|f| !keys.contains(f.name())).map(|f| f.as_ref().clone()).collect(),
        };
        if fields.is_empty() {
            return Err(Error::config("partition_by", "no column is left to write inside the files")
                .with_hint("partition by fewer columns, or write more with `columns`"));
        }
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
        let mut journaled = fields.clone();
        for key in keys {
            journaled.push(input.field_with_name(key)?.clone());
        }
        let written = Arc::new(Schema::new(fields));
        let on_file = file_schema(format, &written);
        Ok(Stage::transform(TableSink {
            path,
            part,
            format,
            partitioning,
            journaled: Arc::new(Schema::new(journaled)),
            written,
            on_file,
            schema: input.clone(),
            upload,
        }))
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

struct TableSink {
    /// The file to write; the dataset's folder when partitioned.
    path: PathBuf,
    /// The name of this run's part in each partition folder.
    part: String,
    format: Format,
    partitioning: Option<Partitioning>,
    /// What is committed to the journal: `written`, then the partition columns.
    journaled: SchemaRef,
    /// The columns written into the files (`columns`, else all, less the partition columns).
    written: SchemaRef,
    /// The schema the files are written with, where it differs from `written` (tensor columns in
    /// Parquet and Arrow files, see [`file_schema`]); fixed with `written`, not per batch.
    on_file: Option<SchemaRef>,
    /// Its input's: rows pass on unchanged.
    schema: SchemaRef,
    /// Where the finished files are uploaded when `path` is a URL (`path` is then staged).
    upload: Option<pipeline::storage::Upload>,
}

impl TableSink {
    /// Uploads the finished file `path` to its object, when the table goes to a URL.
    fn upload(&self, path: &Path) -> Result<()> {
        let Some(upload) = &self.upload else {
            return Ok(());
        };
        let relative = path.strip_prefix(&upload.local).unwrap_or(path).to_string_lossy().replace('\\', "/");
        upload.remote.upload(path, &relative)
    }

    fn open(&self, path: &Path) -> Result<TableWriter> {
        TableWriter::open(path, self.format, &self.written, self.on_file.as_ref())
    }

    /// Writes the table in one file from the journal.
    fn write_file(&self, cx: &mut StageContext) -> Result<()> {
        let mut writer = self.open(&self.path)?;
        let chunk = cx.batch_size();
        let written = &self.written;
        cx.journal()
            .read("rows", chunk, |rows| writer.write(&select(&rows, written)?, ROW_GROUP_BYTES))
            .file(&self.path)?;
        writer.commit()?;
        self.upload(&self.path)
    }

    /// Writes the partitions from the journal, at most [`OPEN_PARTS`] files a pass, each pass
    /// taking the partitions in the order of their first row; then removes this sink's parts of
    /// partitions that have no rows any more.
    fn write_partitions(&self, partitioning: &Partitioning, cx: &mut StageContext) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let chunk = cx.batch_size();
        let mut finished: HashSet<PathBuf> = HashSet::new();
        loop {
            let mut open: Vec<TableWriter> = Vec::new();
            let mut slots: HashMap<PathBuf, usize> = HashMap::new();
            let mut order: Vec<PathBuf> = Vec::new();
            let mut more = false;
            cx.journal()
                .read("rows", chunk, |rows| {
                    for (folder, part) in partitioning.split(&rows, &self.written)? {
                        if finished.contains(&folder) {
                            continue;
                        }
                        let slot = match slots.get(&folder) {
                            Some(&slot) => slot,
                            None if open.len() < OPEN_PARTS => {
                                open.push(self.open(&self.path.join(&folder).join(&self.part))?);
                                slots.insert(folder.clone(), open.len() - 1);
                                order.push(folder);
                                open.len() - 1
                            }
                            None => {
                                more = true;
                                continue;
                            }
                        };
                        let group = (ROW_GROUP_BYTES / open.len()).max(MIN_GROUP_BYTES);
                        open[slot].write(&part, group)?;
                    }
                    Ok(())
                })
                .file(&self.path)?;
            for writer in open {
                writer.commit()?;
            }
            for folder in &order {
                self.upload(&self.path.join(folder).join(&self.part))?;
            }
            finished.extend(order);
            if !more {
                break;
            }
        }
        partitioning.remove_stale(&self.path, &self.part, &finished)
    }
}

impl Transform for TableSink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let fresh = cx.journal().uncommitted(&batch)?;
        let rows = select(&fresh, &self.journaled)?;
        let ids = pipeline::columns::ids(&fresh)?;
        cx.journal().commit(ids, &[("rows", &rows, ids)])?;
        out.emit(batch)
    }

    fn finish(&mut self, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        match &self.partitioning {
            Some(partitioning) => self.write_partitions(partitioning, cx),
            None => self.write_file(cx),
        }
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
            assert!(in_format(&bytes, *format), ".{ext}: {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(16)]));
        }
    }

    /// Whether `bytes` start as a file of `format` holding `rows()` does.
    fn in_format(bytes: &[u8], format: Format) -> bool {
        match format {
            Format::Parquet => bytes.starts_with(b"PAR1"),
            Format::Arrow => bytes.starts_with(b"ARROW1"),
            Format::Csv => bytes.starts_with(b"id,score\n"),
            Format::Jsonl => bytes.starts_with(b"{\"id\":\"a\""),
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
            assert!(in_format(&bytes, *format), ".{ext}: {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(16)]));
        }
    }

    /// Rows `0..n` with `label` = i % `labels`, in batches of 64.
    fn labelled(n: usize, labels: usize) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("label", DataType::Int64, false),
        ]));
        (0..n)
            .step_by(64)
            .map(|start| {
                let rows = start..n.min(start + 64);
                let ids = StringArray::from_iter_values(rows.clone().map(|i| format!("r{i:04}")));
                let labels = Int64Array::from_iter_values(rows.map(|i| (i % labels) as i64));
                RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(labels)]).unwrap()
            })
            .collect()
    }

    /// The ids in the Parquet file at `path`, in order.
    fn ids_in(path: &std::path::Path) -> Vec<String> {
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let mut ids = Vec::new();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            assert_eq!(batch.num_columns(), 1, "the partition column is not in the file");
            ids.extend(pipeline::columns::ids(&batch).unwrap().iter().flatten().map(String::from));
        }
        ids
    }

    #[test]
    fn more_partitions_than_open_files_are_all_written_in_row_order() {
        let dir = tempfile::tempdir().unwrap();
        let labels = OPEN_PARTS + 22;
        let batches = labelled(3 * labels, labels);
        let h = Harness::new("save").in_dir(dir.path());
        let params = "path = \"rows.parquet\"\npartition_by = [\"label\"]";
        let mut stage = h.build(&SinkTable, params, &batches[0].schema()).unwrap();
        h.run(&mut stage, batches).unwrap();
        let root = dir.path().join("out/rows.parquet");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), labels);
        for label in [0, 1, OPEN_PARTS - 1, OPEN_PARTS, labels - 1] {
            let want: Vec<String> = (0..3).map(|k| format!("r{:04}", label + k * labels)).collect();
            assert_eq!(ids_in(&root.join(format!("label={label}/part-00000.parquet"))), want, "label {label}");
        }
    }

    #[test]
    fn a_shard_of_a_partitioned_table_writes_its_part_in_each_partition() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::new("save").in_dir(dir.path());
        let params = Params::from_toml("save", "path = \"rows.parquet\"\npartition_by = [\"label\"]").unwrap();
        let mut cx = BuildContext::new("save", &h.pipeline_dir, &h.output_dir);
        cx.shard = Some(Shard { index: 1, count: 2 });
        let batches = labelled(6, 2);
        let mut stage = SinkTable.build(&params, &batches[0].schema(), &cx).unwrap();
        h.run(&mut stage, batches).unwrap();
        let part = dir.path().join("out/rows.parquet/label=1/part-00001-of-00002.parquet");
        assert_eq!(ids_in(&part), ["r0001", "r0003", "r0005"]);
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
