//! The per-row cache: an unchanged rerun makes no model call and writes the same bytes, a folder
//! that gained files sends only the new rows through the model, `--no-cache` computes every row,
//! and a changed seed or config is a miss.

mod common;

use std::path::Path;

use common::{pipe, read_parquet, repo, run_json, text};

/// Runs `pipe run FILE` in `dir` with the cache in `dir/cache`, output in `dir/OUT`, and `args`;
/// returns run.json.
fn run(dir: &Path, file: &Path, out: &str, args: &[&str]) -> serde_json::Value {
    let output = pipe()
        .args(["run", file.to_str().unwrap(), "--quiet", "--output-dir", dir.join(out).to_str().unwrap()])
        .args(args)
        .env("PIPE_CACHE_DIR", dir.join("cache"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    run_json(&dir.join(out))
}

/// Per cached stage: (hits, misses).
fn cache_figures(report: &serde_json::Value) -> Vec<(String, u64, u64)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cache"].is_object())
        .map(|s| {
            let c = &s["cache"];
            (s["id"].as_str().unwrap().to_string(), c["hits"].as_u64().unwrap(), c["misses"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn an_unchanged_rerun_of_the_showcase_makes_no_model_call_and_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = repo().join("pipeline.toml");
    let first = run(dir.path(), &file, "first", &[]);
    let figures = cache_figures(&first);
    let ids: Vec<&str> = figures.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids, ["generate", "classify"], "the model stages are cached: {first}");
    for (id, hits, misses) in &figures {
        assert_eq!(*hits, 0, "{id}: nothing is cached yet");
        // 80 rows and the retried ones again.
        assert!(*misses > 80, "{id}: {misses} rows computed");
    }
    let second = run(dir.path(), &file, "second", &[]);
    for ((id, hits, misses), (_, _, computed)) in cache_figures(&second).iter().zip(&figures) {
        assert_eq!(*misses, 0, "{id}: an unchanged rerun computes nothing: {second}");
        assert_eq!(hits, computed, "{id}: every row the first run computed is answered from the cache");
    }
    for name in ["samples.parquet", "grid.png"] {
        let a = std::fs::read(dir.path().join("first").join(name)).unwrap();
        let b = std::fs::read(dir.path().join("second").join(name)).unwrap();
        assert!(a == b, "{name} differs between the computed and the cached run");
    }
    // The retry figures come out the same: the rounds are part of each row's key.
    let retry = |r: &serde_json::Value| r["stages"].as_array().unwrap().iter().find(|s| s["id"] == "retry").cloned();
    assert_eq!(retry(&first).unwrap()["pass_rate_final"], retry(&second).unwrap()["pass_rate_final"]);

    // --no-cache computes every row again, and the outputs are still the same.
    let fresh = run(dir.path(), &file, "fresh", &["--no-cache"]);
    for ((id, hits, misses), (_, _, computed)) in cache_figures(&fresh).iter().zip(&figures) {
        assert_eq!((*hits, misses), (0, computed), "{id}: --no-cache reuses nothing");
    }
    let a = std::fs::read(dir.path().join("first/samples.parquet")).unwrap();
    assert!(a == std::fs::read(dir.path().join("fresh/samples.parquet")).unwrap());

    // Another seed draws other noise: the diffusion stage misses every row.
    let reseeded = run(dir.path(), &file, "reseeded", &["--set", "pipeline.seed=5"]);
    let generate = &cache_figures(&reseeded)[0];
    assert_eq!(generate.1, 0, "a new seed is a new key: {reseeded}");
}

/// collect.files over `data` -> preprocess.image -> the digit classifier -> sink.table.
fn digits_pipeline(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"[pipeline]
name = "digits-cache"
batch_size = 4

[[stage]]
id = "files"
uses = "collect.files"
path = "data"
include = ["*.png"]

[[stage]]
id = "pixels"
uses = "preprocess.image"
size = [16, 16]
mode = "gray"
scale = 0.00784313725490196
mean = [1.0]
std = [1.0]
drop_column = true

[[stage]]
id = "classify"
uses = "model.onnx"
model = "{model}"
outputs = {{ probs = "probs" }}

[[stage]]
id = "save"
uses = "sink.table"
path = "probs.parquet"
"#,
        model = repo().join("examples/models/digits-classifier/model.onnx").display()
    );
    common::write(dir, "p.toml", text)
}

#[test]
fn a_folder_that_gained_files_sends_only_the_new_ones_through_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut pngs: Vec<_> = std::fs::read_dir(repo().join("examples/digits/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    assert!(pngs.len() >= 15, "the digits example has enough images");
    for png in &pngs[..10] {
        std::fs::copy(png, data.join(png.file_name().unwrap())).unwrap();
    }
    let file = digits_pipeline(dir.path());
    let first = run(dir.path(), &file, "first", &[]);
    assert_eq!(cache_figures(&first), [("classify".to_string(), 0, 10)]);
    for png in &pngs[10..15] {
        std::fs::copy(png, data.join(png.file_name().unwrap())).unwrap();
    }
    let grown = run(dir.path(), &file, "grown", &[]);
    assert_eq!(cache_figures(&grown), [("classify".to_string(), 10, 5)], "only the 5 new files: {grown}");
    // Batches that mix cached and computed rows give the table a run without the cache writes.
    let uncached = run(dir.path(), &file, "uncached", &["--no-cache"]);
    assert_eq!(cache_figures(&uncached), [("classify".to_string(), 0, 15)]);
    let a = std::fs::read(dir.path().join("grown/probs.parquet")).unwrap();
    let b = std::fs::read(dir.path().join("uncached/probs.parquet")).unwrap();
    assert!(a == b, "the grown run's table differs from an uncached run's");
    assert_eq!(read_parquet(&dir.path().join("grown/probs.parquet")).num_rows(), 15);

    // A changed model config (another output mapped) misses; a file edited in place misses alone.
    let edited = std::fs::read_to_string(&file).unwrap().replace("probs = \"probs\"", "probs = \"p\"");
    std::fs::write(&file, edited).unwrap();
    let changed = run(dir.path(), &file, "changed", &[]);
    assert_eq!(cache_figures(&changed), [("classify".to_string(), 0, 15)]);
    std::fs::copy(&pngs[0], data.join(pngs[1].file_name().unwrap())).unwrap();
    let touched = run(dir.path(), &file, "touched", &[]);
    assert_eq!(cache_figures(&touched), [("classify".to_string(), 14, 1)], "{touched}");

    // `pipe cache list` shows the stores.
    let list = pipe().args(["cache", "list"]).env("PIPE_CACHE_DIR", dir.path().join("cache")).output().unwrap();
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    assert!(text(&list).contains("rows"), "{}", text(&list));
}
