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

/// A temporary folder with an empty `data` folder in it, and the digits example's images.
fn digits_folder() -> (tempfile::TempDir, std::path::PathBuf, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    (dir, data, common::dataset::example_digits())
}

/// Copies `files` into `data`, keeping their names.
fn copy_into(data: &Path, files: &[std::path::PathBuf]) {
    for file in files {
        std::fs::copy(file, data.join(file.file_name().unwrap())).unwrap();
    }
}

/// Makes the digits pipeline's table name its columns (`columns`, a TOML array).
fn name_columns(file: &Path, columns: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let named = format!("path = \"probs.parquet\"\ncolumns = {columns}\n");
    std::fs::write(file, text.replace("path = \"probs.parquet\"\n", &named)).unwrap();
}

#[test]
fn a_folder_that_gained_files_sends_only_the_new_ones_through_the_model() {
    let (dir, data, pngs) = digits_folder();
    assert!(pngs.len() >= 15, "the digits example has enough images");
    copy_into(&data, &pngs[..10]);
    let file = digits_pipeline(dir.path());
    let first = run(dir.path(), &file, "first", &[]);
    assert_eq!(cache_figures(&first), [("classify".to_string(), 0, 10)]);
    copy_into(&data, &pngs[10..15]);
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

/// (early hits of `classify`, rows `pixels` skipped, misses of `classify`).
fn early_figures(report: &serde_json::Value) -> (u64, u64, u64) {
    let stage = |id: &str| report["stages"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap().clone();
    let classify = stage("classify");
    let pixels = stage("pixels");
    (
        classify["cache"]["early_hits"].as_u64().unwrap_or(0),
        pixels["cache"]["skipped"].as_u64().unwrap_or(0),
        classify["cache"]["misses"].as_u64().unwrap(),
    )
}

#[test]
fn the_early_cut_off_skips_decoding_for_cached_rows_and_writes_the_same_bytes() {
    let (dir, data, pngs) = digits_folder();
    copy_into(&data, &pngs[..10]);
    // A file preprocess.image rejects: rejected again each run, never stored.
    std::fs::write(data.join("zz-broken.png"), b"not a png").unwrap();
    // The table names its columns, so the tensor made before the model is not needed after it.
    let file = digits_pipeline(dir.path());
    name_columns(&file, r#"["id", "path", "probs"]"#);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("[pipeline]\n", "[pipeline]\non_error = \"skip\"\n")).unwrap();

    let first = run(dir.path(), &file, "first", &[]);
    assert_eq!(early_figures(&first), (0, 0, 10), "{first}");
    assert_eq!(first["stages"][1]["rejected"], 1, "{first}");
    let again = run(dir.path(), &file, "again", &[]);
    assert_eq!(early_figures(&again), (10, 10, 0), "every row answered before decoding: {again}");
    assert_eq!(again["stages"][1]["rejected"], 1, "the broken file is read and rejected again: {again}");
    let table = |out: &str| std::fs::read(dir.path().join(out).join("probs.parquet")).unwrap();
    assert!(table("first") == table("again"), "the answered run's table differs");

    // A grown folder: the old rows skip the decoder, the new ones go through.
    copy_into(&data, &pngs[10..15]);
    let grown = run(dir.path(), &file, "grown", &[]);
    assert_eq!(early_figures(&grown), (10, 10, 5), "{grown}");
    let uncached = run(dir.path(), &file, "uncached", &["--no-cache"]);
    assert_eq!(early_figures(&uncached), (0, 0, 15), "--no-cache answers nothing: {uncached}");
    assert!(table("grown") == table("uncached"), "the grown run's table differs from an uncached run's");
    assert_eq!(read_parquet(&dir.path().join("grown/probs.parquet")).num_rows(), 15);

    // A file edited in place is made again, alone; a torn entry is made again too.
    std::fs::copy(&pngs[0], data.join(pngs[1].file_name().unwrap())).unwrap();
    let touched = run(dir.path(), &file, "touched", &[]);
    assert_eq!(early_figures(&touched), (14, 14, 1), "{touched}");
    // (The cut-off's store holds a pack for each batch a run stored, the rows of a run under
    // their file's stamp or their content: every pack is torn.)
    let key = touched["stages"][2]["cache"]["key"].as_str().unwrap().to_string();
    let mut torn = 0;
    for entry in walk(&dir.path().join("cache/rows")) {
        let in_stage_store = entry.to_string_lossy().contains(&key);
        if !in_stage_store && entry.extension().is_some_and(|e| e == "arrow") {
            std::fs::write(&entry, b"torn").unwrap();
            torn += 1;
        }
    }
    assert!(torn >= 3, "the cut-off's store is beside the stage's: {torn} packs (first, grown, touched)");
    let mended = run(dir.path(), &file, "mended", &[]);
    let (early, skipped, misses) = early_figures(&mended);
    assert_eq!((early, skipped), (0, 0), "{mended}");
    // The rows go through the decoder and are answered by the stage's own store.
    assert_eq!(misses, 0, "{mended}");
    assert!(table("mended") == table("touched"), "a torn entry changed the table");
    let again = run(dir.path(), &file, "mended-again", &[]);
    assert_eq!(early_figures(&again), (15, 15, 0), "the torn entries were made again: {again}");

    // A preprocess param changed: the cut-off's key changes with it.
    let text =
        std::fs::read_to_string(&file).unwrap().replace("size = [16, 16]", "size = [16, 16]\nfilter = \"nearest\"");
    std::fs::write(&file, text).unwrap();
    let other = run(dir.path(), &file, "other", &[]);
    assert_eq!(early_figures(&other).0, 0, "{other}");
}

/// Rows of `pixels` answered without reading their file.
fn unread(report: &serde_json::Value) -> u64 {
    let pixels = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "pixels").unwrap();
    pixels["cache"]["unread"].as_u64().unwrap_or(0)
}

#[test]
fn a_settled_folder_is_answered_without_reading_its_files() {
    let (dir, data, pngs) = digits_folder();
    copy_into(&data, &pngs[..10]);
    let file = digits_pipeline(dir.path());
    name_columns(&file, r#"["id", "path", "size", "probs"]"#);
    let table = |out: &str| std::fs::read(dir.path().join(out).join("probs.parquet")).unwrap();
    // Files changed in the last 2 seconds are read (their stamp could miss a change made in the
    // same tick of the clock); these are older.
    let settle = || std::thread::sleep(std::time::Duration::from_millis(2100));
    settle();
    let first = run(dir.path(), &file, "first", &[]);
    assert_eq!((early_figures(&first), unread(&first)), ((0, 0, 10), 0), "{first}");
    let again = run(dir.path(), &file, "again", &[]);
    assert_eq!((early_figures(&again), unread(&again)), ((10, 10, 0), 10), "no file read: {again}");
    assert!(table("first") == table("again"), "the unread run's table differs");

    // A file rewritten: its stamp changed, it is read and made again, alone.
    std::fs::copy(&pngs[0], data.join(pngs[1].file_name().unwrap())).unwrap();
    let edited = run(dir.path(), &file, "edited", &[]);
    assert_eq!((early_figures(&edited), unread(&edited)), ((9, 9, 1), 9), "{edited}");
    // Touched back to its old modification time, it still has a new change time: read again,
    // and answered by its content (stored when it was made), which its new stamp then learns.
    let old = std::fs::metadata(data.join(pngs[2].file_name().unwrap())).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(data.join(pngs[1].file_name().unwrap()))
        .unwrap()
        .set_modified(old)
        .unwrap();
    settle();
    let touched = run(dir.path(), &file, "touched", &[]);
    assert_eq!((early_figures(&touched), unread(&touched)), ((10, 10, 0), 9), "{touched}");
    let settled = run(dir.path(), &file, "settled", &[]);
    assert_eq!((early_figures(&settled), unread(&settled)), ((10, 10, 0), 10), "{settled}");
    let uncached = run(dir.path(), &file, "uncached", &["--no-cache"]);
    assert_eq!(unread(&uncached), 0, "--no-cache reads every file: {uncached}");
    assert!(table("settled") == table("uncached"), "the unread run's table differs from an uncached run's");
    assert!(table("edited") == table("uncached"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
