//! The cache key of a training: a blake3 hash of everything that decides what the trainer
//! produces. Every piece enters length-prefixed, after a version tag, so no two different inputs
//! can run together into the same bytes, and a change to what the key covers changes the tag.

use std::io::Read;
use std::path::{Path, PathBuf};

use pipeline::{Error, Result};

/// Starts every key's input; bump it when what the key covers changes.
const VERSION: &str = "pipe.train.v1";

/// Builds a key from pieces fed in a fixed order.
pub struct KeyHasher(blake3::Hasher);

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHasher {
    /// A hasher holding the version tag.
    pub fn new() -> Self {
        let mut k = Self(blake3::Hasher::new());
        k.text(VERSION);
        k
    }

    /// Names the part of the key that follows.
    pub fn section(&mut self, name: &str) {
        self.text(name);
    }

    /// A byte string.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.number(bytes.len() as u64);
        self.0.update(bytes);
    }

    /// A text.
    pub fn text(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    /// A number.
    pub fn number(&mut self, n: u64) {
        self.0.update(&n.to_le_bytes());
    }

    /// The contents of a file, streamed.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        self.number(len);
        let mut buf = vec![0u8; 1 << 16];
        let mut read = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            self.0.update(&buf[..n]);
        }
        if read != len {
            return Err(Error::msg(format!("{} changed while it was read for the cache key", path.display())));
        }
        Ok(())
    }

    /// A file, or a folder's files in sorted relative-path order, each with its relative path.
    pub fn path(&mut self, path: &Path) -> Result<()> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_dir() {
            self.text("file");
            return self.file(path);
        }
        self.text("folder");
        let files = folder_files(path)?;
        self.number(files.len() as u64);
        for (relative, file) in files {
            self.text(&relative);
            self.file(&file)?;
        }
        Ok(())
    }

    /// The key, as lowercase hex.
    pub fn finish(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

/// Whether a folder entry stays out of the key: hidden entries (`.git`, editor files) and Python's
/// `__pycache__`, which the trainer itself writes when it imports a module from a `deps` folder.
fn skipped(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name == "__pycache__"
}

/// The files under `root` (following links), as ("a/b.py", path), sorted by relative path.
fn folder_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(root).follow_links(true).into_iter();
    for entry in walk.filter_entry(|e| e.depth() == 0 || !skipped(e.file_name())) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::io(path, e.into())
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("under the root");
        let parts: Vec<String> = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        files.push((parts.join("/"), entry.path().to_path_buf()));
    }
    files.sort();
    Ok(files)
}

/// `value` as JSON with every object's keys sorted, whatever order serde_json keeps them in.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(path: &Path) -> String {
        let mut k = KeyHasher::new();
        k.path(path).unwrap();
        k.finish()
    }

    #[test]
    fn pieces_do_not_run_together() {
        let mut a = KeyHasher::new();
        a.text("ab");
        a.text("c");
        let mut b = KeyHasher::new();
        b.text("a");
        b.text("bc");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn a_folder_key_covers_names_and_contents_but_not_caches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("code");
        std::fs::create_dir_all(root.join("pkg")).unwrap();
        std::fs::write(root.join("pkg/model.py"), "x = 1\n").unwrap();
        std::fs::write(root.join("train.py"), "import pkg\n").unwrap();
        let first = key_of(&root);
        std::fs::create_dir_all(root.join("pkg/__pycache__")).unwrap();
        std::fs::write(root.join("pkg/__pycache__/model.cpython-312.pyc"), "bytecode").unwrap();
        std::fs::write(root.join(".train.py.swp"), "editor").unwrap();
        assert_eq!(first, key_of(&root), "caches and hidden files stay out");
        std::fs::write(root.join("pkg/model.py"), "x = 2\n").unwrap();
        let changed = key_of(&root);
        assert_ne!(first, changed, "a content change");
        std::fs::rename(root.join("pkg/model.py"), root.join("pkg/layers.py")).unwrap();
        assert_ne!(changed, key_of(&root), "a rename");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": 0.5}}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":0.5,"y":[1,{"c":3,"d":2}]},"b":1}"#);
    }
}
