//! A model as users have it: an .onnx file, or a folder holding one beside genai_config.json
//! (onnxruntime-genai exports) or config.json / generation_config.json (Hugging Face exports),
//! whose token ids and search settings become the stage's defaults.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Settings a model folder may supply; every field is optional.
#[derive(Debug, Default, Clone)]
pub struct Defaults {
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub max_length: Option<usize>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    /// KV-cache heads and head size, for models whose cache inputs leave them dynamic.
    pub kv_heads: Option<usize>,
    pub head_size: Option<usize>,
    /// Which files the defaults came from, for messages.
    pub sources: Vec<PathBuf>,
}

/// The model file and its folder's defaults.
#[derive(Debug)]
pub struct ModelFolder {
    pub model: PathBuf,
    pub dir: PathBuf,
    pub defaults: Defaults,
}

impl ModelFolder {
    /// Resolves `path` (a file or a folder) and reads the folder's config files.
    pub fn open(path: &Path) -> Result<ModelFolder, String> {
        let mut defaults = Defaults::default();
        let (model, dir) = if path.is_dir() {
            let genai = read_json(&path.join("genai_config.json"))?;
            let named = genai
                .as_ref()
                .and_then(|g| g.pointer("/model/decoder/filename"))
                .and_then(Value::as_str)
                .map(|f| path.join(f));
            let model = match named {
                Some(m) => m,
                None if path.join("model.onnx").is_file() => path.join("model.onnx"),
                None => only_onnx(path)?,
            };
            (model, path.to_path_buf())
        } else if path.is_file() {
            (path.to_path_buf(), path.parent().map(Path::to_path_buf).unwrap_or_default())
        } else {
            return Err(pipe_runtime::not_a_model_file(path));
        };
        if !model.is_file() {
            return Err(format!("model file {} does not exist", model.display()));
        }
        for name in ["config.json", "generation_config.json"] {
            let file = dir.join(name);
            if let Some(json) = read_json(&file)? {
                hf_defaults(&json, &mut defaults);
                defaults.sources.push(file);
            }
        }
        let file = dir.join("genai_config.json");
        if let Some(json) = read_json(&file)? {
            genai_defaults(&json, &mut defaults);
            defaults.sources.push(file);
        }
        Ok(ModelFolder { model, dir, defaults })
    }
}

fn only_onnx(dir: &Path) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("{} holds no .onnx file", dir.display())),
        _ => Err(format!(
            "{} holds several .onnx files ({}); name one, or add genai_config.json",
            dir.display(),
            found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64)
}

fn ints(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        Some(v) => v.as_i64().into_iter().collect(),
        None => Vec::new(),
    }
}

fn float(v: Option<&Value>) -> Option<f32> {
    v.and_then(Value::as_f64).map(|f| f as f32)
}

fn usize_of(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64).map(|n| n as usize)
}

/// Fields of a Hugging Face config.json or generation_config.json (later files override).
fn hf_defaults(json: &Value, d: &mut Defaults) {
    d.bos_token_id = int(json.get("bos_token_id")).or(d.bos_token_id);
    let eos = ints(json.get("eos_token_id"));
    if !eos.is_empty() {
        d.eos_token_id = eos;
    }
    d.pad_token_id = int(json.get("pad_token_id")).or(d.pad_token_id);
    d.max_length = usize_of(json.get("max_length")).or(d.max_length);
    d.do_sample = json.get("do_sample").and_then(Value::as_bool).or(d.do_sample);
    d.temperature = float(json.get("temperature")).or(d.temperature);
    d.top_k = usize_of(json.get("top_k")).or(d.top_k);
    d.top_p = float(json.get("top_p")).or(d.top_p);
    d.repetition_penalty = float(json.get("repetition_penalty")).or(d.repetition_penalty);
    d.num_beams = usize_of(json.get("num_beams")).or(d.num_beams);
    d.length_penalty = float(json.get("length_penalty")).or(d.length_penalty);
    let heads = usize_of(json.get("n_head").or(json.get("num_attention_heads")));
    let kv_heads = usize_of(json.get("num_key_value_heads")).or(heads);
    let hidden = usize_of(json.get("n_embd").or(json.get("hidden_size")));
    d.kv_heads = kv_heads.or(d.kv_heads);
    d.head_size = usize_of(json.get("head_dim")).or(heads.zip(hidden).map(|(h, e)| e / h.max(1))).or(d.head_size);
}

/// Fields of an onnxruntime-genai genai_config.json.
fn genai_defaults(json: &Value, d: &mut Defaults) {
    let model = json.get("model").unwrap_or(&Value::Null);
    d.bos_token_id = int(model.get("bos_token_id")).or(d.bos_token_id);
    let eos = ints(model.get("eos_token_id"));
    if !eos.is_empty() {
        d.eos_token_id = eos;
    }
    d.pad_token_id = int(model.get("pad_token_id")).or(d.pad_token_id);
    let decoder = model.get("decoder").unwrap_or(&Value::Null);
    d.kv_heads = usize_of(decoder.get("num_key_value_heads")).or(d.kv_heads);
    d.head_size = usize_of(decoder.get("head_size")).or(d.head_size);
    let search = json.get("search").unwrap_or(&Value::Null);
    d.max_length = usize_of(search.get("max_length")).or(d.max_length);
    d.do_sample = search.get("do_sample").and_then(Value::as_bool).or(d.do_sample);
    d.temperature = float(search.get("temperature")).or(d.temperature);
    d.top_k = usize_of(search.get("top_k")).or(d.top_k);
    d.top_p = float(search.get("top_p")).or(d.top_p);
    d.repetition_penalty = float(search.get("repetition_penalty")).or(d.repetition_penalty);
    d.num_beams = usize_of(search.get("num_beams")).or(d.num_beams);
    d.length_penalty = float(search.get("length_penalty")).or(d.length_penalty);
}
