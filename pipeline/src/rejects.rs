//! `<output_dir>/rejects.jsonl`: one line per rejected item (row id, stage, reason), flushed as it
//! is written so the file is complete up to its last line whatever happens to the run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The shared log of rejected items and the `max_rejects` limit.
#[derive(Debug)]
pub struct RejectLog {
    path: PathBuf,
    max: i64,
    file: Mutex<Option<BufWriter<File>>>,
    /// Kept in memory instead of written (a log for driving a stage outside a run).
    memory: Option<Mutex<Vec<serde_json::Value>>>,
    count: AtomicU64,
}

impl RejectLog {
    /// A log at `path` (a stale file from an earlier run is removed); `max` = -1 for no limit.
    pub fn new(path: PathBuf, max: i64) -> Self {
        let _ = std::fs::remove_file(&path);
        Self { path, max, file: Mutex::new(None), memory: None, count: AtomicU64::new(0) }
    }

    /// A log that keeps its lines in memory ([`RejectLog::lines`]) and writes no file.
    pub fn in_memory(max: i64) -> Self {
        let memory = Some(Mutex::new(Vec::new()));
        Self { path: PathBuf::from("<memory>"), max, file: Mutex::new(None), memory, count: AtomicU64::new(0) }
    }

    /// The lines of an in-memory log (empty for one that writes a file).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.memory.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    /// Records one rejected item, or one line that stands for `rows` rejected rows (a corrupt row
    /// group, say: the line then carries `"rows": N`); the count grows by `rows`. Errs when this
    /// reject passes the limit.
    pub fn record_rows(&self, stage: &str, row: &str, rows: u64, reason: &str) -> Result<()> {
        let mut entry = serde_json::json!({ "id": row, "stage": stage, "reason": reason });
        if rows != 1 {
            entry["rows"] = rows.into();
        }
        if let Some(memory) = &self.memory {
            memory.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
        } else {
            let line = entry.to_string();
            let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let f = File::create(&self.path).map_err(|e| Error::io(&self.path, e))?;
                *slot = Some(BufWriter::new(f));
            }
            let f = slot.as_mut().expect("opened above");
            writeln!(f, "{line}").and_then(|_| f.flush()).map_err(|e| Error::io(&self.path, e))?;
        }
        let count = self.count.fetch_add(rows, Ordering::SeqCst) + rows;
        if self.max >= 0 && count > self.max as u64 {
            return Err(Error::TooManyRejects { count, max: self.max, path: self.path.clone() });
        }
        Ok(())
    }

    /// Items rejected so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
