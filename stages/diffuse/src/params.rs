//! The params of `model.diffuse`, and the scheduler configuration they make: each scheduler key
//! from the pipeline file, else from the diffusers scheduler_config.json named by
//! `scheduler_config`, else the contract's default (one [`Merge`], which remembers where every
//! value came from, so an error about one points at the key, or at `scheduler_config` with the
//! JSON field named).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use pipe_runtime::{Merge, SessionParams};
use pipeline::{BuildContext, Error, Result};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::scheduler::{Config, Kind};

/// An integer or a float in the pipeline file.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// What "no condition" is under guidance: a value, or a column holding each row's (the
/// embeddings of the empty or a negative prompt).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Uncond {
    /// A class id, or the value every element of a tensor condition takes.
    Value(Number),
    /// A column of the same type and shape as `condition`.
    Column(String),
}

/// Params of `model.diffuse`. Scheduler keys left out come from `scheduler_config`, then from
/// diffusers' defaults.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffuseParams {
    /// The noise-prediction ONNX model: an .onnx file, or a diffusers/optimum ONNX folder
    /// (model_index.json, unet/model.onnx, scheduler/scheduler_config.json, whose fields fill
    /// the scheduler keys, and the VAE's config.json, whose scaling_factor sets `output_scale`).
    pub model: String,
    /// The shape of one sample, [C, H, W].
    pub sample_shape: Vec<usize>,
    /// Samples per input row; with more than one, ids become "ID-K".
    #[serde(default = "one")]
    pub count: usize,
    /// "ddpm", "ddim", "euler", "euler-a", "dpm++2m", "lms", "heun", "unipc" or "pndm" (PLMS, as with skip_prk_steps;
    /// steps + 1 model calls) (default "ddim", or the class scheduler_config.json names).
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
    /// Karras et al.'s sigmas (rho 7) and the timesteps that give them, for euler, heun and
    /// dpm++2m (false).
    pub use_karras_sigmas: Option<bool>,
    /// A diffusers scheduler_config.json whose fields fill the keys above.
    pub scheduler_config: Option<String>,
    /// Classifier-free guidance weight; 1.0 runs the model once per step on the conditions only.
    #[serde(default = "one_f")]
    pub guidance_scale: f64,
    /// A column fed to the model's conditioning input (an integer class label, or a tensor).
    pub condition: Option<String>,
    /// What means "no condition" (for guidance): a class id, the value every element of a tensor
    /// condition takes, or a column of the condition's type and shape (e.g. the empty prompt's
    /// embeddings). Guidance is uncond + guidance_scale * (cond - uncond).
    pub uncond: Option<Uncond>,
    /// Multiplies the final sample (not `trace`), e.g. 1/0.18215 to bring Stable Diffusion's
    /// latents to the VAE decoder's scale; default 1/scaling_factor of the VAE's config.json in a
    /// model folder, else 1.
    pub output_scale: Option<f64>,
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
    /// Also write `trace`: a tensor [steps, C, H, W] of the sample after every step (steps + 1 of
    /// them with pndm, one per model call).
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

/// The scheduler_config.json fields that fill the keys of the same names (diffusers passes `eta`
/// to each step, so no config file holds it), by type.
const COUNTS: [&str; 2] = ["num_train_timesteps", "steps_offset"];
const NUMBERS: [&str; 3] = ["beta_start", "beta_end", "clip_sample_range"];
const NAMES: [&str; 3] = ["beta_schedule", "prediction_type", "timestep_spacing"];
const FLAGS: [&str; 3] = ["clip_sample", "set_alpha_to_one", "use_karras_sigmas"];

/// The scheduler configuration: explicit keys, then scheduler_config.json, then defaults; with
/// the merge that says where each value came from (for [`Merge::error`]).
pub(crate) fn scheduler_config(p: &DiffuseParams, cx: &BuildContext, folder: &ModelFolder) -> Result<(Config, Merge)> {
    let mut m = Merge::new("scheduler_config");
    let mut class = None;
    let mut skip_prk = None;
    let mut variants: Vec<(&'static str, &'static str, String)> = Vec::new();
    let file = p.scheduler_config.as_ref().map(|f| cx.resolve(f)).or_else(|| folder.scheduler_config.clone());
    if let Some(path) = &file {
        let path = path.clone();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::config("scheduler_config", format!("cannot read {}: {e}", path.display())))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::config("scheduler_config", format!("{}: {e}", path.display())))?;
        if value.get("trained_betas").is_some_and(|b| !b.is_null()) {
            return Err(Error::config("scheduler_config", "trained_betas are not supported")
                .with_hint("use beta_start, beta_end and beta_schedule"));
        }
        for key in COUNTS {
            m.take::<usize>(key, &value, &path, key);
        }
        for key in NUMBERS {
            m.take::<f64>(key, &value, &path, key);
        }
        for key in NAMES {
            m.take::<String>(key, &value, &path, key);
        }
        for key in FLAGS {
            m.take::<bool>(key, &value, &path, key);
        }
        class = value.get("_class_name").and_then(|c| c.as_str()).map(str::to_string);
        skip_prk = value.get("skip_prk_steps").and_then(serde_json::Value::as_bool);
        variants = unsupported_variants(&value);
    }
    let d = Config::default();
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
    if let Some((for_kind, field, value)) = variants.iter().find(|(k, _, _)| *k == kind.name()) {
        return Err(Error::config(
            "scheduler_config",
            format!("scheduler_config.json has {field} = {value}, which pipe's {for_kind} does not implement"),
        )
        .with_hint(format!("pipe's {for_kind} is diffusers' default: {}", default_variant(for_kind))));
    }
    if kind == Kind::Pndm && skip_prk == Some(false) {
        return Err(Error::config(
            "scheduler_config",
            "scheduler_config.json has skip_prk_steps = false: pipe's pndm runs the PLMS steps only",
        )
        .with_hint("Stable Diffusion's configs set skip_prk_steps = true; or choose another scheduler"));
    }
    let beta_schedule = parsed(&mut m, "beta_schedule", &p.beta_schedule, d.beta_schedule)?;
    let prediction_type = parsed(&mut m, "prediction_type", &p.prediction_type, d.prediction_type)?;
    let timestep_spacing = parsed(&mut m, "timestep_spacing", &p.timestep_spacing, d.timestep_spacing)?;
    let config = Config {
        kind,
        num_train_timesteps: m.value("num_train_timesteps", p.num_train_timesteps, d.num_train_timesteps),
        beta_start: m.value("beta_start", p.beta_start, d.beta_start),
        beta_end: m.value("beta_end", p.beta_end, d.beta_end),
        beta_schedule,
        prediction_type,
        timestep_spacing,
        steps_offset: m.value("steps_offset", p.steps_offset, d.steps_offset),
        eta: m.value("eta", p.eta, d.eta),
        clip_sample: m.value("clip_sample", p.clip_sample, d.clip_sample),
        clip_sample_range: m.value("clip_sample_range", p.clip_sample_range, d.clip_sample_range),
        set_alpha_to_one: m.value("set_alpha_to_one", p.set_alpha_to_one, d.set_alpha_to_one),
        use_karras_sigmas: m.value("use_karras_sigmas", p.use_karras_sigmas, d.use_karras_sigmas),
    };
    Ok((config, m))
}

/// A named setting (`beta_schedule`, ...): merged as text, then parsed; a bad name is reported
/// where it was written.
fn parsed<T: FromStr<Err = String>>(
    m: &mut Merge,
    key: &'static str,
    explicit: &Option<String>,
    default: T,
) -> Result<T> {
    match m.optional(key, explicit.clone()) {
        Some(name) => name.parse().map_err(|e| m.error(key, e)),
        None => Ok(default),
    }
}

/// The scheduler_config.json fields that ask for a variant this crate does not implement: (the
/// scheduler each applies to, the field, its value). Only the fields of the multistep solvers whose
/// diffusers defaults pipe follows are read.
fn unsupported_variants(value: &serde_json::Value) -> Vec<(&'static str, &'static str, String)> {
    let checks: [(&str, &str, serde_json::Value); 7] = [
        ("unipc", "solver_order", 2.into()),
        ("unipc", "solver_type", "bh2".into()),
        ("unipc", "predict_x0", true.into()),
        ("unipc", "disable_corrector", serde_json::json!([])),
        ("dpm++2m", "solver_order", 2.into()),
        ("dpm++2m", "algorithm_type", "dpmsolver++".into()),
        ("dpm++2m", "solver_type", "midpoint".into()),
    ];
    checks
        .into_iter()
        .filter_map(|(kind, field, wanted)| match value.get(field) {
            Some(v) if !v.is_null() && *v != wanted => Some((kind, field, v.to_string())),
            _ => None,
        })
        .collect()
}

/// What pipe implements of each multistep solver, for the error above.
fn default_variant(kind: &str) -> &'static str {
    match kind {
        "unipc" => "solver_order 2, solver_type \"bh2\", predict_x0, no disabled corrector",
        _ => "solver_order 2, algorithm_type \"dpmsolver++\", solver_type \"midpoint\"",
    }
}

/// The parts of `model` that model.diffuse reads: the noise-prediction model file, and, in a
/// diffusers/optimum folder, the scheduler's config and the VAE's scaling factor.
#[derive(Debug, Default)]
pub(crate) struct ModelFolder {
    pub(crate) model: PathBuf,
    pub(crate) scheduler_config: Option<PathBuf>,
    pub(crate) scaling_factor: Option<f64>,
}

impl ModelFolder {
    /// Reads `path`: a folder with model_index.json is a diffusers/optimum export (unet/model.onnx,
    /// scheduler/scheduler_config.json, vae_decoder/ or vae/config.json); a folder with model.onnx
    /// is that file; anything else is the model file itself.
    pub(crate) fn open(path: PathBuf) -> Result<ModelFolder> {
        if !path.is_dir() {
            return Ok(ModelFolder { model: path, ..Default::default() });
        }
        if !path.join("model_index.json").is_file() {
            let inside = path.join("model.onnx");
            return Ok(ModelFolder { model: if inside.is_file() { inside } else { path }, ..Default::default() });
        }
        let unet = path.join("unet/model.onnx");
        if !unet.is_file() {
            return Err(Error::config(
                "model",
                format!("{} has model_index.json but no unet/model.onnx", path.display()),
            )
            .with_hint("export the pipeline with optimum (`optimum-cli export onnx`), which writes unet/model.onnx"));
        }
        let scheduler = path.join("scheduler/scheduler_config.json");
        let mut scaling_factor = None;
        for vae in ["vae_decoder/config.json", "vae/config.json"] {
            let file = path.join(vae);
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::config("model", format!("{}: {e}", file.display())))?;
            if let Some(f) = v.get("scaling_factor").and_then(serde_json::Value::as_f64) {
                if !(f.is_finite() && f > 0.0) {
                    return Err(Error::config(
                        "model",
                        format!("{}: scaling_factor {f} is not positive", file.display()),
                    ));
                }
                scaling_factor = Some(f);
                break;
            }
        }
        Ok(ModelFolder { model: unet, scheduler_config: scheduler.is_file().then_some(scheduler), scaling_factor })
    }
}

/// The diffusers scheduler classes this stage implements, with their `scheduler` names.
const CLASSES: [(&str, &str); 9] = [
    ("DDPMScheduler", "ddpm"),
    ("DDIMScheduler", "ddim"),
    ("EulerDiscreteScheduler", "euler"),
    ("EulerAncestralDiscreteScheduler", "euler-a"),
    ("DPMSolverMultistepScheduler", "dpm++2m"),
    ("PNDMScheduler", "pndm"),
    ("LMSDiscreteScheduler", "lms"),
    ("HeunDiscreteScheduler", "heun"),
    ("UniPCMultistepScheduler", "unipc"),
];

/// The scheduler of a diffusers `_class_name`, when it is one this stage implements.
fn class_kind(class: &str) -> Option<String> {
    CLASSES.iter().find(|(c, _)| *c == class).map(|(_, k)| k.to_string())
}
