//! `collect.table`: rows from CSV, Parquet, JSONL or Arrow files (one file or a glob), streamed in
//! batches. The schema comes from the first file's header or footer (CSV and JSONL types are
//! inferred from their first rows), so downstream stages are type-checked before data is read.
//! A file that cannot be read or does not fit that schema is a per-item error: its remaining rows
//! are rejected under the file's name and the next file goes on.

use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use globset::GlobBuilder;
use pipeline::columns::{normalize_array, normalize_schema};
use pipeline::{BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `collect.table` plugin.
pub struct CollectTable;

/// Params of `collect.table`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableParams {
    /// A file or a glob, relative to the pipeline file; the format follows the extension: .csv,
    /// .parquet, .jsonl/.ndjson, .arrow/.ipc/.feather.
    pub path: String,
    /// Columns to keep, in this order; all when absent.
    pub columns: Option<Vec<String>>,
    /// A column whose values (as text) become `id`; else `id` is the row's number across the
    /// files, from "0".
    pub id_column: Option<String>,
}

/// Rows read to infer CSV and JSONL column types.
const INFER_ROWS: usize = 1000;

impl Plugin for CollectTable {
    fn name(&self) -> &'static str {
        "collect.table"
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Source,
            "Reads rows from CSV, Parquet, JSONL or Arrow files (a path or a glob), in file order. \
             The first file's header fixes the schema; a file that cannot be read or parsed is a \
             per-item error.",
        )
        .params::<TableParams>()
        .writes("id", "Utf8", "the id_column's value, else the row number across files")
        .writes("<columns>", "as in the file", "the file's columns (or `columns`)")
        .example("[[stage]]\nid = \"rows\"\nuses = \"collect.table\"\npath = \"data/*.csv\"\ncolumns = [\"prompt\"]")
    }

    fn build(&self, params: &Params, cx: &BuildContext) -> Result<Box<dyn Stage>> {
        let p: TableParams = params.parse()?;
        let files = expand(&cx.pipeline_dir, &p.path)?;
        if files.is_empty() {
            return Err(Error::config("path", format!("no file matches \"{}\"", p.path))
                .with_hint("paths are relative to the pipeline file"));
        }
        let files: Vec<(PathBuf, Format)> =
            files.iter().map(|f| Ok((f.clone(), Format::of(f)?))).collect::<Result<_>>()?;
        let file_schema = normalize_schema(&files[0].1.schema(&files[0].0)?);
        Ok(Box::new(TableStage {
            files,
            base: cx.pipeline_dir.clone(),
            columns: p.columns,
            id_column: p.id_column,
            csv_schema: file_schema.clone(),
            file_schema,
            selected: Vec::new(),
        }))
    }
}

/// The files a path or glob names, sorted.
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(pattern) {
        let path = base.join(pattern);
        return Ok(if path.is_file() { vec![path] } else { Vec::new() });
    }
    let parts: Vec<&str> = pattern.split('/').collect();
    let fixed = parts.iter().take_while(|p| !is_glob(p)).count();
    let dir = base.join(parts[..fixed].join("/"));
    let rest = parts[fixed..].join("/");
    let glob = GlobBuilder::new(&rest)
        .literal_separator(true)
        .build()
        .map_err(|e| Error::config("path", format!("invalid glob \"{pattern}\": {e}")))?
        .compile_matcher();
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter(|e| e.path().strip_prefix(&dir).is_ok_and(|rel| glob.is_match(rel)))
        .map(|e| e.into_path())
        .collect();
    out.sort();
    Ok(out)
}

#[derive(Clone, Copy)]
enum Format {
    Csv,
    Parquet,
    Jsonl,
    Arrow,
}

type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>;

impl Format {
    fn of(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "csv" => Format::Csv,
            "parquet" | "pq" => Format::Parquet,
            "jsonl" | "ndjson" => Format::Jsonl,
            "arrow" | "ipc" | "feather" => Format::Arrow,
            _ => {
                return Err(Error::config("path", format!("{}: unknown table format", path.display()))
                    .with_hint("use .csv, .parquet, .jsonl, .ndjson or .arrow"));
            }
        })
    }

    /// The file's schema from its header or footer (a sample of rows for CSV and JSONL).
    fn schema(self, path: &Path) -> Result<Schema> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let located = |e: ArrowError| Error::config("path", format!("{}: {e}", path.display()));
        match self {
            Format::Csv => Ok(arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(file, Some(INFER_ROWS))
                .map_err(located)?
                .0),
            Format::Jsonl => {
                Ok(arrow::json::reader::infer_json_schema_from_seekable(BufReader::new(file), Some(INFER_ROWS))
                    .map_err(located)?
                    .0)
            }
            Format::Parquet => {
                let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| Error::config("path", format!("{}: {e}", path.display())))?;
                Ok(b.schema().as_ref().clone())
            }
            Format::Arrow => {
                Ok(arrow::ipc::reader::FileReader::try_new(file, None).map_err(located)?.schema().as_ref().clone())
            }
        }
    }

    fn open(self, path: &Path, csv_schema: &SchemaRef, batch_size: usize) -> std::result::Result<Batches, String> {
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let s = |e: ArrowError| e.to_string();
        Ok(match self {
            Format::Csv => Box::new(
                arrow::csv::ReaderBuilder::new(csv_schema.clone())
                    .with_header(true)
                    .with_batch_size(batch_size)
                    .build(file)
                    .map_err(s)?,
            ),
            Format::Jsonl => {
                let schema =
                    arrow::json::reader::infer_json_schema_from_seekable(BufReader::new(&mut file), Some(INFER_ROWS))
                        .map_err(s)?
                        .0;
                file.rewind().map_err(|e| e.to_string())?;
                Box::new(
                    arrow::json::ReaderBuilder::new(Arc::new(schema))
                        .with_batch_size(batch_size)
                        .build(BufReader::new(file))
                        .map_err(s)?,
                )
            }
            Format::Parquet => Box::new(
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.with_batch_size(batch_size).build())
                    .map_err(|e| e.to_string())?,
            ),
            Format::Arrow => Box::new(arrow::ipc::reader::FileReader::try_new(file, None).map_err(s)?),
        })
    }
}

struct TableStage {
    /// The files to read, in order, with their formats.
    files: Vec<(PathBuf, Format)>,
    base: PathBuf,
    columns: Option<Vec<String>>,
    id_column: Option<String>,
    /// The first file's schema, normalized.
    file_schema: SchemaRef,
    /// The schema CSV files are read with (types inferred from the first file).
    csv_schema: SchemaRef,
    /// Output fields after `id`: (name, type) taken from each file.
    selected: Vec<Field>,
}

impl TableStage {
    /// Turns one batch of a file into output columns (after `id`), checking names and types.
    fn conform(&self, batch: &RecordBatch) -> std::result::Result<Vec<ArrayRef>, String> {
        self.selected
            .iter()
            .map(|field| {
                let column =
                    batch.column_by_name(field.name()).ok_or_else(|| format!("no column `{}`", field.name()))?;
                let column = normalize_array(column.clone()).map_err(|e| e.to_string())?;
                if column.data_type() == field.data_type() {
                    Ok(column)
                } else {
                    arrow::compute::cast(&column, field.data_type()).map_err(|e| {
                        format!(
                            "column `{}` is {}, not {} as in the first file: {e}",
                            field.name(),
                            column.data_type(),
                            field.data_type()
                        )
                    })
                }
            })
            .collect()
    }

    fn ids(&self, batch: &RecordBatch, next_row: &mut u64) -> std::result::Result<ArrayRef, String> {
        match &self.id_column {
            Some(name) => {
                let column = batch.column_by_name(name).ok_or_else(|| format!("no column `{name}`"))?;
                let ids = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
                if ids.null_count() > 0 {
                    return Err(format!("id_column `{name}` has an empty value"));
                }
                Ok(ids)
            }
            None => {
                let start = *next_row;
                *next_row += batch.num_rows() as u64;
                Ok(Arc::new(StringArray::from_iter_values((start..*next_row).map(|i| i.to_string()))))
            }
        }
    }
}

impl Stage for TableStage {
    fn output_schema(&mut self, _input: &SchemaRef) -> Result<SchemaRef> {
        let schema = &self.file_schema;
        let names: Vec<String> = match &self.columns {
            Some(c) => c.clone(),
            None => schema.fields().iter().map(|f| f.name().clone()).filter(|n| n != "id").collect(),
        };
        let mut fields = vec![Field::new("id", DataType::Utf8, false)];
        for name in &names {
            let field = pipeline::columns::require(schema, "columns", name, &[])?;
            if name != "id" {
                fields.push(field.clone());
            }
        }
        match &self.id_column {
            Some(name) => {
                pipeline::columns::require(schema, "id_column", name, &[])?;
            }
            None if schema.field_with_name("id").is_ok() => {
                return Err(Error::config("path", "the table has its own `id` column")
                    .with_hint("set id_column = \"id\" to use it as the row id"));
            }
            None => {}
        }
        self.selected = fields[1..].to_vec();
        Ok(Arc::new(Schema::new(fields)))
    }

    fn process(&mut self, _input: Option<RecordBatch>, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let mut next_row = 0u64;
        for (path, format) in self.files.clone() {
            let name = path.strip_prefix(&self.base).unwrap_or(&path).display().to_string();
            let batches = match format.open(&path, &self.csv_schema, cx.batch_size()) {
                Ok(b) => b,
                Err(reason) => {
                    cx.reject(&name, reason)?;
                    continue;
                }
            };
            let mut rows_read = 0usize;
            for batch in batches {
                let made = batch.map_err(|e| e.to_string()).and_then(|b| {
                    let columns = self.conform(&b)?;
                    let ids = self.ids(&b, &mut next_row)?;
                    Ok((b.num_rows(), ids, columns))
                });
                match made {
                    Ok((rows, ids, columns)) => {
                        rows_read += rows;
                        let mut all = vec![ids];
                        all.extend(columns);
                        out.emit(RecordBatch::try_new(out.schema().clone(), all)?)?;
                    }
                    Err(reason) => {
                        cx.reject(&name, format!("after {rows_read} rows: {reason}"))?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
