//! The `process` stage: a plugin that is another program, in any language, isolated in its own
//! process. pipe streams batches to it as Arrow IPC over stdin and reads its answers from stdout,
//! following plugins/PROTOCOL.md: a describe step (params and input schema in, output schema or a
//! config error out, so `pipe validate` type-checks it like any stage), then one answer per batch
//! with at most two batches in flight, then an end/bye handshake. In a span that refine.iterate
//! re-runs, the stage is row-wise instead: each batch goes to the plugin at once and is answered
//! before the next.
//!
//! A plugin that crashes, hangs past `timeout`, writes garbage or exits early is killed and
//! reaped; with on_error = "skip" a fresh process takes over and gets the batch it was handling
//! again one row at a time, so only the rows the plugin fails on are rejected.
//!
//! `wire` is the bytes of a message, `child` the OS process and its pipes, `conversation` one
//! process's protocol from describe to bye, `stage` the batching, restart and retry policy.

mod child;
mod conversation;
mod declared;
mod stage;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use arrow::datatypes::SchemaRef;
use pipeline::{BuildContext, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::child::{PluginProcess, Spawn};
use crate::conversation::Program;
use crate::stage::ProcessStage;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(Process::default())]
}

/// The `process` plugin. It holds the processes [`Plugin::prepare`] started, by stage id, until
/// the stage is built; those never built are killed when the plugin is dropped.
#[derive(Default)]
pub struct Process {
    prepared: Mutex<HashMap<String, PluginProcess>>,
}

/// Params of `process`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessParams {
    /// The program and its arguments, run without a shell. A relative program path (one with a
    /// '/') is taken from the pipeline file's folder, which is also the working directory.
    pub command: Vec<String>,
    /// A table handed to the plugin (as JSON) when it describes itself.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Seconds the plugin may take to answer a batch (and to describe itself, and to exit).
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Extra environment variables for the plugin.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Rows per message to the plugin: small input batches are joined up to this many rows (or
    /// 16 MiB), so the cost of a message is paid once per many rows. 0 sends the input batches
    /// as they come. `timeout` applies per message.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

fn default_timeout() -> f64 {
    60.0
}

fn default_batch_rows() -> usize {
    1024
}

impl Plugin for Process {
    fn name(&self) -> &'static str {
        "process"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    /// A plugin may draw randomness from the seed it is given.
    fn row_cache(&self, _params: &Params) -> pipeline::RowCache {
        pipeline::RowCache::Seeded
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Runs a plugin written in any language as a separate process, streaming batches to it as \
             Arrow IPC over stdin/stdout (plugins/PROTOCOL.md; a Python SDK is in plugins/python). \
             The plugin declares its output schema at validate time.",
        )
        .params::<ProcessParams>()
        .reads("*", "any", "the input batch, as the plugin's input")
        .writes("*", "declared", "whatever the plugin declares (it must keep a Utf8 `id`)")
        .example(
            "[[stage]]\nid = \"score\"\nuses = \"process\"\ncommand = [\"python3\", \"keyword_score.py\"]\n\
             params = { keywords = [\"cat\", \"dog\"] }\ntimeout = 30",
        )
    }

    fn prepare(&self, params: &Params, cx: &BuildContext) {
        let Ok((spawn, _)) = spawn_spec(params, cx) else { return };
        // A program that cannot start is reported by `build`, at its key.
        if let Ok(process) = PluginProcess::spawn(&spawn) {
            self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(cx.stage_id.clone(), process);
        }
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        let (spawn, p) = spawn_spec(params, cx)?;
        // The process `prepare` started, if it was started the same way: it has been importing
        // its libraries while the stages before it were built.
        let started = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).remove(&cx.stage_id);
        let started = started.filter(|process| process.spawned_as(&spawn));
        let program = Program { spawn, params: p.params, timeout: std::time::Duration::from_secs_f64(p.timeout) };
        let batch_rows = pipeline::config::check_batch_size("batch_rows", p.batch_rows)?;
        // The describe step gives the output schema, so the plugin starts here.
        let stage =
            ProcessStage::build(program, started, batch_rows, input, &cx.cache_dir, cx.validate_only, cx.retried)?;
        Ok(Stage::transform(stage))
    }
}

/// How a stage's plugin is started, from its params: also checks them.
fn spawn_spec(params: &Params, cx: &BuildContext) -> Result<(Spawn, ProcessParams)> {
    let p: ProcessParams = params.parse()?;
    let Some(program) = p.command.first() else {
        return Err(Error::config("command", "is empty")
            .with_hint("command = [\"python3\", \"my_plugin.py\"]: the program, then its arguments"));
    };
    // A week bounds it: Duration cannot hold every f64, and no message takes longer.
    if !(p.timeout.is_finite() && p.timeout > 0.0 && p.timeout <= 604_800.0) {
        return Err(Error::config(
            "timeout",
            format!("must be a positive number of seconds, at most 604800 (a week), not {}", p.timeout),
        ));
    }
    let mut argv = p.command.clone();
    if program.contains('/') && !std::path::Path::new(program).is_absolute() {
        argv[0] = cx.resolve(program).to_string_lossy().into_owned();
    }
    let spawn = Spawn { argv, cwd: cx.pipeline_dir.clone(), env: p.env.clone(), stage: cx.stage_id.clone() };
    Ok((spawn, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(command: &str) -> Params {
        Params::from_toml("p", &format!("command = [\"{command}\"]")).unwrap()
    }

    #[test]
    fn a_prepared_process_is_taken_up_only_by_the_stage_it_was_started_for() {
        let dir = std::env::temp_dir();
        let cx = BuildContext::new("p", &dir, &dir);
        let process = Process::default();
        process.prepare(&params("cat"), &cx);
        let prepared = |p: &Process| p.prepared.lock().unwrap().len();
        assert_eq!(prepared(&process), 1);
        let (spawn, _) = spawn_spec(&params("cat"), &cx).unwrap();
        let (other, _) = spawn_spec(&params("sh"), &cx).unwrap();
        let started = process.prepared.lock().unwrap().remove("p").unwrap();
        assert!(started.spawned_as(&spawn));
        assert!(!started.spawned_as(&other));
        // A program that cannot start is left to `build` to report, at its key.
        process.prepare(&params("/nonexistent/plugin"), &cx);
        assert_eq!(prepared(&process), 0);
        let err =
            process.build(&params("/nonexistent/plugin"), &std::sync::Arc::new(arrow::datatypes::Schema::empty()), &cx);
        assert!(err.err().unwrap().to_string().contains("cannot start"));
    }
}
