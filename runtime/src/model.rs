//! A loaded model: one ORT session built on the process's ONNX Runtime, its input and output
//! signatures, and one run from [`Feed`]s to [`Fetched`] outputs.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use pipeline::{Context, Error, Result, ResultExt};

use crate::session::SessionOptions;
use crate::tensor::{Feed, Fetched, fetch, owned};

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
    /// The intra-op threads the session was built with.
    pub threads: usize,
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

/// An ONNX Runtime error on the model at `path`, kept as ORT gave it.
fn ort_err(path: &Path, e: ort::Error) -> Error {
    Error::external("ONNX Runtime", e).context(Context::File(path.to_path_buf()))
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
        let runtime = crate::library::onnxruntime(options.runtime.as_deref())?;
        let params = &options.params;
        let mut warnings = Vec::new();
        let threads = options.threads(path);
        if threads == 0 || threads > 1024 {
            return Err(Error::msg(format!(
                "threads = {threads}: give between 1 and 1024 (or leave it out: all cores)"
            )));
        }
        let builder = Session::builder(runtime.environment())
            .and_then(|b| b.with_optimization_level(params.optimization.level()).map_err(Into::into))
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            .map_err(|e| ort_err(path, e))?;
        let mut builder = crate::providers::register(builder, &params.providers, runtime, &mut warnings);
        let session = builder.commit_from_file(path).map_err(|e| ort_err(path, e))?;
        let inputs = session.inputs().iter().map(|o| signature(o.name(), o.dtype())).collect();
        let outputs = session.outputs().iter().map(|o| signature(o.name(), o.dtype())).collect();
        Ok(Model { path: path.to_path_buf(), inputs, outputs, warnings, threads, session })
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
            let e = |e: ort::Error| {
                Error::external("ONNX Runtime", e)
                    .context(Context::Doing(format!("input `{label}`")))
                    .context(Context::File(path.clone()))
            };
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
                let value = outputs
                    .get(name)
                    .ok_or_else(|| Error::msg(format!("no output `{name}`")).context(Context::File(path.clone())))?;
                fetch(value).map_err(Error::msg).doing(|| format!("output `{name}`")).file(path.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_not_a_model_and_says_what_it_holds() {
        let dir = std::env::temp_dir().join(format!("pipe-runtime-model-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/decoder.onnx"), b"").unwrap();
        let text = not_a_model_file(&dir);
        assert!(text.ends_with("is a folder, not an .onnx file; it holds sub/decoder.onnx"), "{text}");
        assert!(not_a_model_file(&dir.join("missing.onnx")).ends_with("does not exist"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
