//! `collect.table`: rows from CSV, Parquet, JSONL or Arrow files (one file, a glob, or a dataset
//! folder of parts), streamed in batches. The schema comes from the first file's header or footer
//! (CSV and JSONL types are inferred from its first rows that can be read), so downstream stages
//! are type-checked before data is read; every later file is read with it. Files of a folder or a
//! glob that lie under Hive partition folders (`label=3/part-0.parquet`) get the partition
//! columns back, after the files' own ([`hive`]).
//!
//! A bad row costs that row only, and every row is accounted for, read or rejected:
//! - CSV and JSONL: a row that cannot be read is rejected under `file:line`, e.g. `rows.csv:2004`
//!   (lines from 1, the header is line 1; a quoted CSV field may span lines, and the line is then
//!   the one the record starts on), with the cause: `2 fields where the header has 3`,
//!   ``column `score`: "many" is not Int64``, ``field 3 (`note`) is not UTF-8 text``,
//!   `not valid JSON: ...`, `the line is not UTF-8 text`, ``id_column `name` is empty``. The rows
//!   around it are read. Batches that decode are taken whole; only a batch that fails is read
//!   again record by record (JSONL: line by line, a line being a row).
//! - Parquet: a corrupt row group is rejected under the file's name with the count of its rows not
//!   read (one rejects.jsonl line with `"rows": N`): `row group 3 of 6 is corrupt, 500 rows not
//!   read (rows 1000-1499 of the file): ...`, and the next row group is read. Rows of Parquet and
//!   Arrow files are counted from 0.
//! - Arrow IPC: a corrupt record batch is rejected the same way (`record batch 2 of 3 is corrupt,
//!   1000 rows not read ...`), its rows counted from its message header, or, when that header is
//!   lost too, with a reason that says their count is unknown (and counts as one reject).
//! - A file that cannot be opened, or whose footer is lost, is rejected whole under its name, its
//!   row count unknown. An empty CSV (no header) is reported with `"rows": 0`.
//!
//! Without `id_column`, `id` is the row's number across the files, from "0": a row's position in
//! its file (data records for CSV, non-blank lines for JSONL, rows for Parquet and Arrow) after
//! the rows of the files before it. A rejected row keeps its number, so the other rows have the
//! ids they would have had, whatever is rejected (only a file whose row count is lost shifts the
//! numbers of the files after it). Decoders run inside [`pipeline::panics::catch`], so corrupt
//! data never panics the run.

#[cfg(test)]
mod changes;
mod csv;
#[cfg(test)]
mod fuzz;
mod hive;
mod ipc;
mod jsonl;
mod lines;
mod parquet;
mod paths;
mod read;
mod remote;
mod shape;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use pipeline::columns::normalize_schema;
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Source, Stage, StageContext,
};
use schemars::JsonSchema;
use serde::Deserialize;

use hive::Partitions;
use read::{Event, FileContext, Format, format_of, read_file};
use shape::Shape;

/// The `collect.table` plugin.
pub struct CollectTable;

/// Params of `collect.table`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableParams {
    /// A file, a glob or a folder, relative to the pipeline file; the format follows the
    /// extension: .parquet/.pq, .csv, .jsonl/.ndjson or .arrow/.ipc/.feather (any case). A folder
    /// is a dataset: its table files at any depth, in sorted path order (names starting with `.`
    /// or `_` left out). The `KEY=VALUE` folders between a folder (or a glob's fixed part) and
    /// its files are Hive partitions: each becomes a column after the files' own, percent-decoded,
    /// `__HIVE_DEFAULT_PARTITION__` as null, Int32 when every value is a 32-bit integer, else text.
    /// A URL (`s3://`, `gs://`, `az://`, `https://`) names one object, with a trailing `/` a
    /// prefix read as a dataset folder, or with a glob in its key (`s3://bucket/data/*.parquet`)
    /// the objects under the literal prefix whose rest matches; each object is streamed to a
    /// staged local file and read. Over http(s) a prefix or glob needs a WebDAV server.
    pub path: String,
    /// Columns to keep, in this order; all when absent.
    pub columns: Option<Vec<String>>,
    /// A column whose values (as text) become `id`; else `id` is the row's number across the
    /// files, from "0" (a rejected row keeps its number).
    pub id_column: Option<String>,
}

/// Rows read to infer CSV and JSONL column types.
const INFER_ROWS: usize = 1000;

impl Plugin for CollectTable {
    fn name(&self) -> &'static str {
        "collect.table"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Source
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Source,
            "Reads rows from CSV, Parquet, JSONL or Arrow files (a path, a glob, or a folder of \
             parts with Hive partition folders, whose columns are restored), in file order. The \
             first file's header fixes the schema. A bad row is a per-item error that costs \
             that row only: CSV and JSONL rows are rejected as `file:line` (the header is line 1), \
             a corrupt Parquet row group or Arrow record batch is rejected under the file's name \
             with the count of rows not read, and the rest of the file is read. `path` may be an \
             s3://, gs://, az:// or https:// URL (an object, a prefix ending in `/`, or a glob).",
        )
        .params::<TableParams>()
        .writes("id", "Utf8", "the id_column's value, else the row number across files (rejected rows keep theirs)")
        .writes("<columns>", "as in the file", "the file's columns (or `columns`)")
        .writes("<partitions>", "Int32 or Utf8", "a folder's Hive partition columns, after the file's")
        .example("[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"data/*.csv\"\ncolumns = [\"prompt\"]")
    }

    fn build(&self, params: &Params, _input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: TableParams = params.parse()?;
        let (listing, remote) = match pipeline::storage::is_url(&p.path) {
            true => {
                let (listing, remote) = remote::list(&cx.output_dir, &p.path)?;
                (listing, Some(remote))
            }
            false => (paths::expand(&cx.pipeline_dir, &p.path)?, None),
        };
        if listing.files.is_empty() {
            return Err(Error::config("path", format!("no file matches \"{}\"", p.path))
                .with_hint("paths are relative to the pipeline file"));
        }
        let files: Vec<TableFile> = listing
            .files
            .into_iter()
            .map(|path| {
                let name = match &remote {
                    Some(r) => r.name_of(&path),
                    None => path.strip_prefix(&cx.pipeline_dir).unwrap_or(&path).display().to_string(),
                };
                Ok(TableFile { format: format_of(&path, &name)?, path, name })
            })
            .collect::<Result<_>>()?;
        let partitions = match &listing.root {
            Some(root) => {
                let paths: Vec<&std::path::Path> = files.iter().map(|f| f.path.as_path()).collect();
                let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
                Partitions::discover(root, &paths, &names)?
            }
            None => Partitions::default(),
        };
        let first = &files[0];
        if let Some(r) = &remote {
            r.fetch(&first.path)?;
        }
        let file_schema = normalize_schema(&read::schema(first.format, &first.path, &first.name)?);
        if file_schema.fields().is_empty() {
            return Err(Error::config("path", format!("{}: the file has no columns", first.name)));
        }
        let mut all: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for field in &partitions.fields {
            if file_schema.field_with_name(field.name()).is_ok() || field.name() == "id" {
                return Err(Error::config(
                    "path",
                    format!("`{}` is both a column of {} and a partition folder's name", field.name(), first.name),
                ));
            }
            all.push(field.clone());
        }
        if let Some(name) = &p.id_column {
            pipeline::columns::require(&file_schema, "id_column", name, &[])?;
        }
        let schema = output_schema(&Arc::new(Schema::new(all)), p.columns.as_deref(), p.id_column.as_deref())?;
        Ok(Stage::source(TableStage { files, id_column: p.id_column, file_schema, partitions, schema, remote }))
    }
}

/// The stage's output: `id`, then `columns` (all but `id` when absent) with the first file's
/// types; checks that the columns and `id_column` exist.
fn output_schema(file_schema: &SchemaRef, columns: Option<&[String]>, id_column: Option<&str>) -> Result<SchemaRef> {
    let names: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => file_schema.fields().iter().map(|f| f.name().clone()).filter(|n| n != "id").collect(),
    };
    let mut fields = vec![Field::new("id", DataType::Utf8, false)];
    for name in &names {
        let field = pipeline::columns::require(file_schema, "columns", name, &[])?;
        if name != "id" {
            fields.push(field.clone());
        }
    }
    match id_column {
        Some(name) => {
            pipeline::columns::require(file_schema, "id_column", name, &[])?;
        }
        None if file_schema.field_with_name("id").is_ok() => {
            return Err(Error::config("path", "the table has its own `id` column")
                .with_hint("set id_column = \"id\" to use it as the row id"));
        }
        None => {}
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// One file to read.
struct TableFile {
    path: PathBuf,
    /// The path relative to the pipeline file, as rejects name it.
    name: String,
    format: Format,
}

struct TableStage {
    /// The files to read, in order.
    files: Vec<TableFile>,
    id_column: Option<String>,
    /// The first file's schema, normalized: every file is read with it.
    file_schema: SchemaRef,
    /// The files' Hive partition columns (none for one file).
    partitions: Partitions,
    /// What the stage emits.
    schema: SchemaRef,
    /// Where the files come from when `path` is a URL: each is fetched before it is read.
    remote: Option<remote::RemoteTable>,
}

impl Source for TableStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn run(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let partitions = &self.partitions;
        // What the readers fill: the output less the partition columns, added to each batch after.
        let from_files: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .filter(|f| !partitions.fields.iter().any(|p| p.name() == f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        let shape = Shape {
            schema: Arc::new(Schema::new(from_files)),
            id_column: self.id_column.clone(),
            read_schema: self.file_schema.clone(),
        };
        let batch_size = cx.batch_size();
        let mut next = 0u64;
        for (i, file) in self.files.iter().enumerate() {
            let schema = &self.schema;
            let mut sink = |event: Event| match event {
                Event::Rows(batch) => out.emit(partitions.complete(batch, i, schema)?),
                Event::Reject { id, rows, reason } => cx.reject_rows(&id, rows, reason),
            };
            let mut fcx =
                FileContext { name: &file.name, shape: &shape, batch_size, first_number: next, sink: &mut sink };
            if let Some(r) = &self.remote {
                r.fetch(&file.path)?;
            }
            next += read_file(file.format, &file.path, &mut fcx)?;
            if let Some(r) = &self.remote {
                r.release(&file.path);
            }
        }
        Ok(())
    }
}
