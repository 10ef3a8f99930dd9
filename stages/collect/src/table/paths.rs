//! The files `path` names: one file, the files a glob matches, or a dataset folder's table files
//! (its parts, in nested Hive partition folders too; names starting with `.` or `_` are left out,
//! as pyarrow leaves them out). A plain path that is neither a readable file nor a folder holding
//! tables is a config error that says what it is instead (a folder without tables, a symlink
//! loop, a dangling link, a file that cannot be opened), pointed at the `path` key.

use std::io;
use std::path::{Path, PathBuf};

use globset::GlobBuilder;
use pipeline::{Error, Result};

/// What a path names: the files to read, and the folder under which their partition folders lie.
#[derive(Debug)]
pub(crate) struct Listing {
    /// The files, sorted by path; empty when nothing matches.
    pub files: Vec<PathBuf>,
    /// The dataset's root (the folder, or a glob's folder before its first pattern); `None` for
    /// one file.
    pub root: Option<PathBuf>,
}

/// The files a path, folder or glob names.
pub(crate) fn expand(base: &Path, pattern: &str) -> Result<Listing> {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(pattern) {
        let path = base.join(pattern);
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            return dataset(&path, pattern);
        }
        return Ok(Listing { files: one_file(&path, pattern)?, root: None });
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
    Ok(Listing { files: out, root: Some(dir) })
}

/// The most files and folders a dataset folder is walked for.
const MOST_ENTRIES: usize = 200_000;

/// The table files of the dataset folder `dir`, at any depth, sorted; hidden names (`.`, `_`) and
/// files of no table format are left out. A folder with none is a config error.
fn dataset(dir: &Path, pattern: &str) -> Result<Listing> {
    let hidden = |e: &walkdir::DirEntry| e.depth() > 0 && e.file_name().to_string_lossy().starts_with(['.', '_']);
    let mut files: Vec<PathBuf> = Vec::new();
    let walk = walkdir::WalkDir::new(dir).follow_links(true).into_iter().filter_entry(|e| !hidden(e));
    for (seen, e) in walk.filter_map(|e| e.ok()).enumerate() {
        if seen >= MOST_ENTRIES {
            // A folder such as `/` or a home folder, named by mistake: refused rather than walked.
            let name = pattern.trim_end_matches('/');
            return Err(Error::config(
                "path",
                format!("{name}/ holds more than {MOST_ENTRIES} files and folders, which is not a dataset folder"),
            )
            .with_hint("name the folder that holds the table's files"));
        }
        if e.file_type().is_file() && pipeline::formats::TableFormat::from_path(e.path()).is_some() {
            files.push(e.into_path());
        }
    }
    files.sort();
    if files.is_empty() {
        let name = pattern.trim_end_matches('/');
        return Err(Error::config("path", format!("{name}/ is a folder with no table files in it"))
            .with_hint(format!("collect.table reads a folder's {} files", pipeline::formats::expected_extensions())));
    }
    Ok(Listing { files, root: Some(dir.to_path_buf()) })
}

/// `path` as the one file it must be.
fn one_file(path: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let at_path = |message: String| Error::config("path", message);
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {
            std::fs::File::open(path).map_err(|e| at_path(format!("{pattern} cannot be read: {}", plain(&e))))?;
            Ok(vec![path.to_path_buf()])
        }
        Ok(_) => Err(at_path(format!("{pattern} is not a regular file (a pipe, a socket or a device)"))
            .with_hint(format!("collect.table reads table files: {}", pipeline::formats::expected_extensions()))),
        Err(e) if is_loop(&e) => Err(at_path(format!("{pattern} is a symlink loop: it leads back to itself"))
            .with_hint("point the link at a table file, or name the file itself")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::read_link(path) {
            Ok(target) => Err(at_path(format!("{pattern} is a symlink to {}, which does not exist", target.display()))),
            Err(_) => Ok(Vec::new()),
        },
        Err(e) => Err(at_path(format!("{pattern} cannot be read: {}", plain(&e)))),
    }
}

fn is_loop(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// An I/O error's words without the "(os error 13)" after them.
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: Error) -> String {
        match e {
            Error::Config { key, message, hint } => format!("{key:?}: {message} / {hint:?}"),
            e => panic!("not a config error: {e}"),
        }
    }

    #[test]
    fn a_folder_is_read_as_a_dataset_of_its_table_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for name in
            ["b.parquet", "label=1/a.parquet", "label=0/x/c.parquet", "_SUCCESS", ".a.parquet.tmp-1", "notes.txt"]
        {
            let path = data.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        std::fs::create_dir_all(data.join(".pipe-journal")).unwrap();
        std::fs::write(data.join(".pipe-journal/p.arrow"), b"").unwrap();
        let got = expand(dir.path(), "data/").unwrap();
        let rel: Vec<String> = got.files.iter().map(|p| p.strip_prefix(&data).unwrap().display().to_string()).collect();
        assert_eq!(rel, ["b.parquet", "label=0/x/c.parquet", "label=1/a.parquet"]);
        assert_eq!(got.root.as_deref(), Some(data.as_path()));
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let got = message(expand(dir.path(), "empty").unwrap_err());
        assert!(got.starts_with("Some(\"path\"): empty/ is a folder with no table files in it"), "{got}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_loop_and_a_dangling_link_say_so() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("rows.csv", dir.path().join("rows.csv")).unwrap();
        std::os::unix::fs::symlink("gone.csv", dir.path().join("link.csv")).unwrap();
        assert!(message(expand(dir.path(), "rows.csv").unwrap_err()).contains("rows.csv is a symlink loop"));
        let dangling = message(expand(dir.path(), "link.csv").unwrap_err());
        assert!(dangling.contains("link.csv is a symlink to gone.csv, which does not exist"), "{dangling}");
        assert!(expand(dir.path(), "missing.csv").unwrap().files.is_empty());
    }
}
