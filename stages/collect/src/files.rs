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

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use globset::{Glob, GlobSet, GlobSetBuilder};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Source, Stage, StageContext,
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
             being keys relative to the prefix.",
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
    fn read(&self, relative: &str, path: &Path) -> std::result::Result<Loaded, String> {
        let Some(remote) = &self.remote else {
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
