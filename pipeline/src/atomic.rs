//! Files written to a temporary name beside their destination and renamed into place on commit,
//! so a crash or a failed run never leaves a half-written output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The temporary files of every uncommitted [`AtomicFile`], so that a process that must end at
/// once (a second Ctrl-C) can remove them: destructors do not run then.
static UNCOMMITTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn forget(tmp: &Path) {
    let mut live = UNCOMMITTED.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|p| p != tmp);
}

/// Removes the temporary files of every file not committed yet. For an exit that skips
/// destructors; the files' owners must not write to them afterwards.
pub fn remove_uncommitted() {
    let live = std::mem::take(&mut *UNCOMMITTED.lock().unwrap_or_else(|p| p.into_inner()));
    for tmp in live {
        let _ = std::fs::remove_file(tmp);
    }
}

/// A file that appears at its destination only when committed; dropped uncommitted, it vanishes.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file (and the destination's folder).
    pub fn create(dest: impl Into<PathBuf>) -> Result<Self> {
        let dest = dest.into();
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        UNCOMMITTED.lock().unwrap_or_else(|p| p.into_inner()).push(tmp.clone());
        Ok(Self { tmp, dest, file: Some(BufWriter::with_capacity(1 << 16, file)) })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// Flushes, syncs and renames into place.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("committed once");
        let file = file.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        let renamed = std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e));
        forget(&self.tmp);
        renamed
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
            forget(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_atomic(dest: impl Into<PathBuf>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    let tmp = f.tmp.clone();
    f.write_all(bytes).map_err(|e| Error::io(tmp, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/out.txt");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!dest.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");

        let mut f = AtomicFile::create(dir.path().join("gone.txt")).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sub")]);
    }
}
