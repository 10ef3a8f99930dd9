//! The running stage: describes the plugin, keeps up to [`WINDOW`] batches in flight, checks and
//! emits its answers, and turns a plugin failure into a clear error or, with on_error = "skip",
//! into rejected rows and a fresh process.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::columns::{ids, normalize_array, normalize_schema};
use pipeline::{Emitter, Error, OnError, Result, Stage, StageContext};
use serde_json::{Map, Value, json};

use crate::child::{PluginProcess, Received, Spawn, describe_status};
use crate::wire::{self, Message, PROTOCOL, ReadError};

/// Batches sent to the plugin and not yet answered, at most: one being handled, one waiting in
/// its stdin, so the plugin never idles while pipe decodes an answer.
pub const WINDOW: usize = 2;

/// The most bytes of input joined into one message (unless a single input batch is larger).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Failures in a row, with no answer in between, after which the plugin itself is taken to be
/// broken (rather than some rows) and the run stops even with on_error = "skip".
const MAX_FAILURES_IN_A_ROW: u32 = 5;

/// How long a plugin whose stdout closed gets to exit by itself before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for a dead plugin's last stderr lines.
const STDERR_GRACE: Duration = Duration::from_millis(500);

pub(crate) struct ProcessStage {
    spawn: Spawn,
    params: Map<String, Value>,
    timeout: Duration,
    batch_rows: usize,
    validate_only: bool,
    input: Option<SchemaRef>,
    /// Input batches waiting to be joined into the next message.
    pending: Vec<RecordBatch>,
    declared: Option<SchemaRef>,
    plugin: Option<PluginProcess>,
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

/// How a plugin failed, before it is put in words.
enum Failure {
    Exited,
    TimedOut,
    Garbage(String),
    Protocol(String),
    Io(std::io::Error),
}

impl ProcessStage {
    pub(crate) fn new(
        spawn: Spawn,
        params: Map<String, Value>,
        timeout: Duration,
        batch_rows: usize,
        validate_only: bool,
    ) -> Self {
        Self {
            spawn,
            params,
            timeout,
            batch_rows,
            validate_only,
            input: None,
            pending: Vec::new(),

            declared: None,
            plugin: None,
            queue: VecDeque::new(),
            sent: 0,
            next_seq: 0,
            restarts: 0,
            failures_in_a_row: 0,
        }
    }

    fn command(&self) -> String {
        self.spawn.display()
    }

    /// A line in pipe's log, marked with the stage id like the plugin's own stderr lines.
    fn log(&self, line: &str) {
        pipeline::progress::log_line(&format!("[{}] {line}", self.spawn.stage));
    }

    /// Starts a process and runs the describe step: its output schema, or why not.
    fn start(&self, input: &SchemaRef) -> Result<(PluginProcess, SchemaRef)> {
        let mut plugin = PluginProcess::spawn(&self.spawn).map_err(|e| {
            Error::config("command", format!("cannot start `{}`: {e}", self.spawn.argv[0])).with_hint(
                "the program is looked up on PATH unless it contains a '/', then taken from the pipeline's folder",
            )
        })?;
        let header = wire::header(
            "describe",
            &[
                ("protocol", PROTOCOL.into()),
                ("stage", self.spawn.stage.clone().into()),
                ("params", Value::Object(self.params.clone())),
            ],
        );
        let shown = Value::from(header.clone());
        tracing::debug!(stage = %self.spawn.stage, header = %shown, "to plugin: describe");
        plugin.send(wire::encode(header, Some((input, &[])))?);
        let deadline = Instant::now() + self.timeout;
        let message = match plugin.recv(deadline) {
            Received::Message(m) => m,
            other => {
                let (what, tail) = self.failure_words(&mut plugin, received_failure(other));
                let message = format!("plugin `{}` {what} instead of describing itself", self.command());
                return Err(Error::msg(with_tail(message, &tail)));
            }
        };
        match message.kind.as_str() {
            "schema" => {}
            "error" => return Err(config_error(&message)),
            other => {
                plugin.kill();
                return Err(Error::msg(format!(
                    "plugin `{}` answered describe with \"{other}\" (expected \"schema\" or \"error\"; see plugins/PROTOCOL.md)",
                    self.command()
                )));
            }
        }
        if let Some(p) = message.u64("protocol").filter(|p| *p != PROTOCOL) {
            return Err(Error::msg(format!("plugin `{}` speaks protocol {p}; pipe speaks {PROTOCOL}", self.command())));
        }
        let Some((schema, _)) = message.payload else {
            return Err(Error::msg(format!("plugin `{}` described itself without a schema payload", self.command())));
        };
        let schema = normalize_schema(&schema);
        match schema.field_with_name("id") {
            Ok(f) if f.data_type() == &DataType::Utf8 => {}
            _ => {
                return Err(Error::msg(format!(
                    "plugin `{}` declares ({}) without a Utf8 `id` column; every pipe row keeps its id",
                    self.command(),
                    fields(&schema)
                )));
            }
        }
        Ok((plugin, schema))
    }

    /// Sends `end`, reads `bye` (and the rows it may carry), and waits for the exit.
    fn shut_down(&mut self, mut plugin: PluginProcess) -> Result<Vec<RecordBatch>> {
        tracing::debug!(stage = %self.spawn.stage, "to plugin: end");
        plugin.send(wire::encode(wire::header("end", &[]), None)?);
        plugin.close_stdin();
        let message = match plugin.recv(Instant::now() + self.timeout) {
            Received::Message(m) if m.kind == "bye" => m,
            other => {
                let failure = match other {
                    Received::Message(m) => Failure::Protocol(format!("answered end with \"{}\"", m.kind)),
                    other => received_failure(other),
                };
                let (what, tail) = self.failure_words(&mut plugin, failure);
                let message = format!("plugin `{}` {what} while shutting down", self.command());
                return Err(Error::msg(with_tail(message, &tail)));
            }
        };
        let rows = match message.payload {
            Some(payload) => self.conform(payload)?,
            None => Vec::new(),
        };
        match plugin.wait_exit(self.timeout) {
            Some(status) if status.success() => {}
            Some(status) => {
                self.log(&format!("warning: plugin said bye but ended with {}", describe_status(Some(status))))
            }
            None => {
                plugin.kill();
                self.log(&format!(
                    "warning: plugin did not exit within {} s of saying bye; killed",
                    self.timeout.as_secs_f64()
                ));
            }
        }
        Ok(rows)
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
            self.send_batch(self.sent)?;
            self.sent += 1;
        }
        Ok(())
    }

    fn send_batch(&mut self, index: usize) -> Result<()> {
        let f = &self.queue[index];
        let header = wire::header("batch", &[("seq", f.seq.into()), ("rows", f.batch.num_rows().into())]);
        let message = wire::encode(header, Some((&f.batch.schema(), std::slice::from_ref(&f.batch))))?;
        tracing::debug!(stage = %self.spawn.stage, seq = f.seq, rows = f.batch.num_rows(), bytes = message.len(), "to plugin: batch");
        self.plugin.as_ref().expect("running").send(message);
        Ok(())
    }

    /// Waits for the answer to the oldest batch in flight and handles it.
    fn answer_one(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let front = self.queue.front().expect("a batch in flight");
        let deadline = front.since + self.timeout;
        let received = self.plugin.as_ref().expect("running").recv(deadline);
        let message = match received {
            Received::Message(m) => m,
            other => return self.fail(received_failure(other), cx),
        };
        match message.kind.as_str() {
            "result" | "failed" if message.u64("seq") != Some(front.seq) => {
                let got = message.header.get("seq").map_or("none".to_string(), Value::to_string);
                self.fail(Failure::Protocol(format!("answered seq {got} while batch {} was due", front.seq)), cx)
            }
            "result" => self.take_result(message, out, cx),
            "failed" => {
                let f = self.answered();
                let reason = message.str("message").unwrap_or("the plugin failed on this batch").to_string();
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
                self.log(&format!(
                    "plugin failed on batch {} ({rows}): {reason}; retrying its rows one at a time",
                    f.seq
                ));
                self.retry_row_by_row(&f.batch);
                Ok(())
            }
            other => self.fail(Failure::Protocol(format!("answered a batch with \"{other}\"")), cx),
        }
    }

    fn take_result(&mut self, message: Message, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let errors = match parse_errors(&message) {
            Ok(e) => e,
            Err(p) => return self.fail(Failure::Protocol(p), cx),
        };
        if !errors.is_empty() {
            let batch = &self.queue.front().expect("checked by the caller").batch;
            let known: HashSet<&str> = ids(batch)?.iter().flatten().collect();
            if let Some((id, _)) = errors.iter().find(|(id, _)| !known.contains(id.as_str())) {
                return self.fail(Failure::Protocol(format!("reported an error for row `{id}`, not in its batch")), cx);
            }
        }
        let rows = match message.payload {
            Some(payload) => self.conform(payload)?,
            None => Vec::new(),
        };
        self.answered();
        for (id, reason) in errors {
            cx.reject(&id, reason)?;
        }
        for batch in rows {
            out.emit(batch)?;
        }
        Ok(())
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

    /// Checks what the plugin sent against what it declared, and brings it to the declared schema.
    fn conform(&self, (schema, batches): (SchemaRef, Vec<RecordBatch>)) -> Result<Vec<RecordBatch>> {
        let declared = self.declared.as_ref().expect("described");
        let sent = normalize_schema(&schema);
        let same = sent.fields().len() == declared.fields().len()
            && sent
                .fields()
                .iter()
                .zip(declared.fields())
                .all(|(s, d)| s.name() == d.name() && s.data_type() == d.data_type());
        if !same {
            return Err(Error::msg(format!(
                "plugin `{}` declared its output as ({}) but sent ({})",
                self.command(),
                fields(declared),
                fields(&sent)
            )));
        }
        batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                let columns = b.columns().iter().cloned().map(normalize_array).collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new(declared.clone(), columns).map_err(|e| {
                    Error::msg(format!(
                        "plugin `{}` sent rows that do not fit its declared schema: {e}",
                        self.command()
                    ))
                })
            })
            .collect()
    }

    /// Handles a failed plugin: kills and reaps it, then stops the run (on_error = "fail"), or
    /// ("skip") hands what it had to a fresh process: a failed message of several rows is sent
    /// again one row at a time, so that only the rows the plugin fails on are rejected.
    fn fail(&mut self, failure: Failure, cx: &mut StageContext) -> Result<()> {
        let mut plugin = self.plugin.take().expect("running");
        let (what, tail) = self.failure_words(&mut plugin, failure);
        drop(plugin);
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
            self.log(&format!("{message}; the row goes to rejects.jsonl and a fresh plugin process takes over"));
            cx.reject(&only_id(&f.batch)?, format!("plugin {what} on this row"))?;
        } else {
            self.log(&format!("{message}; a fresh plugin process takes over and retries those rows one at a time"));
            self.retry_row_by_row(&f.batch);
        }
        Ok(())
    }

    /// Queues the rows of a failed message one per message, right after the messages the current
    /// process already has (none, after a failure), so only the rows the plugin fails on alone
    /// are rejected.
    fn retry_row_by_row(&mut self, batch: &RecordBatch) {
        for i in (0..batch.num_rows()).rev() {
            self.queue.insert(self.sent, InFlight { seq: 0, batch: batch.slice(i, 1), since: Instant::now() });
        }
    }

    /// A fresh process for the messages not yet answered; it must declare the same schema.
    fn restart(&mut self) -> Result<()> {
        let input = self.input.clone().expect("described");
        let (plugin, schema) =
            self.start(&input).map_err(|e| Error::msg(format!("could not start a fresh plugin process: {e}")))?;
        if Some(&schema) != self.declared.as_ref() {
            return Err(Error::msg(format!(
                "the fresh plugin process declares ({}), not ({}) as before",
                fields(&schema),
                fields(self.declared.as_ref().expect("described"))
            )));
        }
        self.plugin = Some(plugin);
        self.restarts += 1;
        self.sent = 0;
        Ok(())
    }

    /// Puts a failure in words, after killing and reaping the plugin, with its last stderr lines.
    fn failure_words(&self, plugin: &mut PluginProcess, failure: Failure) -> (String, Vec<String>) {
        let what = match failure {
            Failure::Exited => {
                let status = plugin.wait_exit(EXIT_GRACE).or_else(|| plugin.kill());
                match status {
                    Some(s) if s.success() => "exited early (exit status 0)".to_string(),
                    s => format!("crashed ({})", describe_status(s)),
                }
            }
            Failure::TimedOut => format!("timed out after {} s", self.timeout.as_secs_f64()),
            Failure::Garbage(g) => format!("wrote garbage to stdout: {g}"),
            Failure::Protocol(p) => format!("broke the protocol: {p}"),
            Failure::Io(e) => format!("could not be read: {e}"),
        };
        plugin.kill();
        (what, plugin.stderr_tail(STDERR_GRACE))
    }
}

impl Stage for ProcessStage {
    fn output_schema(&mut self, input: &SchemaRef) -> Result<SchemaRef> {
        let (plugin, schema) = self.start(input)?;
        self.input = Some(input.clone());
        self.declared = Some(schema.clone());
        if self.validate_only {
            self.shut_down(plugin)?;
        } else {
            self.plugin = Some(plugin);
        }
        Ok(schema)
    }

    fn process(&mut self, input: Option<RecordBatch>, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let Some(batch) = input else { return Ok(()) };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.pending.push(batch);
        let rows: usize = self.pending.iter().map(RecordBatch::num_rows).sum();
        let bytes: usize = self.pending.iter().map(RecordBatch::get_array_memory_size).sum();
        if rows >= self.batch_rows || bytes >= MAX_MESSAGE_BYTES {
            self.send_pending(out, cx)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        if !self.pending.is_empty() {
            self.send_pending(out, cx)?;
        }
        while !self.queue.is_empty() {
            self.pump()?;
            self.answer_one(out, cx)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        self.flush(out, cx)?;
        if let Some(plugin) = self.plugin.take() {
            for batch in self.shut_down(plugin)? {
                out.emit(batch)?;
            }
        }
        Ok(())
    }

    fn report(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("command".into(), json!(self.spawn.argv));
        m.insert("batches".into(), self.next_seq.into());
        m.insert("restarts".into(), self.restarts.into());
        m
    }
}

impl ProcessStage {
    /// Queues the pending input as one message, sends what may be sent, then waits while
    /// [`WINDOW`] messages or more are unanswered.
    fn send_pending(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let batches = std::mem::take(&mut self.pending);
        let batch = match batches.len() {
            1 => batches.into_iter().next().expect("one"),
            _ => arrow::compute::concat_batches(&batches[0].schema(), &batches)?,
        };
        self.queue.push_back(InFlight { seq: 0, batch, since: Instant::now() });
        self.pump()?;
        // Rows retried one at a time after a failure wait here too, so the queue stays short.
        while self.queue.len() >= WINDOW {
            self.answer_one(out, cx)?;
            self.pump()?;
        }
        Ok(())
    }
}

fn received_failure(received: Received) -> Failure {
    match received {
        Received::Message(m) => Failure::Protocol(format!("sent \"{}\" out of turn", m.kind)),
        Received::Broken(ReadError::Eof) => Failure::Exited,
        Received::Broken(ReadError::Garbage(g)) => Failure::Garbage(g),
        Received::Broken(ReadError::Io(e)) => Failure::Io(e),
        Received::TimedOut => Failure::TimedOut,
    }
}

/// A message followed by the plugin's last stderr lines, when it wrote any.
fn with_tail(message: String, tail: &[String]) -> String {
    if tail.is_empty() { message } else { format!("{message}; its last stderr lines:\n    {}", tail.join("\n    ")) }
}

/// A describe `error` as a configuration error at `params.<key>`.
fn config_error(message: &Message) -> Error {
    let text = message.str("message").unwrap_or("the plugin refused its configuration");
    let hint = message.str("hint").map(str::to_string);
    let err = match message.str("key") {
        Some(key) => Error::config(format!("params.{key}"), format!("`params.{key}` {text}")),
        None => Error::Config { key: Some("params".into()), message: text.to_string(), hint: None },
    };
    match hint {
        Some(h) => err.with_hint(h),
        None => err,
    }
}

/// The `errors` of a result: (row id, reason) pairs.
fn parse_errors(message: &Message) -> std::result::Result<Vec<(String, String)>, String> {
    let Some(list) = message.header.get("errors") else { return Ok(Vec::new()) };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let list = list.as_array().ok_or("\"errors\" is not a list")?;
    list.iter()
        .map(|e| {
            let id = e.get("id").and_then(Value::as_str).ok_or("an error without a string \"id\"")?;
            let reason = e.get("reason").and_then(Value::as_str).unwrap_or("failed in the plugin");
            Ok((id.to_string(), reason.to_string()))
        })
        .collect()
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

/// "id Utf8, score Float64".
fn fields(schema: &Schema) -> String {
    schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, StringArray};
    use arrow::datatypes::Field;

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
