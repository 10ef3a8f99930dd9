//! Re-running a span of stages for the rows that fail a condition (`refine.iterate`), as a node of
//! the plan. Every stage of the span exists once: a row that fails goes back to the span's first
//! stage, through the same instances, with its next round's random stream (round k of stage S
//! draws from the stream (seed, S, row id, k)), at most `max_rounds` attempts in all. The retry
//! node keeps each row's best (or last) attempt and lets rows leave in the order they first
//! arrived, one batch per arriving batch, so its output does not depend on how long a retry took.
//!
//! The loop has one edge that never blocks (retries back to the span's head, which reads them
//! before new input), so bounded channels cannot deadlock; the head ends when its input has ended
//! and no row is left in the span. The span's stages must be row-wise ([`Transform::row_wise`]):
//! the runner checks, batch by batch, that every row a span stage is given leaves it with its id
//! or is rejected, and fails the run naming the stage and the row otherwise.
//!
//! [`Transform::row_wise`]: crate::plugin::Transform::row_wise

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, Int32Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::Sender;

use crate::error::{Error, Result};
use crate::runner::Emitter;

/// Which attempt a row that never passes keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The attempt with the highest score (the earliest on ties).
    Best,
    /// The last attempt.
    Last,
}

/// Judges attempts: whether each row of a batch passes, and its score.
pub trait Judge: Send {
    /// One `(passed, score)` per row of `batch`; the score is NaN where there is none.
    fn judge(&self, batch: &RecordBatch) -> Result<Vec<(bool, f64)>>;
}

/// A retry node: what the planner wires into a loop over `stages`.
pub struct Retry {
    /// Ids of the contiguous upstream stages to re-run, in order, ending with this node's input.
    pub stages: Vec<String>,
    /// Attempts in all, the first included.
    pub max_rounds: u32,
    /// Which attempt a row that never passes keeps.
    pub keep: Keep,
    /// The schema it emits: its input's, with an Int32 `attempts` column last.
    pub schema: SchemaRef,
    /// Decides which rows pass.
    pub judge: Box<dyn Judge>,
    counts: Counts,
}

/// What run.json reports.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    rows: u64,
    first_try: u64,
    after_retries: u64,
    never: u64,
    reruns: u64,
}

impl Retry {
    /// A retry node over `stages`.
    pub fn new(stages: Vec<String>, max_rounds: u32, keep: Keep, schema: SchemaRef, judge: Box<dyn Judge>) -> Self {
        Self { stages, max_rounds, keep, schema, judge, counts: Counts::default() }
    }

    /// Its figures for run.json.
    pub fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.counts;
        let share = |k: u64| if c.rows == 0 { 0.0 } else { k as f64 / c.rows as f64 };
        let mut m = serde_json::Map::new();
        m.insert("passed_first_try".into(), c.first_try.into());
        m.insert("passed_after_retries".into(), c.after_retries.into());
        m.insert("never_passed".into(), c.never.into());
        m.insert("pass_rate_first_try".into(), share(c.first_try).into());
        m.insert("pass_rate_final".into(), share(c.first_try + c.after_retries).into());
        m.insert("rows_rerun".into(), c.reruns.into());
        m
    }
}

/// State shared by a loop's head, its span's stages and its retry node.
#[derive(Debug, Default)]
pub(crate) struct Loop {
    /// The round of every row being retried (absent: round 0).
    rounds: Mutex<HashMap<String, u32>>,
    gate: Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// Rows that entered the span and are not yet back at the retry node (or dropped).
    outstanding: u64,
    /// The head's own input has ended.
    upstream_done: bool,
    /// Where retries go; dropped (closing the head's retry input) when nothing is left to retry.
    retry: Option<Sender<RecordBatch>>,
}

impl Loop {
    pub(crate) fn new(retry: Sender<RecordBatch>) -> Self {
        Self { rounds: Mutex::default(), gate: Mutex::new(Gate { retry: Some(retry), ..Gate::default() }) }
    }

    /// The round of `row`: 0 unless it is being retried.
    pub(crate) fn round_of(&self, row: &str) -> u32 {
        let rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        rounds.get(row).copied().unwrap_or(0)
    }

    /// Whether `row` is being retried.
    pub(crate) fn retrying(&self, row: &str) -> bool {
        let rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        rounds.contains_key(row)
    }

    /// The head took `rows` new rows from its input.
    pub(crate) fn entered(&self, rows: u64) {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).outstanding += rows;
    }

    /// The head's input has ended.
    pub(crate) fn upstream_done(&self) {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        gate.upstream_done = true;
        gate.close_if_idle();
    }

    /// `back` rows came back to the retry node (or were dropped); `retry` goes round again, and
    /// the rows in `done` are settled for good.
    fn settle(&self, back: u64, retry: Option<RetryBatch>, done: &[String]) -> Result<()> {
        {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            for id in done {
                rounds.remove(id);
            }
            if let Some((_, ids)) = &retry {
                rounds.extend(ids.iter().cloned());
            }
        }
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((batch, _)) = retry {
            gate.outstanding += batch.num_rows() as u64;
            // The retry edge is unbounded, so this never waits on the span.
            if let Some(tx) = &gate.retry {
                tx.send(batch).map_err(|_| Error::Disconnected)?;
            } else {
                return Err(Error::Disconnected);
            }
        }
        gate.outstanding = gate.outstanding.saturating_sub(back);
        gate.close_if_idle();
        Ok(())
    }

    /// Ends the loop whatever is left (the retry node stopped).
    pub(crate) fn close(&self) {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).retry = None;
    }
}

impl Gate {
    fn close_if_idle(&mut self) {
        if self.upstream_done && self.outstanding == 0 {
            self.retry = None;
        }
    }
}

/// One batch as it first arrived, waiting for its retried rows.
struct Group {
    /// The batches its rows' kept attempts come from; the first is the batch itself.
    batches: Vec<RecordBatch>,
    /// Each row's kept attempt: (index into `batches`, row).
    kept: Vec<(usize, usize)>,
    /// Each row's best score so far.
    best: Vec<f64>,
    /// Each row's attempt count.
    attempts: Vec<i32>,
    /// Rows still being retried.
    open: usize,
}

/// Rows sent round again, with each row's id and the round it is on.
type RetryBatch = (RecordBatch, Vec<(String, u32)>);

/// A row being retried: its group (by sequence number) and place in it.
#[derive(Clone, Copy)]
struct Pending {
    group: u64,
    row: usize,
}

/// The retry node's work on its thread: judging arrivals, sending failures back, emitting groups
/// in arrival order.
pub(crate) struct RetryRun<'a> {
    retry: &'a mut Retry,
    /// The columns the span's head reads, taken from a row's first attempt for every retry.
    span_input: SchemaRef,
    shared: Arc<Loop>,
    groups: VecDeque<Group>,
    first_group: u64,
    pending: HashMap<String, Pending>,
}

impl<'a> RetryRun<'a> {
    pub(crate) fn new(retry: &'a mut Retry, span_input: SchemaRef, shared: Arc<Loop>) -> Self {
        Self { retry, span_input, shared, groups: VecDeque::new(), first_group: 0, pending: HashMap::new() }
    }

    /// Handles a batch that came out of the span; returns how many of its rows arrived for the
    /// first time (the rest are retries).
    pub(crate) fn arrived(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<u64> {
        let n = batch.num_rows();
        let verdicts = self.retry.judge.judge(&batch)?;
        let ids = crate::columns::ids(&batch)?.clone();
        let max = self.retry.max_rounds as i32;
        let keep_last = self.retry.keep == Keep::Last;
        // Rows seen for the first time start a new group: this batch, in its order.
        let fresh: Vec<usize> = (0..n).filter(|&r| !self.pending.contains_key(ids.value(r))).collect();
        let mut new_group = None;
        if !fresh.is_empty() {
            let group = if fresh.len() == n {
                batch.clone()
            } else {
                let take = arrow::array::UInt32Array::from(fresh.iter().map(|&r| r as u32).collect::<Vec<_>>());
                arrow::compute::take_record_batch(&batch, &take)?
            };
            let len = group.num_rows();
            self.groups.push_back(Group {
                batches: vec![group],
                kept: (0..len).map(|r| (0, r)).collect(),
                best: fresh.iter().map(|&r| verdicts[r].1).collect(),
                attempts: vec![1; len],
                open: 0,
            });
            new_group = Some(self.first_group + self.groups.len() as u64 - 1);
        }
        let mut retry_rows: Vec<(u64, usize)> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        let mut slots: HashMap<u64, usize> = HashMap::new();
        for (r, &(passed, score)) in verdicts.iter().enumerate() {
            let id = ids.value(r);
            match self.pending.get(id).copied() {
                None => {
                    let g = new_group.expect("a fresh row makes a group");
                    let at = fresh.binary_search(&r).expect("a fresh row");
                    self.retry.counts.rows += 1;
                    if passed {
                        self.retry.counts.first_try += 1;
                    } else if max > 1 {
                        self.pending.insert(id.to_string(), Pending { group: g, row: at });
                        self.group_mut(g).open += 1;
                        retry_rows.push((g, at));
                    } else {
                        self.retry.counts.never += 1;
                    }
                }
                Some(p) => {
                    let slot = match slots.get(&p.group) {
                        Some(&s) => s,
                        None => {
                            let group = self.group_mut(p.group);
                            group.batches.push(batch.clone());
                            let s = group.batches.len() - 1;
                            slots.insert(p.group, s);
                            s
                        }
                    };
                    let group = self.group_mut(p.group);
                    group.attempts[p.row] += 1;
                    let best = group.best[p.row];
                    let better = score > best || best.is_nan() && !score.is_nan();
                    if passed || keep_last || better {
                        group.kept[p.row] = (slot, r);
                        group.best[p.row] = score;
                    }
                    let attempts = group.attempts[p.row];
                    if passed || attempts >= max {
                        group.open -= 1;
                        self.pending.remove(id);
                        done.push(id.to_string());
                        if passed {
                            self.retry.counts.after_retries += 1;
                        } else {
                            self.retry.counts.never += 1;
                        }
                    } else {
                        retry_rows.push((p.group, p.row));
                    }
                }
            }
        }
        let retry = self.retry_batch(&retry_rows)?;
        self.shared.settle(n as u64, retry, &done)?;
        self.emit_ready(out)?;
        Ok(fresh.len() as u64)
    }

    /// Rows a span stage rejected: a retried one keeps its earlier attempt.
    pub(crate) fn dropped(&mut self, ids: Vec<String>, out: &mut Emitter) -> Result<()> {
        let mut done = Vec::new();
        for id in &ids {
            if let Some(p) = self.pending.remove(id) {
                self.group_mut(p.group).open -= 1;
                done.push(id.clone());
            }
        }
        self.shared.settle(ids.len() as u64, None, &done)?;
        self.emit_ready(out)
    }

    /// Emits what is left (every row should be settled by now).
    pub(crate) fn finish(&mut self, out: &mut Emitter) -> Result<()> {
        if !self.pending.is_empty() {
            let some = self.pending.keys().next().cloned().unwrap_or_default();
            return Err(Error::msg(format!(
                "{} row(s) never came back from the retried span (row `{some}`)",
                self.pending.len()
            )));
        }
        self.emit_ready(out)
    }

    fn group_mut(&mut self, seq: u64) -> &mut Group {
        &mut self.groups[(seq - self.first_group) as usize]
    }

    /// The retry batch for `rows` (group, row), from each row's first attempt, and each row's
    /// next round.
    fn retry_batch(&mut self, rows: &[(u64, usize)]) -> Result<Option<RetryBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let mut sources: Vec<&RecordBatch> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut picks = Vec::with_capacity(rows.len());
        let mut rounds = Vec::with_capacity(rows.len());
        for &(g, row) in rows {
            let group = &self.groups[(g - self.first_group) as usize];
            let s = *index.entry(g).or_insert_with(|| {
                sources.push(&group.batches[0]);
                sources.len() - 1
            });
            picks.push((s, row));
            let id = crate::columns::ids(&group.batches[0])?.value(row).to_string();
            // The attempt about to be made is number attempts + 1, drawn from round `attempts`.
            rounds.push((id, group.attempts[row] as u32));
        }
        let columns = self
            .span_input
            .fields()
            .iter()
            .map(|f| {
                let arrays = sources
                    .iter()
                    .map(|b| crate::columns::column(b, f.name()).map(|a| a.as_ref()))
                    .collect::<Result<Vec<&dyn Array>>>()?;
                Ok(arrow::compute::interleave(&arrays, &picks)?)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(self.span_input.clone(), columns)?;
        self.retry.counts.reruns += batch.num_rows() as u64;
        Ok(Some((batch, rounds)))
    }

    /// Emits the oldest groups whose rows are all settled, each as one batch in arrival order.
    fn emit_ready(&mut self, out: &mut Emitter) -> Result<()> {
        while self.groups.front().is_some_and(|g| g.open == 0) {
            let group = self.groups.pop_front().expect("a front group");
            self.first_group += 1;
            let schema = self.retry.schema.clone();
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
            for f in schema.fields().iter().filter(|f| f.name() != "attempts") {
                let arrays = group
                    .batches
                    .iter()
                    .map(|b| crate::columns::column(b, f.name()).map(|a| a.as_ref()))
                    .collect::<Result<Vec<&dyn Array>>>()?;
                columns.push(match arrays.as_slice() {
                    [only] => only.slice(0, only.len()),
                    _ => arrow::compute::interleave(&arrays, &group.kept)?,
                });
            }
            columns.push(Arc::new(Int32Array::from(group.attempts)));
            out.emit(RecordBatch::try_new(schema, columns)?)?;
        }
        Ok(())
    }
}

/// The ids of a batch a span stage was given, to check what it emitted against.
pub(crate) fn id_set(batch: &RecordBatch) -> Result<HashSet<String>> {
    Ok(crate::columns::ids(batch)?.iter().map(|id| id.unwrap_or_default().to_string()).collect())
}
