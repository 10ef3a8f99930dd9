//! The `train` stage: a model trained inside the pipeline by the user's own program, in any
//! language, following plugins/TRAINING.md (protocol 1). The stage is a sink: its input rows are
//! the dataset, held in memory until the last batch, and its products are files (artifacts) that
//! later stages load by naming them `"@STAGE/FILE"`.
//!
//! Training is cached by content. The key hashes the dataset (its columns and types, then its
//! rows in id order, however they were batched), the params, the pipeline seed, the program files
//! named in `command` and the files of `deps`; a run whose key is in the cache publishes the
//! stored entry without starting the program. A miss runs the program in a scratch folder and
//! stores its outputs as an entry atomically, so a failed or killed training leaves none.
//!
//! `dataset` orders and hashes the rows and writes them for the program, `key` hashes the rest,
//! `trainer` is the running program, `stage` the cache lookup and the run around it.

mod dataset;
mod key;
mod stage;
mod trainer;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::datatypes::SchemaRef;
use pipeline::cache::Cache;
use pipeline::{BuildContext, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::stage::{Recipe, TrainStage, params_json};
use crate::trainer::Trainer;

pub use crate::trainer::PROTOCOL;

/// The plugins of this crate, for `Registry::add`.
pub fn plugins() -> Vec<Box<dyn Plugin>> {
    vec![Box::new(Train)]
}

/// The `train` plugin.
pub struct Train;

/// Params of `train`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The training program and its arguments, run without a shell in the pipeline file's folder
    /// (plugins/TRAINING.md). A relative program path (one with a '/') and any argument that names
    /// an existing file are taken from that folder; those files' contents enter the cache key.
    pub command: Vec<String>,
    /// A table handed to the program as a JSON file (`PIPE_TRAIN_PARAMS`); it enters the cache key.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The files the program must write into `PIPE_TRAIN_OUT` (plain names, such as
    /// "decoder.onnx"): the stage's artifacts, which later stages name as "@STAGE/FILE".
    pub outputs: Vec<String>,
    /// More files or folders, relative to the pipeline file, whose contents enter the cache key
    /// (the trainer's modules, a config). In folders, hidden entries and `__pycache__` are skipped.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Seconds the program may run before it is killed and the run fails; no limit when absent.
    pub timeout: Option<f64>,
    /// Extra environment variables for the program. They do not enter the cache key: put what
    /// changes the model in `params`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The name of an entry's own record in the cache, which no output may take.
const META: &str = "meta.json";

impl Plugin for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Sink
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Sink,
            "Trains a model with your own program (any language; plugins/TRAINING.md): the input rows \
             are the dataset, handed to it as an Arrow IPC file in id order (the whole dataset is held \
             in memory until the last row arrives). The files it writes (`outputs`) are artifacts that \
             later stages name as \"@STAGE/FILE\". Cached by content: when the dataset, params, seed, \
             program files and deps are unchanged, the program is not started. Emits no rows. It needs \
             every row, so it is refused under `pipe run --shard`: train in an unsharded run.",
        )
        .params::<TrainParams>()
        .reads("*", "any", "the dataset: every column of every row")
        .example(
            "[[stage]]\nid = \"fit\"\nuses = \"train\"\ncommand = [\"python3\", \"train.py\"]\n\
             params = { epochs = 5, lr = 0.001 }\noutputs = [\"model.onnx\"]\ndeps = [\"models/\"]\n\n\
             [[stage]]\nid = \"gen\"\nuses = \"model.onnx\"\ninput = \"prompts\"\nmodel = \"@fit/model.onnx\"",
        )
    }

    fn artifacts(&self, params: &Params) -> Vec<String> {
        params.parse::<TrainParams>().map(|p| p.outputs).unwrap_or_default()
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        pipeline::shard::refuse_under_shard(
            cx,
            self.name(),
            "train in an unsharded run first, then shard a pipeline that names the files the training wrote",
        )?;
        let p: TrainParams = params.parse()?;
        let Some(program) = p.command.first() else {
            return Err(Error::config("command", "is empty")
                .with_hint("command = [\"python3\", \"train.py\"]: the program, then its arguments"));
        };
        let timeout = match p.timeout {
            None => None,
            // A year bounds it: Duration cannot hold every f64.
            Some(t) if t.is_finite() && t > 0.0 && t <= 31_536_000.0 => Some(std::time::Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(Error::config(
                    "timeout",
                    format!("must be a positive number of seconds, at most 31536000 (a year), not {t}"),
                ));
            }
        };
        check_outputs(&p.outputs)?;
        if input.field_with_name("id").is_err() {
            return Err(Error::config("input", "the dataset has no `id` column, and its rows are ordered by id"));
        }

        // Absolute, since the program runs in the pipeline's folder, which may be given relative
        // to the current one.
        let resolve = |path: &str| {
            let p = cx.resolve(path);
            std::path::absolute(&p).unwrap_or(p)
        };
        let mut argv = p.command.clone();
        let mut program_files = Vec::new();
        if program.contains('/') && !Path::new(program).is_absolute() {
            argv[0] = resolve(program).to_string_lossy().into_owned();
        }
        for (i, item) in argv.iter_mut().enumerate() {
            let path = resolve(item);
            if (i > 0 || item.contains('/')) && path.is_file() {
                *item = path.to_string_lossy().into_owned();
                program_files.push((i, path));
            }
        }
        let mut deps = Vec::new();
        for dep in &p.deps {
            let path = resolve(dep);
            if !path.exists() {
                return Err(Error::config("deps", format!("`{dep}` does not exist (looked for {})", path.display()))
                    .with_hint("deps are files or folders relative to the pipeline file"));
            }
            deps.push((dep.clone(), path));
        }

        let trainer = Trainer {
            argv,
            display: p.command.join(" "),
            cwd: cx.pipeline_dir.clone(),
            env: p.env,
            timeout,
            stage: cx.stage_id.clone(),
        };
        let recipe = Recipe {
            trainer,
            command: p.command,
            program_files,
            params: params_json(&p.params),
            outputs: p.outputs,
            deps,
            seed: cx.seed,
            pipeline: cx.pipeline_name.clone(),
            no_cache: cx.no_cache,
        };
        let stage = TrainStage::new(input.clone(), recipe, Cache::new(cx.cache_dir.clone()))
            .map_err(|e| Error::config("input", format!("the dataset cannot be hashed: {e}")))?;
        Ok(Stage::transform(stage))
    }
}

/// Outputs are plain, distinct file names in the program's output folder.
fn check_outputs(outputs: &[String]) -> Result<()> {
    if outputs.is_empty() {
        return Err(Error::config("outputs", "lists no files")
            .with_hint("outputs = [\"model.onnx\"]: the files the program writes into PIPE_TRAIN_OUT"));
    }
    for (i, name) in outputs.iter().enumerate() {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\\') {
            return Err(Error::config("outputs", format!("\"{name}\" is not a plain file name"))
                .with_hint("name a file in the program's output folder, without '/' or '..'"));
        }
        if name == META {
            return Err(Error::config("outputs", format!("\"{META}\" is the name of the cache entry's own record"))
                .with_hint("give the output another name"));
        }
        if outputs[..i].contains(name) {
            return Err(Error::config("outputs", format!("\"{name}\" is named twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_plain_distinct_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_outputs(&names(&["encoder.onnx", "decoder.onnx"])).is_ok());
        for (bad, needle) in [
            (vec![], "lists no files"),
            (vec!["../model.onnx"], "not a plain file name"),
            (vec!["sub/model.onnx"], "not a plain file name"),
            (vec![".."], "not a plain file name"),
            (vec!["meta.json"], "cache entry's own record"),
            (vec!["a.onnx", "a.onnx"], "named twice"),
        ] {
            let err = check_outputs(&names(&bad)).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }
}
