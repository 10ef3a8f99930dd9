//! `model.diffuse`: starting noise in, denoised samples out. For each chunk of rows the stage
//! draws (or reads) the starting latents, then runs every scheduler step over the whole chunk at
//! once: scale the input, run the model (on [uncond; cond] rows together under guidance), combine,
//! and step the scheduler. Each output row's randomness comes from its own stream, so results do
//! not depend on the batch size.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use pipe_runtime::{Feed, Model, SessionOptions, SessionParams, Signature, TensorElementType};
use pipeline::tensor::{tensor_array, tensor_field, tensor_shape, tensor_values};
use pipeline::{
    BuildContext, Emitter, Error, Params, Plugin, PluginDoc, PluginKind, Result, Stage, StageContext, Transform,
};
use rand_distr::{Distribution, StandardNormal};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::scheduler::{BetaSchedule, Config, Kind, Prediction, Scheduler, Spacing};

/// The `model.diffuse` plugin.
pub struct ModelDiffuse;

/// An integer or a float in the pipeline file.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// Params of `model.diffuse`. Scheduler keys left out come from `scheduler_config`, then from
/// diffusers' defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffuseParams {
    /// The noise-prediction ONNX model.
    pub model: String,
    /// The shape of one sample, [C, H, W].
    pub sample_shape: Vec<usize>,
    /// Samples per input row; with more than one, ids become "ID-K".
    #[serde(default = "one")]
    pub count: usize,
    /// "ddpm", "ddim", "euler", "euler-a" or "dpm++2m" (default "ddim").
    pub scheduler: Option<String>,
    /// Denoising steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Diffusion steps the model was trained with (1000).
    pub num_train_timesteps: Option<usize>,
    /// First training beta (0.0001).
    pub beta_start: Option<f64>,
    /// Last training beta (0.02).
    pub beta_end: Option<f64>,
    /// "linear", "scaled_linear" or "squaredcos_cap_v2" ("linear").
    pub beta_schedule: Option<String>,
    /// "epsilon", "v_prediction" or "sample" ("epsilon").
    pub prediction_type: Option<String>,
    /// "leading", "trailing" or "linspace" ("leading").
    pub timestep_spacing: Option<String>,
    /// Added to each timestep with "leading" spacing (0).
    pub steps_offset: Option<usize>,
    /// DDIM's noise weight in [0, 1] (0.0 = deterministic).
    pub eta: Option<f64>,
    /// Clamp the predicted clean sample (DDPM, DDIM) to ±clip_sample_range (false).
    pub clip_sample: Option<bool>,
    /// The clamp bound (1.0).
    pub clip_sample_range: Option<f64>,
    /// DDIM: the last step goes to alpha_bar = 1 (true).
    pub set_alpha_to_one: Option<bool>,
    /// A diffusers scheduler_config.json whose fields fill the keys above.
    pub scheduler_config: Option<String>,
    /// Classifier-free guidance weight; 1.0 runs the model once per step on the conditions only.
    #[serde(default = "one_f")]
    pub guidance_scale: f64,
    /// A column fed to the model's conditioning input (an integer class label, or a tensor).
    pub condition: Option<String>,
    /// The condition value meaning "no condition" (for guidance): a class id, or the value every
    /// element of a tensor condition takes.
    pub uncond: Option<Number>,
    /// Model input names for `sample`, `timestep` and `condition` (defaults "sample",
    /// "timestep", "class_labels").
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// The model output holding the prediction (default: its first output).
    pub output: Option<String>,
    /// A tensor column with each row's starting noise (unit variance, shape `sample_shape`),
    /// multiplied by the scheduler's init_noise_sigma; drawn from the row's seed when absent, and
    /// when refine.iterate re-runs the stage (a retry from the same noise would repeat itself).
    pub latents: Option<String>,
    /// A tensor column [S, C, H, W] (S >= steps) whose entry i is the noise step i uses when its
    /// scheduler needs one, instead of drawing it (to reproduce a run exactly, e.g. against a
    /// reference implementation).
    pub noise: Option<String>,
    /// Also write `trace`: a tensor [steps, C, H, W] of the sample after every step.
    #[serde(default)]
    pub trace: bool,
    /// The column to write.
    #[serde(default = "default_into")]
    pub into: String,
    /// Samples denoised together (each runs `steps` model calls); the pipeline's batch size when absent.
    pub batch_size: Option<usize>,
    /// `providers`, `threads` and `optimization`.
    #[serde(flatten)]
    pub session: SessionParams,
}

fn one() -> usize {
    1
}

fn one_f() -> f64 {
    1.0
}

fn default_steps() -> usize {
    50
}

fn default_into() -> String {
    "sample".to_string()
}

impl Plugin for ModelDiffuse {
    fn name(&self) -> &'static str {
        "model.diffuse"
    }

    fn kind(&self) -> PluginKind {
        PluginKind::Transform
    }

    fn doc(&self) -> PluginDoc {
        PluginDoc::new(
            PluginKind::Transform,
            "Denoises samples with a noise-prediction ONNX model in a scheduler loop (ddpm, ddim, \
             euler, euler-a, dpm++2m, following diffusers' equations and configuration fields), with \
             classifier-free guidance run as one doubled batch per step. Every row of a batch goes \
             through each step together; each sample's noise comes from its own seeded stream.",
        )
        .params::<DiffuseParams>()
        .reads("<condition>", "Int64, Int32 or tensor", "the model's conditioning input (optional)")
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
        let config = scheduler_config(&p, cx)?;
        if p.sample_shape.is_empty() || p.sample_shape.contains(&0) {
            return Err(Error::config("sample_shape", format!("{:?} is not a sample shape", p.sample_shape))
                .with_hint("give every dimension, e.g. [4, 64, 64]"));
        }
        pipeline::tensor::checked_len("sample_shape", &p.sample_shape)?;
        if p.trace {
            pipeline::tensor::checked_len("trace", &[vec![p.steps], p.sample_shape.clone()].concat())?;
        }
        if config.num_train_timesteps > MAX_TRAIN_TIMESTEPS {
            return Err(Error::config(
                "num_train_timesteps",
                format!("{} is more than the limit, {MAX_TRAIN_TIMESTEPS}", config.num_train_timesteps),
            )
            .with_hint("diffusers' models are trained with 1000"));
        }
        if p.count == 0 {
            return Err(Error::config("count", "count must be at least 1"));
        }
        // Checks the schedule now, so a bad combination fails at validate time.
        Scheduler::new(&config, p.steps, 1).map_err(|e| Error::config("steps", e))?;
        if !(p.guidance_scale.is_finite() && p.guidance_scale >= 0.0) {
            return Err(Error::config("guidance_scale", format!("{} is not a weight", p.guidance_scale)));
        }
        let guided = p.guidance_scale != 1.0;
        if guided && (p.condition.is_none() || p.uncond.is_none()) {
            return Err(Error::config("guidance_scale", "guidance needs `condition` and `uncond`")
                .with_hint("name the condition column and the value that means no condition, e.g. uncond = 10"));
        }
        let options = SessionOptions::for_stage(&p.session, cx);
        let model = Model::load(&cx.resolve(&p.model), &options).map_err(|e| Error::config("model", e.to_string()))?;
        for w in &model.warnings {
            cx.warn(w.clone());
        }
        let names = Names::resolve(&p, &model)?;
        let batch_size = pipeline::config::check_batch_size("batch_size", p.batch_size.unwrap_or(cx.batch_size))?;
        let mut stage = DiffuseStage {
            params: p,
            config,
            model,
            names,
            batch_size,
            schema: Arc::new(Schema::empty()),
            cond_shape: Vec::new(),
            model_runs: 0,
            model_rows: 0,
        };
        stage.schema = stage.bind(input)?;
        Ok(Stage::transform(stage))
    }
}

/// The scheduler configuration: explicit keys, then scheduler_config.json, then defaults.
fn scheduler_config(p: &DiffuseParams, cx: &BuildContext) -> Result<Config> {
    let json = match &p.scheduler_config {
        Some(path) => {
            let path = cx.resolve(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::config("scheduler_config", format!("cannot read {}: {e}", path.display())))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::config("scheduler_config", format!("{}: {e}", path.display())))?;
            if value.get("trained_betas").is_some_and(|b| !b.is_null()) {
                return Err(Error::config("scheduler_config", "trained_betas are not supported")
                    .with_hint("use beta_start, beta_end and beta_schedule"));
            }
            Some((path, value))
        }
        None => None,
    };
    let from_json = |field: &str| json.as_ref().and_then(|(_, v)| v.get(field)).filter(|v| !v.is_null());
    let json_str = |field: &str| from_json(field).and_then(|v| v.as_str()).map(str::to_string);
    let json_f64 = |field: &str| from_json(field).and_then(serde_json::Value::as_f64);
    let json_usize = |field: &str| from_json(field).and_then(serde_json::Value::as_u64).map(|v| v as usize);
    let json_bool = |field: &str| from_json(field).and_then(serde_json::Value::as_bool);
    let d = Config::default();
    let class = json_str("_class_name");
    if let (None, Some(class)) = (&p.scheduler, &class)
        && class_kind(class).is_none()
    {
        return Err(Error::config(
            "scheduler_config",
            format!("scheduler_config.json names {class}, which pipe does not implement"),
        )
        .with_hint(format!(
            "pipe has {}; set scheduler = \"...\" to use one of them with this config's other keys",
            CLASSES.iter().map(|(c, k)| format!("{c} (\"{k}\")")).collect::<Vec<_>>().join(", ")
        )));
    }
    let kind_name = p.scheduler.clone().or_else(|| class.and_then(|c| class_kind(&c)));
    let kind = match kind_name {
        Some(k) => k.parse::<Kind>().map_err(|e| Error::config("scheduler", e))?,
        None => d.kind,
    };
    let beta_schedule = match p.beta_schedule.clone().or_else(|| json_str("beta_schedule")) {
        Some(b) => b.parse::<BetaSchedule>().map_err(|e| Error::config("beta_schedule", e))?,
        None => d.beta_schedule,
    };
    let prediction_type = match p.prediction_type.clone().or_else(|| json_str("prediction_type")) {
        Some(b) => b.parse::<Prediction>().map_err(|e| Error::config("prediction_type", e))?,
        None => d.prediction_type,
    };
    let timestep_spacing = match p.timestep_spacing.clone().or_else(|| json_str("timestep_spacing")) {
        Some(b) => b.parse::<Spacing>().map_err(|e| Error::config("timestep_spacing", e))?,
        None => d.timestep_spacing,
    };
    Ok(Config {
        kind,
        num_train_timesteps: p
            .num_train_timesteps
            .or(json_usize("num_train_timesteps"))
            .unwrap_or(d.num_train_timesteps),
        beta_start: p.beta_start.or(json_f64("beta_start")).unwrap_or(d.beta_start),
        beta_end: p.beta_end.or(json_f64("beta_end")).unwrap_or(d.beta_end),
        beta_schedule,
        prediction_type,
        timestep_spacing,
        steps_offset: p.steps_offset.or(json_usize("steps_offset")).unwrap_or(d.steps_offset),
        eta: p.eta.unwrap_or(d.eta),
        clip_sample: p.clip_sample.or(json_bool("clip_sample")).unwrap_or(d.clip_sample),
        clip_sample_range: p.clip_sample_range.or(json_f64("clip_sample_range")).unwrap_or(d.clip_sample_range),
        set_alpha_to_one: p.set_alpha_to_one.or(json_bool("set_alpha_to_one")).unwrap_or(d.set_alpha_to_one),
    })
}

/// The diffusers scheduler classes this stage implements, with their `scheduler` names.
const CLASSES: [(&str, &str); 5] = [
    ("DDPMScheduler", "ddpm"),
    ("DDIMScheduler", "ddim"),
    ("EulerDiscreteScheduler", "euler"),
    ("EulerAncestralDiscreteScheduler", "euler-a"),
    ("DPMSolverMultistepScheduler", "dpm++2m"),
];

/// The scheduler of a diffusers `_class_name`, when it is one this stage implements.
fn class_kind(class: &str) -> Option<String> {
    CLASSES.iter().find(|(c, _)| *c == class).map(|(_, k)| k.to_string())
}

/// The model's input and output names and element types.
#[derive(Debug)]
struct Names {
    sample: String,
    timestep: String,
    timestep_type: TensorElementType,
    timestep_rank: usize,
    condition: Option<(String, TensorElementType)>,
    output: String,
}

impl Names {
    fn resolve(p: &DiffuseParams, model: &Model) -> Result<Names> {
        for key in p.inputs.keys() {
            if !["sample", "timestep", "condition"].contains(&key.as_str()) {
                return Err(Error::config("inputs", format!("unknown role `{key}`"))
                    .with_hint("the roles are sample, timestep and condition"));
            }
        }
        let all = || {
            model
                .inputs
                .iter()
                .map(|s| format!("{} ({} {})", s.name, s.element_name(), s.shape_text()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let input = |role: &str, default: &str| -> Result<&Signature> {
            let name = p.inputs.get(role).map_or(default, String::as_str);
            model.input(name).ok_or_else(|| {
                Error::config("inputs", format!("the model has no input `{name}` for the {role}"))
                    .with_hint(format!("its inputs: {}; map them with inputs = {{ {role} = \"NAME\" }}", all()))
            })
        };
        let sample = input("sample", "sample")?;
        if sample.element != TensorElementType::Float32 {
            return Err(Error::config(
                "model",
                format!("input `{}` is {}; float32 expected", sample.name, sample.element_name()),
            ));
        }
        let rank = sample.shape.len();
        if rank != p.sample_shape.len() + 1 {
            return Err(Error::config(
                "sample_shape",
                format!(
                    "sample_shape {:?} does not fit input `{}` {}",
                    p.sample_shape,
                    sample.name,
                    sample.shape_text()
                ),
            ));
        }
        for (i, (want, have)) in p.sample_shape.iter().zip(&sample.shape[1..]).enumerate() {
            if *have > 0 && *have as usize != *want {
                return Err(Error::config(
                    "sample_shape",
                    format!(
                        "dimension {} of sample_shape is {want}, the model's input `{}` has {have} ({})",
                        i,
                        sample.name,
                        sample.shape_text()
                    ),
                ));
            }
        }
        let timestep = input("timestep", "timestep")?;
        if !matches!(timestep.element, TensorElementType::Float32 | TensorElementType::Int64 | TensorElementType::Int32)
        {
            return Err(Error::config(
                "model",
                format!("timestep input `{}` is {}", timestep.name, timestep.element_name()),
            )
            .with_hint("float32, int64 and int32 timesteps are supported"));
        }
        let condition = match &p.condition {
            Some(_) => {
                let s = input("condition", "class_labels")?;
                Some((s.name.clone(), s.element))
            }
            None => {
                let name = p.inputs.get("condition").map_or("class_labels", String::as_str);
                if model.input(name).is_some() {
                    return Err(Error::config(
                        "condition",
                        format!("the model takes `{name}` but no `condition` column is named"),
                    )
                    .with_hint("name the column that feeds it, e.g. condition = \"label\""));
                }
                None
            }
        };
        let expected = 2 + usize::from(condition.is_some());
        if model.inputs.len() > expected {
            let fed =
                [Some(sample.name.as_str()), Some(timestep.name.as_str()), condition.as_ref().map(|c| c.0.as_str())];
            let extra: Vec<&str> =
                model.inputs.iter().map(|s| s.name.as_str()).filter(|n| !fed.contains(&Some(*n))).collect();
            return Err(Error::config(
                "inputs",
                format!("the model also takes {} that nothing feeds", extra.join(", ")),
            )
            .with_hint("map the sample, timestep and condition roles with `inputs`"));
        }
        let output = match &p.output {
            Some(o) => model
                .output(o)
                .map(|s| s.name.clone())
                .ok_or_else(|| Error::config("output", format!("the model has no output `{o}`")))?,
            None => model
                .outputs
                .first()
                .map(|s| s.name.clone())
                .ok_or_else(|| Error::config("model", "the model has no outputs"))?,
        };
        Ok(Names {
            sample: sample.name.clone(),
            timestep: timestep.name.clone(),
            timestep_type: timestep.element,
            timestep_rank: timestep.shape.len(),
            condition,
            output,
        })
    }
}

struct DiffuseStage {
    params: DiffuseParams,
    config: Config,
    model: Model,
    names: Names,
    batch_size: usize,
    schema: SchemaRef,
    /// The per-row shape of a tensor condition.
    cond_shape: Vec<usize>,
    /// Model runs and the rows they carried, for run.json.
    model_runs: u64,
    model_rows: u64,
}

/// A row's condition: a class id, or a tensor.
#[derive(Debug, Clone)]
enum Cond {
    Int(i64),
    Tensor(Vec<f32>),
}

impl DiffuseStage {
    /// Checks the input's columns against the params and the model: the output schema.
    fn bind(&mut self, input: &SchemaRef) -> Result<SchemaRef> {
        let p = &self.params;
        let shape = &p.sample_shape;
        let len: usize = shape.iter().product();
        if let Some(name) = &p.latents {
            let field = pipeline::columns::require(input, "latents", name, &[])?;
            if tensor_shape(field).is_none_or(|s| s.iter().product::<usize>() != len) {
                return Err(Error::config(
                    "latents",
                    format!("column `{name}` is {}; a tensor {shape:?} is expected", field.data_type()),
                ));
            }
        }
        if let Some(name) = &p.noise {
            let field = pipeline::columns::require(input, "noise", name, &[])?;
            let fits = tensor_shape(field)
                .map(|s| s.iter().product::<usize>())
                .is_some_and(|n| n % len == 0 && n / len >= p.steps);
            if !fits {
                return Err(Error::config(
                    "noise",
                    format!(
                        "column `{name}` is {}; a tensor [S, {}] with S >= steps ({}) is expected",
                        field.data_type(),
                        shape.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        p.steps
                    ),
                ));
            }
        }
        if let Some(name) = &p.condition {
            let field = pipeline::columns::require(input, "condition", name, &[])?;
            let (_, ty) = self.names.condition.as_ref().expect("resolved with the condition");
            let ok = match field.data_type() {
                DataType::Int64 | DataType::Int32 => {
                    matches!(ty, TensorElementType::Int64 | TensorElementType::Int32 | TensorElementType::Float32)
                }
                DataType::FixedSizeList(..) => *ty == TensorElementType::Float32,
                _ => false,
            };
            if !ok {
                return Err(Error::config(
                    "condition",
                    format!(
                        "column `{name}` is {} and the model's condition input is {}",
                        field.data_type(),
                        pipe_runtime::element_name(*ty)
                    ),
                ));
            }
            self.cond_shape = tensor_shape(field).unwrap_or_default();
        }
        let outputs = [p.into.as_str(), "trace"];
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| !outputs.contains(&f.name().as_str()))
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(tensor_field(&p.into, shape));
        if p.trace {
            fields.push(tensor_field("trace", &[vec![p.steps], shape.clone()].concat()));
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

impl Transform for DiffuseStage {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// One sample per row keeps the row's id; more fan out.
    fn row_wise(&self) -> bool {
        self.params.count == 1
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter, cx: &mut StageContext) -> Result<()> {
        let count = self.params.count;
        // Chunks of input rows such that chunk rows x count stays near batch_size samples.
        let per_chunk = (self.batch_size / count).max(1);
        for start in (0..batch.num_rows()).step_by(per_chunk) {
            let chunk = batch.slice(start, per_chunk.min(batch.num_rows() - start));
            let done = self.denoise(&chunk, cx)?;
            out.emit(done)?;
        }
        Ok(())
    }

    fn report(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("scheduler".into(), self.config.kind.name().into());
        m.insert("model_runs".into(), self.model_runs.into());
        m.insert("model_rows".into(), self.model_rows.into());
        m
    }
}

impl DiffuseStage {
    fn denoise(&mut self, batch: &RecordBatch, cx: &mut StageContext) -> Result<RecordBatch> {
        let p = &self.params;
        let schema = self.schema.clone();
        let len: usize = p.sample_shape.iter().product();
        let (rows, count) = (batch.num_rows(), p.count);
        let n = rows * count;
        let ids = pipeline::columns::ids(batch)?;
        let out_ids: Vec<String> = (0..rows)
            .flat_map(|r| (0..count).map(move |k| (r, k)))
            .map(|(r, k)| if count == 1 { ids.value(r).to_string() } else { format!("{}-{k}", ids.value(r)) })
            .collect();
        let mut scheduler = Scheduler::new(&self.config, p.steps, n * len).map_err(Error::msg)?;
        let sigma = scheduler.init_noise_sigma() as f32;
        let mut rngs: Vec<_> = out_ids.iter().map(|id| cx.rng(id)).collect();
        // Starting noise.
        let mut sample = Vec::with_capacity(n * len);
        // Latents start the first attempt; a retry (refine.iterate) draws fresh noise.
        let latents = match &p.latents {
            Some(column) => Some(tensor_values(pipeline::columns::column(batch, column)?.as_ref())?),
            None => None,
        };
        for (i, rng) in rngs.iter_mut().enumerate() {
            let r = i / count;
            match &latents {
                Some((values, width)) if cx.round_of(ids.value(r)) == 0 => {
                    sample.extend(values[r * width..(r + 1) * width].iter().map(|v| v * sigma));
                }
                _ => sample.extend(
                    (0..len).map(|_| <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng) * sigma),
                ),
            }
        }
        let given_noise = match &p.noise {
            Some(column) => Some(tensor_values(pipeline::columns::column(batch, column)?.as_ref())?),
            None => None,
        };
        let conditions = self.conditions(batch)?;
        let guided = p.guidance_scale != 1.0;
        let w = p.guidance_scale as f32;
        let mut trace = if p.trace { Vec::with_capacity(n * p.steps * len) } else { Vec::new() };
        let mut traced: Vec<Vec<f32>> = Vec::new();
        let mut model_input = vec![0f32; n * len];
        let timesteps = scheduler.timesteps().to_vec();
        for (step, &t) in timesteps.iter().enumerate() {
            scheduler.scale_model_input(step, &sample, &mut model_input);
            let copies = if guided { 2 } else { 1 };
            let rows_in = n * copies;
            let mut feeds: Vec<(String, Feed<'_>)> = Vec::with_capacity(3);
            let mut shape = vec![rows_in as i64];
            shape.extend(p.sample_shape.iter().map(|d| *d as i64));
            let x = if guided {
                Feed::F32Owned(shape, [model_input.as_slice(), model_input.as_slice()].concat())
            } else {
                Feed::F32(shape, &model_input)
            };
            feeds.push((self.names.sample.clone(), x));
            let t_shape = if self.names.timestep_rank == 0 { Vec::new() } else { vec![rows_in as i64] };
            let t_count = if self.names.timestep_rank == 0 { 1 } else { rows_in };
            let t_feed = match self.names.timestep_type {
                TensorElementType::Int64 => Feed::I64(t_shape, vec![t.round() as i64; t_count]),
                TensorElementType::Int32 => Feed::I32(t_shape, vec![t.round() as i32; t_count]),
                _ => Feed::F32Owned(t_shape, vec![t as f32; t_count]),
            };
            feeds.push((self.names.timestep.clone(), t_feed));
            if let (Some((name, ty)), Some(conds)) = (&self.names.condition, &conditions) {
                feeds.push((name.clone(), self.condition_feed(conds, count, guided, *ty)?));
            }
            let fetched = self.model.run(feeds, std::slice::from_ref(&self.names.output))?;
            self.model_runs += 1;
            self.model_rows += rows_in as u64;
            let prediction = &fetched[0].values;
            if prediction.len() != rows_in * len {
                return Err(Error::msg(format!(
                    "output `{}` has shape {:?}; [{rows_in}, {}] expected",
                    self.names.output,
                    fetched[0].shape,
                    p.sample_shape.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                )));
            }
            let guided_output: Vec<f32>;
            let output: &[f32] = if guided {
                let (uncond, cond) = prediction.split_at(n * len);
                guided_output = uncond.iter().zip(cond).map(|(u, c)| u + w * (c - u)).collect();
                &guided_output
            } else {
                prediction
            };
            let noise: Option<Vec<f32>> = if scheduler.needs_noise(step) {
                Some(match &given_noise {
                    Some((values, width)) => (0..rows)
                        .flat_map(|r| (0..count).map(move |_| r))
                        .flat_map(|r| values[r * width + step * len..r * width + (step + 1) * len].iter().copied())
                        .collect(),
                    None => rngs
                        .iter_mut()
                        .flat_map(|rng| {
                            (0..len)
                                .map(|_| <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
                                .collect::<Vec<_>>()
                        })
                        .collect(),
                })
            } else {
                None
            };
            scheduler.step(step, output, &mut sample, noise.as_deref()).map_err(Error::msg)?;
            if p.trace {
                traced.push(sample.clone());
            }
        }
        if p.trace {
            for i in 0..n {
                for s in &traced {
                    trace.extend_from_slice(&s[i * len..(i + 1) * len]);
                }
            }
        }
        // Repeat each input row `count` times, with the new ids.
        let take: Vec<u32> = (0..rows as u32).flat_map(|r| std::iter::repeat_n(r, count)).collect();
        let take = arrow::array::UInt32Array::from(take);
        let mut made: BTreeMap<&str, ArrayRef> = BTreeMap::new();
        made.insert("id", Arc::new(StringArray::from(out_ids)));
        made.insert(p.into.as_str(), Arc::new(tensor_array(sample, &p.sample_shape)?));
        if p.trace {
            made.insert("trace", Arc::new(tensor_array(trace, &[vec![p.steps], p.sample_shape.clone()].concat())?));
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| match made.get(f.name().as_str()) {
                Some(c) => Ok(c.clone()),
                None => Ok(arrow::compute::take(pipeline::columns::column(batch, f.name())?.as_ref(), &take, None)?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// Each input row's condition, when the model takes one.
    fn conditions(&self, batch: &RecordBatch) -> Result<Option<Vec<Cond>>> {
        let Some(name) = &self.params.condition else { return Ok(None) };
        let column = pipeline::columns::column(batch, name)?;
        let null = |r: usize| Error::Item {
            row: pipeline::columns::ids(batch).map(|i| i.value(r).to_string()).unwrap_or_default(),
            reason: format!("`{name}` is empty"),
        };
        if let Some(a) = column.as_any().downcast_ref::<Int64Array>() {
            return (0..a.len())
                .map(|r| if a.is_null(r) { Err(null(r)) } else { Ok(Cond::Int(a.value(r))) })
                .collect::<Result<_>>()
                .map(Some);
        }
        if let Some(a) = column.as_any().downcast_ref::<Int32Array>() {
            return (0..a.len())
                .map(|r| if a.is_null(r) { Err(null(r)) } else { Ok(Cond::Int(i64::from(a.value(r)))) })
                .collect::<Result<_>>()
                .map(Some);
        }
        let (values, width) = tensor_values(column.as_ref())?;
        Ok(Some((0..batch.num_rows()).map(|r| Cond::Tensor(values[r * width..(r + 1) * width].to_vec())).collect()))
    }

    /// The condition input for one step: per sample, with the unconditional copies first under guidance.
    fn condition_feed(
        &self,
        conds: &[Cond],
        count: usize,
        guided: bool,
        ty: TensorElementType,
    ) -> Result<Feed<'static>> {
        let per_sample: Vec<&Cond> = conds.iter().flat_map(|c| std::iter::repeat_n(c, count)).collect();
        let uncond = self.params.uncond.unwrap_or(Number::Int(0));
        let n = per_sample.len() as i64;
        let rows = if guided { 2 * n } else { n };
        match per_sample.first() {
            Some(Cond::Tensor(first)) => {
                let width = first.len();
                let mut values = Vec::with_capacity(rows as usize * width);
                if guided {
                    values.extend(std::iter::repeat_n(uncond.as_f64() as f32, n as usize * width));
                }
                for c in &per_sample {
                    if let Cond::Tensor(v) = c {
                        values.extend_from_slice(v);
                    }
                }
                let mut shape = vec![rows];
                shape.extend(self.cond_shape.iter().map(|d| *d as i64));
                Ok(Feed::F32Owned(shape, values))
            }
            _ => {
                let ints: Vec<i64> = per_sample.iter().map(|c| if let Cond::Int(i) = c { *i } else { 0 }).collect();
                let u = uncond.as_f64() as i64;
                let all: Vec<i64> =
                    if guided { std::iter::repeat_n(u, ints.len()).chain(ints).collect() } else { ints };
                Ok(match ty {
                    TensorElementType::Int32 => Feed::I32(vec![rows], all.into_iter().map(|v| v as i32).collect()),
                    TensorElementType::Float32 => {
                        Feed::F32Owned(vec![rows], all.into_iter().map(|v| v as f32).collect())
                    }
                    _ => Feed::I64(vec![rows], all),
                })
            }
        }
    }
}
