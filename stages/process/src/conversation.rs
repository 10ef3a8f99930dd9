//! One plugin process's conversation, from its start to its end (plugins/PROTOCOL.md): it is
//! started and describes itself, gets batches and answers them, one at a time and in order, and
//! says bye, or it is killed and reaped and its failure put in words. What happens after a failure
//! (stopping the run, or a fresh process and rows retried one at a time) is the stage's policy, in
//! stage.rs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipeline::columns::{ids, normalize_array, normalize_schema, same_columns};
use pipeline::{Error, Result};
use serde_json::{Map, Value};

use crate::child::{PluginProcess, Received, Spawn, describe_status};
use crate::wire::{self, Kind, Message, PROTOCOL, ReadError};

/// How long a plugin whose stdout closed gets to exit by itself before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long to wait for a dead plugin's last stderr lines.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The plugin program of a stage: what every process of it is started and told with.
pub(crate) struct Program {
    /// How to start it.
    pub spawn: Spawn,
    /// The params handed to it when it describes itself.
    pub params: Map<String, Value>,
    /// How long it may take to describe itself, to answer a message and to exit.
    pub timeout: Duration,
}

impl Program {
    /// The command as a user would type it, for messages.
    pub fn command(&self) -> String {
        self.spawn.display()
    }

    /// A line in pipe's log, marked with the stage id like the plugin's own stderr lines.
    pub fn log(&self, line: &str) {
        pipeline::progress::log_line(&format!("[{}] {line}", self.spawn.stage));
    }
}

/// How a plugin failed, before it is put in words.
pub(crate) enum Failure {
    Exited,
    TimedOut,
    Garbage(String),
    Protocol(String),
    Io(std::io::Error),
}

/// What a process answered to a batch.
pub(crate) enum Answer {
    /// The rows the batch became (in the declared schema), and the (row id, reason) pairs of the
    /// rows that failed.
    Result { rows: Vec<RecordBatch>, errors: Vec<(String, String)> },
    /// It could not handle the batch at all, and says why.
    Failed(String),
    /// It broke down: the caller kills it ([`Conversation::kill`]).
    Broken(Failure),
}

/// What a plugin promised in its describe answer besides its schema (plugins/PROTOCOL.md,
/// "Promises"); a plugin that says nothing promises nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Promises {
    /// One row out per row in, with the same id, in order, each made from that row alone.
    pub row_wise: bool,
    /// Its output depends on the row, the params and the seed only.
    pub deterministic: bool,
}

impl Promises {
    /// The promises a `schema` header makes.
    fn of(message: &Message) -> Self {
        let flag = |key: &str| message.header.get(key).and_then(Value::as_bool).unwrap_or(false);
        Promises { row_wise: flag("row_wise"), deterministic: flag("deterministic") }
    }
}

impl std::fmt::Display for Promises {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<&str> = [(self.row_wise, "row_wise"), (self.deterministic, "deterministic")]
            .into_iter()
            .filter_map(|(on, word)| on.then_some(word))
            .collect();
        if words.is_empty() { f.write_str("nothing") } else { f.write_str(&words.join(" + ")) }
    }
}

/// What a plugin declares in its describe answer: its output schema (normalized) and its promises.
#[derive(Debug, Clone)]
pub(crate) struct Declaration {
    pub schema: SchemaRef,
    pub promises: Promises,
}

impl Declaration {
    /// Whether `other` declares the same: the error says what differs.
    pub fn check_same(&self, other: &Declaration) -> std::result::Result<(), String> {
        same_columns(&other.schema, &self.schema).map_err(|m| m.to_string())?;
        if other.promises != self.promises {
            return Err(format!("it promises {}, not {}", other.promises, self.promises));
        }
        Ok(())
    }
}

/// A running plugin process that has described itself. Dropping it kills the process and reaps
/// it.
pub(crate) struct Conversation {
    program: Arc<Program>,
    process: PluginProcess,
    /// What it declared.
    declared: Declaration,
}

impl Conversation {
    /// Starts a process (or takes up one already `started` from `program`) and runs the describe
    /// step: the process, with its output schema, or why not.
    pub fn start(program: &Arc<Program>, input: &SchemaRef, started: Option<PluginProcess>) -> Result<Self> {
        let nothing = Declaration { schema: Arc::new(Schema::empty()), promises: Promises::default() };
        let (mut plugin, deadline) = Self::begin(program, input, started, nothing)?;
        plugin.declared = plugin.await_schema(deadline)?;
        Ok(plugin)
    }

    /// Starts a process (or takes up one already `started`) and sends `describe` without waiting
    /// for the answer: the process, taken to declare `expected` until [`Conversation::await_schema`]
    /// reads what it does declare, and the deadline of that answer.
    pub fn begin(
        program: &Arc<Program>,
        input: &SchemaRef,
        started: Option<PluginProcess>,
        expected: Declaration,
    ) -> Result<(Self, Instant)> {
        let spawned = match started {
            Some(process) => Ok(process),
            None => PluginProcess::spawn(&program.spawn),
        };
        let process = spawned.map_err(|e| {
            Error::config("command", format!("cannot start `{}`: {e}", program.spawn.argv[0])).with_hint(
                "the program is looked up on PATH unless it contains a '/', then taken from the pipeline's folder",
            )
        })?;
        let header = wire::header(
            Kind::Describe,
            &[
                ("protocol", PROTOCOL.into()),
                ("stage", program.spawn.stage.clone().into()),
                ("params", Value::Object(program.params.clone())),
            ],
        );
        let shown = Value::from(header.clone());
        tracing::debug!(stage = %program.spawn.stage, header = %shown, "to plugin: describe");
        process.send(wire::encode(header, Some((input, &[])))?);
        let deadline = Instant::now() + program.timeout;
        Ok((Self { program: program.clone(), process, declared: expected }, deadline))
    }

    /// Whether a message from the plugin is waiting (after [`Conversation::begin`]: its answer to
    /// describe, or word that it broke down), so that [`Conversation::await_schema`] would not wait.
    pub fn has_answer(&self) -> bool {
        self.process.has_message()
    }

    /// Waits until `deadline` for the answer to describe: the output schema the plugin declares,
    /// normalized, with its promises, or why not (the process is killed then).
    pub fn await_schema(&mut self, deadline: Instant) -> Result<Declaration> {
        let program = self.program.clone();
        let command = program.command();
        let process = &mut self.process;
        let message = match process.recv(deadline) {
            Received::Message(m) => m,
            other => {
                let (what, tail) = failure_words(&program, process, received_failure(other));
                let message = format!("plugin `{command}` {what} instead of describing itself");
                return Err(Error::msg(with_tail(message, &tail)));
            }
        };
        match &message.kind {
            Kind::Schema => {}
            Kind::Error => return Err(config_error(&message)),
            other => {
                process.kill();
                return Err(Error::msg(format!(
                    "plugin `{command}` answered describe with \"{other}\" (expected \"schema\" or \"error\"; see plugins/PROTOCOL.md)"
                )));
            }
        }
        if let Some(p) = message.u64("protocol").filter(|p| *p != PROTOCOL) {
            return Err(Error::msg(format!("plugin `{command}` speaks protocol {p}; pipe speaks {PROTOCOL}")));
        }
        let promises = Promises::of(&message);
        let Some((schema, _)) = message.payload else {
            return Err(Error::msg(format!("plugin `{command}` described itself without a schema payload")));
        };
        let schema = normalize_schema(&schema);
        match schema.field_with_name("id") {
            Ok(f) if f.data_type() == &DataType::Utf8 => {}
            _ => {
                return Err(Error::msg(format!(
                    "plugin `{command}` declares ({}) without a Utf8 `id` column; every pipe row keeps its id",
                    fields(&schema)
                )));
            }
        }
        Ok(Declaration { schema, promises })
    }

    /// What it declared.
    pub fn declared(&self) -> &Declaration {
        &self.declared
    }

    /// Sends batch number `seq`.
    pub fn send(&self, seq: u64, batch: &RecordBatch) -> Result<()> {
        let header = wire::header(Kind::Batch, &[("seq", seq.into()), ("rows", batch.num_rows().into())]);
        let message = wire::encode(header, Some((&batch.schema(), std::slice::from_ref(batch))))?;
        tracing::debug!(stage = %self.program.spawn.stage, seq, rows = batch.num_rows(), bytes = message.len(), "to plugin: batch");
        self.process.send(message);
        Ok(())
    }

    /// Waits until `deadline` for the answer to batch `seq` (the oldest unanswered one, `batch`)
    /// and checks it. Rows that do not fit the declared schema are an error (a bug in the plugin,
    /// whatever on_error says), not a broken process.
    pub fn receive(&self, seq: u64, batch: &RecordBatch, deadline: Instant) -> Result<Answer> {
        let message = match self.process.recv(deadline) {
            Received::Message(m) => m,
            other => return Ok(Answer::Broken(received_failure(other))),
        };
        let broken = |p: String| Ok(Answer::Broken(Failure::Protocol(p)));
        match &message.kind {
            Kind::Result | Kind::Failed if message.u64("seq") != Some(seq) => {
                let got = message.header.get("seq").map_or("none".to_string(), Value::to_string);
                broken(format!("answered seq {got} while batch {seq} was due"))
            }
            Kind::Result => {
                let errors = match parse_errors(&message) {
                    Ok(e) => e,
                    Err(p) => return broken(p),
                };
                if !errors.is_empty() {
                    let known: HashSet<&str> = ids(batch)?.iter().flatten().collect();
                    if let Some((id, _)) = errors.iter().find(|(id, _)| !known.contains(id.as_str())) {
                        return broken(format!("reported an error for row `{id}`, not in its batch"));
                    }
                }
                let rows = match message.payload {
                    Some(payload) => self.conform(payload)?,
                    None => Vec::new(),
                };
                Ok(Answer::Result { rows, errors })
            }
            Kind::Failed => {
                let reason = message.str("message").unwrap_or("the plugin failed on this batch");
                Ok(Answer::Failed(reason.to_string()))
            }
            other => broken(format!("answered a batch with \"{other}\"")),
        }
    }

    /// Sends `end`, reads `bye` (and the rows it may carry), and waits for the exit.
    pub fn shut_down(mut self) -> Result<Vec<RecordBatch>> {
        let program = self.program.clone();
        tracing::debug!(stage = %program.spawn.stage, "to plugin: end");
        self.process.send(wire::encode(wire::header(Kind::End, &[]), None)?);
        self.process.close_stdin();
        let message = match self.process.recv(Instant::now() + program.timeout) {
            Received::Message(m) if m.kind == Kind::Bye => m,
            other => {
                let failure = match other {
                    Received::Message(m) => Failure::Protocol(format!("answered end with \"{}\"", m.kind)),
                    other => received_failure(other),
                };
                let (what, tail) = self.kill(failure);
                let message = format!("plugin `{}` {what} while shutting down", program.command());
                return Err(Error::msg(with_tail(message, &tail)));
            }
        };
        let rows = match message.payload {
            Some(payload) => self.conform(payload)?,
            None => Vec::new(),
        };
        match self.process.wait_exit(program.timeout) {
            Some(status) if status.success() => {}
            Some(status) => {
                program.log(&format!("warning: plugin said bye but ended with {}", describe_status(Some(status))))
            }
            None => {
                self.process.kill();
                program.log(&format!(
                    "warning: plugin did not exit within {} s of saying bye; killed",
                    program.timeout.as_secs_f64()
                ));
            }
        }
        Ok(rows)
    }

    /// Kills and reaps the process after `failure`: the failure in words, and the process's last
    /// stderr lines.
    pub fn kill(mut self, failure: Failure) -> (String, Vec<String>) {
        failure_words(&self.program, &mut self.process, failure)
    }

    /// Checks what the plugin sent against what it declared, and brings it to the declared schema.
    fn conform(&self, (schema, batches): (SchemaRef, Vec<RecordBatch>)) -> Result<Vec<RecordBatch>> {
        let declared = &self.declared.schema;
        let sent = normalize_schema(&schema);
        if let Err(mismatch) = same_columns(&sent, declared) {
            return Err(Error::msg(format!(
                "plugin `{}` declared its output as ({}) but sent ({}): {mismatch}",
                self.program.command(),
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
                        self.program.command()
                    ))
                })
            })
            .collect()
    }
}

/// Puts a failure in words, after killing and reaping the process, with its last stderr lines.
fn failure_words(program: &Program, process: &mut PluginProcess, failure: Failure) -> (String, Vec<String>) {
    let what = match failure {
        Failure::Exited => {
            let status = process.wait_exit(EXIT_GRACE).or_else(|| process.kill());
            match status {
                Some(s) if s.success() => "exited early (exit status 0)".to_string(),
                s => format!("crashed ({})", describe_status(s)),
            }
        }
        Failure::TimedOut => format!("timed out after {} s", program.timeout.as_secs_f64()),
        Failure::Garbage(g) => format!("wrote garbage to stdout: {g}"),
        Failure::Protocol(p) => format!("broke the protocol: {p}"),
        Failure::Io(e) => format!("could not be read: {e}"),
    };
    process.kill();
    (what, process.stderr_tail(STDERR_GRACE))
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
pub(crate) fn with_tail(message: String, tail: &[String]) -> String {
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

/// "id Utf8, score Float64".
pub(crate) fn fields(schema: &Schema) -> String {
    schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}
