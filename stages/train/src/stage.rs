//! A built train stage: it keeps every batch, and after the last one looks the training up in the
//! cache by its key; on a miss it runs the trainer in a scratch folder and stores the outputs as a
//! cache entry. Either way it publishes the entry's folder, so the stages that load its artifacts
//! can be built.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipeline::cache::Cache;
use pipeline::{Emitter, Error, Result, StageContext, Transform};

use crate::dataset::Dataset;
use crate::key::{KeyHasher, canonical_json};
use crate::trainer::{Job, Progress, Trainer};

/// The cache's name for training entries.
pub const KIND: &str = "train";

/// Everything besides the dataset that enters the key, and what running the trainer needs.
pub struct Recipe {
    /// The program.
    pub trainer: Trainer,
    /// `command` as the pipeline file gives it.
    pub command: Vec<String>,
    /// The items of `command` that name files, resolved.
    pub program_files: Vec<(usize, PathBuf)>,
    /// `params`, as canonical JSON.
    pub params: String,
    /// The files the program must write.
    pub outputs: Vec<String>,
    /// `deps` as given, and resolved.
    pub deps: Vec<(String, PathBuf)>,
    /// The pipeline seed.
    pub seed: u64,
    /// The pipeline's name.
    pub pipeline: String,
    /// `pipe run --no-cache`: train even when the cache holds the key, and replace the entry.
    pub no_cache: bool,
}

/// How the stage got its artifacts, for run.json.
struct Outcome {
    hit: bool,
    key: String,
    progress: Progress,
}

/// The `train` stage.
pub struct TrainStage {
    schema: SchemaRef,
    recipe: Recipe,
    cache: Cache,
    dataset: Option<Dataset>,
    outcome: Option<Outcome>,
}

impl TrainStage {
    /// A stage that trains on rows of `schema`.
    pub fn new(schema: SchemaRef, recipe: Recipe, cache: Cache) -> Result<Self> {
        let dataset = Dataset::new(schema.clone())?;
        Ok(Self { schema, recipe, cache, dataset: Some(dataset), outcome: None })
    }

    /// The cache key of training on `dataset` in `order`.
    fn key(&self, dataset: &Dataset, order: &[crate::dataset::RowRef]) -> Result<String> {
        let r = &self.recipe;
        let mut key = KeyHasher::new();
        dataset.hash_into(order, &mut key);
        key.section("params");
        key.text(&r.params);
        key.section("seed");
        key.number(r.seed);
        key.section("command");
        key.number(r.command.len() as u64);
        for (i, item) in r.command.iter().enumerate() {
            key.text(item);
            match r.program_files.iter().find(|(at, _)| *at == i) {
                Some((_, path)) => {
                    key.text("file");
                    key.file(path)?;
                }
                None => key.text("arg"),
            }
        }
        key.section("deps");
        key.number(r.deps.len() as u64);
        for (given, path) in &r.deps {
            key.text(given);
            key.path(path).map_err(|e| Error::msg(format!("deps: `{given}`: {e}")))?;
        }
        Ok(key.finish())
    }

    /// Runs the trainer on the dataset and stores its outputs as the entry `key`.
    fn train(
        &self,
        dataset: Dataset,
        order: Vec<crate::dataset::RowRef>,
        key: &str,
        cx: &StageContext,
    ) -> Result<(PathBuf, Progress)> {
        let stage = cx.stage_id();
        let scratch = Scratch(self.cache.scratch()?);
        let rows = order.len();
        let data = scratch.0.join("data.arrow");
        dataset.write_ipc(&order, &data)?;
        // The rows are in the file now; the trainer may want the memory.
        drop((dataset, order));
        let params = scratch.0.join("params.json");
        std::fs::write(&params, &self.recipe.params).map_err(|e| Error::io(&params, e))?;
        let out = scratch.0.join("out");
        std::fs::create_dir(&out).map_err(|e| Error::io(&out, e))?;

        let job = Job { data: &data, params: &params, out: &out, seed: self.recipe.seed };
        let progress = self.recipe.trainer.run(&job, &|status| cx.set_status(status))?;
        for name in &self.recipe.outputs {
            if !out.join(name).is_file() {
                return Err(Error::msg(format!(
                    "the trainer `{}` exited 0 without writing `{name}` (declared in outputs)",
                    self.recipe.trainer.display
                )));
            }
        }
        let meta = serde_json::json!({
            "stage": stage,
            "pipeline": self.recipe.pipeline,
            "command": self.recipe.command,
            "outputs": self.recipe.outputs,
            "created": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "rows": rows,
            "steps": progress.step,
            "metrics": progress.metrics_json(),
        });
        if self.recipe.no_cache {
            replace_entry(&self.cache, key)?;
        }
        let entry = self.cache.put(KIND, key, meta, |dir| {
            for name in &self.recipe.outputs {
                move_file(&out.join(name), &dir.join(name))?;
            }
            Ok(())
        })?;
        Ok((entry, progress))
    }
}

impl Transform for TrainStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, _out: &mut Emitter, _cx: &mut StageContext) -> Result<()> {
        self.dataset.as_mut().expect("process runs before finish").push(batch)
    }

    fn finish(&mut self, _out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        // Ctrl-C ends the sources early: the rows here are not the dataset.
        if pipeline::runner::INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        let dataset = self.dataset.take().expect("finish runs once");
        let order = dataset.order()?;
        let key = self.key(&dataset, &order)?;
        let cached = self.cache.get(KIND, &key).filter(|_| !self.recipe.no_cache);
        // run.json names the key of a training that fails too.
        self.outcome = Some(Outcome { hit: cached.is_some(), key: key.clone(), progress: Progress::default() });
        let (entry, progress) = match cached {
            Some(entry) => {
                tracing::info!(stage = cx.stage_id(), key = %key, "training found in the cache");
                let progress = stored_progress(&entry);
                (entry, progress)
            }
            None => self.train(dataset, order, &key, cx)?,
        };
        if let Err(e) = self.cache.remember(KIND, &self.recipe.pipeline, cx.stage_id(), &key) {
            // Only `pipe validate`'s look at the last training depends on it.
            tracing::warn!("stage \"{}\": could not record the latest training: {e}", cx.stage_id());
        }
        self.outcome.as_mut().expect("set above").progress = progress;
        cx.publish(&entry);
        Ok(())
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(o) = &self.outcome {
            m.insert("cache".into(), (if o.hit { "hit" } else { "miss" }).into());
            m.insert("key".into(), o.key.clone().into());
            m.insert("metrics".into(), o.progress.metrics_json());
            m.insert("steps".into(), o.progress.step.into());
        }
        m
    }
}

/// The steps and metric series stored in an entry's meta.json.
fn stored_progress(entry: &Path) -> Progress {
    let meta: serde_json::Value = std::fs::read_to_string(entry.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut progress = Progress { step: meta["steps"].as_u64(), ..Progress::default() };
    if let Some(series) = meta["metrics"].as_object() {
        for (name, points) in series {
            let points = points.as_array().into_iter().flatten().filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?)));
            progress.metrics.insert(name.clone(), points.collect());
        }
    }
    progress
}

/// Removes entry `key` so that a fresh training takes its place: its meta.json first, so that an
/// interrupted removal leaves a folder the cache no longer counts as an entry.
fn replace_entry(cache: &Cache, key: &str) -> Result<()> {
    let Some(entry) = cache.get(KIND, key) else { return Ok(()) };
    let meta = entry.join("meta.json");
    std::fs::remove_file(&meta).map_err(|e| Error::io(&meta, e))?;
    std::fs::remove_dir_all(&entry).map_err(|e| Error::io(&entry, e))
}

/// Moves a file into the cache entry being made (both are under the cache's tmp folder, so this
/// is a rename; a copy when the program left a link to elsewhere).
fn move_file(from: &Path, to: &Path) -> Result<()> {
    let is_link = std::fs::symlink_metadata(from).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link && std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(drop).map_err(|e| Error::io(from, e))
}

/// A scratch folder, removed when dropped (after a failure too).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The params JSON as it enters the key and the program's file.
pub fn params_json(params: &serde_json::Map<String, serde_json::Value>) -> String {
    canonical_json(&serde_json::Value::Object(params.clone()))
}
