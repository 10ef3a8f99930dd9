//! A model as users have it: an .onnx file, or a folder holding one beside genai_config.json
//! (onnxruntime-genai exports) or config.json / generation_config.json (Hugging Face exports),
//! whose token ids and search settings become the stage's defaults.

use std::path::{Path, PathBuf};

use pipe_runtime::Merge;
use serde_json::Value;

/// The model file and its folder's settings.
#[derive(Debug)]
pub struct ModelFolder {
    pub model: PathBuf,
    pub dir: PathBuf,
    /// The values the folder's config files give for the stage's keys (and `kv_heads`,
    /// `head_size`: KV-cache heads and head size, for models whose cache inputs leave them
    /// dynamic), reported at `model`.
    pub values: Merge,
}

impl ModelFolder {
    /// Resolves `path` (a file or a folder) and reads the folder's config files; a later file's
    /// value replaces an earlier one's (config.json, generation_config.json, genai_config.json).
    pub fn open(path: &Path) -> Result<ModelFolder, String> {
        let mut values = Merge::new("model");
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
                hf_values(&json, &file, &mut values);
            }
        }
        let file = dir.join("genai_config.json");
        if let Some(json) = read_json(&file)? {
            genai_values(&json, &file, &mut values);
        }
        Ok(ModelFolder { model, dir, values })
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

/// The token ids under `ids` (`""` or `"model."`) and the search settings under `search` of a
/// config file, by the names of the stage's keys.
fn take_settings(json: &Value, path: &Path, values: &mut Merge, ids: &str, search: &str) {
    for key in ["bos_token_id", "pad_token_id"] {
        values.take::<i64>(key, json, path, &format!("{ids}{key}"));
    }
    // One id or a list of them; ids that are not integers are passed over.
    let field = format!("{ids}eos_token_id");
    let eos: Vec<i64> = match field.split('.').try_fold(json, |v, name| v.get(name)) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        Some(v) => v.as_i64().into_iter().collect(),
        None => Vec::new(),
    };
    if !eos.is_empty() {
        values.found("eos_token_id", eos, path, &field);
    }
    for key in ["max_length", "top_k", "num_beams"] {
        values.take::<usize>(key, json, path, &format!("{search}{key}"));
    }
    values.take::<bool>("do_sample", json, path, &format!("{search}do_sample"));
    for key in ["temperature", "top_p", "repetition_penalty", "length_penalty"] {
        values.take::<f32>(key, json, path, &format!("{search}{key}"));
    }
}

/// Fields of a Hugging Face config.json or generation_config.json.
fn hf_values(json: &Value, path: &Path, values: &mut Merge) {
    take_settings(json, path, values, "", "");
    let count = |field: &str| json.get(field).and_then(Value::as_u64).map(|n| n as usize);
    let heads_field = if json.get("n_head").is_some() { "n_head" } else { "num_attention_heads" };
    let hidden_field = if json.get("n_embd").is_some() { "n_embd" } else { "hidden_size" };
    let (heads, hidden) = (count(heads_field), count(hidden_field));
    if !values.take::<usize>("kv_heads", json, path, "num_key_value_heads")
        && let Some(h) = heads
    {
        values.found("kv_heads", h, path, heads_field);
    }
    if !values.take::<usize>("head_size", json, path, "head_dim")
        && let Some((h, e)) = heads.zip(hidden)
    {
        values.found("head_size", e / h.max(1), path, &format!("{hidden_field} / {heads_field}"));
    }
}

/// Fields of an onnxruntime-genai genai_config.json.
fn genai_values(json: &Value, path: &Path, values: &mut Merge) {
    take_settings(json, path, values, "model.", "search.");
    values.take::<usize>("kv_heads", json, path, "model.decoder.num_key_value_heads");
    values.take::<usize>("head_size", json, path, "model.decoder.head_size");
}
