//! The run journal, `<output_dir>/.pipe-journal/`: what every sink has durably written, so that a
//! run killed at any moment (kill -9, an OOM kill, a power loss) is continued by the next `pipe
//! run` of the same pipeline instead of started over. A shard of a sharded run (`--shard I/N`)
//! keeps its own, `.pipe-journal-IIIII-of-NNNNN/`, so the shards never share a lock or a log.
//!
//! The folder holds `fingerprint.json` (what the run is: config, plugin version, inputs; see
//! [`Fingerprint`]), `lock` (an exclusive `flock` held for the whole run, with the holder's pid, so
//! two runs never write one folder at once), `log` (one JSON line per commit) and `parts/` (the
//! committed data of the sinks that finalize at the end, as Arrow IPC files).
//!
//! A commit is ordered as SQLite orders its rollback journal: a sink's data is written to a
//! temporary file, fsynced, renamed into place and its folder fsynced; only then is the log line
//! naming it appended and the log fsynced. A crash before the line is durable leaves an orphan
//! part that nobody reads (the rows are computed again); a crash while the line is written leaves
//! a torn last line, dropped when the journal is read. So the log never names data that is not on
//! disk, and a row is either committed whole or not at all.
//!
//! Rows are finalized in a canonical order that does not depend on when a crash happened: each
//! row's ordinal is its position in its source's output ([`Ordinals`]), and a source that
//! re-emits rows on a resumed run numbers them the same way, the committed ones included.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::config::PipelineFile;
use crate::error::{Error, Result};
use crate::plugin::Shard;

/// The journal folder's name under the output folder.
pub const DIR: &str = ".pipe-journal";

/// The column a part file carries beside the sink's own: each row's canonical ordinal.
const ORDINAL: &str = "__pipe_ordinal";

/// Ordinals from here up are given to rows whose id no source numbered (ids a stage made up),
/// in the order they reached the sink; they sort after every numbered row.
const UNNUMBERED: u64 = 1 << 63;

/// What a run is, for telling whether a journal belongs to it: a hash of each stage's resolved
/// config and of every existing file or folder its params name (paths, sizes, modification
/// times), the `[pipeline]` settings, the seed and the version of pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// pipe's version: plugins are built into the binary, so this is their version too.
    pub version: String,
    /// The `[pipeline]` settings, seed included (hash).
    pub settings: String,
    /// Per stage id, in file order.
    pub stages: Vec<StagePrint>,
}

/// One stage's part of a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagePrint {
    /// The stage id.
    pub id: String,
    /// Its plugin.
    pub uses: String,
    /// Its params, resolved (hash).
    pub config: String,
    /// Per param naming an existing file or folder: a hash of what is there.
    pub inputs: BTreeMap<String, String>,
}

impl Fingerprint {
    /// The fingerprint of a pipeline about to write into `output_dir` (never walked, nor the cache).
    pub fn of(file: &PipelineFile, output_dir: &Path, cache_dir: &Path) -> Fingerprint {
        let s = &file.settings;
        let settings = format!(
            "name={:?} seed={} batch_size={} on_error={:?} max_rejects={:?} runtime={:?}",
            s.name, s.seed, s.batch_size, s.on_error, s.max_rejects, file.runtime.onnxruntime
        );
        let skip = [output_dir.to_path_buf(), cache_dir.to_path_buf()];
        let stages = file
            .stages
            .iter()
            .map(|stage| {
                let config = crate::plan::params_json(&stage.params);
                let config = format!(
                    "uses={} input={:?} on_error={:?} {config}",
                    stage.uses,
                    stage.input.as_ref().map(|i| i.get_ref()),
                    stage.on_error
                );
                let mut inputs = BTreeMap::new();
                for (key, value) in stage.params.strings() {
                    if value.is_empty() || crate::plugin::url_scheme(&value).is_some() {
                        continue;
                    }
                    let path = file.resolve(&value);
                    if let Some(hash) = hash_path(&path, &skip) {
                        inputs.insert(key, hash);
                    }
                }
                StagePrint { id: stage.id.clone(), uses: stage.uses.clone(), config: hash(config.as_bytes()), inputs }
            })
            .collect();
        Fingerprint { version: env!("CARGO_PKG_VERSION").to_string(), settings: hash(settings.as_bytes()), stages }
    }

    /// What differs from `earlier`, one phrase each ("the config of stage `gen`").
    pub fn changes_since(&self, earlier: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.version != earlier.version {
            out.push(format!("pipe's version ({} then, {} now)", earlier.version, self.version));
        }
        if self.settings != earlier.settings {
            out.push("the [pipeline] settings (name, seed, batch_size, on_error or max_rejects)".to_string());
        }
        let ids: Vec<&str> = self.stages.iter().map(|s| s.id.as_str()).collect();
        let before: Vec<&str> = earlier.stages.iter().map(|s| s.id.as_str()).collect();
        if ids != before {
            out.push(format!("the stages ([{}] then, [{}] now)", before.join(", "), ids.join(", ")));
            return out;
        }
        for (now, then) in self.stages.iter().zip(&earlier.stages) {
            if now.uses != then.uses || now.config != then.config {
                out.push(format!("the config of stage `{}`", now.id));
            }
            let keys: HashSet<&String> = now.inputs.keys().chain(then.inputs.keys()).collect();
            let mut keys: Vec<&String> = keys.into_iter().collect();
            keys.sort();
            for key in keys {
                if now.inputs.get(key) != then.inputs.get(key) {
                    out.push(format!("the input `{key}` of stage `{}`", now.id));
                }
            }
        }
        out
    }
}

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

/// A hash of the file or folder at `path` (every file under it: relative path, size, modification
/// time), or `None` when nothing is there. Folders in `skip` are not walked.
pub(crate) fn hash_path(path: &Path, skip: &[PathBuf]) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mut h = blake3::Hasher::new();
    let stamp = |h: &mut blake3::Hasher, rel: &str, meta: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        h.update(format!("{rel}\0{}\0{}.{}\n", meta.len(), meta.mtime(), meta.mtime_nsec()).as_bytes());
    };
    if meta.is_file() {
        stamp(&mut h, "", &meta);
        return Some(h.finalize().to_hex()[..32].to_string());
    }
    let canonical_skip: Vec<PathBuf> = skip.iter().filter_map(|p| p.canonicalize().ok()).collect();
    // Depth first, each folder's entries sorted: the order does not depend on the file system's,
    // and only one folder's names are held at a time.
    fn walk(dir: &Path, rel: &str, skip: &[PathBuf], h: &mut blake3::Hasher) {
        use std::os::unix::fs::MetadataExt;
        if dir.canonicalize().is_ok_and(|c| skip.contains(&c)) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut names: Vec<std::ffi::OsString> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = format!("{rel}/{}", name.to_string_lossy());
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => walk(&path, &rel, skip, h),
                Ok(m) => {
                    h.update(format!("{rel}\0{}\0{}.{}\n", m.len(), m.mtime(), m.mtime_nsec()).as_bytes());
                }
                Err(_) => {}
            }
        }
    }
    walk(path, "", &canonical_skip, &mut h);
    Some(h.finalize().to_hex()[..32].to_string())
}

/// One committed part file: a sink's data for some rows, with the range of their ordinals.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartEntry {
    /// The file, relative to the journal folder.
    file: String,
    rows: u64,
    /// The smallest and largest ordinal in it.
    min: u64,
    max: u64,
    /// Whether its rows are in ordinal order.
    sorted: bool,
}

/// One line of the log: a sink's commit.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    stage: String,
    seq: u64,
    /// The rows now durably written by this sink.
    ids: Vec<String>,
    /// The part files of this commit, by name ("rows", "cells").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    parts: BTreeMap<String, PartEntry>,
    /// The highest unnumbered ordinal given so far by this sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unnumbered: Option<u64>,
    /// Set once the sink has seen an id twice: ids do not name rows, so the run cannot resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    duplicates: bool,
}

/// What the log says so far.
#[derive(Debug, Default)]
struct State {
    /// Per sink, the ids committed in the log as read when the run started.
    committed: HashMap<String, HashSet<String>>,
    /// Per sink, the rows committed in this run (they are not kept one by one: memory stays flat).
    counts: HashMap<String, u64>,
    parts: HashMap<(String, String), Vec<PartEntry>>,
    unnumbered: HashMap<String, u64>,
    duplicates: bool,
    next_seq: u64,
}

impl State {
    fn apply(&mut self, line: Line) {
        self.next_seq = self.next_seq.max(line.seq + 1);
        self.duplicates |= line.duplicates;
        self.committed.entry(line.stage.clone()).or_default().extend(line.ids);
        if let Some(u) = line.unnumbered {
            let slot = self.unnumbered.entry(line.stage.clone()).or_insert(0);
            *slot = (*slot).max(u);
        }
        for (name, part) in line.parts {
            self.parts.entry((line.stage.clone(), name)).or_default().push(part);
        }
    }
}

/// How the journal was found when the run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No journal (or `--fresh`, or the journal of a failed run of another config): a new run.
    Fresh,
    /// An interrupted run of the same pipeline: continued.
    Resumed,
}

/// The open journal of a run: the lock is held until it is dropped.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    _lock: File,
    log: Mutex<File>,
    state: Mutex<State>,
    /// What the interrupted run this one continues committed, per sink.
    earlier: HashMap<String, HashSet<String>>,
    start: Start,
}

impl Journal {
    /// Opens (or starts) the journal in `output_dir` for a run with `print`, taking the lock.
    /// A journal of another fingerprint is an error naming what changed, unless `fresh` (then it
    /// is discarded) or its run ended in a failure (discarded with a warning: nothing of it was
    /// finalized, and a failed run is usually followed by a changed one). A run that is not
    /// `resumable` (a stage between a source and a sink holds rows across batches, so its output
    /// for the rows left depends on the rows done) starts over whatever the journal says.
    pub fn open(output_dir: &Path, print: &Fingerprint, fresh: bool, resumable: bool) -> Result<Journal> {
        Self::open_shard(output_dir, None, print, fresh, resumable)
    }

    /// [`Journal::open`] for the run of `shard` (none: an unsharded run): each shard keeps its own
    /// journal (`.pipe-journal-IIIII-of-NNNNN`) and lock, so the shards of one run write one output
    /// folder at once and a retried shard continues its own journal.
    pub fn open_shard(
        output_dir: &Path,
        shard: Option<Shard>,
        print: &Fingerprint,
        fresh: bool,
        resumable: bool,
    ) -> Result<Journal> {
        if output_dir.exists() && !output_dir.is_dir() {
            return Err(Error::msg(format!("output folder {} is a file, not a folder", output_dir.display())));
        }
        std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
        let dir = crate::shard::RunFiles::new(output_dir, shard).journal;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let what = match shard {
            None => format!("output folder {}", output_dir.display()),
            Some(s) => format!("shard {s} of output folder {}", output_dir.display()),
        };
        let lock = lock(&dir, &what)?;
        let print_path = dir.join("fingerprint.json");
        let log_path = dir.join("log");
        let mut start = Start::Fresh;
        // A journal without a commit holds nothing to continue (a run killed while it started, or
        // while a training ran): whatever its fingerprint, the run starts over.
        let anything = read_log(&log_path)?.committed.values().any(|ids| !ids.is_empty());
        if let Some(text) = std::fs::read_to_string(&print_path).ok().filter(|_| anything) {
            let earlier: Option<Fingerprint> = serde_json::from_str(&text).ok();
            let failed = dir.join("failed").exists();
            match earlier {
                Some(earlier) if earlier == *print && !fresh && !resumable => tracing::warn!(
                    "a stage of this pipeline holds rows across batches, so the interrupted run in {} starts over",
                    output_dir.display()
                ),
                Some(earlier) if earlier == *print && !fresh => start = Start::Resumed,
                Some(earlier) if !fresh && !failed => {
                    let changes = print.changes_since(&earlier);
                    return Err(Error::Config {
                        key: None,
                        message: format!(
                            "{} holds the journal of an interrupted run of a different pipeline or config: {} \
                             changed since. Run with --fresh to discard it and start over, or restore what changed \
                             to continue that run",
                            output_dir.display(),
                            changes.join(", ")
                        ),
                        hint: None,
                    });
                }
                _ => {
                    if failed && !fresh {
                        tracing::warn!("discarding the journal of an earlier failed run in {}", output_dir.display());
                    }
                }
            }
        }
        if start == Start::Resumed && read_log(&log_path)?.duplicates {
            tracing::warn!(
                "the interrupted run in {} had rows sharing an id, so it cannot be continued: starting over",
                output_dir.display()
            );
            start = Start::Fresh;
        }
        if start == Start::Fresh {
            // What is left from an earlier run: its log and parts (the lock file stays, we hold it).
            for name in ["log", "failed", "fingerprint.json"] {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir_all(dir.join("parts"));
            let text = serde_json::to_string_pretty(print).expect("fingerprints serialize");
            crate::atomic::write_atomic(&print_path, text.as_bytes())?;
            sync_dir(&dir)?;
        } else {
            let _ = std::fs::remove_file(dir.join("failed"));
        }
        // The other shards of a sharded run write the output folder at this moment, perhaps from
        // other machines (where a pid says nothing): a shard clears its journal only, and `pipe
        // merge` clears the folder once every shard has ended.
        remove_stale_temporaries(if shard.is_some() { &dir } else { output_dir });
        let mut state = read_log(&log_path)?;
        let earlier = std::mem::take(&mut state.committed);
        let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        Ok(Journal { dir, _lock: lock, log: Mutex::new(log), state: Mutex::new(state), earlier, start })
    }

    /// Whether this run continues an interrupted one.
    pub fn start(&self) -> Start {
        self.start
    }

    /// The ids `stage` committed in the interrupted run this one continues.
    pub fn committed(&self, stage: &str) -> HashSet<String> {
        self.earlier.get(stage).cloned().unwrap_or_default()
    }

    /// Whether `stage` committed `id` in the interrupted run this one continues.
    fn has(&self, stage: &str, id: &str) -> bool {
        self.earlier.get(stage).is_some_and(|s| s.contains(id))
    }

    fn unnumbered(&self, stage: &str) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).unnumbered.get(stage).copied().unwrap_or(UNNUMBERED)
    }

    /// The run failed. A journal with commits is kept, marked, for a resume of the same config
    /// (after a full disk, say), and discarded with a warning by a run of another; one without
    /// any is removed, as nothing of the run is worth keeping.
    pub fn fail(self) -> Result<()> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let empty = self.earlier.values().all(|s| s.is_empty()) && st.counts.values().all(|&n| n == 0);
        drop(st);
        if empty {
            return self.finish();
        }
        let path = self.dir.join("failed");
        std::fs::write(&path, b"").map_err(|e| Error::io(&path, e))
    }

    /// The run finished: every output is final, the journal goes.
    pub fn finish(self) -> Result<()> {
        let Journal { dir, _lock, log, .. } = self;
        drop(log);
        // The final outputs' names are durable before the journal that could redo them goes.
        if let Some(output_dir) = dir.parent() {
            sync_dir(output_dir)?;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        drop(_lock);
        Ok(())
    }

    /// Writes `parts` of `stage` and then the log line that commits them with `ids`.
    fn commit(
        &self,
        stage: &str,
        ids: Vec<String>,
        parts: Vec<(&str, RecordBatch)>,
        unnumbered: Option<u64>,
        duplicates: bool,
    ) -> Result<()> {
        let seq = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let seq = st.next_seq;
            st.next_seq += 1;
            seq
        };
        let mut entries = BTreeMap::new();
        if !parts.is_empty() {
            let folder = self.dir.join("parts").join(safe_name(stage));
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            for (name, batch) in parts {
                let rel = format!("parts/{}/{}-{seq:08}.arrow", safe_name(stage), safe_name(name));
                let path = self.dir.join(&rel);
                write_part(&path, &batch)?;
                let ord = ordinals_of(&batch);
                let values = ord.values();
                let entry = PartEntry {
                    file: rel,
                    rows: batch.num_rows() as u64,
                    min: values.iter().copied().min().unwrap_or(0),
                    max: values.iter().copied().max().unwrap_or(0),
                    sorted: values.windows(2).all(|w| w[0] <= w[1]),
                };
                entries.insert(name.to_string(), entry);
            }
            sync_dir(&folder)?;
        }
        crate::faults::hit("commit");
        let line = Line { stage: stage.to_string(), seq, ids, parts: entries, unnumbered, duplicates };
        let text = serde_json::to_string(&line).expect("log lines serialize") + "\n";
        let log_path = self.dir.join("log");
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            log.write_all(text.as_bytes()).and_then(|_| log.sync_data()).map_err(|e| Error::io(&log_path, e))?;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st.counts.entry(line.stage.clone()).or_default() += line.ids.len() as u64;
        st.apply(Line { ids: Vec::new(), ..line });
        Ok(())
    }

    fn parts(&self, stage: &str, name: &str) -> Vec<PartEntry> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.parts.get(&(stage.to_string(), name.to_string())).cloned().unwrap_or_default()
    }
}

/// A stage name as a file name: anything but letters, digits, `-` and `_` becomes `_`.
fn safe_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Takes the exclusive lock of the journal folder `dir` (non-blocking) and writes our pid in it.
fn lock(dir: &Path, what: &str) -> Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        let who = if holder.is_empty() {
            String::from("another pipe run")
        } else {
            format!("another pipe run (pid {holder})")
        };
        return Err(Error::msg(format!(
            "{what} is in use by {who}; wait for it to end, or write elsewhere with --output-dir"
        )));
    }
    file.set_len(0).map_err(|e| Error::io(&path, e))?;
    file.rewind().map_err(|e| Error::io(&path, e))?;
    write!(file, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// Reads the log; a torn last line (a crash while it was written) is cut off, so the next line
/// appended starts clean. A damaged line before the last is an error.
fn read_log(path: &Path) -> Result<State> {
    let mut state = State::default();
    let Ok(file) = File::open(path) else { return Ok(state) };
    let mut reader = BufReader::new(file);
    let mut good = 0u64;
    let mut buf = String::new();
    let mut lineno = 0;
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        let complete = buf.ends_with('\n');
        match serde_json::from_str::<Line>(buf.trim_end()) {
            Ok(line) if complete => {
                state.apply(line);
                good += n as u64;
            }
            _ => {
                let mut rest = String::new();
                let more = reader.read_line(&mut rest).map_err(|e| Error::io(path, e))?;
                if more > 0 {
                    return Err(Error::msg(format!(
                        "{}:{lineno}: the run journal is damaged; run with --fresh to start over",
                        path.display()
                    )));
                }
                break;
            }
        }
    }
    let file = OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().map_err(|e| Error::io(path, e))?.len() != good {
        file.set_len(good).map_err(|e| Error::io(path, e))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
    }
    Ok(state)
}

/// Fsyncs a folder, so the names renamed into it survive a power loss.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Removes the temporary files (`.NAME.tmp-PID`) that a killed run left under `output_dir`: with
/// the lock held, no other run is writing them (`pipe merge` calls it once every shard has ended).
pub fn remove_stale_temporaries(output_dir: &Path) {
    let mut stack = vec![output_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(_)
                    if name.starts_with('.')
                        && name.rsplit_once(".tmp-").is_some_and(|(_, pid)| pid.parse::<u32>().is_ok()) =>
                {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
    }
}

/// Writes a part (an Arrow IPC file) atomically and durably; errors name the file.
fn write_part(path: &Path, batch: &RecordBatch) -> Result<()> {
    use crate::error::ResultExt;
    let mut file = crate::atomic::AtomicFile::create(path)?;
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut file, &batch.schema()).file(path)?;
        w.write(batch).file(path)?;
        w.finish().file(path)?;
    }
    file.commit()
}

fn read_part(path: &Path) -> Result<Vec<RecordBatch>> {
    use crate::error::ResultExt;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = arrow::ipc::reader::FileReader::try_new(file, None).file(path)?;
    reader.collect::<std::result::Result<Vec<_>, _>>().file(path)
}

fn ordinals_of(batch: &RecordBatch) -> &UInt64Array {
    batch
        .column(batch.num_columns() - 1)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .expect("parts end with their ordinal column")
}

/// The position of every row of one source in that source's output, shared by the source's
/// emitter (which numbers rows) and the sinks downstream (which order by it). An id that comes
/// more than once keeps each occurrence's position, in order.
#[derive(Debug, Default)]
pub struct Ordinals {
    /// By a 64-bit hash of the id (memory stays small per row): the first occurrence's position.
    first: Mutex<ByHash<u64>>,
    /// The positions of later occurrences of an id, or of another id with the same hash (which
    /// is then handled as an id that comes twice: in arrival order, and the run not resumable).
    more: Mutex<ByHash<Vec<u64>>>,
    next: AtomicU64,
    /// Set when an id (or its hash) comes twice.
    duplicates: std::sync::atomic::AtomicBool,
}

/// A map keyed by [`id_hash`]es, which are hashes already: the key is its own hash.
type ByHash<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyIsHash>>;

/// The hasher of [`ByHash`]: passes a u64 key through.
#[derive(Debug, Default, Clone, Copy)]
struct KeyIsHash(u64);

impl std::hash::Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A 64-bit hash of a row id: SipHash with fixed keys, the same in every run of one pipe binary
/// (a journal is only continued by the same version, see [`Fingerprint`]). Ids whose hashes
/// collide are handled as an id that comes twice.
fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

/// The numbering of a source, locked while a sink looks up the rows of one part (one lock per
/// part, not per row, so the source numbering its next batch waits at most that long).
struct OrdinalView<'a> {
    first: std::sync::MutexGuard<'a, ByHash<u64>>,
    more: Option<std::sync::MutexGuard<'a, ByHash<Vec<u64>>>>,
}

impl OrdinalView<'_> {
    /// The position of the `nth` occurrence (from 0) of `id`, and whether the id comes more than
    /// once so far.
    fn get(&self, id: &str, nth: usize) -> Option<(u64, bool)> {
        let key = id_hash(id);
        let first = *self.first.get(&key)?;
        let Some(more) = &self.more else { return Some((first, false)) };
        match more.get(&key) {
            None => Some((first, false)),
            Some(later) if nth == 0 => Some((first, !later.is_empty())),
            Some(later) => Some((*later.get(nth - 1).or(later.last())?, true)),
        }
    }
}

impl Ordinals {
    /// Numbers the rows of a batch a source emitted, in order.
    pub fn number(&self, ids: &StringArray) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids.iter() {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let key = id_hash(id.unwrap_or_default());
            if let std::collections::hash_map::Entry::Vacant(v) = first.entry(key) {
                v.insert(n);
                continue;
            }
            self.duplicates.store(true, Ordering::Relaxed);
            self.more.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().push(n);
        }
    }

    /// The numbering as it is now, locked for lookups (the same lock order as [`Ordinals::number`]).
    fn view(&self) -> OrdinalView<'_> {
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        let more = self.duplicates.load(Ordering::Relaxed).then(|| self.more.lock().unwrap_or_else(|p| p.into_inner()));
        OrdinalView { first, more }
    }
}

/// A sink's side of the journal: what it committed, how it commits more, and its committed data
/// in canonical order. Outside a run (a stage driven by [`crate::testing::Harness`]) it keeps
/// everything in memory, so a sink has one code path.
#[derive(Debug)]
pub struct SinkLog {
    stage: String,
    journal: Option<Arc<Journal>>,
    ordinals: Option<Arc<Ordinals>>,
    /// The next ordinal for a row no source numbered.
    unnumbered: u64,
    /// Without a journal: the committed ids and parts.
    ids: HashSet<String>,
    memory: HashMap<String, Vec<RecordBatch>>,
    /// Per part name, how often each id (by its hash) has been looked up: every id, since a
    /// duplicate may be numbered only after its first occurrence was looked up, and that one must
    /// still count.
    occurrences: HashMap<String, ByHash<usize>>,
    /// Whether an id came twice.
    duplicates: bool,
    /// Commits not yet written to the journal (group commit, see [`SinkLog::commit`]).
    pending: Pending,
    /// How long commits may wait to be written together.
    interval: std::time::Duration,
}

/// Commits a [`SinkLog`] holds to write to the journal together: the ids and the numbered parts
/// of every commit since the last write.
#[derive(Debug)]
struct Pending {
    ids: Vec<String>,
    parts: Vec<(String, RecordBatch)>,
    bytes: usize,
    since: std::time::Instant,
    /// The unnumbered ordinal when the first of them was made.
    unnumbered: u64,
}

impl Pending {
    fn new(unnumbered: u64) -> Self {
        Pending { ids: Vec::new(), parts: Vec::new(), bytes: 0, since: std::time::Instant::now(), unnumbered }
    }
}

/// The most data a sink holds in memory between two group commits (memory stays flat; 1 MiB is
/// still few fsyncs: a million small rows make about sixty parts).
const GROUP_BYTES: usize = 1 << 20;

/// How long a sink's commits may wait to be written to the journal together: one second, or
/// `PIPE_COMMIT_INTERVAL` (seconds; 0 writes every commit at once, with its fsyncs).
fn commit_interval() -> std::time::Duration {
    std::env::var("PIPE_COMMIT_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
        .map_or(std::time::Duration::from_secs(1), std::time::Duration::from_secs_f64)
}

impl SinkLog {
    /// A log kept in memory, for a stage driven outside a run.
    pub fn in_memory(stage: &str) -> Self {
        SinkLog {
            stage: stage.to_string(),
            journal: None,
            ordinals: None,
            unnumbered: UNNUMBERED,
            ids: HashSet::new(),
            memory: HashMap::new(),
            occurrences: HashMap::new(),
            duplicates: false,
            pending: Pending::new(UNNUMBERED),
            interval: commit_interval(),
        }
    }

    /// The log of sink `stage` in a run's journal, ordering rows by `ordinals` (its source's).
    pub fn in_journal(stage: &str, journal: Arc<Journal>, ordinals: Option<Arc<Ordinals>>) -> Self {
        let unnumbered = journal.unnumbered(stage).max(UNNUMBERED);
        SinkLog {
            unnumbered,
            journal: Some(journal),
            ordinals,
            pending: Pending::new(unnumbered),
            ..SinkLog::in_memory(stage)
        }
    }

    /// Whether this sink committed row `id` in the interrupted run this one continues (rows of
    /// this run are all written, even under an id that comes twice).
    pub fn has(&self, id: &str) -> bool {
        self.journal.as_ref().is_some_and(|j| j.has(&self.stage, id))
    }

    /// How many rows this sink has committed (in this run and the one it continues).
    pub fn count(&self) -> usize {
        match &self.journal {
            Some(j) => {
                let st = j.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = st.counts.get(&self.stage).copied().unwrap_or(0) as usize;
                j.earlier.get(&self.stage).map_or(0, |s| s.len()) + now + self.pending.ids.len()
            }
            None => self.ids.len(),
        }
    }

    /// The rows of `batch` this sink has not committed yet.
    pub fn uncommitted(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = crate::columns::ids(batch)?;
        if ids.iter().all(|id| !self.has(id.unwrap_or_default())) {
            return Ok(batch.clone());
        }
        let keep: arrow::array::BooleanArray = ids.iter().map(|id| Some(!self.has(id.unwrap_or_default()))).collect();
        Ok(arrow::compute::filter_record_batch(batch, &keep)?)
    }

    /// Commits rows `ids` as durably written by this sink, with `parts`: named batches of data the
    /// sink reads back at its end ([`SinkLog::read`]), each with the ids of its rows. Data first,
    /// then the log line, each fsynced. Commits are written together (group commit): at most once
    /// a second (`PIPE_COMMIT_INTERVAL`) or per 1 MiB of data, and whenever the sink reads its
    /// data back or its stage ends ([`SinkLog::flush`]), so a run of many small batches does not
    /// pay three fsyncs per batch; a kill loses at most the last interval's commits.
    pub fn commit(&mut self, ids: &StringArray, parts: &[(&str, &RecordBatch, &StringArray)]) -> Result<()> {
        if ids.is_empty() && parts.iter().all(|(_, b, _)| b.num_rows() == 0) {
            return Ok(());
        }
        let mut numbered = Vec::with_capacity(parts.len());
        for (name, batch, part_ids) in parts {
            if batch.num_rows() == 0 {
                continue;
            }
            let ordinals = self.ordinals.clone();
            let view = ordinals.as_ref().map(|o| o.view());
            let ords: UInt64Array =
                part_ids.iter().map(|id| Some(self.ordinal(view.as_ref(), name, id.unwrap_or_default()))).collect();
            drop(view);
            let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(ORDINAL, DataType::UInt64, false));
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(ords));
            numbered.push((*name, RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?));
        }
        let id_list: Vec<String> = ids.iter().map(|i| i.unwrap_or_default().to_string()).collect();
        self.duplicates |= self.ordinals.as_ref().is_some_and(|o| o.duplicates.load(Ordering::Relaxed));
        match &self.journal {
            Some(_) => {
                self.pending.ids.extend(id_list);
                for (name, batch) in numbered {
                    self.pending.bytes += batch.get_array_memory_size();
                    self.pending.parts.push((name.to_string(), batch));
                }
                if self.pending.since.elapsed() >= self.interval || self.pending.bytes >= GROUP_BYTES {
                    self.flush()?;
                }
            }
            None => {
                self.ids.extend(id_list);
                for (name, batch) in numbered {
                    self.memory.entry(name.to_string()).or_default().push(batch);
                }
            }
        }
        Ok(())
    }

    /// Writes the commits held since the last write to the journal (data, then one log line, each
    /// fsynced). The runner calls it when the sink's stage ends, however it ends.
    pub fn flush(&mut self) -> Result<()> {
        let Some(j) = &self.journal else { return Ok(()) };
        let pending = std::mem::replace(&mut self.pending, Pending::new(self.unnumbered));
        if pending.ids.is_empty() && pending.parts.is_empty() {
            return Ok(());
        }
        // One part per name: the batches of that name, in commit order.
        let mut names: Vec<String> = Vec::new();
        let mut grouped: HashMap<String, Vec<RecordBatch>> = HashMap::new();
        for (name, batch) in pending.parts {
            if !grouped.contains_key(&name) {
                names.push(name.clone());
            }
            grouped.entry(name).or_default().push(batch);
        }
        let mut parts = Vec::with_capacity(names.len());
        for name in &names {
            let batches = &grouped[name];
            let joined = arrow::compute::concat_batches(&batches[0].schema(), batches.iter())?;
            parts.push((name.as_str(), joined));
        }
        j.commit(
            &self.stage,
            pending.ids,
            parts,
            (self.unnumbered != pending.unnumbered).then_some(self.unnumbered),
            self.duplicates,
        )
    }

    fn ordinal(&mut self, view: Option<&OrdinalView<'_>>, part: &str, id: &str) -> u64 {
        if !self.occurrences.contains_key(part) {
            self.occurrences.insert(part.to_string(), ByHash::default());
        }
        let counts = self.occurrences.get_mut(part).expect("inserted above");
        let key = id_hash(id);
        let seen = counts.get(&key).copied().unwrap_or(0);
        if let Some((n, _)) = view.and_then(|v| v.get(id, seen)) {
            *counts.entry(key).or_default() += 1;
            return n;
        }
        self.unnumbered += 1;
        self.unnumbered
    }

    /// Every row committed under `name` (this run's and the run's it continues), in canonical
    /// order, handed to `f` in batches of `chunk` rows (the last may be shorter); the batches have
    /// the columns the sink committed. Streams part by part when the parts do not overlap (the
    /// usual case), else sorts them all in memory.
    pub fn read(&mut self, name: &str, chunk: usize, mut f: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
        self.flush()?;
        let chunk = chunk.max(1);
        let mut parts: Vec<PartSource<'_>> = Vec::new();
        match &self.journal {
            Some(j) => {
                for p in j.parts(&self.stage, name) {
                    let path = j.dir.join(&p.file);
                    parts.push((p.min, p.max, p.sorted, Box::new(move || read_part(&path))));
                }
            }
            None => {
                for b in self.memory.get(name).into_iter().flatten() {
                    let v = ordinals_of(b).values();
                    let (min, max) = (v.iter().copied().min().unwrap_or(0), v.iter().copied().max().unwrap_or(0));
                    let sorted = v.windows(2).all(|w| w[0] <= w[1]);
                    parts.push((min, max, sorted, Box::new(move || Ok(vec![b.clone()]))));
                }
            }
        }
        // Stable: parts with equal ranges keep their commit order.
        parts.sort_by_key(|p| (p.0, p.1));
        let streams = parts.iter().all(|p| p.2) && parts.windows(2).all(|w| w[0].1 < w[1].0);
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        let mut flush = |pending: &mut Vec<RecordBatch>, pending_rows: &mut usize, all: bool| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let schema = pending[0].schema();
            let mut joined = arrow::compute::concat_batches(&schema, pending.iter())?;
            pending.clear();
            while joined.num_rows() >= chunk || (all && joined.num_rows() > 0) {
                let n = joined.num_rows().min(chunk);
                f(strip_ordinal(&joined.slice(0, n))?)?;
                joined = joined.slice(n, joined.num_rows() - n);
            }
            *pending_rows = joined.num_rows();
            if *pending_rows > 0 {
                pending.push(joined);
            }
            Ok(())
        };
        if streams {
            for p in &parts {
                for b in (p.3)()? {
                    pending_rows += b.num_rows();
                    pending.push(b);
                    if pending_rows >= chunk {
                        flush(&mut pending, &mut pending_rows, false)?;
                    }
                }
            }
        } else {
            let mut all = Vec::new();
            for p in &parts {
                all.extend((p.3)()?);
            }
            if let Some(first) = all.first() {
                let joined = arrow::compute::concat_batches(&first.schema(), all.iter())?;
                let order = arrow::compute::sort_to_indices(ordinals_of(&joined), None, None)?;
                let sorted = arrow::compute::take_record_batch(&joined, &order)?;
                pending_rows = sorted.num_rows();
                pending.push(sorted);
            }
        }
        flush(&mut pending, &mut pending_rows, true)
    }
}

/// A part to read: its smallest and largest ordinal, whether it is sorted, and how to load it.
type PartSource<'a> = (u64, u64, bool, Box<dyn Fn() -> Result<Vec<RecordBatch>> + 'a>);

fn strip_ordinal(batch: &RecordBatch) -> Result<RecordBatch> {
    let n = batch.num_columns() - 1;
    Ok(batch.project(&(0..n).collect::<Vec<_>>())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[&str]) -> (RecordBatch, StringArray) {
        let ids = StringArray::from(ids.to_vec());
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        (RecordBatch::try_new(schema, vec![Arc::new(ids.clone())]).unwrap(), ids)
    }

    fn print() -> Fingerprint {
        Fingerprint { version: "1".into(), settings: "s".into(), stages: Vec::new() }
    }

    fn read_ids(log: &mut SinkLog, chunk: usize) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        log.read("rows", chunk, |b| {
            let ids = crate::columns::ids(&b)?;
            out.push(ids.iter().map(|i| i.unwrap().to_string()).collect());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn commits_within_the_interval_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let ordinals = Arc::new(Ordinals::default());
        ordinals.number(&StringArray::from(vec!["a", "b", "c", "d", "e"]));
        {
            let j = Arc::new(Journal::open(dir.path(), &print(), false, true).unwrap());
            let mut log = SinkLog::in_journal("save", j.clone(), Some(ordinals.clone()));
            log.interval = std::time::Duration::from_secs(3600);
            for id in ["a", "b", "c"] {
                let (b, ids) = batch(&[id]);
                log.commit(&ids, &[("rows", &b, &ids)]).unwrap();
            }
            assert_eq!(log.count(), 3);
            // Nothing is in the log until the group is written.
            assert!(read_log(&dir.path().join(DIR).join("log")).unwrap().committed.is_empty());
            log.flush().unwrap();
            let (b, ids) = batch(&["d"]);
            log.commit(&ids, &[("rows", &b, &ids)]).unwrap();
            // Killed here: "d" was held, not written.
        }
        let state = read_log(&dir.path().join(DIR).join("log")).unwrap();
        assert_eq!(state.parts[&("save".to_string(), "rows".to_string())].len(), 1, "one part for the group");
        let j = Arc::new(Journal::open(dir.path(), &print(), false, true).unwrap());
        assert_eq!(j.start(), Start::Resumed);
        let mut log = SinkLog::in_journal("save", j.clone(), Some(ordinals));
        assert!(log.has("a") && log.has("c") && !log.has("d"));
        let (b, ids) = batch(&["d", "e"]);
        log.commit(&ids, &[("rows", &b, &ids)]).unwrap();
        assert_eq!(read_ids(&mut log, 10), vec![vec!["a", "b", "c", "d", "e"]]);
    }

    #[test]
    fn committed_rows_survive_a_reopen_and_read_back_in_source_order() {
        let dir = tempfile::tempdir().unwrap();
        let ordinals = Arc::new(Ordinals::default());
        ordinals.number(&StringArray::from(vec!["a", "b", "c", "d", "e"]));
        {
            let j = Arc::new(Journal::open(dir.path(), &print(), false, true).unwrap());
            let mut log = SinkLog::in_journal("save", j.clone(), Some(ordinals.clone()));
            log.interval = std::time::Duration::ZERO;
            let (b, ids) = batch(&["c", "d"]);
            log.commit(&ids, &[("rows", &b, &ids)]).unwrap();
            // Killed here: the journal is not finished.
        }
        let j = Arc::new(Journal::open(dir.path(), &print(), false, true).unwrap());
        assert_eq!(j.start(), Start::Resumed);
        let mut log = SinkLog::in_journal("save", j.clone(), Some(ordinals));
        assert!(log.has("c") && !log.has("a"));
        let (b, ids) = batch(&["a", "b", "e"]);
        log.commit(&ids, &[("rows", &b, &ids)]).unwrap();
        assert_eq!(read_ids(&mut log, 2), vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        drop(log);
        Arc::try_unwrap(j).unwrap().finish().unwrap();
        assert!(!dir.path().join(DIR).exists());
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_second_run_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), &print(), false, true).unwrap();
        let Err(e) = Journal::open(dir.path(), &print(), false, true) else { panic!("two runs in one folder") };
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        let j = Arc::new(j);
        let mut log = SinkLog::in_journal("save", j.clone(), None);
        let (b, ids) = batch(&["x"]);
        log.commit(&ids, &[]).unwrap();
        log.flush().unwrap();
        drop((log, b));
        drop(j);
        let mut f = OpenOptions::new().append(true).open(dir.path().join(DIR).join("log")).unwrap();
        f.write_all(b"{\"stage\":\"save\",\"seq\":9,\"ids\":[\"y").unwrap();
        let j = Journal::open(dir.path(), &print(), false, true).unwrap();
        assert_eq!(j.committed("save"), HashSet::from(["x".to_string()]));
    }

    #[test]
    fn a_journal_of_another_config_names_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = print();
        a.stages.push(StagePrint {
            id: "gen".into(),
            uses: "model.onnx".into(),
            config: "1".into(),
            inputs: BTreeMap::new(),
        });
        {
            let j = Arc::new(Journal::open(dir.path(), &a, false, true).unwrap());
            let (_, ids) = batch(&["x"]);
            let mut log = SinkLog::in_journal("save", j, None);
            log.commit(&ids, &[]).unwrap();
            log.flush().unwrap();
        }
        let mut b = a.clone();
        b.stages[0].config = "2".into();
        b.stages[0].inputs.insert("model".into(), "h".into());
        let e = Journal::open(dir.path(), &b, false, true).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("the config of stage `gen`") && text.contains("the input `model` of stage `gen`"),
            "{text}"
        );
        let j = Journal::open(dir.path(), &b, true, true).unwrap();
        assert_eq!(j.start(), Start::Fresh);
    }

    #[test]
    fn overlapping_parts_are_sorted() {
        let mut log = SinkLog::in_memory("save");
        let ordinals = Arc::new(Ordinals::default());
        ordinals.number(&StringArray::from(vec!["a", "b", "c", "d"]));
        log.ordinals = Some(ordinals);
        for ids in [&["d", "a"][..], &["c"], &["b"]] {
            let (b, ids) = batch(ids);
            log.commit(&ids, &[("rows", &b, &ids)]).unwrap();
        }
        assert_eq!(read_ids(&mut log, 10), vec![vec!["a", "b", "c", "d"]]);
    }
}
