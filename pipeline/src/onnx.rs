//! ONNX models: sessions built on the process's ONNX Runtime, their signatures, and the bridge
//! from Arrow tensor columns to ORT tensors. Float32 inputs are fed as views of the Arrow buffers
//! and float32 outputs copied out in one slice copy, with no per-element loops.
//!
//! Execution providers never fail silently: a provider that cannot be registered is reported as
//! a warning naming it, and the session runs on the next one (the CPU at the end).

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
pub use ort::value::TensorElementType;
use ort::value::{DynValue, TensorRef, ValueType};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Graph optimization level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    /// No graph optimizations.
    Disable,
    /// Constant folding and redundant-node removal.
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, including layout optimizations.
    #[default]
    All,
}

/// An execution provider to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The CPU (always available).
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT.
    Tensorrt,
}

/// How to build a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Providers to try, in order; the CPU is always the last resort.
    pub providers: Vec<Provider>,
    /// Intra-op threads; all cores when absent.
    pub threads: Option<usize>,
    /// Graph optimization level.
    pub optimization: Optimization,
    /// `[runtime] onnxruntime`, if set.
    pub runtime: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { providers: vec![Provider::Cpu], threads: None, optimization: Optimization::All, runtime: None }
    }
}

impl SessionOptions {
    /// The options of a model stage: its `providers`, `threads` and `optimization` keys, and the
    /// pipeline's `[runtime] onnxruntime` resolved against the pipeline file's folder.
    pub fn for_stage(
        providers: &[Provider],
        threads: Option<usize>,
        optimization: Optimization,
        cx: &crate::plugin::BuildContext,
    ) -> Self {
        Self {
            providers: providers.to_vec(),
            threads,
            optimization,
            runtime: cx.runtime.onnxruntime.as_ref().map(|r| cx.resolve(r)),
        }
    }
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// The ONNX name.
    pub name: String,
    /// Element type.
    pub element: TensorElementType,
    /// Dimensions; -1 where dynamic.
    pub shape: Vec<i64>,
}

impl Signature {
    /// The element type as ONNX names it ("float32", "int64", ...).
    pub fn element_name(&self) -> String {
        element_name(self.element)
    }

    /// The shape as text, `?` for dynamic dimensions.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| if *d < 0 { "?".into() } else { d.to_string() }).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// ONNX's name of an element type.
pub fn element_name(t: TensorElementType) -> String {
    match t {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Bool => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Input data for one run: a shape and values of the input's element type.
#[derive(Debug)]
pub enum Feed<'a> {
    /// float32, borrowed (a view of an Arrow buffer).
    F32(Vec<i64>, &'a [f32]),
    /// float32, owned (padded or converted).
    F32Owned(Vec<i64>, Vec<f32>),
    /// int64.
    I64(Vec<i64>, Vec<i64>),
    /// int32.
    I32(Vec<i64>, Vec<i32>),
    /// uint8.
    U8(Vec<i64>, Vec<u8>),
    /// bool.
    Bool(Vec<i64>, Vec<bool>),
}

/// A model output, as float32 values with its shape.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Output dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// A loaded model: one ORT session, reused for every run.
pub struct Model {
    /// The model file.
    pub path: PathBuf,
    /// Its inputs.
    pub inputs: Vec<Signature>,
    /// Its outputs.
    pub outputs: Vec<Signature>,
    /// Provider fallbacks and similar notes, for the user.
    pub warnings: Vec<String>,
    session: Session,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).field("inputs", &self.inputs).finish()
    }
}

/// Why `path` cannot be opened as a model file, in words: a folder (naming the .onnx files it
/// holds), a symlink loop, a broken link, or nothing there.
pub fn not_a_model_file(path: &Path) -> String {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut found: Vec<String> = walk_onnx(path, 2);
            found.sort();
            found.truncate(5);
            if found.is_empty() {
                format!("model {shown} is a folder, not an .onnx file, and holds no .onnx file")
            } else {
                format!("model {shown} is a folder, not an .onnx file; it holds {}", found.join(", "))
            }
        }
        Ok(_) => format!("model {shown} is not a regular file"),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => format!("model {shown} is a symlink loop"),
        Err(_) if path.symlink_metadata().is_ok() => format!("model {shown} is a broken symlink"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!("model file {shown} does not exist"),
        Err(e) => format!("model file {shown} cannot be read: {e}"),
    }
}

/// The .onnx files under `dir`, up to `depth` folders down, as paths relative to it.
fn walk_onnx(dir: &Path, depth: usize) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten().take(1000) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && depth > 1 {
            out.extend(walk_onnx(&path, depth - 1).into_iter().map(|f| format!("{name}/{f}")));
        } else if name.ends_with(".onnx") {
            out.push(name);
        }
    }
    out
}

fn ort_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("{}: {e}", path.display()))
}

fn level(o: Optimization) -> GraphOptimizationLevel {
    match o {
        Optimization::Disable => GraphOptimizationLevel::Disable,
        Optimization::Basic => GraphOptimizationLevel::Level1,
        Optimization::Extended => GraphOptimizationLevel::Level2,
        Optimization::All => GraphOptimizationLevel::Level3,
    }
}

fn signature(name: &str, t: &ValueType) -> Signature {
    match t {
        ValueType::Tensor { ty, shape, .. } => {
            Signature { name: name.to_string(), element: *ty, shape: shape.to_vec() }
        }
        _ => Signature { name: name.to_string(), element: TensorElementType::String, shape: Vec::new() },
    }
}

impl Model {
    /// Loads a model file into a session.
    pub fn load(path: &Path, options: &SessionOptions) -> Result<Model> {
        if !path.is_file() {
            return Err(Error::msg(not_a_model_file(path)));
        }
        let runtime = crate::runtime::onnxruntime(options.runtime.as_deref())?;
        let mut warnings = Vec::new();
        let threads = options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 || threads > 1024 {
            return Err(Error::msg(format!(
                "threads = {threads}: give between 1 and 1024 (or leave it out: all cores)"
            )));
        }
        let mut builder = Session::builder(runtime.environment())
            .and_then(|b| b.with_optimization_level(level(options.optimization)).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            .map_err(|e| ort_err(path, e))?;
        builder = register_providers(builder, &options.providers, &runtime.providers, &mut warnings)?;
        let session = builder.commit_from_file(path).map_err(|e| ort_err(path, e))?;
        let inputs = session.inputs().iter().map(|o| signature(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| signature(o.name(), o.dtype())).collect();
        Ok(Model { path: path.to_path_buf(), inputs, outputs, warnings, session })
    }

    /// The input called `name`.
    pub fn input(&self, name: &str) -> Option<&Signature> {
        self.inputs.iter().find(|s| s.name == name)
    }

    /// The output called `name`.
    pub fn output(&self, name: &str) -> Option<&Signature> {
        self.outputs.iter().find(|s| s.name == name)
    }

    /// The ORT session, for loops that keep outputs on the runtime's side between runs (a
    /// generation loop moves each step's KV-cache outputs into the next step's inputs).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Runs the model and returns the requested outputs as float32, in the order asked.
    pub fn run(&mut self, feeds: Vec<(String, Feed<'_>)>, wanted: &[String]) -> Result<Vec<Fetched>> {
        let path = self.path.clone();
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(feeds.len());
        let mut views: Vec<(String, TensorRef<'_, f32>)> = Vec::new();
        for (name, feed) in feeds {
            let label = name.clone();
            let e = |e: ort::Error| ort_err(&path, format!("input `{label}`: {e}"));
            let value = match feed {
                Feed::F32(shape, data) => {
                    views.push((name, TensorRef::from_array_view((shape, data)).map_err(e)?));
                    continue;
                }
                Feed::F32Owned(shape, data) => owned(shape, data),
                Feed::I64(shape, data) => owned(shape, data),
                Feed::I32(shape, data) => owned(shape, data),
                Feed::U8(shape, data) => owned(shape, data),
                Feed::Bool(shape, data) => owned(shape, data),
            };
            values.push((name, value.map_err(e)?));
        }
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
            views.into_iter().map(|(n, v)| (n, v.into())).collect();
        inputs.extend(values.into_iter().map(|(n, v)| (n, v.into())));
        let outputs = self.session.run(inputs).map_err(|e| ort_err(&path, e))?;
        wanted
            .iter()
            .map(|name| {
                let value = outputs.get(name).ok_or_else(|| ort_err(&path, format!("no output `{name}`")))?;
                fetch(value).map_err(|e| ort_err(&path, format!("output `{name}`: {e}")))
            })
            .collect()
    }
}

/// An owned ORT tensor of `shape` holding `data`.
fn owned<T>(shape: Vec<i64>, data: Vec<T>) -> ort::Result<DynValue>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    Ok(ort::value::Tensor::from_array((shape, data))?.into_dyn())
}

/// Copies an output tensor out as float32.
fn fetch(value: &DynValue) -> std::result::Result<Fetched, String> {
    let shape = |s: &ort::value::Shape| s.iter().map(|d| *d as usize).collect::<Vec<_>>();
    if let Ok((s, data)) = value.try_extract_tensor::<f32>() {
        return Ok(Fetched { shape: shape(s), values: data.to_vec() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<i64>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| *v as f32).collect() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<i32>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| *v as f32).collect() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<u8>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| *v as f32).collect() });
    }
    if let Ok((s, data)) = value.try_extract_tensor::<bool>() {
        return Ok(Fetched { shape: shape(s), values: data.iter().map(|v| u8::from(*v) as f32).collect() });
    }
    Err("element type not supported (float32, int64, int32, uint8 and bool are)".into())
}

/// Registers the requested providers in order; one that is not available is a warning, never
/// a silent fallback.
fn register_providers(
    mut builder: SessionBuilder,
    wanted: &[Provider],
    available: &[String],
    warnings: &mut Vec<String>,
) -> Result<SessionBuilder> {
    for provider in wanted {
        let (name, ep) = match provider {
            Provider::Cpu => continue,
            Provider::Cuda => ("CUDAExecutionProvider", accelerator(*provider)),
            Provider::Tensorrt => ("TensorrtExecutionProvider", accelerator(*provider)),
        };
        if !available.iter().any(|a| a == name) {
            warnings.push(format!(
                "execution provider {name} is not in this ONNX Runtime library (it has {}); falling back",
                available.join(", ")
            ));
            continue;
        }
        let Some(ep) = ep else {
            warnings.push(format!("this build of pipe cannot register {name}; falling back"));
            continue;
        };
        builder = match builder.with_execution_providers([ep.error_on_failure()]) {
            Ok(b) => b,
            Err(e) => {
                warnings.push(format!("execution provider {name} failed to register: {e}; falling back"));
                e.recover()
            }
        };
    }
    Ok(builder)
}

/// The dispatch for an accelerator provider, when this build has it.
fn accelerator(_provider: Provider) -> Option<ort::ep::ExecutionProviderDispatch> {
    None
}
