//! The traits every stage implements. A [`Plugin`] is a named, documented kind of stage; it
//! builds one configured [`Stage`] from its params and its input schema. What the stage is and
//! what it emits are facts of construction: a [`Source`] makes rows and is run once, a
//! [`Transform`] (sinks included) gets every batch of its input, and each reports its output
//! schema from then on without being asked to compute it. The planner learns a plugin's kind from
//! [`Plugin::kind`]; re-running a span of stages for rows that fail a condition is a node the
//! planner owns ([`crate::retry::Retry`]), not a stage.

use std::cell::RefCell;
use std::path::{Component, Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::config::RuntimeSettings;
use crate::docs::{PluginDoc, PluginKind};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::report::RunReport;
use crate::retry::Retry;
use crate::runner::{Emitter, StageContext};

/// A named kind of stage ("model.onnx"): documents its params and builds configured stages.
pub trait Plugin: Send + Sync + 'static {
    /// The name used in `uses = "..."`.
    fn name(&self) -> &'static str;
    /// Source, transform or sink: decides the stage's default input and what [`Plugin::build`]
    /// returns.
    fn kind(&self) -> PluginKind;
    /// What it does, its params and the columns it reads and writes; printed by `pipe plugins NAME`.
    fn doc(&self) -> PluginDoc;
    /// Builds a stage from its params and the schema it receives (empty for a source). Must not
    /// read data: `pipe validate` calls it too. A source returns [`Stage::Source`], any other kind
    /// [`Stage::Transform`] (or [`Stage::Retry`]).
    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage>;
    /// Starts slow work a stage of this plugin needs whatever its input schema (a plugin process
    /// to start, say), so that it overlaps with building the stages before it. The planner calls
    /// it for every stage before building any; [`Plugin::build`] takes the work up, and work
    /// never taken up is dropped with the plugin. Params that do not parse start nothing here;
    /// `build` reports them. The default does nothing.
    fn prepare(&self, _params: &Params, _cx: &BuildContext) {}
    /// The ids of the upstream stages a stage of this plugin re-runs (refine.iterate's `stages`),
    /// read before any stage is built so that those stages are built knowing it. Params that do
    /// not parse give none here; `build` reports them.
    fn retries(&self, _params: &Params) -> Vec<String> {
        Vec::new()
    }
    /// The files a stage of this plugin publishes for later stages (a train stage's `outputs`),
    /// which name them as `"@STAGE/FILE"` in any string param: the planner builds those stages
    /// once the files exist, with the string replaced by the file's path.
    fn artifacts(&self, _params: &Params) -> Vec<String> {
        Vec::new()
    }
    /// Whether a stage of this plugin reuses per-row results from the cache (model stages), and
    /// whether they depend on the seed. Only row-wise stages are cached; the default is never.
    fn row_cache(&self, _params: &Params) -> crate::rowcache::RowCache {
        crate::rowcache::RowCache::Off
    }
    /// Whether a stage of this plugin makes each row from that row, its params and the files they
    /// name alone, the same every time (no seed, no clock), and is row-wise: such stages between
    /// a source and a cached model stage are skipped for the rows the cache answers (the early
    /// cut-off, [`crate::rowcache::CutOff`]). The default is no.
    fn pure(&self, _params: &Params) -> bool {
        false
    }
    /// For a source: whether no two of its rows in a run share an id. The default is no.
    fn unique_ids(&self, _params: &Params) -> bool {
        false
    }
    /// For a sink: the columns it reads, when they are all it reads (a table's `columns`);
    /// `None` (the default) when it may read any.
    fn reads_only(&self, _params: &Params) -> Option<Vec<String>> {
        None
    }
}

/// A built stage: what it is decides how the runner drives it.
pub enum Stage {
    /// Makes rows.
    Source(Box<dyn Source>),
    /// Reads batches and emits batches (a sink passes its input on).
    Transform(Box<dyn Transform>),
    /// Sends the rows that fail a condition back through a span of upstream stages: run by the
    /// planner and the runner, not by a plugin's code.
    Retry(Retry),
}

impl Stage {
    /// A source stage.
    pub fn source(s: impl Source + 'static) -> Stage {
        Stage::Source(Box::new(s))
    }

    /// A transform (or sink) stage.
    pub fn transform(t: impl Transform + 'static) -> Stage {
        Stage::Transform(Box::new(t))
    }

    /// The schema of the batches this stage emits.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Stage::Source(s) => s.schema(),
            Stage::Transform(t) => t.schema(),
            Stage::Retry(r) => r.schema.clone(),
        }
    }

    /// Its figures for run.json.
    pub fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Stage::Source(s) => s.report(),
            Stage::Transform(t) => t.report(),
            Stage::Retry(r) => r.report(),
        }
    }

    /// See [`Transform::after_run`].
    pub fn after_run(&mut self, report: &RunReport) -> Result<()> {
        match self {
            Stage::Source(s) => s.after_run(report),
            Stage::Transform(t) => t.after_run(report),
            Stage::Retry(_) => Ok(()),
        }
    }

    /// What it is, in a word.
    pub fn kind_word(&self) -> &'static str {
        match self {
            Stage::Source(_) => "source",
            Stage::Transform(_) => "transform",
            Stage::Retry(_) => "retry",
        }
    }
}

/// A stage that makes rows: run once, it emits until it is exhausted.
pub trait Source: Send {
    /// The schema of every batch it emits, fixed when it was built.
    fn schema(&self) -> SchemaRef;

    /// Emits every row. `out.emit` blocks while the downstream queue is full (backpressure) and
    /// returns [`Error::Interrupted`] after Ctrl-C: stop and return it.
    fn run(&mut self, out: &mut Emitter, cx: &mut StageContext) -> Result<()>;

    /// Extra figures for this stage's entry in run.json.
    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// See [`Transform::after_run`].
    fn after_run(&mut self, _report: &RunReport) -> Result<()> {
        Ok(())
    }

    /// Asks the source to leave what is costly to read unread: from now on, where it can, it
    /// emits a row with a stamp (what identifies the content without reading it, such as a file's
    /// size and modification times) in place of the content, and the returned [`Deferred`] reads
    /// the content of such rows later. The planner asks only where the source's one consumer is
    /// the start of an early cut-off ([`crate::rowcache::CutOff`]), which looks rows up by their
    /// stamp and reads only the rows it cannot answer. `None` (the default): the source reads
    /// everything as before.
    fn defer(&mut self) -> Option<std::sync::Arc<dyn Deferred>> {
        None
    }
}

/// Reads the contents a source left unread ([`Source::defer`]).
pub trait Deferred: Send + Sync {
    /// Which rows of `batch` (as the source emitted it) hold a stamp in place of their content.
    fn stamped(&self, batch: &RecordBatch) -> Result<Vec<bool>>;

    /// The rows of `batch` (every one stamped) with their content read, as the source would have
    /// emitted them, in order; and for each row that could not be read its id and why (the
    /// source would have rejected it).
    fn load(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<(String, String)>)>;
}

/// A stage that reads batches: a transform or a sink.
pub trait Transform: Send {
    /// The schema of every batch it emits, fixed when it was built.
    fn schema(&self) -> SchemaRef;

    /// Handles one batch, emitting zero or more. `out.emit` blocks while the downstream queue is
    /// full (backpressure).
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()>;

    /// Called once after the last batch (flush groups, commit files). Not called when the run failed.
    fn finish(&mut self, _out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        Ok(())
    }

    /// Whether every row it is given leaves it, before `process` returns, as one row with the same
    /// id (or is rejected): what a stage must promise to be part of a retried span. Stages that
    /// filter, group, fan out or hold rows back are not row-wise.
    fn row_wise(&self) -> bool {
        false
    }

    /// Whether each row's output is made from that row alone, one row out per row in with the
    /// same id and in order, though perhaps not before `process` returns (a process plugin that
    /// joins and pipelines its batches): what a run needs of a stage to resume after a kill by
    /// leaving out the rows already committed. Every row-wise stage is row-local.
    fn row_local(&self) -> bool {
        self.row_wise()
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
    /// The pipeline's name.
    pub pipeline_name: String,
    /// The cache folder (`[pipeline] cache_dir`, or `PIPE_CACHE_DIR`).
    pub cache_dir: PathBuf,
    /// `pipe run --no-cache`: do not reuse cached results (what is made is still stored).
    pub no_cache: bool,
    /// True when a retry node re-runs this stage for rows that fail its condition: the stage must
    /// then be row-wise ([`Transform::row_wise`]), and one that can hold rows back (a process
    /// plugin that pipelines its batches) must not.
    pub retried: bool,
    /// `pipe run --shard I/N`: this run processes shard `index` of `count` (none: every row).
    /// Sinks write their part of a dataset under it.
    pub shard: Option<Shard>,
    /// The columns of this stage's output that are read after it, when every stage taking it is
    /// a sink that names the columns it reads (a table's `columns`); `None` when any may be read.
    /// A stage may leave out an output no one reads, and the work of making it.
    pub read_after: Option<Vec<String>>,
    warnings: RefCell<Vec<String>>,
}

/// One shard of a sharded run: the rows whose stable hash of `id` falls in `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u32,
    /// How many shards there are (at least 1).
    pub count: u32,
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
            pipeline_name: String::new(),
            cache_dir: pipeline_dir.join(".pipe/cache"),
            no_cache: false,
            retried: false,
            shard: None,
            read_after: None,
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// Whether column `name` of this stage's output may be read after it (see
    /// [`read_after`](Self::read_after)).
    pub fn is_read_after(&self, name: &str) -> bool {
        self.read_after.as_ref().is_none_or(|read| read.iter().any(|c| c == name))
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
                format!("\"{path}\" is a {scheme}:// URL, and this stage writes only to local files"),
            )
            .with_hint(
                "give a path under the output folder; sink.table and sink.images write to s3://, gs:// and az:// URLs",
            ));
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
