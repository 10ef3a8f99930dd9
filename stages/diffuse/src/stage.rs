//! `model.diffuse`: starting noise in, denoised samples out. The plugin builds the stage from its
//! params ([`crate::params`]: the keys, merged with scheduler_config.json), the model and the
//! input schema ([`crate::bind`]); the stage runs the denoise loop ([`crate::denoise`]).

use arrow::datatypes::SchemaRef;
use pipe_runtime::{Model, SessionOptions};
use pipeline::{BuildContext, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage};

use crate::bind::{Names, bind};
use crate::params::{DiffuseParams, ModelFolder, scheduler_config};
use crate::scheduler::{Config, Scheduler};

/// The `model.diffuse` plugin.
pub struct ModelDiffuse;

impl Plugin for ModelDiffuse {
    fn name(&self) -> &'static str {
        "model.diffuse"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    /// Each sample's noise is drawn from the seed.
    fn row_cache(&self, _params: &Params) -> pipeline::RowCache {
        pipeline::RowCache::Seeded
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Denoises samples with a noise-prediction ONNX model in a scheduler loop (ddpm, ddim, \
             euler, euler-a, dpm++2m, pndm, lms, heun, unipc, following diffusers' equations and configuration fields), with \
             classifier-free guidance run as one doubled batch per step. Every row of a batch goes \
             through each step together; each sample's noise comes from its own seeded stream.",
        )
        .params::<DiffuseParams>()
        .reads("<condition>", "Int64, Int32 or tensor", "the model's conditioning input (optional)")
        .reads("<uncond>", "as <condition>", "the unconditional condition for guidance, when `uncond` names a column")
        .reads("<latents>", "tensor [C, H, W]", "starting noise (optional)")
        .writes("<into>", "tensor [C, H, W]", "the denoised sample (column `sample` by default)")
        .example(
            "[[stage]]\nid = \"denoise\"\nuses = \"model.diffuse\"\nmodel = \"models/unet.onnx\"\n\
             sample_shape = [1, 16, 16]\nscheduler = \"dpm++2m\"\nsteps = 20\ncondition = \"label\"\n\
             uncond = 10\nguidance_scale = 3.0",
        )
    }

    fn build(&self, params: &Params, input: &SchemaRef, cx: &BuildContext) -> Result<Stage> {
        /// The schedule tables hold a value per training timestep; past this the number is a typo.
        const MAX_TRAIN_TIMESTEPS: usize = 100_000;
        let p: DiffuseParams = params.parse()?;
        let folder = ModelFolder::open(cx.resolve(&p.model))?;
        let (config, merge) = scheduler_config(&p, cx, &folder)?;
        if p.sample_shape.is_empty() || p.sample_shape.contains(&0) {
            return Err(Error::config("sample_shape", format!("{:?} is not a sample shape", p.sample_shape))
                .with_hint("give every dimension, e.g. [4, 64, 64]"));
        }
        pipeline::tensor::checked_len("sample_shape", &p.sample_shape)?;
        if config.num_train_timesteps > MAX_TRAIN_TIMESTEPS {
            return Err(merge
                .error(
                    "num_train_timesteps",
                    format!("{} is more than the limit, {MAX_TRAIN_TIMESTEPS}", config.num_train_timesteps),
                )
                .with_hint("diffusers' models are trained with 1000"));
        }
        if p.count == 0 {
            return Err(Error::config("count", "count must be at least 1"));
        }
        // Checks the schedule now, so a bad combination fails at validate time, at the key at fault.
        let model_steps =
            Scheduler::new(&config, p.steps, 1).map_err(|e| merge.error(e.key, e.message))?.timesteps().len();
        if p.trace {
            pipeline::tensor::checked_len("trace", &[vec![model_steps], p.sample_shape.clone()].concat())?;
        }
        if !(p.guidance_scale.is_finite() && p.guidance_scale >= 0.0) {
            return Err(Error::config("guidance_scale", format!("{} is not a weight", p.guidance_scale)));
        }
        let guided = p.guidance_scale != 1.0;
        if guided && (p.condition.is_none() || p.uncond.is_none()) {
            return Err(Error::config("guidance_scale", "guidance needs `condition` and `uncond`")
                .with_hint("name the condition column and the value that means no condition, e.g. uncond = 10"));
        }
        let output_scale = match p.output_scale {
            Some(s) if !s.is_finite() => return Err(Error::config("output_scale", format!("{s} is not a number"))),
            Some(s) => s,
            None => folder.scaling_factor.map_or(1.0, |f| 1.0 / f),
        };
        let options = SessionOptions::for_stage(&p.session, cx);
        let model = Model::load(&folder.model, &options).map_err(|e| Error::config("model", e.to_string()))?;
        for w in &model.warnings {
            cx.warn(w.clone());
        }
        let names = Names::resolve(&p, &model)?;
        let batch_size = pipeline::config::check_batch_size("batch_size", p.batch_size.unwrap_or(cx.batch_size))?;
        let (schema, cond_shape) = bind(&p, &names, input, model_steps)?;
        Ok(Stage::transform(DiffuseStage {
            params: p,
            config,
            model,
            names,
            batch_size,
            schema,
            cond_shape,
            model_steps,
            output_scale: output_scale as f32,
            model_runs: 0,
            model_rows: 0,
        }))
    }
}

/// A built `model.diffuse` stage.
pub(crate) struct DiffuseStage {
    pub(crate) params: DiffuseParams,
    pub(crate) config: Config,
    pub(crate) model: Model,
    pub(crate) names: Names,
    /// Samples denoised together.
    pub(crate) batch_size: usize,
    pub(crate) schema: SchemaRef,
    /// The per-row shape of a tensor condition.
    pub(crate) cond_shape: Vec<usize>,
    /// Model calls per sample: `steps`, or `steps + 1` for pndm (the length of `trace`).
    pub(crate) model_steps: usize,
    /// Multiplies the final sample.
    pub(crate) output_scale: f32,
    /// Model runs and the rows they carried, for run.json.
    pub(crate) model_runs: u64,
    pub(crate) model_rows: u64,
}
