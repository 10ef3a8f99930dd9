//! Every example pipeline, and the root showcase, validates and runs.

mod common;

use std::path::{Path, PathBuf};

use common::{pipe, read_parquet, repo, run_json, text};

fn pipelines() -> Vec<PathBuf> {
    let mut found = vec![repo().join("pipeline.toml")];
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path().join("pipeline.toml");
        if path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// `--set` overrides that keep an example quick in the suite; its README gives the full run.
fn quick_settings(path: &Path) -> &'static [&'static str] {
    match path.parent().and_then(Path::file_name).and_then(|name| name.to_str()) {
        Some("train-vae") => &["fit.params.epochs=1"],
        Some("train-diffusion") => &["fit.params.steps=20"],
        Some("train-gpt") => &["fit.params.steps=20"],
        _ => &[],
    }
}

/// `pipe run` of an example with its quick settings, writing into `out_dir` and caching (the
/// trainings) in `cache_dir`, so that nothing is left in the tree.
fn run_example(path: &Path, out_dir: &Path, cache_dir: &Path) -> std::process::Output {
    let quick = quick_settings(path).iter().flat_map(|setting| ["--set", setting]);
    let mut command = pipe();
    command.arg("run").arg(path).args(quick).arg("--output-dir").arg(out_dir).arg("--quiet");
    command.env("PIPE_CACHE_DIR", cache_dir).output().unwrap()
}

#[test]
fn every_example_validates_and_runs() {
    let found = pipelines();
    assert!(found.len() >= 3, "expected the showcase and at least two examples, found {found:?}");
    for path in found {
        let out = pipe().arg("validate").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}: {}", path.display(), text(&out));
        let (out_dir, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let out = run_example(&path, out_dir.path(), cache_dir.path());
        assert_eq!(out.status.code(), Some(0), "{}: {}", path.display(), text(&out));
        let report = run_json(out_dir.path());
        assert_eq!(report["status"], "ok", "{}", path.display());
        let last = report["stages"].as_array().unwrap().last().unwrap().clone();
        assert!(last["rows_in"].as_u64().unwrap() > 0, "{}: the last stage saw no rows", path.display());
    }
}

/// The VAE trained inside the pipeline: the trainer reports a falling loss and an ONNX export
/// equal to its JAX model, the freshly trained decoder's samples reach the classifier, and a
/// second run takes the models from the cache instead of training again.
#[test]
fn the_train_vae_example_trains_once_and_samples_the_result() {
    let path = repo().join("examples/train-vae/pipeline.toml");
    let cache_dir = tempfile::tempdir().unwrap();
    let stage = |report: &serde_json::Value, id: &str| {
        report["stages"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap().clone()
    };
    let mut keys = Vec::new();
    for expected in ["miss", "hit"] {
        let out_dir = tempfile::tempdir().unwrap();
        let out = run_example(&path, out_dir.path(), cache_dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report = run_json(out_dir.path());
        let fit = stage(&report, "fit");
        assert_eq!(fit["cache"], expected, "{fit}");
        keys.push(fit["key"].clone());
        let loss: Vec<f64> =
            fit["metrics"]["loss"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
        assert!(loss.len() >= 2 && loss.last() < loss.first(), "the loss falls: {loss:?}");
        assert!(fit["metrics"]["kl"].as_array().is_some_and(|kl| !kl.is_empty()), "{fit}");
        let diff = fit["metrics"]["onnx_max_abs_diff"][0][1].as_f64().unwrap();
        assert!(diff < 1e-4, "onnxruntime agrees with the JAX model: {diff}");
        assert_eq!(stage(&report, "classify")["rows_out"], 100);
        let table = read_parquet(&out_dir.path().join("samples.parquet"));
        assert_eq!(table.num_rows(), 100);
        for file in ["samples.png", "report.html"] {
            assert!(out_dir.path().join(file).is_file(), "{file}");
        }
        // The loss curve is in the report, and renders.
        let page = out_dir.path().join("report.html");
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains("<h2>Training: fit</h2>") && html.contains("aria-label=\"loss\""), "no loss curve");
        if let Some(dom) = common::rendered_dom(&page) {
            assert!(dom.contains("<polyline"), "the curve is not in the rendered page");
        }
    }
    assert_eq!(keys[0], keys[1]);
}

/// The small GPT trained inside the pipeline, tokenizer included: the trainer reports a falling
/// loss, a validation loss and an ONNX export equal to its JAX model; model.generate writes a
/// story for every prompt with the trained model, tokenizer and config files, in words of the
/// corpus; a second run takes them from the cache and writes the same stories.
#[test]
fn the_train_gpt_example_trains_its_tokenizer_and_model_once_and_writes_with_them() {
    let path = repo().join("examples/train-gpt/pipeline.toml");
    let corpus: std::collections::HashSet<String> = std::fs::read_dir(repo().join("examples/train-gpt/corpus"))
        .unwrap()
        .flat_map(|f| words(&std::fs::read_to_string(f.unwrap().path()).unwrap()))
        .collect();
    let prompts: Vec<String> = std::fs::read_to_string(repo().join("examples/train-gpt/prompts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let cache_dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for expected in ["miss", "hit"] {
        let out_dir = tempfile::tempdir().unwrap();
        let out = run_example(&path, out_dir.path(), cache_dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let report = run_json(out_dir.path());
        let fit = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "fit").unwrap().clone();
        assert_eq!(fit["cache"], expected, "{fit}");
        let loss: Vec<f64> =
            fit["metrics"]["loss"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
        assert!(loss.len() >= 2 && loss.last() < loss.first(), "the loss falls: {loss:?}");
        let val = fit["metrics"]["val_loss"][0][1].as_f64().unwrap();
        assert!(val > 0.0 && val < loss[0], "the validation loss is below the first training loss: {val}, {loss:?}");
        let diff = fit["metrics"]["onnx_max_abs_diff"][0][1].as_f64().unwrap();
        assert!(diff < 1e-4, "onnxruntime agrees with the JAX model: {diff}");
        let stories = std::fs::read_to_string(out_dir.path().join("stories.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = stories.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut ids: Vec<String> = rows.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        let mut want = prompts.clone();
        want.sort();
        assert_eq!(ids, want, "one story per prompt");
        let mut generated = Vec::new();
        for row in &rows {
            let reason = row["finish_reason"].as_str().unwrap();
            assert!(reason == "eos" || reason == "length", "{row}");
            let text = row["text"].as_str().unwrap();
            // 90 new tokens that are not the end of text decode to some text.
            assert!(reason == "eos" || !text.trim().is_empty(), "{row}");
            generated.extend(words(text));
        }
        // Even after 20 steps the model writes mostly the corpus's words, through the tokenizer
        // trained on it: decoded with another vocabulary, the same ids would not spell them.
        let known = generated.iter().filter(|w| corpus.contains(*w)).count();
        assert!(
            generated.len() >= 50 && known * 10 >= generated.len() * 7,
            "{known} of {} generated words are in the corpus: {generated:?}",
            generated.len()
        );
        runs.push((fit["key"].clone(), stories));
    }
    assert_eq!(runs[0], runs[1], "the cached model writes the same stories under the same key");
}

/// The words of a text: runs of letters.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

#[test]
fn the_table_example_honours_its_variable() {
    let path = repo().join("examples/table-sql/pipeline.toml");
    let out_dir = tempfile::tempdir().unwrap();
    let out = pipe()
        .arg("run")
        .arg(&path)
        .arg("--output-dir")
        .arg(out_dir.path())
        .arg("--quiet")
        .env("MIN_PRIORITY", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let jsonl = std::fs::read_to_string(out_dir.path().join("prompts.jsonl")).unwrap();
    let ids: Vec<String> = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["p03", "p06", "p09"]);
}

#[test]
fn the_showcase_refines_what_falls_short() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = pipe()
        .arg("run")
        .arg(repo().join("pipeline.toml"))
        .arg("--output-dir")
        .arg(out_dir.path())
        .arg("--quiet")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = run_json(out_dir.path());
    let retry = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "retry").unwrap().clone();
    let first = retry["pass_rate_first_try"].as_f64().unwrap();
    let last = retry["pass_rate_final"].as_f64().unwrap();
    assert!(
        last > first,
        "refinement raised the share of candidates that are clearly the intended digit: {first} -> {last}"
    );
    assert!(first > 0.5, "the model is good on its own: {first}");
    // One row per digit in the grid: best-of kept 4 of each of the 10 digits.
    let best = report["stages"].as_array().unwrap().iter().find(|s| s["id"] == "best").unwrap().clone();
    assert_eq!(best["rows_out"], 40);
    for file in ["grid.png", "samples.parquet", "report.html"] {
        assert!(out_dir.path().join(file).is_file(), "{file}");
    }
}

/// The README's tour shows examples/tour/pipeline.toml as it is, and each command it shows runs.
#[test]
fn the_readme_tour_is_this_file_and_its_commands_run() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let tour = &readme[readme.find("## A tour of pipeline.toml").expect("the tour section")..];
    let block = |fence: &str| -> String {
        let start = tour.find(fence).unwrap_or_else(|| panic!("no {fence} block")) + fence.len() + 1;
        tour[start..start + tour[start..].find("```").unwrap()].to_string()
    };
    let file = std::fs::read_to_string(repo().join("examples/tour/pipeline.toml")).unwrap();
    assert_eq!(block("```toml"), file, "the README's tour differs from examples/tour/pipeline.toml");
    let commands = block("```sh");
    assert!(commands.lines().count() >= 5, "{commands}");
    let out_dir = repo().join("examples/tour/out");
    for line in commands.lines() {
        let command = line.split("  #").next().unwrap().trim();
        // The shell splits the words, as it does for a reader who pastes the line.
        let script = format!("pipe() {{ \"$PIPE_BIN\" \"$@\"; }}; {command}");
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("PIPE_BIN", pipe().get_program())
            .current_dir(repo())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{command}: {}", text(&out));
        if command.contains("keep.query") {
            // Without the WHERE clause every note is kept.
            let report = run_json(&out_dir);
            assert_eq!(report["stages"][2]["filtered"], 0, "{report}");
            assert_eq!(report["stages"][3]["rows_in"], report["stages"][0]["rows_out"], "{report}");
        }
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

#[test]
fn help_names_every_exit_code() {
    let out = pipe().arg("--help").output().unwrap();
    let help = text(&out);
    for code in ["0 ok", "1 the run failed", "2 the file or a flag is invalid", "130 interrupted"] {
        assert!(help.contains(code), "pipe --help lacks {code:?}:\n{help}");
    }
}
