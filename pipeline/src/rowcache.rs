//! The per-row cache: a model stage's result for one row, stored under the hash of everything
//! that made it, so a rerun of an unchanged pipeline on unchanged inputs makes no model call, and
//! a folder that gained files sends only the new rows through the models.
//!
//! A row's key hashes the stage's own key (pipe's version, the stage's id, plugin and resolved
//! params, the files those params name, the configs of every stage upstream of it, and the seed
//! for a stage that draws randomness) with the row's attempt (retry round) and the content of
//! every column it receives. The stage's store is the cache entry `rows/<stage key>/`; a row's
//! result holds the columns the stage made or changed (the columns it passes on unchanged are
//! taken from the row again when it is reused), and the results a batch made are written together,
//! one Arrow IPC file (a pack) per batch, so that storing and reading cost a file per batch rather
//! than per row.
//!
//! The cache wraps row-wise stages only (one row out per row in, at once), so the rows it
//! answers and the rows the stage computes are put back in their input order and a cached run
//! emits exactly what an uncached one does. Storing is best effort: an entry that cannot be
//! written is a warning, one that cannot be read is recomputed, and neither fails the run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayData, ArrayRef};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::plugin::{Deferred, Transform};
use crate::report::RunReport;
use crate::runner::{Emitter, StageContext};

/// Whether a plugin's stages reuse per-row results, and what their results depend on besides the
/// row and the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCache {
    /// Never cached (cheap stages, sinks, stages that are not row-wise).
    Off,
    /// A row's result depends on the row and the config only (a model run without sampling).
    Deterministic,
    /// A row's result also depends on the pipeline's seed (noise, sampling): the seed enters the
    /// key.
    Seeded,
}

/// What names a stage's store, gathered by the planner.
pub struct StageKeyParts<'a> {
    /// The stage id (a stage's random streams are drawn by it).
    pub id: &'a str,
    /// Its plugin.
    pub uses: &'a str,
    /// Its params, resolved (artifacts named by their paths), as JSON.
    pub params: String,
    /// Its effective on_error.
    pub on_error: String,
    /// Hashes of the files and folders its params name.
    pub files: Vec<(String, String)>,
    /// The plugin and params of every stage upstream of it, nearest first.
    pub upstream: Vec<String>,
    /// The pipeline seed, for a [`RowCache::Seeded`] stage.
    pub seed: Option<u64>,
    /// The stage's output columns (names and types): a stage that leaves out a column no one
    /// reads ([`crate::plugin::BuildContext::read_after`]) stores rows without it, which a build
    /// that makes the column must not take.
    pub columns: String,
}

impl StageKeyParts<'_> {
    /// The stage's key: a hex hash of all its parts.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        let mut part = |name: &str, value: &str| {
            h.update(name.as_bytes());
            h.update(&(value.len() as u64).to_le_bytes());
            h.update(value.as_bytes());
        };
        part("version", env!("CARGO_PKG_VERSION"));
        part("id", self.id);
        part("uses", self.uses);
        part("params", &self.params);
        part("on_error", &self.on_error);
        for (key, hash) in &self.files {
            part("file", key);
            part("hash", hash);
        }
        for up in &self.upstream {
            part("upstream", up);
        }
        if let Some(seed) = self.seed {
            part("seed", &seed.to_string());
        }
        part("columns", &self.columns);
        h.finalize().to_hex()[..32].to_string()
    }
}

/// A row-wise stage answered from the cache where it can: rows whose key the store holds are
/// rebuilt from it, the rest go through the stage and are stored.
pub struct CachedStage {
    inner: Box<dyn Transform>,
    store: RowStore,
    /// `--no-cache`: compute every row (and still store the results).
    reuse: bool,
    /// The stage's key, the start of every row's key.
    key: String,
    hits: u64,
    misses: u64,
    /// The early cut-off this stage ends, when the planner set one up.
    cut: Option<Tail>,
    placeholders: Placeholders,
}

/// What the last stage of an early cut-off keeps: the shared state and the store keyed by the
/// source row.
struct Tail {
    shared: Arc<CutOff>,
    store: RowStore,
    /// The stage's columns an entry holds: those its consumers read, but `id`.
    columns: Vec<usize>,
    /// Rows answered before the stages upstream ran.
    early: u64,
}

impl CachedStage {
    /// Wraps `inner` (which must be row-wise) with the store `rows/<key>` under the cache folder
    /// `root`. `meta` describes the stage in the entry's meta.json.
    pub fn new(inner: Box<dyn Transform>, root: &Path, key: String, reuse: bool, meta: Value) -> Self {
        let store = RowStore::new(root.join("rows").join(&key), meta);
        CachedStage { inner, store, reuse, key, hits: 0, misses: 0, cut: None, placeholders: Placeholders::default() }
    }

    /// Makes this stage the end of the early cut-off `shared`: rows whose source row the
    /// cut-off's store holds were answered at its start and skipped by the stages between; this
    /// stage takes their results from there, and stores every result it makes there too. `needs`
    /// are the columns this stage's consumers read. Activates the cut-off (its store is named by
    /// this stage's key and the hashes of the files the stages between name).
    pub fn end_cut_off(&mut self, shared: Arc<CutOff>, root: &Path, needs: Vec<String>, meta: Value) {
        let schema = self.inner.schema();
        let placeholders_ok =
            schema.fields().iter().filter(|f| !needs.contains(f.name())).all(|f| placeholder(f, 1).is_ok());
        if !placeholders_ok || !needs.iter().all(|n| schema.field_with_name(n).is_ok()) {
            shared.break_off();
            return;
        }
        let columns: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name() != "id" && needs.contains(f.name()))
            .map(|(c, _)| c)
            .collect();
        let key = {
            let mut state = shared.state.lock().expect("cut-off lock");
            let mut h = blake3::Hasher::new();
            h.update(b"cut-off");
            h.update(self.key.as_bytes());
            for (k, hash) in &state.files {
                h.update(&(k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                h.update(hash.as_bytes());
            }
            let key = h.finalize().to_hex()[..32].to_string();
            state.store = Some((root.join("rows").join(&key), meta.clone(), self.reuse));
            state.expect = Some(Arc::new(schema.project(&columns).expect("the columns are the schema's")));
            key
        };
        self.cut = Some(Tail { shared, store: RowStore::new(root.join("rows").join(key), meta), columns, early: 0 });
    }

    /// Computes `batch`'s rows with the stage and returns what it emitted, in order.
    fn compute(&mut self, batch: RecordBatch, cx: &mut StageContext) -> Result<Vec<RecordBatch>> {
        run_detached(self.inner.as_mut(), batch, cx)
    }

    /// Stores, under the cut-off's key of each row's source row, the columns the consumers read
    /// of every row of `done` that the cut-off did not answer (`cut_keys`, by the row of the
    /// input `ids`).
    fn store_cut_off(
        &mut self,
        done: &RecordBatch,
        ids: &arrow::array::StringArray,
        cut_keys: &[Option<String>],
    ) -> Result<()> {
        let Some(tail) = &mut self.cut else { return Ok(()) };
        if cut_keys.iter().all(Option::is_none) {
            return Ok(());
        }
        let by_id: HashMap<&str, &str> =
            ids.iter().zip(cut_keys).filter_map(|(id, key)| Some((id.unwrap_or_default(), key.as_deref()?))).collect();
        let wanted = done.project(&tail.columns)?;
        for (r, id) in crate::columns::ids(done)?.iter().enumerate() {
            if let Some(key) = by_id.get(id.unwrap_or_default()) {
                tail.store.put_row(key, &wanted, r);
            }
        }
        Ok(())
    }
}

impl Transform for CachedStage {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let done = self.answer(batch, out, cx);
        // What the batch stored is written as one pack per store.
        self.store.flush(cx.stage_id());
        if let Some(tail) = &mut self.cut {
            tail.store.flush(cx.stage_id());
        }
        done
    }

    fn finish(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.inner.finish(out, cx)
    }

    fn report(&self) -> Map<String, Value> {
        let mut m = self.inner.report();
        let mut cache =
            json!({ "hits": self.hits, "misses": self.misses, "stored": self.store.stored, "key": self.key });
        if let Some(tail) = &self.cut {
            cache["early_hits"] = json!(tail.early);
            cache["early_stored"] = json!(tail.store.stored);
        }
        m.insert("cache".into(), cache);
        m
    }

    fn after_run(&mut self, report: &RunReport) -> Result<()> {
        self.inner.after_run(report)
    }
}

impl CachedStage {
    /// Answers `batch`'s rows from the store where it can and computes the rest, putting what it
    /// made into the stores (written when the batch ends).
    fn answer(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        if !self.store.meta_written && self.store.dir.is_dir() {
            // A store in use is as young as its last run, for `pipe cache prune --older-than`.
            self.store.put_meta(cx.stage_id());
        }
        let ids = crate::columns::ids(&batch)?.clone();
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if !ids.iter().all(|id| seen.insert(id.unwrap_or_default())) {
            // Rows are matched to their results by id: a batch that repeats one is not cached.
            self.misses += batch.num_rows() as u64;
            for done in self.compute(batch, cx)? {
                out.emit(done)?;
            }
            return Ok(());
        }
        let rounds: Vec<u32> = ids.iter().map(|id| cx.round_of(id.unwrap_or_default())).collect();
        let schema = self.inner.schema();
        // Rows the cut-off answered at its start: their entry, completed to the stage's columns.
        let (early, cut_keys) = match &self.cut {
            Some(tail) => {
                let mut state = tail.shared.state.lock().expect("cut-off lock");
                let early: Vec<Option<RecordBatch>> =
                    ids.iter().map(|id| state.hits.remove(id.unwrap_or_default())).collect();
                let keys: Vec<Option<String>> =
                    ids.iter().map(|id| state.keys.remove(id.unwrap_or_default())).collect();
                (early, keys)
            }
            None => (Vec::new(), Vec::new()),
        };
        if !early.is_empty() && early.iter().all(Option::is_some) {
            // Every row answered at the cut-off's start: the entries' columns, the input's as they
            // are for the rest.
            let entries: Vec<RecordBatch> = early.into_iter().flatten().collect();
            let joined = arrow::compute::concat_batches(&entries[0].schema(), &entries)?;
            let tail = self.cut.as_mut().expect("early hits come from a cut-off");
            tail.early += joined.num_rows() as u64;
            self.hits += joined.num_rows() as u64;
            return out.emit(pass_on(&schema, &batch, &[&joined], &mut self.placeholders)?);
        }
        let keys = row_keys(&self.key, &batch, &rounds);
        let mut cached: Vec<Option<RecordBatch>> = Vec::with_capacity(batch.num_rows());
        for (row, key) in keys.iter().enumerate() {
            cached.push(match early.get(row).cloned().flatten() {
                Some(entry) => {
                    self.cut.as_mut().expect("early hits come from a cut-off").early += 1;
                    Some(complete(&entry, &schema, &batch, row)?)
                }
                None if self.reuse => self.store.get(key, &schema),
                None => None,
            });
        }
        let missing: Vec<u32> = (0..batch.num_rows() as u32).filter(|&r| cached[r as usize].is_none()).collect();
        self.hits += (batch.num_rows() - missing.len()) as u64;
        self.misses += missing.len() as u64;

        let computed = if missing.is_empty() {
            Vec::new()
        } else if missing.len() == batch.num_rows() {
            self.compute(batch.clone(), cx)?
        } else {
            let take = arrow::array::UInt32Array::from(missing.clone());
            self.compute(arrow::compute::take_record_batch(&batch, &take)?, cx)?
        };
        // Where each computed row landed, by id (rejected rows have none).
        let mut made: HashMap<&str, (usize, usize)> = HashMap::new();
        for (b, done) in computed.iter().enumerate() {
            for (r, id) in crate::columns::ids(done)?.iter().enumerate() {
                made.insert(id.unwrap_or_default(), (b, r));
            }
        }
        for &row in &missing {
            let row = row as usize;
            if let Some(&(b, r)) = made.get(ids.value(row)) {
                self.store.put(&keys[row], &computed[b], r, &batch, row, cx.stage_id());
            }
        }
        if missing.len() == batch.num_rows() {
            // Nothing cached: the stage's own batches go on as it emitted them (a row it rejected
            // is in none of them; a batch it rejected whole leaves nothing to emit).
            for done in computed {
                self.store_cut_off(&done, &ids, &cut_keys)?;
                out.emit(done)?;
            }
            return Ok(());
        }
        let done = in_input_order(&schema, &batch, &cached, &computed, &made)?;
        self.store_cut_off(&done, &ids, &cut_keys)?;
        out.emit(done)
    }
}

/// An early cut-off: a chain of cheap stages that make each row from that row alone
/// (preprocess.image, say), between a source whose ids are unique and a cached model stage
/// whose consumers read only some columns. Its start ([`CutOffStage`] with `probe`) keys each
/// source row, and a row whose key the cut-off's store holds is answered there: the stages of
/// the chain pass it on without running (with placeholders for the columns they would make,
/// which no consumer reads) and the model stage ([`CachedStage::end_cut_off`]) takes its result
/// from the entry. So an unchanged rerun does not even decode its inputs.
#[derive(Default)]
pub struct CutOff {
    state: std::sync::Mutex<CutState>,
}

#[derive(Default)]
struct CutState {
    /// Set when a stage of the chain turned out unfit (not row-wise, a column with no
    /// placeholder): the cut-off then does nothing.
    broken: bool,
    /// Hashes of the files the chain's stages name.
    files: Vec<(String, String)>,
    /// The store (folder, meta, reuse entries), set by the model stage when it is built: until
    /// then (and for good, if it never is) the cut-off does nothing.
    store: Option<(PathBuf, Value, bool)>,
    /// The columns of its entries (those the consumers read, but `id`).
    expect: Option<SchemaRef>,
    /// Answered rows in flight: id -> the entry.
    hits: HashMap<String, RecordBatch>,
    /// Rows in flight that were not answered: id -> their key, for the model stage to store.
    keys: HashMap<String, String>,
    /// Reads the contents the source left unread ([`crate::plugin::Source::defer`]).
    loader: Option<Arc<dyn Deferred>>,
}

impl CutOff {
    /// A new cut-off, inactive until its model stage ends it.
    pub fn new() -> Arc<CutOff> {
        Arc::new(CutOff::default())
    }

    /// Adds the hashes of the files a stage of the chain names to the cut-off's key.
    pub fn add_files(&self, files: Vec<(String, String)>) {
        self.state.lock().expect("cut-off lock").files.extend(files);
    }

    /// Turns the cut-off off (a stage of the chain cannot take part).
    pub fn break_off(&self) {
        self.state.lock().expect("cut-off lock").broken = true;
    }

    /// Where the source left its rows' contents unread: the start of the chain reads them, for
    /// the rows it cannot answer (and for every row, if the cut-off turns out inactive).
    pub fn defer_to(&self, loader: Arc<dyn Deferred>) {
        self.state.lock().expect("cut-off lock").loader = Some(loader);
    }
}

/// A stage of an early cut-off's chain: rows the cut-off answered pass through without running
/// the stage; the first (`probe`) also looks each row up.
pub struct CutOffStage {
    inner: Box<dyn Transform>,
    shared: Arc<CutOff>,
    probe: bool,
    /// The store, read by the probe (set at the first batch), and the columns of its entries.
    store: Option<(RowStore, bool)>,
    expect: Option<SchemaRef>,
    active: Option<bool>,
    skipped: u64,
    /// The probe's reader of the contents its source left unread, and how many rows it answered
    /// without reading them.
    loader: Option<Arc<dyn Deferred>>,
    unread: u64,
    placeholders: Placeholders,
}

impl CutOffStage {
    /// `inner` (which must be row-wise) as a stage of the cut-off `shared`; `probe` for the first
    /// stage of the chain.
    pub fn new(inner: Box<dyn Transform>, shared: Arc<CutOff>, probe: bool) -> Self {
        if !inner.row_wise() || inner.schema().fields().iter().any(|f| placeholder(f, 1).is_err()) {
            shared.break_off();
        }
        CutOffStage {
            inner,
            shared,
            probe,
            store: None,
            expect: None,
            active: None,
            skipped: 0,
            loader: None,
            unread: 0,
            placeholders: Placeholders::default(),
        }
    }

    fn active(&mut self) -> bool {
        if let Some(active) = self.active {
            return active;
        }
        let state = self.shared.state.lock().expect("cut-off lock");
        let active = !state.broken && state.store.is_some();
        if self.probe {
            self.loader = state.loader.clone();
        }
        if let (true, Some((dir, meta, reuse))) = (self.probe && active, &state.store) {
            self.store = Some((RowStore::new(dir.clone(), meta.clone()), *reuse));
            self.expect = state.expect.clone();
        }
        drop(state);
        self.active = Some(active);
        active
    }

    /// The probe: looks each row of `batch` up, by its stamp where the source left its content
    /// unread; reads the content of the stamped rows it could not answer (a row that cannot be
    /// read is rejected and left out) and looks those up by their content, which an earlier run
    /// may have stored (the file was new then, or touched since: such an entry is stored under
    /// the stamp too, for the next run). Returns the batch to go on with and which of its rows
    /// were answered.
    fn look_up(&mut self, batch: RecordBatch, cx: &mut StageContext) -> Result<(RecordBatch, Vec<bool>)> {
        let n = batch.num_rows();
        let mut stamped = match &self.loader {
            Some(loader) => loader.stamped(&batch)?,
            None => vec![false; n],
        };
        let rounds = vec![0; n];
        // A stamped row is keyed by its stamp, apart from every row keyed by its content.
        let mut keys: Vec<String> = if !stamped.contains(&true) {
            row_keys("", &batch, &rounds)
        } else if !stamped.contains(&false) {
            row_keys("stamp", &batch, &rounds)
        } else {
            let (by_stamp, by_content) = (row_keys("stamp", &batch, &rounds), row_keys("", &batch, &rounds));
            by_stamp.into_iter().zip(by_content).zip(&stamped).map(|((s, c), &st)| if st { s } else { c }).collect()
        };
        let mut found = self.find(&keys);
        let mut to_read: Vec<bool> = stamped.iter().zip(&found).map(|(s, f)| *s && f.is_none()).collect();
        let mut batch = batch;
        if let Some(loader) = self.loader.clone().filter(|_| to_read.contains(&true)) {
            let (merged, kept, read) = self.load(&loader, batch, &to_read, cx)?;
            batch = merged;
            retain_kept(&mut keys, &kept);
            retain_kept(&mut found, &kept);
            retain_kept(&mut stamped, &kept);
            retain_kept(&mut to_read, &kept);
            // The rows read, in order: the loader's batch is exactly them.
            let rows: Vec<usize> = (0..batch.num_rows()).filter(|&r| to_read[r]).collect();
            let by_content = self.find(&row_keys("", &read, &vec![0; read.num_rows()]));
            let (store, _) = self.store.as_mut().expect("the probe's store is set when active");
            for (&r, entry) in rows.iter().zip(by_content) {
                if let Some(entry) = entry {
                    store.put_row(&keys[r], &entry, 0);
                    found[r] = Some(entry);
                }
            }
            store.flush(cx.stage_id());
        }
        self.unread += stamped.iter().zip(&to_read).filter(|(s, read)| **s && !**read).count() as u64;
        let answered: Vec<bool> = found.iter().map(Option::is_some).collect();
        let ids = crate::columns::ids(&batch)?;
        let mut state = self.shared.state.lock().expect("cut-off lock");
        for ((id, key), entry) in ids.iter().zip(keys).zip(found) {
            let id = id.unwrap_or_default().to_string();
            if let Some(entry) = entry {
                state.hits.insert(id, entry);
            } else {
                state.keys.insert(id, key);
            }
        }
        drop(state);
        Ok((batch, answered))
    }

    /// The probe's store's entry for each key (with the columns the model stage stores: another
    /// pipe's entry or a torn file is a miss, and the row is made again).
    fn find(&mut self, keys: &[String]) -> Vec<Option<RecordBatch>> {
        let (store, reuse) = self.store.as_mut().expect("the probe's store is set when active");
        let expect = self.expect.as_ref().expect("the probe knows its entries' columns when active");
        keys.iter()
            .map(
                |key| if *reuse { store.get_any(key).filter(|e| e.schema().fields() == expect.fields()) } else { None },
            )
            .collect()
    }

    /// A later stage of the chain: which rows of `batch` the probe answered.
    fn answered(&self, batch: RecordBatch) -> Result<(RecordBatch, Vec<bool>)> {
        let state = self.shared.state.lock().expect("cut-off lock");
        let answered =
            crate::columns::ids(&batch)?.iter().map(|id| state.hits.contains_key(id.unwrap_or_default())).collect();
        drop(state);
        Ok((batch, answered))
    }

    /// `batch` with the content of its rows in `to_read` read by `loader`; a row that cannot be
    /// read is rejected (as its source would have) and left out: `kept` says which rows remain.
    /// Also returns the loader's batch: the rows read and kept, in order.
    fn load(
        &self,
        loader: &Arc<dyn Deferred>,
        batch: RecordBatch,
        to_read: &[bool],
        cx: &mut StageContext,
    ) -> Result<(RecordBatch, Vec<bool>, RecordBatch)> {
        let n = batch.num_rows();
        if !to_read.contains(&true) {
            let none = batch.slice(0, 0);
            return Ok((batch, vec![true; n], none));
        }
        let rows: Vec<u32> = (0..n as u32).filter(|&r| to_read[r as usize]).collect();
        let (loaded, rejected) =
            loader.load(&arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(rows))?)?;
        for (id, reason) in &rejected {
            cx.reject(id, reason.clone())?;
        }
        let gone: std::collections::HashSet<&str> = rejected.iter().map(|(id, _)| id.as_str()).collect();
        if !gone.is_empty() {
            let mut state = self.shared.state.lock().expect("cut-off lock");
            for id in &gone {
                state.keys.remove(*id);
            }
        }
        // Each row the input's, or its loaded one (in the same order); the rejected left out.
        let ids = crate::columns::ids(&batch)?;
        let (mut kept, mut indices, mut next) = (Vec::with_capacity(n), Vec::with_capacity(n), 0);
        for (r, &read) in to_read.iter().enumerate() {
            let keep = !(read && gone.contains(ids.value(r)));
            kept.push(keep);
            match (keep, read) {
                (false, _) => {}
                (true, true) => {
                    indices.push((1, next));
                    next += 1;
                }
                (true, false) => indices.push((0, r)),
            }
        }
        let columns = (0..batch.num_columns())
            .map(|c| arrow::compute::interleave(&[batch.column(c).as_ref(), loaded.column(c).as_ref()], &indices))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((RecordBatch::try_new(batch.schema(), columns)?, kept, loaded))
    }
}

impl Transform for CutOffStage {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn row_wise(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        if !self.active() {
            let batch = match self.loader.clone() {
                Some(loader) => {
                    let stamped = loader.stamped(&batch)?;
                    self.load(&loader, batch, &stamped, cx)?.0
                }
                None => batch,
            };
            return self.inner.process(batch, out, cx);
        }
        let (batch, answered) = if self.probe { self.look_up(batch, cx)? } else { self.answered(batch)? };
        let ids = crate::columns::ids(&batch)?.clone();
        let skipped = answered.iter().filter(|&&a| a).count();
        self.skipped += skipped as u64;
        let schema = self.inner.schema();
        if skipped == batch.num_rows() {
            // Every row answered: the input's columns as they are, placeholders for the rest (no
            // copy of anything).
            return out.emit(pass_on(&schema, &batch, &[], &mut self.placeholders)?);
        }
        let computed = if skipped == 0 {
            run_detached(self.inner.as_mut(), batch.clone(), cx)?
        } else {
            let missing: Vec<u32> = (0..batch.num_rows() as u32).filter(|&r| !answered[r as usize]).collect();
            let take = arrow::array::UInt32Array::from(missing);
            run_detached(self.inner.as_mut(), arrow::compute::take_record_batch(&batch, &take)?, cx)?
        };
        let mut made: HashMap<&str, (usize, usize)> = HashMap::new();
        for (b, done) in computed.iter().enumerate() {
            for (r, id) in crate::columns::ids(done)?.iter().enumerate() {
                made.insert(id.unwrap_or_default(), (b, r));
            }
        }
        // A row the stage rejected will not reach the model stage: its key goes.
        let gone: Vec<&str> = (0..batch.num_rows())
            .filter(|&r| !answered[r] && !made.contains_key(ids.value(r)))
            .map(|r| ids.value(r))
            .collect();
        if !gone.is_empty() {
            let mut state = self.shared.state.lock().expect("cut-off lock");
            for id in gone {
                state.keys.remove(id);
            }
        }
        if skipped == 0 {
            for done in computed {
                out.emit(done)?;
            }
            return Ok(());
        }
        // The rows in input order, as batches: each run of answered rows passed on as a slice of
        // the input (nothing copied), each run of made rows as the stage made them, so the stages
        // after get batches that are all answered or all made.
        let refs: Vec<&RecordBatch> = computed.iter().collect();
        let mut start = 0;
        while start < batch.num_rows() {
            let kind = answered[start];
            let end = (start..batch.num_rows()).find(|&r| answered[r] != kind).unwrap_or(batch.num_rows());
            if kind {
                out.emit(pass_on(&schema, &batch.slice(start, end - start), &[], &mut self.placeholders)?)?;
            } else {
                let rows: Vec<(usize, usize)> = (start..end).filter_map(|r| made.get(ids.value(r)).copied()).collect();
                if !rows.is_empty() {
                    out.emit(arrow::compute::interleave_record_batch(&refs, &rows)?)?;
                }
            }
            start = end;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.inner.finish(out, cx)
    }

    fn report(&self) -> Map<String, Value> {
        let mut m = self.inner.report();
        if self.active == Some(true) {
            let mut cache = json!({ "skipped": self.skipped });
            if self.loader.is_some() {
                cache["unread"] = json!(self.unread);
            }
            m.insert("cache".into(), cache);
        }
        m
    }

    fn after_run(&mut self, report: &RunReport) -> Result<()> {
        self.inner.after_run(report)
    }
}

/// Keeps the items of `v` whose flag in `kept` is set.
fn retain_kept<T>(v: &mut Vec<T>, kept: &[bool]) {
    let mut flags = kept.iter();
    v.retain(|_| flags.next().copied().unwrap_or(false));
}

/// Runs `batch` through `stage` and returns what it emitted, in order.
fn run_detached(stage: &mut dyn Transform, batch: RecordBatch, cx: &mut StageContext) -> Result<Vec<RecordBatch>> {
    let (mut out, rx) = Emitter::detached(stage.schema());
    stage.process(batch, &mut out, cx)?;
    drop(out);
    Ok(rx.try_iter().collect())
}

/// The rows of `input` as `schema`: each column from the first of `entries` (batches of as many
/// rows) that has it, else the input's (same name and type), else placeholders.
fn pass_on(
    schema: &SchemaRef,
    input: &RecordBatch,
    entries: &[&RecordBatch],
    placeholders: &mut Placeholders,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let found = entries
                .iter()
                .chain(std::iter::once(&input))
                .find_map(|b| b.column_by_name(field.name()).filter(|a| a.data_type() == field.data_type()));
            match found {
                Some(a) => Ok(a.clone()),
                None => placeholders.get(field, input.num_rows()),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Row `row` of `input` as one row of `schema`: each column from `entry` where it has it, else
/// the input's (same name and type), else a placeholder (a column no consumer reads).
fn complete(entry: &RecordBatch, schema: &SchemaRef, input: &RecordBatch, row: usize) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            if let Some(a) = entry.column_by_name(field.name()).filter(|a| a.data_type() == field.data_type()) {
                return Ok(a.slice(0, 1));
            }
            if let Some(a) = input.column_by_name(field.name()).filter(|a| a.data_type() == field.data_type()) {
                return Ok(a.slice(row, 1));
            }
            placeholder(field, 1)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `len` values of `field` that no one reads: nulls where the field allows them, else zeros
/// (zeroed memory, which costs nothing until touched).
fn placeholder(field: &Field, len: usize) -> Result<ArrayRef> {
    let nulls = arrow::array::new_null_array(field.data_type(), len);
    if field.is_nullable() {
        return Ok(nulls);
    }
    fn strip(data: ArrayData) -> std::result::Result<ArrayData, arrow::error::ArrowError> {
        let children = data.child_data().iter().cloned().map(strip).collect::<std::result::Result<Vec<_>, _>>()?;
        data.into_builder().nulls(None).child_data(children).build()
    }
    if matches!(field.data_type(), DataType::Dictionary(..) | DataType::RunEndEncoded(..) | DataType::Union(..)) {
        return Err(Error::msg(format!("no placeholder for column `{}`", field.name())));
    }
    Ok(arrow::array::make_array(strip(nulls.to_data())?))
}

/// Placeholder columns made once per column, at the largest length asked for so far, and sliced:
/// a column no one reads (a 600 KB tensor a row, say) costs one allocation a run, not one a batch.
#[derive(Default)]
struct Placeholders(HashMap<String, ArrayRef>);

impl Placeholders {
    fn get(&mut self, field: &Field, len: usize) -> Result<ArrayRef> {
        if let Some(a) = self.0.get(field.name()).filter(|a| a.len() >= len && a.data_type() == field.data_type()) {
            return Ok(a.slice(0, len));
        }
        let made = placeholder(field, len)?;
        self.0.insert(field.name().clone(), made.clone());
        Ok(made)
    }
}

/// Each output row of a stage, in input order: from `entries` where the input row has one (a
/// cached result, or the columns for a row that skipped the stage), else from the stage's batches
/// `computed` (where `made` says the row landed; a row in neither was rejected).
fn in_input_order(
    schema: &SchemaRef,
    input: &RecordBatch,
    entries: &[Option<RecordBatch>],
    computed: &[RecordBatch],
    made: &HashMap<&str, (usize, usize)>,
) -> Result<RecordBatch> {
    let ids = crate::columns::ids(input)?;
    let mut picks: Vec<Pick> = Vec::with_capacity(input.num_rows());
    for (row, entry) in entries.iter().enumerate() {
        if entry.is_some() {
            picks.push(Pick::Cached(row));
        } else if let Some(&(b, r)) = made.get(ids.value(row)) {
            picks.push(Pick::Made(b, r));
        }
    }
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, field)| assemble_column(c, field, &picks, computed, entries, input))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Where one output row comes from.
enum Pick {
    /// The stage's batch and row.
    Made(usize, usize),
    /// The cached entry of this input row.
    Cached(usize),
}

/// Output column `c` for every pick.
fn assemble_column(
    c: usize,
    field: &Field,
    picks: &[Pick],
    computed: &[RecordBatch],
    cached: &[Option<RecordBatch>],
    input: &RecordBatch,
) -> Result<ArrayRef> {
    // Sources: the computed batches' columns, then the input's column (for passed-on columns),
    // then each cached entry's column.
    let mut arrays: Vec<ArrayRef> = computed.iter().map(|b| b.column(c).clone()).collect();
    let input_at = arrays.len();
    let from_input = input.column_by_name(field.name()).filter(|a| a.data_type() == field.data_type());
    if let Some(a) = from_input {
        arrays.push(a.clone());
    }
    let mut indices = Vec::with_capacity(picks.len());
    for pick in picks {
        match *pick {
            Pick::Made(b, r) => indices.push((b, r)),
            Pick::Cached(row) => {
                let entry = cached[row].as_ref().expect("a cached pick has its entry");
                match entry.column_by_name(field.name()) {
                    Some(a) => {
                        indices.push((arrays.len(), 0));
                        arrays.push(a.clone());
                    }
                    None if from_input.is_some() => indices.push((input_at, row)),
                    None => {
                        return Err(Error::msg(format!(
                            "the cached result of row `{}` lacks column `{}` (a bug in pipe)",
                            crate::columns::ids(input)?.value(row),
                            field.name()
                        )));
                    }
                }
            }
        }
    }
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    Ok(arrow::compute::interleave(&refs, &indices)?)
}

/// The key of every row of `batch`: the stage key, the row's round, and each column's name and
/// value.
fn row_keys(stage: &str, batch: &RecordBatch, rounds: &[u32]) -> Vec<String> {
    let columns: Vec<(String, ArrayData)> =
        batch.schema().fields().iter().zip(batch.columns()).map(|(f, a)| (f.name().clone(), a.to_data())).collect();
    (0..batch.num_rows())
        .map(|row| {
            let mut h = blake3::Hasher::new();
            h.update(stage.as_bytes());
            h.update(&rounds[row].to_le_bytes());
            for (name, data) in &columns {
                h.update(&(name.len() as u64).to_le_bytes());
                h.update(name.as_bytes());
                hash_values(&mut h, data, row, 1);
            }
            h.finalize().to_hex()[..40].to_string()
        })
        .collect()
}

/// Hashes rows `start..start + len` of `data` (values, not buffers: an offset or a slice gives
/// the same hash as a fresh copy).
fn hash_values(h: &mut blake3::Hasher, data: &ArrayData, start: usize, len: usize) {
    let offset = data.offset() + start;
    let nulls = data.nulls().filter(|n| n.null_count() > 0);
    let is_null = |i: usize| nulls.is_some_and(|n| n.is_null(start + i));
    h.update(&(len as u64).to_le_bytes());
    match data.data_type() {
        t if t.is_primitive() => {
            let width = t.primitive_width().expect("primitive types have a width");
            let bytes = data.buffers()[0].as_slice();
            if nulls.is_none() {
                h.update(&bytes[offset * width..(offset + len) * width]);
            } else {
                for i in 0..len {
                    if is_null(i) {
                        h.update(&[0]);
                    } else {
                        h.update(&[1]);
                        h.update(&bytes[(offset + i) * width..(offset + i + 1) * width]);
                    }
                }
            }
        }
        DataType::Boolean => {
            let bits = arrow::buffer::BooleanBuffer::new(data.buffers()[0].clone(), offset, len);
            for i in 0..len {
                h.update(&[if is_null(i) { 2 } else { u8::from(bits.value(i)) }]);
            }
        }
        DataType::Utf8 | DataType::Binary => {
            let offsets: &[i32] = data.buffers()[0].typed_data();
            let values = data.buffers()[1].as_slice();
            for i in 0..len {
                let (a, b) = (offsets[offset + i] as usize, offsets[offset + i + 1] as usize);
                hash_bytes(h, is_null(i), &values[a..b]);
            }
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            let offsets: &[i64] = data.buffers()[0].typed_data();
            let values = data.buffers()[1].as_slice();
            for i in 0..len {
                let (a, b) = (offsets[offset + i] as usize, offsets[offset + i + 1] as usize);
                hash_bytes(h, is_null(i), &values[a..b]);
            }
        }
        DataType::FixedSizeList(_, n) => {
            let n = *n as usize;
            let child = &data.child_data()[0];
            if nulls.is_none() {
                hash_values(h, child, offset * n, len * n);
            } else {
                for i in 0..len {
                    h.update(&[u8::from(is_null(i))]);
                    if !is_null(i) {
                        hash_values(h, child, (offset + i) * n, n);
                    }
                }
            }
        }
        DataType::List(_) | DataType::LargeList(_) => {
            let bounds = |i: usize| -> (usize, usize) {
                if matches!(data.data_type(), DataType::List(_)) {
                    let o: &[i32] = data.buffers()[0].typed_data();
                    (o[offset + i] as usize, o[offset + i + 1] as usize)
                } else {
                    let o: &[i64] = data.buffers()[0].typed_data();
                    (o[offset + i] as usize, o[offset + i + 1] as usize)
                }
            };
            let child = &data.child_data()[0];
            for i in 0..len {
                h.update(&[u8::from(is_null(i))]);
                if !is_null(i) {
                    let (a, b) = bounds(i);
                    hash_values(h, child, a, b - a);
                }
            }
        }
        DataType::Struct(_) => {
            for i in 0..len {
                h.update(&[u8::from(is_null(i))]);
            }
            for child in data.child_data() {
                hash_values(h, child, offset, len);
            }
        }
        DataType::Null => {}
        _ => {
            // Types no stage makes today (dictionaries are normalized away): hashed as text.
            let array = arrow::array::make_array(data.clone());
            for i in 0..len {
                let text = arrow::util::display::array_value_to_string(&array, start + i).unwrap_or_default();
                hash_bytes(h, is_null(i), text.as_bytes());
            }
        }
    }
}

fn hash_bytes(h: &mut blake3::Hasher, null: bool, bytes: &[u8]) {
    if null {
        h.update(&[0]);
    } else {
        h.update(&[1]);
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
}

/// The schema metadata of a pack that names its rows' keys, one per row, by newlines.
const PACK_KEYS: &str = "pipe.row_keys";

/// The most packs a store keeps decoded at once (the rows of a batch come from a few).
const PACKS_LOADED: usize = 8;

/// A row key as the index holds it: the 40 hex digits as 20 bytes.
type KeyBytes = [u8; 20];

fn key_bytes(key: &str) -> Option<KeyBytes> {
    let hex = key.as_bytes();
    if hex.len() != 40 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 20];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A stage's stored rows: packs `<dir>/packs/<time>-<pid>-<n>.arrow`, each one Arrow IPC file of
/// the rows one batch stored, with their keys in its schema's metadata ([`PACK_KEYS`]); and a
/// meta.json that makes the folder an entry `pipe cache list` shows. Rows put during a batch are
/// written together when the batch ends ([`RowStore::flush`]): one file per batch, not per row.
/// The store's index (key -> pack and row) is read from the packs' footers at the first look-up,
/// later packs over earlier ones; a pack that cannot be read is left out (its rows are computed
/// again and stored in a new pack).
struct RowStore {
    dir: PathBuf,
    meta: Value,
    meta_written: bool,
    /// Rows written, in this run.
    stored: u64,
    warned: bool,
    /// Rows put and not yet written: each key and its row.
    pending: Vec<(String, RecordBatch)>,
    /// Key -> (pack, row), once read.
    index: Option<HashMap<KeyBytes, (u32, u32)>>,
    /// The packs the index names, by number.
    packs: Vec<PathBuf>,
    /// The packs decoded last, their rows and keys (`None`: unreadable), newest last.
    loaded: std::collections::VecDeque<(u32, Option<Arc<Pack>>)>,
}

impl RowStore {
    fn new(dir: PathBuf, meta: Value) -> Self {
        RowStore {
            dir,
            meta,
            meta_written: false,
            stored: 0,
            warned: false,
            pending: Vec::new(),
            index: None,
            packs: Vec::new(),
            loaded: Default::default(),
        }
    }

    fn packs_dir(&self) -> PathBuf {
        self.dir.join("packs")
    }

    /// Reads the index from the packs there are (their footers only).
    fn read_index(&mut self) -> &HashMap<KeyBytes, (u32, u32)> {
        if self.index.is_none() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(self.packs_dir())
                .map(|dir| {
                    dir.flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                            name.ends_with(".arrow") && !name.starts_with('.')
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            let mut index = HashMap::new();
            for path in names {
                let Some(keys) = pack_keys(&path) else {
                    tracing::debug!("cache pack {} is unreadable; its rows are recomputed", path.display());
                    continue;
                };
                let pack = self.packs.len() as u32;
                for (row, key) in keys.iter().enumerate() {
                    if let Some(key) = key_bytes(key) {
                        index.insert(key, (pack, row as u32));
                    }
                }
                self.packs.push(path);
            }
            self.index = Some(index);
        }
        self.index.as_ref().expect("just read")
    }

    /// Row `key` of the store, whatever its columns; `None` when there is none or its pack cannot
    /// be read.
    fn row(&mut self, key: &str) -> Option<RecordBatch> {
        let bytes = key_bytes(key)?;
        let (pack, row) = *self.read_index().get(&bytes)?;
        let loaded = match self.loaded.iter().find(|(p, _)| *p == pack) {
            Some((_, loaded)) => loaded.clone(),
            None => {
                let path = &self.packs[pack as usize];
                let loaded = read_pack(path)
                    .map_err(|e| tracing::debug!("cache pack {} is unreadable and is recomputed: {e}", path.display()))
                    .ok()
                    .map(Arc::new);
                if loaded.is_none() {
                    // Its rows are computed again and stored anew: the index forgets them.
                    if let Some(index) = &mut self.index {
                        index.retain(|_, (p, _)| *p != pack);
                    }
                }
                if self.loaded.len() == PACKS_LOADED {
                    self.loaded.pop_front();
                }
                self.loaded.push_back((pack, loaded.clone()));
                loaded
            }
        }?;
        // The pack's own keys must name the row (a pack replaced since the index was read is not
        // trusted).
        let (batch, keys) = &*loaded;
        (keys.get(row as usize).map(String::as_str) == Some(key)).then(|| batch.slice(row as usize, 1))
    }

    /// The stored row for `key`, checked against the stage's schema; `None` when there is none or
    /// it cannot be read (it is then recomputed).
    fn get(&mut self, key: &str, schema: &Schema) -> Option<RecordBatch> {
        let batch = self.row(key)?;
        for field in batch.schema().fields() {
            match schema.field_with_name(field.name()) {
                Ok(f) if f.data_type() == field.data_type() => {}
                _ => {
                    tracing::debug!("cache row {key}: column `{}` is not the stage's; recomputed", field.name());
                    return None;
                }
            }
        }
        Some(batch)
    }

    /// The stored row for `key`, whatever its columns (a cut-off's entry, checked by the stage
    /// that uses it).
    fn get_any(&mut self, key: &str) -> Option<RecordBatch> {
        self.row(key)
    }

    /// Stores row `r` of `batch`, every column, when the batch ends.
    fn put_row(&mut self, key: &str, batch: &RecordBatch, r: usize) {
        self.pending.push((key.to_string(), batch.slice(r, 1)));
    }

    /// Stores row `r` of the stage's `out` (made from row `row` of `input`), when the batch ends:
    /// the columns it made or changed. A failure is a warning (once), never the run's failure.
    fn put(&mut self, key: &str, out: &RecordBatch, r: usize, input: &RecordBatch, row: usize, stage: &str) {
        match made_columns(out, r, input, row) {
            Ok(batch) => self.pending.push((key.to_string(), batch)),
            Err(e) => self.warn(stage, e),
        }
    }

    /// Writes the rows put since the last flush: a pack for each set of columns they have (one,
    /// almost always). A failure is a warning (once).
    fn flush(&mut self, stage: &str) {
        if self.pending.is_empty() {
            return;
        }
        if let Err(e) = self.try_flush() {
            self.warn(stage, e);
        }
        self.pending.clear();
    }

    fn try_flush(&mut self) -> Result<()> {
        if !self.meta_written {
            self.try_put_meta()?;
        }
        let mut pending = std::mem::take(&mut self.pending);
        // A row the store holds already (a rerun with --no-cache, rows repeated) is not stored again.
        let index = self.read_index();
        pending.retain(|(key, _)| key_bytes(key).is_none_or(|k| !index.contains_key(&k)));
        if pending.is_empty() {
            return Ok(());
        }
        let mut groups: Vec<(SchemaRef, Vec<String>, Vec<RecordBatch>)> = Vec::new();
        for (key, row) in pending {
            match groups.iter_mut().find(|(s, _, _)| s.fields() == row.schema().fields()) {
                Some((_, keys, rows)) => {
                    keys.push(key);
                    rows.push(row);
                }
                None => groups.push((row.schema(), vec![key], vec![row])),
            }
        }
        let dir = self.packs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (schema, keys, rows) in groups {
            let batch = arrow::compute::concat_batches(&schema, &rows)?;
            let mut meta = HashMap::new();
            meta.insert(PACK_KEYS.to_string(), keys.join("\n"));
            let schema = Arc::new(Schema::new_with_metadata(schema.fields().clone(), meta));
            let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
            let mut bytes = Vec::new();
            {
                let mut writer = arrow::ipc::writer::FileWriter::try_new(&mut bytes, &schema)?;
                writer.write(&batch)?;
                writer.finish()?;
            }
            let path = dir.join(pack_name());
            write_new(&path, &bytes)?;
            self.stored += keys.len() as u64;
            if let Some(index) = &mut self.index {
                let pack = self.packs.len() as u32;
                for (row, key) in keys.iter().enumerate() {
                    if let Some(key) = key_bytes(key) {
                        index.insert(key, (pack, row as u32));
                    }
                }
                self.packs.push(path);
            }
        }
        Ok(())
    }

    /// Writes the store's meta.json (again), as [`RowStore::flush`] does.
    fn put_meta(&mut self, stage: &str) {
        if let Err(e) = self.try_put_meta() {
            self.warn(stage, e);
        }
    }

    fn try_put_meta(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let meta = serde_json::to_string_pretty(&self.meta).unwrap_or_default();
        write_new(&self.dir.join("meta.json"), meta.as_bytes())?;
        self.meta_written = true;
        Ok(())
    }

    fn warn(&mut self, stage: &str, e: Error) {
        if !self.warned {
            self.warned = true;
            tracing::warn!("stage \"{stage}\": results are not being cached ({e})");
        }
    }
}

/// Row `r` of a stage's `out` (made from row `row` of `input`) with the columns it made or
/// changed: those a cached row holds (the rest are taken from the row again).
fn made_columns(out: &RecordBatch, r: usize, input: &RecordBatch, row: usize) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in out.schema().fields().iter().zip(out.columns()) {
        let value = column.slice(r, 1);
        let passed_on = input
            .column_by_name(field.name())
            .is_some_and(|a| a.data_type() == field.data_type() && a.slice(row, 1).to_data() == value.to_data());
        if !passed_on {
            fields.push(field.clone());
            columns.push(value);
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// A new pack's file name: the time first, so that names sort as the packs were written.
fn pack_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:020}-{}-{}.arrow", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The keys a pack's footer names, one per row; `None` when it cannot be read.
fn pack_keys(path: &Path) -> Option<Vec<String>> {
    let file = std::fs::File::open(path).ok()?;
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None).ok()?;
    let keys = reader.schema().metadata().get(PACK_KEYS)?.split('\n').map(str::to_string).collect();
    Some(keys)
}

/// A pack read: its rows (without the keys' metadata) and their keys.
type Pack = (RecordBatch, Vec<String>);

fn read_pack(path: &Path) -> Result<Pack> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)?;
    let batch = reader.next().ok_or_else(|| Error::msg("no batch"))??;
    if reader.next().is_some() {
        return Err(Error::msg("more than one batch"));
    }
    let schema = batch.schema();
    let keys: Vec<String> = match schema.metadata().get(PACK_KEYS) {
        Some(keys) => keys.split('\n').map(str::to_string).collect(),
        None => return Err(Error::msg("no keys")),
    };
    if keys.len() != batch.num_rows() {
        return Err(Error::msg(format!("{} rows for {} keys", batch.num_rows(), keys.len())));
    }
    let plain = Arc::new(Schema::new(schema.fields().clone()));
    Ok((RecordBatch::try_new(plain, batch.columns().to_vec())?, keys))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader sees the whole
/// file or none. Not synced: an entry lost to a power cut is recomputed.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnError;
    use crate::rejects::RejectLog;
    use arrow::array::{Float32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Mutex;

    /// Adds `y = 2 x` to each row; rejects a row whose x is negative; records what it was given.
    struct Double {
        schema: SchemaRef,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Transform for Double {
        fn schema(&self) -> SchemaRef {
            self.schema.clone()
        }

        fn row_wise(&self) -> bool {
            true
        }

        fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
            let ids = crate::columns::ids(&batch)?.clone();
            let x = batch.column(1).as_any().downcast_ref::<Float32Array>().unwrap().clone();
            self.seen.lock().unwrap().extend(ids.iter().map(|i| i.unwrap().to_string()));
            let verdicts: Vec<std::result::Result<(), String>> =
                x.iter().map(|v| if v.unwrap() < 0.0 { Err("negative".to_string()) } else { Ok(()) }).collect();
            let keep = cx.reject_failed(&batch, &verdicts)?;
            let batch = arrow::compute::filter_record_batch(&batch, &keep)?;
            let x = batch.column(1).as_any().downcast_ref::<Float32Array>().unwrap();
            let y: Float32Array = x.iter().map(|v| v.map(|v| 2.0 * v)).collect();
            out.emit(RecordBatch::try_new(
                self.schema.clone(),
                vec![batch.column(0).clone(), batch.column(1).clone(), Arc::new(y)],
            )?)
        }
    }

    fn rows(ids: &[&str], xs: &[f32]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("x", DataType::Float32, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(Float32Array::from(xs.to_vec()))],
        )
        .unwrap()
    }

    fn stage(root: &Path, seen: &Arc<Mutex<Vec<String>>>) -> CachedStage {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("x", DataType::Float32, false),
            Field::new("y", DataType::Float32, true),
        ]));
        let inner = Box::new(Double { schema, seen: seen.clone() });
        CachedStage::new(inner, root, "stagekey".into(), true, json!({"stage": "double"}))
    }

    /// Runs `batch` through `stage`; returns (id, y) of what came out, in order.
    fn drive(stage: &mut CachedStage, batch: RecordBatch) -> (Vec<(String, f32)>, u64) {
        let rejects = Arc::new(RejectLog::in_memory(-1));
        let mut cx = StageContext::standalone("double", 0, 8, OnError::Skip, rejects.clone());
        let (mut out, rx) = Emitter::detached(stage.schema());
        stage.process(batch, &mut out, &mut cx).unwrap();
        drop(out);
        let mut got = Vec::new();
        for b in rx.try_iter() {
            let ids = crate::columns::ids(&b).unwrap();
            let y = b.column(2).as_any().downcast_ref::<Float32Array>().unwrap();
            got.extend((0..b.num_rows()).map(|r| (ids.value(r).to_string(), y.value(r))));
        }
        (got, rejects.count())
    }

    #[test]
    fn cached_rows_and_computed_rows_come_out_in_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut s = stage(dir.path(), &seen);
        let (got, rejected) = drive(&mut s, rows(&["a", "b", "c"], &[1.0, -1.0, 3.0]));
        assert_eq!(got, [("a".into(), 2.0), ("c".into(), 6.0)]);
        assert_eq!(rejected, 1);
        // Two cached rows around a new one, and the rejected row again (never stored).
        let mut s = stage(dir.path(), &seen);
        seen.lock().unwrap().clear();
        let (got, rejected) = drive(&mut s, rows(&["a", "d", "c", "b"], &[1.0, 4.0, 3.0, -1.0]));
        assert_eq!(got, [("a".into(), 2.0), ("d".into(), 8.0), ("c".into(), 6.0)]);
        assert_eq!(rejected, 1, "a rejected row is computed and rejected again");
        assert_eq!(*seen.lock().unwrap(), ["d", "b"], "only the rows the cache lacks reach the stage");
        assert_eq!((s.hits, s.misses), (2, 2));
        // A changed value is another key.
        seen.lock().unwrap().clear();
        let (got, _) = drive(&mut s, rows(&["a"], &[5.0]));
        assert_eq!(got, [("a".into(), 10.0)]);
        assert_eq!(*seen.lock().unwrap(), ["a"]);
    }

    #[test]
    fn an_unreadable_entry_is_computed_again() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut s = stage(dir.path(), &seen);
        drive(&mut s, rows(&["a"], &[1.0]));
        for entry in walk(&dir.path().join("rows")) {
            if entry.extension().is_some_and(|e| e == "arrow") {
                std::fs::write(&entry, b"torn").unwrap();
            }
        }
        seen.lock().unwrap().clear();
        let mut s = stage(dir.path(), &seen);
        let (got, _) = drive(&mut s, rows(&["a"], &[1.0]));
        assert_eq!(got, [("a".into(), 2.0)]);
        assert_eq!(*seen.lock().unwrap(), ["a"]);
        // It was stored anew: the next run answers it.
        seen.lock().unwrap().clear();
        let mut s = stage(dir.path(), &seen);
        let (got, _) = drive(&mut s, rows(&["a"], &[1.0]));
        assert_eq!(got, [("a".into(), 2.0)]);
        assert!(seen.lock().unwrap().is_empty(), "the torn row was not stored again");
    }

    #[test]
    fn a_batch_is_stored_as_one_pack_and_a_rerun_without_reuse_adds_none() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut s = stage(dir.path(), &seen);
        drive(&mut s, rows(&["a", "b", "c"], &[1.0, 2.0, 3.0]));
        let packs = || {
            walk(&dir.path().join("rows")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "arrow")).count()
        };
        assert_eq!(packs(), 1, "three rows, one pack");
        assert_eq!(s.store.stored, 3);
        // --no-cache: every row computed again, none stored twice.
        let inner = Box::new(Double { schema: s.inner.schema(), seen: seen.clone() });
        let mut again = CachedStage::new(inner, dir.path(), "stagekey".into(), false, json!({"stage": "double"}));
        seen.lock().unwrap().clear();
        let (got, _) = drive(&mut again, rows(&["a", "b", "d"], &[1.0, 2.0, 4.0]));
        assert_eq!(got, [("a".into(), 2.0), ("b".into(), 4.0), ("d".into(), 8.0)]);
        assert_eq!(*seen.lock().unwrap(), ["a", "b", "d"], "without reuse every row is computed");
        assert_eq!((packs(), again.store.stored), (2, 1), "only the new row is stored");
        // Both packs are read back: every row answered.
        seen.lock().unwrap().clear();
        let mut third = stage(dir.path(), &seen);
        let (got, _) = drive(&mut third, rows(&["d", "c", "a"], &[4.0, 3.0, 1.0]));
        assert_eq!(got, [("d".into(), 8.0), ("c".into(), 6.0), ("a".into(), 2.0)]);
        assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn keys_hash_values_not_buffers() {
        let batch = rows(&["a", "b", "c"], &[1.0, 2.0, 3.0]);
        let whole = row_keys("k", &batch, &[0, 0, 0]);
        let sliced = row_keys("k", &batch.slice(1, 2), &[0, 0]);
        assert_eq!(whole[1..], sliced[..], "a slice hashes as its rows");
        let copy = rows(&["b"], &[2.0]);
        assert_eq!(row_keys("k", &copy, &[0])[0], whole[1]);
        assert_ne!(row_keys("k", &copy, &[1])[0], whole[1], "the round is in the key");
        assert_ne!(row_keys("other", &copy, &[0])[0], whole[1], "the stage key is in the key");
        assert_ne!(row_keys("k", &rows(&["b"], &[2.5]), &[0])[0], whole[1]);
        // Tensors (fixed-size lists) by their values, slices included.
        let t = arrow::array::FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            2,
            Arc::new(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            None,
        )
        .unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("t", t.data_type().clone(), false)]));
        let tb = RecordBatch::try_new(schema.clone(), vec![Arc::new(t)]).unwrap();
        let one = arrow::array::FixedSizeListArray::try_new(
            Arc::new(Field::new("item", DataType::Float32, false)),
            2,
            Arc::new(Float32Array::from(vec![3.0, 4.0])),
            None,
        )
        .unwrap();
        let ob = RecordBatch::try_new(schema, vec![Arc::new(one)]).unwrap();
        assert_eq!(row_keys("k", &tb, &[0, 0])[1], row_keys("k", &ob, &[0])[0]);
        assert_ne!(row_keys("k", &tb, &[0, 0])[0], row_keys("k", &ob, &[0])[0]);
    }
}
