//! The two traits every stage implements: [`Plugin`] (a named, documented kind of stage that builds
//! from config) and [`Stage`] (one configured instance that declares its schema and processes
//! batches). Kept small on purpose: two required methods each, the rest defaulted.

use std::cell::RefCell;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::config::OnError;
use crate::config::RuntimeSettings;
use crate::docs::{PluginDoc, PluginKind};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::report::RunReport;
use crate::runner::{Emitter, StageContext};

/// A named kind of stage ("model.onnx"): documents its params and builds configured stages.
pub trait Plugin: Send + Sync + 'static {
    /// The name used in `uses = "..."`.
    fn name(&self) -> &'static str;
    /// What it does, its params and the columns it reads and writes; printed by `pipe plugins NAME`.
    fn doc(&self) -> PluginDoc;
    /// Builds a stage from its params. Must not read data: `pipe validate` calls it too.
    fn build(&self, params: &Params, cx: &BuildContext) -> Result<Box<dyn Stage>>;
}

/// One configured stage, run on its own thread.
pub trait Stage: Send {
    /// The schema of the batches this stage emits, given its input's (empty for a source).
    /// Called once, before any data moves, so `pipe validate` type-checks the whole graph.
    fn output_schema(&mut self, input: &SchemaRef) -> Result<SchemaRef>;

    /// A transform gets one batch and emits zero or more; a source gets `None` once and emits until
    /// it is exhausted. `out.emit` blocks while the downstream queue is full (backpressure).
    fn process(&mut self, input: Option<RecordBatch>, out: &mut Emitter, cx: &mut StageContext) -> Result<()>;

    /// Emits every row the stage still holds from the batches it was given, without ending: for
    /// a stage that re-runs others one batch at a time and needs that batch's rows now
    /// (refine.iterate). Stages that emit as they go need nothing here; stages that batch up or
    /// pipeline their input (a process plugin) send and wait for it. Not a substitute for
    /// `finish`, which still comes at the end.
    fn flush(&mut self, _out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        Ok(())
    }

    /// Called once after the last batch (flush groups, commit files). Not called when the run failed.
    fn finish(&mut self, _out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        Ok(())
    }

    /// Extra figures for this stage's entry in run.json.
    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Called once after every stage has finished, with the run's report, before run.json is
    /// written: for stages that summarize the whole run (sink.report). Not called when the run
    /// failed or was interrupted; an error here fails the run.
    fn after_run(&mut self, _report: &RunReport) -> Result<()> {
        Ok(())
    }
}

/// What a plugin may know when building a stage: where the pipeline lives, where outputs go.
#[derive(Debug)]
pub struct BuildContext {
    /// The stage id.
    pub stage_id: String,
    /// The folder of the pipeline file; relative paths resolve against it.
    pub pipeline_dir: PathBuf,
    /// The run's output folder.
    pub output_dir: PathBuf,
    /// The pipeline seed.
    pub seed: u64,
    /// The pipeline's batch size.
    pub batch_size: usize,
    /// `[runtime]` settings.
    pub runtime: RuntimeSettings,
    /// True under `pipe validate`: nothing is run, so a stage may skip expensive preparation.
    pub validate_only: bool,
    /// The id of the stage feeding this one (none for a source).
    pub input: Option<String>,
    /// The stages built before this one, for stages that re-run part of the graph themselves.
    pub upstream: Vec<Upstream>,
    warnings: RefCell<Vec<String>>,
}

/// A stage built before the current one: enough to build a fresh instance of it.
#[derive(Clone)]
pub struct Upstream {
    /// Its id.
    pub id: String,
    /// Its plugin.
    pub plugin: Arc<dyn Plugin>,
    /// Source, transform or sink.
    pub kind: PluginKind,
    /// Its params.
    pub params: Params,
    /// The id of the stage feeding it.
    pub input: Option<String>,
    /// The schema it receives.
    pub input_schema: SchemaRef,
    /// Its effective on_error.
    pub on_error: OnError,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("id", &self.id).field("input", &self.input).finish()
    }
}

impl BuildContext {
    /// A context for building `stage_id`.
    pub fn new(stage_id: &str, pipeline_dir: &Path, output_dir: &Path) -> Self {
        Self {
            stage_id: stage_id.to_string(),
            pipeline_dir: pipeline_dir.to_path_buf(),
            output_dir: output_dir.to_path_buf(),
            seed: 0,
            batch_size: 64,
            runtime: RuntimeSettings::default(),
            validate_only: false,
            input: None,
            upstream: Vec::new(),
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// Builds a fresh instance of the upstream stage `id`, with its own params and id, and
    /// returns it with its input and output schemas. Its warnings are dropped (they were shown
    /// when the original was built).
    pub fn rebuild(&self, id: &str) -> Result<(Box<dyn Stage>, SchemaRef, SchemaRef)> {
        let up = self
            .upstream
            .iter()
            .find(|u| u.id == id)
            .ok_or_else(|| Error::msg(format!("no stage \"{id}\" before this one")))?;
        let mut cx = BuildContext::new(id, &self.pipeline_dir, &self.output_dir);
        cx.seed = self.seed;
        cx.batch_size = self.batch_size;
        cx.runtime = self.runtime.clone();
        cx.validate_only = self.validate_only;
        cx.input = up.input.clone();
        let mut stage = up.plugin.build(&up.params, &cx)?;
        let schema = stage.output_schema(&up.input_schema)?;
        Ok((stage, up.input_schema.clone(), schema))
    }

    /// A path from the pipeline file, resolved against its folder.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        self.pipeline_dir.join(path)
    }

    /// A path under the output folder; refuses paths that would leave it.
    pub fn output_path(&self, key: &str, path: &str) -> Result<PathBuf> {
        if let Some(scheme) = url_scheme(path) {
            return Err(Error::config(
                key,
                format!("\"{path}\" is a {scheme}:// URL, and pipe writes only to local files"),
            )
            .with_hint("give a path under the output folder, and copy the outputs to object storage after the run"));
        }
        let relative = contained_path(path).ok_or_else(|| {
            Error::config(key, format!("\"{path}\" leaves the output folder"))
                .with_hint("use a relative path without '..'")
        })?;
        Ok(self.output_dir.join(relative))
    }

    /// Records a warning shown by `pipe validate` and `pipe run` (for example a folder that does
    /// not exist yet).
    pub fn warn(&self, message: impl Into<String>) {
        self.warnings.borrow_mut().push(message.into());
    }

    /// The warnings recorded so far.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.warnings.borrow_mut())
    }
}

/// The scheme of a URL such as `s3://bucket/key` (`s3`), or `None` for a path.
pub fn url_scheme(path: &str) -> Option<&str> {
    let (scheme, _) = path.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    valid.then_some(scheme)
}

/// `path` as a relative path that cannot leave its base folder, or `None`.
pub fn contained_path(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_paths_stay_inside() {
        assert_eq!(contained_path("a/b.png"), Some(PathBuf::from("a/b.png")));
        assert_eq!(contained_path("./a"), Some(PathBuf::from("a")));
        assert_eq!(contained_path("../a"), None);
        assert_eq!(contained_path("a/../../b"), None);
        assert_eq!(contained_path("/etc/passwd"), None);
        assert_eq!(contained_path(""), None);
        assert_eq!(url_scheme("s3://bucket/out.parquet"), Some("s3"));
        assert_eq!(url_scheme("gs://b/k"), Some("gs"));
        assert_eq!(url_scheme("out/a://b"), None);
        assert_eq!(url_scheme("samples.parquet"), None);
    }
}
