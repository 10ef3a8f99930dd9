//! Reading one table file: the seam between the stage and the four formats. A reader sends
//! [`Event`]s (converted batches, rejects) to a sink and returns how many rows the file holds, so
//! the stage numbers the next file's rows after them; tests drive a reader with a collecting sink.

use std::path::Path;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use pipeline::{Error, Result};

use super::shape::{Converted, Shape};
use super::{csv, ipc, jsonl, parquet};

/// The table formats, chosen by extension: the one mapping of [`pipeline::formats`].
pub(crate) use pipeline::formats::TableFormat as Format;

/// The format of a file (named `name` in messages), by its extension.
pub(crate) fn format_of(path: &Path, name: &str) -> Result<Format> {
    Format::from_path(path).ok_or_else(|| {
        Error::config("path", format!("{name}: unknown table format"))
            .with_hint(format!("use {}", pipeline::formats::expected_extensions()))
    })
}

/// The schema of the file `path` (named `name` in messages), from its header or footer (a sample
/// of rows for CSV and JSONL); a file that cannot give one is a config error.
pub(crate) fn schema(format: Format, path: &Path, name: &str) -> Result<Schema> {
    match format {
        Format::Csv => csv::schema(path, name),
        Format::Jsonl => jsonl::schema(path, name),
        Format::Parquet => parquet::schema(path, name),
        Format::Arrow => ipc::schema(path, name),
    }
}

/// What a reader sends, in file order.
#[derive(Debug)]
pub(crate) enum Event {
    /// Rows read and converted to the output shape.
    Rows(RecordBatch),
    /// `rows` rows that could not be read, under `id` (`file:line`, or the file).
    Reject { id: String, rows: u64, reason: String },
}

/// What one file's reader needs, and where it sends what it reads.
pub(crate) struct FileContext<'a> {
    /// The file's name in rejects: its path relative to the pipeline file.
    pub name: &'a str,
    /// The output shape.
    pub shape: &'a Shape,
    /// Rows per emitted batch.
    pub batch_size: usize,
    /// The number of the file's first row, across the files.
    pub first_number: u64,
    /// Receives the events; an error (on_error = "fail", a stopped run) stops the reader.
    pub sink: &'a mut dyn FnMut(Event) -> Result<()>,
}

impl FileContext<'_> {
    /// Sends rows on (an empty batch is dropped).
    pub fn emit(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        (self.sink)(Event::Rows(batch))
    }

    /// Rejects `rows` rows under `id`.
    pub fn reject(&mut self, id: impl Into<String>, rows: u64, reason: impl Into<String>) -> Result<()> {
        (self.sink)(Event::Reject { id: id.into(), rows, reason: reason.into() })
    }

    /// The id of a text file's line, for rejects: `rows.csv:2004`.
    pub fn line_id(&self, line: u64) -> String {
        format!("{}:{line}", self.name)
    }

    /// Converts a decoded batch whose first row is the file's row `row` (from 0).
    pub fn convert(&self, batch: &RecordBatch, row: u64) -> std::result::Result<Converted, String> {
        self.shape.convert(batch, self.first_number + row)
    }

    /// Converts and sends a batch of a binary format (no lines), whose first row is the file's
    /// row `row`: rows that fail are rejected one by one under the file's name, and a batch that
    /// cannot be converted at all is rejected whole.
    pub fn convert_and_emit(&mut self, batch: &RecordBatch, row: u64) -> Result<()> {
        match self.convert(batch, row) {
            Ok((out, failed)) => {
                for (r, reason) in failed {
                    self.reject(self.name, 1, format!("row {} of the file: {reason}", row + r as u64))?;
                }
                self.emit(out)
            }
            Err(_) if batch.num_rows() == 0 => Ok(()),
            Err(reason) => {
                let n = batch.num_rows() as u64;
                self.reject(self.name, n, format!("rows {row}-{} of the file ({n} rows): {reason}", row + n - 1))
            }
        }
    }
}

/// Reads one file to the end, sending what it reads to `cx.sink`; returns the rows the file holds
/// (read or rejected), as far as the file says.
pub(crate) fn read_file(format: Format, path: &Path, cx: &mut FileContext) -> Result<u64> {
    match format {
        Format::Csv => csv::read(path, cx),
        Format::Jsonl => jsonl::read(path, cx),
        Format::Parquet => parquet::read(path, cx),
        Format::Arrow => ipc::read(path, cx),
    }
}

/// The message of a decoder that panicked on a file's bytes; never says "panicked", since the
/// panic was caught and is a fault of the data.
pub(crate) fn decoder_failed(format: Format, message: &str) -> String {
    format!("the {} decoder failed on corrupt data ({message})", format.name())
}

/// An arrow error's message without the kind arrow puts before it ("Json error: ").
pub(crate) fn arrow_message(e: arrow::error::ArrowError) -> String {
    use arrow::error::ArrowError::{CsvError, IpcError, JsonError, ParseError};
    match e {
        CsvError(s) | JsonError(s) | ParseError(s) | IpcError(s) => s,
        e => e.to_string(),
    }
}

/// Drives a reader in-process, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// What reading one file gave: the rows emitted, the rejects (id, rows, reason), the count
    /// the reader returned.
    #[derive(Debug, Default)]
    pub struct Read {
        pub batches: Vec<RecordBatch>,
        pub rejects: Vec<(String, u64, String)>,
        pub rows: u64,
    }

    impl Read {
        /// Rows emitted.
        pub fn emitted(&self) -> u64 {
            self.batches.iter().map(|b| b.num_rows() as u64).sum()
        }

        /// Rows rejected, with the counts of multi-row rejects.
        pub fn rejected(&self) -> u64 {
            self.rejects.iter().map(|r| r.1).sum()
        }

        /// The ids emitted, in order.
        pub fn ids(&self) -> Vec<String> {
            self.batches
                .iter()
                .flat_map(|b| pipeline::columns::ids(b).unwrap().iter().flatten().map(String::from).collect::<Vec<_>>())
                .collect()
        }
    }

    /// The shape that keeps every column of `schema`, ids from row numbers.
    pub fn shape_of(schema: &Schema) -> Shape {
        let read_schema = pipeline::columns::normalize_schema(schema);
        let mut fields = vec![Field::new("id", DataType::Utf8, false)];
        fields.extend(read_schema.fields().iter().map(|f| f.as_ref().clone()));
        Shape { schema: Arc::new(Schema::new(fields)), id_column: None, read_schema }
    }

    /// Reads `path` with `shape`, `batch_size` rows a batch; rejects name the file by its name.
    pub fn read(format: Format, path: &Path, shape: &Shape, batch_size: usize) -> Read {
        read_changing(format, path, shape, batch_size, |_| {})
    }

    /// Writes `good` and `bad` as `good.EXT` and `t.EXT` in `dir` (EXT the format's extension) and
    /// reads `t.EXT` with the schema of `good.EXT`, as a pipeline built on the good file reads the
    /// bad one; an error where the good file gives no schema.
    pub fn read_as_good(dir: &Path, format: Format, good: &[u8], bad: &[u8], batch_size: usize) -> Result<Read> {
        let name = format!("good.{}", format.extension());
        let (good_path, bad_path) = (dir.join(&name), dir.join(format!("t.{}", format.extension())));
        std::fs::write(&good_path, good).unwrap();
        std::fs::write(&bad_path, bad).unwrap();
        let shape = shape_of(&super::schema(format, &good_path, &name)?);
        Ok(read(format, &bad_path, &shape, batch_size))
    }

    /// A text file: `head`, then the lines `line(i)` for `i` in 1..=rows, each with a line end.
    pub fn text_file(head: &str, rows: usize, line: impl Fn(usize) -> String) -> Vec<u8> {
        let mut text = head.to_string();
        for i in 1..=rows {
            text.push_str(&line(i));
            text.push('\n');
        }
        text.into_bytes()
    }

    /// `rows` rows of a name (`r0`, `r1`, ...) and a score (0, 1, ...).
    pub fn names_and_scores(rows: usize) -> RecordBatch {
        use arrow::array::{ArrayRef, Int64Array, StringArray};
        RecordBatch::try_from_iter([
            ("name", Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("r{i}")))) as ArrayRef),
            ("score", Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef),
        ])
        .unwrap()
    }

    /// The bytes of an Arrow IPC file of `batch`, in record batches of `per_batch` rows (the last
    /// one shorter).
    pub fn arrow_file(batch: &RecordBatch, per_batch: usize) -> Vec<u8> {
        let (rows, per_batch) = (batch.num_rows(), per_batch.max(1));
        let mut out = Vec::new();
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut out, &batch.schema()).unwrap();
        for start in (0..rows).step_by(per_batch) {
            w.write(&batch.slice(start, per_batch.min(rows - start))).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        out
    }

    /// As [`read`], calling `change(n)` after the n-th batch (from 1) is emitted, so a test can
    /// change the file while it is read.
    pub fn read_changing(
        format: Format,
        path: &Path,
        shape: &Shape,
        batch_size: usize,
        mut change: impl FnMut(usize),
    ) -> Read {
        let mut got = Read::default();
        let (mut batches, mut rejects) = (Vec::new(), Vec::new());
        let mut sink = |e: Event| {
            match e {
                Event::Rows(b) => {
                    batches.push(b);
                    change(batches.len());
                }
                Event::Reject { id, rows, reason } => rejects.push((id, rows, reason)),
            }
            Ok(())
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut cx = FileContext { name: &name, shape, batch_size, first_number: 0, sink: &mut sink };
        got.rows = read_file(format, path, &mut cx).expect("the sink never fails");
        got.batches = batches;
        got.rejects = rejects;
        got
    }

    /// Cuts the file at `path` to `len` bytes.
    pub fn cut(path: &Path, len: u64) {
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
    }

    /// Appends `more` to the file at `path`.
    pub fn append(path: &Path, more: &[u8]) {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(more).unwrap();
    }
}
