//! File-name templates: literal text and `{column}` placeholders filled from a row.

use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pipeline::plugin::contained_path;
use pipeline::{Error, Result};

/// A name template: literal text and `{column}` placeholders.
pub(crate) struct Template {
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
        Ok(Template { parts })
    }

    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter(|(p, _)| *p).map(|(_, n)| n.as_str())
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
