//! File-name templates: literal text and `{column}` placeholders filled from a row; and the one
//! file per row that `sink.files` and `sink.images` write with them.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use arrow::array::Array;
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pipeline::plugin::contained_path;
use pipeline::{Emitter, Error, Result, StageContext, write_atomic};
use rayon::prelude::*;

/// A name template: literal text and `{column}` placeholders.
pub(crate) struct Template {
    /// The param it comes from, for errors.
    key: String,
    parts: Vec<(bool, String)>,
}

impl Template {
    pub(crate) fn parse(key: &str, text: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close =
                rest[open..].find('}').ok_or_else(|| Error::config(key, format!("unclosed '{{' in \"{text}\"")))?;
            parts.push((false, rest[..open].to_string()));
            parts.push((true, rest[open + 1..open + close].to_string()));
            rest = &rest[open + close + 1..];
        }
        parts.push((false, rest.to_string()));
        Ok(Template { key: key.to_string(), parts })
    }

    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter(|(p, _)| *p).map(|(_, n)| n.as_str())
    }

    /// Checks at validate time that the placeholders' columns exist in `input`.
    pub(crate) fn check(&self, input: &Schema) -> Result<()> {
        for name in self.columns() {
            pipeline::columns::require(input, &self.key, name, &[])?;
        }
        Ok(())
    }

    pub(crate) fn render(&self, batch: &RecordBatch, row: usize) -> Result<String> {
        let options = FormatOptions::default();
        let mut out = String::new();
        for (placeholder, text) in &self.parts {
            if *placeholder {
                let column = pipeline::columns::column(batch, text)?;
                let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
                out.push_str(&formatter.value(row).to_string());
            } else {
                out.push_str(text);
            }
        }
        Ok(out)
    }

    /// The file this row names under `dir`; an error (for the row) when the name would leave it.
    pub(crate) fn file_in(&self, dir: &Path, batch: &RecordBatch, row: usize) -> std::result::Result<PathBuf, String> {
        let name = self.render(batch, row).map_err(|e| e.to_string())?;
        let rel = contained_path(&name).ok_or_else(|| format!("file name \"{name}\" leaves the folder"))?;
        Ok(dir.join(rel))
    }
}

/// One file per row, from a column, named by a template under a folder: what `sink.files` and
/// `sink.images` write.
pub(crate) struct FilePerRow {
    /// The column each file comes from.
    pub column: String,
    pub dir: PathBuf,
    pub template: Template,
}

impl FilePerRow {
    /// Writes a file for each row of `batch`, atomically and in parallel, with the bytes `data`
    /// gives for the row, commits the rows written in the run journal (their folders fsynced
    /// first), and passes them on. A row is rejected when its column is empty, its name would
    /// leave `dir`, or `data` or the write fails. A row this sink committed before (in the run a
    /// resumed one continues) is passed on without being written again.
    pub(crate) fn write<'a>(
        &self,
        batch: &'a RecordBatch,
        out: &mut Emitter,
        cx: &mut StageContext,
        data: impl Fn(usize) -> std::result::Result<Cow<'a, [u8]>, String> + Sync,
    ) -> Result<()> {
        let column = pipeline::columns::column(batch, &self.column)?;
        let ids = pipeline::columns::ids(batch)?;
        let journal = cx.journal();
        let fresh: Vec<bool> = ids.iter().map(|id| !journal.has(id.unwrap_or_default())).collect();
        let results: Vec<std::result::Result<Option<PathBuf>, String>> = (0..batch.num_rows())
            .into_par_iter()
            .map(|row| {
                if !fresh[row] {
                    return Ok(None);
                }
                if column.is_null(row) {
                    return Err(format!("`{}` is empty", self.column));
                }
                let path = self.template.file_in(&self.dir, batch, row)?;
                write_atomic(&path, &data(row)?).map_err(|e| e.to_string())?;
                Ok(Some(path))
            })
            .collect();
        let mut folders: Vec<&Path> = results.iter().flatten().flatten().filter_map(|p| p.parent()).collect();
        folders.sort();
        folders.dedup();
        for folder in folders {
            std::fs::File::open(folder).and_then(|d| d.sync_all()).map_err(|e| Error::io(folder, e))?;
        }
        let keep = cx.reject_failed(batch, &results)?;
        let written: arrow::array::BooleanArray = results.iter().map(|r| Some(matches!(r, Ok(Some(_))))).collect();
        let committed = arrow::compute::filter_record_batch(batch, &written)?;
        cx.journal().commit(pipeline::columns::ids(&committed)?, &[])?;
        out.emit(arrow::compute::filter_record_batch(batch, &keep)?)
    }
}
