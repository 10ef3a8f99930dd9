//! The files `path` names: one file, or the files a glob matches. A plain path that is not a
//! readable file is a config error that says what it is instead (a folder, a symlink loop, a
//! dangling link, a file that cannot be opened), pointed at the `path` key.

use std::io;
use std::path::{Path, PathBuf};

use globset::GlobBuilder;
use pipeline::{Error, Result};

/// The files a path or glob names, sorted; empty when nothing matches.
pub(crate) fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(pattern) {
        return one_file(&base.join(pattern), pattern);
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

/// `path` as the one file it must be.
fn one_file(path: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let at_path = |message: String| Error::config("path", message);
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {
            std::fs::File::open(path).map_err(|e| at_path(format!("{pattern} cannot be read: {}", plain(&e))))?;
            Ok(vec![path.to_path_buf()])
        }
        Ok(m) if m.is_dir() => {
            let dir = pattern.trim_end_matches('/');
            let ext = table_extension_in(path).unwrap_or("csv");
            Err(at_path(format!("{dir}/ is a folder, not a table file"))
                .with_hint(format!("to read the tables in it, use a glob: path = \"{dir}/*.{ext}\"")))
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

/// The extension of the first table file directly inside `dir`, for the hint.
fn table_extension_in(dir: &Path) -> Option<&'static str> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    names.iter().find_map(|p| {
        let ext = p.extension()?.to_str()?;
        pipeline::formats::EXTENSIONS.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)).map(|(e, _)| *e)
    })
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
    fn a_folder_is_pointed_at_a_glob_of_its_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/a.parquet"), b"").unwrap();
        let got = message(expand(dir.path(), "data/").unwrap_err());
        assert_eq!(
            got,
            "Some(\"path\"): data/ is a folder, not a table file / \
             Some(\"to read the tables in it, use a glob: path = \\\"data/*.parquet\\\"\")"
        );
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
        assert!(expand(dir.path(), "missing.csv").unwrap().is_empty());
    }
}
