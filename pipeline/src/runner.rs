//! The streaming runner: one thread per stage, joined by bounded channels, so memory stays flat
//! however large the input. A full channel blocks the sender (backpressure); a failure anywhere
//! stops every stage without committing outputs; Ctrl-C stops the sources and lets the rest drain
//! and flush what finished.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Sender, bounded};
use rand_chacha::ChaCha8Rng;

use crate::board::Board;
use crate::config::OnError;
use crate::docs::PluginKind;
use crate::error::{Error, Result};
use crate::journal::{Fingerprint, Journal, Ordinals, SinkLog, Start};
use crate::plan::Plan;
use crate::plugin::{Shard, Stage};
use crate::progress::{Progress, ProgressMode};
use crate::rejects::RejectLog;
use crate::report::{RunReport, RunStatus, StageReport};
use crate::retry::{Loop, RetryRun, id_set};
use crate::rng::row_rng;
use crate::shard::RunFiles;

/// Batches that may wait between two stages; with the batch size this bounds memory in flight.
pub const CHANNEL_CAPACITY: usize = 4;

/// Set by the Ctrl-C handler; sources stop emitting when they see it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Writes run.json of the run in progress as "interrupted", for [`stop_now`].
type Farewell = Box<dyn Fn() + Send>;
static FAREWELL: Mutex<Option<Farewell>> = Mutex::new(None);

/// Ends the process at once (a second Ctrl-C): writes run.json of the run in progress with status
/// "interrupted" and the figures so far, removes uncommitted temporary files, and exits 130
/// without running destructors or exit handlers, so no stage (or the ONNX Runtime library being
/// torn down under a running session) can add an error of its own.
pub fn stop_now() -> ! {
    if let Some(farewell) = FAREWELL.lock().unwrap_or_else(|p| p.into_inner()).take() {
        farewell();
    }
    crate::atomic::remove_uncommitted();
    // SAFETY: _exit ends the process without touching its state; nothing runs after it.
    unsafe { libc::_exit(130) }
}

/// Live counters of one stage, read by the progress display and the report.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Rows received.
    pub rows_in: AtomicU64,
    /// Rows emitted.
    pub rows_out: AtomicU64,
    /// Rows rejected (recorded in rejects.jsonl).
    pub rejected: AtomicU64,
    /// Rows dropped on purpose (a filter), not errors.
    pub filtered: AtomicU64,
    /// Rows a source did not pass on because every sink had committed them in the run this one
    /// continues.
    pub resumed: AtomicU64,
    /// Time spent inside the stage, not waiting on its neighbours.
    pub busy_ns: AtomicU64,
    /// Set when the stage's thread has ended.
    pub done: AtomicBool,
    /// What the stage says it is doing, for the progress display ("step 40/200, loss 0.31").
    pub status: Mutex<String>,
}

/// Shared by all stage threads of one run.
#[derive(Debug, Default)]
struct RunState {
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl RunState {
    fn fail(&self, err: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Where a stage sends its batches.
pub struct Emitter {
    outputs: Vec<Sender<RecordBatch>>,
    schema: SchemaRef,
    stats: Arc<StageStats>,
    state: Arc<RunState>,
    source: bool,
    blocked: Duration,
    /// In a retried span: the loop (retried rows are not counted again) and the ids emitted
    /// since the last check.
    span: Option<(Arc<Loop>, HashSet<String>)>,
    /// For a source feeding sinks: how its rows are numbered, and the ids to leave out.
    resume: Option<SourceResume>,
    /// For a source under `--shard`: the shard whose rows it passes on.
    shard: Option<Shard>,
}

/// What a source's emitter does for the journal: numbers every row it emits (the canonical order
/// sinks finalize in) and drops the rows every sink downstream committed in the run this one
/// continues, so no stage sees them again.
struct SourceResume {
    ordinals: Arc<Ordinals>,
    skip: HashSet<String>,
}

impl Emitter {
    fn new(outputs: Vec<Sender<RecordBatch>>, schema: SchemaRef, stats: Arc<StageStats>, state: Arc<RunState>) -> Self {
        Emitter {
            outputs,
            schema,
            stats,
            state,
            source: false,
            blocked: Duration::ZERO,
            span: None,
            resume: None,
            shard: None,
        }
    }

    /// An emitter whose batches wait in an unbounded queue, for driving a stage outside a run.
    pub(crate) fn detached(schema: SchemaRef) -> (Emitter, Receiver<RecordBatch>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Emitter::new(vec![tx], schema, Arc::default(), Arc::default()), rx)
    }

    /// The schema the stage declared; every emitted batch must have it.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Sends a batch downstream, blocking while the downstream queue is full. Sources get
    /// [`Error::Interrupted`] after Ctrl-C: stop emitting and return it.
    pub fn emit(&mut self, batch: RecordBatch) -> Result<()> {
        if self.state.failed() {
            return Err(Error::Disconnected);
        }
        if self.source && INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut batch = conform(batch, &self.schema)?;
        if let Some(shard) = self.shard {
            // Before the numbering: a shard's rows are numbered among themselves, the same way
            // on every run of that shard.
            let keep: arrow::array::BooleanArray =
                crate::columns::ids(&batch)?.iter().map(|id| Some(shard.keeps(id.unwrap_or_default()))).collect();
            if keep.true_count() < batch.num_rows() {
                batch = arrow::compute::filter_record_batch(&batch, &keep)?;
                if batch.num_rows() == 0 {
                    return Ok(());
                }
            }
        }
        if let Some(resume) = &self.resume {
            let ids = crate::columns::ids(&batch)?;
            resume.ordinals.number(ids);
            if !resume.skip.is_empty() {
                let keep: arrow::array::BooleanArray =
                    ids.iter().map(|id| Some(!resume.skip.contains(id.unwrap_or_default()))).collect();
                let kept = keep.true_count();
                if kept < batch.num_rows() {
                    self.stats.resumed.fetch_add((batch.num_rows() - kept) as u64, Ordering::Relaxed);
                    batch = arrow::compute::filter_record_batch(&batch, &keep)?;
                    if kept == 0 {
                        return Ok(());
                    }
                }
            }
        }
        let counted = match &mut self.span {
            None => batch.num_rows() as u64,
            Some((shared, seen)) => {
                let mut counted = 0;
                for id in crate::columns::ids(&batch)?.iter() {
                    let id = id.unwrap_or_default();
                    counted += u64::from(!shared.retrying(id));
                    seen.insert(id.to_string());
                }
                counted
            }
        };
        self.stats.rows_out.fetch_add(counted, Ordering::Relaxed);
        let start = Instant::now();
        for tx in &self.outputs {
            tx.send(batch.clone()).map_err(|_| Error::Disconnected)?;
        }
        self.blocked += start.elapsed();
        Ok(())
    }
}

/// Checks a batch against the declared schema and gives it that schema (with its metadata).
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if Arc::ptr_eq(&batch.schema(), schema) {
        return Ok(batch);
    }
    use crate::columns::ColumnMismatch;
    match crate::columns::same_columns(&batch.schema(), schema) {
        Ok(()) => Ok(RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?),
        Err(ColumnMismatch::Count { got, expected }) => {
            Err(Error::msg(format!("emitted columns [{}] but declared [{}]", got.join(", "), expected.join(", "))))
        }
        Err(ColumnMismatch::Column { got, expected, .. }) => Err(Error::msg(format!(
            "emitted column `{}` ({}) where it declared `{}` ({})",
            got.name(),
            got.data_type(),
            expected.name(),
            expected.data_type()
        ))),
    }
}

/// What a running stage may use: its id, seeds, the rejects log.
pub struct StageContext {
    stage: String,
    seed: u64,
    batch_size: usize,
    on_error: OnError,
    rejects: Arc<RejectLog>,
    stats: Arc<StageStats>,
    /// In a retried span: the loop, and the ids rejected since the last check.
    span: Option<(Arc<Loop>, Vec<String>)>,
    /// Where stages publish artifacts for stages built after them.
    artifacts: Option<Arc<Board<std::path::PathBuf>>>,
    /// A sink's side of the run journal.
    log: SinkLog,
}

impl StageContext {
    /// A context for driving a stage outside a run (tests, tools): rejects go to `rejects`
    /// (`max_rejects` as in `[pipeline]`, -1 for no limit).
    pub fn standalone(stage: &str, seed: u64, batch_size: usize, on_error: OnError, rejects: Arc<RejectLog>) -> Self {
        StageContext {
            stage: stage.to_string(),
            seed,
            batch_size,
            on_error,
            rejects,
            stats: Arc::default(),
            span: None,
            artifacts: None,
            log: SinkLog::in_memory(stage),
        }
    }

    /// A sink's side of the run journal: which rows it committed (in this run or the interrupted
    /// one this run continues), how it commits more, and its committed data in canonical order.
    /// Outside a run it is kept in memory.
    pub fn journal(&mut self) -> &mut SinkLog {
        &mut self.log
    }

    /// The stage id.
    pub fn stage_id(&self) -> &str {
        &self.stage
    }

    /// Rows per batch for sources.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The pipeline seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The random stream of `row` in this stage: round 0 in the pipeline's own pass, round k when
    /// a retry node re-runs the row for the k-th time, so every retry draws afresh and
    /// reproducibly.
    pub fn rng(&self, row: &str) -> ChaCha8Rng {
        row_rng(self.seed, &self.stage, row, self.round_of(row))
    }

    /// Says what the stage is doing, for the progress display (a bar's message on a terminal, the
    /// stage's progress line otherwise): "step 40/200, loss 0.31".
    pub fn set_status(&self, status: impl Into<String>) {
        *self.stats.status.lock().unwrap_or_else(|p| p.into_inner()) = status.into();
    }

    /// Publishes this stage's artifacts: the files in `folder`, which later stages name as
    /// `"@STAGE/FILE"`; the stages waiting for them are built now. Outside a run it does nothing.
    pub fn publish(&self, folder: &std::path::Path) {
        if let Some(board) = &self.artifacts {
            board.publish(&self.stage, folder.to_path_buf());
        }
    }

    /// The attempt `row` is on, counted from 0: above 0 only when a retry node re-runs it.
    pub fn round_of(&self, row: &str) -> u32 {
        self.span.as_ref().map_or(0, |(shared, _)| shared.round_of(row))
    }

    /// What a per-item error does here.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// Reports a per-item failure. With on_error = "fail" this returns the error to stop the run;
    /// with "skip" it records the row in rejects.jsonl and returns Ok, unless max_rejects is passed.
    pub fn reject(&mut self, row: &str, reason: impl std::fmt::Display) -> Result<()> {
        self.reject_rows(row, 1, reason)
    }

    /// Reports a failure that costs `rows` rows at once under one name (the unread rest of a file
    /// that cannot be resynced past a fault): with "skip" one line in rejects.jsonl carries the
    /// count and the stage's `rejected` grows by `rows`, so written + rejected still adds up to the
    /// input. With "fail" it is an error like [`StageContext::reject`].
    pub fn reject_rows(&mut self, row: &str, rows: u64, reason: impl std::fmt::Display) -> Result<()> {
        let reason = reason.to_string();
        match self.on_error {
            OnError::Fail => Err(Error::Item { row: row.to_string(), reason }),
            OnError::Skip => {
                // A row rejected on a retry was counted on its first pass.
                let retried = match &mut self.span {
                    Some((shared, rejected)) => {
                        rejected.push(row.to_string());
                        shared.retrying(row)
                    }
                    None => false,
                };
                if !retried {
                    self.stats.rejected.fetch_add(rows, Ordering::Relaxed);
                }
                self.rejects.record_rows(&self.stage, row, rows, &reason)
            }
        }
    }

    /// Reports every failed row of `batch` (`results` has one entry per row; on_error applies, as
    /// in [`StageContext::reject`]) and returns the mask of the rows that succeeded, for
    /// `arrow::compute::filter_record_batch`.
    pub fn reject_failed<T, E: std::fmt::Display>(
        &mut self,
        batch: &RecordBatch,
        results: &[std::result::Result<T, E>],
    ) -> Result<arrow::array::BooleanArray> {
        let ids = crate::columns::ids(batch)?;
        let mut keep = Vec::with_capacity(results.len());
        for (row, r) in results.iter().enumerate() {
            if let Err(reason) = r {
                self.reject(ids.value(row), reason)?;
            }
            keep.push(r.is_ok());
        }
        Ok(keep.into())
    }

    /// Counts rows dropped on purpose (by a filter).
    pub fn count_filtered(&mut self, rows: u64) {
        self.stats.filtered.fetch_add(rows, Ordering::Relaxed);
    }
}

/// Options of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// How progress is shown.
    pub progress: ProgressMode,
    /// `--fresh`: discard the journal of an interrupted run in the output folder and start over.
    pub fresh: bool,
    /// `--shard I/N`: sources pass on the rows of this shard only, and the run report, rejects
    /// and journal carry the shard in their names ([`RunFiles`]).
    pub shard: Option<Shard>,
}

/// Runs a plan to the end and writes run.json; the report says how it went.
pub fn run(plan: Plan, options: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let Plan { file, output_dir, nodes, loops, .. } = plan;
    if output_dir.exists() && !output_dir.is_dir() {
        return Err(Error::msg(format!("output folder {} is a file, not a folder", output_dir.display())));
    }
    std::fs::create_dir_all(&output_dir).map_err(|e| Error::io(&output_dir, e))?;
    let cache_dir = crate::cache::Cache::folder(&file.dir, &file.settings.cache_dir);
    let print = Fingerprint::of(&file, &output_dir, &cache_dir);
    let resumable = resumable(&nodes);
    let journal = Arc::new(Journal::open_shard(&output_dir, options.shard, &print, options.fresh, resumable)?);
    let resumed = journal.start() == Start::Resumed;
    let files = RunFiles::new(&output_dir, options.shard);
    let rejects_path = files.rejects.clone();
    let rejects = Arc::new(match resumed {
        true => RejectLog::resume(rejects_path, file.max_rejects())?,
        false => RejectLog::new(rejects_path, file.max_rejects()),
    });
    let state = Arc::new(RunState::default());
    let stats: Vec<Arc<StageStats>> = nodes.iter().map(|_| Arc::default()).collect();

    let mut receivers: Vec<Option<Receiver<RecordBatch>>> = nodes.iter().map(|_| None).collect();
    let mut senders: Vec<Vec<Sender<RecordBatch>>> = nodes.iter().map(|_| Vec::new()).collect();
    for (i, node) in nodes.iter().enumerate() {
        if let Some(up) = node.input {
            let (tx, rx) = bounded(CHANNEL_CAPACITY);
            senders[up].push(tx);
            receivers[i] = Some(rx);
        }
    }

    // Each retry loop: the retry edge back to its head (unbounded: it never blocks), and the
    // channel on which its span's stages report the rows they rejected.
    let artifacts: Arc<Board<std::path::PathBuf>> = Arc::default();
    let schemas: Arc<Board<SchemaRef>> = Arc::default();
    for node in nodes.iter().filter(|n| n.pending.is_none()) {
        schemas.publish(&node.id, node.schema.clone());
    }
    let input_ids: Vec<Option<String>> = nodes.iter().map(|n| n.input.map(|up| nodes[up].id.clone())).collect();
    let mut resumes = source_resumes(&nodes, &journal, resumable);
    let mut roles: Vec<Role> = nodes.iter().map(|_| Role::Plain).collect();
    for l in &loops {
        let (retry_tx, retry_rx) = crossbeam_channel::unbounded();
        let (dropped_tx, dropped_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Loop::new(retry_tx));
        for (k, &m) in l.span.iter().enumerate() {
            roles[m] = Role::Member {
                shared: shared.clone(),
                dropped: dropped_tx.clone(),
                retries: (k == 0).then(|| retry_rx.clone()),
            };
        }
        let span_input = l.span_input.clone().ok_or_else(|| l.span_input_from.clone());
        roles[l.node] = Role::Retry { shared, dropped: dropped_rx, span_input };
    }

    let ledger = Ledger {
        pipeline: file.settings.name.clone(),
        seed: file.settings.seed,
        output_dir: output_dir.clone(),
        report_path: files.report.clone(),
        shard: options.shard,
        started,
        rejects: rejects.clone(),
    };
    {
        let stats = stats.clone();
        let stages: Vec<(String, String)> = nodes.iter().map(|n| (n.id.clone(), n.uses.clone())).collect();
        let ledger = ledger.clone();
        *FAREWELL.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(move || {
            let figures = stages
                .iter()
                .zip(&stats)
                .map(|((id, uses), s)| {
                    let mut r = StageReport::new(id, uses, ledger.started.elapsed(), serde_json::Map::new());
                    r.fill(s);
                    r
                })
                .collect();
            let _ = ledger.report(RunStatus::Interrupted, None, figures).write(&ledger.report_path);
        }));
    }
    let progress = Progress::start(
        nodes.iter().zip(&stats).map(|(n, s)| (n.id.clone(), n.kind, s.clone())).collect(),
        options.progress,
    );
    let mut stage_reports: Vec<StageReport> = Vec::with_capacity(nodes.len());
    let mut finished_stages: Vec<Stage> = Vec::with_capacity(nodes.len());
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (((((node, rx), outputs), stats), role), input_id) in
            nodes.into_iter().zip(receivers).zip(senders).zip(&stats).zip(roles).zip(input_ids)
        {
            let mut out = Emitter::new(outputs, node.schema.clone(), stats.clone(), state.clone());
            out.source = rx.is_none();
            out.shard = options.shard.filter(|_| out.source);
            let (resume, ordinals) = resumes.remove(&node.id).unwrap_or((None, None));
            out.resume = resume;
            let mut cx = StageContext::standalone(
                &node.id,
                file.settings.seed,
                file.settings.batch_size,
                node.on_error,
                rejects.clone(),
            );
            cx.stats = stats.clone();
            cx.artifacts = Some(artifacts.clone());
            if node.kind == PluginKind::Sink {
                cx.log = SinkLog::in_journal(&node.id, journal.clone(), ordinals);
            }
            let boards = Boards { artifacts: artifacts.clone(), schemas: schemas.clone(), input: input_id };
            if let Role::Member { shared, .. } = &role {
                out.span = Some((shared.clone(), HashSet::new()));
                cx.span = Some((shared.clone(), Vec::new()));
            }
            let state = state.clone();
            let name = format!("stage-{}", node.id);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || run_stage(node, rx, role, out, cx, state, boards))
                .expect("spawn a stage thread");
            handles.push(handle);
        }
        for handle in handles {
            let (report, stage) = handle.join().expect("stage threads catch their panics");
            stage_reports.push(report);
            finished_stages.push(stage);
        }
    });
    progress.finish();
    FAREWELL.lock().unwrap_or_else(|p| p.into_inner()).take();

    let mut error = state.error.lock().unwrap_or_else(|p| p.into_inner()).take();
    let mut status = match (&error, INTERRUPTED.load(Ordering::SeqCst)) {
        (Some(_), _) => RunStatus::Failed,
        (None, true) => RunStatus::Interrupted,
        (None, false) => RunStatus::Ok,
    };
    for (report, s) in stage_reports.iter_mut().zip(&stats) {
        report.fill(s);
    }
    let mut report = ledger.report(status, error.as_ref().map(|e| e.to_string()), stage_reports);
    if status == RunStatus::Ok {
        for (stage, id) in finished_stages.iter_mut().zip(stage_reports_ids(&report)) {
            if let Err(e) = stage.after_run(&report) {
                let e = e.in_stage(&id);
                report.error = Some(e.to_string());
                report.status = RunStatus::Failed;
                status = RunStatus::Failed;
                error = Some(e);
                break;
            }
        }
    }
    report.resumed = resumed;
    let Ok(journal) = Arc::try_unwrap(journal) else {
        return Err(Error::msg("the run journal is still in use at the end of the run (a bug in pipe)"));
    };
    match status {
        RunStatus::Ok => journal.finish()?,
        RunStatus::Failed => journal.fail()?,
        // Kept: the next run continues where this one stopped.
        RunStatus::Interrupted => {}
    }
    report.write(&files.report)?;
    match (error, status) {
        (Some(e), _) => Err(e),
        (None, RunStatus::Interrupted) => Err(Error::Interrupted),
        _ => Ok(report),
    }
}

/// What run.json says of every run whatever its end: the pipeline, where it wrote, how long it has
/// run and what it rejected. Shared by the normal end and by [`stop_now`].
#[derive(Clone)]
struct Ledger {
    pipeline: String,
    seed: u64,
    output_dir: std::path::PathBuf,
    /// run.json, or the shard's `run-IIIII-of-NNNNN.json`.
    report_path: std::path::PathBuf,
    shard: Option<Shard>,
    started: Instant,
    rejects: Arc<RejectLog>,
}

impl Ledger {
    fn report(&self, status: RunStatus, error: Option<String>, stages: Vec<StageReport>) -> RunReport {
        let rejected = self.rejects.count();
        RunReport {
            pipeline: self.pipeline.clone(),
            status,
            error,
            seconds: self.started.elapsed().as_secs_f64(),
            seed: self.seed,
            output_dir: self.output_dir.clone(),
            resumed: false,
            rejected,
            rejects_file: (rejected > 0).then(|| self.rejects.path().to_path_buf()),
            shard: self.shard.map(|s| s.index),
            shards: self.shard.map(|s| s.count),
            shard_seconds: None,
            stages,
        }
    }
}

/// For each source that feeds sinks: its row numbering, and the ids every sink downstream of it
/// has committed (left out on a resumed run); and for each sink, its source's numbering. Keyed by
/// stage id.
#[allow(clippy::type_complexity)]
fn source_resumes(
    nodes: &[crate::plan::PlanNode],
    journal: &Journal,
    resumable: bool,
) -> std::collections::HashMap<String, (Option<SourceResume>, Option<Arc<Ordinals>>)> {
    let mut out = std::collections::HashMap::new();
    if !resumable {
        // Sinks keep the order rows arrive in; nothing is left out.
        return out;
    }
    let root = |mut i: usize| {
        while let Some(up) = nodes[i].input {
            i = up;
        }
        i
    };
    for (s, source) in nodes.iter().enumerate().filter(|(_, n)| n.input.is_none()) {
        let sinks: Vec<&str> = (0..nodes.len())
            .filter(|&i| nodes[i].kind == PluginKind::Sink && root(i) == s)
            .map(|i| nodes[i].id.as_str())
            .collect();
        if sinks.is_empty() {
            continue;
        }
        let ordinals = Arc::new(Ordinals::default());
        let mut skip = journal.committed(sinks[0]);
        for sink in &sinks[1..] {
            let other = journal.committed(sink);
            skip.retain(|id| other.contains(id));
        }
        for sink in &sinks {
            out.insert(sink.to_string(), (None, Some(ordinals.clone())));
        }
        out.insert(source.id.clone(), (Some(SourceResume { ordinals, skip }), None));
    }
    out
}

/// Whether a run can continue an interrupted one by leaving out the rows every sink committed:
/// every stage on the way from a source to a sink must make each row's output from that row alone
/// (row-local transforms, retry nodes and sinks), or its output for the rows left would depend on
/// the rows left out (refine.best-of keeps the best of a group).
fn resumable(nodes: &[crate::plan::PlanNode]) -> bool {
    let mut feeds_sink = vec![false; nodes.len()];
    for (i, node) in nodes.iter().enumerate().filter(|(_, n)| n.kind == PluginKind::Sink) {
        feeds_sink[i] = true;
        let mut up = node.input;
        while let Some(u) = up {
            feeds_sink[u] = true;
            up = nodes[u].input;
        }
    }
    nodes.iter().zip(feeds_sink).filter(|(_, f)| *f).all(|(n, _)| {
        n.kind == PluginKind::Sink
            || n.pending.is_none()
                && match &n.stage {
                    Stage::Source(_) | Stage::Retry(_) => true,
                    Stage::Transform(t) => t.row_local(),
                }
    })
}

fn stage_reports_ids(report: &RunReport) -> Vec<String> {
    report.stages.iter().map(|s| s.id.clone()).collect()
}

/// Where a stage stands in a retry loop.
enum Role {
    /// Not in any loop.
    Plain,
    /// In a retried span; the head (the span's first stage) also reads the retries.
    Member { shared: Arc<Loop>, dropped: Sender<Vec<String>>, retries: Option<Receiver<RecordBatch>> },
    /// The retry node itself, with the channel on which its span reports rejected rows, and the
    /// columns a retry is made of (or the stage whose schema gives them, once it is built).
    Retry { shared: Arc<Loop>, dropped: Receiver<Vec<String>>, span_input: Result<SchemaRef, Option<String>> },
}

/// The body of one stage's thread. Failures are recorded in the run state *before* the emitter
/// is dropped, so downstream stages never mistake a failure for a normal end of input.
fn run_stage(
    mut node: crate::plan::PlanNode,
    rx: Option<Receiver<RecordBatch>>,
    role: Role,
    mut out: Emitter,
    mut cx: StageContext,
    state: Arc<RunState>,
    boards: Boards,
) -> (StageReport, Stage) {
    let started = Instant::now();
    let stats = cx.stats.clone();
    let mut busy = Duration::ZERO;
    let id = node.id.clone();
    let member = matches!(role, Role::Member { .. });
    let result = crate::panics::catch(|| -> Result<()> {
        if let Some(pending) = node.pending.take() {
            // Built now that the artifacts it names exist and its input's schema is known.
            let mut folders = std::collections::HashMap::new();
            for producer in pending.producers() {
                let Some(dir) = boards.wait(&boards.artifacts, producer, &state) else {
                    return Err(Error::Disconnected);
                };
                folders.insert(producer.clone(), dir);
            }
            let input = match &boards.input {
                Some(up) => boards.wait(&boards.schemas, up, &state).ok_or(Error::Disconnected)?,
                None => Arc::new(arrow::datatypes::Schema::empty()),
            };
            let (stage, warnings) = pending.build(&input, &folders)?;
            node.input_schema = input;
            for w in warnings {
                tracing::warn!("stage \"{}\": {w}", node.id);
            }
            node.schema = stage.schema();
            node.stage = stage;
            out.schema = node.schema.clone();
            boards.schemas.publish(&node.id, node.schema.clone());
        }
        match (&mut node.stage, &rx, role) {
            (Stage::Source(source), _, _) => {
                let t = Instant::now();
                let r = source.run(&mut out, &mut cx);
                busy += t.elapsed();
                match r {
                    Err(e) if matches!(e.root(), Error::Interrupted) => {}
                    r => r?,
                }
            }
            (Stage::Transform(stage), Some(rx), Role::Plain) => {
                for batch in rx.iter() {
                    if state.failed() {
                        return Err(Error::Disconnected);
                    }
                    stats.rows_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    let t = Instant::now();
                    let r = stage.process(batch, &mut out, &mut cx);
                    busy += t.elapsed();
                    r?;
                }
            }
            (Stage::Transform(stage), Some(rx), Role::Member { shared, dropped, retries }) => {
                let mut input = Some(rx.clone());
                let mut retries = retries;
                loop {
                    if state.failed() {
                        return Err(Error::Disconnected);
                    }
                    let Some(batch) = next_span_batch(&mut input, &mut retries, &shared)? else { break };
                    let fresh =
                        crate::columns::ids(&batch)?.iter().filter(|i| !shared.retrying(i.unwrap_or_default())).count();
                    stats.rows_in.fetch_add(fresh as u64, Ordering::Relaxed);
                    let given = id_set(&batch)?;
                    let t = Instant::now();
                    let r = stage.process(batch, &mut out, &mut cx);
                    busy += t.elapsed();
                    r?;
                    let lost = check_row_wise(given, &mut out, &mut cx)?;
                    if !lost.is_empty() {
                        dropped.send(lost).map_err(|_| Error::Disconnected)?;
                    }
                }
            }
            (Stage::Retry(retry), Some(rx), Role::Retry { shared, dropped, span_input }) => {
                let guard = CloseOnDrop(shared.clone());
                let span_input = match span_input {
                    Ok(schema) => schema,
                    // The span was built during the run: its columns are known now.
                    Err(from) => {
                        let schema = match &from {
                            Some(up) => boards.wait(&boards.schemas, up, &state).ok_or(Error::Disconnected)?,
                            None => Arc::new(arrow::datatypes::Schema::empty()),
                        };
                        if let Some(field) = crate::columns::first_missing(&node.input_schema, &schema) {
                            return Err(Error::msg(format!(
                                "column `{}`, which the retried span's first stage reads, does not reach this stage",
                                field.name()
                            )));
                        }
                        schema
                    }
                };
                let mut run = RetryRun::new(retry, span_input, shared);
                let mut input = Some(rx.clone());
                let mut dropped = Some(dropped);
                while input.is_some() || dropped.is_some() {
                    if state.failed() {
                        return Err(Error::Disconnected);
                    }
                    let never = crossbeam_channel::never();
                    crossbeam_channel::select! {
                        recv(input.as_ref().unwrap_or(&never)) -> batch => match batch {
                            Ok(batch) => {
                                let t = Instant::now();
                                let r = run.arrived(batch, &mut out);
                                busy += t.elapsed();
                                stats.rows_in.fetch_add(r?, Ordering::Relaxed);
                            }
                            Err(_) => input = None,
                        },
                        recv(dropped.as_ref().map_or(&crossbeam_channel::never(), |d| d)) -> ids => match ids {
                            Ok(ids) => run.dropped(ids, &mut out)?,
                            Err(_) => dropped = None,
                        },
                    }
                }
                run.finish(&mut out)?;
                drop(guard);
                return Ok(());
            }
            (Stage::Transform(_) | Stage::Retry(_), _, _) => {
                return Err(Error::msg(format!("stage `{id}` was planned without its input")));
            }
        }
        if state.failed() {
            return Err(Error::Disconnected);
        }
        if let Stage::Transform(stage) = &mut node.stage {
            let t = Instant::now();
            let r = stage.finish(&mut out, &mut cx);
            busy += t.elapsed();
            r?;
            if let (true, Some((_, seen))) = (member, &out.span)
                && let Some(row) = seen.iter().next()
            {
                return Err(Error::msg(format!(
                    "re-run by a retry node, it emitted row `{row}` at its end: only row-wise stages (one row \
                     out per row in, at once) can be re-run"
                )));
            }
        }
        Ok(())
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) if matches!(e.root(), Error::Disconnected) => {}
        // A stage that stopped for Ctrl-C (a training killed) ends the run as interrupted.
        Ok(Err(e)) if matches!(e.root(), Error::Interrupted) && INTERRUPTED.load(Ordering::SeqCst) => {}
        Ok(Err(e)) => state.fail(e.in_stage(&node.id)),
        // A bug, not bad input (per-item faults are caught nearer to the item): the run fails,
        // naming the stage and the cause, and the other stages stop as for any failure.
        Err(what) => state.fail(Error::msg(format!(
            "internal error in stage `{}`: {what} (a bug in pipe or in this stage's plugin: please report it)",
            node.id
        ))),
    }
    // A sink's commits held for a group commit are written however the stage ended, so a failed
    // or interrupted run keeps them for its resume.
    if let Err(e) = cx.log.flush() {
        if state.failed() {
            tracing::debug!("stage `{}`: its last commits were not written: {e}", node.id);
        } else {
            state.fail(e.in_stage(&node.id));
        }
    }
    let busy = busy.saturating_sub(out.blocked);
    stats.busy_ns.store(busy.as_nanos() as u64, Ordering::Relaxed);
    stats.done.store(true, Ordering::SeqCst);
    // Whatever this stage did not publish, nobody will: stages waiting on it stop.
    boards.artifacts.close(&node.id);
    boards.schemas.close(&node.id);
    drop(out);
    let report = StageReport::new(&node.id, &node.uses, started.elapsed(), node.stage.report());
    (report, node.stage)
}

/// What a stage built during the run waits for: the artifacts it names, its input's schema.
struct Boards {
    artifacts: Arc<Board<std::path::PathBuf>>,
    schemas: Arc<Board<SchemaRef>>,
    /// The id of the stage feeding this one.
    input: Option<String>,
}

impl Boards {
    /// Waits for `key` on `board`, giving up when the run fails.
    fn wait<T: Clone>(&self, board: &Board<T>, key: &str, state: &RunState) -> Option<T> {
        board.wait_until(key, Duration::from_millis(100), || state.failed())
    }
}

/// Closes a loop's retry edge when its retry node's thread ends, however it ends, so the head
/// never waits for retries that cannot come.
struct CloseOnDrop(Arc<Loop>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The next batch of a span stage: a retry first (the head), else its input; `None` at the end.
/// The head's input ending tells the loop, which closes the retry edge once no row is left in
/// the span.
fn next_span_batch(
    input: &mut Option<Receiver<RecordBatch>>,
    retries: &mut Option<Receiver<RecordBatch>>,
    shared: &Loop,
) -> Result<Option<RecordBatch>> {
    loop {
        if let Some(r) = retries.as_ref() {
            match r.try_recv() {
                Ok(batch) => return Ok(Some(batch)),
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                Err(crossbeam_channel::TryRecvError::Disconnected) => *retries = None,
            }
        }
        let never = crossbeam_channel::never();
        match (input.as_ref(), retries.as_ref()) {
            (None, None) => return Ok(None),
            (Some(i), None) => match i.recv() {
                Ok(batch) => {
                    check_fresh(&batch, shared, retries.is_some())?;
                    return Ok(Some(batch));
                }
                Err(_) => *input = None,
            },
            (i, Some(r)) => crossbeam_channel::select! {
                recv(i.unwrap_or(&never)) -> batch => match batch {
                    Ok(batch) => {
                        check_fresh(&batch, shared, true)?;
                        return Ok(Some(batch));
                    }
                    Err(_) => {
                        *input = None;
                        shared.upstream_done();
                    }
                },
                recv(r) -> batch => match batch {
                    Ok(batch) => return Ok(Some(batch)),
                    Err(_) => *retries = None,
                },
            },
        }
    }
}

/// A row entering the head of a loop for the first time: counted as in the loop, and refused if
/// its id is one being retried (ids must be unique for a retry to find its row).
fn check_fresh(batch: &RecordBatch, shared: &Loop, head: bool) -> Result<()> {
    if !head {
        return Ok(());
    }
    for id in crate::columns::ids(batch)?.iter() {
        let id = id.unwrap_or_default();
        if shared.retrying(id) {
            return Err(Error::msg(format!(
                "row id `{id}` comes twice while that row is being retried: refine.iterate needs unique ids"
            )));
        }
    }
    shared.entered(batch.num_rows() as u64);
    Ok(())
}

/// After a span stage handled a batch: every row it was given must have left with its id or been
/// rejected. Returns the rejected ones (the retry node settles them); anything else is an error.
fn check_row_wise(mut given: HashSet<String>, out: &mut Emitter, cx: &mut StageContext) -> Result<Vec<String>> {
    let (Some((_, seen)), Some((_, rejected))) = (&mut out.span, &mut cx.span) else { return Ok(Vec::new()) };
    for id in seen.drain() {
        if !given.remove(&id) {
            return Err(Error::msg(format!(
                "re-run by a retry node, it emitted row `{id}`, which it was not given in that batch: only \
                 row-wise stages (one row out per row in, at once) can be re-run"
            )));
        }
    }
    let rejected: Vec<String> = std::mem::take(rejected);
    for id in &rejected {
        given.remove(id);
    }
    if let Some(id) = given.iter().next() {
        return Err(Error::msg(format!(
            "re-run by a retry node, it did not pass on row `{id}`: only row-wise stages (one row out per \
             row in, at once) can be re-run"
        )));
    }
    Ok(rejected)
}
