//! A model as users have it: an .onnx file, or a folder holding one beside genai_config.json
//! (onnxruntime-genai exports) or config.json / generation_config.json (Hugging Face exports),
//! whose token ids and search settings become the stage's defaults. A folder in one of optimum's
//! layouts is found by its file names: `model.onnx`, `decoder_model_merged.onnx`, or the legacy
//! pair `decoder_model.onnx` (the first step) and `decoder_with_past_model.onnx` (the steps after).

use std::path::{Path, PathBuf};

use pipe_runtime::Merge;
use serde_json::Value;

/// The model file and its folder's settings.
#[derive(Debug)]
pub struct ModelFolder {
    /// The decoder for every step, or for every step after the first when `first` is given.
    pub model: PathBuf,
    /// optimum's legacy `decoder_model.onnx`, for the first step (no past), beside
    /// `decoder_with_past_model.onnx` in `model`.
    pub first: Option<PathBuf>,
    /// The folder whose config files were read.
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
        let (model, first, dir) = if path.is_dir() {
            let genai = read_json(&path.join("genai_config.json"))?;
            let named = genai
                .as_ref()
                .and_then(|g| g.pointer("/model/decoder/filename"))
                .and_then(Value::as_str)
                .map(|f| path.join(f));
            let (model, first) = match named {
                Some(m) => (m, None),
                None => find_decoder(path)?,
            };
            (model, first, path.to_path_buf())
        } else if path.is_file() {
            (path.to_path_buf(), None, path.parent().map(Path::to_path_buf).unwrap_or_default())
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
        Ok(ModelFolder { model, first, dir, values })
    }
}

/// The decoder files a folder is searched for, in this order, as the error for a folder holding
/// none of them lists them.
const LOOKED_FOR: &str = "model.onnx, decoder_model_merged.onnx, decoder_model.onnx with \
                          decoder_with_past_model.onnx, either of those two alone, or a single .onnx file";

/// The decoder of a folder in one of optimum's layouts (the merged decoder before the legacy
/// pair, as optimum's own loader prefers it), else its only .onnx file: (the model for every
/// step or every step after the first, the model for the first step).
fn find_decoder(dir: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
    let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    if let Some(m) = file("model.onnx").or_else(|| file("decoder_model_merged.onnx")) {
        return Ok((m, None));
    }
    match (file("decoder_with_past_model.onnx"), file("decoder_model.onnx")) {
        (Some(with_past), first) => return Ok((with_past, first)),
        (None, Some(plain)) => return Ok((plain, None)),
        (None, None) => {}
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok((found.remove(0), None)),
        0 => Err(format!("{} holds no decoder: looked for {LOOKED_FOR}", dir.display())),
        _ => Err(format!(
            "{} holds several .onnx files ({}) and no decoder by name (looked for {LOOKED_FOR}); \
             name one, or add genai_config.json",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/decoders").join(name)
    }

    #[test]
    fn optimum_layouts_are_found_by_their_file_names() {
        let merged = ModelFolder::open(&fixture("merged")).unwrap();
        assert!(merged.model.ends_with("decoder_model_merged.onnx") && merged.first.is_none());
        let three = ModelFolder::open(&fixture("three-file")).unwrap();
        assert!(three.model.ends_with("decoder_with_past_model.onnx"));
        assert!(three.first.unwrap().ends_with("decoder_model.onnx"));
        // OPT's config names: hidden_size / num_attention_heads give the cache's head size.
        let mut opt = ModelFolder::open(&fixture("no-position-ids")).unwrap().values;
        assert_eq!(opt.optional::<usize>("kv_heads", None), Some(2));
        assert_eq!(opt.optional::<usize>("head_size", None), Some(4));
        assert_eq!(opt.optional::<i64>("pad_token_id", None), Some(1));
    }

    #[test]
    fn a_folder_without_a_decoder_lists_what_was_looked_for() {
        let dir = std::env::temp_dir().join(format!("pipe-generate-no-decoder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = ModelFolder::open(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.starts_with(&format!("{} holds no decoder: looked for model.onnx,", dir.display())), "{e}");
        assert!(e.contains("decoder_model.onnx with decoder_with_past_model.onnx"), "{e}");
    }
}
