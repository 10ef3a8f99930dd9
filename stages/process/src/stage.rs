//! The stage's policy over its plugin processes: which input goes to the plugin in which message
//! (joined up to `batch_rows`, up to [`WINDOW`] in flight; or, when a retry node re-runs the stage
//! or the per-row cache answers for it, each batch at once and answered before the next), what an
//! answer does (rows emitted, rows rejected, and for a plugin that promised to be row-wise, a
//! check that it kept that promise), and what a failure does: stop the run (on_error = "fail") or
//! ("skip") hand what the failed process had to a fresh one, one row at a time, so only the rows
//! the plugin fails on are rejected. One process's conversation is in conversation.rs.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipeline::columns::ids;
use pipeline::{Emitter, Error, OnError, Result, ResultExt, StageContext, Transform};
use serde_json::{Map, Value, json};

use crate::child::PluginProcess;
use crate::conversation::{Answer, Conversation, Declaration, Failure, Program, fields, with_tail};
use crate::declared::KeptDeclaration;

/// Batches sent to the plugin and not yet answered, at most: one being handled, one waiting in
/// its stdin, so the plugin never idles while pipe decodes an answer.
pub const WINDOW: usize = 2;

/// The most bytes of input joined into one message (unless a single input batch is larger).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The most bytes of input queued while the plugin starts, before the stage waits for it.
const MAX_QUEUED_WHILE_STARTING: usize = 64 << 20;

/// Failures in a row, with no answer in between, after which the plugin itself is taken to be
/// broken (rather than some rows) and the run stops even with on_error = "skip".
const MAX_FAILURES_IN_A_ROW: u32 = 5;

pub(crate) struct ProcessStage {
    program: Arc<Program>,
    batch_rows: usize,
    /// Every batch is sent at once and answered before `process` returns, so nothing is held back
    /// ([`Transform::row_wise`]): when a retry node re-runs the stage, and when the plugin
    /// promises to be row-wise and deterministic, so that the per-row cache can answer for it.
    at_once: bool,
    input: SchemaRef,
    /// What the first process declared (schema and promises); every fresh one must declare it too.
    declared: Declaration,
    /// Input batches waiting to be joined into the next message.
    pending: Vec<RecordBatch>,
    plugin: Option<Conversation>,
    /// Set while the first process has not answered describe (the stage was built from its
    /// kept declaration): the answer's deadline, and where the declaration is kept.
    describing: Option<(Instant, KeptDeclaration)>,
    /// Bytes of input queued while the plugin starts.
    queued_while_starting: usize,
    /// Messages not yet answered, in order; the first `sent` were sent to the current process.
    queue: VecDeque<InFlight>,
    sent: usize,
    /// The seq of the next message sent: also how many were sent.
    next_seq: u64,
    restarts: u64,
    failures_in_a_row: u32,
}

struct InFlight {
    seq: u64,
    batch: RecordBatch,
    /// When its timeout started: when it was sent, or when the message before it was answered.
    since: Instant,
}

impl InFlight {
    /// A message not yet sent.
    fn new(batch: RecordBatch) -> Self {
        Self { seq: 0, batch, since: Instant::now() }
    }
}

impl ProcessStage {
    /// Starts the plugin (or takes up the process `started` for it) and runs its describe step
    /// against `input`. Under `pipe run`, when the declaration it made last time for the same
    /// command, params and input is kept under `cache_dir`, the stage is built from that at once
    /// and the plugin's own answer is checked at first use, so that the plugin's start-up overlaps
    /// with building the other stages and with the rows the stages before it make meanwhile. Under
    /// `pipe validate` (`validate_only`) the plugin always describes itself, and is shut down right
    /// after; `retried` makes the stage row-wise (and waits for the answer too). A plugin that
    /// promises to be row-wise is row-local ([`Transform::row_local`]: a killed run resumes), and
    /// one that also promises to be deterministic runs row-wise, so the per-row cache wraps it.
    pub(crate) fn build(
        program: Program,
        started: Option<PluginProcess>,
        batch_rows: usize,
        input: &SchemaRef,
        cache_dir: &std::path::Path,
        validate_only: bool,
        retried: bool,
    ) -> Result<Self> {
        let program = Arc::new(program);
        let kept = KeptDeclaration::new(cache_dir, &program, input);
        let expected = kept.as_ref().filter(|_| !validate_only && !retried).and_then(KeptDeclaration::load);
        let (plugin, declared, describing) = match (expected, kept) {
            (Some(expected), Some(kept)) => {
                tracing::debug!(stage = %program.spawn.stage, kept = %kept.path().display(), "built from the kept declaration; the plugin's own is checked at first use");
                let (plugin, deadline) = Conversation::begin(&program, input, started, expected.clone())?;
                (Some(plugin), expected, Some((deadline, kept)))
            }
            (_, kept) => {
                let plugin = Conversation::start(&program, input, started)?;
                let declared = plugin.declared().clone();
                if let Some(k) = &kept {
                    k.store(&declared);
                }
                let plugin = if validate_only {
                    plugin.shut_down()?;
                    None
                } else {
                    Some(plugin)
                };
                (plugin, declared, None)
            }
        };
        let promised = declared.promises.row_wise && declared.promises.deterministic && !validate_only;
        Ok(Self {
            program,
            batch_rows,
            at_once: retried || promised,
            input: input.clone(),
            declared,
            pending: Vec::new(),
            plugin,
            describing,
            queued_while_starting: 0,
            queue: VecDeque::new(),
            sent: 0,
            next_seq: 0,
            restarts: 0,
            failures_in_a_row: 0,
        })
    }

    fn command(&self) -> String {
        self.program.command()
    }

    /// Queues the pending input as one message, sends what may be sent, then waits while
    /// [`WINDOW`] messages or more are unanswered.
    fn send_pending(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let batches = std::mem::take(&mut self.pending);
        let batch = match batches.len() {
            1 => batches.into_iter().next().expect("one"),
            _ => arrow::compute::concat_batches(&batches[0].schema(), &batches)?,
        };
        if self.describing.is_some() {
            self.queued_while_starting += batch.get_array_memory_size();
        }
        self.queue.push_back(InFlight::new(batch));
        self.pump()?;
        // Rows retried one at a time after a failure wait here too, so the queue stays short.
        while self.queue.len() >= WINDOW {
            if self.still_starting() {
                return Ok(());
            }
            self.answer_one(out, cx)?;
            self.pump()?;
        }
        Ok(())
    }

    /// Whether the plugin has not answered describe yet and more input may wait for it: the
    /// stages before it go on making rows meanwhile, up to [`MAX_QUEUED_WHILE_STARTING`].
    fn still_starting(&self) -> bool {
        self.describing.is_some()
            && self.queued_while_starting < MAX_QUEUED_WHILE_STARTING
            && !self.plugin.as_ref().is_some_and(Conversation::has_answer)
    }

    /// Reads the plugin's answer to describe, if the stage was built before it came: it must
    /// declare what the stages after it were built with.
    fn confirm(&mut self) -> Result<()> {
        let Some((deadline, kept)) = self.describing.take() else { return Ok(()) };
        self.queued_while_starting = 0;
        let plugin = self.plugin.as_mut().expect("running while describing");
        let declared = plugin.await_schema(deadline)?;
        if let Err(mismatch) = self.declared.check_same(&declared) {
            kept.store(&declared);
            self.plugin = None;
            return Err(Error::msg(format!(
                "plugin `{}` declares ({}; promises {}), not ({}; promises {}) as when it last described itself, \
                 which the stages after it were built from ({mismatch}); the kept declaration ({}) is updated: run again",
                self.command(),
                fields(&declared.schema),
                declared.promises,
                fields(&self.declared.schema),
                self.declared.promises,
                kept.path().display()
            )));
        }
        // The messages sent meanwhile: their timeouts start now.
        let now = Instant::now();
        for f in self.queue.iter_mut().take(self.sent) {
            f.since = now;
        }
        Ok(())
    }

    /// Sends the pending input and waits until every message is answered: at the end of the
    /// input, and after each batch of a row-wise stage.
    fn drain(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        if !self.pending.is_empty() {
            self.send_pending(out, cx)?;
        }
        while !self.queue.is_empty() {
            self.pump()?;
            self.answer_one(out, cx)?;
        }
        Ok(())
    }

    /// Sends queued messages to the plugin (starting a fresh one if there is none) until
    /// [`WINDOW`] are in flight.
    fn pump(&mut self) -> Result<()> {
        if self.plugin.is_none() {
            self.restart()?;
        }
        while self.sent < self.queue.len().min(WINDOW) {
            let seq = self.next_seq;
            self.next_seq += 1;
            let f = &mut self.queue[self.sent];
            f.seq = seq;
            f.since = Instant::now();
            self.plugin.as_ref().expect("running").send(seq, &f.batch)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// Waits for the answer to the oldest batch in flight and handles it.
    fn answer_one(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.confirm()?;
        let front = self.queue.front().expect("a batch in flight");
        let deadline = front.since + self.program.timeout;
        let answer = self.plugin.as_ref().expect("running").receive(front.seq, &front.batch, deadline)?;
        match answer {
            Answer::Broken(failure) => self.fail(failure, cx),
            Answer::Result { rows, errors } => {
                if self.declared.promises.row_wise {
                    self.check_row_wise(front, &rows, &errors)?;
                }
                self.answered();
                for (id, reason) in errors {
                    cx.reject(&id, reason)?;
                }
                for batch in rows {
                    out.emit(batch)?;
                }
                Ok(())
            }
            Answer::Failed(reason) => {
                let f = self.answered();
                if f.batch.num_rows() == 1 {
                    return cx.reject(&only_id(&f.batch)?, reason);
                }
                let rows = row_span(&f.batch)?;
                if cx.on_error() == OnError::Fail {
                    return Err(Error::msg(format!(
                        "plugin `{}` failed on batch {} ({rows}): {reason}",
                        self.command(),
                        f.seq
                    )));
                }
                // The same process tries the rows one at a time, so only those it fails on are
                // rejected; they follow the messages it already has.
                self.program.log(&format!(
                    "plugin failed on batch {} ({rows}): {reason}; retrying its rows one at a time",
                    f.seq
                ));
                self.retry_row_by_row(&f.batch);
                Ok(())
            }
        }
    }

    /// For a plugin that promised to be row-wise: its answer to `sent` must hold every row of it
    /// that it did not report as failed, once, with the same id, in order, and nothing else.
    fn check_row_wise(&self, sent: &InFlight, rows: &[RecordBatch], errors: &[(String, String)]) -> Result<()> {
        let given = ids(&sent.batch)?;
        let failed: HashSet<&str> = errors.iter().map(|(id, _)| id.as_str()).collect();
        let mut due = given.iter().map(|id| id.unwrap_or("<null>")).filter(|id| !failed.contains(id));
        let broken = |what: String| -> Result<()> {
            Err(Error::msg(format!(
                "plugin `{}` promises to be row-wise (one row out per row in, same id, in order) but its answer \
                 to batch {} ({}) {what}",
                self.command(),
                sent.seq,
                row_span(&sent.batch)?
            )))
        };
        for out in rows {
            for got in ids(out)?.iter() {
                let got = got.unwrap_or("<null>");
                let want = due.next();
                if want == Some(got) {
                    continue;
                }
                let sent_ids: Vec<&str> = rows
                    .iter()
                    .flat_map(|b| ids(b).into_iter().flat_map(|a| a.iter().map(|i| i.unwrap_or("<null>"))))
                    .collect();
                let what = match want {
                    _ if !given.iter().any(|id| id.unwrap_or("<null>") == got) => {
                        format!("adds row `{got}`, not in the batch")
                    }
                    None => format!("has row `{got}` twice"),
                    Some(want) if !sent_ids.contains(&want) => {
                        format!("leaves out row `{want}` (a row that fails must be reported in `errors`)")
                    }
                    Some(want) => format!("has row `{got}` where row `{want}` was due (out of order, or twice)"),
                };
                return broken(what);
            }
        }
        match due.next() {
            Some(want) => broken(format!("leaves out row `{want}` (a row that fails must be reported in `errors`)")),
            None => Ok(()),
        }
    }

    /// Takes the answered message off the queue; the next one's timeout starts now.
    fn answered(&mut self) -> InFlight {
        let f = self.queue.pop_front().expect("an answered message");
        self.sent -= 1;
        self.failures_in_a_row = 0;
        let now = Instant::now();
        if let Some(next) = self.queue.front_mut().filter(|_| self.sent > 0) {
            next.since = next.since.max(now);
        }
        f
    }

    /// Handles a failed plugin: kills and reaps it, then stops the run (on_error = "fail"), or
    /// ("skip") hands what it had to a fresh process: a failed message of several rows is sent
    /// again one row at a time, so that only the rows the plugin fails on are rejected.
    fn fail(&mut self, failure: Failure, cx: &mut StageContext) -> Result<()> {
        let (what, tail) = self.plugin.take().expect("running").kill(failure);
        let f = self.queue.pop_front().expect("a batch in flight");
        self.sent = 0;
        let rows = row_span(&f.batch)?;
        let message = format!("plugin `{}` {what} while handling batch {} ({rows})", self.command(), f.seq);
        if cx.on_error() == OnError::Fail {
            return Err(Error::msg(with_tail(message, &tail)));
        }
        self.failures_in_a_row += 1;
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
            return Err(Error::msg(with_tail(
                format!(
                    "{message}: {MAX_FAILURES_IN_A_ROW} failures in a row without an answer, so the plugin itself looks broken; stopping"
                ),
                &tail,
            )));
        }
        if f.batch.num_rows() == 1 {
            self.program
                .log(&format!("{message}; the row goes to rejects.jsonl and a fresh plugin process takes over"));
            cx.reject(&only_id(&f.batch)?, format!("plugin {what} on this row"))?;
        } else {
            self.program
                .log(&format!("{message}; a fresh plugin process takes over and retries those rows one at a time"));
            self.retry_row_by_row(&f.batch);
        }
        Ok(())
    }

    /// Queues the rows of a failed message one per message, right after the messages the current
    /// process already has (none, after a failure), so only the rows the plugin fails on alone
    /// are rejected.
    fn retry_row_by_row(&mut self, batch: &RecordBatch) {
        for i in (0..batch.num_rows()).rev() {
            self.queue.insert(self.sent, InFlight::new(batch.slice(i, 1)));
        }
    }

    /// A fresh process for the messages not yet answered; it must declare the same schema.
    fn restart(&mut self) -> Result<()> {
        let plugin = Conversation::start(&self.program, &self.input, None)
            .doing(|| "could not start a fresh plugin process".into())?;
        if let Err(mismatch) = self.declared.check_same(plugin.declared()) {
            return Err(Error::msg(format!(
                "the fresh plugin process declares ({}), not ({}) as before: {mismatch}",
                fields(&plugin.declared().schema),
                fields(&self.declared.schema)
            )));
        }
        self.plugin = Some(plugin);
        self.restarts += 1;
        self.sent = 0;
        Ok(())
    }
}

impl Transform for ProcessStage {
    fn schema(&self) -> SchemaRef {
        self.declared.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.at_once {
            // Sent as it is, and answered (its rows emitted or rejected) before this returns.
            self.queue.push_back(InFlight::new(batch));
            return self.drain(out, cx);
        }
        self.pending.push(batch);
        let rows: usize = self.pending.iter().map(RecordBatch::num_rows).sum();
        let bytes: usize = self.pending.iter().map(RecordBatch::get_array_memory_size).sum();
        if rows >= self.batch_rows || bytes >= MAX_MESSAGE_BYTES {
            self.send_pending(out, cx)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.drain(out, cx)?;
        self.confirm()?;
        if let Some(plugin) = self.plugin.take() {
            let held = plugin.shut_down()?;
            if let Some(first) = held.iter().find(|b| b.num_rows() > 0).filter(|_| self.declared.promises.row_wise) {
                let id = only_id(&first.slice(0, 1))?;
                return Err(Error::msg(format!(
                    "plugin `{}` promises to be row-wise (one row out per row in) but sent {} rows with bye, \
                     the first `{id}`: rows held back are not row-wise",
                    self.command(),
                    held.iter().map(RecordBatch::num_rows).sum::<usize>()
                )));
            }
            for batch in held {
                out.emit(batch)?;
            }
        }
        Ok(())
    }

    fn row_wise(&self) -> bool {
        self.at_once
    }

    /// A plugin that promised to be row-wise makes each row's output from that row alone, even
    /// while its batches are joined and pipelined: a killed run of it resumes.
    fn row_local(&self) -> bool {
        self.at_once || self.declared.promises.row_wise
    }

    fn report(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("command".into(), json!(self.program.spawn.argv));
        m.insert("batches".into(), self.next_seq.into());
        m.insert("restarts".into(), self.restarts.into());
        m.insert("row_wise".into(), self.declared.promises.row_wise.into());
        m.insert("deterministic".into(), self.declared.promises.deterministic.into());
        m
    }
}

/// The id of a one-row batch.
fn only_id(batch: &RecordBatch) -> Result<String> {
    Ok(ids(batch)?.iter().next().flatten().unwrap_or("<null>").to_string())
}

/// "3 rows: `a`, `b`, `c`" or "64 rows: `r128` ... `r191`".
fn row_span(batch: &RecordBatch) -> Result<String> {
    let ids: Vec<&str> = ids(batch)?.iter().map(|i| i.unwrap_or("<null>")).collect();
    let n = ids.len();
    let quoted = |s: &[&str]| s.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ");
    Ok(match n {
        0..=4 => format!("{n} row{}: {}", if n == 1 { "" } else { "s" }, quoted(&ids)),
        _ => format!("{n} rows: `{}` ... `{}`", ids[0], ids[n - 1]),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn row_spans_name_first_and_last() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let batch = |ids: Vec<String>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(ids)) as Arc<dyn Array>]).unwrap()
        };
        assert_eq!(row_span(&batch(vec!["a".into()])).unwrap(), "1 row: `a`");
        let many: Vec<String> = (0..64).map(|i| format!("r{i}")).collect();
        assert_eq!(row_span(&batch(many)).unwrap(), "64 rows: `r0` ... `r63`");
    }
}
