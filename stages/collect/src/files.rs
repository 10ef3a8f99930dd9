//! `collect.files`: one row per file of a folder, in sorted id order, with its bytes or text.
//!
//! The folder is listed first (ids must be sorted, and the list is small next to the contents),
//! then read batch by batch, the files of a batch in parallel. A file that cannot be read (it
//! vanished or became unreadable since the listing, say) is a per-item error naming it.
//!
//! Each file is read by the real path the listing found, so a name that is not UTF-8 is read
//! like any other. Its id is the path relative to the folder, '/'-separated, each component
//! written as follows:
//!
//! - a component that is valid UTF-8 is written as it is (so the ids of such names never change);
//! - a component with bytes that are not UTF-8 (on Windows, unpaired surrogates) is escaped: each
//!   such byte becomes `%XX` (two upper-case hex digits), a literal `%` becomes `%25`, and every
//!   other character stays. Decoding every `%XX` of such a component gives its bytes back.
//!
//! The escape is one-to-one among escaped names, but a UTF-8 name can read like the escape of
//! another (a file literally named `a%FF` beside one named `a` + byte 0xFF). When two files of a
//! listing would share an id, the one with fewer escaped components keeps it and the other is
//! rejected at listing, so no two rows ever carry the same id.
//!
//! A URL `path` (`s3://bucket/prefix/`, `gs://`, `az://`, or `https://` on a WebDAV server) lists
//! the objects under the prefix, in key order; an object's id is its key relative to the prefix,
//! and `path` shows its URL. A glob in the URL (`s3://bucket/data/**/*.png`) lists its longest
//! literal prefix and keeps the keys whose rest matches (ids are relative to that prefix; the
//! glob, not `recursive`, decides the depth). A URL that names one object reads it, its id being
//! its file name. Each
//! object is streamed into a staged local file under the output folder's `.pipe-remote/`, read,
//! and removed; a missing object is a per-item error naming its URL.
//!
//! Where the planner asks ([`Source::defer`]: the one consumer starts an early cut-off of the
//! per-row cache), a local file whose last change is at least [`SETTLED`] old is not read: its
//! row carries a stamp in place of the content (a marker, then the inode, size, modification
//! and change times and the path), the cut-off looks the row up by it, and [`FileLoader`] reads
//! the rows it cannot answer, giving the rows this stage would have emitted.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use globset::{Glob, GlobSet, GlobSetBuilder};
use pipeline::{
    BuildContext, Deferred, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Source, Stage, StageContext,
};
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
    /// The folder to read, relative to the pipeline file, or a URL prefix
    /// (`s3://bucket/prefix/`, `gs://...`, `az://...`, `https://...` on a WebDAV server) whose
    /// objects are read, a URL with a glob (`s3://bucket/data/**/*.png`: the objects under the
    /// literal prefix whose rest matches), or the URL of one object.
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

    fn kind(&self) -> PluginKind {
        PluginKind::Source
    }

    /// One row per file, ids unique (a clash is rejected).
    fn unique_ids(&self, _params: &Params) -> bool {
        true
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Source,
            "Reads a folder: one row per file, in sorted id order. Symlinks are not followed. \
             A file that cannot be read (or is not UTF-8 with load = \"text\") is a per-item error. \
             Files are read by their real path; in an id, a path component that is not valid UTF-8 \
             is escaped: each byte that is not UTF-8 as %XX, a literal % as %25 (UTF-8 names are \
             kept as they are). Should a UTF-8 name read like another file's escaped id, the file \
             with more escaped components is rejected, so ids stay unique. `path` may be an \
             s3://, gs://, az:// or https:// (WebDAV) prefix, with a glob or not: its objects, ids \
             being keys relative to the prefix. Where the per-row cache's early cut-off starts              at its one consumer, a local file unchanged for 2 seconds is looked up by its stamp              (inode, size, times, path) and read only if the cache cannot answer it.",
        )
        .params::<FilesParams>()
        .writes("id", "Utf8", "path relative to `path`, '/'-separated; non-UTF-8 components escaped (%XX, % as %25)")
        .writes("path", "Utf8", "the file's path as opened, shown lossily (bytes that are not UTF-8 become U+FFFD)")
        .writes("size", "UInt64", "size in bytes: the bytes read (load = \"none\": the size the file system reports)")
        .writes("content", "Binary", "the bytes (load = \"bytes\")")
        .writes("text", "Utf8", "the text (load = \"text\")")
        .example("[[stage]]\nid = \"files\"\nuses = \"collect.files\"\npath = \"data/digits\"\ninclude = [\"*.png\"]")
    }

    fn build(&self, params: &Params, _input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let p: FilesParams = params.parse()?;
        let remote = match pipeline::storage::is_url(&p.path) {
            true => Some(Arc::new(pipeline::storage::open("path", &p.path, false)?)),
            false => None,
        };
        let root = match &remote {
            Some(remote) => pipeline::storage::staging_path(
                &cx.output_dir.join(pipeline::storage::STAGING).join(format!("files-{}", std::process::id())),
                &remote.url_of(""),
            ),
            None => cx.resolve(&p.path),
        };
        if remote.is_some() {
            // Listed at run time: the objects under a prefix may be written by then.
        } else if !root.exists() {
            cx.warn(format!("folder {} does not exist yet", root.display()));
        } else if !root.is_dir() {
            return Err(Error::config("path", format!("{} is not a folder", root.display())));
        }
        Ok(Stage::source(FilesStage {
            include: globs("include", &p.include)?,
            exclude: globs("exclude", &p.exclude)?,
            root,
            recursive: p.recursive,
            load: p.load,
            schema: output_schema(p.load),
            remote,
            shard: cx.shard,
            defer: false,
            settled: SETTLED,
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

/// The columns of a row: id, path, size, and the content `load` asks for.
fn output_schema(load: Load) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
    ];
    match load {
        Load::Bytes => fields.push(Field::new("content", DataType::Binary, false)),
        Load::Text => fields.push(Field::new("text", DataType::Utf8, false)),
        Load::None => {}
    }
    Arc::new(Schema::new(fields))
}

struct FilesStage {
    root: PathBuf,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    recursive: bool,
    load: Load,
    schema: SchemaRef,
    /// The store when `path` is a URL; `root` is then where its objects are staged.
    remote: Option<Arc<pipeline::storage::Remote>>,
    /// Under `--shard`: only this shard's files are read (the runner would drop the others'
    /// rows anyway), and only its entries are rejected.
    shard: Option<pipeline::Shard>,
    /// Whether a file whose stamp can be trusted is left unread ([`Source::defer`]), and how
    /// long ago its last change must be for that ([`SETTLED`]).
    defer: bool,
    settled: std::time::Duration,
}

/// A file of the listing: its id and its real path, relative to the root.
#[derive(Debug)]
struct Listed {
    id: String,
    relative: PathBuf,
    /// How many components of the path are not UTF-8 (and so escaped in the id).
    escaped: usize,
}

/// What listing a folder found: the files to read, in id order, and the entries it must reject.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<Listed>,
    /// (id, reason) of each entry that cannot be listed or whose id another file already has.
    rejected: Vec<(String, String)>,
}

impl FilesStage {
    /// Lists the folder: the files that pass the globs, sorted by id, with their real paths.
    /// Only the relative paths are kept next to the ids, the smallest list that can be read back.
    fn list(&self) -> Result<Listing> {
        if let Some(remote) = &self.remote {
            return self.list_remote(remote);
        }
        if !self.root.is_dir() {
            return Err(Error::msg(format!("folder {} does not exist", self.root.display())));
        }
        let walk = walkdir::WalkDir::new(&self.root).follow_links(false).max_depth(if self.recursive {
            usize::MAX
        } else {
            1
        });
        let mut listing = Listing::default();
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let id = e.path().map(|p| file_id(&self.root, p).0).unwrap_or_default();
                    listing.rejected.push((id, format!("cannot list: {e}")));
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let (id, escaped) = file_id(&self.root, entry.path());
            let keep = self.include.as_ref().is_none_or(|g| g.is_match(&id))
                && !self.exclude.as_ref().is_some_and(|g| g.is_match(&id));
            if keep {
                let relative = entry.path().strip_prefix(&self.root).unwrap_or(entry.path()).to_path_buf();
                listing.files.push(Listed { id, relative, escaped });
            }
        }
        // On a shared id the file with fewer escaped components (then the smaller raw path)
        // comes first and keeps it.
        listing.files.sort_unstable_by(|a, b| {
            (&a.id, a.escaped, a.relative.as_os_str().as_encoded_bytes()).cmp(&(
                &b.id,
                b.escaped,
                b.relative.as_os_str().as_encoded_bytes(),
            ))
        });
        let mut files: Vec<Listed> = Vec::with_capacity(listing.files.len());
        for file in listing.files {
            match files.last() {
                Some(kept) if kept.id == file.id => listing.rejected.push((
                    file.id.clone(),
                    format!(
                        "{}: its name is not UTF-8 and its escaped id is also the id of {}; rename one of them",
                        self.root.join(&file.relative).display(),
                        self.root.join(&kept.relative).display()
                    ),
                )),
                _ => files.push(file),
            }
        }
        listing.files = files;
        Ok(listing)
    }
}

impl FilesStage {
    /// Lists the objects under the URL's prefix that pass the globs, sorted by key.
    fn list_remote(&self, remote: &pipeline::storage::Remote) -> Result<Listing> {
        let mut listing = Listing::default();
        for object in remote.list()? {
            if object.relative.is_empty() {
                // The URL names one object: its file name is its id.
                let url = remote.url_of("");
                let id = url.rsplit('/').next().unwrap_or_default().to_string();
                listing.files.push(Listed { relative: PathBuf::new(), id, escaped: 0 });
                continue;
            }
            let id = object.relative;
            let keep = (self.recursive || remote.has_glob() || !id.contains('/'))
                && self.include.as_ref().is_none_or(|g| g.is_match(&id))
                && !self.exclude.as_ref().is_some_and(|g| g.is_match(&id));
            if keep {
                listing.files.push(Listed { relative: PathBuf::from(&id), id, escaped: 0 });
            }
        }
        Ok(listing)
    }

    /// Reads the file `relative`: the local one, or the object staged at `path` and removed after.
    /// Under [`Source::defer`], a local file whose stamp can be trusted is only looked at.
    fn read(&self, relative: &str, path: &Path) -> std::result::Result<Loaded, String> {
        let Some(remote) = &self.remote else {
            if self.defer
                && let Some((stamp, size)) = stamp_of(path, self.load, self.settled)
            {
                return Ok(Loaded::Stamp(stamp, size));
            }
            return read_one(path, self.load);
        };
        remote.download(relative, path).map_err(|e| e.to_string())?;
        let loaded = read_one(path, self.load);
        let _ = std::fs::remove_file(path);
        loaded
    }
}

/// The id of `path` under `root` (see the module doc) and how many of its components were escaped.
fn file_id(root: &Path, path: &Path) -> (String, usize) {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut escaped = 0;
    let parts: Vec<String> = rel
        .components()
        .map(|c| {
            let (part, was_escaped) = component_id(c.as_os_str());
            escaped += usize::from(was_escaped);
            part
        })
        .collect();
    (parts.join("/"), escaped)
}

/// One path component of an id: itself when it is UTF-8, else escaped; true when escaped.
fn component_id(name: &OsStr) -> (String, bool) {
    let bytes = name.as_encoded_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (text.to_string(), false);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    (out, true)
}

enum Loaded {
    Bytes(Vec<u8>),
    Text(String),
    Size(u64),
    /// A stamp in place of the content (bytes, or hex text for `load = "text"`), and the size.
    Stamp(Vec<u8>, u64),
}

/// What a stamp begins with: no content read is mistaken for a stamp unless it begins so too,
/// and such a file only gets read again.
const STAMP: &[u8] = b"\0pipe-stamp\0";

/// How old a file's last change must be before its stamp stands for its content: a change made
/// within the same tick of the file system's clock as the look, after it, could leave the times
/// as they were (the "racy" case); an older file's next change moves them.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// The stamp of the file at `path` (its inode, size, modification and change times, and the path
/// itself, for reading it later) and its size; `None` when it cannot be looked at or changed too
/// recently to be trusted (less than `settled` ago, [`SETTLED`]). Encoded for the column `load`
/// fills.
fn stamp_of(path: &Path, load: Load, settled: std::time::Duration) -> Option<(Vec<u8>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    let changed = |s: i64, ns: i64| std::time::UNIX_EPOCH + std::time::Duration::new(s.max(0) as u64, ns as u32);
    let last = changed(meta.mtime(), meta.mtime_nsec()).max(changed(meta.ctime(), meta.ctime_nsec()));
    if std::time::SystemTime::now().duration_since(last).ok()? < settled {
        return None;
    }
    let mut fields = Vec::with_capacity(40 + path.as_os_str().len());
    for v in [meta.ino() as i64, meta.len() as i64, meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec()] {
        fields.extend_from_slice(&v.to_le_bytes());
    }
    fields.extend_from_slice(path.as_os_str().as_encoded_bytes());
    let mut stamp = STAMP.to_vec();
    match load {
        Load::Text => stamp.extend(fields.iter().flat_map(|b| format!("{b:02x}").into_bytes())),
        _ => stamp.extend(fields),
    }
    Some((stamp, meta.len()))
}

/// The path a stamp names (see [`stamp_of`]); `None` for content that is not a stamp.
fn stamped_path(value: &[u8], load: Load) -> Option<PathBuf> {
    let rest = value.strip_prefix(STAMP)?;
    let fields: Vec<u8> = match load {
        Load::Text => {
            let hex = std::str::from_utf8(rest).ok()?;
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<_>>()?
        }
        _ => rest.to_vec(),
    };
    let path = fields.get(48..).filter(|p| !p.is_empty())?;
    // SAFETY: the bytes are those `as_encoded_bytes` gave for a path on this platform.
    Some(PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(path.to_vec()) }))
}

/// Reads what [`FilesStage`] left unread under [`Source::defer`].
struct FileLoader {
    load: Load,
    schema: SchemaRef,
}

impl FileLoader {
    /// The content column's values as bytes, borrowed from `batch`.
    fn content<'a>(&self, batch: &'a RecordBatch) -> Result<Vec<Option<&'a [u8]>>> {
        let column = batch.column(3);
        Ok(match self.load {
            Load::Text => column
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::msg("collect.files: the text column is not text"))?
                .iter()
                .map(|v| v.map(str::as_bytes))
                .collect(),
            _ => column
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| Error::msg("collect.files: the content column is not binary"))?
                .iter()
                .collect(),
        })
    }
}

impl Deferred for FileLoader {
    fn stamped(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        Ok(self.content(batch)?.iter().map(|v| v.is_some_and(|v| v.starts_with(STAMP))).collect())
    }

    fn load(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<(String, String)>)> {
        let ids = pipeline::columns::ids(batch)?;
        let values = self.content(batch)?;
        let loaded: Vec<std::result::Result<Loaded, String>> = values
            .par_iter()
            .map(|value| match value.and_then(|v| stamped_path(v, self.load)) {
                Some(path) => read_one(&path, self.load).map_err(|e| format!("{}: {e}", path.display())),
                None => Err("its content was left unread and its stamp cannot be read back".to_string()),
            })
            .collect();
        let (mut keep, mut sizes, mut bytes, mut texts, mut rejected) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, item) in loaded.into_iter().enumerate() {
            match item {
                Ok(Loaded::Bytes(b)) => {
                    sizes.push(b.len() as u64);
                    bytes.push(b);
                }
                Ok(Loaded::Text(t)) => {
                    sizes.push(t.len() as u64);
                    texts.push(t);
                }
                Ok(_) => return Err(Error::msg("collect.files: a deferred file read back as no content")),
                Err(reason) => {
                    rejected.push((ids.value(r).to_string(), reason));
                    continue;
                }
            }
            keep.push(r as u32);
        }
        let take = arrow::array::UInt32Array::from(keep);
        let mut columns: Vec<ArrayRef> = vec![
            arrow::compute::take(batch.column(0), &take, None)?,
            arrow::compute::take(batch.column(1), &take, None)?,
            Arc::new(UInt64Array::from(sizes)),
        ];
        match self.load {
            Load::Text => columns.push(Arc::new(StringArray::from(texts))),
            _ => columns.push(Arc::new(BinaryArray::from_iter_values(bytes))),
        }
        Ok((RecordBatch::try_new(self.schema.clone(), columns)?, rejected))
    }
}

/// Reads one file. `fs::read` reads to the end whatever the size was at listing, so a file that
/// grew or shrank since then gives the bytes it holds now, and `size` is their count.
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

impl Source for FilesStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn defer(&mut self) -> Option<Arc<dyn Deferred>> {
        if self.remote.is_some() || self.load == Load::None {
            return None;
        }
        self.defer = true;
        Some(Arc::new(FileLoader { load: self.load, schema: self.schema.clone() }))
    }

    fn run(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let mut listing = self.list()?;
        if let Some(shard) = self.shard {
            listing.files.retain(|f| shard.keeps(&f.id));
            listing.rejected.retain(|(id, _)| shard.keeps(id));
        }
        for (id, reason) in &listing.rejected {
            cx.reject(id, reason)?;
        }
        for chunk in listing.files.chunks(cx.batch_size()) {
            let paths: Vec<PathBuf> = chunk
                .iter()
                .map(|f| match f.relative.as_os_str().is_empty() {
                    // One object named by its URL: staged at the root itself.
                    true => self.root.clone(),
                    false => self.root.join(&f.relative),
                })
                .collect();
            let loaded: Vec<_> = chunk
                .par_iter()
                .zip(&paths)
                .map(|(file, path)| self.read(&file.relative.to_string_lossy(), path))
                .collect();
            let (mut ids, mut shown, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
            let (mut bytes, mut texts) = (Vec::new(), Vec::new());
            for ((file, path), item) in chunk.iter().zip(&paths).zip(loaded) {
                let item = match (item, &self.remote) {
                    (Ok(item), _) => item,
                    (Err(reason), Some(_)) => {
                        cx.reject(&file.id, reason)?;
                        continue;
                    }
                    (Err(reason), None) => {
                        cx.reject(&file.id, format!("{}: {reason}", path.display()))?;
                        continue;
                    }
                };
                ids.push(file.id.as_str());
                match &self.remote {
                    Some(remote) => shown.push(remote.url_of(&file.relative.to_string_lossy())),
                    None => shown.push(path.to_string_lossy().into_owned()),
                }
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
                    Loaded::Stamp(stamp, n) => {
                        sizes.push(n);
                        match self.load {
                            // Hex after the marker: valid UTF-8.
                            Load::Text => texts.push(String::from_utf8(stamp).unwrap_or_default()),
                            _ => bytes.push(stamp),
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(root: &Path) -> FilesStage {
        FilesStage {
            root: root.to_path_buf(),
            include: None,
            exclude: None,
            recursive: true,
            load: Load::Bytes,
            schema: output_schema(Load::Bytes),
            remote: None,
            shard: None,
            defer: false,
            settled: SETTLED,
        }
    }

    /// The batches `stage` emits, in one.
    fn emitted(stage: FilesStage) -> RecordBatch {
        let schema = stage.schema.clone();
        let out = pipeline::testing::Harness::new("files").run(&mut Stage::source(stage), Vec::new()).unwrap();
        arrow::compute::concat_batches(&schema, &out.batches).unwrap()
    }

    #[test]
    fn deferred_files_are_stamped_and_read_back_as_they_would_have_been_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), [0u8, 159, 146, 150]).unwrap();
        std::fs::write(dir.path().join("b.txt"), "text").unwrap();
        std::fs::write(dir.path().join(os(b"c\xff.txt")), "name not UTF-8").unwrap();
        std::fs::write(dir.path().join("d.txt"), "").unwrap();
        for load in [Load::Bytes, Load::Text] {
            let plain = FilesStage {
                load,
                schema: output_schema(load),
                include: globs("include", &["*.txt".to_string()]).unwrap().filter(|_| load == Load::Text),
                ..stage(dir.path())
            };
            let read = emitted(plain_like(&plain));
            let mut deferred = plain_like(&plain);
            let loader = deferred.defer().expect("a local folder defers");
            deferred.settled = std::time::Duration::ZERO;
            let stamped = emitted(deferred);
            assert_eq!(loader.stamped(&stamped).unwrap(), vec![true; read.num_rows()], "{load:?}");
            assert_eq!(stamped.column(2), read.column(2), "sizes from the stamps, {load:?}");
            assert_ne!(stamped.column(3), read.column(3), "nothing read, {load:?}");
            let (back, rejected) = loader.load(&stamped).unwrap();
            assert!(rejected.is_empty(), "{rejected:?}");
            assert_eq!(back, read, "read back as read at once, {load:?}");
            assert_eq!(loader.stamped(&back).unwrap(), vec![false; read.num_rows()]);

            // A file gone since its stamp: rejected, naming it; the others read.
            std::fs::rename(dir.path().join("b.txt"), dir.path().join("b.moved")).unwrap();
            let (back, rejected) = loader.load(&stamped).unwrap();
            std::fs::rename(dir.path().join("b.moved"), dir.path().join("b.txt")).unwrap();
            assert_eq!(back.num_rows(), read.num_rows() - 1);
            assert_eq!(rejected.len(), 1);
            assert_eq!(rejected[0].0, "b.txt");
            assert!(rejected[0].1.contains("b.txt") && rejected[0].1.contains("No such file"), "{rejected:?}");

            // A file changed too recently is read at once.
            let mut fresh = plain_like(&plain);
            fresh.defer().unwrap();
            assert_eq!(emitted(fresh), read, "young files are read, {load:?}");
        }
    }

    /// A stage with `plain`'s settings.
    fn plain_like(plain: &FilesStage) -> FilesStage {
        FilesStage {
            include: plain.include.clone(),
            load: plain.load,
            schema: plain.schema.clone(),
            ..stage(&plain.root)
        }
    }

    #[test]
    fn a_shard_reads_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i:02}.txt")), format!("{i}")).unwrap();
        }
        let h = pipeline::testing::Harness::new("files");
        let mut seen: Vec<String> = Vec::new();
        for index in 0..2 {
            let shard = pipeline::Shard { index, count: 2 };
            let mut s = Stage::source(FilesStage { shard: Some(shard), ..stage(dir.path()) });
            let out = h.run(&mut s, Vec::new()).unwrap();
            for b in &out.batches {
                for id in pipeline::columns::ids(b).unwrap().iter() {
                    let id = id.unwrap().to_string();
                    assert!(shard.keeps(&id), "shard {index} read {id}");
                    seen.push(id);
                }
            }
        }
        seen.sort();
        let all: Vec<String> = (0..20).map(|i| format!("f{i:02}.txt")).collect();
        assert_eq!(seen, all, "every file in exactly one shard");
    }

    /// The inverse of the escape of a component (every `%XX` back to its byte).
    fn unescape(id: &str) -> Vec<u8> {
        let b = id.as_bytes();
        let (mut out, mut i) = (Vec::new(), 0);
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&id[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[cfg(unix)]
    fn os(bytes: &[u8]) -> &OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(bytes)
    }

    #[test]
    fn utf8_names_are_their_own_ids() {
        for name in ["a.png", "with space.png", "quote\"and'apostrophe", "new\nline", "100%.txt", "a%FF", "ü€😀"] {
            assert_eq!(component_id(OsStr::new(name)), (name.to_string(), false));
        }
    }

    #[cfg(unix)]
    #[test]
    fn bytes_that_are_not_utf8_are_escaped_and_come_back() {
        assert_eq!(component_id(os(b"caf\xe9.png")), ("caf%E9.png".to_string(), true));
        assert_eq!(component_id(os(b"50%\xff")), ("50%25%FF".to_string(), true));
        // A cut-off multi-byte sequence at the end, and valid UTF-8 kept between invalid bytes.
        assert_eq!(component_id(os(b"\xe2\x82\xc3\xbc\xe2\x82")), ("%E2%82ü%E2%82".to_string(), true));
        // Many names, generated: every escape decodes back to its bytes, so none can coincide.
        let mut seed = 0x2545_f491_u32;
        let mut seen = std::collections::HashMap::new();
        for _ in 0..5000 {
            let len = (seed % 7 + 1) as usize;
            let mut name = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                name.push([b'%', b'a', b'2', 0xc3, 0xa9, 0xff, 0x80, b'F'][(seed >> 24) as usize % 8]);
            }
            let (id, escaped) = component_id(os(&name));
            if escaped {
                assert_eq!(unescape(&id), name, "{id}");
                if let Some(other) = seen.insert(id.clone(), name.clone()) {
                    assert_eq!(other, name, "two names share the id {id}");
                }
            } else {
                assert_eq!(id.as_bytes(), name.as_slice());
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_listing_keeps_real_paths_and_never_repeats_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join(os(b"d\xff"))).unwrap();
        for name in [&b"a%FF"[..], b"a\xff", b"b\xfe c", b"plain.txt", b"d\xff/x"] {
            std::fs::write(root.join(os(name)), name).unwrap();
        }
        let listing = stage(root).list().unwrap();
        let ids: Vec<&str> = listing.files.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a%FF", "b%FE c", "d%FF/x", "plain.txt"]);
        assert_eq!(listing.files[0].relative, Path::new("a%FF"), "the UTF-8 name keeps its id");
        assert_eq!(listing.rejected.len(), 1);
        assert_eq!(listing.rejected[0].0, "a%FF");
        assert!(listing.rejected[0].1.contains("rename one"), "{}", listing.rejected[0].1);
        for file in &listing.files {
            let Loaded::Bytes(b) = read_one(&root.join(&file.relative), Load::Bytes).unwrap() else { panic!() };
            assert_eq!(b, file.relative.as_os_str().as_encoded_bytes(), "{} is read by its real path", file.id);
        }
    }

    #[test]
    fn a_file_gone_since_the_listing_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("here.txt"), "x").unwrap();
        std::fs::write(dir.path().join("gone.txt"), "y").unwrap();
        let listing = stage(dir.path()).list().unwrap();
        assert_eq!(listing.files.len(), 2);
        std::fs::remove_file(dir.path().join("gone.txt")).unwrap();
        for load in [Load::Bytes, Load::Text, Load::None] {
            let results: Vec<_> =
                listing.files.iter().map(|f| read_one(&dir.path().join(&f.relative), load).is_ok()).collect();
            assert_eq!(results, [false, true], "gone.txt sorts first and fails");
        }
        let err = read_one(&dir.path().join("gone.txt"), Load::Bytes).err().unwrap();
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn globs_match_ids_and_zero_length_files_load_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.png"), "").unwrap();
        std::fs::write(dir.path().join("keep.txt"), "").unwrap();
        let mut s = stage(dir.path());
        s.include = globs("include", &["*.png".to_string()]).unwrap();
        let listing = s.list().unwrap();
        assert_eq!(listing.files.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["empty.png"]);
        let path = dir.path().join("empty.png");
        assert!(matches!(read_one(&path, Load::Bytes), Ok(Loaded::Bytes(b)) if b.is_empty()));
        assert!(matches!(read_one(&path, Load::Text), Ok(Loaded::Text(t)) if t.is_empty()));
    }
}
