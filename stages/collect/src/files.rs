//! `collect.files`: one row per file of a folder, in sorted id order, with its bytes or text.
//!
//! The folder is listed first (ids must be sorted, and the list is small next to the contents),
//! then read batch by batch, the files of a batch in parallel. A file that cannot be read is a
//! per-item error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use globset::{Glob, GlobSet, GlobSetBuilder};
use pipeline::{BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `collect.files` plugin.
pub struct CollectFiles;

/// What to read from each file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// The file's bytes, in a Binary column `content`.
    #[default]
    Bytes,
    /// The file's text (UTF-8), in a Utf8 column `text`.
    Text,
    /// Nothing: only id, path and size.
    None,
}

/// Params of `collect.files`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesParams {
    /// The folder to read, relative to the pipeline file.
    pub path: String,
    /// Globs a file's id (its path relative to `path`) must match; all files when empty.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of ids to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Descend into subfolders.
    #[serde(default = "yes")]
    pub recursive: bool,
    /// What to read from each file: "bytes" (column `content`), "text" (column `text`) or "none".
    #[serde(default)]
    pub load: Load,
}

fn yes() -> bool {
    true
}

impl Plugin for CollectFiles {
    fn name(&self) -> &'static str {
        "collect.files"
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Source,
            "Reads a folder: one row per file, in sorted id order. Symlinks are not followed. \
             A file that cannot be read (or is not UTF-8 with load = \"text\") is a per-item error.",
        )
        .params::<FilesParams>()
        .writes("id", "Utf8", "path relative to `path`, '/'-separated")
        .writes("path", "Utf8", "the file's path as opened")
        .writes("size", "UInt64", "size in bytes")
        .writes("content", "Binary", "the bytes (load = \"bytes\")")
        .writes("text", "Utf8", "the text (load = \"text\")")
        .example("[[stage]]\nid = \"files\"\nuses = \"collect.files\"\npath = \"data/digits\"\ninclude = [\"*.png\"]")
    }

    fn build(&self, params: &Params, cx: &BuildContext) -> Result<Box<dyn Stage>> {
        let p: FilesParams = params.parse()?;
        let root = cx.resolve(&p.path);
        if !root.exists() {
            cx.warn(format!("folder {} does not exist yet", root.display()));
        } else if !root.is_dir() {
            return Err(Error::config("path", format!("{} is not a folder", root.display())));
        }
        Ok(Box::new(FilesStage {
            include: globs("include", &p.include)?,
            exclude: globs("exclude", &p.exclude)?,
            root,
            recursive: p.recursive,
            load: p.load,
        }))
    }
}

fn globs(key: &str, patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| Error::config(key, format!("invalid glob \"{p}\": {e}")))?;
        b.add(glob);
    }
    Ok(Some(b.build().map_err(|e| Error::config(key, e.to_string()))?))
}

struct FilesStage {
    root: PathBuf,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    recursive: bool,
    load: Load,
}

impl FilesStage {
    /// Lists the folder: ids (paths relative to the root) in sorted order. Entries that cannot be
    /// listed are rejected. Only ids are kept, the smallest list that gives the order.
    fn list(&self, cx: &mut StageContext) -> Result<Vec<String>> {
        if !self.root.is_dir() {
            return Err(Error::msg(format!("folder {} does not exist", self.root.display())));
        }
        let walk = walkdir::WalkDir::new(&self.root).follow_links(false).max_depth(if self.recursive {
            usize::MAX
        } else {
            1
        });
        let mut out = Vec::new();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let id = e.path().map(|p| relative_id(&self.root, p)).unwrap_or_default();
                    cx.reject(&id, format!("cannot list: {e}"))?;
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let id = relative_id(&self.root, entry.path());
            let keep = self.include.as_ref().is_none_or(|g| g.is_match(&id))
                && !self.exclude.as_ref().is_some_and(|g| g.is_match(&id));
            if keep {
                out.push(id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

fn relative_id(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

enum Loaded {
    Bytes(Vec<u8>),
    Text(String),
    Size(u64),
}

fn read_one(path: &Path, load: Load) -> std::result::Result<Loaded, String> {
    match load {
        Load::None => std::fs::metadata(path).map(|m| Loaded::Size(m.len())).map_err(|e| e.to_string()),
        Load::Bytes => std::fs::read(path).map(Loaded::Bytes).map_err(|e| e.to_string()),
        Load::Text => {
            let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
            String::from_utf8(bytes).map(Loaded::Text).map_err(|e| format!("not valid UTF-8: {e}"))
        }
    }
}

impl Stage for FilesStage {
    fn output_schema(&mut self, _input: &SchemaRef) -> Result<SchemaRef> {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("size", DataType::UInt64, false),
        ];
        match self.load {
            Load::Bytes => fields.push(Field::new("content", DataType::Binary, false)),
            Load::Text => fields.push(Field::new("text", DataType::Utf8, false)),
            Load::None => {}
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn process(&mut self, _input: Option<RecordBatch>, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let files = self.list(cx)?;
        for chunk in files.chunks(cx.batch_size()) {
            let paths: Vec<PathBuf> = chunk.iter().map(|id| self.root.join(id)).collect();
            let loaded: Vec<_> = paths.par_iter().map(|path| read_one(path, self.load)).collect();
            let (mut ids, mut shown, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
            let (mut bytes, mut texts) = (Vec::new(), Vec::new());
            for ((id, path), item) in chunk.iter().zip(&paths).zip(loaded) {
                let item = match item {
                    Ok(item) => item,
                    Err(reason) => {
                        cx.reject(id, format!("{}: {reason}", path.display()))?;
                        continue;
                    }
                };
                ids.push(id.as_str());
                shown.push(path.to_string_lossy().into_owned());
                match item {
                    Loaded::Bytes(b) => {
                        sizes.push(b.len() as u64);
                        bytes.push(b);
                    }
                    Loaded::Text(t) => {
                        sizes.push(t.len() as u64);
                        texts.push(t);
                    }
                    Loaded::Size(n) => sizes.push(n),
                }
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(shown)),
                Arc::new(UInt64Array::from(sizes)),
            ];
            match self.load {
                Load::Bytes => columns.push(Arc::new(BinaryArray::from_iter_values(bytes))),
                Load::Text => columns.push(Arc::new(StringArray::from(texts))),
                Load::None => {}
            }
            out.emit(RecordBatch::try_new(out.schema().clone(), columns)?)?;
        }
        Ok(())
    }
}
