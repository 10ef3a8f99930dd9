//! `<output_dir>/rejects.jsonl` (a shard's `rejects-IIIII-of-NNNNN.jsonl`, which `pipe merge`
//! concatenates): one line per rejected item (row id, stage, reason), flushed as it is written so
//! the file is complete up to its last line whatever happens to the run.

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
    /// On a resumed run: the (stage, id) pairs the interrupted run recorded, not recorded twice.
    earlier: std::collections::HashSet<(String, String)>,
}

impl RejectLog {
    /// A log at `path` (a stale file from an earlier run is removed); `max` = -1 for no limit.
    pub fn new(path: PathBuf, max: i64) -> Self {
        let _ = std::fs::remove_file(&path);
        Self::new_keeping(path, max)
    }

    /// The log of a resumed run: the interrupted run's lines stay (a torn last line is cut off),
    /// count toward `max`, and a row they name is not recorded again by the same stage.
    pub fn resume(path: PathBuf, max: i64) -> Result<Self> {
        let mut log = Self::new_keeping(path, max);
        let Ok(text) = std::fs::read_to_string(&log.path) else { return Ok(log) };
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            let f = std::fs::OpenOptions::new().write(true).open(&log.path).map_err(|e| Error::io(&log.path, e))?;
            f.set_len(complete as u64).map_err(|e| Error::io(&log.path, e))?;
        }
        let mut count = 0;
        for line in text[..complete].lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let (Some(stage), Some(id)) = (v["stage"].as_str(), v["id"].as_str()) else { continue };
            count += v["rows"].as_u64().unwrap_or(1);
            log.earlier.insert((stage.to_string(), id.to_string()));
        }
        log.count = AtomicU64::new(count);
        Ok(log)
    }

    fn new_keeping(path: PathBuf, max: i64) -> Self {
        Self { path, max, file: Mutex::new(None), memory: None, count: AtomicU64::new(0), earlier: Default::default() }
    }

    /// A log that keeps its lines in memory ([`RejectLog::lines`]) and writes no file.
    pub fn in_memory(max: i64) -> Self {
        let memory = Some(Mutex::new(Vec::new()));
        Self {
            path: PathBuf::from("<memory>"),
            max,
            file: Mutex::new(None),
            memory,
            count: AtomicU64::new(0),
            earlier: Default::default(),
        }
    }

    /// The lines of an in-memory log (empty for one that writes a file).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.memory.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    /// Records one rejected item, or one line that stands for `rows` rejected rows (a corrupt row
    /// group, say: the line then carries `"rows": N`); the count grows by `rows`. Errs when this
    /// reject passes the limit.
    pub fn record_rows(&self, stage: &str, row: &str, rows: u64, reason: &str) -> Result<()> {
        if self.earlier.contains(&(stage.to_string(), row.to_string())) {
            return Ok(());
        }
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
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| Error::io(&self.path, e))?;
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
