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
