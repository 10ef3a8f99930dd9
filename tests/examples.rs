//! Every example pipeline, and the root showcase, validates and runs.

mod common;

use std::path::PathBuf;

use common::{pipe, repo, run_json, text};

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

#[test]
fn every_example_validates_and_runs() {
    let found = pipelines();
    assert!(found.len() >= 3, "expected the showcase and at least two examples, found {found:?}");
    for path in found {
        let out = pipe().arg("validate").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}: {}", path.display(), text(&out));
        let out_dir = tempfile::tempdir().unwrap();
        let out = pipe().arg("run").arg(&path).arg("--output-dir").arg(out_dir.path()).arg("--quiet").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}: {}", path.display(), text(&out));
        let report = run_json(out_dir.path());
        assert_eq!(report["status"], "ok", "{}", path.display());
        let last = report["stages"].as_array().unwrap().last().unwrap().clone();
        assert!(last["rows_in"].as_u64().unwrap() > 0, "{}: the last stage saw no rows", path.display());
    }
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
