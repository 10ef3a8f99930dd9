//! Driving one stage in-process, without a pipeline file or threads: for a plugin's own tests (and
//! tools). A stage is built from a TOML snippet of its params and the schema it receives, then fed
//! batches; what it emits and what it rejects come back. The stage is checked as the runner checks
//! it: every emitted batch must match its declared schema.
//!
//! ```no_run
//! # use pipeline::testing::Harness;
//! # fn demo(plugin: &dyn pipeline::Plugin, input: pipeline::arrow::record_batch::RecordBatch) -> pipeline::Result<()> {
//! let h = Harness::new("score");
//! let mut stage = h.build(plugin, "column = \"probs\"", &input.schema())?;
//! let out = h.run(&mut stage, vec![input])?;
//! assert!(out.rejects.is_empty());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::config::OnError;
use crate::error::{Error, Result};
use crate::params::Params;
use crate::plugin::{BuildContext, Plugin, Stage};
use crate::rejects::RejectLog;
use crate::runner::{Emitter, StageContext};

/// How a stage is built and driven in a test.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The stage id (it seeds the stage's random streams).
    pub stage_id: String,
    /// The pipeline seed.
    pub seed: u64,
    /// Rows per batch for sources.
    pub batch_size: usize,
    /// What a per-item error does.
    pub on_error: OnError,
    /// Where relative paths in the params resolve.
    pub pipeline_dir: PathBuf,
    /// The output folder sinks write under.
    pub output_dir: PathBuf,
    /// Build as `pipe validate` does.
    pub validate_only: bool,
}

/// What a stage did with its input.
#[derive(Debug, Default)]
pub struct Output {
    /// The batches it emitted, in order (from `process`, then `finish`).
    pub batches: Vec<RecordBatch>,
    /// The rejects.jsonl lines it wrote: `{"id", "stage", "reason"}` (and `"rows"`).
    pub rejects: Vec<serde_json::Value>,
}

impl Output {
    /// Rows emitted in all.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

impl Harness {
    /// A harness for stage `stage_id`: seed 0, batches of 64, on_error = "skip", paths relative
    /// to the current folder.
    pub fn new(stage_id: &str) -> Self {
        Self {
            stage_id: stage_id.to_string(),
            seed: 0,
            batch_size: 64,
            on_error: OnError::Skip,
            pipeline_dir: PathBuf::from("."),
            output_dir: PathBuf::from("out"),
            validate_only: false,
        }
    }

    /// The same harness with relative paths resolved against `dir`.
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.pipeline_dir = dir.to_path_buf();
        self.output_dir = dir.join("out");
        self
    }

    /// Builds a stage of `plugin` from `params` (TOML, the keys of its `[[stage]]` table besides
    /// id and uses) for batches of `input` (empty for a source).
    pub fn build(&self, plugin: &dyn Plugin, params: &str, input: &SchemaRef) -> Result<Stage> {
        let params = Params::from_toml(&self.stage_id, params)?;
        let mut cx = BuildContext::new(&self.stage_id, &self.pipeline_dir, &self.output_dir);
        cx.seed = self.seed;
        cx.batch_size = self.batch_size;
        cx.validate_only = self.validate_only;
        plugin.build(&params, input, &cx)
    }

    /// Runs a built stage to its end: a source once, a transform over `inputs` then its finish.
    pub fn run(&self, stage: &mut Stage, inputs: Vec<RecordBatch>) -> Result<Output> {
        let rejects = Arc::new(RejectLog::in_memory(-1));
        let mut cx =
            StageContext::standalone(&self.stage_id, self.seed, self.batch_size, self.on_error, rejects.clone());
        let (mut out, rx) = Emitter::detached(stage.schema());
        match stage {
            Stage::Source(s) => s.run(&mut out, &mut cx)?,
            Stage::Transform(t) => {
                for batch in inputs {
                    t.process(batch, &mut out, &mut cx)?;
                }
                t.finish(&mut out, &mut cx)?;
            }
            Stage::Retry(_) => {
                return Err(Error::msg("a retry node runs only in a pipeline: test it with `pipe run`"));
            }
        }
        drop(out);
        Ok(Output { batches: rx.try_iter().collect(), rejects: rejects.lines() })
    }
}
