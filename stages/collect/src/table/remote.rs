//! `path` as a URL (`s3://bucket/rows.parquet`, `s3://bucket/dataset/`, `https://host/rows.csv`):
//! the objects it names are listed at build time and staged one at a time as local files under
//! the output folder's `.pipe-remote/collect-PID/` (streamed, never the whole prefix at once), read by the
//! local readers, and removed once read. A prefix is a dataset folder: its table objects in key
//! order (names starting with `.` or `_` left out), with its `KEY=VALUE` partition folders. A
//! key with a glob (`s3://bucket/data/*.parquet`, `**/*.csv`, `{a,b}.jsonl`) lists its longest
//! literal prefix and keeps the objects whose rest matches, read like a local glob's files (the
//! prefix being the dataset's root). Over http(s) a prefix or glob is listed with WebDAV's
//! PROPFIND, and a server without it is an error that says so.

use std::path::{Path, PathBuf};

use pipeline::storage::{self, Remote};
use pipeline::{Error, Result};

use super::paths::Listing;

/// Where a URL's objects are staged, and the store they come from.
pub(crate) struct RemoteTable {
    remote: Remote,
    /// The local file (one object) or folder (a prefix) mirroring the URL.
    root: PathBuf,
}

/// The objects `url` names, as the local paths they are staged at, and where they come from.
pub(crate) fn list(output_dir: &Path, url: &str) -> Result<(Listing, RemoteTable)> {
    let remote = storage::open("path", url, false)?;
    let objects = remote.list()?;
    // Per process, so shards sharing the output folder do not meet, and fresh: a copy left by a
    // killed run is not read again.
    let staging = output_dir.join(storage::STAGING).join(format!("collect-{}", std::process::id()));
    let root = storage::staging_path(&staging, &remote.url_of(""));
    let _ = std::fs::remove_dir_all(&root).or_else(|_| std::fs::remove_file(&root));
    let table = |relative: &str| pipeline::formats::TableFormat::from_path(Path::new(relative)).is_some();
    let hidden = |relative: &str| relative.split('/').any(|part| part.starts_with(['.', '_']));
    let listing = match objects.as_slice() {
        [one] if one.relative.is_empty() => Listing { files: vec![root.clone()], root: None },
        _ => {
            let files: Vec<PathBuf> = objects
                .iter()
                .filter(|o| table(&o.relative) && !hidden(&o.relative))
                .map(|o| root.join(&o.relative))
                .collect();
            if files.is_empty() {
                let what = match objects.is_empty() {
                    true => "no object",
                    false => "no table object",
                };
                return Err(Error::config("path", format!("{what} at {url}"))
                    .with_hint(format!("collect.table reads {} objects", pipeline::formats::expected_extensions())));
            }
            Listing { files, root: Some(root.clone()) }
        }
    };
    Ok((listing, RemoteTable { remote, root }))
}

impl RemoteTable {
    /// The URL of the staged file `path`, as rejects and errors name it.
    pub(crate) fn name_of(&self, path: &Path) -> String {
        self.remote.url_of(&self.relative(path))
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).map(|p| p.to_string_lossy().replace('\\', "/")).unwrap_or_default()
    }

    /// Stages the object of `path` there, unless it is there already.
    pub(crate) fn fetch(&self, path: &Path) -> Result<()> {
        match path.is_file() {
            true => Ok(()),
            false => self.remote.download(&self.relative(path), path),
        }
    }

    /// Removes the staged copy of `path` once it is read.
    pub(crate) fn release(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
    }
}
