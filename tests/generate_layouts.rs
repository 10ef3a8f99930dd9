//! model.generate on each decoder layout Hugging Face optimum exports: the merged decoder
//! (`use_cache_branch`), the legacy three-file folder, float16 models, and a model without
//! `position_ids`. tests/fixtures/decoders/make_fixtures.py builds one tiny decoder in each layout
//! and writes the tokens a Python onnxruntime loop generates with it, one prompt at a time
//! (reference.json); `pipe run` must give exactly those, greedy and beam search, a prompt at a
//! time and in batches of prompts of different lengths.

mod common;

use std::path::{Path, PathBuf};

use arrow::array::{Array, Int32Array, ListArray, StringArray};
use common::{pipe_output, read_parquet, repo, text, write};
use serde_json::Value;

const LAYOUTS: [&str; 4] = ["merged", "three-file", "fp16", "no-position-ids"];

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/decoders")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn ints(v: &Value) -> Vec<i32> {
    v.as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect()
}

/// Prompts (token ids) in `prompts.jsonl`, through model.generate with `keys`, into out.parquet.
fn pipeline(keys: &str, batch_size: usize) -> String {
    format!(
        r#"[pipeline]
name = "layouts"
batch_size = {batch_size}

[[stage]]
id = "prompts"
uses = "collect.table"
path = "prompts.jsonl"
id_column = "id"

[[stage]]
id = "generate"
uses = "model.generate"
threads = 1
prompt_ids = "ids"
{keys}

[[stage]]
id = "save"
uses = "sink.table"
path = "out.parquet"
"#
    )
}

/// The `tokens` of each row (prompt and continuation) after `pipe run` in `dir`.
fn generate(dir: &Path, prompts: &[Vec<i32>], keys: &str, batch_size: usize) -> Vec<Vec<i32>> {
    let lines: String =
        prompts.iter().enumerate().map(|(i, p)| format!("{{\"id\": \"{i}\", \"ids\": {p:?}}}\n")).collect();
    write(dir, "prompts.jsonl", lines);
    write(dir, "p.toml", pipeline(keys, batch_size));
    let out = pipe_output(&["run", "p.toml", "--quiet"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let batch = read_parquet(&dir.join("out/out.parquet"));
    let ids = batch.column_by_name("id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(
        (0..ids.len()).map(|r| ids.value(r).to_string()).collect::<Vec<_>>(),
        (0..prompts.len()).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    let list = batch.column_by_name("tokens").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
    (0..list.len()).map(|r| list.value(r).as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec()).collect()
}

fn prompts(reference: &Value) -> Vec<Vec<i32>> {
    reference["prompts"].as_array().unwrap().iter().map(ints).collect()
}

#[test]
fn greedy_search_gives_the_reference_tokens_in_every_layout() {
    let reference = reference();
    let prompts = prompts(&reference);
    let new = reference["greedy"]["max_new_tokens"].as_u64().unwrap();
    for layout in LAYOUTS {
        let expected: Vec<Vec<i32>> =
            reference["layouts"][layout]["greedy"].as_array().unwrap().iter().map(ints).collect();
        // EOS comes from the folder's config files: some rows stop early, some run to the budget.
        assert!(expected.iter().zip(&prompts).any(|(e, p)| e.len() < p.len() + new as usize), "{layout}");
        let keys = format!("model = \"{}\"\nmax_new_tokens = {new}", fixtures().join(layout).display());
        for batch_size in [1, 4] {
            let dir = tempfile::tempdir().unwrap();
            let got = generate(dir.path(), &prompts, &keys, batch_size);
            assert_eq!(got, expected, "{layout}, batch size {batch_size}");
        }
    }
}

#[test]
fn beam_search_gives_the_reference_tokens_in_every_layout() {
    let reference = reference();
    let prompts = prompts(&reference);
    let beam = &reference["beam"];
    for layout in LAYOUTS {
        let expected: Vec<Vec<i32>> =
            reference["layouts"][layout]["beam"].as_array().unwrap().iter().map(ints).collect();
        let keys = format!(
            "model = \"{}\"\nmax_new_tokens = {}\nnum_beams = {}\nlength_penalty = {:?}",
            fixtures().join(layout).display(),
            beam["max_new_tokens"],
            beam["num_beams"],
            beam["length_penalty"].as_f64().unwrap()
        );
        for batch_size in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let got = generate(dir.path(), &prompts, &keys, batch_size);
            assert_eq!(got, expected, "{layout}, batch size {batch_size}");
        }
    }
}

/// A folder holding the three-file layout runs decoder_model.onnx for the first step: a folder
/// whose decoder_model.onnx is not a model fails naming it, and one without it runs
/// decoder_with_past_model.onnx alone (empty pasts on the first step) to the same tokens.
#[test]
fn the_three_file_layout_loads_both_files() {
    let reference = reference();
    let prompts = prompts(&reference);
    let new = reference["greedy"]["max_new_tokens"].as_u64().unwrap();
    let expected: Vec<Vec<i32>> =
        reference["layouts"]["three-file"]["greedy"].as_array().unwrap().iter().map(ints).collect();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    std::fs::create_dir(&folder).unwrap();
    for name in ["config.json", "generation_config.json", "decoder_with_past_model.onnx"] {
        std::fs::copy(fixtures().join("three-file").join(name), folder.join(name)).unwrap();
    }
    let keys = format!("model = \"m\"\nmax_new_tokens = {new}");
    assert_eq!(generate(dir.path(), &prompts, &keys, 4), expected);

    write(&folder, "decoder_model.onnx", "not a model");
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("decoder_model.onnx") && t.contains("generate"), "{t}");
}

#[test]
fn a_folder_without_a_decoder_is_an_error_naming_it_and_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("empty-model");
    write(&folder, "config.json", r#"{"eos_token_id": 1}"#);
    write(dir.path(), "prompts.jsonl", "{\"id\": \"0\", \"ids\": [1, 2]}\n");
    write(dir.path(), "p.toml", pipeline("model = \"empty-model\"", 2));
    let out = pipe_output(&["validate", "p.toml"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("empty-model holds no decoder"), "{t}");
    for name in ["model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"] {
        assert!(t.contains(name), "{name}: {t}");
    }
    assert!(t.contains("p.toml:16:9"), "placed at `model`: {t}");
}

#[test]
fn the_plugin_doc_names_the_layouts() {
    let out = pipe_output(&["plugins", "model.generate"], &repo());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for name in
        ["decoder_model_merged.onnx", "use_cache_branch", "decoder_with_past_model.onnx", "float16", "position_ids"]
    {
        assert!(t.contains(name), "{name}: {t}");
    }
}
